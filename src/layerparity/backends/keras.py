"""Keras capture: Functional, Sequential and subclassed ``keras.Model`` s, ``.keras`` and ``.h5`` files.

Functional and Sequential models (including models nested in them) are captured
in graph mode: the model's graph is walked once, every layer is called again on
the symbolic tensors (nested models are entered, so their layers appear as
``outer/inner``), and one multi-output ``keras.Model`` over every layer's output
is built. A capture is ONE forward pass of that model.

Subclassed models have no graph to walk: they are captured in eager mode, by
temporarily replacing each sub-layer's ``call`` with a wrapper that records its
output, in the order the layers finish; the originals are restored afterwards,
also when the forward pass raises.

Every probe is one layer output: ``name`` = layer name (``name:1`` for a second
output, ``name#1`` for the second call of a shared layer), ``kind`` = class
name (``"Input"`` for an ``InputLayer``), ``inputs`` = the probes it read,
``params`` = the diagnosis-relevant config, ``fused = [activation]`` when a
layer applies a non-linear activation itself.
"""

from __future__ import annotations

import functools
import json
import os
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputDataError, InputError, ModelLoadError
from ..trace import Probe
from .tfcommon import (
    TFBackend,
    cannot_run_error,
    cannot_run_here,
    clean_attr,
    first_line,
    import_keras,
    import_tf,
    iter_filtered,
    layout_of_format,
    probe_layout,
)

__all__ = ["KerasBackend"]

#: Config keys kept in ``Probe.params`` (those that matter for diagnosis).
PARAM_KEYS = (
    "filters",
    "kernel_size",
    "strides",
    "padding",
    "dilation_rate",
    "groups",
    "depth_multiplier",
    "data_format",
    "use_bias",
    "units",
    "activation",
    "epsilon",
    "momentum",
    "center",
    "scale",
    "axis",
    "pool_size",
    "alpha",
    "negative_slope",
    "max_value",
    "threshold",
    "shared_axes",
    "size",
    "interpolation",
    "cropping",
    "target_shape",
    "dims",
    "rate",
    "keepdims",
    "output_padding",
    "go_backwards",  # a recurrent layer run over its sequence reversed (alignment.py pairs it with a time reversal)
    "merge_mode",  # Bidirectional: how the two directions are joined
)

#: Keras layers that move data between axes, or (a recurrent layer) lay a sequence out
#: batch-major, as :func:`~.tfcommon.probe_layout` names them
_LAYOUT_OPS = {"Flatten": "flatten", "Reshape": "reshape", "Permute": "transpose", "RNN": "sequence",
               "LSTM": "sequence", "GRU": "sequence", "SimpleRNN": "sequence", "Bidirectional": "sequence"}

#: Default of ``KerasBackend.replay_compile_at``: a record is replayed eagerly until its
#: replay number ``REPLAY_COMPILE_AT``, which (and every later one) runs through a
#: ``tf.function``. Measured on GoogLeNet (2 cores, batch 1 and 8): a trace costs 8-19 ms
#: per layer and then saves 0.3-0.65 ms per replay over Keras' eager ``__call__``, so it
#: pays for itself after ~15-60 replays. Compiling at a count in that range never costs
#: much more than twice what the best choice in hindsight would have (ski rental).
REPLAY_COMPILE_AT = 32

#: Default of ``KerasBackend.capture_compile_at``: the first captures run the probe model
#: eagerly, this one and every later one through a ``tf.function``. Tracing costs about
#: 0.5 s on GoogLeNet and saves ~0.17 s per batch-1 capture (0.3 s at batch 8), so a
#: one-off check stays as fast as before and a second capture already starts paying back.
CAPTURE_COMPILE_AT = 2

#: Default of ``KerasBackend.replay_many_compile_at``: the first ``replay_many`` calls
#: with a given list of probes run the layers eagerly, this one and every later one
#: through one ``tf.function`` over all of them (same policy as the capture: a one-off
#: check pays no trace, the engine sends the same list on every check of the same models).
REPLAY_MANY_COMPILE_AT = 2


#: Default of ``KerasBackend.forward_compile_at``: ``forward`` with a given set of names
#: runs eagerly on its first calls and through a ``tf.function`` from this one on (the
#: policy of the capture: a one-off call pays no trace, 6.4 s on InceptionV3; a sweep's
#: thousands of calls then run at the plain model's speed).
FORWARD_COMPILE_AT = 2


@dataclass
class _Forward:
    """``forward``'s state for one set of names: a model over just those outputs."""

    outs: list[str]
    model: Any
    calls: int = 0
    fn: Any = None  # its tf.function once compiled; False: it does not trace


class _Slot:
    """Stands for a tensor argument in a replay template."""

    __slots__ = ("dtype", "known")

    def __init__(self, dtype: Any, known: bool) -> None:
        self.dtype = dtype
        self.known = known


@dataclass
class _Rec:
    name: str
    layer: str
    kind: str
    op: Any
    inputs: list[str]
    params: dict[str, Any]
    fused: list[str]
    template: Any  # (args, kwargs) with tensors replaced by _Slot
    out_index: int = 0
    tensor: Any = None  # eager mode: the recorded output
    extra: dict[str, Any] = field(default_factory=dict)
    slot_dtypes: list[Any] | None = None  # replay: the numpy dtype of each tensor argument
    replayable: bool | None = None
    replays: int = 0
    compiled: Any = None  # replay: its tf.function once compiled; False: it does not trace

    def slots(self) -> list[_Slot]:
        keras = import_keras()
        return [s for s in keras.tree.flatten(self.template) if isinstance(s, _Slot)]


@dataclass
class _Batch:
    """``replay_many``'s state for one list of probes."""

    recs: tuple[_Rec, ...]
    calls: int = 0
    fn: Any = None  # its tf.function once compiled; False: it does not trace
    batch_free: bool = False  # traced with the batch size free (or found to need it fixed)


def _act_name(a: Any) -> str | None:
    if a is None:
        return None
    if isinstance(a, str):
        return a
    if isinstance(a, dict):
        c = a.get("config")
        return c if isinstance(c, str) else str(a.get("class_name", a))
    return getattr(a, "__name__", None) or str(a)


def _config(op: Any) -> dict[str, Any]:
    try:
        cfg = op.get_config()
    except Exception:  # noqa: BLE001 - ops without a config have no params
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _params_and_fused(op: Any, kind: str) -> tuple[dict[str, Any], list[str]]:
    cfg = _config(op)
    params = {}
    for k in PARAM_KEYS:
        if k in cfg:
            v = _act_name(cfg[k]) if k == "activation" else cfg[k]
            params[k] = clean_attr(v)
    fused = []
    act = params.get("activation")
    if kind != "Activation" and act not in (None, "linear"):
        fused = [act]
    return params, fused


def _functional_of(model: Any) -> Any:
    """The Functional graph behind a model, or None (subclassed / unbuilt Sequential)."""
    keras = import_keras()
    if isinstance(model, keras.Sequential):
        return getattr(model, "_functional", None)
    from keras.src.models.functional import Functional

    if isinstance(model, Functional):
        return model
    return None


class KerasBackend(TFBackend):
    """Capture backend for a ``keras.Model`` (see the module docstring)."""

    model_format = "keras"

    def __init__(
        self,
        model: Any,
        source: str = "",
        *,
        tensors: list[str] | None = None,
        data_format: str | None = None,
        tf_layout: str | None = None,
    ) -> None:
        keras = import_keras()
        super().__init__(
            source or f"keras.Model {model.name!r}",
            tensors=tensors,
            data_format=data_format,
            tf_layout=tf_layout,
        )
        self.model = model
        self._default = self._data_format or (
            "NCHW" if keras.config.image_data_format() == "channels_first" else "NHWC"
        )
        self._records: list[_Rec] = []
        self._by_name: dict[str, _Rec] = {}
        self._weights_of: dict[str, Any] = {}
        self._probe_fn: Any = None  # the probe model's tf.function; False: it does not trace
        self.replay_compile_at = REPLAY_COMPILE_AT
        self.capture_compile_at = CAPTURE_COMPILE_AT
        self.replay_many_compile_at = REPLAY_MANY_COMPILE_AT
        self._batches: dict[tuple[str, ...], _Batch] = {}
        self._sym: dict[str, Any] = {}  # graph mode: probe name -> its symbolic tensor
        self._forward_fns: dict[tuple[str, ...], _Forward] = {}
        self.forward_compile_at = FORWARD_COMPILE_AT
        self._captures = 0
        self._graph = _functional_of(model)
        self.mode = "graph" if self._graph is not None else "eager"
        if self._graph is not None:
            self._build_graph()
        else:
            self._setup_eager()

    # -- loading ---------------------------------------------------------------
    @classmethod
    def from_file(
        cls,
        path: str,
        *,
        safe_mode: bool = True,
        tensors: list[str] | None = None,
        data_format: str | None = None,
        tf_layout: str | None = None,
        custom_objects: Any = None,
    ) -> KerasBackend:
        keras = import_keras()
        config = _read_config(path)
        objects = custom_objects_dict(custom_objects)
        if safe_mode:
            lam = _find_lambda(config)
            if lam is not None:
                raise ModelLoadError(
                    f"{path}: layer {lam!r} is a Lambda layer, whose code is stored in the file and would run on "
                    "load; safe_mode=True refuses it. If you trust this file, pass safe_mode=False to load_tf"
                )
        try:
            model = keras.saving.load_model(path, compile=False, safe_mode=safe_mode, custom_objects=objects)
        except Exception as e:  # noqa: BLE001 - Keras raises many types for bad files
            msg = first_line(e)
            unknown = _unknown_class(config, objects)
            if unknown is not None:
                layer, cls = unknown
                raise ModelLoadError(
                    f"{path}: layer {layer!r} is of class {cls!r}, which Keras does not know; pass "
                    f"custom_objects={{{cls!r}: <the class>}} (or tf_options={{'custom_objects': ...}}), "
                    "on the command line --keras-module FILE.py (a module that registers it with "
                    "keras.saving.register_keras_serializable), in pytest --parity-keras-module FILE.py"
                ) from None
            if "safe_mode" in str(e):
                raise ModelLoadError(
                    f"{path}: Keras refused to load it in safe mode ({msg}); if you trust this file, "
                    "pass safe_mode=False to load_tf"
                ) from None
            raise ModelLoadError(
                f"{path}: not a loadable Keras model ({type(e).__name__}: {msg})"
            ) from None
        if not isinstance(model, keras.Model):
            raise ModelLoadError(f"{path}: holds a {type(model).__name__}, not a keras.Model")
        return cls(model, source=path, tensors=tensors, data_format=data_format, tf_layout=tf_layout)

    # -- graph mode (Functional / Sequential) ------------------------------------
    def _build_graph(self) -> None:
        keras = import_keras()
        fn = self._graph
        sym_inputs = list(fn.inputs)
        self._sym_inputs = sym_inputs
        producer: dict[int, str] = {}
        self._input_names = []
        for t in sym_inputs:
            name = t._keras_history.operation.name if getattr(t, "_keras_history", None) else t.name
            producer[id(t)] = name
            self._input_names.append(name)
        outputs: list[Any] = []
        counts: dict[str, int] = {}

        def record(op: Any, prefix: str, args: tuple, kwargs: dict, outs: Any) -> None:
            flat_in = [
                t for t in keras.tree.flatten((args, kwargs)) if isinstance(t, keras.KerasTensor)
            ]
            ins = [producer[id(t)] for t in flat_in if id(t) in producer]
            template = keras.tree.map_structure(
                lambda t: (
                    _Slot(t.dtype, id(t) in producer) if isinstance(t, keras.KerasTensor) else t
                ),
                (args, kwargs),
            )
            base = prefix + op.name
            n = counts.get(base, 0)
            counts[base] = n + 1
            if n:
                base = f"{base}#{n}"
            else:
                self._weights_of[base] = op
            kind = type(op).__name__
            params, fused = _params_and_fused(op, kind)
            for i, t in enumerate(
                x for x in keras.tree.flatten(outs) if isinstance(x, keras.KerasTensor)
            ):
                name = base if i == 0 else f"{base}:{i}"
                producer[id(t)] = name
                rec = _Rec(name, base, kind, op, ins, params, fused, template, out_index=i)
                self._records.append(rec)
                self._by_name[name] = rec
                outputs.append(t)
                self._sym[name] = t

        def walk(sub: Any, inputs: Any, prefix: str) -> Any:
            return sub._run_through_graph(inputs, operation_fn=lambda op: runner(op, prefix))

        def runner(op: Any, prefix: str) -> Any:
            def run(*args: Any, **kwargs: Any) -> Any:
                sub = _functional_of(op) if isinstance(op, keras.Model) else None
                if sub is not None:
                    tensor_kw = [
                        v for v in keras.tree.flatten(kwargs) if isinstance(v, keras.KerasTensor)
                    ]
                    inner = (
                        args[0]
                        if len(args) == 1 and not tensor_kw
                        else [
                            t
                            for t in keras.tree.flatten((args, kwargs))
                            if isinstance(t, keras.KerasTensor)
                        ]
                    )
                    return walk(sub, inner, prefix + op.name + "/")
                outs = op(*args, **kwargs)
                record(op, prefix, args, kwargs, outs)
                return outs

            return run

        try:
            walk(fn, sym_inputs, "")
            self._probe_model = (
                keras.Model(sym_inputs, outputs, name=f"{self.model.name}_probes")
                if outputs
                else None
            )
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(
                f"{self.source}: cannot walk the model's layer graph ({type(e).__name__}: {e})"
            ) from None
        # input layouts: what the first consumer with a data_format says, else the default
        self._inputs = []
        for t, name in zip(sym_inputs, self._input_names, strict=True):
            shape = tuple(t.shape)
            lay = self._data_format
            if lay is None and len(shape) == 4:
                for r in self._records:
                    if name in r.inputs and layout_of_format(r.params.get("data_format")):
                        lay = layout_of_format(r.params.get("data_format"))
                        break
            self._inputs.append((name, shape, lay or self._default))
        self._input_dtypes = {
            name: t.dtype for t, name in zip(sym_inputs, self._input_names, strict=True)
        }
        self.check_tensors({r.name for r in self._records} | set(self._input_names))

    # -- eager mode (subclassed) ---------------------------------------------------
    def _setup_eager(self) -> None:
        keras = import_keras()
        self._paths: list[tuple[Any, str]] = []
        seen: set[int] = set()

        def visit(layer: Any, prefix: str) -> None:
            for child in layer._flatten_layers(include_self=False, recursive=False):
                if id(child) in seen:
                    continue
                seen.add(id(child))
                path = prefix + child.name
                self._paths.append((child, path))
                visit(child, path + "/")

        visit(self.model, "")
        shape = None
        bsd = getattr(self.model, "_build_shapes_dict", None)
        if isinstance(bsd, dict) and len(bsd) == 1:
            v = next(iter(bsd.values()))
            if isinstance(v, (tuple, list)) and all(d is None or isinstance(d, int) for d in v):
                shape = (None, *v[1:])  # the batch of the first call is not a fixed batch
        lay = self._data_format
        if lay is None:
            for layer, _ in self._paths:
                lay = layout_of_format(_config(layer).get("data_format"))
                if lay:
                    break
        self._input_names = ["input"]
        self._inputs = [("input", shape, lay or self._default)]
        self._input_dtypes = {"input": "float32"}
        self._keras = keras

    def _run_eager(self, x: Any) -> None:
        """One forward pass with every sub-layer's ``call`` wrapped; fills ``self._records``."""
        tf = import_tf()
        keras = import_keras()
        producer: dict[int, str] = {id(x): self._input_names[0]}
        records: list[_Rec] = []
        counts: dict[str, int] = {}
        weights_of: dict[str, Any] = {}
        failed: list[Exception] = []  # the first layer TF cannot run here (Keras rewraps errors)

        def make_wrapper(layer: Any, path: str, orig: Any) -> Any:
            is_container = isinstance(layer, keras.Model)

            def wrapper(*args: Any, **kwargs: Any) -> Any:
                try:
                    out = orig(*args, **kwargs)
                except Exception as e:
                    if not is_container and not failed and cannot_run_here(e):
                        failed.append(
                            cannot_run_error(self.source, f"layer {path!r} ({type(layer).__name__})", e)
                        )
                    raise
                if is_container or not tf.executing_eagerly():
                    return out
                flat_in = [t for t in keras.tree.flatten((args, kwargs)) if tf.is_tensor(t)]
                ins = [producer[id(t)] for t in flat_in if id(t) in producer]
                template = keras.tree.map_structure(
                    lambda t: _Slot(t.dtype, id(t) in producer) if tf.is_tensor(t) else t,
                    (args, kwargs),
                )
                n = counts.get(path, 0)
                counts[path] = n + 1
                base = f"{path}#{n}" if n else path
                if not n and not layer._layers:
                    weights_of[base] = layer
                kind = type(layer).__name__
                params, fused = _params_and_fused(layer, kind)
                for i, t in enumerate(v for v in keras.tree.flatten(out) if tf.is_tensor(v)):
                    name = base if i == 0 else f"{base}:{i}"
                    producer[id(t)] = name
                    records.append(
                        _Rec(
                            name,
                            base,
                            kind,
                            layer,
                            ins,
                            params,
                            fused,
                            template,
                            out_index=i,
                            tensor=t,
                        )
                    )
                return out

            return wrapper

        patched: list[tuple[Any, bool, Any]] = []
        try:
            for layer, path in self._paths:
                had = "call" in layer.__dict__
                prev = layer.__dict__.get("call")
                object.__setattr__(layer, "call", make_wrapper(layer, path, layer.call))
                patched.append((layer, had, prev))
            try:
                self.model(x, training=False)
            except Exception:
                if failed:
                    raise failed[0] from None
                raise
        finally:
            for layer, had, prev in reversed(patched):
                if had:
                    object.__setattr__(layer, "call", prev)
                else:
                    object.__delattr__(layer, "call")
        self._records = records
        self._by_name = {r.name: r for r in records}
        self._weights_of = weights_of
        self._batches.clear()  # they hold the previous capture's records

    # -- capture ------------------------------------------------------------------
    def _iter_capture_impl(self, inputs: dict[str, np.ndarray]) -> Iterator[Probe]:
        return iter_filtered(self._capture(self.model_feed(inputs)), self)

    def _capture(self, feed: dict[str, np.ndarray]) -> Iterator[Probe]:
        tf = import_tf()
        layouts = self.input_layouts()
        xs = [
            tf.convert_to_tensor(feed[n].astype(_np_dtype(self._input_dtypes[n]), copy=False))
            for n in self._input_names
        ]
        if self.mode == "graph":
            try:
                values = self._run_probe_model(xs)
            except Exception as e:
                if cannot_run_here(e):
                    raise self._cannot_run(xs, e) from None
                raise
        else:
            if len(xs) != 1:
                raise InputDataError(
                    f"{self.source}: a subclassed model is captured with one input"
                )
            self._run_eager(xs[0])
            values = [r.tensor for r in self._records]
        shapes: dict[str, tuple[int, ...]] = {}
        lays: dict[str, str] = {}
        for n in self._input_names:
            arr = feed[n]
            lay = layouts[n] if arr.ndim == 4 else ("NC" if arr.ndim == 2 else "")
            shapes[n], lays[n] = arr.shape, lay
            yield Probe(name=n, kind="Input", value=arr, layer=n, blob=n, layout=lay)
        for rec, v in zip(self._records, values, strict=True):
            # np.asarray shares the tensor's buffer (read-only): .numpy() would copy every
            # value, ~40% of a batch-8 capture
            arr = np.asarray(v)
            layout, flat = self._layout(rec, arr.shape, shapes, lays)
            shapes[rec.name], lays[rec.name] = arr.shape, layout
            yield Probe(
                name=rec.name,
                kind=rec.kind,
                value=arr,
                layer=rec.layer,
                blob=rec.name,
                inputs=list(rec.inputs),
                params=rec.params,
                fused=list(rec.fused),
                layout=layout,
                flat_shape=flat,
            )
        if self.mode == "eager":
            for r in self._records:
                r.tensor = None

    # -- plain forward ------------------------------------------------------------------
    def _forward_impl(self, inputs: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        """Graph mode: a model whose outputs are only the probes ``names`` (built once per
        set of names), run eagerly on its first call and through one ``tf.function``
        (batch free) from ``forward_compile_at`` on, so TF prunes everything else and
        keeps no other value. Subclassed models: a full capture."""
        if self.mode != "graph":
            return super()._forward_impl(inputs, names)
        tf = import_tf()
        feed = self.model_feed(inputs)
        key = tuple(dict.fromkeys(names))
        entry = self._forward_fns.get(key)
        if entry is None:
            unknown = [n for n in key if n not in self._sym and n not in self._input_names]
            if unknown:
                raise InputDataError(f"{self.source}: the model produced no probe {unknown[0]!r}")
            outs = [n for n in key if n not in self._input_names]
            model = None
            if outs:
                keras = import_keras()
                model = keras.Model(self._sym_inputs, [self._sym[n] for n in outs])
            entry = self._forward_fns[key] = _Forward(outs, model)
        out = {n: feed[n] for n in key if n in self._input_names}
        if entry.model is not None:
            xs = [
                tf.convert_to_tensor(feed[n].astype(_np_dtype(self._input_dtypes[n]), copy=False))
                for n in self._input_names
            ]
            eager = functools.partial(_call_model, entry.model)
            entry.calls += 1
            if entry.fn is None and entry.calls >= self.forward_compile_at:
                specs = [tf.TensorSpec(t.shape, _np_dtype(t.dtype)) for t in entry.model.inputs]
                entry.fn = tf.function(eager, input_signature=specs, autograph=False)
            try:
                if entry.fn:
                    values, traced = _run_compiled(entry.fn, xs, eager)
                    if not traced:
                        entry.fn = False
                else:
                    values = eager(*xs)
            except Exception as e:
                if cannot_run_here(e):
                    raise self._cannot_run(xs, e) from None
                raise
            values = list(values) if isinstance(values, (list, tuple)) else [values]
            out.update((n, np.asarray(v)) for n, v in zip(entry.outs, values, strict=True))
        return out

    def _cannot_run(self, xs: list[Any], e: BaseException) -> Exception:
        """The probe model hit an op TF cannot run here: find the first layer that fails
        by running the layers one by one, and name it."""
        values: dict[str, Any] = dict(zip(self._input_names, xs, strict=True))
        for rec in self._records:
            if not self.can_replay(rec.name) or any(n not in values for n in rec.inputs):
                continue
            try:
                values[rec.name] = _run_op(rec, *_replay_tensors(rec, [values[n] for n in rec.inputs]))
            except Exception as err:  # noqa: BLE001 - the first layer that fails is the culprit
                if cannot_run_here(err):
                    return cannot_run_error(self.source, f"layer {rec.name!r} ({rec.kind})", err)
                break
        return cannot_run_error(self.source, "this model", e)

    def _run_probe_model(self, xs: list[Any]) -> list[Any]:
        if self._probe_model is None:
            return []
        eager = functools.partial(_call_model, self._probe_model)
        self._captures += 1
        fn = self._compiled_probe_model() if self._captures >= self.capture_compile_at else False
        if fn is False:
            values = eager(*xs)
        else:
            values, traced = _run_compiled(fn, xs, eager)
            if not traced:
                self._probe_fn = False
        return list(values) if isinstance(values, (list, tuple)) else [values]

    def _compiled_probe_model(self) -> Any:
        """The probe model as a ``tf.function``, traced on first use: 2-4x faster
        than Keras' eager layer-by-layer call. Its signature is the model's input shapes
        (batch free unless the model fixes it), so one trace serves every batch."""
        if self._probe_fn is None:  # not False
            tf = import_tf()
            model = self._probe_model
            specs = [tf.TensorSpec(t.shape, _np_dtype(t.dtype)) for t in model.inputs]
            # A partial, not a lambda: TF counts traces per code object and would warn
            # about retracing once a few backends had traced theirs. autograph=False:
            # AutoGraph never converts Keras' code (nor the layer calls it makes), so
            # converting only our wrapper would cost trace time for nothing.
            self._probe_fn = tf.function(
                functools.partial(_call_model, model), input_signature=specs, autograph=False
            )
        return self._probe_fn

    def _layout(
        self, rec: _Rec, shape: tuple[int, ...], shapes: dict, lays: dict
    ) -> tuple[str, tuple[int, ...] | None]:
        dims = rec.params.get("dims")
        return probe_layout(
            shape,
            op=_LAYOUT_OPS.get(rec.kind, ""),
            in_layouts=[lays.get(n, "") for n in rec.inputs],
            in_shape=shapes.get(rec.inputs[0]) if rec.inputs else None,
            perm=[0, *dims] if isinstance(dims, list) else None,
            data_format=rec.params.get("data_format"),
            default=self._default,
        )

    # -- weights and replay ---------------------------------------------------------
    def _weights_impl(self) -> dict[str, list[np.ndarray]]:
        out = {}
        for name, layer in self._weights_of.items():
            ws = layer.get_weights() if hasattr(layer, "get_weights") else []
            if ws:
                out[name] = [np.asarray(w) for w in ws]
        return out

    def can_replay(self, probe_name: str) -> bool:
        rec = self._by_name.get(probe_name)
        if rec is None:
            return False
        if rec.replayable is None:
            slots = rec.slots()
            rec.replayable = bool(slots) and all(s.known for s in slots)
        return rec.replayable

    def replay(self, probe_name: str, inputs: list[np.ndarray]) -> np.ndarray:
        """Run the one layer behind ``probe_name`` on ``inputs`` (in the model's layout,
        one array per entry of the probe's ``inputs``). Subclassed models: after a capture."""
        tf = import_tf()
        rec = self._replay_record(probe_name, inputs)
        xs = _replay_tensors(rec, inputs)
        rec.replays += 1
        if rec.compiled is None and rec.replays >= self.replay_compile_at:
            rec.compiled = tf.function(
                functools.partial(_run_op, rec), reduce_retracing=True, autograph=False
            )
        eager = functools.partial(_run_op, rec)
        if rec.compiled:
            out, traced = _run_compiled(rec.compiled, xs, eager)
            if not traced:
                rec.compiled = False
        else:
            out = eager(*xs)
        return np.asarray(out)

    def replay_many(
        self, requests: list[tuple[str, list[np.ndarray]]]
    ) -> list[np.ndarray | Exception]:
        """Replay several layers in one call: one output per ``(probe_name, inputs)``
        request, in order; a request that cannot be replayed (unknown probe, wrong number
        of inputs, inputs the layer refuses) gets its :class:`InputDataError` in its slot.

        The valid requests run as one batch, cached per list of probe names: eagerly on
        the first ``replay_many_compile_at - 1`` calls with that list, then through one
        ``tf.function`` (eagerly for good if it does not trace). If the batch fails, its
        requests run one by one so that only the faulty ones fail. The counters and
        compiled functions of :meth:`replay` are left alone.
        """
        out: list[np.ndarray | Exception | None] = [None] * len(requests)
        items: list[tuple[int, _Rec, list[Any]]] = []
        for i, (name, inputs) in enumerate(requests):
            try:
                rec = self._replay_record(name, inputs)
                xs = self._replay_inputs(rec, inputs)
            except InputError as e:
                out[i] = e
                continue
            items.append((i, rec, xs))
        if items:
            try:
                values = self._run_batch(
                    tuple(rec for _, rec, _ in items), [x for _, _, xs in items for x in xs]
                )
            except Exception:  # noqa: BLE001 - find the faulty requests one by one
                for i, rec, xs in items:
                    out[i] = self._replay_alone(rec, xs)
            else:
                for (i, _, _), v in zip(items, values, strict=True):
                    out[i] = np.asarray(v)
        return out  # type: ignore[return-value]

    def _replay_inputs(self, rec: _Rec, inputs: list[np.ndarray]) -> list[Any]:
        try:
            return _replay_tensors(rec, inputs)
        except Exception as e:  # noqa: BLE001 - TF raises several types for unconvertible data
            raise InputDataError(
                f"{self.source}: the inputs of layer {rec.name!r} are not usable tensors "
                f"({type(e).__name__}: {first_line(e)})"
            ) from e

    def _run_batch(self, recs: tuple[_Rec, ...], xs: list[Any]) -> list[Any]:
        """Every record of ``recs`` on its slice of ``xs``, in one call."""
        key = tuple(r.name for r in recs)
        batch = self._batches.get(key)
        if batch is None or any(a is not b for a, b in zip(batch.recs, recs, strict=True)):
            batch = self._batches[key] = _Batch(recs)
        batch.calls += 1
        eager = functools.partial(_run_ops, recs)
        if batch.fn is None and batch.calls >= self.replay_many_compile_at:
            tf = import_tf()
            # a partial, not a lambda, and no AutoGraph: see _compiled_probe_model
            batch.fn = tf.function(eager, reduce_retracing=True, autograph=False)
        if not batch.fn:
            return eager(*xs)
        values, traced = _run_compiled(functools.partial(_call_batch, batch), xs, eager)
        if not traced:
            batch.fn = False
        return values

    def _replay_alone(self, rec: _Rec, xs: list[Any]) -> np.ndarray | Exception:
        """One record run eagerly, its failure returned as an InputDataError."""
        try:
            return np.asarray(_run_op(rec, *xs))
        except InputError as e:
            return e
        except Exception as e:  # noqa: BLE001 - the layer refused these inputs
            err = InputDataError(
                f"{self.source}: replaying layer {rec.name!r} failed "
                f"({type(e).__name__}: {first_line(e)})"
            )
            err.__cause__ = e
            return err

    def _replay_record(self, probe_name: str, inputs: list[np.ndarray]) -> _Rec:
        rec = self._by_name.get(probe_name)
        if rec is None:
            hint = (
                " (subclassed models are replayable after a capture)"
                if self.mode == "eager"
                else ""
            )
            raise InputDataError(f"{self.source}: no layer output {probe_name!r} to replay{hint}")
        if not self.can_replay(probe_name):
            raise InputDataError(
                f"{self.source}: layer {probe_name!r} reads tensors not produced by a layer; cannot replay it"
            )
        if len(inputs) != len(rec.inputs):
            raise InputDataError(
                f"{self.source}: layer {probe_name!r} reads {len(rec.inputs)} input(s) {rec.inputs}; got {len(inputs)} array(s)"
            )
        return rec


def _run_compiled(fn: Any, xs: Sequence[Any], eager: Callable[..., Any]) -> tuple[Any, bool]:
    """``(fn(*xs), True)``; ``(eager(*xs), False)`` if only the eager call works: a layer
    with eager-only code (``.numpy()`` in ``call``) runs but cannot be traced."""
    try:
        return fn(*xs), True
    except Exception:  # noqa: BLE001 - an input at fault fails eagerly too, with its own error
        return eager(*xs), False


def _replay_tensors(rec: _Rec, inputs: list[np.ndarray]) -> list[Any]:
    """``inputs`` as tensors of the dtypes ``rec``'s op was called with."""
    tf = import_tf()
    if rec.slot_dtypes is None:
        rec.slot_dtypes = [_np_dtype(s.dtype) for s in rec.slots()]
    return [
        tf.convert_to_tensor(np.asarray(a), dtype=dt)
        for a, dt in zip(inputs, rec.slot_dtypes, strict=True)
    ]


def _run_ops(recs: tuple[_Rec, ...], *xs: Any) -> list[Any]:
    """Each record's op on its own inputs, taken in turn from ``xs``: their outputs."""
    outs = []
    k = 0
    for rec in recs:
        n = len(rec.slot_dtypes or ())
        outs.append(_run_op(rec, *xs[k : k + n]))
        k += n
    return outs


def _call_batch(batch: _Batch, *xs: Any) -> list[Any]:
    """``batch.fn(*xs)``. Its first trace is made with the batch size (axis 0) free, so that
    it serves every batch size as the probe model's does (the engine's list of probes is
    the same at any batch size; a retrace of GoogLeNet's 175 layers costs about a second).
    Other shapes still retrace (``reduce_retracing``). A model whose layers need a static
    batch size is traced per shape instead."""
    if not batch.batch_free:
        tf = import_tf()
        specs = [
            tf.TensorSpec((None, *x.shape[1:]) if x.shape.rank else x.shape, x.dtype) for x in xs
        ]
        try:
            batch.fn.get_concrete_function(*specs)
        except Exception:  # noqa: BLE001 - a layer needs a static batch size, or an input is bad
            out = batch.fn(*xs)  # raises if an input is bad: the next call tries again
            batch.batch_free = True
            return out
        batch.batch_free = True
    return batch.fn(*xs)



def _call_model(model: Any, *xs: Any) -> Any:
    return model(list(xs), training=False)


def _run_op(rec: _Rec, *xs: Any) -> Any:
    """``rec``'s op on the tensors ``xs`` put into its call template; its output ``out_index``."""
    keras = import_keras()
    tf = import_tf()
    it = iter(xs)
    args, kwargs = keras.tree.map_structure(
        lambda s: next(it) if isinstance(s, _Slot) else s, rec.template
    )
    sig = getattr(rec.op, "_call_signature", None)
    if sig is not None and "training" in sig.parameters and kwargs.get("training") is None:
        kwargs = {**kwargs, "training": False}
    out = rec.op(*args, **kwargs)
    return [v for v in keras.tree.flatten(out) if tf.is_tensor(v)][rec.out_index]


def _np_dtype(dtype: Any) -> Any:
    s = getattr(dtype, "name", None) or str(dtype)
    try:
        return np.dtype(s)
    except TypeError:
        return np.float32


# -- Keras file helpers ---------------------------------------------------------------


def _read_config(path: str) -> Any:
    """The model config stored in a .keras (zip) or .h5 file; ModelLoadError if unreadable."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"\x89HDF"):
        try:
            import h5py
        except ImportError:  # pragma: no cover - h5py ships with Keras
            return None
        try:
            with h5py.File(path, "r") as h5:
                raw = h5.attrs.get("model_config")
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(f"{path}: corrupt HDF5 file ({e})") from None
        if raw is None:
            raise ModelLoadError(
                f"{path}: the HDF5 file holds no model config (a weights-only file from save_weights?); "
                "save the whole model with model.save()"
            )
        try:
            return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))
        except ValueError as e:
            raise ModelLoadError(f"{path}: the HDF5 model config is not valid JSON ({e})") from None
    if os.path.splitext(path)[1].lower() in (".h5", ".hdf5"):
        raise ModelLoadError(f"{path}: not an HDF5 file (corrupt, or not a Keras .h5 model)")
    try:
        with zipfile.ZipFile(path) as zf:
            if "config.json" not in zf.namelist():
                raise ModelLoadError(
                    f"{path}: a zip archive without config.json, not a .keras model"
                )
            raw = zf.read("config.json")
    except zipfile.BadZipFile:
        raise ModelLoadError(
            f"{path}: not a .keras archive (not a valid zip file; corrupt or of another kind)"
        ) from None
    try:
        return json.loads(raw.decode("utf-8"))
    except ValueError as e:
        raise ModelLoadError(f"{path}: config.json is not valid JSON ({e})") from None


def _find_lambda(config: Any) -> str | None:
    """Name of the first Lambda layer in a serialized Keras config, else None."""
    if isinstance(config, dict):
        if config.get("class_name") == "Lambda":
            cfg = config.get("config")
            return str(cfg.get("name", "?")) if isinstance(cfg, dict) else "?"
        for v in config.values():
            found = _find_lambda(v)
            if found is not None:
                return found
    elif isinstance(config, list):
        for v in config:
            found = _find_lambda(v)
            if found is not None:
                return found
    return None


# -- custom Keras objects ----------------------------------------------------------


def custom_objects_dict(custom_objects: Any = None) -> dict[str, Any]:
    """The objects a Keras file is loaded with: layerparity's own layers (``layerparity>LRN``)
    plus the caller's.

    ``custom_objects``: ``None``; a mapping ``name -> class/function`` (the name as the
    file stores it: ``"package>Name"`` for registered classes, else the class name); a
    sequence of such pairs; or a sequence of classes/functions (each is entered under its
    registered name and its ``__name__``).
    """
    keras = import_keras()
    from ..keras_layers import lrn_layer_class

    lrn = lrn_layer_class()
    out: dict[str, Any] = {keras.saving.get_registered_name(lrn): lrn}
    if custom_objects is None:
        return out
    if isinstance(custom_objects, Mapping):
        items = list(custom_objects.items())
    elif isinstance(custom_objects, (str, bytes)) or not isinstance(custom_objects, Iterable):
        raise ModelLoadError(
            f"custom_objects: expected a dict name -> class or a list of classes, got a {type(custom_objects).__name__}"
        )
    else:
        items = []
        for obj in custom_objects:
            if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str):
                items.append(obj)
            elif callable(obj):
                name = getattr(obj, "__name__", None)
                items.append((keras.saving.get_registered_name(obj), obj))
                if name:
                    items.append((name, obj))
            else:
                raise ModelLoadError(f"custom_objects: {obj!r} is neither a class nor a function")
    for name, obj in items:
        if not isinstance(name, str) or not callable(obj):
            raise ModelLoadError(f"custom_objects: entry {name!r}: expected a name and a class or function")
        out[name] = obj
    return out


def frozen_custom_objects(custom_objects: Any) -> tuple[tuple[str, Any], ...] | None:
    """``custom_objects`` as sorted ``(name, object)`` pairs, hashable (so a model cache keys
    it by value); ``None`` stays ``None``. Does not import Keras."""
    if custom_objects is None:
        return None
    if isinstance(custom_objects, Mapping):
        return tuple(sorted(((str(k), v) for k, v in custom_objects.items()), key=lambda kv: kv[0]))
    if isinstance(custom_objects, (str, bytes)) or not isinstance(custom_objects, Iterable):
        raise ModelLoadError(
            f"custom_objects: expected a dict name -> class or a list of classes, got a {type(custom_objects).__name__}"
        )
    pairs = []
    for obj in custom_objects:
        if isinstance(obj, tuple) and len(obj) == 2 and isinstance(obj[0], str):
            pairs.append(obj)
        else:
            pairs.append((f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', repr(obj))}", obj))
    return tuple(sorted(pairs, key=lambda kv: kv[0]))


def import_keras_module(spec: str | os.PathLike[str]) -> dict[str, Any]:
    """Import a user's module of custom Keras objects and return the objects it offers.

    ``spec``: a ``.py`` file or a dotted module name. Importing it runs its
    ``@keras.saving.register_keras_serializable`` decorators, which is all most modules
    need. A module may also offer objects explicitly: a dict ``custom_objects``, or a
    function ``custom_objects()`` / ``get_custom_objects()`` returning one; those are returned.
    Any failure is a :class:`ModelLoadError` naming the module.
    """
    import importlib
    import importlib.util
    import sys

    import_keras()  # the module's decorators need Keras; import it quietly first
    spec_s = os.fspath(spec)
    try:
        if spec_s.endswith(".py") or os.sep in spec_s or os.path.exists(spec_s):
            path = os.path.abspath(spec_s)
            if not os.path.isfile(path):
                raise ModelLoadError(f"keras module {spec_s}: no such file")
            stem = os.path.splitext(os.path.basename(path))[0]
            name = f"layerparity_keras_module_{stem}_{abs(hash(path)) & 0xFFFFFFFF:08x}"
            if name in sys.modules:
                module = sys.modules[name]
            else:
                loader_spec = importlib.util.spec_from_file_location(name, path)
                if loader_spec is None or loader_spec.loader is None:
                    raise ModelLoadError(f"keras module {spec_s}: not an importable Python file")
                module = importlib.util.module_from_spec(loader_spec)
                sys.modules[name] = module
                try:
                    loader_spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[name]
                    raise
        else:
            module = importlib.import_module(spec_s)
    except ModelLoadError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's code may raise anything
        raise ModelLoadError(
            f"keras module {spec_s}: importing it failed ({type(e).__name__}: {first_line(e)})"
        ) from None
    offered: Any = None
    for attr in ("custom_objects", "get_custom_objects"):
        value = getattr(module, attr, None)
        if value is None:
            continue
        try:
            offered = value() if callable(value) and not isinstance(value, Mapping) else value
        except Exception as e:  # noqa: BLE001
            raise ModelLoadError(
                f"keras module {spec_s}: {attr}() failed ({type(e).__name__}: {first_line(e)})"
            ) from None
        break
    if offered is None:
        return {}
    if not isinstance(offered, Mapping):
        raise ModelLoadError(f"keras module {spec_s}: custom_objects is a {type(offered).__name__}, not a dict")
    return dict(offered)


_KERAS_NAMESPACES = ("layers", "initializers", "regularizers", "constraints", "activations", "losses",
                     "metrics", "optimizers", "models", "ops")


def _unknown_class(config: Any, objects: dict[str, Any]) -> tuple[str, str] | None:
    """(layer name, class name as stored) of the first object in a serialized Keras config
    that neither ``objects``, Keras' registry, Keras itself nor its stored module provides."""
    import importlib

    keras = import_keras()

    def known(d: dict) -> bool:
        cls = d.get("class_name")
        reg = d.get("registered_name")
        module = d.get("module")
        if str(cls).startswith("__"):
            return True  # Keras' markers (``__keras_tensor__``, ``__tuple__``...)
        for n in (reg, cls):
            if isinstance(n, str) and (n in objects or keras.saving.get_registered_object(n) is not None):
                return True
        if isinstance(module, str) and module.split(".")[0] in ("keras", "tensorflow", "tf_keras"):
            return True  # Keras' own (a failure there is not an unknown class)
        if isinstance(module, str) and module:
            try:
                return hasattr(importlib.import_module(module), str(cls))
            except Exception:  # noqa: BLE001 - not importable: unknown
                return False
        if module is None and "module" in d and reg is None:
            return True  # a plain function or builtin stored by name
        return any(hasattr(getattr(keras, ns, None), str(cls)) for ns in _KERAS_NAMESPACES) or cls in (
            "Functional", "Sequential", "Model")

    def walk(node: Any) -> tuple[str, str] | None:
        if isinstance(node, dict):
            if isinstance(node.get("class_name"), str) and "config" in node and not known(node):
                cfg = node.get("config")
                layer = node.get("name") or (cfg.get("name") if isinstance(cfg, dict) else None) or "?"
                return str(layer), str(node.get("registered_name") or node["class_name"])
            for v in node.values():
                hit = walk(v)
                if hit is not None:
                    return hit
        elif isinstance(node, list):
            for v in node:
                hit = walk(v)
                if hit is not None:
                    return hit
        return None

    try:
        return walk(config)
    except Exception:  # noqa: BLE001 - a hint only: never mask Keras' own error
        return None

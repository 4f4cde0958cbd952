"""TFLite capture: every intermediate tensor of a ``.tflite`` model.

The model runs in ``tf.lite.Interpreter(..., experimental_preserve_all_tensors=True)``
with the builtin op resolver *without* the default delegates (XNNPACK would run
whole subgraphs as one opaque node and keep no intermediate values). One probe
per op output tensor, in the interpreter's execution order: ``name`` = tensor
name (TFLite joins the names of the TF ops it fused with ``;``), ``kind`` =
builtin op name (``CONV_2D``), ``layer`` = the scope of the first joined name,
``fused`` = the op's fused activation (``["relu"]``, ``["relu6"]``...) read from
the flatbuffer's builtin options, ``params`` = padding, strides, dilation,
filter size, axis... from the same options.

Own error: :meth:`TFLiteBackend.replay` runs one op alone, in a one-op model built
from the flatbuffer (the op, its constant operands, its options) with its own
interpreter.
Quantized tensors are captured as stored (integers); their ``(scale, zero_point)``
is in ``params["quantization"]``.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputDataError, ModelLoadError
from ..layout import TFLITE_KERNEL_OPS, tflite_kernel_to_tf
from ..trace import Probe
from .tfcommon import (
    TFBackend,
    clean_attr,
    first_line,
    import_tf,
    iter_filtered,
    probe_layout,
    scope_layers,
)

__all__ = ["TFLiteBackend"]

#: ops that cannot run alone in a one-op model (they call subgraphs or custom code)
_NOT_REPLAYABLE = {"WHILE", "IF", "CALL_ONCE", "CUSTOM", "DELEGATE", "CALL"}
_ACTIVATIONS = {1: "relu", 2: "relu_n1_to_1", 3: "relu6", 4: "tanh", 5: "sign_bit"}
_SHAPE_OPS = {"SHAPE", "RANK", "SIZE"}
#: option accessors read from the flatbuffer -> param name
_OPTION_FIELDS = {
    "Padding": "padding",
    "StrideH": "stride_h",
    "StrideW": "stride_w",
    "DilationHFactor": "dilation_h",
    "DilationWFactor": "dilation_w",
    "FilterHeight": "filter_height",
    "FilterWidth": "filter_width",
    "DepthMultiplier": "depth_multiplier",
    "Axis": "axis",
    "Alpha": "alpha",
    "Beta": "beta",
    "Bias": "bias",
    "Radius": "radius",
    "KeepDims": "keep_dims",
    "AlignCorners": "align_corners",
    "HalfPixelCenters": "half_pixel_centers",
}
#: constant operands kept in params: op name -> [(input position, param name)]
_CONST_OPERANDS = {
    "TRANSPOSE": [(1, "perm")],
    "RESHAPE": [(1, "shape")],
    "PAD": [(1, "paddings")],
    "PADV2": [(1, "paddings")],
    "MIRROR_PAD": [(1, "paddings")],
    "MEAN": [(1, "axis")],
    "SUM": [(1, "axis")],
    "REDUCE_MAX": [(1, "axis")],
    "RESIZE_BILINEAR": [(1, "size")],
    "RESIZE_NEAREST_NEIGHBOR": [(1, "size")],
}


@dataclass
class _TOp:
    name: str
    tensor: int
    kind: str
    inputs: list[str]
    consts: list[int]
    params: dict[str, Any]
    fused: list[str]
    layer: str = ""
    op_index: int = -1  # the operator's index in subgraph 0
    data_inputs: list[int] = field(default_factory=list)  # tensor indices, aligned with ``inputs``
    replayable: bool = False


class TFLiteBackend(TFBackend):
    """Capture backend for a ``.tflite`` flatbuffer."""

    model_format = "tflite"

    def __init__(
        self,
        content: bytes,
        source: str,
        *,
        tensors: list[str] | None = None,
        data_format: str | None = None,
        tf_layout: str | None = None,
    ) -> None:
        tf = import_tf()
        super().__init__(source, tensors=tensors, data_format=data_format, tf_layout=tf_layout)
        self._default = self._data_format or "NHWC"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.interpreter = tf.lite.Interpreter(
                    model_content=content,
                    experimental_preserve_all_tensors=True,
                    experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                )
                self.interpreter.allocate_tensors()
        except Exception as e:  # noqa: BLE001 - the interpreter raises ValueError/RuntimeError
            msg = first_line(e)
            raise ModelLoadError(f"{source}: not a loadable TFLite model ({msg})") from None
        self._content = content
        self._op_by_name: dict[str, _TOp] | None = None
        self._model_obj: Any = None  # the flatbuffer as a schema.ModelT, for replay
        self._replayers: dict[tuple, tuple[Any, list[tuple[int, int]], int]] = {}
        self._producer: dict[int, dict] | None = None  # tensor -> the op that writes it
        self._analyse()

    @classmethod
    def from_file(
        cls,
        path: str,
        *,
        tensors: list[str] | None = None,
        data_format: str | None = None,
        tf_layout: str | None = None,
    ) -> TFLiteBackend:
        try:
            with open(path, "rb") as f:
                content = f.read()
        except OSError as e:
            raise ModelLoadError(f"{path}: cannot read the file ({e.strerror or e})") from None
        if len(content) < 8 or content[4:8] != b"TFL3":
            raise ModelLoadError(
                f"{path}: not a TFLite flatbuffer (no TFL3 identifier; corrupt or another kind of file)"
            )
        return cls(content, path, tensors=tensors, data_format=data_format, tf_layout=tf_layout)

    # -- analysis -------------------------------------------------------------------
    def _analyse(self) -> None:
        it = self.interpreter
        details = {d["index"]: d for d in it.get_tensor_details()}
        self._details = details
        ins = it.get_input_details()
        self._input_index = {}
        self._inputs = []
        self._input_dtypes = {}
        producer: dict[int, str] = {}
        data: set[int] = set()
        for d in ins:
            sig = d.get("shape_signature")
            shape = tuple(
                int(x) if x >= 0 else None
                for x in (sig if sig is not None and len(sig) else d["shape"])
            )
            self._inputs.append((d["name"], shape, self._default))
            self._input_index[d["name"]] = d["index"]
            self._input_dtypes[d["name"]] = d["dtype"]
            producer[d["index"]] = d["name"]
            data.add(d["index"])
        ops = [o for o in it._get_ops_details() if o.get("op_name") != "DELEGATE"]
        options = _read_options(self._content)
        produced = {int(t) for o in ops for t in o["outputs"]}
        raw: list[tuple[dict, int]] = []
        for o in ops:
            in_idx = [int(t) for t in o["inputs"] if int(t) >= 0]
            if o["op_name"] in _SHAPE_OPS or not any(t in data for t in in_idx):
                continue
            for t in (int(x) for x in o["outputs"]):
                data.add(t)
                raw.append((o, t))
        names: dict[int, str] = {}
        used: set[str] = set(producer.values())
        for _, t in raw:
            name = details[t]["name"] or f"tensor_{t}"
            if name in used:
                name = f"{name}#{t}"
            used.add(name)
            names[t] = name
        layers = scope_layers(list(names.values()))
        self._ops: list[_TOp] = []
        for o, t in raw:
            in_idx = [int(x) for x in o["inputs"] if int(x) >= 0]
            inputs = [producer[i] for i in in_idx if i in producer]
            consts = [i for i in in_idx if i not in data and i not in produced]
            params, fused = options.get(int(o["index"]), ({}, []))
            params = dict(params)
            for pos, key in _CONST_OPERANDS.get(o["op_name"], []):
                if pos < len(o["inputs"]) and int(o["inputs"][pos]) in consts:
                    try:
                        params[key] = clean_attr(np.asarray(it.get_tensor(int(o["inputs"][pos]))))
                    except ValueError:
                        pass
            q = details[t].get("quantization") or (0.0, 0)
            if q and q[0]:
                params["quantization"] = [float(q[0]), int(q[1])]
            producer[t] = names[t]
            self._ops.append(
                _TOp(
                    names[t],
                    t,
                    str(o["op_name"]),
                    inputs,
                    consts,
                    params,
                    list(fused),
                    layers.get(names[t], names[t]),
                    op_index=int(o["index"]),
                    data_inputs=[i for i in in_idx if i in producer],
                    # every operand is either fed on replay or a constant the model holds
                    replayable=str(o["op_name"]) not in _NOT_REPLAYABLE
                    and all(i in producer or i in consts for i in in_idx),
                )
            )
        self.check_tensors({op.name for op in self._ops} | set(self._input_index))

    # -- capture --------------------------------------------------------------------
    def _iter_capture_impl(self, inputs: dict[str, np.ndarray]) -> Iterator[Probe]:
        return iter_filtered(self._capture(self.model_feed(inputs)), self)

    def _forward_impl(self, inputs: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        """One ``invoke`` and only the tensors ``names`` read out (no probes, no layouts)."""
        feed = self.model_feed(inputs)
        by_name = self._by_name()
        unknown = [n for n in names if n not in by_name and n not in feed]
        if unknown:
            raise InputDataError(f"{self.source}: the model produced no probe {unknown[0]!r}")
        self._invoke(feed)
        return {
            n: feed[n] if n in feed else np.array(self.interpreter.get_tensor(by_name[n].tensor))
            for n in names
        }

    def _capture(self, feed: dict[str, np.ndarray]) -> Iterator[Probe]:
        self._invoke(feed)
        yield from self._probes(feed)

    def _invoke(self, feed: dict[str, np.ndarray]) -> None:
        """Resize the inputs to ``feed``'s shapes if needed, set them, run the model."""
        it = self.interpreter
        resized = False
        for name, arr in feed.items():
            idx = self._input_index[name]
            if tuple(self._details_now(idx)) != arr.shape:
                try:
                    it.resize_tensor_input(idx, list(arr.shape))
                except Exception as e:  # noqa: BLE001
                    raise InputDataError(
                        f"{self.source}: input {name!r} cannot take shape {arr.shape} ({e})"
                    ) from None
                resized = True
        if resized:
            it.allocate_tensors()
        for name, arr in feed.items():
            it.set_tensor(self._input_index[name], self._quantize(name, arr))
        try:
            it.invoke()
        except Exception as e:  # noqa: BLE001
            raise InputDataError(f"{self.source}: the TFLite interpreter failed: {e}") from None

    def _probes(self, feed: dict[str, np.ndarray]) -> Iterator[Probe]:
        it = self.interpreter
        shapes: dict[str, tuple[int, ...]] = {}
        lays: dict[str, str] = {}
        for name, arr in feed.items():
            lay = self._default if arr.ndim == 4 else ("NC" if arr.ndim == 2 else "")
            shapes[name], lays[name] = arr.shape, lay
            yield Probe(name=name, kind="Input", value=arr, layer=name, blob=name, layout=lay)
        for op in self._ops:
            if not self.wanted(op.name):
                continue
            arr = np.array(it.get_tensor(op.tensor))
            perm = op.params.get("perm")
            layout, flat = probe_layout(
                arr.shape,
                op={"RESHAPE": "reshape", "TRANSPOSE": "transpose"}.get(op.kind, ""),
                in_layouts=[lays.get(n, "") for n in op.inputs],
                in_shape=shapes.get(op.inputs[0]) if op.inputs else None,
                perm=perm if isinstance(perm, list) else None,
                default=self._default,
            )
            shapes[op.name], lays[op.name] = arr.shape, layout
            yield Probe(
                name=op.name,
                kind=op.kind,
                value=arr,
                layer=op.layer,
                blob=self._details[op.tensor]["name"],
                inputs=list(op.inputs),
                params=op.params,
                fused=list(op.fused),
                layout=layout,
                flat_shape=flat,
            )

    def _quantize(self, name: str, arr: np.ndarray) -> np.ndarray:
        """Float input -> the input tensor's dtype; integer inputs of a quantized model
        are quantized with the tensor's (scale, zero_point)."""
        dtype = np.dtype(self._input_dtypes[name])
        if np.issubdtype(dtype, np.integer):
            scale, zero = self._details[self._input_index[name]].get("quantization") or (0.0, 0)
            if scale:
                info = np.iinfo(dtype)
                q = np.round(arr / scale) + zero
                return np.clip(q, info.min, info.max).astype(dtype)
        return arr.astype(dtype, copy=False)

    def _details_now(self, idx: int) -> tuple[int, ...]:
        for d in self.interpreter.get_input_details():
            if d["index"] == idx:
                return tuple(int(x) for x in d["shape"])
        return ()

    def wanted(self, name: str) -> bool:
        return self._tensors is None or name in self._tensors

    def _weights_impl(self) -> dict[str, list[np.ndarray]]:
        """Each op's constant float operands, a kernel in TF's own layout (as every backend
        gives them: ``layout.tflite_kernel_to_tf``), biases and the rest as stored."""
        out: dict[str, list[np.ndarray]] = {}
        for op in self._ops:
            ws = []
            for i in op.consts:
                if not np.issubdtype(self._details[i]["dtype"], np.floating):
                    continue
                try:
                    w = np.array(self.interpreter.get_tensor(i))
                except ValueError:
                    continue
                if not ws and op.kind in TFLITE_KERNEL_OPS:  # the first float constant is the kernel
                    w = tflite_kernel_to_tf(op.kind, w, op.params.get("depth_multiplier") or 1)
                ws.append(w)
            if ws:
                out[op.name] = ws
        return out

    # -- replay -----------------------------------------------------------------------
    def can_replay(self, probe_name: str) -> bool:
        op = self._by_name().get(probe_name)
        return op is not None and op.replayable

    def replay(self, probe_name: str, inputs: list[np.ndarray]) -> np.ndarray:
        """Run the one op behind ``probe_name`` on ``inputs`` (in the model's layout and
        dtypes, one array per entry of the probe's ``inputs``): a one-op model holding
        the op, its constant operands and its options, built from the flatbuffer on the
        first replay of the op and kept with its own interpreter (same op resolver as the
        capture, so the same kernels)."""
        op = self._by_name().get(probe_name)
        if op is None or not op.replayable:
            raise InputDataError(f"{self.source}: op {probe_name!r} cannot be replayed on its own")
        if len(inputs) != len(op.data_inputs):
            raise InputDataError(
                f"{self.source}: op {probe_name!r} reads {len(op.data_inputs)} input(s) {op.inputs}; "
                f"got {len(inputs)} array(s)"
            )
        key = (op.tensor, tuple(op.data_inputs))
        return self._run_sub(f"op {probe_name!r}", key, [op.op_index], op.data_inputs, op.tensor, inputs)

    def can_replay_group(self, output: str, inputs: list[str]) -> bool:
        """Whether the ops between the probes ``inputs`` and ``output`` can run alone."""
        plan = self._group_plan(output, inputs)
        return not isinstance(plan, str)

    def replay_group(self, output: str, inputs: list[str], arrays: list[np.ndarray]) -> np.ndarray:
        """Run the ops between the probes ``inputs`` (fed ``arrays``, model layout and
        dtypes) and the probe ``output``: own error of a group (``MUL`` -> ``ADD`` for a
        BatchNorm+Scale), in a model of just those ops, built once per group."""
        plan = self._group_plan(output, inputs)
        if isinstance(plan, str):
            raise InputDataError(f"{self.source}: group {inputs} -> {output!r} cannot be replayed ({plan})")
        if len(arrays) != len(inputs):
            raise InputDataError(
                f"{self.source}: group -> {output!r} reads {len(inputs)} input(s); got {len(arrays)} array(s)"
            )
        ops, feeds, out = plan
        return self._run_sub(f"group -> {output!r}", (out, tuple(feeds)), ops, feeds, out, arrays)

    def _tensor_of(self, probe: str) -> int | None:
        op = self._by_name().get(probe)
        return op.tensor if op is not None else self._input_index.get(probe)

    def _group_plan(self, output: str, inputs: list[str]) -> tuple[list[int], list[int], int] | str:
        """``(operator indices in execution order, fed tensors, output tensor)`` of the
        ops computing ``output`` from ``inputs``, or why there are none."""
        out = self._tensor_of(output)
        feeds = [self._tensor_of(n) for n in inputs]
        if out is None or any(t is None for t in feeds):
            return "unknown probe"
        fed = set(feeds)
        producer = self._producers()
        ops: set[int] = set()
        stack = [out]
        seen: set[int] = set()
        while stack:
            t = stack.pop()
            if t in fed or t in seen or t < 0:
                continue
            seen.add(t)
            o = producer.get(t)
            if o is None:
                if not self._is_constant(t):
                    return f"it needs tensor {self._details[t]['name']!r}, which is not among its inputs"
                continue
            if str(o["op_name"]) in _NOT_REPLAYABLE:
                return f"{o['op_name']} cannot run alone"
            ops.add(int(o["index"]))
            stack.extend(int(i) for i in o["inputs"])
        if not ops:
            return "no op between them"
        return sorted(ops), [int(t) for t in feeds], out  # type: ignore[misc]

    def _producers(self) -> dict[int, dict]:
        if self._producer is None:
            self._producer = {
                int(t): o for o in self.interpreter._get_ops_details() for t in o["outputs"]
            }
        return self._producer

    def _is_constant(self, t: int) -> bool:
        buf = self._model_object().buffers[self._model_object().subgraphs[0].tensors[t].buffer]
        return buf is not None and buf.data is not None and len(buf.data) > 0

    def _run_sub(
        self, what: str, key: tuple, ops: list[int], feeds: list[int], out: int, arrays: list[np.ndarray]
    ) -> np.ndarray:
        """Run the sub-model of operators ``ops`` (built once per ``key``) with the tensors
        ``feeds`` set to ``arrays``; the value of tensor ``out``."""
        it, slots, out_idx = self._sub_interpreter(what, key, ops, feeds, out)
        values: dict[int, np.ndarray] = {}
        for t, a in zip(feeds, arrays, strict=True):
            values.setdefault(t, np.asarray(a))
        try:
            resized = False
            for (t, idx), cur in zip(slots, it.get_input_details(), strict=True):
                values[t] = values[t].astype(self._details[t]["dtype"], copy=False)
                if tuple(int(d) for d in cur["shape"]) != values[t].shape:
                    it.resize_tensor_input(idx, list(values[t].shape))
                    resized = True
            if resized:
                it.allocate_tensors()
            for t, idx in slots:
                it.set_tensor(idx, values[t])
            it.invoke()
            return np.array(it.get_tensor(out_idx))
        except (ValueError, RuntimeError) as e:
            raise InputDataError(f"{self.source}: replaying {what} failed: {first_line(e)}") from None

    def _by_name(self) -> dict[str, _TOp]:
        if self._op_by_name is None:
            self._op_by_name = {op.name: op for op in self._ops}
        return self._op_by_name

    def _sub_interpreter(
        self, what: str, key: tuple, ops: list[int], feeds: list[int], out: int
    ) -> tuple[Any, list[tuple[int, int]], int]:
        """``(interpreter, [(model tensor, interpreter input index)], output index)`` of
        the sub-model of ``ops``, built once per ``key``."""
        cached = self._replayers.get(key)
        if cached is None:
            tf = import_tf()
            content, inputs, position = _sub_model(self._model_object(), ops, feeds, out)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the interpreter's deprecation notice
                    it = tf.lite.Interpreter(
                        model_content=content,
                        experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
                    )
                it.allocate_tensors()
            except (ValueError, RuntimeError) as e:
                raise InputDataError(f"{self.source}: {what} cannot be run alone ({first_line(e)})") from None
            slots = [(t, int(d["index"])) for t, d in zip(inputs, it.get_input_details(), strict=True)]
            cached = self._replayers[key] = (it, slots, int(it.get_output_details()[position]["index"]))
        return cached

    def _model_object(self) -> Any:
        if self._model_obj is None:
            from tensorflow.lite.python import schema_py_generated as schema

            self._model_obj = schema.ModelT.InitFromPackedBuf(bytearray(self._content), 0)
        return self._model_obj


def _sub_model(model: Any, op_indices: list[int], feeds: list[int], output: int) -> tuple[bytes, list[int], int]:
    """A TFLite flatbuffer holding only the operators ``op_indices`` of subgraph 0 of
    ``model`` (a ``schema.ModelT``), in that order: the tensors ``feeds`` become the
    subgraph's inputs, constant operands keep their buffers, ``output`` is its output.
    Returns ``(content, the original tensor index of each subgraph input, 0)``."""
    import flatbuffers
    from tensorflow.lite.python import schema_py_generated as schema

    sub = model.subgraphs[0]
    fed = set(feeds)
    one = schema.ModelT()
    one.version = model.version
    one.operatorCodes = model.operatorCodes
    one.description = b"layerparity replay"
    one.buffers = [schema.BufferT()]
    tensors: list[Any] = []
    remap: dict[int, int] = {}

    def add(ti: int) -> int:
        if ti < 0:
            return ti
        if ti not in remap:
            t = copy.copy(sub.tensors[ti])
            buf = model.buffers[t.buffer] if t.buffer else None
            if ti not in fed and buf is not None and buf.data is not None and len(buf.data):
                one.buffers.append(buf)
                t.buffer = len(one.buffers) - 1
            else:
                t.buffer = 0
            tensors.append(t)
            remap[ti] = len(tensors) - 1
        return remap[ti]

    ins = list(dict.fromkeys(feeds))
    for t in ins:
        add(t)
    operators = []
    for i in op_indices:
        op = copy.copy(sub.operators[i])
        op.inputs = [add(int(t)) for t in op.inputs]
        op.outputs = [add(int(t)) for t in op.outputs]
        if op.intermediates is not None:
            op.intermediates = [add(int(t)) for t in op.intermediates]
        operators.append(op)
    graph = schema.SubGraphT()
    graph.tensors = tensors
    graph.inputs = [remap[t] for t in ins]
    graph.outputs = [remap[output]]
    graph.operators = operators
    graph.name = b"replay"
    one.subgraphs = [graph]
    builder = flatbuffers.Builder(1024)
    builder.Finish(one.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output()), ins, 0


def _read_options(content: bytes) -> dict[int, tuple[dict[str, Any], list[str]]]:
    """Per operator index of subgraph 0: (params, fused activations) from its builtin options."""
    try:
        from tensorflow.lite.python import schema_py_generated as schema
    except Exception:  # noqa: BLE001 - options are a bonus; capture works without them
        return {}
    out: dict[int, tuple[dict[str, Any], list[str]]] = {}
    try:
        model = schema.Model.GetRootAs(content, 0)
        if model.SubgraphsLength() < 1:
            return {}
        sub = model.Subgraphs(0)
        by_value = {
            v: k
            for k, v in vars(schema.BuiltinOptions).items()
            if not k.startswith("_") and isinstance(v, int)
        }
        padding = {
            v: k
            for k, v in vars(schema.Padding).items()
            if not k.startswith("_") and isinstance(v, int)
        }
        for i in range(sub.OperatorsLength()):
            op = sub.Operators(i)
            kind = by_value.get(op.BuiltinOptionsType())
            table = op.BuiltinOptions()
            cls = getattr(schema, kind, None) if kind and kind != "NONE" else None
            if cls is None or table is None:
                continue
            opts = cls()
            opts.Init(table.Bytes, table.Pos)
            params: dict[str, Any] = {}
            for acc, key in _OPTION_FIELDS.items():
                f = getattr(opts, acc, None)
                if callable(f):
                    v = f()
                    params[key] = padding.get(v, v) if key == "padding" else clean_attr(v)
            fused = []
            faf = getattr(opts, "FusedActivationFunction", None)
            if callable(faf) and faf() in _ACTIVATIONS:
                fused = [_ACTIVATIONS[faf()]]
            out[i] = (params, fused)
    except Exception:  # noqa: BLE001 - a flatbuffer we cannot read just gives no options
        return out
    return out

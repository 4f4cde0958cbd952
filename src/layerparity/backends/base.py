"""The one small interface every framework runner implements.

Public methods validate and convert; subclasses override only the ``_*_impl``
hooks. Backends are context managers and import their framework lazily.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..errors import InputDataError, InputError
from ..trace import Probe, Trace


@dataclass(frozen=True)
class InputSpec:
    """One model input: name, shape (batch first; None for a free dimension), layout."""

    name: str
    shape: tuple[int | None, ...]
    layout: str = ""
    #: the input as the model itself declares it (its own axis order) and the layout it
    #: was read in, when that differs from ``shape``/``layout`` (a TF model): only the
    #: shape error message uses them
    model_shape: tuple[int | None, ...] | None = field(default=None, compare=False, repr=False)
    model_layout: str = field(default="", compare=False, repr=False)


class Backend:
    framework: str = ""

    def __init__(self, source: str = "") -> None:
        self.source = source

    # -- public ------------------------------------------------------------
    def input_specs(self) -> list[InputSpec]:
        return self._input_specs_impl()

    def iter_capture(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> Iterator[Probe]:
        """Run the model once and yield one probe per layer output, in execution order.

        ``inputs`` are in Caffe's NCHW layout (a dict by input name, or one array
        for a single-input model).
        """
        return self._iter_capture_impl(self.normalize_inputs(inputs))

    def capture(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> Trace:
        feed = self.normalize_inputs(inputs)
        return Trace(self.framework, self.source, self._iter_capture_impl(feed), inputs=feed, meta=self.meta())

    def forward(self, inputs: Mapping[str, np.ndarray] | np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
        """Run the model once and return only the values of the probes ``names``.

        For screening many inputs (a sweep compares outputs first): backends that can
        run plainly (no per-layer capture) override :meth:`_forward_impl`. Values are in
        the backend's own layout, as the probes of :meth:`iter_capture` declare them.
        A name the model does not produce is an :class:`InputError`.
        """
        feed = self.normalize_inputs(inputs)
        out = self._forward_impl(feed, list(names))
        missing = [n for n in names if n not in out]
        if missing:
            raise InputError(f"{self.source}: the model produced no probe {missing[0]!r}")
        return out

    def weights(self) -> dict[str, list[np.ndarray]]:
        """Every layer's parameters in the framework's own layout; read once per backend."""
        cached = getattr(self, "_weights_cache", None)
        if cached is None:
            cached = self._weights_cache = self._weights_impl()
        return cached

    def can_replay(self, probe_name: str) -> bool:
        return False

    def replay(self, probe_name: str, inputs: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} cannot run {probe_name!r} on its own")

    def replay_many(
        self, requests: list[tuple[str, list[np.ndarray]]]
    ) -> list[np.ndarray | Exception]:
        """Replay several probes at once: one output per request, in order. A request that
        cannot be replayed gives its exception (an InputError subclass) in its slot instead
        of sinking the others.

        ``requests`` are ``(probe_name, inputs)`` pairs, as for :meth:`replay`. This default
        calls :meth:`replay` for each; other exceptions than :class:`InputError` propagate.
        Backends that can run several layers in one call override it.
        """
        return replay_each(self, requests)

    def can_replay_group(self, output: str, inputs: list[str]) -> bool:
        return False

    def replay_group(self, output: str, inputs: list[str], arrays: list[np.ndarray]) -> np.ndarray:
        """Run the ops between the probes ``inputs`` (fed ``arrays``) and ``output``: own error of a group."""
        raise NotImplementedError(f"{type(self).__name__} cannot run a group of ops on its own")

    def replay_groups(
        self, requests: list[tuple[str, list[str], list[np.ndarray]]]
    ) -> list[np.ndarray | Exception]:
        """Several :meth:`replay_group` requests ``(output, inputs, arrays)`` at once, one
        output per request in order; a refused request gets its :class:`InputError` in its
        slot. This default calls :meth:`replay_group` for each; graph backends run them
        all in one compiled call."""
        return replay_each_group(self, requests)

    def meta(self) -> dict:
        return {}

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers -----------------------------------------------------------
    def normalize_inputs(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        """Check inputs against :meth:`input_specs`: names, rank, shape, dtype, finiteness."""
        specs = self.input_specs()
        if not isinstance(inputs, Mapping):
            if len(specs) != 1:
                names = ", ".join(s.name for s in specs)
                raise InputDataError(
                    f"{self.source}: the model has {len(specs)} inputs ({names}); pass a dict name -> array"
                )
            inputs = {specs[0].name: inputs}
        known = {s.name: s for s in specs}
        unknown = [k for k in inputs if k not in known]
        if unknown:
            raise InputDataError(
                f"{self.source}: unknown input {unknown[0]!r}; the model's inputs are {sorted(known)}"
            )
        missing = [k for k in known if k not in inputs]
        if missing:
            raise InputDataError(f"{self.source}: input {missing[0]!r} was not given")
        out = {}
        for name, arr in inputs.items():
            out[name] = check_input_array(self.source, name, arr, known[name])
        batches = {n: a.shape[0] for n, a in out.items() if a.ndim}
        # Inputs that all have the leading size the model declares for them are taken as
        # declared: axis 0 need not be a batch (R-FCN's rois are R x 5 beside a 1 x C x H x W
        # image). Once one input's leading size is not its declared one, the inputs are being
        # batched, and Caffe and TF would broadcast a mismatch silently, so they must agree.
        as_declared = all(known[n].shape and known[n].shape[0] == b for n, b in batches.items())
        if len(set(batches.values())) > 1 and not as_declared:
            desc = ", ".join(f"{n!r} has {b}" for n, b in batches.items())
            raise InputDataError(f"{self.source}: inputs disagree on the batch size: {desc}")
        return out

    # -- hooks -------------------------------------------------------------
    def _input_specs_impl(self) -> list[InputSpec]:
        raise NotImplementedError

    def _iter_capture_impl(self, inputs: dict[str, np.ndarray]) -> Iterator[Probe]:
        raise NotImplementedError

    def _weights_impl(self) -> dict[str, list[np.ndarray]]:
        return {}

    def _forward_impl(self, inputs: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        """Default: a full capture, keeping only the wanted values."""
        want, out = set(names), {}
        for p in self._iter_capture_impl(inputs):
            if p.name in want and p.value is not None:
                out[p.name] = np.asarray(p.value)
        return out


@runtime_checkable
class Replayer(Protocol):
    """What the engine needs to measure own errors: run one TF layer, or one group of
    ops, on given inputs (arrays in the backend's own layout). Every :class:`Backend`
    is one; :func:`as_replayer` adapts an object that only has ``can_replay``/``replay``."""

    def can_replay(self, probe_name: str) -> bool: ...

    def replay(self, probe_name: str, inputs: list[np.ndarray]) -> np.ndarray: ...

    def replay_many(self, requests: list[tuple[str, list[np.ndarray]]]) -> list[np.ndarray | Exception]: ...

    def can_replay_group(self, output: str, inputs: list[str]) -> bool: ...

    def replay_group(self, output: str, inputs: list[str], arrays: list[np.ndarray]) -> np.ndarray: ...

    def replay_groups(
        self, requests: list[tuple[str, list[str], list[np.ndarray]]]
    ) -> list[np.ndarray | Exception]: ...


class _SingleLayerReplayer:
    """A :class:`Replayer` over an object that can only replay single layers."""

    def __init__(self, obj: Any) -> None:
        self._obj = obj

    def can_replay(self, probe_name: str) -> bool:
        return bool(self._obj.can_replay(probe_name))

    def replay(self, probe_name: str, inputs: list[np.ndarray]) -> np.ndarray:
        return self._obj.replay(probe_name, inputs)

    def replay_many(self, requests: list[tuple[str, list[np.ndarray]]]) -> list[np.ndarray | Exception]:
        return replay_each(self._obj, requests)

    def can_replay_group(self, output: str, inputs: list[str]) -> bool:
        return False

    def replay_group(self, output: str, inputs: list[str], arrays: list[np.ndarray]) -> np.ndarray:
        raise NotImplementedError(f"{type(self._obj).__name__} cannot run a group of ops on its own")

    def replay_groups(self, requests: list[tuple[str, list[str], list[np.ndarray]]]) -> list[np.ndarray | Exception]:
        return replay_each_group(self, requests)


def as_replayer(obj: Any) -> Replayer:
    """``obj`` as a :class:`Replayer`: itself when it is one, else an adapter over its
    ``can_replay``/``replay``; anything else is an :class:`InputError`."""
    if isinstance(obj, Replayer):
        return obj
    if callable(getattr(obj, "can_replay", None)) and callable(getattr(obj, "replay", None)):
        return _SingleLayerReplayer(obj)
    raise InputError(f"replay: expected a TF backend (or an object with can_replay/replay), got {type(obj).__name__}")


def replay_each_group(
    replayer: Any, requests: list[tuple[str, list[str], list[np.ndarray]]]
) -> list[np.ndarray | Exception]:
    """``replayer.replay_group`` on each request in turn; an :class:`InputError` goes into its slot."""
    out: list[np.ndarray | Exception] = []
    for output, names, arrays in requests:
        try:
            out.append(replayer.replay_group(output, names, arrays))
        except InputError as e:
            out.append(e)
    return out


def replay_each(replayer: Any, requests: list[tuple[str, list[np.ndarray]]]) -> list[np.ndarray | Exception]:
    """``replayer.replay`` on each request in turn; an :class:`InputError` goes into its slot."""
    out: list[np.ndarray | Exception] = []
    for name, inputs in requests:
        try:
            out.append(replayer.replay(name, inputs))
        except InputError as e:
            out.append(e)
    return out


def check_input_array(source: str, name: str, arr: object, spec: InputSpec) -> np.ndarray:
    """Validate one input array (given in NCHW) against its spec; return it as float32."""
    try:
        a = np.asarray(arr)
    except Exception as e:  # noqa: BLE001
        raise InputDataError(f"{source}: input {name!r} is not an array ({e})") from None
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise InputDataError(f"{source}: input {name!r} has dtype {a.dtype}; expected a numeric array")
    if a.size == 0:
        raise InputDataError(f"{source}: input {name!r} is empty (shape {a.shape})")
    if np.issubdtype(a.dtype, np.complexfloating):
        raise InputDataError(f"{source}: input {name!r} is complex; expected real numbers")
    a = a.astype(np.float32, copy=False)
    if not np.all(np.isfinite(a)):
        bad = int(np.size(a) - np.count_nonzero(np.isfinite(a)))
        raise InputDataError(f"{source}: input {name!r} holds {bad} NaN/Inf values")
    if spec.shape:
        if a.ndim != len(spec.shape):
            raise InputDataError(
                f"{source}: input {name!r} has rank {a.ndim} (shape {a.shape}); "
                f"the model expects rank {len(spec.shape)} {_fmt(spec.shape)} in NCHW"
            )
        for i, (got, want) in enumerate(zip(a.shape, spec.shape, strict=True)):
            if i > 0 and want is not None and got != want:
                raise InputDataError(_shape_message(source, name, a.shape, spec, i))
    return a


def _shape_message(source: str, name: str, got: tuple[int, ...], spec: InputSpec, axis: int) -> str:
    """Why an input of shape ``got`` (NCHW) does not fit ``spec``. When the model's own
    shape is in another layout, say it as the model declares it (not only converted to
    NCHW), and when the input fits it as is, say the model may take NCHW."""
    own, lay = spec.model_shape, spec.model_layout
    if own is None or len(own) != len(got) or not lay or lay == spec.layout:
        return (f"{source}: input {name!r} has shape {got}; the model expects "
                f"{_fmt(spec.shape)} in NCHW (axis {axis} differs)")
    msg = (f"{source}: input {name!r} has shape {got} (read as NCHW, as Caffe's); the model's own input is "
           f"{_fmt(own)}, which was read as {lay}, i.e. {_fmt(spec.shape)} in NCHW (axis {axis} differs)")
    if all(w is None or g == w for i, (g, w) in enumerate(zip(got, own, strict=True)) if i > 0):
        msg += ("; your input has the model's own shape as is: if it is NCHW, the model probably takes "
                "NCHW too: declare it with --tf-layout NCHW (tf_layout=\"NCHW\"); if it is already in the "
                "model's layout, give it in NCHW as Caffe's instead (layerparity converts it)")
    else:
        msg += "; if the model's 4-D tensors are in another layout, declare it with --tf-layout (tf_layout=)"
    return msg


def _fmt(shape: tuple[int | None, ...]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"

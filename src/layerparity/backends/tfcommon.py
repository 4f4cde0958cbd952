"""What the TensorFlow backends share: lazy imports, the base class, layouts, scopes.

:mod:`.keras`, :mod:`.tfgraph` and :mod:`.tflite` import this module and nothing
of each other; :mod:`.tensorflow` (``load_tf``) picks one of them. Nothing here
imports TensorFlow at import time.

Layouts (see docs/capture-tensorflow.md): a 4-D TF tensor is labelled with a
permutation of the letters ``N, C, H, W``, read relative to Caffe's NCHW (the
model's own ``tf_layout``, ``"NHWC"`` unless declared otherwise);
:func:`probe_layout` is the one rule every backend labels its probes with.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import FrameworkMissingError, InputDataError, ModelLoadError
from ..layout import axes_permutation
from ..names import CALL_WRAPPER, COPY_SUFFIX
from ._caffe_net import squeezed_layout  # the same rule as the Caffe worker (pure NumPy)
from .base import Backend, InputSpec

__all__ = [
    "TFBackend",
    "import_tf",
    "import_keras",
    "first_line",
    "cannot_run_here",
    "cannot_run_error",
    "clean_attr",
    "iter_filtered",
    "scope_layers",
    "normalize_data_format",
    "layout_of_format",
    "normalize_tf_layout",
    "is_spatial_layout",
    "derive_layout",
    "flat_layout",
    "permuted_layout",
    "probe_layout",
    "to_model_layout",
    "nchw_spec",
]


# -- lazy imports ----------------------------------------------------------------


def import_tf() -> Any:
    """``tensorflow``, imported on first use (quietly)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except Exception as e:  # noqa: BLE001 - any import failure means "not usable"
        raise FrameworkMissingError(
            f"TensorFlow is needed to capture a TF model and is not importable ({type(e).__name__}: {e}); "
            "install it with: pip install 'layerparity[tf]'"
        ) from None
    return tf


def import_keras() -> Any:
    import_tf()
    try:
        import keras
    except Exception as e:  # noqa: BLE001
        raise FrameworkMissingError(
            f"Keras is needed to capture a Keras model and is not importable ({e}); "
            "install it with: pip install 'layerparity[tf]'"
        ) from None
    return keras


# -- small helpers -----------------------------------------------------------------

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_FUNCTION_NODE = re.compile(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:[^\]]*\]")


#: lines of TF's and Keras' messages that only frame the reason
_PREAMBLE = (
    "Exception encountered when calling",
    "Graph execution error",
    "Detected at node",
    "File ",
    "Node:",
    "[[",
    "Arguments received by",
    "\u2022",
)


def first_line(e: Any) -> str:
    """The first line of an exception's message that says what went wrong (TF's run on
    for pages), or its type's name.

    TF's decorations go: ANSI colour codes, ``{{function_node ...}}`` prefixes, Keras'
    "Exception encountered when calling X.call()." and a Session's "Graph execution
    error: Detected at node ... defined at (traceback)" framing.
    """
    s = _FUNCTION_NODE.sub("", _ANSI.sub("", str(e))).strip()
    lines = [ln.strip() for ln in s.splitlines() if ln.strip()]
    useful = [ln for ln in lines if not ln.startswith(_PREAMBLE)]
    return (useful or lines or [type(e).__name__])[0]


def cannot_run_here(e: BaseException) -> bool:
    """Whether ``e`` says TensorFlow has no kernel for an op *on this machine*: an
    ``UnimplementedError`` (an NCHW ``Conv2D`` on a CPU without oneDNN, say)."""
    tf = import_tf()
    return isinstance(e, tf.errors.UnimplementedError)


def cannot_run_error(source: str, what: str, e: BaseException) -> ModelLoadError:
    """The one-line error for a model TF cannot run here, naming the layer/op and why."""
    reason = first_line(e)
    hint = ""
    if "NHWC" in reason and "NCHW" in reason:
        hint = (
            " (TF's CPU kernels take channels_last; run it where TF has NCHW kernels, e.g. "
            "a GPU or a oneDNN build, or export the port channels_last)"
        )
    return ModelLoadError(f"{source}: TensorFlow cannot run {what} on this machine: {reason}{hint}")


def clean_attr(v: Any) -> Any:
    """JSON-able form of a TF attr / Keras config value (bytes -> str, tuples -> lists)."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, (list, tuple)):
        return [clean_attr(x) for x in v]
    if isinstance(v, dict):
        return {str(k): clean_attr(x) for k, x in v.items()}
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def iter_filtered(probes: Iterator, backend: TFBackend) -> Iterator:
    """The probes ``backend`` wants (its ``tensors=``), input probes always."""
    for p in probes:
        if backend.wanted(p.name) or p.kind == "Input":
            yield p


# -- layouts ---------------------------------------------------------------------


def normalize_data_format(fmt: str | None) -> str | None:
    """``"NHWC"``/``"NCHW"`` (or None) from any of Keras' or TF's spellings."""
    if fmt is None:
        return None
    f = str(fmt).strip()
    table = {"channels_last": "NHWC", "nhwc": "NHWC", "channels_first": "NCHW", "nchw": "NCHW"}
    if f.lower() not in table:
        raise InputDataError(
            f"data_format={fmt!r} is not understood; use 'channels_last'/'NHWC' or 'channels_first'/'NCHW'"
        )
    return table[f.lower()]


def normalize_tf_layout(tf_layout: str | None, data_format: str | None = None) -> str | None:
    """The declared layout of a model's 4-D tensors, relative to Caffe's NCHW: any
    permutation of the letters ``N, C, H, W`` (``"NHWC"``, ``"NWHC"`` for a port that
    takes spatially transposed images...), or None (let the model say).

    ``data_format`` (``"channels_last"``/``"channels_first"``) is the older spelling of
    ``"NHWC"``/``"NCHW"``; giving both, differently, is an :class:`InputDataError`.
    """
    fmt = normalize_data_format(data_format)
    if tf_layout is None:
        return fmt
    lay = str(tf_layout).strip()
    lay = normalize_data_format(lay) if lay.lower().startswith("channels_") else lay.upper()
    if not is_spatial_layout(lay):
        raise InputDataError(
            f"tf_layout={tf_layout!r} is not a layout: give the axes of the model's 4-D tensors as a "
            "permutation of the letters N, C, H, W relative to Caffe's NCHW (e.g. 'NHWC', or 'NWHC' "
            "for a port that takes spatially transposed images)"
        )
    if fmt is not None and fmt != lay:
        raise InputDataError(
            f"tf_layout={tf_layout!r} and data_format={data_format!r} disagree; give only tf_layout"
        )
    return lay


def layout_of_format(fmt: Any) -> str | None:
    """Layout declared by a ``data_format`` value (Keras or TF spelling), else None."""
    if isinstance(fmt, bytes):
        fmt = fmt.decode("ascii", "replace")
    if not isinstance(fmt, str):
        return None
    f = fmt.lower()
    if f in ("channels_first", "nchw"):
        return "NCHW"
    if f in ("channels_last", "nhwc"):
        return "NHWC"
    return None


def is_spatial_layout(layout: str) -> bool:
    """Whether ``layout`` labels a 4-D tensor: a permutation of ``N, C, H, W``."""
    return isinstance(layout, str) and len(layout) == 4 and sorted(layout) == sorted("NCHW")


def derive_layout(
    rank: int,
    *,
    declared: str | None,
    in_layouts: Sequence[str],
    default: str,
) -> str:
    """Layout of an output of ``rank``.

    A 4-D output reads its spatial order (H before W, or W before H) from its first
    4-D input, else from the model ``default``. An op that declares a ``data_format``
    (``declared`` is ``"NHWC"``/``"NCHW"``) puts N first and C last or second around
    that spatial order: a channels_last conv in a model declared ``NWHC`` outputs
    ``NWHC``. Without a declaration the output inherits its first 4-D input's
    layout, else the default. 2-D is ``"NC"``; other ranks ``""``.
    """
    if rank == 2:
        return "NC"
    if rank != 4:
        return ""
    inherited = next((lay for lay in in_layouts if is_spatial_layout(lay)), None)
    if declared in ("NCHW", "NHWC"):
        base = inherited or (default if is_spatial_layout(default) else "NHWC")
        spatial = "".join(a for a in base if a in "HW")
        return "NC" + spatial if declared == "NCHW" else "N" + spatial + "C"
    return inherited or default


def flat_layout(
    in_layout: str, in_shape: Sequence[int], out_shape: Sequence[int]
) -> tuple[str, tuple[int, ...] | None]:
    """A 4-D -> 2-D reshape that keeps every element of an item: ``("flat:" + in_layout,
    per-item shape)``; another 2-D result is ``"NC"``, anything else ``""``."""
    if (
        len(in_shape) == 4
        and len(out_shape) == 2
        and is_spatial_layout(in_layout)
        and in_layout[0] == "N"
        and int(np.prod(in_shape[1:])) == int(out_shape[1])
    ):
        return "flat:" + in_layout, tuple(int(d) for d in in_shape[1:])
    return ("NC" if len(out_shape) == 2 else ""), None


def permuted_layout(in_layout: str, perm: Sequence[int]) -> str:
    """Labels follow the data: ``NHWC`` transposed by ``(0, 3, 1, 2)`` is ``NCHW``."""
    if len(in_layout) != len(perm) or in_layout.startswith("flat:") or not in_layout:
        return ""
    try:
        return "".join(in_layout[int(p)] for p in perm)
    except (IndexError, ValueError):
        return ""


def probe_layout(
    out_shape: Sequence[int],
    *,
    op: str = "",
    in_layouts: Sequence[str] = (),
    in_shape: Sequence[int] | None = None,
    perm: Sequence[int] | None = None,
    data_format: Any = None,
    default: str,
) -> tuple[str, tuple[int, ...] | None]:
    """The declared layout (and flat shape) of one probe: the one rule of every TF backend.

    ``op`` says what the op does to the layout:

    - ``"flatten"``: a Keras ``Flatten``. A channels_first one first moves axis 1 last
      (Keras transposes before flattening); the result is ``"flat:" + layout`` of
      what was flattened, with its per-item shape;
    - ``"reshape"``: a reshape; to 2-D keeping every element it is a flatten; one that only
      drops size-1 axes keeps the other axes' labels (:func:`squeezed_layout`);
    - ``"transpose"``: ``perm`` (batch axis included) moves the labels with the data;
    - ``"sequence"``: a recurrent layer (Keras ``LSTM``, ``RNN``...): Keras is batch-major,
      so a 3-D output is ``"NTC"`` (Caffe's recurrent tops are time-major, ``"TNC"``); any
      other 3-D output that keeps the first two axes of an ``"NTC"`` first input (``Dense``,
      elementwise layers, a gather along T) is ``"NTC"`` too, and likewise for ``"NWC"``
      (a squeezed image's columns: CRNN's sequence before its first recurrent layer);
    - ``""``: anything else: ``data_format`` (Keras or TF spelling), else inherited
      from the first 4-D input, else ``default`` (see :func:`derive_layout`).

    ``in_layouts`` are the input probes' layouts, ``in_shape`` the first input's shape.
    """
    in_lay = in_layouts[0] if in_layouts else ""
    if op == "flatten" and in_shape is not None and len(in_shape) == 4 and len(out_shape) == 2:
        if layout_of_format(data_format) == "NCHW":
            to_last = (0, 2, 3, 1)
            in_lay = permuted_layout(in_lay, to_last)
            in_shape = [in_shape[i] for i in to_last]
        if not is_spatial_layout(in_lay):
            return "", None
        return flat_layout(in_lay, in_shape, out_shape)
    if op == "reshape" and in_shape is not None and len(out_shape) == 2:
        return flat_layout(in_lay, in_shape, out_shape)
    if op == "reshape" and in_shape is not None and (kept := squeezed_layout(in_lay, in_shape, out_shape)):
        return kept, None
    if op == "sequence" and len(out_shape) == 3:
        return "NTC", None
    if op == "transpose" and perm is not None:
        lay = permuted_layout(in_lay, perm)
        if lay and len(lay) == len(out_shape):
            return lay, None
    elif _is_sequence_layout(in_lay) and len(out_shape) == 3 and in_shape is not None and len(in_shape) == 3 \
            and tuple(out_shape[:2]) == tuple(in_shape[:2]):
        return in_lay, None
    declared = layout_of_format(data_format)
    return derive_layout(len(out_shape), declared=declared, in_layouts=in_layouts, default=default), None


def _is_sequence_layout(layout: str) -> bool:
    """A batch-major sequence: N, one sequence axis, C (``"NTC"``, or ``"NWC"`` for CRNN's
    squeezed image columns before its first recurrent layer)."""
    return len(layout) == 3 and layout[0] == "N" and layout[2] == "C" and layout[1] in "TWH"


def to_model_layout(x: np.ndarray, layout: str) -> np.ndarray:
    """An NCHW input as the model wants it (``layout`` is the model's, relative to NCHW)."""
    if x.ndim == 4 and is_spatial_layout(layout) and layout != "NCHW":
        return np.ascontiguousarray(np.transpose(x, axes_permutation("NCHW", layout)))
    return x


def nchw_spec(name: str, model_shape: Sequence[int | None] | None, layout: str) -> InputSpec:
    """The :class:`InputSpec` (in Caffe NCHW terms) of a model input of ``model_shape``."""
    if model_shape is None:
        return InputSpec(name, (), "")
    shape = tuple(
        None if d is None or (isinstance(d, (int, np.integer)) and d < 0) else int(d)
        for d in model_shape
    )
    if len(shape) == 4:
        own = shape
        if is_spatial_layout(layout):
            shape = tuple(shape[layout.index(a)] for a in "NCHW")
        return InputSpec(name, shape, "NCHW", model_shape=own, model_layout=layout or "NCHW")
    return InputSpec(name, shape, "NC" if len(shape) == 2 else "")


# -- the shared backend base --------------------------------------------------------


class TFBackend(Backend):
    """What every TF backend shares: NCHW input specs, feeding in the model's
    layout, the fixed-batch check, the ``tensors=`` filter and ``meta()``.

    ``tf_layout`` (or its older spelling ``data_format``) declares the layout of the
    model's 4-D tensors relative to Caffe's NCHW (see :func:`normalize_tf_layout`).

    Subclasses set ``self._inputs``: a list of ``(name, model_shape, layout)``,
    where ``model_shape`` is in the model's own layout (None if unknown) and
    ``layout`` is the model's layout for that input.
    """

    framework = "tensorflow"
    model_format = ""

    def __init__(
        self,
        source: str = "",
        *,
        tensors: list[str] | None = None,
        data_format: str | None = None,
        tf_layout: str | None = None,
    ) -> None:
        super().__init__(source)
        self._tensors = set(tensors) if tensors else None
        #: the declared layout of the model's 4-D tensors (None: what the model says)
        self._data_format = normalize_tf_layout(tf_layout, data_format)
        self._inputs: list[tuple[str, tuple[int | None, ...] | None, str]] = []

    def _input_specs_impl(self) -> list[InputSpec]:
        return [nchw_spec(n, s, lay) for n, s, lay in self._inputs]

    def input_layouts(self) -> dict[str, str]:
        """The model's own layout of each input (what it is fed in)."""
        return {n: lay for n, _, lay in self._inputs}

    def model_feed(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """NCHW arrays (already validated) -> arrays in the model's layout, batch checked."""
        out = {}
        for name, shape, lay in self._inputs:
            spec = nchw_spec(name, shape, lay)
            fixed = spec.shape[0] if spec.shape else None
            got = inputs[name].shape[0] if inputs[name].ndim else None
            if fixed is not None and fixed > 0 and got is not None and got != fixed:
                raise InputDataError(
                    f"{self.source}: input {name!r} has batch {got}, but the model's batch is "
                    f"fixed at {fixed}; feed {fixed} item(s) per capture, or export the model "
                    "with a free batch dimension"
                )
            out[name] = to_model_layout(inputs[name], lay)
        return out

    def wanted(self, name: str) -> bool:
        return self._tensors is None or name in self._tensors

    def check_tensors(self, known: set[str]) -> None:
        """Refuse ``tensors=`` names that name nothing in the model."""
        if self._tensors is None:
            return
        unknown = sorted(n for n in self._tensors if n not in known)
        if unknown:
            some = ", ".join(repr(n) for n in sorted(known)[:8])
            raise ModelLoadError(
                f"{self.source}: tensors= names {unknown[:5]} that are not captured outputs of this model "
                f"(it has {len(known)}, e.g. {some})"
            )

    def meta(self) -> dict:
        return {
            "model_format": self.model_format,
            "input_layouts": self.input_layouts(),
            "trace_inputs_layout": "NCHW",
        }


# -- graph scopes --------------------------------------------------------------------


def scope_layers(names: Sequence[str], inputs: Mapping[str, Sequence[str]] | None = None) -> dict[str, str]:
    """Map graph op / tensor names to the layer (scope) they belong to.

    The rule, kept simple on purpose:

    1. drop call-wrapper components (``StatefulPartitionedCall``, ``PartitionedCall``,
       ``Func``, with any ``_N`` suffix);
    2. drop the scope prefix common to every name (the model's own scope, e.g.
       ``model/``), as long as some op still sits in a scope below it
       (``conv1/Conv2D`` + ``conv1/BiasAdd`` alone keep ``conv1``);
    3. the layer is the first remaining component (``conv1/BiasAdd`` -> ``conv1``);
       an op at the top level is its own layer;
    4. if the dropped model scope carries a tracing suffix (``model_1``) and every
       layer does too (``conv1_1``, ``bn_1``), the ``_N`` suffixes are dropped: TF
       uniquified the scopes when the function was traced a second time;
    5. with ``inputs`` (name -> the names it reads), a layer is ops that are connected:
       a scope whose ops are not linked by data edges among themselves is split into
       its connected parts, each named after the scope its ops share
       (``onnx_tf_prefix_conv2/relu_3x3_reduce`` and ``onnx_tf_prefix_conv2/norm2``, two
       ops onnx-tf names after Caffe layers whose names hold a ``/``, stay two layers).

    >>> scope_layers(["StatefulPartitionedCall/model/conv1/Conv2D", "StatefulPartitionedCall/model/conv1/BiasAdd",
    ...               "StatefulPartitionedCall/model/relu1/Relu"])["StatefulPartitionedCall/model/conv1/BiasAdd"]
    'conv1'
    """
    parts = {
        n: [p for p in n.split(";")[0].split(":")[0].split("/") if p and not CALL_WRAPPER.match(p)]
        for n in names
    }
    lists = [p for p in parts.values() if p]
    prefix: list[str] = []
    if lists:
        k = 0
        while True:
            heads = {tuple(p[: k + 1]) for p in lists}
            if len(heads) != 1 or any(len(p) <= k + 1 for p in lists):
                break
            k += 1
        # keep the prefix only if some op still sits in a layer scope below it
        while k and not any(len(p) > k + 1 for p in lists):
            k -= 1
        prefix = lists[0][:k]
    out = {}
    for n, p in parts.items():
        rest = p[len(prefix) :] if p[: len(prefix)] == prefix else p
        out[n] = rest[0] if rest else (n.split(":")[0] or n)
    if prefix and COPY_SUFFIX.search(prefix[-1]):
        layers = {v for n, v in out.items() if len(parts[n]) > len(prefix) + 1}
        if layers and all(COPY_SUFFIX.search(v) for v in layers):
            out = {n: (COPY_SUFFIX.sub("", v) if v in layers else v) for n, v in out.items()}
    if inputs is not None:
        rests = {n: (p[len(prefix) :] if p[: len(prefix)] == prefix else p) for n, p in parts.items()}
        out = _split_unconnected(out, rests, inputs)
    return out


def _split_unconnected(
    layer_of: dict[str, str], rests: dict[str, list[str]], inputs: Mapping[str, Sequence[str]]
) -> dict[str, str]:
    """Rule 5 of :func:`scope_layers`: each layer split into its connected parts (data edges
    between its own ops); a part is named after the scope its ops share below the layer."""
    members: dict[str, list[str]] = {}
    for n, layer in layer_of.items():
        members.setdefault(layer, []).append(n)
    out = dict(layer_of)
    taken = set(layer_of.values())
    for layer, ms in members.items():
        if len(ms) < 2:
            continue
        root = {m: m for m in ms}

        def find(x: str, root: dict[str, str] = root) -> str:
            while root[x] != x:
                root[x] = root[root[x]]
                x = root[x]
            return x

        ops: dict[str, str] = {}
        for m in ms:
            for i in inputs.get(m, ()):
                if i in root:
                    root[find(i)] = find(m)
            op = m.split(":")[0]  # the outputs of one op are one op
            if op in ops:
                root[find(ops[op])] = find(m)
            ops.setdefault(op, m)
        comps: dict[str, list[str]] = {}
        for m in ms:
            comps.setdefault(find(m), []).append(m)
        parts = [part for comp in comps.values() for part in _entry_parts(comp, inputs)]
        if len(parts) < 2:
            continue
        used: set[str] = set()
        for group in parts:
            paths = [rests[m] for m in group]
            common = paths[0]
            for p in paths[1:]:
                k = 0
                while k < min(len(common), len(p)) and common[k] == p[k]:
                    k += 1
                common = common[:k]
            name = "/".join([layer, *common[1:]]) if common else layer
            base, k = name, 1
            while name in used or (name != layer and name in taken):
                k += 1
                name = f"{base}~{k}"
            used.add(name)
            taken.add(name)
            for m in group:
                out[m] = name
    return out


def _entry_parts(comp: list[str], inputs: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """One connected part of a scope, split where it joins separate layers.

    Ops that read only tensors from outside the part start a layer, one per set of
    tensors read (``Mean(x)`` and ``Sub(x, mean)`` of a normalization read the same
    ``x``: one layer); an op fed by one layer's ops joins it; an op fed by several
    (onnx-tf's ``onnx_tf_prefix_inception_3a/output`` concat reading the branch ReLUs
    ``.../relu_1x1``, ``.../relu_3x3``... that share its scope) is a layer of its own.
    """
    if len(comp) < 2:
        return [comp]
    inside = set(comp)
    op_of = {m: m.split(":")[0] for m in comp}
    ops = list(dict.fromkeys(op_of.values()))
    reads: dict[str, set[str]] = {o: set() for o in ops}
    for m in comp:
        reads[op_of[m]].update(inputs.get(m, ()))
    internal = {o: {op_of[i] for i in reads[o] if i in inside and op_of[i] != o} for o in ops}
    # the ops in data order (Kahn), the given order among ready ones
    order: list[str] = []
    waiting = {o: set(internal[o]) for o in ops}
    ready = [o for o in ops if not waiting[o]]
    while ready:
        o = ready.pop(0)
        order.append(o)
        for q in ops:
            if o in waiting[q]:
                waiting[q].discard(o)
                if not waiting[q] and q not in order and q not in ready:
                    ready.append(q)
    if len(order) != len(ops):  # a cycle (not a frozen inference graph): leave it whole
        return [comp]
    unit: dict[str, int] = {}
    seeds: dict[frozenset[str], int] = {}
    count = 0
    for o in order:
        if not internal[o]:
            key = frozenset(i for i in reads[o] if i not in inside)
            if key not in seeds:
                seeds[key] = count
                count += 1
            unit[o] = seeds[key]
            continue
        feeding = {unit[i] for i in internal[o]}
        if len(feeding) == 1:
            unit[o] = feeding.pop()
        else:
            unit[o] = count
            count += 1
    if count < 2:
        return [comp]
    parts: dict[int, list[str]] = {}
    for m in comp:
        parts.setdefault(unit[op_of[m]], []).append(m)
    return list(parts.values())

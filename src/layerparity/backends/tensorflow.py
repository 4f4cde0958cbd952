"""TensorFlow capture: one entry point for every form a TF port comes in.

:func:`load_tf` looks at what it is given and returns the matching backend:

============================================  ======================================
model                                         backend
============================================  ======================================
``keras.Model`` (Functional, Sequential)      :class:`~.keras.KerasBackend` (graph)
``keras.Model`` (subclassed)                  :class:`~.keras.KerasBackend` (eager)
``*.keras`` / ``*.h5`` / ``*.hdf5``           :class:`~.keras.KerasBackend`
SavedModel directory                          :class:`~.tfgraph.GraphBackend` (frozen)
frozen GraphDef ``*.pb``                      :class:`~.tfgraph.GraphBackend`
``tf.compat.v1.Session`` / ``tf.Graph``       :class:`~.tfgraph.GraphBackend`
``*.tflite``                                  :class:`~.tflite.TFLiteBackend`
============================================  ======================================

Every backend reports its inputs in Caffe's NCHW terms and takes NCHW arrays;
it transposes 4-D inputs to the model's own layout (NHWC unless the model says
``channels_first``) before feeding. Probes are in the model's own layout, which
they declare. See docs/capture-tensorflow.md.

TensorFlow is imported lazily: importing this module does not import it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import FrameworkMissingError, InputDataError, ModelLoadError
from ..trace import Trace
from .base import Backend, InputSpec

__all__ = ["TFBackend", "load_tf", "capture_tf"]


# -- lazy imports ----------------------------------------------------------------


def import_tf() -> Any:
    """``tensorflow``, imported on first use (quietly)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import tensorflow as tf
    except Exception as e:  # noqa: BLE001 - any import failure means "not usable"
        raise FrameworkMissingError(
            f"TensorFlow is needed to capture a TF model and is not importable ({type(e).__name__}: {e}); "
            "install tensorflow-cpu"
        ) from None
    return tf


def import_keras() -> Any:
    import_tf()
    try:
        import keras
    except Exception as e:  # noqa: BLE001
        raise FrameworkMissingError(
            f"Keras is needed to capture a Keras model and is not importable ({e})"
        ) from None
    return keras


# -- the entry points ------------------------------------------------------------


def load_tf(
    model: Any,
    *,
    safe_mode: bool = True,
    inputs: Sequence[str] | str | None = None,
    outputs: Sequence[str] | str | None = None,
    tensors: Sequence[str] | str | None = None,
    data_format: str | None = None,
) -> Backend:
    """Open a TensorFlow model of any supported form as a capture :class:`Backend`.

    model
        A ``keras.Model``; a path to a ``.keras`` / ``.h5`` file, a SavedModel
        directory, a frozen GraphDef ``.pb`` or a ``.tflite`` file; a
        ``tf.compat.v1.Session``; a ``tf.Graph`` or ``GraphDef``.
    safe_mode
        Keras files are loaded with Keras' ``safe_mode`` (default ``True``): a
        file holding a ``Lambda`` layer (pickled Python code) is refused with a
        :class:`ModelLoadError`. Pass ``safe_mode=False`` only for files you trust.
    inputs
        Graphs only: the tensor names to feed (``"x:0"`` or ``"x"``); default every
        ``Placeholder``. Required to be right for a Session whose graph holds
        placeholders you do not mean to feed.
    outputs
        Graphs only: capture only the ops these tensors depend on.
    tensors
        Capture only these probes (Keras layer names, graph op/tensor names,
        TFLite tensor names); default every layer/op output.
    data_format
        ``"channels_last"``/``"NHWC"`` or ``"channels_first"``/``"NCHW"``: the
        layout of 4-D tensors whose layout the model does not state itself
        (inputs, element-wise ops). Default: what the model's layers say, else
        NHWC (Keras: ``keras.config.image_data_format()``).

    A missing path, a path of the wrong kind or a corrupt file raises
    :class:`~layerparity.errors.ModelLoadError` naming the path and the problem.
    """
    fmt = normalize_data_format(data_format)
    kw = dict(
        inputs=_names(inputs), outputs=_names(outputs), tensors=_names(tensors), data_format=fmt
    )
    if isinstance(model, (str, os.PathLike)):
        return _load_path(os.fspath(model), safe_mode=safe_mode, **kw)
    tf = import_tf()
    keras = import_keras()
    if isinstance(model, keras.Model):
        from .keras import KerasBackend

        _reject_graph_options("a keras.Model", kw, ("inputs", "outputs"))
        return KerasBackend(
            model, source=f"keras.Model {model.name!r}", tensors=kw["tensors"], data_format=fmt
        )
    from .tfgraph import GraphBackend

    if isinstance(model, tf.compat.v1.Session):
        return GraphBackend.from_session(model, **kw)
    if isinstance(model, tf.Graph):
        return GraphBackend.from_graph(model, source=f"tf.Graph {id(model):#x}", **kw)
    if isinstance(model, tf.compat.v1.GraphDef):
        return GraphBackend.from_graph_def(model, source="GraphDef", **kw)
    raise ModelLoadError(
        f"cannot capture a {type(model).__module__}.{type(model).__name__}: load_tf takes a keras.Model, "
        "a tf.compat.v1.Session, a tf.Graph/GraphDef, or a path to a .keras/.h5 file, a SavedModel "
        "directory, a frozen .pb or a .tflite file"
    )


def capture_tf(model: Any, inputs: Mapping[str, np.ndarray] | np.ndarray, **kw: Any) -> Trace:
    """Load ``model`` with :func:`load_tf` (``kw`` are its options) and capture one trace.

    ``inputs`` are in Caffe's NCHW layout.
    """
    backend = load_tf(model, **kw)
    with backend:
        return backend.capture(inputs)


def _names(x: Sequence[str] | str | None) -> list[str] | None:
    if x is None:
        return None
    if isinstance(x, str):
        return [x]
    out = [str(n) for n in x]
    return out


def _reject_graph_options(what: str, kw: dict, keys: Sequence[str]) -> None:
    for k in keys:
        if kw.get(k):
            raise ModelLoadError(
                f"{what}: the {k}= option applies to graphs (SavedModel, .pb, Session) only"
            )


_ZIP_MAGIC = b"PK\x03\x04"
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def _sniff(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(16)
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read the file ({e.strerror or e})") from None


def _load_path(path: str, *, safe_mode: bool, **kw: Any) -> Backend:
    if not os.path.exists(path):
        raise ModelLoadError(f"{path}: no such file or directory")
    if os.path.isdir(path):
        if not any(
            os.path.isfile(os.path.join(path, f)) for f in ("saved_model.pb", "saved_model.pbtxt")
        ):
            raise ModelLoadError(
                f"{path}: is a directory but not a SavedModel (no saved_model.pb in it); "
                "expected a SavedModel directory or a .keras/.h5/.pb/.tflite file"
            )
        from .tfgraph import GraphBackend

        return GraphBackend.from_saved_model(path, **kw)
    if os.path.basename(path) in ("saved_model.pb", "saved_model.pbtxt"):
        from .tfgraph import GraphBackend

        return GraphBackend.from_saved_model(os.path.dirname(path) or ".", **kw)
    head = _sniff(path)
    ext = os.path.splitext(path)[1].lower()
    if ext in (".keras", ".h5", ".hdf5") or head.startswith(_HDF5_MAGIC):
        from .keras import KerasBackend

        _reject_graph_options(path, kw, ("inputs", "outputs"))
        return KerasBackend.from_file(
            path, safe_mode=safe_mode, tensors=kw["tensors"], data_format=kw["data_format"]
        )
    if ext == ".tflite" or head[4:8] == b"TFL3":
        from .tflite import TFLiteBackend

        _reject_graph_options(path, kw, ("inputs", "outputs"))
        return TFLiteBackend.from_file(path, tensors=kw["tensors"], data_format=kw["data_format"])
    if ext in (".pb", ".graphdef", ".pbtxt"):
        from .tfgraph import GraphBackend

        return GraphBackend.from_graph_def_file(path, **kw)
    kind = "a zip archive" if head.startswith(_ZIP_MAGIC) else f"a {ext or 'extension-less'} file"
    raise ModelLoadError(
        f"{path}: unrecognised model file ({kind}); expected a .keras/.h5 Keras file, a SavedModel "
        "directory, a frozen GraphDef .pb or a .tflite file"
    )


# -- layouts ---------------------------------------------------------------------


def first_line(e: Any) -> str:
    """The first line of an exception's message (TF's run on for pages), or its type's name."""
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


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


def derive_layout(
    rank: int,
    *,
    declared: str | None,
    in_layouts: Sequence[str],
    default: str,
) -> str:
    """Layout of an output of ``rank``: declared by the op, else its first same-rank
    spatial input's, else the model default. 2-D is ``"NC"``; other ranks ``""``."""
    if rank == 2:
        return "NC"
    if rank != 4:
        return ""
    if declared in ("NCHW", "NHWC"):
        return declared
    for lay in in_layouts:
        if len(lay) == 4 and not lay.startswith("flat:") and sorted(lay) == sorted("NCHW"):
            return lay
    return default


def flat_layout(
    in_layout: str, in_shape: Sequence[int], out_shape: Sequence[int]
) -> tuple[str, tuple[int, ...] | None]:
    """A 4-D -> 2-D reshape that keeps every element: ``("flat:" + in_layout, per-item shape)``."""
    if (
        len(in_shape) == 4
        and len(out_shape) == 2
        and in_layout in ("NCHW", "NHWC")
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


def to_model_layout(x: np.ndarray, layout: str) -> np.ndarray:
    """An NCHW input as the model wants it (``layout`` is the model's)."""
    if x.ndim == 4 and layout == "NHWC":
        return np.ascontiguousarray(np.transpose(x, (0, 2, 3, 1)))
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
        if layout == "NHWC":
            shape = (shape[0], shape[3], shape[1], shape[2])
        return InputSpec(name, shape, "NCHW")
    return InputSpec(name, shape, "NC" if len(shape) == 2 else "")


# -- the shared backend base --------------------------------------------------------


class TFBackend(Backend):
    """What every TF backend shares: NCHW input specs, feeding in the model's
    layout, the fixed-batch check, the ``tensors=`` filter and ``meta()``.

    Subclasses set ``self._inputs``: a list of ``(name, model_shape, layout)``,
    where ``model_shape`` is in the model's own layout (None if unknown) and
    ``layout`` is the model's layout for that input.
    """

    framework = "tensorflow"
    model_format = ""

    def __init__(
        self, source: str = "", *, tensors: list[str] | None = None, data_format: str | None = None
    ) -> None:
        super().__init__(source)
        self._tensors = set(tensors) if tensors else None
        self._data_format = data_format
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
            x = to_model_layout(inputs[name], lay)
            if (
                shape is not None
                and len(shape) == x.ndim
                and shape
                and shape[0] is not None
                and shape[0] > 0
            ):
                if x.shape[0] != shape[0]:
                    raise InputDataError(
                        f"{self.source}: input {name!r} has batch {x.shape[0]}, but the model's batch is "
                        f"fixed at {shape[0]}; feed {shape[0]} item(s) per capture, or export the model "
                        "with a free batch dimension"
                    )
            out[name] = x
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


_WRAPPER = re.compile(r"^(StatefulPartitionedCall|PartitionedCall|Func)(_\d+)?$")
_SUFFIX = re.compile(r"_\d+$")


def scope_layers(names: Sequence[str]) -> dict[str, str]:
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
       uniquified the scopes when the function was traced a second time.

    >>> scope_layers(["StatefulPartitionedCall/model/conv1/Conv2D", "StatefulPartitionedCall/model/conv1/BiasAdd",
    ...               "StatefulPartitionedCall/model/relu1/Relu"])["StatefulPartitionedCall/model/conv1/BiasAdd"]
    'conv1'
    """
    parts = {
        n: [p for p in n.split(";")[0].split(":")[0].split("/") if p and not _WRAPPER.match(p)]
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
    if prefix and _SUFFIX.search(prefix[-1]):
        layers = {v for n, v in out.items() if len(parts[n]) > len(prefix) + 1}
        if layers and all(_SUFFIX.search(v) for v in layers):
            out = {n: (_SUFFIX.sub("", v) if v in layers else v) for n, v in out.items()}
    return out


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
    for p in probes:
        if backend.wanted(p.name) or p.kind == "Input":
            yield p

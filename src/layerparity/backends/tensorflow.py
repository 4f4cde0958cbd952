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

What the backends share (the base class, layouts, scopes) lives in
:mod:`.tfcommon`. TensorFlow is imported lazily: importing this module does not import it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ModelLoadError
from ..trace import Trace
from .base import Backend
from .tfcommon import import_keras, import_tf, normalize_tf_layout

__all__ = ["load_tf", "capture_tf"]


# -- the entry points ------------------------------------------------------------


def load_tf(
    model: Any,
    *,
    safe_mode: bool = True,
    inputs: Sequence[str] | str | None = None,
    outputs: Sequence[str] | str | None = None,
    tensors: Sequence[str] | str | None = None,
    data_format: str | None = None,
    tf_layout: str | None = None,
    custom_objects: Any = None,
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
        NHWC (Keras: ``keras.config.image_data_format()``). The older spelling of
        ``tf_layout="NHWC"``/``"NCHW"``.
    tf_layout
        The layout of the model's 4-D tensors relative to Caffe's NCHW: any
        permutation of the letters N, C, H, W. ``"NHWC"`` is the usual port;
        ``"NWHC"`` a port that takes spatially transposed images (MATLAB-trained
        Caffe models). It says how to derive the TF input from the Caffe (NCHW)
        one, and labels every 4-D probe whose layout no op changes; Keras
        ``Permute`` layers and graph/TFLite ``Transpose`` ops move the labels with
        the data. Default: ``data_format``, else what the model's layers say, else NHWC.
    custom_objects
        ``.keras``/``.h5`` files only: the custom Keras classes (and functions) the file
        uses, as a dict ``name -> class`` (the name as stored: ``"package>Name"`` for a
        class registered with ``keras.saving.register_keras_serializable``, else its
        class name) or a list of classes. Classes already registered (their module was
        imported) need not be given. layerparity's own layers (``layerparity>LRN``, the
        demo's) are always known. A file naming a class nobody provides raises a
        one-line :class:`ModelLoadError` naming the class.

    A missing path, a path of the wrong kind or a corrupt file raises
    :class:`~layerparity.errors.ModelLoadError` naming the path and the problem.
    """
    fmt = normalize_tf_layout(tf_layout, data_format)
    kw = dict(
        inputs=_names(inputs), outputs=_names(outputs), tensors=_names(tensors), tf_layout=fmt
    )
    if isinstance(model, (str, os.PathLike)):
        return _load_path(os.fspath(model), safe_mode=safe_mode, custom_objects=custom_objects, **kw)
    tf = import_tf()
    keras = import_keras()
    if isinstance(model, keras.Model):
        from .keras import KerasBackend

        _reject_graph_options("a keras.Model", kw, ("inputs", "outputs"))
        return KerasBackend(
            model, source=f"keras.Model {model.name!r}", tensors=kw["tensors"], tf_layout=fmt
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


def _load_path(path: str, *, safe_mode: bool, custom_objects: Any = None, **kw: Any) -> Backend:
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
            path, safe_mode=safe_mode, tensors=kw["tensors"], tf_layout=kw["tf_layout"],
            custom_objects=custom_objects,
        )
    if ext == ".tflite" or head[4:8] == b"TFL3":
        from .tflite import TFLiteBackend

        _reject_graph_options(path, kw, ("inputs", "outputs"))
        return TFLiteBackend.from_file(path, tensors=kw["tensors"], tf_layout=kw["tf_layout"])
    if ext in (".pb", ".graphdef", ".pbtxt"):
        from .tfgraph import GraphBackend

        return GraphBackend.from_graph_def_file(path, **kw)
    kind = "a zip archive" if head.startswith(_ZIP_MAGIC) else f"a {ext or 'extension-less'} file"
    raise ModelLoadError(
        f"{path}: unrecognised model file ({kind}); expected a .keras/.h5 Keras file, a SavedModel "
        "directory, a frozen GraphDef .pb or a .tflite file"
    )

"""The top-level verbs, re-exported from :mod:`layerparity`.

>>> import layerparity as lp
>>> sorted(n for n in ("compare_models", "compare_traces", "capture_caffe", "capture_tf") if hasattr(lp, n))
['capture_caffe', 'capture_tf', 'compare_models', 'compare_traces']

Every public name of the package is importable from here (``__all__`` is
:data:`layerparity._exports.EXPORTS`). Tolerances everywhere: ``rtol`` and
``atol`` go together or not at all, and ``atol`` is *relative*: an element may
be off by ``atol * max|caffe|`` of its layer plus ``rtol * |caffe|``.

Nothing here imports Caffe or TensorFlow until a capture actually runs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._exports import EXPORTS
from .alignment import Alignment, align, load_mapping  # noqa: F401 - re-exported
from .compare import compare_models, compare_traces  # noqa: F401 - re-exported
from .errors import (  # noqa: F401 - re-exported
    ArchiveError,
    CaffeError,
    DiagnosisInputError,
    FrameworkMissingError,
    InputDataError,
    InputError,
    InternalError,
    LayerParityError,
    LayoutMismatch,
    MappingError,
    ModelLoadError,
    ReportFormatError,
    UsageError,
    WeightParityError,
)
from .metrics import DEFAULT_TOLERANCES, compute_metrics  # noqa: F401 - re-exported
from .result import Diagnosis, LayerResult, Metrics, Report, Tolerance  # noqa: F401 - re-exported
from .sweeper import sweep  # noqa: F401 - re-exported
from .testing import assert_blob_close, assert_parity  # noqa: F401 - re-exported
from .trace import Probe, Trace  # noqa: F401 - re-exported (Trace also typed below)

Inputs = Mapping[str, np.ndarray] | np.ndarray


def capture_caffe(
    prototxt: str | os.PathLike[str],
    weights: str | os.PathLike[str] | None = None,
    inputs: Inputs | None = None,
    *,
    batch: int | None = None,
    phase: str = "TEST",
    python: str | os.PathLike[str] | None = None,
    timeout: float = 600,
    env: Mapping[str, str] | None = None,
    pythonpath: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
) -> Trace:
    """Run a Caffe net once on ``inputs`` (an NCHW array, or a dict input name -> array) and return its :class:`Trace`.

    The net runs in a worker process (:class:`~layerparity.backends.caffe.CaffeBackend`):
    ``batch`` reshapes the inputs at load, ``phase`` is ``"TEST"`` or ``"TRAIN"``,
    ``python`` is the interpreter of a legacy Caffe install, ``timeout`` the seconds
    to wait for any answer of the worker, ``env`` extra environment variables for it,
    ``pythonpath`` the folder(s) holding the modules of the net's Python layers
    (docs/python-layers.md). A malformed prototxt or a caffemodel that does not fit raises
    :class:`~layerparity.errors.CaffeError`.

    >>> trace = capture_caffe("deploy.prototxt", "weights.caffemodel", x_nchw)   # doctest: +SKIP
    >>> trace["conv1"].layout                                                   # doctest: +SKIP
    'NCHW'
    """
    from .backends.caffe import capture_caffe as _capture

    return _capture(prototxt, weights, inputs, batch=batch, phase=phase, python=python, timeout=timeout, env=env,
                    pythonpath=pythonpath)


def capture_tf(
    model: Any,
    inputs: Inputs,
    *,
    safe_mode: bool = True,
    input_names: Sequence[str] | str | None = None,
    outputs: Sequence[str] | str | None = None,
    tensors: Sequence[str] | str | None = None,
    data_format: str | None = None,
    tf_layout: str | None = None,
    custom_objects: Any = None,
) -> Trace:
    """Run a TensorFlow model once on ``inputs`` (in Caffe's NCHW layout) and return its :class:`Trace`.

    ``model``: a ``keras.Model``, a ``tf.compat.v1.Session``, a ``tf.Graph``/``GraphDef``,
    or a path to a ``.keras``/``.h5`` file, a SavedModel directory, a frozen ``.pb`` or a
    ``.tflite`` file. The options are :func:`layerparity.backends.tensorflow.load_tf`'s:
    ``safe_mode`` refuses Keras files holding pickled code (``Lambda``); ``input_names``
    (load_tf's ``inputs``; graphs only) the tensors to feed, default every placeholder;
    ``outputs`` (graphs only) captures only what these tensors depend on; ``tensors``
    captures only these probes; ``data_format`` (``"channels_last"``/``"channels_first"``)
    is the layout of 4-D tensors the model does not declare; ``tf_layout`` the model's
    4-D layout relative to Caffe's NCHW (``"NWHC"`` for a spatially transposed port).
    ``custom_objects`` the custom Keras classes a ``.keras``/``.h5`` file uses.
    4-D inputs are converted to the model's layout.

    >>> trace = capture_tf("port.keras", x_nchw)      # doctest: +SKIP
    >>> trace["conv1"].layout                          # doctest: +SKIP
    'NHWC'
    """
    from .backends.tensorflow import load_tf

    with load_tf(model, safe_mode=safe_mode, inputs=input_names, outputs=outputs, tensors=tensors,
                 data_format=data_format, tf_layout=tf_layout, custom_objects=custom_objects) as backend:
        return backend.capture(inputs)


__all__ = list(EXPORTS)  # every name in it is bound above (tests/test_structure.py checks)


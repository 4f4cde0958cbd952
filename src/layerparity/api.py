"""The top-level verbs, re-exported from :mod:`layerparity`.

>>> import layerparity as lp
>>> sorted(n for n in ("compare_models", "compare_traces", "capture_caffe", "capture_tf") if hasattr(lp, n))
['capture_caffe', 'capture_tf', 'compare_models', 'compare_traces']

Nothing here imports Caffe or TensorFlow until a capture actually runs.
"""

from __future__ import annotations

from typing import Any

from .align import Alignment, align, load_mapping
from .compare import compare_models, compare_traces
from .errors import (
    ArchiveError,
    CaffeError,
    FrameworkMissingError,
    InputDataError,
    InputError,
    InternalError,
    LayerParityError,
    MappingError,
    ModelLoadError,
)
from .metrics import DEFAULT_TOLERANCES, compute_metrics
from .result import Diagnosis, LayerResult, Metrics, Report, Tolerance
from .trace import Probe, Trace


def capture_caffe(*args: Any, **kw: Any) -> Trace:
    """Run a Caffe net once and return its :class:`Trace` (see :mod:`layerparity.backends.caffe`)."""
    from .backends.caffe import capture_caffe as _capture

    return _capture(*args, **kw)


def capture_tf(*args: Any, **kw: Any) -> Trace:
    """Run a TF/Keras/TFLite model once and return its :class:`Trace` (see :mod:`layerparity.backends.tensorflow`)."""
    from .backends.tensorflow import capture_tf as _capture

    return _capture(*args, **kw)


__all__ = [
    "compare_models", "compare_traces", "capture_caffe", "capture_tf", "align", "Alignment", "load_mapping",
    "compute_metrics", "DEFAULT_TOLERANCES", "Trace", "Probe", "Report", "LayerResult", "Metrics", "Diagnosis",
    "Tolerance", "LayerParityError", "InputError", "ModelLoadError", "CaffeError", "ArchiveError", "MappingError",
    "InputDataError", "FrameworkMissingError", "InternalError",
]

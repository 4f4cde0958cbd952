"""layerparity: does every layer of a Caffe net and its TensorFlow port compute the same numbers?

>>> import layerparity as lp
>>> report = lp.compare_models("deploy.prototxt", "model.keras", x_nchw,      # doctest: +SKIP
...                            caffe_weights="weights.caffemodel")
>>> report.first_divergence.caffe_layer                                        # doctest: +SKIP
'fc6'

The public names are loaded on first use: ``import layerparity`` imports neither
Caffe nor TensorFlow (nor any of layerparity's own engine modules).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "compare_models": "api",
    "compare_traces": "api",
    "capture_caffe": "api",
    "capture_tf": "api",
    "align": "api",
    "Alignment": "api",
    "load_mapping": "api",
    "compute_metrics": "api",
    "DEFAULT_TOLERANCES": "api",
    "Trace": "trace",
    "Probe": "trace",
    "Report": "result",
    "LayerResult": "result",
    "Metrics": "result",
    "Diagnosis": "result",
    "Tolerance": "result",
    "LayerParityError": "errors",
    "InputError": "errors",
    "ModelLoadError": "errors",
    "CaffeError": "errors",
    "ArchiveError": "errors",
    "MappingError": "errors",
    "InputDataError": "errors",
    "FrameworkMissingError": "errors",
    "InternalError": "errors",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'layerparity' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # pragma: no cover
    from .api import (  # noqa: F401
        Alignment,
        align,
        capture_caffe,
        capture_tf,
        compare_models,
        compare_traces,
        compute_metrics,
        load_mapping,
    )
    from .errors import *  # noqa: F401,F403
    from .result import Diagnosis, LayerResult, Metrics, Report, Tolerance  # noqa: F401
    from .trace import Probe, Trace  # noqa: F401

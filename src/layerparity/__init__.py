"""layerparity: does every layer of a Caffe net and its TensorFlow port compute the same numbers?

>>> import layerparity as lp
>>> report = lp.compare_models("deploy.prototxt", "model.keras", x_nchw,      # doctest: +SKIP
...                            caffe_weights="weights.caffemodel")
>>> report.first_divergence.caffe_layer                                        # doctest: +SKIP
'fc6'
>>> lp.assert_parity("deploy.prototxt", "model.keras", x_nchw,              # doctest: +SKIP
...                  caffe_weights="weights.caffemodel")

The public names are loaded on first use: ``import layerparity`` imports neither
Caffe nor TensorFlow (nor any of layerparity's own engine modules). The names and
where each comes from are one list, :data:`layerparity._exports.EXPORTS`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._exports import EXPORTS

__version__ = "0.1.0"

__all__ = [*EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    mod = EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'layerparity' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(EXPORTS))


if TYPE_CHECKING:  # pragma: no cover - for type checkers; tests/test_structure.py holds it against EXPORTS
    from .api import (  # noqa: F401
        DEFAULT_TOLERANCES,
        Alignment,
        align,
        assert_blob_close,
        assert_parity,
        capture_caffe,
        capture_tf,
        compare_models,
        compare_traces,
        compute_metrics,
        load_mapping,
    )
    from .errors import (  # noqa: F401
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
    from .result import Diagnosis, LayerResult, Metrics, Report, Tolerance  # noqa: F401
    from .sweeper import sweep  # noqa: F401
    from .trace import Probe, Trace  # noqa: F401

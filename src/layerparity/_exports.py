"""The public names of :mod:`layerparity`, and the module each is defined in: the one list.

``layerparity/__init__.py`` builds its lazy attribute map from it (so ``import
layerparity`` stays light), :mod:`layerparity.api` sets ``__all__`` from it, and
the ``TYPE_CHECKING`` block in ``__init__.py`` (which static type checkers need
spelled out) is held against it by tests/test_structure.py.

This module imports nothing.
"""

from __future__ import annotations

#: public name -> module of layerparity it is loaded from on first use: the verbs from
#: :mod:`layerparity.api` (which re-exports every name here), the data classes and
#: errors from their light modules (``lp.Report`` does not load the engine)
EXPORTS: dict[str, str] = {
    # verbs
    "compare_models": "api",
    "compare_traces": "api",
    "capture_caffe": "api",
    "capture_tf": "api",
    "align": "api",
    "load_mapping": "api",
    "compute_metrics": "api",
    "sweep": "sweeper",
    # asserts (torch.testing style)
    "assert_parity": "api",
    "assert_blob_close": "api",
    # data
    "Alignment": "api",
    "DEFAULT_TOLERANCES": "api",
    "Trace": "trace",
    "Probe": "trace",
    "Report": "result",
    "LayerResult": "result",
    "Metrics": "result",
    "Diagnosis": "result",
    "Tolerance": "result",
    # errors (all in errors.py)
    "LayerParityError": "errors",
    "InputError": "errors",
    "ModelLoadError": "errors",
    "CaffeError": "errors",
    "ArchiveError": "errors",
    "MappingError": "errors",
    "InputDataError": "errors",
    "LayoutMismatch": "errors",
    "WeightParityError": "errors",
    "ReportFormatError": "errors",
    "UsageError": "errors",
    "DiagnosisInputError": "errors",
    "FrameworkMissingError": "errors",
    "InternalError": "errors",
}

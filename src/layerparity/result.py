"""Result objects of a comparison: truthy, self-describing, JSON-stable.

>>> r = Report(rows=[], unmapped_caffe=[], unmapped_tf=[])
>>> bool(r), r.first_divergence is None
(True, True)

The JSON form (``Report.to_dict()`` / ``to_json()``) is documented in
docs/report-format.md; its top-level keys and per-layer keys are stable.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

REPORT_FORMAT_VERSION = 1

#: How far past its tolerance a layer's *total* error may go when its *own* error
#: (the TF layer fed the Caffe input) is within tolerance: float32 noise that
#: accumulates with depth. Measured on correct ports: ResNet-50's deepest layers
#: reach ~7x the float32 tolerance (docs/tolerances.md); a real bug fails its own
#: error at the layer that has it, so the allowance hides none.
DRIFT_FACTOR = 50.0


@dataclass
class Tolerance:
    """Elementwise criterion ``|tf - caffe| <= atol * scale + rtol * |caffe|``.

    ``scale`` is the layer's magnitude, ``max|caffe|`` of that layer (1.0 when the
    layer is all zeros), so large-valued layers don't fail on float noise and tiny
    ones don't pass on absolute slack. With ``relative_atol=False`` atol is absolute.
    """

    rtol: float
    atol: float
    relative_atol: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"rtol": self.rtol, "atol": self.atol, "relative_atol": self.relative_atol}


@dataclass
class Metrics:
    """Errors of one tensor against its reference (the Caffe value), in Caffe layout."""

    max_abs_error: float
    max_abs_index: tuple[int, ...] | None  # NCHW coordinates of the worst element
    max_rel_error: float
    max_rel_index: tuple[int, ...] | None
    mean_abs_error: float
    rel_rms_error: float  # RMS(tf - caffe) / RMS(caffe)
    cosine: float
    mismatched: int  # elements outside tolerance (NaN/Inf mismatches included)
    total: int
    nan_mismatch: int  # NaN or Inf on one side where the other has a finite number
    scale: float  # max|caffe| used for relative atol
    min_atol: float  # smallest atol (in the tolerance's units) that passes at this rtol
    min_rtol: float  # smallest rtol that passes at this atol
    passed: bool

    @property
    def mismatched_fraction(self) -> float:
        return self.mismatched / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_abs_error": _f(self.max_abs_error),
            "max_abs_index": list(self.max_abs_index) if self.max_abs_index is not None else None,
            "max_rel_error": _f(self.max_rel_error),
            "max_rel_index": list(self.max_rel_index) if self.max_rel_index is not None else None,
            "mean_abs_error": _f(self.mean_abs_error),
            "rel_rms_error": _f(self.rel_rms_error),
            "cosine": _f(self.cosine),
            "mismatched": self.mismatched,
            "total": self.total,
            "mismatched_fraction": _f(self.mismatched_fraction),
            "nan_mismatch": self.nan_mismatch,
            "scale": _f(self.scale),
            "min_atol": _f(self.min_atol),
            "min_rtol": _f(self.min_rtol),
            "passed": self.passed,
        }


@dataclass
class Diagnosis:
    """One explanation of why a layer diverged.

    ``kind`` is stable (see docs/diagnosis.md), ``confidence`` in [0, 1] ranks the
    candidates, ``evidence`` holds the numbers, ``fix`` says what to change in TF/Keras.
    """

    kind: str
    summary: str
    fix: str
    confidence: float = 0.5
    evidence: dict[str, Any] = field(default_factory=dict)
    #: The Caffe layer the bug is placed in, when the row is a chain (``conv1`` of
    #: ``conv1+relu1``, ``bn1`` of ``bn1+scale1``); "" when the diagnosis does not say.
    layer: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "layer": self.layer,
            "summary": self.summary,
            "evidence": _clean(self.evidence),
            "fix": self.fix,
            "confidence": _f(self.confidence),
        }


@dataclass
class LayerResult:
    """One aligned pair: a Caffe probe (the last of its chain) against a TF probe."""

    caffe_layer: str
    caffe_blob: str
    tf_layer: str
    caffe_kind: str = ""
    tf_kind: str = ""
    caffe_chain: list[str] = field(default_factory=list)  # N:1 fused groups, in order
    caffe_shape: tuple[int, ...] = ()
    tf_shape: tuple[int, ...] = ()
    metrics: Metrics | None = None  # None when shapes could not be reconciled
    own: Metrics | None = None  # the TF layer fed the Caffe input (own error)
    tolerance: Tolerance | None = None
    note: str = ""  # e.g. "shape mismatch: caffe (1,64,56,56) vs tf (1,57,57,64) in NHWC"
    diagnoses: list[Diagnosis] = field(default_factory=list)
    contaminated_by: str | None = None  # first divergent layer upstream, if any

    @property
    def passed(self) -> bool:
        """Within tolerance, or only drifting: see :attr:`drift`."""
        return self.metrics is not None and (self.metrics.passed or self.drift)

    @property
    def drift(self) -> bool:
        """The total error is out of tolerance, but only by accumulated float noise.

        True when the layer's own error was measured and passes, nothing is NaN/Inf on
        one side only, no divergent layer lies upstream (``contaminated_by``), and the
        total error would pass at ``DRIFT_FACTOR`` times the tolerance. A layer whose own error was not measured gets no such allowance.
        """
        m, o, t = self.metrics, self.own, self.tolerance
        if m is None or m.passed or o is None or not o.passed or t is None or m.nan_mismatch:
            return False
        if self.contaminated_by is not None:  # downstream of a real divergence: inherited, not noise
            return False
        return m.min_atol <= DRIFT_FACTOR * t.atol or m.min_rtol <= DRIFT_FACTOR * t.rtol

    @property
    def own_passed(self) -> bool | None:
        return None if self.own is None else self.own.passed

    @property
    def max_abs_error(self) -> float:
        return self.metrics.max_abs_error if self.metrics else math.inf

    @property
    def max_rel_error(self) -> float:
        return self.metrics.max_rel_error if self.metrics else math.inf

    def to_dict(self) -> dict[str, Any]:
        m = self.metrics
        return {
            "caffe_layer": self.caffe_layer,
            "caffe_blob": self.caffe_blob,
            "caffe_chain": list(self.caffe_chain),
            "caffe_kind": self.caffe_kind,
            "tf_layer": self.tf_layer,
            "tf_kind": self.tf_kind,
            "caffe_shape": list(self.caffe_shape),
            "tf_shape": list(self.tf_shape),
            "max_abs_error": _f(m.max_abs_error) if m else None,
            "max_rel_error": _f(m.max_rel_error) if m else None,
            "cosine": _f(m.cosine) if m else None,
            "mismatched_fraction": _f(m.mismatched_fraction) if m else None,
            "passed": self.passed,
            "drift": self.drift,
            "tolerance": self.tolerance.to_dict() if self.tolerance else None,
            "metrics": m.to_dict() if m else None,
            "own_error": self.own.to_dict() if self.own else None,
            "note": self.note,
            "contaminated_by": self.contaminated_by,
            "diagnoses": [d.to_dict() for d in self.diagnoses],
        }


@dataclass
class Report:
    """The outcome of comparing a Caffe trace with a TF trace.

    Truthy when every mapped layer passes. ``rows`` are in Caffe graph order.
    """

    rows: list[LayerResult]
    unmapped_caffe: list[str]
    unmapped_tf: list[str]
    tolerance: Tolerance | None = None
    first_divergence: LayerResult | None = None
    caffe_source: str = ""
    tf_source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return all(r.passed for r in self.rows)

    @property
    def passed(self) -> bool:
        return bool(self)

    def row(self, caffe_layer: str) -> LayerResult:
        for r in self.rows:
            if r.caffe_layer == caffe_layer or caffe_layer in r.caffe_chain:
                return r
        raise KeyError(f"no compared row for Caffe layer {caffe_layer!r}")

    def to_dict(self) -> dict[str, Any]:
        fd = self.first_divergence
        return {
            "format": "layerparity-report",
            "version": REPORT_FORMAT_VERSION,
            "passed": self.passed,
            "caffe_source": self.caffe_source,
            "tf_source": self.tf_source,
            "tolerance": self.tolerance.to_dict() if self.tolerance else None,
            "first_divergence": None
            if fd is None
            else {
                "caffe_layer": fd.caffe_layer,
                "tf_layer": fd.tf_layer,
                "max_abs_error": _f(fd.max_abs_error),
                "max_rel_error": _f(fd.max_rel_error),
                "own_error": fd.own.to_dict() if fd.own else None,
                "note": fd.note,
                "diagnoses": [d.to_dict() for d in fd.diagnoses],
            },
            "layers": [r.to_dict() for r in self.rows],
            "unmapped": {"caffe": list(self.unmapped_caffe), "tf": list(self.unmapped_tf)},
            "meta": _clean(self.meta),
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The report as JSON; with ``indent``, one line per layer (fast to write, easy to diff)."""
        d = self.to_dict()
        if indent is None:
            return json.dumps(d, ensure_ascii=False, allow_nan=False)
        # json's indenting encoder is pure Python (~10x slower than the compact one);
        # the layer rows, which are most of the text, are written compactly, one per line.
        pad = " " * indent
        compact = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(", ", ": ")).encode
        parts = []
        for k, v in d.items():
            if k == "layers":
                inner = f",\n{pad}{pad}".join(compact(r) for r in v)
                body = f"[\n{pad}{pad}{inner}\n{pad}]" if v else "[]"
            else:
                body = json.dumps(v, indent=indent, ensure_ascii=False, allow_nan=False).replace("\n", "\n" + pad)
            parts.append(f"{pad}{json.dumps(k, ensure_ascii=False)}: {body}")
        return "{\n" + ",\n".join(parts) + "\n}"


def _f(x: float | None) -> float | str | None:
    """JSON-safe float: NaN and infinities become the strings "nan", "inf", "-inf"."""
    if x is None:
        return None
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return x


def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, float):
        return _f(x)
    if hasattr(x, "item") and hasattr(x, "dtype"):
        return _clean(x.item() if getattr(x, "ndim", 0) == 0 else x.tolist())
    return x

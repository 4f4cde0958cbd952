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
from collections.abc import Sequence
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
class Coverage:
    """How much of the Caffe net a comparison covers (see :mod:`layerparity.verdict`).

    ``outputs``: Caffe output probes (tops no layer consumes). ``missing_outputs``:
    required outputs that were not compared. ``uncovered``: Caffe layers that compute
    something and were neither compared nor absorbed into a compared chain.
    ``partial``: False, True (a declared partial check), or the Caffe layers the check
    stops at. ``left_out``: what a partial check did not compare. ``scope``: for a
    check that stops at given layers, the Caffe probes it covers (None: all).
    """

    outputs: list[str] = field(default_factory=list)
    missing_outputs: list[str] = field(default_factory=list)
    uncovered: list[str] = field(default_factory=list)
    partial: bool | list[str] = False
    left_out: list[str] = field(default_factory=list)
    scope: list[str] | None = None

    @property
    def passes(self) -> bool:
        """Nothing required was left out."""
        return not self.missing_outputs and not self.uncovered

    def in_scope(self, row: LayerResult) -> bool:
        return self.scope is None or any(n in self.scope for n in row.caffe_chain or [row.caffe_layer])

    def problem(self) -> str:
        """One sentence saying what is missing, or ""."""
        parts = []
        if self.missing_outputs:
            parts.append(f"Caffe output(s) not compared: {_names(self.missing_outputs)}")
        if self.uncovered:
            parts.append(f"Caffe layer(s) that compute something with no TF counterpart: {_names(self.uncovered)}")
        if not parts:
            return ""
        return ("; ".join(parts) + ". The TF port may be truncated or missing layers; map them "
                "(mapping=...) or declare a partial check (partial=True / --partial).")

    def to_dict(self) -> dict[str, Any]:
        return {
            "outputs": list(self.outputs),
            "missing_outputs": list(self.missing_outputs),
            "uncovered": list(self.uncovered),
            "partial": self.partial if isinstance(self.partial, bool) else list(self.partial),
            "left_out": list(self.left_out),
            "scope": None if self.scope is None else list(self.scope),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Coverage:
        p = d.get("partial", False)
        return cls(
            outputs=list(d.get("outputs", [])),
            missing_outputs=list(d.get("missing_outputs", [])),
            uncovered=list(d.get("uncovered", [])),
            partial=p if isinstance(p, bool) else list(p),
            left_out=list(d.get("left_out", [])),
            scope=None if d.get("scope") is None else list(d["scope"]),
        )


def _names(xs: list[str], limit: int = 8) -> str:
    shown = ", ".join(repr(x) for x in xs[:limit])
    return shown + (f" and {len(xs) - limit} more" if len(xs) > limit else "")


def blamed_layer(caffe_chain: Sequence[str], caffe_layer: str, chain_head: str, top_layer: str | None) -> str:
    """The Caffe layer a row blames when it diverges: the chain member its top diagnosis
    places the bug in (``top_layer``), else the chain's first layer with parameters
    (``chain_head``), else the chain's first layer. Also what the JSON reader expects of a
    written ``divergent_layer``."""
    chain = list(caffe_chain) or [caffe_layer]
    if top_layer in chain:
        return top_layer
    return chain_head if chain_head in chain else chain[0]


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
    chain_head: str = ""  # the chain's first layer with parameters (its first layer when none has)
    #: The weight check of a diagnosed row's chain (:class:`layerparity.weights.WeightRow` per
    #: Caffe layer with params, as ``layerparity weights`` gives it); [] when not checked.
    weights: list[Any] = field(default_factory=list)

    @property
    def divergent_layer(self) -> str:
        """The Caffe layer to blame when this row diverges (:func:`blamed_layer`)."""
        return blamed_layer(self.caffe_chain, self.caffe_layer, self.chain_head,
                            self.diagnoses[0].layer if self.diagnoses else None)

    def __repr__(self) -> str:
        m = self.metrics
        err = f"max_abs_error={m.max_abs_error:.3g}" if m is not None else "no metrics"
        chain = "+".join(self.caffe_chain) if len(self.caffe_chain) > 1 else self.caffe_layer
        return f"<LayerResult {chain!r} vs TF {self.tf_layer!r}: {'passed' if self.passed else 'FAILED'}, {err}>"

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
            "chain_head": self.chain_head,
            "divergent_layer": self.divergent_layer,
            "diagnoses": [d.to_dict() for d in self.diagnoses],
            "weights": [_clean(w.to_dict()) for w in self.weights],
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
    coverage: Coverage | None = None  # None only for reports read from files that predate it
    #: Conventions the whole port follows (a spatially transposed input, an input channel
    #: order), recognised over every row: see :func:`layerparity.diagnosis.conventions`.
    conventions: list[Diagnosis] = field(default_factory=list)

    def __bool__(self) -> bool:
        """Every compared row in scope passes, and the comparison covers the whole Caffe
        net (every output blob compared, every computing layer compared or absorbed)
        unless a partial check was declared."""
        cov = self.coverage
        rows_ok = all(r.passed for r in self.rows if cov is None or cov.in_scope(r))
        return rows_ok and (cov is None or cov.partial is True or cov.passes)

    def summary(self) -> str:
        """A few lines: verdict, first divergence, rows compared, what is not covered."""
        cov = self.coverage
        lines = [f"layerparity report: {'PASSED' if self else 'FAILED'} "
                 f"({self.caffe_source or 'caffe'} vs {self.tf_source or 'tf'})"]
        fd = self.first_divergence
        if fd is not None:
            where = fd.divergent_layer
            chain = f" (chain {'+'.join(fd.caffe_chain)})" if len(fd.caffe_chain) > 1 else ""
            top = f"; top diagnosis: {fd.diagnoses[0].kind}" if fd.diagnoses else ""
            lines.append(f"  first divergence: Caffe layer {where!r}{chain}, TF {fd.tf_layer!r}{top}")
        failed = sum(1 for r in self.rows if not r.passed)
        lines.append(f"  rows compared: {len(self.rows)} ({failed} failed)")
        if cov is not None and cov.problem():
            lines.append("  " + cov.problem())
        if cov is not None and cov.partial is not False and cov.left_out:
            lines.append(f"  partial check; left out: {_names(cov.left_out)}")
        for d in self.conventions:
            lines.append(f"  port convention: {d.kind}: {d.fix}")
        if self.unmapped_caffe:
            lines.append(f"  unmapped Caffe: {_names(self.unmapped_caffe)}")
        if self.unmapped_tf:
            lines.append(f"  unmapped TF: {_names(self.unmapped_tf)}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        fd = self.first_divergence
        first = f", first_divergence={fd.divergent_layer!r}" if fd is not None else ""
        cov = self.coverage
        missing = ""
        if cov is not None and (cov.missing_outputs or cov.uncovered):
            missing = f", not_covered={len(cov.missing_outputs) + len(cov.uncovered)}"
        return (f"<Report {'passed' if self else 'FAILED'}{first}, rows={len(self.rows)}{missing}, "
                f"unmapped_caffe={len(self.unmapped_caffe)}, unmapped_tf={len(self.unmapped_tf)}>")

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
                "divergent_layer": fd.divergent_layer,
                "caffe_chain": list(fd.caffe_chain),
                "tf_layer": fd.tf_layer,
                "max_abs_error": _f(fd.max_abs_error),
                "max_rel_error": _f(fd.max_rel_error),
                "own_error": fd.own.to_dict() if fd.own else None,
                "note": fd.note,
                "diagnoses": [d.to_dict() for d in fd.diagnoses],
                "weights": [_clean(w.to_dict()) for w in fd.weights],
            },
            "layers": [r.to_dict() for r in self.rows],
            "unmapped": {"caffe": list(self.unmapped_caffe), "tf": list(self.unmapped_tf)},
            "coverage": self.coverage.to_dict() if self.coverage is not None else None,
            "conventions": [d.to_dict() for d in self.conventions],
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

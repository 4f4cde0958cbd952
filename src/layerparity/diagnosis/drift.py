"""precision_drift: small errors everywhere, growing slowly with depth, no culprit.

Only the whole report (or the rows so far) can tell drift from a bug: one layer
with a small error could be either, twenty layers whose errors creep up from
1e-7 to 1e-5 without a jump are float accumulation order, and the right answer is
a looser tolerance, with the numbers to justify it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from ..errors import DiagnosisInputError
from ..result import Diagnosis, LayerResult
from ._core import nice_up, rnd

#: Above this relative RMS error a layer is not "small error".
DRIFT_MAX_REL_RMS = 1e-3
#: Cosine similarity every layer keeps under mere drift.
DRIFT_MIN_COSINE = 0.9999
#: A layer whose error jumps this many times above everything before it is a culprit.
DRIFT_MAX_JUMP = 30.0
DRIFT_MIN_LAYERS = 3




def precision_drift(rows: Sequence[LayerResult]) -> Diagnosis | None:
    """A ``precision_drift`` diagnosis if the rows look like float drift, else None."""
    ms = [(r, r.metrics) for r in rows if r.metrics is not None]
    if len(ms) < DRIFT_MIN_LAYERS or all(m.passed for _, m in ms):
        return None
    errs = []
    first = next((i for i, (_, m) in enumerate(ms) if m.rel_rms_error > 0), 0)
    ms = ms[first:]  # the input layers agree exactly: drift starts at the first computed layer
    if len(ms) < DRIFT_MIN_LAYERS:
        return None
    for _, m in ms:
        if m.nan_mismatch or not math.isfinite(m.rel_rms_error) or m.rel_rms_error > DRIFT_MAX_REL_RMS:
            return None
        if math.isfinite(m.cosine) and m.cosine < DRIFT_MIN_COSINE:
            return None
        errs.append(m.rel_rms_error)
    nonzero = [e for e in errs if e > 0]
    if len(nonzero) < max(2, len(errs) // 2):
        return None
    # no culprit: no layer jumps far above everything before it (after the first non-zero)
    best = 0.0
    jump = 1.0
    for e in errs:
        if best > 0 and e > 0:
            jump = max(jump, e / best)
        best = max(best, e)
    if jump > DRIFT_MAX_JUMP:
        return None
    # growth per layer: least-squares slope of log10(error) against depth
    pts = [(i, math.log10(e)) for i, e in enumerate(errs) if e > 0]
    n = len(pts)
    mx = sum(i for i, _ in pts) / n
    my = sum(v for _, v in pts) / n
    den = sum((i - mx) ** 2 for i, _ in pts)
    slope = sum((i - mx) * (v - my) for i, v in pts) / den if den else 0.0
    need_rtol = max((m.min_rtol for _, m in ms if math.isfinite(m.min_rtol)), default=0.0)
    need_atol = max((m.min_atol for _, m in ms if math.isfinite(m.min_atol)), default=0.0)
    # a pair that provably passes every layer: the current rtol with twice the largest
    # smallest-passing atol (atol is relative to each layer's scale: float noise is too)
    cur_rtol = max((r.tolerance.rtol for r, _ in ms if r.tolerance is not None), default=0.0)
    cur_atol = max((r.tolerance.atol for r, _ in ms if r.tolerance is not None), default=0.0)
    sug_rtol, sug_atol = cur_rtol, max(nice_up(2 * need_atol), cur_atol)
    alt_rtol = max(nice_up(2 * need_rtol), cur_rtol)
    failing = [r.caffe_layer for r, m in ms if not m.passed]
    ev: dict[str, Any] = {
        "layers": len(ms),
        "failing_layers": len(failing),
        "first_failing": failing[0] if failing else None,
        "rel_rms_first": rnd(errs[0]),
        "rel_rms_last": rnd(errs[-1]),
        "rel_rms_max": rnd(max(errs)),
        "max_rel_error": rnd(max(m.max_rel_error for _, m in ms if math.isfinite(m.max_rel_error))),
        "growth_per_layer": rnd(10**slope, 4),
        "largest_jump": rnd(jump, 4),
        "min_rtol_that_passes": rnd(need_rtol),
        "min_atol_that_passes": rnd(need_atol),
        "suggested_rtol": sug_rtol,
        "suggested_atol": sug_atol,
        "alternative_rtol_at_current_atol": alt_rtol,
        "per_layer_rel_rms": [[r.caffe_layer, rnd(m.rel_rms_error, 3)] for r, m in ms[:20]],
    }
    if len(ms) > 20:
        ev["per_layer_rel_rms_capped"] = f"first 20 of {len(ms)} layers"
    return Diagnosis(
        kind="precision_drift",
        summary=(f"No porting bug: small errors in every layer (relative RMS {errs[0]:.2g} -> {errs[-1]:.2g}, "
                 f"max {max(errs):.2g}), growing x{10**slope:.3g} per layer with no jump larger than x{jump:.3g}: "
                 "float accumulation order. A tolerance of "
                 f"rtol={sug_rtol:g}, atol={sug_atol:g} covers it."),
        fix=(f"Loosen the tolerance to rtol={sug_rtol:g}, atol={sug_atol:g} (atol is relative to each layer's max |value|; "
             f"twice the smallest passing atol {need_atol:.2g}), e.g. `compare_models(..., rtol={sug_rtol:g}, "
             f"atol={sug_atol:g})`; or keep atol={cur_atol:g} and use rtol={alt_rtol:g}; or "
             "compare in float64 on both sides; on Ampere+ GPUs disable TensorFloat-32 "
             "(`tf.config.experimental.enable_tensor_float_32_execution(False)`)."),
        confidence=0.8,
        evidence=ev,
    )


def diagnose_report(report: Any) -> list[Diagnosis]:
    """Diagnoses that need the whole report: ``precision_drift``, else the first divergence's own.

    [] when the report passes.
    """
    rows = getattr(report, "rows", None)
    if rows is None:
        raise DiagnosisInputError(f"diagnose_report needs a Report, got {type(report).__name__}")
    if bool(report):
        return []
    d = precision_drift(rows)
    if d is not None:
        return [d]
    fd = getattr(report, "first_divergence", None)
    return list(fd.diagnoses) if fd is not None else []

"""diagnose(): run the decision list over one divergent layer and rank the answers.

>>> import numpy as np
>>> from layerparity.result import LayerResult
>>> from layerparity.trace import Probe
>>> x = np.random.default_rng(0).random((1, 3, 4, 4)).astype(np.float32)
>>> caffe = Probe("data", "Input", x, layout="NCHW")
>>> tf = Probe("data", "InputLayer", 255 * x.transpose(0, 2, 3, 1), layout="NHWC")
>>> d = diagnose(LayerResult("data", "data", "data"), caffe, tf)
>>> d[0].kind, d[0].evidence["named"], d[0].layer
('constant_scale', '255 (raw_scale)', 'data')
>>> diagnose(LayerResult("data", "data", "data"), caffe, Probe("data", "InputLayer", x.transpose(0, 2, 3, 1), layout="NHWC"))
[]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import DiagnosisInputError
from ..metrics import compute_metrics, default_tolerance
from ..result import Diagnosis, LayerResult
from ..trace import Probe
from ._core import (
    CONF_EXACT,
    CONF_UNKNOWN,
    Case,
    DiagnosisContext,
    error_stats,
    fnum,
    nice_up,
    rnd,
    strict_mode,
)
from .conv import conv_rules, deconv_rules, fc_rules
from .detection import detection_output_rules, prior_box_rules
from .drift import DRIFT_MAX_REL_RMS, precision_drift
from .elementwise import (
    crop_rules,
    eltwise_rules,
    interp_rules,
    pixel_shuffle_rules,
    prelu_rules,
    relu_rules,
    softmax_rules,
)
from .generic import generic_rules
from .norm import bn_rules, lrn_rules, mvn_rules
from .pooling import pool_rules, spp_rules
from .recurrent import lstm_rules
from .shapes import INTERP_KINDS, shape_rules

Rule = Callable[[Case], list[Diagnosis]]

RULES_BY_KIND: dict[str, list[Rule]] = {
    "conv": [conv_rules],
    "depthwise_conv": [conv_rules],
    "deconv": [deconv_rules],
    "fc": [fc_rules],
    "pool_max": [pool_rules],
    "pool_avg": [pool_rules],
    "global_pool": [pool_rules],
    "lrn": [lrn_rules],
    "bn": [bn_rules],
    "scale": [bn_rules],
    "relu": [relu_rules],
    "leaky_relu": [relu_rules],
    "prelu": [prelu_rules],
    "softmax": [softmax_rules],
    "add": [eltwise_rules],
    "eltwise": [eltwise_rules],
    "crop": [crop_rules],
    "resize": [interp_rules],
    "pixel_shuffle": [pixel_shuffle_rules],
    "mvn": [mvn_rules],
    "spp": [spp_rules],
    "prior_box": [prior_box_rules],
    "detection_output": [detection_output_rules],
    "lstm": [lstm_rules],
}


#: Layers whose output is a constant of shapes and parameters (no data flows through them): a
#: value relation (TF = Caffe + a constant) cannot say why, so their own rule still recomputes,
#: and a confirmed recomputation outranks it (an unclipped PriorBox with offset 0 is Caffe's
#: priors shifted by -offset * step / image size: a "constant offset" otherwise).
CONSTANT_OUTPUT_KINDS = frozenset({"prior_box"})


def _rules_for(case: Case) -> list[Rule]:
    rules = list(RULES_BY_KIND.get(case.ckind, []))
    if case.ckind_raw in INTERP_KINDS and interp_rules not in rules:
        rules.append(interp_rules)
    if case.ckind_raw == "Eltwise" and eltwise_rules not in rules:
        rules.append(eltwise_rules)
    if case.chain_has("BatchNorm", "Scale") and bn_rules not in rules:
        rules.append(bn_rules)
    return rules


def _check_args(row: Any, cp: Any, tp: Any, caffe_inputs: Any, context: Any) -> DiagnosisContext:
    if not isinstance(row, LayerResult):
        raise DiagnosisInputError(f"diagnose: row must be a LayerResult, got {type(row).__name__}")
    for what, p in (("caffe_probe", cp), ("tf_probe", tp)):
        if not isinstance(p, Probe):
            raise DiagnosisInputError(f"diagnose: {what} must be a Probe, got {type(p).__name__}")
        if p.value is None:
            raise DiagnosisInputError(f"diagnose: {what} {p.name!r} has no value (load it from the trace first)")
        if not np.issubdtype(np.asarray(p.value).dtype, np.number):
            raise DiagnosisInputError(f"diagnose: {what} {p.name!r} is not numeric ({np.asarray(p.value).dtype})")
    if caffe_inputs is not None:
        if isinstance(caffe_inputs, np.ndarray) or not isinstance(caffe_inputs, Sequence):
            raise DiagnosisInputError("diagnose: caffe_inputs must be a list of arrays (the layer's bottoms)")
        for i, a in enumerate(caffe_inputs):
            if not isinstance(a, np.ndarray) or not np.issubdtype(a.dtype, np.number):
                raise DiagnosisInputError(f"diagnose: caffe_inputs[{i}] is not a numeric array")
    if context is None:
        return DiagnosisContext()
    if isinstance(context, dict):
        try:
            context = DiagnosisContext(**context)
        except TypeError as e:
            raise DiagnosisInputError(f"diagnose: bad context keys ({e})") from None
    if not isinstance(context, DiagnosisContext):
        raise DiagnosisInputError(f"diagnose: context must be a DiagnosisContext, got {type(context).__name__}")
    return _rows_so_far(context, row)


def _rows_so_far(ctx: DiagnosisContext, row: LayerResult) -> DiagnosisContext:
    """The context's contract: ``rows`` are the report's rows up to and including this one.
    A caller that hands over more (the finished report, when a divergence is named after the
    fact) must not let later rows, downstream of the bug, decide about this one."""
    rows = list(ctx.rows or [])
    if not all(isinstance(r, LayerResult) for r in rows):
        raise DiagnosisInputError("diagnose: context rows must be LayerResult objects")
    at = next((i for i, r in enumerate(rows) if r is row), None)
    if at is None or at == len(rows) - 1:
        return ctx
    return DiagnosisContext(rows=rows[: at + 1], caffe_probes=ctx.caffe_probes, caffe_weights=ctx.caffe_weights,
                            tolerance=ctx.tolerance)


def _is_fine(case: Case) -> bool:
    row = case.row
    if row.metrics is not None:
        return bool(row.metrics.passed)
    if case.t is None:
        return False
    tol = row.tolerance or case.ctx.tolerance or default_tolerance(case.cp.value.dtype, case.tp.value.dtype)
    return bool(compute_metrics(case.cp.value, case.t.astype(case.tp.value.dtype, copy=False), tol).passed)


def diagnose(
    row: LayerResult,
    caffe_probe: Probe,
    tf_probe: Probe,
    caffe_inputs: Sequence[np.ndarray] | None = None,
    caffe_weights: Sequence[np.ndarray] | dict[str, Sequence[np.ndarray]] | None = None,
    tf_weights: Sequence[np.ndarray] | None = None,
    context: DiagnosisContext | None = None,
    *,
    strict: bool | None = None,
) -> list[Diagnosis]:
    """Why did this layer diverge? Ranked :class:`~layerparity.result.Diagnosis` objects, best first.

    ``[]`` when the layer is fine; ``[unknown]`` (with the numbers) when something is
    wrong and no rule fits. ``caffe_inputs`` are the Caffe layer's bottoms (NCHW; for a
    chain, the bottoms of its first layer), ``caffe_weights`` its params in Caffe's
    layout (or ``{layer: params}`` for a fused chain), ``tf_weights`` the TF layer's
    arrays in TF's layout. With inputs and weights a suspected bug is *confirmed* by
    recomputing Caffe's formula with the bug in NumPy; confirmed diagnoses rank above
    fingerprint-only guesses. Each diagnosis' ``layer`` names the chain member it
    blames ("" when no rule localises the bug). ``context.rows`` after ``row`` are
    ignored (see :class:`DiagnosisContext`). ``strict`` (default: the
    ``LAYERPARITY_DIAGNOSIS_STRICT`` environment variable) makes a rule that raises
    propagate instead of being recorded under ``evidence["rules_skipped"]``. Pure NumPy.
    """
    ctx = _check_args(row, caffe_probe, tf_probe, caffe_inputs, context)
    try:
        case = Case(row, caffe_probe, tf_probe, caffe_inputs, caffe_weights, tf_weights, ctx,
                    strict=strict_mode(strict))
    except (TypeError, ValueError) as e:
        raise DiagnosisInputError(f"diagnose: layer {row.caffe_layer!r}: unusable arrays ({e})") from None
    if _is_fine(case):
        return []
    cands: list[Diagnosis] = []
    if case.t is None:
        cands += _run(shape_rules, case)
    else:
        # exact relations between the two values are cheap: first. A hit makes the
        # layer rules skip their recomputations (weight evidence still runs: it can rank higher)
        cands += _run(generic_rules, case)
        if any(d.confidence >= CONF_EXACT for d in cands) and case.ckind not in CONSTANT_OUTPUT_KINDS:
            case.proven = True
        for rule in _rules_for(case):
            cands += _run(rule, case)
        if case.tail:
            cands += _run(tail_rules, case)
    out = _rank(cands)
    if not out:
        out = [_fallback(case)]
    _annotate(case, out)
    return out


def _run(rule: Rule, case: Case) -> list[Diagnosis]:
    """One rule; parameters a backend spelled unexpectedly make it step aside, not sink the report."""
    try:
        return rule(case)
    except (ValueError, IndexError, KeyError, TypeError, ZeroDivisionError, np.linalg.LinAlgError) as e:
        if case.strict:
            raise
        case.evidence_extra.setdefault("rules_skipped", []).append(f"{rule.__name__}: {type(e).__name__}: {e}"[:200])
        return []


def _rank(cands: list[Diagnosis]) -> list[Diagnosis]:
    best: dict[str, Diagnosis] = {}
    for d in sorted(cands, key=lambda d: -d.confidence):
        best.setdefault(d.kind, d)
    return list(best.values())


def _fallback(case: Case) -> Diagnosis:
    stats = error_stats(case.y, case.t) if case.t is not None else {}
    small = case.t is not None and stats.get("rel_rms_error", 1.0) <= DRIFT_MAX_REL_RMS
    if small and case.ctx.rows:
        rows = list(case.ctx.rows)
        if case.row not in rows:
            rows.append(case.row)
        d = precision_drift(rows)
        if d is not None:
            return d
    if small:
        d = float_rounding(case)
        if d is not None:
            return d
    hint = ""
    if case.evidence_extra.get("weights"):
        hint += (" The TF weights differ from Caffe's under every known transform (not a layout bug): the port "
                 "loaded other weights, or the layers are mismatched.")
    if "per_channel_affine" in stats:
        hint += (" TF = a_c * Caffe + b_c exactly, per channel: a per-channel scale/shift differs (a BatchNorm or "
                 "Scale parameter, or the two sides of this row are one Scale layer apart).")
    if small:
        hint += (" The error is small everywhere: if the layers before it show the same slow growth it is float "
                "drift (call diagnose_report(report) or pass context rows).")
    return Diagnosis(
        kind="unknown",
        layer="",
        summary=f"Layer {case.row.caffe_layer!r} ({case.ckind_raw or '?'}) differs and no known porting bug "
                "explains it." + hint,
        fix="Compare the layer's parameters and weights on both sides (layerparity weights ...), and check its "
            "inputs: run with own-error replay to see whether the layer itself or its input differs.",
        confidence=CONF_UNKNOWN,
        evidence={**stats, "caffe_kind": case.ckind_raw, "tf_kind": case.tkind_raw,
                  "caffe_shape": list(case.y.shape), "tf_shape": list(case.t_raw.shape),
                  "inputs_given": bool(case.x), "caffe_weights_given": bool(case.cw_chain),
                  "tf_weights_given": bool(case.tw)},
    )


def float_rounding(case: Case) -> Diagnosis | None:
    """One layer's ``precision_drift``: TF is as close to the float64 reference as Caffe itself is."""
    ref, t = case.reference, case.t
    if ref is None or t is None:
        return None
    e_caffe = case.resid(ref, target=case.y)
    e_tf = case.resid(ref, target=t)
    eps32 = float(np.finfo(np.float32).eps)
    if not e_tf <= 10 * max(e_caffe, 10 * eps32):
        return None
    m = case.row.metrics
    tol = case.row.tolerance or case.ctx.tolerance
    ev: dict[str, Any] = {"caffe_vs_float64_reference": rnd(e_caffe), "tf_vs_float64_reference": rnd(e_tf),
                          "tf_vs_caffe": rnd(case.r0)}
    fix = "Loosen the tolerance a little, or compare in float64 on both sides."
    if m is not None and np.isfinite(m.min_atol):
        sug = max(nice_up(2 * m.min_atol), tol.atol if tol else 0.0)
        ev.update(min_atol_that_passes=rnd(m.min_atol), suggested_rtol=tol.rtol if tol else None, suggested_atol=sug)
        fix = (f"Loosen the tolerance to atol={sug:g} (relative to the layer's max |value|) at rtol="
               f"{tol.rtol if tol else 0:g}, or compare in float64 on both sides; run diagnose_report(report) "
               "to size it over all layers.")
    return Diagnosis(
        kind="precision_drift",
        summary=(f"No porting bug in this layer: TF is as close to Caffe's formula recomputed in float64 "
                 f"({e_tf:.2g} of the layer's scale) as Caffe itself is ({e_caffe:.2g}): float32 rounding, "
                 "accumulated in a different order."),
        fix=fix, confidence=0.75, evidence=ev)


def tail_rules(case: Case) -> list[Diagnosis]:
    """A chain ending in an activation (``conv1`` + ``relu1`` against one ``Conv2D(activation=...)``):
    the primary layer recomputes Caffe's value, but the TF activation differs. Blames the activation."""
    out: list[Diagnosis] = []
    z, t = case.pre_activation, case.t
    if case.proven or z is None or t is None or len(case.tail) != 1 or case.tail[0][1] != "ReLU":
        return out
    name = case.tail[0][0]
    cs = fnum(case.cparams_of(name).get("negative_slope"), 0.0) or 0.0
    neg = z < -1e-3 * case.scale  # slopes measured where the pre-activation is not rounding noise
    if not neg.any():
        return out
    ts = float(np.median(t[neg] / z[neg]))
    if not np.isfinite(ts) or abs(ts - cs) < 1e-6:
        return out
    named = {0.3: "Keras LeakyReLU's default 0.3", 0.2: "tf.nn.leaky_relu's default 0.2",
             0.01: "0.01 (a common Keras choice)"}.get(round(ts, 6), f"{ts:.6g}")
    fix = ("Caffe's ReLU here is a plain ReLU: use `activation='relu'` (Keras' 'leaky_relu' has slope 0.2)."
           if cs == 0 else f"Use a LeakyReLU with negative_slope={cs:g} after the layer (not the fused default).")
    case.attempt(out, "leaky_slope",
                 f"The layer before it computes Caffe's values, but the fused TF activation's negative slope is "
                 f"{named} where Caffe's {name!r} has negative_slope {cs:g}: recomputing the chain with the TF slope "
                 "reproduces the TF output.", fix, lambda: np.where(z > 0, z, ts * z), layer=name, post=False,
                 caffe_slope=cs, tf_slope=rnd(ts))
    return out


def _annotate(case: Case, out: list[Diagnosis]) -> None:
    if case.ruled_out:
        for d in out:
            d.evidence.setdefault("ruled_out", list(case.ruled_out))
        top = out[0]
        top.summary += " Ruled out: " + "; ".join(case.ruled_out) + "."
    for k, v in case.evidence_extra.items():
        out[0].evidence.setdefault(k, v)
    # the Caffe type of the layer the rules studied (the conv of conv+relu): conventions() reads it
    out[0].evidence.setdefault("caffe_kind", case.ckind_raw)
    if case.row.own is not None and case.row.own.passed:
        out[0].evidence.setdefault("own_error_passed", True)
    if case.row.contaminated_by:
        out[0].evidence.setdefault("contaminated_by", case.row.contaminated_by)
    for d in out:
        if "max_abs_error_now" in d.evidence and d.evidence["max_abs_error_now"] is not None:
            d.evidence["max_abs_error_now"] = rnd(d.evidence["max_abs_error_now"])

"""metrics.py: exact values on hand-made arrays, NaN/Inf rules, minimum tolerances, defaults."""

from __future__ import annotations

import doctest
import math
import tracemalloc
from typing import Any

import numpy as np
import pytest

import layerparity.metrics as metrics_mod
from layerparity.errors import InputDataError, InputError
from layerparity.metrics import (
    DEFAULT_TOLERANCES,
    ToleranceTable,
    as_tolerance,
    check_tolerance_pair,
    compute_metrics,
    default_tolerance,
)
from layerparity.result import Metrics, Tolerance

TOL = Tolerance(rtol=1e-4, atol=1e-5)


def test_doctests():
    assert doctest.testmod(metrics_mod).failed == 0


def test_pinned_values_on_a_2x2_array():
    ref = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    got = ref.copy()
    got[1, 0] = 3.5
    m = compute_metrics(ref, got, TOL)
    assert not m.passed
    assert m.max_abs_error == 0.5
    assert m.max_abs_index == (1, 0)
    assert m.max_rel_error == pytest.approx(0.5 / 3.0, rel=1e-12)
    assert m.max_rel_index == (1, 0)
    assert m.mean_abs_error == pytest.approx(0.125, rel=1e-12)
    assert m.rel_rms_error == pytest.approx(math.sqrt(0.25 / 4) / math.sqrt(30 / 4), rel=1e-12)
    assert m.cosine == pytest.approx(np.dot([1, 2, 3.5, 4], [1, 2, 3, 4]) / (math.sqrt(30) * math.sqrt(1 + 4 + 12.25 + 16)))
    assert (m.mismatched, m.total, m.nan_mismatch) == (1, 4, 0)
    assert m.mismatched_fraction == 0.25
    assert m.scale == 4.0
    # smallest atol (in units of scale) at rtol=1e-4, smallest rtol at atol=1e-5
    assert m.min_atol == pytest.approx((0.5 - 1e-4 * 3.0) / 4.0, rel=1e-12)
    assert m.min_rtol == pytest.approx((0.5 - 1e-5 * 4.0) / 3.0, rel=1e-12)


def test_identical_arrays_pass_with_zero_errors():
    ref = np.linspace(-3, 3, 60, dtype=np.float32).reshape(1, 3, 4, 5)
    m = compute_metrics(ref, ref.copy(), Tolerance(0.0, 0.0))
    assert m.passed and m.max_abs_error == 0.0 and m.mismatched == 0
    assert m.cosine == pytest.approx(1.0, abs=1e-15)
    assert m.min_atol == 0.0 and m.min_rtol == 0.0


def test_worst_index_is_in_nchw_coordinates():
    ref = np.zeros((2, 3, 4, 5), np.float32)
    got = ref.copy()
    got[1, 2, 3, 0] = -7.0
    got[0, 0, 0, 1] = 1.0
    m = compute_metrics(ref, got, TOL)
    assert m.max_abs_index == (1, 2, 3, 0)
    assert m.max_abs_error == 7.0
    assert m.mismatched == 2


def test_criterion_boundary_is_inclusive_and_atol_is_relative_to_scale():
    ref = np.array([2.0, 4.0], np.float64)  # scale 4
    tol = Tolerance(rtol=0.5, atol=0.25)  # allowed at ref=2: 0.25*4 + 0.5*2 = 2
    assert compute_metrics(ref, np.array([4.0, 4.0]), tol).passed
    assert not compute_metrics(ref, np.array([4.0 + 1e-12, 4.0]), tol).passed
    # absolute atol: allowed at ref=2 is 0.25 + 1 = 1.25
    absolute = Tolerance(rtol=0.5, atol=0.25, relative_atol=False)
    assert compute_metrics(ref, np.array([3.25, 4.0]), absolute).passed
    assert not compute_metrics(ref, np.array([3.3, 4.0]), absolute).passed


def test_relative_atol_scales_with_the_layer():
    small = np.array([1e-3, -2e-3], np.float32)
    big = small * 1e6
    noise = np.array([1e-8, 0.0], np.float32)
    # the same relative perturbation passes at both magnitudes
    assert compute_metrics(small, small + noise, Tolerance(0.0, 1e-5)).passed
    assert compute_metrics(big, big + noise * 1e6, Tolerance(0.0, 1e-5)).passed
    # an absolute atol of 1e-5 would let a 50% error through on the small layer
    wrong = small * 1.5
    assert not compute_metrics(small, wrong, Tolerance(0.0, 1e-5)).passed
    assert compute_metrics(small, wrong, Tolerance(0.0, 1e-3, relative_atol=False)).passed


def test_relative_error_floor_is_eps_times_scale():
    ref = np.array([1.0, 0.0], np.float32)
    got = np.array([1.0, 1e-3], np.float32)
    m = compute_metrics(ref, got, TOL)
    eps = float(np.finfo(np.float32).eps)
    assert m.max_rel_index == (1,)
    assert m.max_rel_error == pytest.approx(float(np.float32(1e-3)) / eps, rel=1e-9)
    # at ref == 0 no rtol can help: min_rtol is infinite, min_atol is finite
    assert m.min_rtol == math.inf
    assert m.min_atol == pytest.approx(float(np.float32(1e-3)), rel=1e-9)


def test_nan_on_both_sides_at_the_same_place_is_equal():
    ref = np.array([1.0, np.nan, 3.0], np.float32)
    m = compute_metrics(ref, ref.copy(), TOL)
    assert m.passed and m.nan_mismatch == 0 and m.mismatched == 0
    assert m.max_abs_error == 0.0 and m.scale == 3.0


def test_nan_against_a_number_fails_whatever_the_tolerance():
    ref = np.array([1.0, 2.0, 3.0], np.float32)
    got = np.array([1.0, np.nan, 3.0], np.float32)
    m = compute_metrics(ref, got, Tolerance(rtol=1e9, atol=1e9))
    assert not m.passed
    assert (m.nan_mismatch, m.mismatched) == (1, 1)
    assert m.max_abs_error == math.inf and m.max_abs_index == (1,)
    assert m.min_atol == math.inf and m.min_rtol == math.inf
    # finite statistics are over the finite pairs only
    assert m.mean_abs_error == 0.0 and m.cosine == pytest.approx(1.0)
    # and the other way round
    m2 = compute_metrics(got, ref, TOL)
    assert m2.nan_mismatch == 1 and not m2.passed


def test_infinities():
    ref = np.array([np.inf, -np.inf, 1.0, np.inf], np.float32)
    same = compute_metrics(ref, ref.copy(), TOL)
    assert same.passed and same.nan_mismatch == 0
    got = np.array([np.inf, np.inf, 1.0, np.nan], np.float32)  # -inf vs inf, inf vs nan
    m = compute_metrics(ref, got, TOL)
    assert m.nan_mismatch == 2 and m.mismatched == 2 and not m.passed
    assert m.max_abs_index == (1,)
    fin = compute_metrics(np.array([1.0, 2.0]), np.array([1.0, np.inf]), TOL)
    assert fin.nan_mismatch == 1 and fin.max_abs_index == (1,)


def test_all_zero_reference_uses_scale_one():
    ref = np.zeros((3,), np.float32)
    m = compute_metrics(ref, ref.copy(), TOL)
    assert m.scale == 1.0 and m.passed and m.cosine == 1.0 and m.rel_rms_error == 0.0
    m = compute_metrics(ref, np.array([0, 0, 1e-6], np.float32), TOL)
    assert m.passed  # 1e-6 <= 1e-5 * 1.0
    assert m.cosine == 0.0 and m.rel_rms_error == math.inf


def test_min_tolerances_are_the_smallest_that_pass():
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(2, 4, 6, 6)).astype(np.float32)
    got = ref + rng.normal(scale=1e-4, size=ref.shape).astype(np.float32)
    for rtol, atol in [(1e-4, 1e-5), (0.0, 1e-6), (1e-3, 0.0)]:
        m = compute_metrics(ref, got, Tolerance(rtol, atol))
        assert compute_metrics(ref, got, Tolerance(rtol, m.min_atol * (1 + 1e-9))).passed
        assert not compute_metrics(ref, got, Tolerance(rtol, m.min_atol * 0.999)).passed
        if math.isfinite(m.min_rtol):
            assert compute_metrics(ref, got, Tolerance(m.min_rtol * (1 + 1e-9), atol)).passed
            assert not compute_metrics(ref, got, Tolerance(m.min_rtol * 0.999, atol)).passed


def test_mismatch_count_matches_a_direct_numpy_formula_across_chunks(monkeypatch):
    monkeypatch.setattr(metrics_mod, "_CHUNK", 1000)  # force many blocks
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(3, 5, 17, 19)).astype(np.float32)
    got = (ref + rng.normal(scale=3e-4, size=ref.shape)).astype(np.float32)
    got[2, 4, 16, 3] += 0.25
    tol = Tolerance(1e-3, 1e-4)
    m = compute_metrics(ref, got, tol)
    r, g = ref.astype(np.float64), got.astype(np.float64)
    d = np.abs(g - r)
    scale = np.abs(r).max()
    assert m.mismatched == int(np.count_nonzero(d > 1e-4 * scale + 1e-3 * np.abs(r)))
    assert m.max_abs_index == (2, 4, 16, 3)
    assert m.max_abs_error == pytest.approx(d.max(), rel=1e-15)
    # float32 inputs: |d| and the partial sums are float32 (module docstring), so ~1e-8 relative
    assert m.mean_abs_error == pytest.approx(d.mean(), rel=1e-7)
    assert m.rel_rms_error == pytest.approx(np.sqrt(np.mean(d**2)) / np.sqrt(np.mean(r**2)), rel=1e-7)
    cos = np.dot(r.ravel(), g.ravel()) / (np.linalg.norm(r) * np.linalg.norm(g))
    # 1 - cosine (6.5e-6 here) to ~1e-8 relative: from float32 partial sums of r.d and d.d
    assert m.cosine == pytest.approx(cos, abs=1e-12)
    # a non-contiguous (transposed) input gives the same numbers
    m_t = compute_metrics(ref.transpose(0, 2, 3, 1).copy().transpose(0, 3, 1, 2), got, tol)
    assert m_t == m


def test_memory_stays_bounded_on_large_tensors():
    n = 1 << 24  # 16M elements, 64 MB per float32 array
    ref = np.ones(n, np.float32)
    got = ref.copy()
    got[n - 5] = 2.0
    compute_metrics(ref[:10_000], got[:10_000], TOL)  # numba's one-off import and compilation, not counted
    tracemalloc.start()
    try:
        m = compute_metrics(ref, got, TOL)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert m.max_abs_index == (n - 5,) and m.mismatched == 1
    # float64 copies of both inputs would be 256 MB; blocks keep it far below one input
    assert peak < 32 * 2**20, f"peak {peak / 2**20:.1f} MB"


def test_shape_and_dtype_errors_are_input_errors():
    with pytest.raises(InputDataError, match=r"shapes \(2,\) \(reference\) and \(3,\)"):
        compute_metrics(np.zeros(2), np.zeros(3), TOL)
    with pytest.raises(InputDataError, match="dtype"):
        compute_metrics(np.array(["a"]), np.array(["b"]), TOL)


def test_empty_arrays_pass():
    m = compute_metrics(np.zeros((0, 3)), np.zeros((0, 3)), TOL)
    assert m.passed and m.total == 0 and m.max_abs_index is None


def test_float16_inputs_are_compared_in_float32_without_overflow():
    ref = np.array([60000.0, -60000.0], np.float16)
    got = np.array([-60000.0, 60000.0], np.float16)
    m = compute_metrics(ref, got, TOL)
    assert m.max_abs_error == 120000.0 and m.cosine == -1.0


# -- tolerances ------------------------------------------------------------------------


def test_rtol_and_atol_go_together():
    with pytest.raises(InputError, match="rtol and atol must be given together"):
        check_tolerance_pair(1e-3, None)
    with pytest.raises(ValueError, match="rtol and atol must be given together"):
        ToleranceTable(atol=0.0)
    with pytest.raises(InputError, match="finite number >= 0"):
        check_tolerance_pair(-1.0, 1e-5)
    with pytest.raises(InputError, match="must be a number"):
        check_tolerance_pair("x", 1e-5)
    assert check_tolerance_pair(None, None) is None
    assert check_tolerance_pair(1e-3, 0) == Tolerance(1e-3, 0.0)


def test_default_table_by_least_precise_dtype():
    assert default_tolerance(np.float32) == DEFAULT_TOLERANCES["float32"] == Tolerance(1e-4, 3e-5)
    assert default_tolerance(np.float32, np.float16) == DEFAULT_TOLERANCES["float16"]
    assert default_tolerance(np.float64, np.float64) == DEFAULT_TOLERANCES["float64"]
    assert default_tolerance(np.float64, np.float32) == DEFAULT_TOLERANCES["float32"]
    assert default_tolerance(np.int64, np.int32) == Tolerance(0.0, 0.0)
    # a copy: mutating it does not change the table
    t = default_tolerance("float32")
    t.rtol = 1.0
    assert DEFAULT_TOLERANCES["float32"].rtol == 1e-4


def test_defaults_order_is_sane():
    f16, f32, f64 = (DEFAULT_TOLERANCES[k] for k in ("float16", "float32", "float64"))
    assert f64.rtol < f32.rtol < f16.rtol and f64.atol < f32.atol < f16.atol
    # a BatchNorm epsilon 1e-3 vs 1e-5 bug scales a channel by 1.0003 at the very least:
    # an element at the layer's scale must fail under the float32 default.
    ref = np.array([1.0, -0.5], np.float32)
    assert not compute_metrics(ref, ref / np.float32(1.0003), f32).passed


def test_per_layer_overrides_exact_then_patterns_in_order():
    table = ToleranceTable(
        rtol=1e-3, atol=1e-3,
        tolerances={"conv*": (1e-2, 1e-2), "conv5": Tolerance(0.5, 0.5), "fc?": {"rtol": 0.1, "atol": 0.0}},
    )
    assert table.for_layer(["conv5"], "float32") == Tolerance(0.5, 0.5)  # exact beats the earlier pattern
    assert table.for_layer(["conv1"], "float32") == Tolerance(1e-2, 1e-2)
    assert table.for_layer(["relu1", "conv1"], "float32") == Tolerance(1e-2, 1e-2)  # any chain name
    assert table.for_layer(["fc7"], "float32") == Tolerance(0.1, 0.0)
    assert table.for_layer(["pool1"], "float16") == Tolerance(1e-3, 1e-3)  # global beats dtype default
    assert ToleranceTable().for_layer(["pool1"], "float16") == DEFAULT_TOLERANCES["float16"]
    assert table.unused_patterns(["conv1", "conv5"]) == ["fc?"]


def test_bad_overrides_name_the_layer():
    with pytest.raises(InputError, match=r"tolerances\['conv1'\]: rtol and atol must be given together"):
        ToleranceTable(tolerances={"conv1": (1e-3, None)})
    with pytest.raises(InputError, match=r"tolerances\['conv1'\]: a tolerance is"):
        ToleranceTable(tolerances={"conv1": 1e-3})
    with pytest.raises(InputError, match="unknown tolerance field"):
        as_tolerance({"rtol": 1, "atol": 1, "btol": 2}, "x")
    with pytest.raises(InputError, match="must be a dict"):
        ToleranceTable(tolerances=[("conv1", (1, 1))])


# -- the float32 path against the pre-optimisation implementation ------------------------
#
# _reference_metrics below is compute_metrics as it was before the float32 path: the
# pre-optimisation implementation, float64 in every block, kept verbatim (only the block
# size became a parameter) as the oracle the fast implementation is checked against.
#
# The float32 path makes every decision and every reported maximum in float64 (module
# docstring, "Float32 inputs"), so the integer fields, the maxima, their indices, scale,
# min_atol and min_rtol must come out *identical*, borderline elements included (see
# test_borderline_elements_are_decided_as_in_float64); only the sums behind
# mean_abs_error, rel_rms_error and cosine are rounded differently.


def _reference_metrics(ref: Any, got: Any, tol: Tolerance, chunk: int = 1 << 18) -> Metrics:
    """Every error metric of ``got`` against ``ref`` (same shape, ref = Caffe) under ``tol``.

    One pass over blocks of ~1M elements after a cheap ``max|ref|`` reduction;
    float64 only inside each block, so memory stays bounded for any tensor size.
    See the module docstring for the criterion and the NaN/Inf rules.
    """
    ref = np.asarray(ref)
    got = np.asarray(got)
    if ref.shape != got.shape:
        raise InputDataError(f"cannot compare arrays of shapes {ref.shape} (reference) and {got.shape}")
    for a, side in ((ref, "reference"), (got, "compared")):
        if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise InputDataError(f"cannot compare a {side} array of dtype {a.dtype}")
    shape = ref.shape
    total = int(ref.size)
    ct = np.result_type(ref.dtype, got.dtype, np.float32)
    eps = float(np.finfo(ct).eps) if np.issubdtype(ct, np.floating) else float(np.finfo(np.float64).eps)
    rtol, atol = float(tol.rtol), float(tol.atol)
    if total == 0:
        return Metrics(0.0, None, 0.0, None, 0.0, 0.0, 1.0, 0, 0, 0, 1.0, 0.0, 0.0, True)

    r_flat = np.ravel(ref)  # a view when contiguous, one copy otherwise (a transposed TF value)
    g_flat = np.ravel(got)

    # scale = max |ref| over finite elements: two no-allocation reductions when all finite.
    with np.errstate(invalid="ignore"):
        hi, lo = r_flat.max(), r_flat.min()
    if np.isfinite(hi) and np.isfinite(lo):
        scale = float(max(abs(float(hi)), abs(float(lo))))
    else:
        fin = r_flat[np.isfinite(r_flat)]
        scale = float(np.abs(fin).max()) if fin.size else 0.0
    if scale == 0.0:
        scale = 1.0
    atol_abs = atol * scale if tol.relative_atol else atol
    floor = eps * scale

    max_abs, max_abs_i = -1.0, None
    max_rel, max_rel_i = -1.0, None
    sum_abs = sum_dd = sum_rr = sum_gg = sum_rg = 0.0
    n_fin = 0
    mismatched = 0
    nan_mismatch = 0
    first_bad: int | None = None
    need_atol = 0.0  # max(|d| - rtol|ref|)
    need_rtol = 0.0  # max((|d| - atol_abs) / |ref|) over elements beyond atol

    for start in range(0, total, chunk):
        stop = min(start + chunk, total)
        r = r_flat[start:stop].astype(np.float64)
        g = g_flat[start:stop].astype(np.float64)
        fr = np.isfinite(r)
        fg = np.isfinite(g)
        if not (fr.all() and fg.all()):
            both = fr & fg
            same_special = (np.isnan(r) & np.isnan(g)) | (np.isinf(r) & (r == g))
            bad = ~both & ~same_special
            nb = int(np.count_nonzero(bad))
            if nb:
                nan_mismatch += nb
                mismatched += nb
                if first_bad is None:
                    first_bad = start + int(np.argmax(bad))
            idx = np.flatnonzero(both)
            r = r[both]
            g = g[both]
        else:
            idx = None
        if r.size == 0:
            continue
        d = g - r
        ad = np.abs(d)
        ar = np.abs(r)
        n_fin += r.size

        i = int(np.argmax(ad))
        if ad[i] > max_abs:
            max_abs = float(ad[i])
            max_abs_i = start + (int(idx[i]) if idx is not None else i)
        rel = ad / np.maximum(ar, floor)
        i = int(np.argmax(rel))
        if rel[i] > max_rel:
            max_rel = float(rel[i])
            max_rel_i = start + (int(idx[i]) if idx is not None else i)

        sum_abs += float(ad.sum())
        sum_dd += float(np.einsum("i,i->", d, d))
        sum_rr += float(np.einsum("i,i->", r, r))
        sum_gg += float(np.einsum("i,i->", g, g))
        sum_rg += float(np.einsum("i,i->", r, g))

        # rel is free now: reuse it for the allowed error
        allowed = np.multiply(ar, rtol, out=rel)
        allowed += atol_abs
        mismatched += int(np.count_nonzero(ad > allowed))

        slack = ad - rtol * ar
        need_atol = max(need_atol, float(slack.max()))
        over = ad > atol_abs
        if over.any():
            aro = ar[over]
            excess = ad[over] - atol_abs
            if np.any(aro == 0):
                need_rtol = math.inf
            else:
                need_rtol = max(need_rtol, float((excess / aro).max()))

    if nan_mismatch:
        max_abs, max_rel = math.inf, math.inf
        max_abs_i = max_rel_i = first_bad
        need_atol = need_rtol = math.inf
    if max_abs_i is None:  # every element was an equal NaN/Inf pair
        max_abs, max_rel = 0.0, 0.0

    if n_fin:
        mean_abs = sum_abs / n_fin
        rms_ref = math.sqrt(sum_rr / n_fin)
        rms_d = math.sqrt(sum_dd / n_fin)
        rel_rms = rms_d / rms_ref if rms_ref > 0 else (0.0 if rms_d == 0 else math.inf)
        if sum_rr > 0 and sum_gg > 0:
            cosine = max(-1.0, min(1.0, sum_rg / (math.sqrt(sum_rr) * math.sqrt(sum_gg))))
        else:
            cosine = 1.0 if sum_rr == sum_gg else 0.0  # both all-zero: identical
    else:
        mean_abs, rel_rms, cosine = 0.0, 0.0, 1.0

    min_atol = max(need_atol, 0.0)
    if tol.relative_atol and math.isfinite(min_atol):
        min_atol /= scale
    return Metrics(
        max_abs_error=max(max_abs, 0.0),
        max_abs_index=_index(max_abs_i, shape),
        max_rel_error=max(max_rel, 0.0),
        max_rel_index=_index(max_rel_i, shape),
        mean_abs_error=mean_abs,
        rel_rms_error=rel_rms,
        cosine=cosine,
        mismatched=mismatched,
        total=total,
        nan_mismatch=nan_mismatch,
        scale=scale,
        min_atol=min_atol,
        min_rtol=max(need_rtol, 0.0),
        passed=mismatched == 0,
    )


def _index(flat: int | None, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    if flat is None:
        return None
    return tuple(int(i) for i in np.unravel_index(flat, shape)) if shape else ()

EXACT_FIELDS = (
    "max_abs_error", "max_abs_index", "max_rel_error", "max_rel_index", "mismatched", "total",
    "nan_mismatch", "scale", "min_atol", "min_rtol", "passed",
)


def _assert_same_metrics(m, want, what=""):
    for f in EXACT_FIELDS:
        assert getattr(m, f) == getattr(want, f), f"{what}: {f} {getattr(m, f)!r} != {getattr(want, f)!r}"
    for f in ("mean_abs_error", "rel_rms_error"):
        a, b = getattr(m, f), getattr(want, f)
        assert a == pytest.approx(b, rel=1e-6, abs=1e-300), f"{what}: {f} {a!r} != {b!r}"
    assert m.cosine == pytest.approx(want.cosine, abs=1e-9), f"{what}: cosine {m.cosine!r} != {want.cosine!r}"


TOLERANCES = [
    Tolerance(1e-4, 3e-5),  # the float32 default
    Tolerance(1e-3, 1e-2),
    Tolerance(0.0, 0.0),
    Tolerance(1e-3, 0.0),
    Tolerance(0.0, 1e-6),
    Tolerance(1e9, 1e9),
    Tolerance(1e-4, 1e-5, relative_atol=False),
    Tolerance(0.0, 1e-3, relative_atol=False),
    Tolerance(1e-30, 1e-35),  # atol * scale below the float32 path's range
    Tolerance(1e-40, 1e-4),  # rtol below it
]

KINDS = ("near", "drift", "big1", "bn", "offset", "relu", "quantized", "zeros_ref", "far", "zero_got", "neg",
         "nonfinite", "tiny", "huge", "very_tiny", "very_huge", "overflow", "ulps")


def _make_case(rng, n, kind, dtypes):
    """A (ref, got) pair of n elements of one kind; dtypes (ref, got)."""
    # very_tiny and very_huge are beyond the float32 path's range (float64 throughout)
    scale = {"tiny": 1e-12, "huge": 1e12, "very_tiny": 1e-25, "very_huge": 1e20}.get(kind, float(10.0 ** rng.uniform(-3, 3)))
    ref = rng.normal(size=n) * scale
    noise = float(10.0 ** rng.uniform(-7, -3))
    got = ref + ref * rng.normal(scale=noise, size=n)
    if kind == "drift":
        got = ref + rng.normal(scale=noise * scale, size=n)
    elif kind == "big1" and n:
        got[rng.integers(n)] += scale * rng.choice([-1.0, 1.0]) * 10.0 ** rng.uniform(-4, 2)
    elif kind == "bn":
        got = ref * 1.0003
    elif kind == "offset":  # a missing bias: a constant error, float32 ties at the maximum
        got = ref + 0.25 * scale
    elif kind == "relu":
        ref = np.maximum(ref, 0.0)
        got = np.maximum(got, 0.0)
    elif kind == "quantized":
        ref = np.round(ref / scale * 8) / 8
        got = ref + rng.integers(-2, 3, size=n) / 64
    elif kind == "zeros_ref":
        ref = np.zeros(n)
        got = np.where(rng.random(n) < 0.5, 0.0, rng.normal(scale=10.0 ** rng.uniform(-9, -3), size=n))
    elif kind == "far":
        got = rng.normal(size=n) * scale
    elif kind == "zero_got":
        got = np.zeros(n)
    elif kind == "neg":
        got = -ref
    elif kind == "overflow" and n:  # float32 (g - r)^2 overflows: that block in float64
        got[rng.integers(n)] = 1e25 * rng.choice([-1.0, 1.0])
    elif kind == "ulps":  # a few elements 1-3 float32 ulps off, tiny ones among them (subnormal squares)
        ref[: n // 3] *= 1e-30
        got = ref.astype(np.float32)
        at = rng.integers(n, size=max(1, n // 100)) if n else []
        got[at] = np.nextafter(got[at], np.where(rng.random(len(at)) < 0.5, np.float32(np.inf), np.float32(-np.inf)))
        got = got.astype(np.float64)
    elif kind == "nonfinite" and n:
        k = max(1, n // 50)
        for val, side in ((np.nan, "both"), (np.inf, "both"), (-np.inf, "ref"), (np.nan, "got"), (np.inf, "got")):
            at = rng.integers(n, size=k)
            if side in ("both", "ref"):
                ref[at] = val
            if side in ("both", "got"):
                got[at] = val
            if rng.random() < 0.5:
                break
    rdt, gdt = (np.dtype(dt) for dt in dtypes)
    with np.errstate(over="ignore", invalid="ignore"):
        return _cast(ref, rdt), _cast(got, gdt)


def _cast(a, dt):
    if dt.kind in "iu":
        return np.clip(np.nan_to_num(np.round(a * 4)), -100, 100).astype(dt)
    if dt.kind == "b":
        return np.nan_to_num(a) > 0
    return a.astype(dt)


DTYPES = [("float32", "float32")] * 6 + [
    ("float16", "float16"), ("float16", "float32"), ("float32", "float64"), ("float64", "float64"),
    ("int32", "int32"), ("bool", "bool"), ("int8", "float32"), (">f4", "<f4"),
]


@pytest.mark.parametrize("seed", range(24))
def test_fast_path_agrees_with_the_reference_on_small_blocks(monkeypatch, seed):
    # blocks of 1000 and no size threshold: every corner of the float32 path, many blocks
    monkeypatch.setattr(metrics_mod, "_CHUNK", 1000)
    monkeypatch.setattr(metrics_mod, "_F32_MIN_SIZE", 0)
    rng = np.random.default_rng(seed)
    for _ in range(12):
        n = int(rng.choice([0, 1, 2, 7, 255, 256, 257, 999, 1000, 1001, 2600]))
        kind = KINDS[rng.integers(len(KINDS))]
        dtypes = DTYPES[rng.integers(len(DTYPES))]
        ref, got = _make_case(rng, n, kind, dtypes)
        shape = (n,) if rng.random() < 0.5 or n % 2 else (2, n // 2)
        ref, got = ref.reshape(shape), got.reshape(shape)
        for tol in TOLERANCES:
            want = _reference_metrics(ref, got, tol, chunk=1000)
            _assert_same_metrics(compute_metrics(ref, got, tol), want, f"seed {seed} n {n} {kind} {dtypes} {tol}")


@pytest.mark.parametrize("kind", KINDS)
def test_fast_path_agrees_with_the_reference_on_real_blocks(kind):
    # real block size: sizes around one and two blocks, float32 (and float16) inputs
    rng = np.random.default_rng(KINDS.index(kind))
    chunk = metrics_mod._CHUNK
    for n, dtypes in ((10_000, ("float32", "float32")), (chunk, ("float32", "float32")),
                      (2 * chunk + 4321, ("float32", "float32")), (chunk + 17, ("float16", "float32"))):
        ref, got = _make_case(rng, n, kind, dtypes)
        for tol in TOLERANCES[:4] + TOLERANCES[6:7]:
            want = _reference_metrics(ref, got, tol)
            _assert_same_metrics(compute_metrics(ref, got, tol), want, f"n {n} {kind} {dtypes} {tol}")


def test_borderline_elements_are_decided_as_in_float64(monkeypatch):
    """Elements within a few float32 ulps of |d| = atol*scale + rtol*|ref|: float64 decides them.

    A float32-only comparison would flip some of these; the fast path re-checks every
    element its float32 screen cannot decide, so the count is the float64 one.
    """
    monkeypatch.setattr(metrics_mod, "_F32_MIN_SIZE", 0)
    rng = np.random.default_rng(7)
    ref = np.clip(rng.normal(size=20_000), -3.9, 3.9).astype(np.float32)
    ref[0] = 4.0  # scale
    flips = 0
    for tol in (Tolerance(1e-4, 3e-5), Tolerance(1e-3, 0.0), Tolerance(0.0, 1e-4)):
        allowed = tol.atol * 4.0 + tol.rtol * np.abs(ref.astype(np.float64))
        target = ref.astype(np.float64) + np.where(rng.random(ref.size) < 0.5, allowed, -allowed)
        got = target.astype(np.float32)
        steps = rng.integers(-3, 4, size=ref.size)  # walk -3..3 float32 ulps around the boundary
        for s in range(3):
            got = np.where(steps > s, np.nextafter(got, np.float32(np.inf)), got)
            got = np.where(steps < -s, np.nextafter(got, np.float32(-np.inf)), got)
        got = got.astype(np.float32)
        got[0] = ref[0]
        m = compute_metrics(ref, got, tol)
        want = _reference_metrics(ref, got, tol)
        _assert_same_metrics(m, want, f"{tol}")
        assert 0 < m.mismatched < ref.size - 1  # really on the boundary: some pass, some fail
        # a float32-only evaluation decides some of these elements the other way
        r64, g64 = ref.astype(np.float64), got.astype(np.float64)
        in_f64 = np.abs(g64 - r64) > tol.rtol * np.abs(r64) + tol.atol * 4.0
        in_f32 = np.abs(got - ref) > np.float32(tol.rtol) * np.abs(ref) + np.float32(tol.atol * 4.0)
        flips += int(np.count_nonzero(in_f32 != in_f64))
    assert flips > 0  # (with rtol > 0: rtol * |ref| is rounded in float32)


def test_float32_blocks_do_not_fall_back_to_float64(monkeypatch):
    calls = []
    block_f64 = metrics_mod._block_f64
    monkeypatch.setattr(metrics_mod, "_block_f64", lambda acc, r, *a: calls.append(r.size) or block_f64(acc, r, *a))
    rng = np.random.default_rng(5)
    n = 2 * metrics_mod._CHUNK + 100
    ref = rng.normal(size=n).astype(np.float32)
    for got in (ref + ref * rng.normal(scale=1e-6, size=n).astype(np.float32),  # passing
                ref * np.float32(1.0003) + rng.normal(scale=1e-3, size=n).astype(np.float32),  # failing
                rng.normal(size=n).astype(np.float32)):  # unrelated
        compute_metrics(ref, got, Tolerance(1e-4, 3e-5))
        assert calls == []
    got = ref.copy()
    got[n - 50] = np.nan  # only the block holding the NaN goes to float64
    m = compute_metrics(ref, got, Tolerance(1e-4, 3e-5))
    assert calls == [100] and m.nan_mismatch == 1 and m.max_abs_index == (n - 50,)


def test_cosine_stays_accurate_near_one():
    rng = np.random.default_rng(11)
    n = 300_000
    ref = rng.normal(size=n).astype(np.float32)
    for rel in (1e-7, 1e-5, 1e-3, 2e-2):
        got = (ref + ref * rng.normal(scale=rel, size=n)).astype(np.float32)
        # the truth, from correctly rounded sums (float32 products are exact in float64):
        # 1 - cos = (y - x^2) / (s (s + 1 + x)), s = sqrt(1 + 2x + y), x = r.d/r.r, y = d.d/r.r
        r = ref.astype(np.float64)
        d = got.astype(np.float64) - r
        rr, rd, dd = math.fsum(r * r), math.fsum(r * d), math.fsum(d * d)
        x, y = rd / rr, dd / rr
        s = math.sqrt(1 + 2 * x + y)
        one_minus = (y - x * x) / (s * (s + 1 + x))
        m = compute_metrics(ref, got, Tolerance(1e-4, 3e-5))
        # a few float64 roundings of the final division, ~1e-8 of 1 - cos from the float32 sums
        assert abs((1.0 - m.cosine) - one_minus) <= 1e-15 + 1e-7 * one_minus, (rel, 1.0 - m.cosine, one_minus)


def test_workspace_is_per_thread():
    import threading

    rng = np.random.default_rng(2)
    pairs = []
    for _ in range(4):
        ref = rng.normal(size=300_000).astype(np.float32)
        pairs.append((ref, (ref * np.float32(1.0003) + rng.normal(scale=1e-3, size=ref.size)).astype(np.float32)))
    want = [compute_metrics(r, g, TOL) for r, g in pairs]
    got: dict[int, object] = {}

    def run(k):
        for _ in range(3):
            got[k] = compute_metrics(*pairs[k], TOL)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert [got[k] for k in range(4)] == want


@pytest.mark.parametrize("shape", [(2, 64, 64, 40), (3, 700, 300, 2), (4, 3, 300001)])
def test_transposed_large_inputs_are_read_block_by_block_with_the_same_numbers(shape):
    """A transposed TF value is not copied whole: blocks of whole trailing rows are copied into a
    per-thread buffer, cut where the contiguous path cuts, so every number is identical."""
    rng = np.random.default_rng(7)
    ref = rng.standard_normal(shape).astype(np.float32)
    tf_layout = np.ascontiguousarray(np.moveaxis(ref, 1, -1)) * np.float32(1.0001)
    tf_layout.reshape(-1)[4321] += 3.0
    got = np.moveaxis(tf_layout, -1, 1)  # a view, as relayout returns it
    assert not got.flags.c_contiguous
    tol = Tolerance(1e-4, 3e-5)
    assert compute_metrics(ref, got, tol) == compute_metrics(ref, np.ascontiguousarray(got), tol)
    assert compute_metrics(np.asfortranarray(ref), got, tol) == compute_metrics(ref, np.ascontiguousarray(got), tol)

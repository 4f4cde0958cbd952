"""metrics.py: exact values on hand-made arrays, NaN/Inf rules, minimum tolerances, defaults."""

from __future__ import annotations

import doctest
import math
import tracemalloc

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
from layerparity.result import Tolerance

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
    assert m.mean_abs_error == pytest.approx(d.mean(), rel=1e-12)
    assert m.rel_rms_error == pytest.approx(np.sqrt(np.mean(d**2)) / np.sqrt(np.mean(r**2)), rel=1e-12)
    cos = np.dot(r.ravel(), g.ravel()) / (np.linalg.norm(r) * np.linalg.norm(g))
    assert m.cosine == pytest.approx(cos, abs=1e-15)
    # a non-contiguous (transposed) input gives the same numbers
    m_t = compute_metrics(ref.transpose(0, 2, 3, 1).copy().transpose(0, 3, 1, 2), got, tol)
    assert m_t == m


def test_memory_stays_bounded_on_large_tensors():
    n = 1 << 24  # 16M elements, 64 MB per float32 array
    ref = np.ones(n, np.float32)
    got = ref.copy()
    got[n - 5] = 2.0
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

"""The pass rule of one row: tolerance, own error, and accumulated float drift."""

from __future__ import annotations

import numpy as np

from layerparity.metrics import compute_metrics
from layerparity.result import DRIFT_FACTOR, LayerResult, Report, Tolerance

TOL = Tolerance(rtol=1e-4, atol=3e-5)


def _row(total_rel: float, own_rel: float | None, contaminated_by: str | None = None) -> LayerResult:
    ref = np.linspace(-1, 1, 1000, dtype=np.float32).reshape(1, 10, 10, 10)
    tf = ref + np.float32(total_rel)  # an offset of total_rel x max|ref| everywhere
    own = None if own_rel is None else compute_metrics(ref, ref + np.float32(own_rel), TOL)
    return LayerResult("conv9", "conv9", "conv9", metrics=compute_metrics(ref, tf, TOL), own=own,
                       tolerance=TOL, contaminated_by=contaminated_by)


def test_within_tolerance_passes_without_drift():
    r = _row(1e-5, 1e-6)
    assert r.metrics.passed and r.passed and not r.drift


def test_total_past_tolerance_with_own_error_passing_is_drift_and_passes():
    r = _row(10 * 3e-5, 1e-6)
    assert not r.metrics.passed
    assert r.drift and r.passed
    assert r.to_dict()["drift"] is True and r.to_dict()["passed"] is True


def test_drift_allowance_is_bounded():
    r = _row(2 * DRIFT_FACTOR * 3e-5, 1e-6)
    assert not r.drift and not r.passed


def test_no_drift_allowance_without_a_measured_own_error():
    r = _row(10 * 3e-5, None)
    assert not r.drift and not r.passed


def test_no_drift_allowance_when_own_error_fails():
    r = _row(10 * 3e-5, 10 * 3e-5)
    assert not r.drift and not r.passed


def test_no_drift_allowance_downstream_of_a_real_divergence():
    r = _row(10 * 3e-5, 1e-6, contaminated_by="bn2")
    assert not r.drift and not r.passed
    assert not Report(rows=[r], unmapped_caffe=[], unmapped_tf=[])

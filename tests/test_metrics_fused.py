"""The numba path of metrics.py (layerparity._fused) decides exactly as the float64 reference.

Both oracles are kept: ``_reference_metrics`` (tests/test_metrics.py, the original float64
implementation) and the NumPy path of ``compute_metrics`` (``USE_NUMBA = False``: the
hand-blocked float32 screen). Counts, indices, ``passed``, ``min_atol``/``min_rtol`` and the
maxima must be identical; the sums behind mean/rms/cosine agree to rounding.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import layerparity.metrics as metrics_mod
from layerparity.metrics import compute_metrics
from layerparity.result import Tolerance
from test_metrics import KINDS, TOLERANCES, _assert_same_metrics, _make_case, _reference_metrics

numba = pytest.importorskip("numba")


def _numpy_path(ref, got, tol):
    old = metrics_mod.USE_NUMBA
    metrics_mod.USE_NUMBA = False
    try:
        return compute_metrics(ref, got, tol)
    finally:
        metrics_mod.USE_NUMBA = old


def _fused_used(monkeypatch):
    calls = []
    real = metrics_mod._fused_block
    monkeypatch.setattr(metrics_mod, "_fused_block", lambda *a: calls.append(1) or real(*a))
    return calls


def test_import_layerparity_does_not_import_numba():
    code = ("import sys, layerparity, layerparity.metrics; "
            "from layerparity import compute_metrics; "
            "assert 'numba' not in sys.modules, 'numba imported'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_numba_missing_falls_back_to_numpy():
    code = (
        "import sys; sys.modules['numba'] = None\n"
        "import numpy as np\n"
        "from layerparity.metrics import compute_metrics\n"
        "from layerparity.result import Tolerance\n"
        "from layerparity import _fused\n"
        "r = np.linspace(-1, 1, 20000, dtype=np.float32); g = r.copy(); g[7] += 1\n"
        "m = compute_metrics(r, g, Tolerance(1e-4, 3e-5))\n"
        "assert _fused.kernels() is None and m.mismatched == 1 and m.max_abs_index == (7,)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_the_fused_path_is_taken_for_large_float_tensors(monkeypatch):
    calls = _fused_used(monkeypatch)
    r = np.ones(20_000, np.float32)
    compute_metrics(r, r, Tolerance(1e-4, 3e-5))
    assert calls


_SHAPES = st.sampled_from([(8192,), (8193,), (3, 5000), (2, 64, 9, 13), (1, 3, 77, 41), (20_000,), (4, 3, 2111)])
_DTYPES = st.sampled_from([("float32", "float32")] * 4 + [("float16", "float32"), ("float32", "float64"),
                                                            ("float64", "float64"), (">f4", "<f4"), ("float16", "float16")])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), shape=_SHAPES, dtypes=_DTYPES, kind=st.sampled_from(KINDS),
       tol=st.sampled_from(TOLERANCES), transposed=st.booleans(), small_blocks=st.booleans())
def test_fused_path_decides_as_both_oracles(seed, shape, dtypes, kind, tol, transposed, small_blocks):
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    ref, got = _make_case(rng, n, kind, dtypes)
    ref, got = ref.reshape(shape), got.reshape(shape)
    if transposed and len(shape) > 1:  # a TF-layout value seen through a transposed view
        got = np.ascontiguousarray(np.moveaxis(got, 1, -1))
        got = np.moveaxis(got, -1, 1)
    old_chunk = metrics_mod._CHUNK
    if small_blocks:
        metrics_mod._CHUNK = 4096 + 17 * 64  # several blocks, lanes and tails
    try:
        m = compute_metrics(ref, got, tol)
        want = _reference_metrics(ref, got, tol, chunk=metrics_mod._CHUNK)
        numpy_path = _numpy_path(ref, got, tol)
    finally:
        metrics_mod._CHUNK = old_chunk
    what = f"{shape} {dtypes} {kind} {tol} transposed={transposed}"
    _assert_same_metrics(m, want, what + " vs float64 reference")
    _assert_same_metrics(m, numpy_path, what + " vs NumPy path")


@pytest.mark.parametrize("kind", KINDS)
def test_fused_path_on_real_blocks(kind, monkeypatch):
    calls = _fused_used(monkeypatch)
    rng = np.random.default_rng(100 + KINDS.index(kind))
    n = 2 * metrics_mod._CHUNK + 4321
    ref, got = _make_case(rng, n, kind, ("float32", "float32"))
    for tol in TOLERANCES[:4] + TOLERANCES[6:7]:
        m = compute_metrics(ref, got, tol)
        _assert_same_metrics(m, _reference_metrics(ref, got, tol), f"{kind} {tol}")
        _assert_same_metrics(m, _numpy_path(ref, got, tol), f"{kind} {tol} vs NumPy path")
    assert calls


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), where=st.lists(st.integers(0, 9999), min_size=1, max_size=6),
       vals=st.lists(st.sampled_from([np.nan, np.inf, -np.inf, 0.0, 1e30, -3.5]), min_size=1, max_size=6),
       side=st.sampled_from(["ref", "got", "both"]))
def test_nan_inf_placements(seed, where, vals, side):
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=10_000).astype(np.float32)
    got = (ref + rng.normal(scale=1e-5, size=ref.size)).astype(np.float32)
    for k, v in zip(where, vals * 6, strict=False):
        if side in ("ref", "both"):
            ref[k] = v
        if side in ("got", "both"):
            got[k] = v
    for tol in (Tolerance(1e-4, 3e-5), Tolerance(0.0, 0.0)):
        m = compute_metrics(ref, got, tol)
        _assert_same_metrics(m, _reference_metrics(ref, got, tol), "vs reference")
        _assert_same_metrics(m, _numpy_path(ref, got, tol), "vs NumPy path")


def test_ties_pick_the_first_index_across_lanes():
    ref = np.zeros(50_000, np.float32)
    got = ref.copy()
    for k in (40_001, 130, 77, 9_999):  # equal maxima in different lanes and blocks: the first wins
        got[k] = 2.0
    m = compute_metrics(ref, got, Tolerance(1e-4, 3e-5))
    assert m.max_abs_index == (77,) and m.max_rel_index == (77,) and m.mismatched == 4


def test_environment_switch_keeps_the_numpy_path():
    code = (
        "import os; os.environ['LAYERPARITY_NO_NUMBA'] = '1'\n"
        "import sys, numpy as np\n"
        "from layerparity.metrics import compute_metrics\n"
        "from layerparity.result import Tolerance\n"
        "r = np.linspace(-1, 1, 20000, dtype=np.float32)\n"
        "m = compute_metrics(r, r + np.float32(1e-3), Tolerance(1e-4, 3e-5))\n"
        "assert 'numba' not in sys.modules and m.mismatched > 0\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr

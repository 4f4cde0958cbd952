"""Fused per-block error metrics with numba: each value pair read once from memory (optional).

``metrics.compute_metrics`` calls :func:`kernels` when numba is installed; without numba
(or with ``LAYERPARITY_NO_NUMBA=1``) it keeps its NumPy path. Nothing here is imported
by ``import layerparity``: numba is loaded on the first comparison of a large float
tensor, and the compiled code is kept in numba's on-disk cache (``cache=True``).

One block (``metrics._CHUNK`` pairs, 2 MB as float32: read from memory once, then from
the CPU's caches) is gone over by five short loops, each simple enough for LLVM's loop
vectorizer (one fused loop, or the loops nested in cache-sized tiles, was not vectorized
and ran 3x slower). Every element is computed in float64 exactly as ``metrics._block_f64``
computes it: ``d = g - r``, ``|d|``, ``|r|``, ``|d| / max(|r|, floor)``,
``|d| > |r|*rtol + atol_abs``, ``|d| - |r|*rtol``, ``(|d| - atol_abs) / |r|``, so the
mismatch count, the maxima, their (first) indices and the smallest passing tolerances
are bit-identical to the float64 reference.

The reductions are kept in ``LANES`` lanes (element ``k`` of a tile goes to lane
``k % LANES``; a lane's values are combined in index order, the lanes in lane order,
"larger wins, equal: the smaller index" for maxima). The inner loop over the lanes is
elementwise, so the vectorizer needs no reassociation: no ``fastmath`` (no
reassociation, no FMA contraction), and the order of every floating-point operation is
fixed by the code, not by the CPU's vector width. Only the sums behind
``mean_abs_error``, ``rel_rms_error`` and the cosine are added in another order than
NumPy's (within ~1e-13 relative of the float64 reference).

A block with a NaN or an infinity on either side, or with magnitudes beyond ``BIG``
(where ``d*d`` or a sum could overflow), is reported as not clean: the caller redoes it
with ``metrics._block_f64`` and its NaN/Inf rules.
"""

from __future__ import annotations

import math
import os
import threading
from typing import Any

import numpy as np

LANES = 64
BIG = 1e150

_lock = threading.Lock()
_state: dict[str, Any] = {}
_local = threading.local()


def kernels() -> Any:
    """``(block, dots)`` compiled kernels, or None when numba is missing or switched off."""
    if os.environ.get("LAYERPARITY_NO_NUMBA"):
        return None
    k = _state.get("k")
    if k is not None or "failed" in _state:
        return k
    with _lock:
        if "k" not in _state and "failed" not in _state:
            try:
                _state["k"] = _build()
            except ImportError as e:
                _state["failed"] = e
        return _state.get("k")


def lanes() -> tuple[np.ndarray, np.ndarray]:
    """Per-thread lane buffers (float64 (8, LANES), int64 (4, LANES))."""
    f = getattr(_local, "f", None)
    if f is None:
        f = _local.f = np.empty((8, LANES))
        _local.i = np.empty((4, LANES), np.int64)
    return f, _local.i


def _build() -> tuple[Any, Any]:
    from numba import njit

    opts = dict(nogil=True, cache=True, fastmath=False, error_model="numpy", boundscheck=False)
    V, big, ninf = LANES, BIG, -math.inf

    @njit(**opts)
    def block(r, g, rtol, atol_abs, floor, f, i):  # pragma: no cover - compiled
        """One block: (clean, sum|d|, sum d*d, sum r*r, sum r*d, max|d|, its index, max rel,
        its index, mismatched, max(|d| - rtol|r|), max((|d| - atol_abs)/|r|) over |d| > atol_abs)."""
        n = r.size
        for ln in range(V):
            f[0, ln] = 0.0
            f[1, ln] = 0.0
            f[2, ln] = 0.0
            f[3, ln] = 0.0
            f[4, ln] = -1.0
            f[5, ln] = -1.0
            f[6, ln] = ninf
            f[7, ln] = ninf
            i[0, ln] = 0
            i[1, ln] = 0
            i[2, ln] = 0
            i[3, ln] = 0
        m = n - n % V
        if m:
            for j in range(0, m, V):  # sums
                for ln in range(V):
                    rv = np.float64(r[j + ln])
                    d = np.float64(g[j + ln]) - rv
                    f[0, ln] += abs(d)
                    f[1, ln] += d * d
                    f[2, ln] += rv * rv
                    f[3, ln] += rv * d
            for j in range(0, m, V):  # max |d| and its first index
                for ln in range(V):
                    ad = abs(np.float64(g[j + ln]) - np.float64(r[j + ln]))
                    old = f[4, ln]
                    b = ad > old
                    f[4, ln] = ad if b else old
                    i[0, ln] = j + ln if b else i[0, ln]
            for j in range(0, m, V):  # max relative error and its first index
                for ln in range(V):
                    rv = np.float64(r[j + ln])
                    ad = abs(np.float64(g[j + ln]) - rv)
                    q = ad / max(abs(rv), floor)
                    old = f[5, ln]
                    b = q > old
                    f[5, ln] = q if b else old
                    i[1, ln] = j + ln if b else i[1, ln]
            for j in range(0, m, V):  # mismatches, finite values, largest slack
                for ln in range(V):
                    rv = np.float64(r[j + ln])
                    ad = abs(np.float64(g[j + ln]) - rv)
                    ar = abs(rv)
                    ra = ar * rtol
                    i[2, ln] += ad > ra + atol_abs
                    i[3, ln] += (ar <= big) & (ad <= big)
                    s = ad - ra
                    old = f[6, ln]
                    f[6, ln] = s if s > old else old
            for j in range(0, m, V):  # the rtol needed where |d| > atol_abs
                for ln in range(V):
                    rv = np.float64(r[j + ln])
                    ad = abs(np.float64(g[j + ln]) - rv)
                    e = (ad - atol_abs) / abs(rv) if ad > atol_abs else ninf
                    old = f[7, ln]
                    f[7, ln] = e if e > old else old
        sa = 0.0
        sd = 0.0
        sr = 0.0
        srd = 0.0
        mx_a = -1.0
        ix_a = 0
        mx_r = -1.0
        ix_r = 0
        mx_s = ninf
        mx_t = ninf
        cnt = 0
        fin = 0
        for ln in range(V):
            sa += f[0, ln]
            sd += f[1, ln]
            sr += f[2, ln]
            srd += f[3, ln]
            if f[4, ln] > mx_a or (f[4, ln] == mx_a and i[0, ln] < ix_a):
                mx_a = f[4, ln]
                ix_a = i[0, ln]
            if f[5, ln] > mx_r or (f[5, ln] == mx_r and i[1, ln] < ix_r):
                mx_r = f[5, ln]
                ix_r = i[1, ln]
            if f[6, ln] > mx_s:
                mx_s = f[6, ln]
            if f[7, ln] > mx_t:
                mx_t = f[7, ln]
            cnt += i[2, ln]
            fin += i[3, ln]
        for j in range(m, n):  # the tail, after every lane's indices
            rv = np.float64(r[j])
            d = np.float64(g[j]) - rv
            ad = abs(d)
            ar = abs(rv)
            fin += (ar <= big) & (ad <= big)
            sa += ad
            sd += d * d
            sr += rv * rv
            srd += rv * d
            if ad > mx_a:
                mx_a = ad
                ix_a = j
            q = ad / max(ar, floor)
            if q > mx_r:
                mx_r = q
                ix_r = j
            ra = ar * rtol
            cnt += ad > ra + atol_abs
            if ad - ra > mx_s:
                mx_s = ad - ra
            if ad > atol_abs:
                e = (ad - atol_abs) / ar
                if e > mx_t:
                    mx_t = e
        return fin == n, sa, sd, sr, srd, mx_a, ix_a, mx_r, ix_r, cnt, mx_s, mx_t

    @njit(**opts)
    def dots(r, g, f):  # pragma: no cover - compiled
        """(r.r, r.g, g.g) in float64 lanes (for blocks far from cosine 1)."""
        n = r.size
        for ln in range(V):
            f[0, ln] = 0.0
            f[1, ln] = 0.0
            f[2, ln] = 0.0
        m = n - n % V
        for j in range(0, m, V):
            for ln in range(V):
                rv = np.float64(r[j + ln])
                gv = np.float64(g[j + ln])
                f[0, ln] += rv * rv
                f[1, ln] += rv * gv
                f[2, ln] += gv * gv
        rr = 0.0
        rg = 0.0
        gg = 0.0
        for ln in range(V):
            rr += f[0, ln]
            rg += f[1, ln]
            gg += f[2, ln]
        for j in range(m, n):
            rv = np.float64(r[j])
            gv = np.float64(g[j])
            rr += rv * rv
            rg += rv * gv
            gg += gv * gv
        return rr, rg, gg

    return block, dots

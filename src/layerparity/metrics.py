"""Error metrics of one tensor against its reference, and the tolerance test.

NumPy, plus numba when it is installed (the ``tf``/``dev`` extras): floating-point tensors
of at least 8192 elements are then compared by the fused kernels of ``_fused.py`` (each
value pair read once from memory, every element in float64 as ``_block_f64`` computes
it: the same decisions, bit for bit). ``USE_NUMBA = False`` or ``LAYERPARITY_NO_NUMBA=1``
keeps the NumPy path described below; ``import layerparity`` never imports numba.

Both arrays are already in the reference's (Caffe's) layout; nothing here
reshapes, transposes or sorts. The criterion, elementwise::

    |got - ref| <= atol * scale + rtol * |ref|

where ``scale = max|ref|`` of the whole tensor (1.0 when the reference is all
zeros) when ``Tolerance.relative_atol`` is true (the default), so a layer whose
values are in the thousands doesn't fail on float noise and a layer whose values
are 1e-3 doesn't pass on absolute slack; with ``relative_atol=False`` atol is an
absolute number.

Non-finite values: NaN on both sides at the same place, or the same infinity on
both sides, are equal. NaN or an infinity where the other side has something else
is a mismatch (``nan_mismatch``), and no tolerance passes it.

Relative error of one element: ``|d| / max(|ref|, eps * scale)`` with ``eps`` the
machine epsilon of the comparison dtype (float32 unless either side is float64):
an element smaller than ``eps * scale`` is rounding noise of that layer's largest
value, so it is measured against that noise level instead of dividing by ~0.

Default tolerances, by the dtype of the less precise side (see docs/tolerances.md
for the measurements behind them):

=============  ========  ========
dtype            rtol      atol
=============  ========  ========
float64          1e-7      1e-9
float32          1e-4      3e-5
float16          1e-3      1e-2
integer/bool     0         0
=============  ========  ========

(atol relative to the layer's scale. float32: 5x above the largest noise measured
on correct ports, 97 convolutions deep, and still 2x below the smallest
BatchNorm-epsilon bug.)

Float32 inputs: when both sides are float32 or float16 (the common case) and the
tensor has at least 8192 elements, the elementwise work is float32, in buffers
reused across blocks and calls (5-7 MB per thread): ``d = got - ref`` is rounded
once (exact when ``|d| <= min(|got|, |ref|)``, e.g. whenever they agree to a
factor 2; else within 2^-24 of itself), then ``|d|``, ``|ref|``, the relative
errors and the slack ``|d| - rtol*|ref|``. Those float32 values only *screen*:
rounding ``rtol*|ref|``, ``atol*scale`` and ``d`` to float32 could flip an
element whose ``|d|`` lies within ~1e-7 of its allowed error, or swap two
maxima within ~1e-7 of each other, so every element within a proven rounding
bound of a decision (the tolerance boundary, the largest absolute and relative
error, the largest slack, the smallest passing rtol) is recomputed in float64
exactly as the float64 path computes it. ``mismatched``, ``passed``, the
maxima, their indices, ``min_atol`` and ``min_rtol`` are therefore those of an
all-float64 computation (up to float64's own rounding of ``got - ref``, inexact
only for magnitudes over 2^29 apart). Sums are float32 partial sums of 256
elements added in float64: ``mean_abs_error`` and ``rel_rms_error`` are within
~1e-7 of the float64 values (3e-7 if one element dominates). The cosine of a
block with ``d.d <= 1e-3 ref.ref`` comes from ``ref.ref``, ``ref.d`` and
``d.d``, whose rounding moves it by ~1e-7 * d.d/ref.ref only, so it stays
accurate near 1 (more so than the float64 ``ref.got`` form); other blocks use
float64 products and sums, and when the cosine ends below 0.999 ``ref.ref`` of
every block is redone in float64: the cosine agrees with float64 to ~1e-10.
A block holding a NaN/Inf, whose float32 sums would overflow or lose precision
to underflow, or where the screen leaves too many elements to re-check, is done
in float64; so is everything else (float64, integer or bool inputs, tensors
under 8192 elements, a largest ``|ref|`` beyond 2^56 or below 2^-60). No BLAS:
its threads spin under load.

>>> import numpy as np
>>> ref = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
>>> got = ref.copy(); got[1, 0] = 3.5
>>> m = compute_metrics(ref, got, Tolerance(rtol=1e-4, atol=1e-5))
>>> m.passed, m.max_abs_error, m.max_abs_index, m.mismatched
(False, 0.5, (1, 0), 1)
"""

from __future__ import annotations

import fnmatch
import math
import threading
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from .errors import InputDataError, InputError
from .result import Metrics, Tolerance

#: One table of defaults, keyed by the dtype of the less precise side.
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "float64": Tolerance(rtol=1e-7, atol=1e-9),
    "float32": Tolerance(rtol=1e-4, atol=3e-5),
    "float16": Tolerance(rtol=1e-3, atol=1e-2),
    "exact": Tolerance(rtol=0.0, atol=0.0),
}

_CHUNK = 1 << 18  # elements per block: float64 temporaries ~2 MB, float32 buffers 1 MB each


def default_tolerance(*dtypes: Any) -> Tolerance:
    """The default tolerance for comparing arrays of these dtypes (the least precise wins).

    >>> default_tolerance(np.float32, np.float16)
    Tolerance(rtol=0.001, atol=0.01, relative_atol=True)
    """
    worst = "float64"
    order = ["float64", "float32", "float16"]
    any_float = False
    for dt in dtypes:
        dt = np.dtype(dt)
        if dt.kind == "f" or dt.name == "bfloat16":
            any_float = True
            name = "float16" if dt.itemsize <= 2 else "float32" if dt.itemsize == 4 else "float64"
            if order.index(name) > order.index(worst):
                worst = name
        elif dt.kind == "V":  # bfloat16 from ml_dtypes shows up as a void-ish 2-byte type
            any_float = True
            worst = "float16"
    if not any_float:
        return _copy(DEFAULT_TOLERANCES["exact"])
    return _copy(DEFAULT_TOLERANCES[worst])


def _copy(t: Tolerance) -> Tolerance:
    return Tolerance(rtol=t.rtol, atol=t.atol, relative_atol=t.relative_atol)


def check_tolerance_pair(
    rtol: Any, atol: Any, where: str = "", names: tuple[str, str] = ("rtol", "atol")
) -> Tolerance | None:
    """Validate an ``rtol``/``atol`` pair: both or neither, finite and >= 0 (the one
    validator: the API, ``tolerances=`` entries, the CLI's ``--rtol/--atol`` and the pytest
    plugin's ``--parity-rtol/--parity-atol`` all go through it; ``names`` are what the
    caller calls them, so the message names the option that fixes it).

    Given together or not at all (as in ``torch.testing.assert_close``): a lone
    ``atol=0`` would still pass everything through the default rtol.

    >>> check_tolerance_pair(None, 1e-5)
    Traceback (most recent call last):
    ...
    layerparity.errors.InputError: rtol and atol must be given together or not at all: atol needs rtol too (got rtol=None, atol=1e-05)
    >>> check_tolerance_pair(1e-3, None, names=("--rtol", "--atol"))
    Traceback (most recent call last):
    ...
    layerparity.errors.InputError: --rtol and --atol must be given together or not at all: --rtol needs --atol too (got --rtol=0.001, --atol=None)
    """
    if rtol is None and atol is None:
        return None
    prefix = f"{where}: " if where else ""
    nr, na = names
    if rtol is None or atol is None:
        given, missing = (nr, na) if rtol is not None else (na, nr)
        raise InputError(
            f"{prefix}{nr} and {na} must be given together or not at all: {given} needs {missing} too "
            f"(got {nr}={rtol!r}, {na}={atol!r})"
        )
    return Tolerance(rtol=_nonneg(rtol, nr, prefix), atol=_nonneg(atol, na, prefix))


def _nonneg(x: Any, what: str, prefix: str) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise InputError(f"{prefix}{what} must be a number, got {x!r}") from None
    if not math.isfinite(v) or v < 0:
        raise InputError(f"{prefix}{what} must be a finite number >= 0, got {x!r}")
    return v


def as_tolerance(spec: Any, where: str = "") -> Tolerance:
    """A :class:`Tolerance` from ``Tolerance``, ``(rtol, atol)`` or ``{"rtol":, "atol":[, "relative_atol":]}``."""
    if isinstance(spec, Tolerance):
        return Tolerance(
            rtol=_nonneg(spec.rtol, "rtol", f"{where}: " if where else ""),
            atol=_nonneg(spec.atol, "atol", f"{where}: " if where else ""),
            relative_atol=bool(spec.relative_atol),
        )
    if isinstance(spec, Mapping):
        extra = set(spec) - {"rtol", "atol", "relative_atol"}
        if extra:
            raise InputError(f"{where}: unknown tolerance field(s) {sorted(extra)}; use rtol, atol, relative_atol")
        t = check_tolerance_pair(spec.get("rtol"), spec.get("atol"), where)
        if t is None:
            raise InputError(f"{where}: a tolerance needs rtol and atol")
        t.relative_atol = bool(spec.get("relative_atol", True))
        return t
    if isinstance(spec, (tuple, list)) and len(spec) == 2:
        t = check_tolerance_pair(spec[0], spec[1], where)
        assert t is not None
        if spec[0] is None or spec[1] is None:  # pragma: no cover - check_tolerance_pair raised
            raise InputError(f"{where}: a tolerance needs rtol and atol")
        return t
    raise InputError(f"{where}: a tolerance is (rtol, atol), a dict with rtol and atol, or a Tolerance; got {spec!r}")


class ToleranceTable:
    """Resolve the tolerance of one compared layer.

    Order: a per-layer override (exact name first, then ``fnmatch`` patterns in the
    order given; matched against every Caffe name of the row's chain, then the TF
    name), else the global ``rtol``/``atol``, else the dtype default.
    """

    def __init__(self, rtol: Any = None, atol: Any = None, tolerances: Mapping[str, Any] | None = None) -> None:
        self.global_tol = check_tolerance_pair(rtol, atol)
        self.overrides: list[tuple[str, Tolerance]] = []
        if tolerances is not None:
            if not isinstance(tolerances, Mapping):
                raise InputError(f"tolerances must be a dict layer-name-or-pattern -> (rtol, atol), got {type(tolerances).__name__}")
            for pat, spec in tolerances.items():
                if not isinstance(pat, str) or not pat:
                    raise InputError(f"tolerances: a key must be a layer name or fnmatch pattern, got {pat!r}")
                self.overrides.append((pat, as_tolerance(spec, f"tolerances[{pat!r}]")))

    def for_layer(self, names: list[str], *dtypes: Any) -> Tolerance:
        names = [n for n in names if n]
        for pat, tol in self.overrides:  # exact names first
            if pat in names:
                return _copy(tol)
        for pat, tol in self.overrides:
            if any(fnmatch.fnmatchcase(n, pat) for n in names):
                return _copy(tol)
        if self.global_tol is not None:
            return _copy(self.global_tol)
        return default_tolerance(*dtypes)

    def unused_patterns(self, seen: list[str]) -> list[str]:
        return [p for p, _ in self.overrides if not any(p == n or fnmatch.fnmatchcase(n, p) for n in seen)]


def compute_metrics(ref: Any, got: Any, tol: Tolerance) -> Metrics:
    """Every error metric of ``got`` against ``ref`` (same shape, ref = Caffe) under ``tol``.

    One pass over blocks of ``_CHUNK`` elements after a cheap ``max|ref|``
    reduction, so memory stays bounded for any tensor size. Float32/float16 pairs
    take the float32 path described in the module docstring; anything else (a
    float64 side, integers, bool) and any block holding a NaN/Inf is done in
    float64. See the module docstring for the criterion and the NaN/Inf rules.
    """
    ref = np.asarray(ref)
    got = np.asarray(got)
    if ref.shape != got.shape:
        raise InputDataError(f"cannot compare arrays of shapes {ref.shape} (reference) and {got.shape}")
    for a, side in ((ref, "reference"), (got, "compared")):
        if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
            raise InputDataError(f"cannot compare a {side} array of dtype {a.dtype}")
        if np.issubdtype(a.dtype, np.complexfloating):  # float(...) below would drop the imaginary part
            raise InputDataError(
                f"cannot compare a complex {side} array ({a.dtype}): only real numbers are compared "
                "(compare .real and .imag as two arrays)"
            )
    shape = ref.shape
    total = int(ref.size)
    ct = np.result_type(ref.dtype, got.dtype, np.float32)
    eps = float(np.finfo(ct).eps) if np.issubdtype(ct, np.floating) else float(np.finfo(np.float64).eps)
    rtol, atol = float(tol.rtol), float(tol.atol)
    if total == 0:
        return Metrics(0.0, None, 0.0, None, 0.0, 0.0, 1.0, 0, 0, 0, 1.0, 0.0, 0.0, True)

    # Flat views when contiguous; a transposed TF value is read block by block instead of
    # copied whole (a full-size temporary per row, per thread, was ~140 MiB of peak memory
    # at ResNet-50 batch 8).
    r_flat = _Flat.of(ref, "r")
    g_flat = _Flat.of(got, "g")

    # scale = max |ref| over finite elements: two no-allocation reductions when all finite.
    with np.errstate(invalid="ignore"):
        hi, lo = ref.max(), ref.min()
    if np.isfinite(hi) and np.isfinite(lo):
        scale = float(max(abs(float(hi)), abs(float(lo))))
    else:
        fin = ref[np.isfinite(ref)]
        scale = float(np.abs(fin).max()) if fin.size else 0.0
    if scale == 0.0:
        scale = 1.0
    atol_abs = atol * scale if tol.relative_atol else atol
    floor = eps * scale

    acc = _Acc()
    fused = _fused_kernels(ref.dtype, got.dtype, total)
    f32 = None if fused is not None else _F32Path.make(ref.dtype, got.dtype, total, scale, rtol, atol_abs, floor)
    for start, stop in _blocks(shape):
        r, g = r_flat[start:stop], g_flat[start:stop]
        if fused is not None and _fused_block(fused, acc, r, g, start, rtol, atol_abs, floor):
            continue
        if f32 is None or not f32.block(acc, r, g, start):
            _block_f64(acc, r, g, start, rtol, atol_abs, floor)
    if f32 is not None:
        f32.settle_cosine_sums(acc, r_flat.whole())

    max_abs, max_rel = acc.max_abs, acc.max_rel
    max_abs_i, max_rel_i = acc.max_abs_i, acc.max_rel_i
    need_atol, need_rtol = acc.need_atol, acc.need_rtol
    if acc.nan_mismatch:
        max_abs, max_rel = math.inf, math.inf
        max_abs_i = max_rel_i = acc.first_bad
        need_atol = need_rtol = math.inf
    if max_abs_i is None:  # every element was an equal NaN/Inf pair
        max_abs, max_rel = 0.0, 0.0

    n_fin = acc.n_fin
    sum_rr, sum_gg, sum_rg = acc.sum_rr, acc.sum_gg, acc.sum_rg
    if n_fin:
        mean_abs = acc.sum_abs / n_fin
        rms_ref = math.sqrt(sum_rr / n_fin)
        rms_d = math.sqrt(acc.sum_dd / n_fin)
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
        mismatched=acc.mismatched,
        total=total,
        nan_mismatch=acc.nan_mismatch,
        scale=scale,
        min_atol=min_atol,
        min_rtol=max(need_rtol, 0.0),
        passed=acc.mismatched == 0,
    )


def _index(flat: int | None, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    if flat is None:
        return None
    return tuple(int(i) for i in np.unravel_index(flat, shape)) if shape else ()


class _Acc:
    """What the blocks accumulate; both block functions update it the same way."""

    __slots__ = (
        "max_abs", "max_abs_i", "max_rel", "max_rel_i", "sum_abs", "sum_dd", "sum_rr", "sum_gg", "sum_rg",
        "n_fin", "mismatched", "nan_mismatch", "first_bad", "need_atol", "need_rtol", "near",
    )

    def __init__(self) -> None:
        self.max_abs, self.max_abs_i = -1.0, None
        self.max_rel, self.max_rel_i = -1.0, None
        self.sum_abs = self.sum_dd = self.sum_rr = self.sum_gg = self.sum_rg = 0.0
        self.n_fin = 0
        self.mismatched = 0
        self.nan_mismatch = 0
        self.first_bad: int | None = None
        self.need_atol = 0.0  # max(|d| - rtol|ref|)
        self.need_rtol = 0.0  # max((|d| - atol_abs) / |ref|) over elements beyond atol
        # float32 blocks whose r.r is a float32 partial sum: (start, stop, that r.r)
        self.near: list[tuple[int, int, float]] = []


def _block_f64(acc: _Acc, r_blk: np.ndarray, g_blk: np.ndarray, start: int, rtol: float, atol_abs: float, floor: float) -> None:
    """One block in float64, with the NaN/Inf rules: the reference implementation."""
    r = r_blk.astype(np.float64)
    g = g_blk.astype(np.float64)
    fr = np.isfinite(r)
    fg = np.isfinite(g)
    if not (fr.all() and fg.all()):
        both = fr & fg
        same_special = (np.isnan(r) & np.isnan(g)) | (np.isinf(r) & (r == g))
        bad = ~both & ~same_special
        nb = int(np.count_nonzero(bad))
        if nb:
            acc.nan_mismatch += nb
            acc.mismatched += nb
            if acc.first_bad is None:
                acc.first_bad = start + int(np.argmax(bad))
        idx = np.flatnonzero(both)
        r = r[both]
        g = g[both]
    else:
        idx = None
    if r.size == 0:
        return
    d = g - r
    ad = np.abs(d)
    ar = np.abs(r)
    acc.n_fin += r.size

    i = int(np.argmax(ad))
    if ad[i] > acc.max_abs:
        acc.max_abs = float(ad[i])
        acc.max_abs_i = start + (int(idx[i]) if idx is not None else i)
    rel = ad / np.maximum(ar, floor)
    i = int(np.argmax(rel))
    if rel[i] > acc.max_rel:
        acc.max_rel = float(rel[i])
        acc.max_rel_i = start + (int(idx[i]) if idx is not None else i)

    acc.sum_abs += float(ad.sum())
    acc.sum_dd += float(np.einsum("i,i->", d, d))
    acc.sum_rr += float(np.einsum("i,i->", r, r))
    acc.sum_gg += float(np.einsum("i,i->", g, g))
    acc.sum_rg += float(np.einsum("i,i->", r, g))

    # rel is free now: reuse it for the allowed error
    allowed = np.multiply(ar, rtol, out=rel)
    allowed += atol_abs
    acc.mismatched += int(np.count_nonzero(ad > allowed))

    slack = ad - rtol * ar
    acc.need_atol = max(acc.need_atol, float(slack.max()))
    over = ad > atol_abs
    if over.any():
        aro = ar[over]
        excess = ad[over] - atol_abs
        if np.any(aro == 0):
            acc.need_rtol = math.inf
        else:
            acc.need_rtol = max(acc.need_rtol, float((excess / aro).max()))


# -- the fused path (numba, optional) ---------------------------------------------------

#: Use the numba kernels (layerparity._fused) when numba is importable; False: NumPy only.
USE_NUMBA = True
_NATIVE_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _fused_kernels(rdt: np.dtype, gdt: np.dtype, total: int) -> Any:
    """The numba kernels for these inputs, or None (numba missing, switched off, not
    floating-point, or too small to gain)."""
    if not USE_NUMBA or total < _F32_MIN_SIZE or rdt.kind != "f" or gdt.kind != "f":
        return None
    from ._fused import kernels

    return kernels()


def _native(a: np.ndarray, slot: str) -> np.ndarray:
    """``a`` as a contiguous native float32/float64 array (float16 and byte-swapped
    values converted exactly, into a per-thread buffer)."""
    if a.dtype in _NATIVE_FLOATS and a.flags.c_contiguous:
        return a
    dt = np.dtype(np.float64) if a.dtype.itemsize > 4 else np.dtype(np.float32)
    buf = _block_buffer("fz" + slot, a.size, dt)
    np.copyto(buf, a.reshape(-1), casting="unsafe")
    return buf


def _fused_block(kernels: Any, acc: _Acc, r: np.ndarray, g: np.ndarray, start: int, rtol: float,
                 atol_abs: float, floor: float) -> bool:
    """One block through the numba kernel; False, with ``acc`` untouched, when the block
    holds a NaN/Inf or huge values (then _block_f64 decides it)."""
    from ._fused import lanes

    block, dots = kernels
    f, i = lanes()
    r = _native(r, "r")
    g = _native(g, "g")
    clean, sa, sd, sr, srd, mx_a, ix_a, mx_r, ix_r, cnt, mx_s, mx_t = block(r, g, rtol, atol_abs, floor, f, i)
    if not clean:
        return False
    if sd <= _NEAR * sr:  # near cosine 1: g.r and g.g from r.r, r.d and d.d (accurate there)
        rr, rg, gg = sr, sr + srd, sr + 2.0 * srd + sd
    else:
        rr, rg, gg = dots(r, g, f)
    acc.n_fin += r.size
    acc.sum_abs += sa
    acc.sum_dd += sd
    acc.sum_rr += rr
    acc.sum_gg += gg
    acc.sum_rg += rg
    if mx_a > acc.max_abs:
        acc.max_abs, acc.max_abs_i = float(mx_a), start + int(ix_a)
    if mx_r > acc.max_rel:
        acc.max_rel, acc.max_rel_i = float(mx_r), start + int(ix_r)
    acc.mismatched += int(cnt)
    acc.need_atol = max(acc.need_atol, float(mx_s))
    if mx_t > acc.need_rtol:
        acc.need_rtol = float(mx_t)
    return True


# -- the float32 path -------------------------------------------------------------------

_U = 2.0**-24  # unit roundoff of float32
_ROW = 256  # elements per float32 partial sum; the partial sums are added in float64
_FLOAT32 = np.dtype(np.float32)
_NEG_INF32 = np.float32(-np.inf)
_POS_INF32 = np.float32(np.inf)
# Elements per block a float64 re-check may cover before the whole block is redone in
# float64 instead (a re-check is a gather: cheaper only while it is a small part).
_RECHECK_FRACTION = 8
# Below this many times the block size, a float32 sum of squares may have lost
# precision to underflow: each subnormal product is off by at most 2^-150.
_TINY_SUM = 2.0**-120
# d.d <= _NEAR * r.r: the cosine's sums from float32 r.d and d.d (accurate near cosine 1);
# else float64 r.r, r.g, g.g.
_NEAR = 1e-3
# Below cosine 1 - _COS_RECHECK, r.r of those blocks is redone in float64.
_COS_RECHECK = 1e-3
# Smaller tensors go to float64: there fixed per-call costs dominate and it is faster.
_F32_MIN_SIZE = 8192


_MAX32 = float(np.finfo(np.float32).max)


def _f32_down(x: float) -> np.float32:
    """The largest float32 <= x (x a float64 or inf)."""
    if x > _MAX32:
        return np.float32(_MAX32) if x != math.inf else _POS_INF32
    f = np.float32(x) if x >= -_MAX32 else _NEG_INF32
    if float(f) > x:
        f = np.nextafter(f, _NEG_INF32)
    return f


def _f32_up(x: float) -> np.float32:
    """The smallest float32 >= x (x a float64 or -inf)."""
    return -_f32_down(-x)


class _Workspace:
    """Float32 block buffers, reused across blocks and calls (one set per thread).

    Fresh multi-MB temporaries cost more in page faults than the arithmetic done
    in them; 5-7 MB stay allocated per thread that has compared a large tensor.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.d = np.empty(size, np.float32)
        self.ad = np.empty(size, np.float32)
        self.ar = np.empty(size, np.float32)
        self.t = np.empty(size, np.float32)
        self.mask = np.empty(size, np.bool_)
        self.part = np.empty(size // _ROW + 1, np.float32)
        self.floor = np.empty(size, np.float32)
        self.floor_val: np.float32 | None = None
        self.floor_n = 0
        self.rb: np.ndarray | None = None
        self.gb: np.ndarray | None = None

    def floor_of(self, value: np.float32, n: int) -> np.ndarray:
        if self.floor_val != value or self.floor_n < n:
            self.floor[:n] = value
            self.floor_val, self.floor_n = value, n
        return self.floor[:n]

    def as_f32(self, a: np.ndarray, which: str) -> np.ndarray:
        """``a`` as native float32: itself, or converted (exactly: float16 or byte-swapped float32)."""
        if a.dtype == _FLOAT32:
            return a
        buf = getattr(self, which)
        if buf is None:
            buf = np.empty(self.size, np.float32)
            setattr(self, which, buf)
        out = buf[: a.size]
        np.copyto(out, a, casting="unsafe")
        return out


_local = threading.local()


class _Flat:
    """``a`` as a flat sequence of elements, sliced block by block.

    Contiguous: slices of ``ravel`` (views). Otherwise (a transposed TF value) each
    block is copied into a per-thread buffer from views of whole trailing "rows"
    (the last axes, ``rows`` elements), so ``_blocks`` cuts at multiples of ``rows``.
    """

    def __init__(self, a: np.ndarray, flat: np.ndarray | None, rows: int, lead: int, slot: str) -> None:
        self.a, self.flat, self.rows, self.lead, self.slot = a, flat, rows, lead, slot

    @classmethod
    def of(cls, a: np.ndarray, slot: str) -> _Flat:
        rows, k = _trailing_rows(a.shape)
        if a.flags.c_contiguous or a.size <= _CHUNK or not rows:
            return cls(a, np.ravel(a), 0, 0, slot)
        return cls(a, None, rows, k, slot)

    def __getitem__(self, sl: slice) -> np.ndarray:
        if self.flat is not None:
            return self.flat[sl]
        a, lead = self.a, self.a.shape[: self.lead]
        first, last = sl.start // self.rows, sl.stop // self.rows
        buf = _block_buffer(self.slot, sl.stop - sl.start, a.dtype)
        out = buf.reshape((last - first,) + a.shape[self.lead:])
        inner = lead[-1]
        r, j = first, 0
        while r < last:  # one copy per run along the last leading axis
            o, i0 = divmod(r, inner)
            i1 = min(inner, i0 + last - r)
            outer = np.unravel_index(o, lead[:-1]) if len(lead) > 1 else ()
            np.copyto(out[j:j + i1 - i0], a[tuple(int(x) for x in outer)][i0:i1])
            j += i1 - i0
            r += i1 - i0
        return buf

    def whole(self) -> np.ndarray:
        return self.flat if self.flat is not None else np.ravel(self.a)


def _trailing_rows(shape: tuple[int, ...]) -> tuple[int, int]:
    """``(rows, k)``: ``rows`` elements in the largest run of trailing axes ``shape[k:]``
    that fits in one block, leaving at least one leading axis; ``(0, ndim)`` when even
    the last axis is larger than a block (or there is no leading axis)."""
    rows, k = 1, len(shape)
    while k > 1 and rows * shape[k - 1] <= _CHUNK:
        k -= 1
        rows *= shape[k]
    return (rows, k) if k < len(shape) else (0, len(shape))


def _blocks(shape: tuple[int, ...]) -> Iterator[tuple[int, int]]:
    """Block bounds: multiples of the largest run of trailing axes that fits in ``_CHUNK``
    (what :class:`_Flat` copies in one piece), from the shape alone, so a contiguous and
    a transposed array are summed in the same blocks and give the same numbers."""
    total = int(np.prod(shape, dtype=np.int64))
    rows, _ = _trailing_rows(shape)
    step = _CHUNK // rows * rows if rows > 1 else _CHUNK
    for start in range(0, total, step):
        yield start, min(start + step, total)


def _block_buffer(slot: str, n: int, dtype: np.dtype) -> np.ndarray:
    key = "blk_" + slot
    buf = getattr(_local, key, None)
    if buf is None or buf.size < n or buf.dtype != dtype:
        buf = np.empty(max(n, _CHUNK), dtype)
        setattr(_local, key, buf)
    return buf[:n]


def _workspace(n: int) -> _Workspace:
    ws = getattr(_local, "ws", None)
    if ws is None or ws.size < n:
        ws = _local.ws = _Workspace(n)
    return ws


def _rowsum(a: np.ndarray, part: np.ndarray) -> float:
    """sum(a) for float32 ``a``: float32 sums of _ROW elements, added in float64."""
    n = a.size
    m = n - n % _ROW
    s = 0.0
    if m:
        p = part[: m // _ROW]
        np.einsum("ij->i", a[:m].reshape(-1, _ROW), out=p)
        s = float(np.add.reduce(p, dtype=np.float64))
    if m < n:
        s += float(np.einsum("i->", a[m:]))
    return s


def _rowdot(a: np.ndarray, b: np.ndarray, part: np.ndarray) -> float:
    """sum(a * b) for float32 ``a``, ``b``: float32 partial dot products of _ROW elements, added in float64.

    No BLAS (its threads spin under load). Relative error ~1e-9 on random data;
    overflow gives inf, which the caller checks.
    """
    n = a.size
    m = n - n % _ROW
    s = 0.0
    if m:
        p = part[: m // _ROW]
        np.einsum("ij,ij->i", a[:m].reshape(-1, _ROW), b[:m].reshape(-1, _ROW), out=p)
        s = float(np.add.reduce(p, dtype=np.float64))
    if m < n:
        s += float(np.einsum("i,i->", a[m:], b[m:]))
    return s


def _exact(r: np.ndarray, g: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|g - r| and |r| in float64 at ``idx``: the very numbers _block_f64 computes there."""
    r64 = r[idx].astype(np.float64)
    g64 = g[idx].astype(np.float64)
    return np.abs(g64 - r64), np.abs(r64)


class _F32Path:
    """Blocks of float32 (or float16) pairs: float32 elementwise work, float64 decisions.

    Elementwise work is float32 in reused buffers; sums are float32 partial sums of
    _ROW elements added in float64. Every count and every reported maximum is
    float64: the float32 values only *screen*, within a proven rounding bound,
    which few elements could change a count or a maximum, and those few are
    recomputed as _block_f64 computes them (module docstring, "Float32 inputs").
    A block the screen cannot narrow down is done by _block_f64 instead.
    """

    def __init__(self, ws: _Workspace, scale: float, rtol: float, atol_abs: float, floor: float) -> None:
        self.ws = ws
        self.rtol, self.atol_abs, self.floor = rtol, atol_abs, floor
        self.rtol32 = np.float32(rtol)
        self.floor32 = np.float32(floor)
        self.rtol_scale = rtol * scale
        self.rtol_floor = rtol * floor
        # float32 slack |d| - rtol max(|r|, eps*scale) is within 5.1u (atol_abs +
        # rtol*scale) of the exact |d| - rtol|r| wherever that decides anything; the
        # band is 6x wider, plus room for subnormal rounding (2^-148 at most)
        band = 32 * _U * (atol_abs + self.rtol_scale) + 2.0**-140
        self.mis_lo = _f32_down(atol_abs - band)
        self.mis_hi = _f32_up(atol_abs + band)
        # (|d| - q_sub) / |r| in float32 >= (1 - 4u) (|d| - atol_abs) / |r| exactly
        self.q_sub = _f32_down(atol_abs * (1.0 - 8 * _U))
        self.atol32_down = _f32_down(atol_abs)

    @classmethod
    def make(cls, rdt: np.dtype, gdt: np.dtype, total: int, scale: float, rtol: float, atol_abs: float, floor: float) -> _F32Path | None:
        """The float32 path for these inputs, or None: not float16/32, too small to gain, or out of its bounds' range."""
        if total < _F32_MIN_SIZE or not all(dt.kind == "f" and dt.itemsize <= 4 for dt in (rdt, gdt)):
            return None
        # squares stay finite in a float32 sum of _ROW of them, floor = eps*scale is a
        # normal float32, and rtol*|r| and atol_abs are normal numbers or 0
        if not (2.0**-60 <= scale <= 2.0**56):
            return None
        if rtol != 0.0 and not (2.0**-100 <= rtol and rtol * scale <= 2.0**100):
            return None
        if atol_abs != 0.0 and not (2.0**-100 <= atol_abs <= 2.0**100):
            return None
        return cls(_workspace(min(total, _CHUNK)), scale, rtol, atol_abs, floor)

    @staticmethod
    def settle_cosine_sums(acc: _Acc, r_flat: np.ndarray) -> None:
        """Redo r.r of the near blocks in float64 if the cosine is not near 1 (see block)."""
        if not acc.near:
            return
        rr, gg = acc.sum_rr, acc.sum_gg
        if rr > 0 and gg > 0 and acc.sum_rg / (math.sqrt(rr) * math.sqrt(gg)) >= 1.0 - _COS_RECHECK:
            return
        for start, stop, rr32 in acc.near:
            shift = float(np.einsum("i,i->", r_flat[start:stop], r_flat[start:stop], dtype=np.float64)) - rr32
            acc.sum_rr += shift
            acc.sum_rg += shift
            acc.sum_gg += shift
        acc.near = []

    def block(self, acc: _Acc, r: np.ndarray, g: np.ndarray, start: int) -> bool:
        """Add one block to ``acc``; False, with ``acc`` untouched, to have it done in float64."""
        ws = self.ws
        n = r.size
        r = ws.as_f32(r, "rb")
        g = ws.as_f32(g, "gb")
        mask = ws.mask[:n]
        t = ws.t[:n]
        with np.errstate(invalid="ignore", over="ignore"):
            d = np.subtract(g, r, out=ws.d[:n])
        ad = np.abs(d, out=ws.ad[:n])  # |g - r| rounded to float32: monotone in the exact value
        i = int(ad.argmax())
        m_ad = ad[i]
        if not math.isfinite(float(m_ad)):  # NaN/Inf on either side (or |g - r| overflowed)
            return False

        # -- sums, all checked before anything is committed
        part = ws.part
        differ = bool(m_ad > 0)  # else d == 0 throughout and its sums are exactly 0
        sum_abs = _rowsum(ad, part) if differ else 0.0
        dd = _rowdot(d, d, part) if differ else 0.0
        rr = _rowdot(r, r, part)
        tiny = n * _TINY_SUM
        if not (math.isfinite(sum_abs) and math.isfinite(dd) and math.isfinite(rr)):
            return False
        if (dd < tiny and differ) or (rr < tiny and r.any()):
            return False  # subnormal squares may have lost precision
        near = dd <= _NEAR * rr
        if near:
            # g.r = r.r + r.d and g.g = r.r + 2 r.d + d.d. Relative errors e (< 1e-6)
            # of r.d and d.d move the cosine by ~e * d.d/r.r (< 1e-9) only; the error
            # of r.r shifts all three sums alike, which moves the cosine by e times
            # ~(1 - cosine): settle_cosine_sums redoes r.r in float64 where that matters
            rd = _rowdot(r, d, part) if differ else 0.0
            if not math.isfinite(rd):
                return False
            rg, gg = rr + rd, rr + 2.0 * rd + dd
        else:
            # far from cosine 1 the cosine's error is the sums' own: float64 products
            rr = float(np.einsum("i,i->", r, r, dtype=np.float64))
            rg = float(np.einsum("i,i->", r, g, dtype=np.float64))
            gg = float(np.einsum("i,i->", g, g, dtype=np.float64))

        if not differ:  # g == r throughout: zero errors, nothing beyond any tolerance
            v_abs = v_rel = 0.0
            i = j = 0
            mismatched = 0
            need_atol, need_rtol = acc.need_atol, acc.need_rtol
        else:
            got = self._screen(acc, r, g, ad, mask, t, i, m_ad)
            if got is None:
                return False
            v_abs, i, v_rel, j, mismatched, need_atol, need_rtol = got

        acc.n_fin += n
        acc.sum_abs += sum_abs
        acc.sum_dd += dd
        acc.sum_rr += rr
        acc.sum_gg += gg
        acc.sum_rg += rg
        if near:
            acc.near.append((start, start + n, rr))
        if v_abs > acc.max_abs:
            acc.max_abs, acc.max_abs_i = v_abs, start + i
        if v_rel > acc.max_rel:
            acc.max_rel, acc.max_rel_i = v_rel, start + j
        acc.mismatched += mismatched
        acc.need_atol = need_atol
        acc.need_rtol = need_rtol
        return True

    def _screen(self, acc: _Acc, r: np.ndarray, g: np.ndarray, ad: np.ndarray, mask: np.ndarray, t: np.ndarray,
                i: int, m_ad: np.float32) -> tuple[float, int, float, int, int, float, float] | None:
        """Maxima, count and smallest tolerances of a block with some d != 0, or None to redo it in float64."""
        n = ad.size
        limit = max(n // _RECHECK_FRACTION, 16)  # larger re-checks: the whole block in float64 is cheaper
        rtol, atol_abs, floor = self.rtol, self.atol_abs, self.floor

        # -- max |d|: the exact maximum rounds to the float32 maximum m_ad; if m_ad is
        # not unique, float64 picks the first exact maximum among its ties. Only
        # where this block may hold the largest so far (-1: it does not).
        v_abs = -1.0
        if float(m_ad) * (1.0 + 2 * _U) >= acc.max_abs:
            ad[i] = -1.0
            second = ad[int(ad.argmax())]
            ad[i] = m_ad
            if second == m_ad:
                idx = np.flatnonzero(np.equal(ad, m_ad, out=mask))
                if idx.size > limit:
                    return None
                e_ad, _ = _exact(r, g, idx)
                i = int(idx[int(np.argmax(e_ad))])
            v_abs = abs(float(g[i]) - float(r[i]))

        # -- max relative error: float32 within 2u of exact, so re-check everything within 8u
        den = np.abs(r, out=self.ws.ar[:n])
        np.maximum(den, self.ws.floor_of(self.floor32, n), out=den)  # max(|r|, eps*scale)
        rel = np.divide(ad, den, out=t)
        j = int(rel.argmax())
        m_rel = rel[j]
        v_rel = -1.0
        if float(m_rel) * (1.0 + 8 * _U) >= acc.max_rel:
            near = _f32_down(float(m_rel) * (1.0 - 8 * _U))
            rel[j] = -1.0
            second = rel[int(rel.argmax())]
            rel[j] = m_rel
            if second >= near:
                idx = np.flatnonzero(np.greater_equal(rel, near, out=mask))
                if idx.size > limit:
                    return None
                e_ad, e_ar = _exact(r, g, idx)
                j = int(idx[int(np.argmax(e_ad / np.maximum(e_ar, floor)))])
            v_rel = abs(float(g[j]) - float(r[j])) / max(abs(float(r[j])), floor)

        # -- slack = |d| - rtol|r|, in float32 as |d| - rtol max(|r|, eps*scale): how
        # many exceed atol_abs, and the largest
        if self.rtol32 != 0:
            slack = np.subtract(ad, np.multiply(den, self.rtol32, out=t), out=t)
        else:
            slack = ad
        ms = float(slack.max())
        mismatched = 0
        if ms >= self.mis_lo:
            # float32 decides outside [mis_lo, mis_hi], float64 inside
            mismatched = int(np.count_nonzero(np.greater(slack, self.mis_hi, out=mask)))
            if int(np.count_nonzero(np.greater_equal(slack, self.mis_lo, out=mask))) > mismatched:
                np.logical_and(mask, np.less_equal(slack, self.mis_hi), out=mask)
                if self.mis_lo <= 0:
                    np.logical_and(mask, ad, out=mask)  # d == 0 exceeds no tolerance
                idx = np.flatnonzero(mask)
                if idx.size > limit:
                    return None
                if idx.size:
                    e_ad, e_ar = _exact(r, g, idx)
                    allowed = np.multiply(e_ar, rtol)
                    allowed += atol_abs
                    mismatched += int(np.count_nonzero(e_ad > allowed))
        need_atol = acc.need_atol
        # which elements may have an exact slack above need_atol (>= 0)? Those within
        # 2*err of the float32 maximum (err > 2x any of their rounding errors: 5.1u
        # (|ms| + rtol*scale)), and among those only ones whose float32 slack is at
        # least need_atol - rtol*eps*scale (the max(|r|, eps*scale) above) - 5u max|d|
        err = 16 * _U * (abs(ms) + self.rtol_scale) + 2.0**-140
        lo = max(ms - 2 * err, need_atol - (1 + 8 * _U) * self.rtol_floor - 8 * _U * float(m_ad) - 2.0**-140)
        if ms >= lo:
            lo32 = _f32_down(lo)
            np.greater_equal(slack, lo32, out=mask)
            if np.count_nonzero(mask) > 64:
                np.logical_and(mask, ad, out=mask)  # d == 0: slack -rtol|r| <= 0 <= need_atol
            idx = np.flatnonzero(mask)
            idx = idx[ad[idx] != 0]
            if idx.size > limit:
                return None
            if idx.size:
                e_ad, e_ar = _exact(r, g, idx)
                need_atol = max(need_atol, float((e_ad - rtol * e_ar).max()))

        # -- smallest rtol, where some |d| > atol_abs (then the float32 |d| >= atol32_down)
        need_rtol = acc.need_rtol
        if m_ad >= self.atol32_down and need_rtol < math.inf:
            ar = np.abs(r, out=den)
            with np.errstate(divide="ignore", invalid="ignore"):
                qu = np.subtract(ad, self.q_sub, out=t)
                np.divide(qu, ar, out=qu)  # >= (1 - 4u) (|d| - atol_abs)/|r| wherever that is > 0
            k = int(qu.argmax())
            if math.isnan(float(qu[k])):  # 0/0: there |d| < atol_abs and r == 0
                np.copyto(qu, _NEG_INF32, where=np.isnan(qu))
                k = int(qu.argmax())
            # a lower bound of the result: the exact value at the float32 maximum
            e_ad_k, e_ar_k = abs(float(g[k]) - float(r[k])), abs(float(r[k]))
            if e_ad_k > atol_abs:
                need_rtol = max(need_rtol, math.inf if e_ar_k == 0 else (e_ad_k - atol_abs) / e_ar_k)
            if need_rtol < math.inf:
                idx = np.flatnonzero(np.greater_equal(qu, _f32_down(need_rtol * (1.0 - 16 * _U)), out=mask))
                if idx.size > limit:
                    return None
                if idx.size:
                    e_ad, e_ar = _exact(r, g, idx)
                    over = e_ad > atol_abs
                    if over.any():
                        aro = e_ar[over]
                        if np.any(aro == 0):
                            need_rtol = math.inf
                        else:
                            need_rtol = max(need_rtol, float(((e_ad[over] - atol_abs) / aro).max()))
        return v_abs, i, v_rel, j, mismatched, need_atol, need_rtol

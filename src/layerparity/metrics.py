"""Error metrics of one tensor against its reference, and the tolerance test (pure NumPy).

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
from collections.abc import Mapping
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

_CHUNK = 1 << 18  # elements per block: float64 temporaries stay ~2 MB each


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
        if dt.kind == "f" or dt.kind == "c" or dt.name == "bfloat16":
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


def check_tolerance_pair(rtol: Any, atol: Any, where: str = "") -> Tolerance | None:
    """Validate a global ``rtol``/``atol`` pair: both or neither, finite and >= 0.

    Given together or not at all (as in ``torch.testing.assert_close``): a lone
    ``atol=0`` would still pass everything through the default rtol.

    >>> check_tolerance_pair(None, 1e-5)
    Traceback (most recent call last):
    ...
    layerparity.errors.InputError: rtol and atol must be given together or not at all (got rtol=None, atol=1e-05)
    """
    if rtol is None and atol is None:
        return None
    prefix = f"{where}: " if where else ""
    if rtol is None or atol is None:
        raise InputError(f"{prefix}rtol and atol must be given together or not at all (got rtol={rtol!r}, atol={atol!r})")
    return Tolerance(rtol=_nonneg(rtol, "rtol", prefix), atol=_nonneg(atol, "atol", prefix))


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

    for start in range(0, total, _CHUNK):
        stop = min(start + _CHUNK, total)
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

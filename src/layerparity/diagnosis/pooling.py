"""Pooling: ceil vs floor rounding, the AVE divisor at the padded border, 'SAME' padding."""

from __future__ import annotations

import numpy as np

from ..result import Diagnosis
from . import reference as ref
from ._core import (
    CONF_EXACT,
    CONF_FINGERPRINT,
    CONF_FORMULA,
    CONF_RECOMPUTED,
    CONFIRM_RTOL,
    Case,
    fnum,
    hw,
    rnd,
)
from .conv import padding_check

ROUNDING_FIX = (
    "Caffe rounds the pooled size up (ceil): pad the bottom/right so the last window exists, e.g. "
    "`ZeroPadding2D(((0, 1), (0, 1)))` before a MaxPooling2D on non-negative inputs (after ReLU), or "
    "`tf.pad(x, [[0, 0], [0, 1], [0, 1], [0, 0]], constant_values=-np.inf)` for MAX in general; for AVE "
    "divide the overhanging windows by their clipped size (use layerparity's reference or "
    "`padding='same'` when its size and padding match). With `round_mode: FLOOR` in Caffe no padding is needed."
)
DIVISOR_FIX = (
    "Caffe's AVE pooling divides border windows by the full k*k (padding counted); TF's "
    "`AveragePooling2D(padding='same')` divides by the valid count. Pad explicitly with zeros and pool "
    "'VALID': `ZeroPadding2D((p, p))` then `AveragePooling2D(k, s, padding='valid')`."
)


def pool_params(case: Case) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], str, bool, bool]:
    p = case.cparams
    mode = str(p.get("pool", "MAX")).upper()
    mode = {"0": "MAX", "1": "AVE", "AVG": "AVE"}.get(mode, mode)
    rm = p.get("round_mode")
    ceil = (str(rm).upper() != "FLOOR") if rm is not None else bool(p.get("ceil_mode", True))
    return (hw(p, "kernel_size", 1), hw(p, "stride", 1), hw(p, "pad", 0), mode,
            ceil, bool(p.get("global_pooling", False)))


def pool_shape_rule(case: Case, t_shape: tuple[int, ...]) -> list[Diagnosis]:
    """Output shapes differ: which size rule explains TF's?"""
    k, s, p, mode, ceil, glob = pool_params(case)
    in_shape = case.input_shape()
    if glob or in_shape is None or len(in_shape) != 4 or len(t_shape) != 4:
        return []
    h, w = in_shape[2], in_shape[3]
    c_out = (ref.caffe_pool_out(h, k[0], s[0], p[0], ceil), ref.caffe_pool_out(w, k[1], s[1], p[1], ceil))
    floor = (ref.caffe_pool_out(h, k[0], s[0], p[0], False), ref.caffe_pool_out(w, k[1], s[1], p[1], False))
    valid = (ref.tf_valid_out(h, k[0], s[0]), ref.tf_valid_out(w, k[1], s[1]))
    same = (ref.tf_same_out(h, s[0]), ref.tf_same_out(w, s[1]))
    got = tuple(t_shape[2:])
    ev = dict(input_hw=[h, w], kernel=list(k), stride=list(s), pad=list(p), caffe_out=list(c_out),
              caffe_floor_out=list(floor), tf_valid_out=list(valid), tf_same_out=list(same), tf_out=list(got))
    if ceil and got in (floor, valid) and got != c_out:
        conf = CONF_FORMULA
        # confirmed when TF's output is Caffe's without the last row/col (windows start at o*s - p)
        yy = case.y[:, :, : got[0], : got[1]]
        tt = case.tf_relayout()
        if tt is not None and yy.shape == tt.shape and float(np.max(np.abs(yy - tt), initial=0.0)) <= 1e-4 * case.scale:
            conf = CONF_RECOMPUTED
            ev["tf_equals_caffe_without_last_row_col"] = True
        return [case.diag(
            "pool_rounding",
            f"Caffe pools {h}x{w} with kernel {k[0]} stride {s[0]} pad {p[0]} to {c_out[0]}x{c_out[1]} "
            f"(ceil((H + 2p - k) / s) + 1); TF rounds down to {got[0]}x{got[1]}: the extra bottom/right "
            "row/column is missing.",
            ROUNDING_FIX, conf, **ev)]
    if got == same and got != c_out:
        return [case.diag(
            "pool_rounding",
            f"TF 'SAME' pooling gives ceil(H/s) = {got[0]}x{got[1]}; Caffe gives {c_out[0]}x{c_out[1]} "
            f"({'ceil' if ceil else 'floor'} rounding with pad {p[0]}).",
            ROUNDING_FIX, CONF_FORMULA - 0.05, **ev)]
    return []


def pool_rules(case: Case) -> list[Diagnosis]:
    out: list[Diagnosis] = []
    k, s, p, mode, ceil, glob = pool_params(case)
    x, t = case.x0, case.t
    if glob or t is None:
        return out
    pads = padding_check(case, pool=True)
    if x is None or x.ndim != 4:
        return _fingerprints(case, mode, p)
    oh, ow = t.shape[2:]
    sym = (p[0], p[0], p[1], p[1])
    base = ref.caffe_pool(x, k, s, p, mode, ceil)
    case.set_reference(base)
    if mode == "AVE" and max(p) > 0:
        if case.attempt(out, "avg_pool_padding_divisor",
                "Border-only error: Caffe's AVE pooling divides windows that overlap the padding by the full "
                f"{k[0]}x{k[1]} (padding counted), TF by the valid count only. Recomputing with TF's divisor "
                "reproduces the TF output.",
                DIVISOR_FIX, lambda: ref.pool2d(x, k, s, sym, "AVE", (oh, ow), "exclude_pad"),
                **_border_ratios(case)):
            return out
    if pads is not None and pads[1] != sym:
        case.attempt(out, "padding_asymmetry",
             f"TF 'SAME' pads {pads[1]} (top, bottom, left, right) where Caffe pads {sym} symmetrically at stride "
             f"{s[0]}: the pooling windows are shifted. Recomputing with TF's padding reproduces the TF output.",
             f"Pad explicitly like Caffe and pool 'VALID' (`ZeroPadding2D(({p[0]}, {p[1]}))` for AVE; for MAX pad "
             "with -inf via `tf.pad(..., constant_values=-np.inf)` or with 0 after a ReLU).",
             lambda: ref.pool2d(x, k, s, pads[1], mode, (oh, ow), "exclude_pad"),
             caffe_pads=list(sym), tf_same_pads=list(pads[1]))
    # ceil emulated by zero padding bottom/right and a 'VALID' pool: only the last row/col differ
    eh = max(0, (oh - 1) * s[0] + k[0] - (x.shape[2] + 2 * p[0]))
    ew = max(0, (ow - 1) * s[1] + k[1] - (x.shape[3] + 2 * p[1]))
    if eh or ew:
        xp = np.pad(x, ((0, 0), (0, 0), (p[0], p[0] + eh), (p[1], p[1] + ew)))
        case.attempt(out, "pool_rounding",
             "Only the last (bottom/right) row/column differs: Caffe's ceil rounding makes a window that hangs "
             "over the input; the port zero-pads it and divides by the full window, Caffe clips it. "
             "Recomputing that reproduces the TF output.",
             ROUNDING_FIX, lambda: ref.pool2d(xp, k, s, (0, 0, 0, 0), mode, (oh, ow), "full"),
             overhang_rows=eh, overhang_cols=ew)
        # ceil emulated by padding, but at the top/left (seen in converter output: the extra
        # pads of an ONNX pool put at the begin, not the end): every window is shifted
        case.attempt(out, "pool_rounding",
             f"Caffe's ceil rounding adds {eh} row(s)/{ew} column(s) at the bottom/right; the port pads them at the "
             "top/left instead, so every pooling window is shifted. Recomputing with the extra padding at the "
             "top/left reproduces the TF output.",
             "Put the ceil-rounding padding at the end (bottom/right), as Caffe does: ONNX pads "
             f"[{p[0]}, {p[1]}, {p[0] + eh}, {p[1] + ew}] (begin..., end...), Keras "
             f"`ZeroPadding2D((({p[0]}, {p[0] + eh}), ({p[1]}, {p[1] + ew})))` (MAX: after a ReLU, or pad with -inf).",
             lambda: ref.pool2d(x, k, s, (p[0] + eh, p[0], p[1] + ew, p[1]), mode, (oh, ow),
                                "exclude_pad" if mode == "AVE" else "caffe"),
             overhang_rows=eh, overhang_cols=ew, extra_padding_at="top/left")
    if not out:
        out += _fingerprints(case, mode, p)
    return out


def _border_ratios(case: Case) -> dict:
    y, t = case.y, case.t
    assert t is not None
    if y.shape[2] < 3 or y.shape[3] < 3:
        return {}
    with np.errstate(divide="ignore", invalid="ignore"):
        r_corner = np.median((y[:, :, 0, 0] / t[:, :, 0, 0]).ravel())
        r_edge = np.median((y[:, :, 0, 1:-1] / t[:, :, 0, 1:-1]).ravel())
    d = np.abs(y - t)
    return {"ratio_caffe_over_tf_corner": rnd(r_corner, 4), "ratio_caffe_over_tf_edge": rnd(r_edge, 4),
            "interior_max_abs_error": rnd(float(d[:, :, 1:-1, 1:-1].max(initial=0.0)))}


def _fingerprints(case: Case, mode: str, p: tuple[int, int]) -> list[Diagnosis]:
    y, t = case.y, case.t
    if t is None or y.ndim != 4 or min(y.shape[2:]) < 3:
        return []
    d = np.abs(y - t) > 1e-4 * case.scale
    if not d.any():
        return []
    out = []
    interior_ok = not d[:, :, 1:-1, 1:-1].any()
    if mode == "AVE" and max(p) > 0 and interior_ok:
        ev = _border_ratios(case)
        c, e = ev.get("ratio_caffe_over_tf_corner"), ev.get("ratio_caffe_over_tf_edge")
        conf = CONF_EXACT - 0.1 if c is not None and abs(c - 4 / 9) < 1e-3 and abs(e - 6 / 9) < 1e-3 else CONF_FINGERPRINT + 0.1
        out.append(case.diag("avg_pool_padding_divisor",
                             "Border-only error in AVE pooling with padding: Caffe counts the padding in the divisor, "
                             "TF does not (Caffe/TF ratio 4/9 at corners and 6/9 on edges for 3x3 pad 1).",
                             DIVISOR_FIX, conf, **ev))
    elif not d[:, :, :-1, :-1].any():
        out.append(case.diag("pool_rounding",
                             "Only the last row and/or column differ: the ceil-rounded overhanging window is "
                             "computed differently (Caffe clips it).", ROUNDING_FIX, CONF_FINGERPRINT + 0.1,
                             rows_wrong=int(d.any(axis=(0, 1, 3)).sum()), cols_wrong=int(d.any(axis=(0, 1, 2)).sum())))
    return out


def spp_rules(case: Case) -> list[Diagnosis]:
    """SPP: recompute the pyramid with adaptive pooling's bins instead of Caffe's per-level
    kernel ceil(H/b), stride = kernel, pad (kernel*b - H + 1) // 2."""
    out: list[Diagnosis] = []
    x, t = case.x0, case.t
    if t is None or x is None or x.ndim != 4:
        return out
    p = case.cparams
    height = int(fnum(p.get("pyramid_height"), 0) or 0)
    mode = str(p.get("pool", "MAX")).upper()
    mode = {"0": "MAX", "1": "AVE", "AVG": "AVE"}.get(mode, mode)
    if height < 2 or mode not in ("MAX", "AVE"):
        return out  # one level is a global pooling: no bins to get wrong
    case.set_reference(ref.spp(x, height, mode))
    if case.reference is None:
        return out
    h, w = x.shape[2:]
    levels = []
    for lv in range(height):
        (kh, ph), (kw, pw) = ref.spp_level_geometry(h, 2**lv), ref.spp_level_geometry(w, 2**lv)
        levels.append({"bins": 2**lv, "kernel": [kh, kw], "stride": [kh, kw], "pad": [ph, pw]})
    geom = ", ".join(f"b={v['bins']} kernel {v['kernel']} pad {v['pad']}" for v in levels)
    case.attempt(out, "spp_pyramid",
                 f"TF pools each pyramid level with adaptive pooling's bins [floor(i*H/b), ceil((i+1)*H/b)); "
                 f"Caffe's SPP pools level b with kernel ceil(H/b), stride = kernel and pad (kernel*b - H + 1) // 2 "
                 f"(input {h}x{w}: {geom}). "
                 "Recomputing the pyramid with adaptive bins reproduces the TF output.",
                 "Pool each level like Caffe: kernel k = ceil(H/b) (and W), stride k, pad (k*b - H + 1) // 2 "
                 "before (the rest after), e.g. `tf.pad(x, ..., constant_values=-inf)` + "
                 "`tf.nn.max_pool2d(x, k, k, 'VALID')` per level, each level flattened C,H,W, then concatenated.",
                 lambda: ref.spp(x, height, mode, bins="adaptive"), pyramid_height=height, pool=mode,
                 caffe_levels=levels)
    return out


def spp_shape_rule(case: Case, t_shape: tuple[int, ...]) -> list[Diagnosis]:
    """SPP output lengths differ: TF's length is C * sum(4**l) for another pyramid_height; recomputing
    that pyramid (Caffe's windows, or adaptive bins) from the Caffe input confirms it."""
    x = case.x0
    p = case.cparams
    height = int(fnum(p.get("pyramid_height"), 0) or 0)
    mode = {"0": "MAX", "1": "AVE", "AVG": "AVE"}.get(str(p.get("pool", "MAX")).upper(), str(p.get("pool", "MAX")).upper())
    if x is None or x.ndim != 4 or len(t_shape) != 2 or t_shape[0] != x.shape[0] or height < 1 or mode not in ("MAX", "AVE"):
        return []
    c = x.shape[1]
    tf_height = next((h2 for h2 in range(1, 9) if h2 != height and c * sum(4**lv for lv in range(h2)) == t_shape[1]), None)
    if tf_height is None:
        return []
    t = case.tf_relayout()
    ref_ok = case.resid(ref.spp(x, height, mode), target=case.y) <= 1e-4
    summary = (f"TF's SPP output has {t_shape[1]} values per item = C * (sum of 4**l for l < {tf_height}): a pyramid "
               f"of height {tf_height}; Caffe's pyramid_height is {height} ({case.y.shape[1]} values).")
    fix = (f"Pool {height} levels (2**l bins per side for l < {height}), each with Caffe's kernel ceil(H/b), stride "
           "kernel and pad (kernel*b - H + 1) // 2, flattened C,H,W and concatenated.")
    ev = {"caffe_pyramid_height": height, "tf_pyramid_height": tf_height, "caffe_shape": list(case.y.shape),
          "tf_shape": list(t_shape)}
    if ref_ok and t is not None and t.shape == tuple(t_shape):
        for bins in ("caffe", "adaptive"):
            cand = ref.spp(x, tf_height, mode, bins=bins)
            if cand.shape == t.shape and case.resid(cand, target=t) <= CONFIRM_RTOL:
                how = "Caffe's windows" if bins == "caffe" else "adaptive pooling's bins"
                return [case.diag("spp_pyramid", summary + f" Recomputing a height-{tf_height} pyramid with {how} "
                                  "reproduces the TF output.", fix, CONF_RECOMPUTED, confirmed_by="recomputation",
                                  tf_bins=bins, residual=rnd(case.resid(cand, target=t)), **ev)]
    return [case.diag("spp_pyramid", summary, fix, CONF_FORMULA, confirmed_by="shapes", **ev)]

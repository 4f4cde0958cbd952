"""Activations, Softmax, Concat, Eltwise, Crop and bilinear Interp."""

from __future__ import annotations

import itertools

import numpy as np

from ..layout import nchw_to_nhwc
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

_NHWC_OF_NCHW = {0: 0, 1: 3, 2: 1, 3: 2}


def relu_rules(case: Case) -> list[Diagnosis]:
    out: list[Diagnosis] = []
    x, t = case.x0, case.t
    cs = fnum(case.cparams.get("negative_slope"), 0.0) or 0.0
    if t is None:
        return out
    if x is None:
        if cs == 0 and np.any(t < -1e-6 * case.scale):
            out.append(case.diag("leaky_slope", "The TF activation lets negatives through where Caffe's ReLU "
                                 "(negative_slope 0) gives 0.", _leaky_fix(cs), CONF_FINGERPRINT + 0.1, caffe_slope=cs))
        return out
    if cs == 0 and _relu_capped(case, out, x, t):
        return out
    neg = x < 0
    if not neg.any():
        return out
    ts = float(np.median(t[neg] / x[neg]))
    if abs(ts - cs) < 1e-6:
        return out
    named = {0.3: "Keras LeakyReLU's default 0.3", 0.2: "tf.nn.leaky_relu's default 0.2",
             0.01: "0.01 (a common Keras choice)"}.get(round(ts, 6), f"{ts:.6g}")
    case.attempt(out, "leaky_slope",
         f"The TF activation's negative slope is {named}; Caffe's ReLU has negative_slope {cs:g}. Recomputing "
         "with the TF slope reproduces the TF output.", _leaky_fix(cs),
         lambda: np.where(x > 0, x, ts * x), caffe_slope=cs, tf_slope=rnd(ts))
    return out


def _relu_capped(case: Case, out: list[Diagnosis], x: np.ndarray, t: np.ndarray) -> bool:
    """TF caps the ReLU (ReLU6, ``ReLU(max_value=c)``) where Caffe's plain ReLU has no upper
    bound: TF's largest value is below Caffe's and the capped ReLU recomputes TF's output."""
    relu = np.maximum(x, 0)
    top, cap = float(relu.max()), float(t.max())
    if not np.isfinite(cap) or cap <= 0 or cap >= top - CONFIRM_RTOL * max(top, 1e-30):
        return False
    above = int(np.count_nonzero(relu > cap))
    named = "6 (a ReLU6: `ReLU(max_value=6)`, `tf.nn.relu6`)" if abs(cap - 6.0) < 1e-6 else f"{cap:.6g}"
    return case.attempt(
        out, "relu_capped",
        f"The TF activation caps its output at {named}; Caffe's ReLU has no upper bound, so the {above} value(s) "
        f"above {cap:.6g} (up to {top:.6g}) differ and inputs that drive the layer above the cap diverge. "
        "Recomputing Caffe's ReLU capped there reproduces the TF output.",
        "Use a plain `ReLU()` (no `max_value`; not `ReLU6` / `tf.nn.relu6` / `activation='relu6'`): Caffe's ReLU "
        "is unbounded. A capped ReLU in the Caffe net would be its own layer type (ReLU6 / Clip).",
        lambda: np.minimum(relu, np.float32(cap)), tf_cap=rnd(cap), values_above_cap=above, caffe_max=rnd(top))


def _leaky_fix(cs: float) -> str:
    if cs == 0:
        return "Caffe's ReLU here is a plain ReLU: use `ReLU()` / `tf.nn.relu` (Keras LeakyReLU defaults to 0.3)."
    return f"Use `LeakyReLU(negative_slope={cs:g})` (Keras defaults to 0.3, tf.nn.leaky_relu to 0.2)."


def prelu_rules(case: Case) -> list[Diagnosis]:
    out: list[Diagnosis] = []
    x, t = case.x0, case.t
    if t is None or x is None or x.ndim != 4:
        return out
    slopes = case.cw[0].reshape(-1) if case.cw else None
    neg = x < -1e-3 * (np.max(np.abs(x)) or 1)  # slopes measured where x is not rounding noise
    if not neg.any():
        return out
    eff = np.full(x.shape, np.nan)
    eff[neg] = t[neg] / x[neg]
    with np.errstate(all="ignore"):
        per_c = np.nanmedian(np.moveaxis(eff, 1, 0).reshape(x.shape[1], -1), axis=1)
    per_c = np.where(np.isfinite(per_c), per_c, 0.0)
    fix = ("Caffe's PReLU has one slope per channel (or one in all if channel_shared): use "
           "`PReLU(shared_axes=[1, 2])` with alpha = slopes.reshape(1, 1, C) (channel_shared: shared_axes=[1, 2, 3]).")
    per_channel = np.where(x > 0, x, per_c.reshape(1, -1, 1, 1) * x)
    if case.explains(per_channel):
        a = float(np.median(per_c))
        if slopes is not None and slopes.size > 1 and np.ptp(slopes) > 1e-6 and np.ptp(per_c) <= 1e-5 * max(abs(a), 1e-6):
            case.attempt(out, "prelu_shared_axes",
                 f"The TF PReLU applies one slope {a:.6g} to every channel; Caffe's has {slopes.size} per-channel "
                 f"slopes [{slopes.min():.4g} .. {slopes.max():.4g}]. Recomputing with the single slope reproduces "
                 "the TF output.", fix, lambda: np.where(x > 0, x, a * x), tf_slope=rnd(a),
                 caffe_slopes=[rnd(v) for v in slopes[:32]])
        elif slopes is not None:
            case.attempt(out, "prelu_shared_axes",
                 "The TF PReLU's per-channel slopes are not Caffe's (a wrongly shared or reordered alpha): "
                 "recomputing with the slopes TF applies reproduces its output.",
                 fix, lambda: per_channel, tf_slopes=[rnd(v) for v in per_c[:32]],
                 caffe_slopes=[rnd(v) for v in slopes[:32]])
        return out
    with np.errstate(all="ignore"):
        spread = float(np.nanmax(np.abs(eff - per_c.reshape(1, -1, 1, 1))))
    if np.isfinite(spread) and spread > 1e-3 * max(1.0, float(np.max(np.abs(per_c)))):
        out.append(case.diag("prelu_shared_axes",
                             "The TF PReLU's negative slope varies over H and W within a channel: alpha is per "
                             "position (shared_axes not set), Caffe's is per channel.", fix, CONF_EXACT - 0.05,
                             max_slope_spread_within_channel=rnd(spread)))
    return out


def softmax_rules(case: Case) -> list[Diagnosis]:
    out: list[Diagnosis] = []
    t, x, y = case.t, case.x0, case.y
    if t is None:
        return out
    ca = int(fnum(case.cparams.get("axis"), 1))
    ca = ca % y.ndim
    fix = ("Caffe's Softmax axis 1 (channels) is the last axis in NHWC: `Softmax(axis=-1)` / `tf.nn.softmax(x, "
           "axis=-1)`; for other Caffe axes map NCHW axis a to NHWC (1->3, 2->1, 3->2).")
    # a time-major blob (Caffe's recurrent tops and what keeps their T, N axes: "TNC") has no
    # batch axis first: a TF port (batch-major) normalizing over its axis 1 normalizes over T
    time_major = (case.cp.layout or "").startswith("T") and y.ndim == 3
    first = 0 if time_major else 1
    axes = [a for a in range(first, y.ndim) if a != ca] + ([tuple(range(1, y.ndim))] if y.ndim > 2 else [])
    if time_major:
        fix = ("Caffe's T x N x C blob is N x T x C in a batch-major TF port: Caffe axis 2 is TF axis -1, "
               "axis 0 (T) is TF axis 1: `Softmax(axis=-1)` for Caffe's axis 2.")
    for a in axes:
        if x is not None:
            where = (f"axis {a} of Caffe's {case.cp.layout} blob, Caffe over axis {ca}" if time_major else
                     f"NCHW axis {a} (NHWC axis {_nhwc(a, y.ndim)}), Caffe over axis {ca} "
                     f"(NHWC axis {_nhwc(ca, y.ndim)})")
            if case.attempt(out, "softmax_axis",
                    f"TF normalizes over {where}: recomputing softmax over that axis reproduces the TF output.",
                    fix, lambda a=a: ref.softmax(x, a), caffe_axis=ca, tf_axis_nchw=a, tf_axis_nhwc=_nhwc(a, y.ndim)):
                return out
        else:
            s = t.sum(axis=a)
            if np.all(np.abs(s - 1) < 1e-4) and not np.all(np.abs(t.sum(axis=ca) - 1) < 1e-4):
                out.append(case.diag("softmax_axis", f"The TF output sums to 1 over NCHW axis {a}, not over Caffe's "
                                     f"axis {ca}.", fix, CONF_EXACT - 0.05, caffe_axis=ca, tf_axis_nchw=a,
                                     tf_axis_nhwc=_nhwc(a, y.ndim)))
                return out
    return out


def _nhwc(a, ndim: int):
    if ndim != 4:
        return a
    if isinstance(a, tuple):
        return tuple(sorted(_NHWC_OF_NCHW[i] for i in a))
    return _NHWC_OF_NCHW[a]


def concat_shape_rule(case: Case, t_shape: tuple[int, ...]) -> list[Diagnosis]:
    """Concat output shapes differ: along which axis did TF concatenate?"""
    ca = int(fnum(case.cparams.get("axis"), 1)) % max(case.y.ndim, 1)
    fix = ("Caffe concatenates NCHW axis 1 (channels), which is axis -1 (3) in NHWC: `Concatenate(axis=-1)`; "
           "Caffe axis 2 is NHWC axis 1, axis 3 is NHWC axis 2.")
    xs = case.x
    if xs and all(v.ndim == 4 for v in xs) and case.tp.layout == "NHWC":
        tx = [nchw_to_nhwc(v) for v in xs]
        for a in range(1, 4):
            try:
                cand = np.concatenate(tx, axis=a)
            except ValueError:
                continue
            if cand.shape == case.t_raw.shape:
                ok = float(np.max(np.abs(cand - case.t_raw), initial=0.0)) <= CONFIRM_RTOL * case.scale
                return [case.diag(
                    "concat_axis",
                    f"TF concatenated along NHWC axis {a} ({'NHWC'[a]}); Caffe's Concat axis {ca} is NHWC axis "
                    f"{_nhwc(ca, 4)} ({'NCHW'[ca]}).", fix, CONF_RECOMPUTED if ok else CONF_FORMULA,
                    caffe_axis=ca, expected_tf_axis=_nhwc(ca, 4), tf_axis=a, confirmed_by="recomputation" if ok else "shapes",
                    caffe_shape=list(case.y.shape), tf_shape=list(case.t_raw.shape))]
    return [case.diag("concat_axis", f"The Concat output shapes differ (Caffe {tuple(case.y.shape)} NCHW vs TF "
                      f"{tuple(t_shape)}): the TF concat axis is probably not Caffe's axis {ca}.", fix,
                      CONF_FINGERPRINT, caffe_axis=ca)]


def eltwise_rules(case: Case) -> list[Diagnosis]:
    out: list[Diagnosis] = []
    xs, t = case.x, case.t
    if t is None or len(xs) < 2 or any(v.shape != t.shape for v in xs):
        return out
    op = str(case.cparams.get("operation", "SUM")).upper()
    op = {"0": "PROD", "1": "SUM", "2": "MAX"}.get(op, op)
    coeff = [float(c) for c in (case.cparams.get("coeff") or [])] or [1.0] * len(xs)
    fix_c = (f"Caffe's Eltwise SUM has coefficients {coeff}: compute `{' + '.join(f'{c:g} * x{i}' for i, c in enumerate(coeff))}` "
             "(a plain `Add()` drops them; [1, -1] is `Subtract()`).")
    if op == "SUM":
        A = np.stack([v.ravel() for v in xs], 1)
        fit, *_ = np.linalg.lstsq(A, t.ravel(), rcond=None)
        if np.max(np.abs(fit - np.array(coeff))) > 1e-4:
            case.attempt(out, "eltwise_coeff",
                 f"TF sums the inputs with coefficients {[rnd(v, 4) for v in fit]}, Caffe with {coeff}: recomputing "
                 "with the fitted coefficients reproduces the TF output.", fix_c,
                 lambda: sum(c * v for c, v in zip(fit, xs, strict=True)), caffe_coeff=coeff, tf_coeff=[rnd(v, 6) for v in fit])
    for name, fn in (("PROD", lambda: np.prod(np.stack(xs), 0)), ("SUM", lambda: np.sum(np.stack(xs), 0)),
                     ("MAX", lambda: np.max(np.stack(xs), 0))):
        if name != op and not out:
            case.attempt(out, "eltwise_operation", f"TF computes Eltwise {name}, Caffe {op}.",
                 f"Use the Keras merge layer for {op} ({'Multiply' if op == 'PROD' else 'Maximum' if op == 'MAX' else 'Add'}).",
                 fn, caffe_operation=op, tf_operation=name)
    return out


def crop_rules(case: Case) -> list[Diagnosis]:
    out: list[Diagnosis] = []
    xs, t = case.x, case.t
    if t is None or not xs or xs[0].ndim != 4:
        return out
    x = xs[0]
    h, w = t.shape[2:]
    offs = case.cparams.get("offset") or [0]
    offs = [int(v) for v in (offs if isinstance(offs, (list, tuple)) else [offs])]
    axis = int(fnum(case.cparams.get("axis"), 2))
    full = [0] * 4
    for i in range(axis, 4):
        full[i] = offs[i - axis] if len(offs) > 1 else offs[0]
    my, mx = x.shape[2] - h, x.shape[3] - w
    # likeliest first: a centred crop, offsets near Caffe's; then the rest, one channel as a cheap filter
    near = [(my // 2, mx // 2)] + [(full[2] + dy, full[3] + dx) for dy in range(-3, 4) for dx in range(-3, 4)]
    rest = ((oy, ox) for oy in range(my + 1) for ox in range(mx + 1))
    seen: set[tuple[int, int]] = {(full[2], full[3])}
    tol = 1e-4 * case.scale
    for oy, ox in itertools.chain(near, rest):
        if (oy, ox) in seen or not (0 <= oy <= my and 0 <= ox <= mx):
            continue
        seen.add((oy, ox))
        if float(np.max(np.abs(x[0, 0, oy:oy + h, ox:ox + w] - t[0, 0]), initial=0.0)) > tol:
            continue
        if case.attempt(out, "spatial_shift",
                f"TF crops at offset ({oy}, {ox}); Caffe's Crop takes offset ({full[2]}, {full[3]}) from the "
                "top-left: the output is shifted.",
                f"Crop from the top-left like Caffe: `x[:, {full[2]}:{full[2]}+{h}, {full[3]}:{full[3]}+{w}, :]` or "
                f"`Cropping2D((({full[2]}, H - {full[2]} - {h}), ({full[3]}, W - {full[3]} - {w})))` (a centred "
                "Cropping2D is only right when the offset is centred).",
                lambda oy=oy, ox=ox: x[:, :, oy:oy + h, ox:ox + w],
                caffe_offset=[full[2], full[3]], tf_offset=[oy, ox], shift_rows=full[2] - oy, shift_cols=full[3] - ox):
            return out
    return out


INTERP_FIX = ("Caffe's Interp/BilinearInterpolate aligns corners: use `tf.compat.v1.image.resize_bilinear(x, size, "
              "align_corners=True)` (tf.image.resize and UpSampling2D use half-pixel centres), with the output size "
              "`in + (in - 1) * (zoom - 1)` for a zoom factor.")


#: Caffe resize types whose sampling is not the bilinear align-corners / half-pixel question
#: :func:`interp_rules` asks: Upsample repeats pixels (nearest); the Resize of some forks samples
#: ``dst * in/out`` and drops the neighbour past the border. Telling their port to align
#: corners would be wrong advice.
NOT_BILINEAR_INTERP = frozenset({"Upsample", "Resize"})


def interp_rules(case: Case) -> list[Diagnosis]:
    out: list[Diagnosis] = []
    x, t = case.x0, case.t
    if t is None or case.ckind_raw in NOT_BILINEAR_INTERP:
        return out
    ac = case.cparams.get("align_corners", True)
    caffe_mode = "half_pixel" if ac is False or str(ac).lower() == "false" else "align_corners"
    if x is not None and x.ndim == 4:
        for mode in ("half_pixel", "asymmetric", "align_corners"):
            if mode == caffe_mode:
                continue
            fix = INTERP_FIX if caffe_mode == "align_corners" else (
                "Caffe's layer here has align_corners: false (half-pixel centres): use `tf.image.resize(x, size, "
                "'bilinear')` / `UpSampling2D(interpolation='bilinear')`, not align_corners=True.")
            if case.attempt(out, "interp_align_corners",
                    f"Caffe interpolates with {caffe_mode.replace('_', ' ')} sampling, TF with {mode.replace('_', ' ')} "
                    "sampling: recomputing the resize that way reproduces the TF output (corners exact, interior off).",
                    fix, lambda mode=mode: ref.resize_bilinear(x, t.shape[2:], mode), caffe_sampling=caffe_mode,
                    tf_sampling=mode):
                return out
    y = case.y
    if y.ndim == 4 and min(y.shape[2:]) >= 3:
        d = np.abs(y - t) > 1e-4 * case.scale
        corners = d[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]
        if d.any() and not corners.any():
            out.append(case.diag("interp_align_corners", "Corners exact, interior off: a bilinear resize without "
                                 "align_corners (not confirmed: the input was not given).", INTERP_FIX,
                                 CONF_FINGERPRINT + 0.1, mismatched_fraction=rnd(d.mean())))
    return out


def interp_shape_rule(case: Case, t_shape: tuple[int, ...]) -> list[Diagnosis]:
    in_shape = case.x0.shape if case.x0 is not None else None
    if in_shape is None or len(in_shape) != 4 or len(t_shape) != 4:
        return []
    h, w = in_shape[2:]
    ch, cw = case.y.shape[2:]
    th, tw = t_shape[2:]
    zh = (ch - 1) / (h - 1) if h > 1 else None
    if zh and abs(zh - round(zh)) < 1e-9 and (th, tw) == (h * round(zh), w * round((cw - 1) / max(w - 1, 1))):
        z = round(zh)
        return [case.diag("interp_align_corners",
                          f"Caffe's Interp with zoom {z} gives in + (in-1)(z-1) = {ch}x{cw}; TF resized to "
                          f"z*in = {th}x{tw}.", INTERP_FIX, CONF_FORMULA, zoom=z, caffe_out=[ch, cw], tf_out=[th, tw])]
    return []


def deconv_shape_rule(case: Case, t_shape: tuple[int, ...]) -> list[Diagnosis]:
    in_shape = case.x0.shape if case.x0 is not None else None
    if in_shape is None or len(in_shape) != 4 or len(t_shape) != 4:
        return []
    w = case.cw[0] if case.cw else None
    k = hw(case.cparams, "kernel_size", int(w.shape[2]) if w is not None else 1)
    s, p, d = hw(case.cparams, "stride", 1), hw(case.cparams, "pad", 0), hw(case.cparams, "dilation", 1)
    h, wd = in_shape[2:]
    c_out = (ref.caffe_deconv_out(h, k[0], s[0], p[0], d[0]), ref.caffe_deconv_out(wd, k[1], s[1], p[1], d[1]))
    same = (s[0] * h, s[1] * wd)
    got = tuple(t_shape[2:])
    if got == same and got != c_out:
        return [case.diag("deconv_same_padding",
                          f"Caffe's Deconvolution gives s(H-1) + k - 2p = {c_out[0]}x{c_out[1]}; TF's transpose conv "
                          f"with 'SAME' gives s*H = {got[0]}x{got[1]} (one pixel larger for k3 s2 p1).",
                          "Use `Conv2DTranspose(..., padding='valid')` (output s(H-1)+k) and crop p from every side "
                          f"(`Cropping2D({p[0]})`), or `tf.nn.conv2d_transpose` with output_shape {c_out} and explicit cropping.",
                          CONF_FORMULA, caffe_out=list(c_out), tf_out=list(got), kernel=list(k), stride=list(s), pad=list(p))]
    return []


PIXEL_SHUFFLE_FIX = (
    "Caffe's PixelShuffle reads input channel c*r*r + i*r + j (channels grouped (c, r*r)); "
    "`tf.nn.depth_to_space` reads (i*r + j)*C + c (grouped (r*r, c)). Reorder the channels first: "
    "`t = tf.reshape(tf.transpose(tf.reshape(t, (-1, H, W, C, r * r)), (0, 1, 2, 4, 3)), (-1, H, W, C * r * r))` "
    "then `tf.nn.depth_to_space(t, r)` (or permute the output channels of the layer before it once, in its weights).")


def pixel_shuffle_rules(case: Case) -> list[Diagnosis]:
    """PixelShuffle ported as ``tf.nn.depth_to_space`` without reordering Caffe's channel grouping:
    recompute the shuffle reading channels TF's way from the Caffe input."""
    out: list[Diagnosis] = []
    x, t = case.x0, case.t
    if t is None or x is None or x.ndim != 4:
        return out
    r = int(fnum(case.cparams.get("upscale_factor"), 1) or 1)
    if r < 2 or x.shape[1] % (r * r) or x.shape[1] == r * r:  # one output channel: both groupings agree
        return out
    case.set_reference(ref.pixel_shuffle(x, r))
    if case.reference is None:
        return out
    c = x.shape[1] // (r * r)
    case.attempt(out, "pixel_shuffle_order",
                 f"TF shuffles the {x.shape[1]} input channels as tf.nn.depth_to_space does, grouped (r*r, C) = "
                 f"({r * r}, {c}): channel (i*r + j)*{c} + c goes to output channel c at offset (i, j). Caffe's "
                 f"PixelShuffle groups them (C, r*r): channel c*{r * r} + i*{r} + j. Recomputing the shuffle with "
                 "TF's grouping from the Caffe input reproduces the TF output.",
                 PIXEL_SHUFFLE_FIX, lambda: ref.pixel_shuffle(x, r, grouping="tf"), upscale_factor=r,
                 caffe_grouping=f"(C, r*r): q = c*{r * r} + i*{r} + j",
                 tf_grouping=f"(r*r, C): q = (i*{r} + j)*{c} + c")
    return out

"""Caffe's forward formulas in NumPy (float64), with the switches a TF port gets wrong.

Every function takes and returns NCHW arrays. These are the references the
diagnosis rules recompute to *confirm* a suspected porting bug: "the TF output
equals Caffe's convolution computed with TF 'SAME' padding" is proof, not a guess.

The formulas follow BVLC Caffe's layer code (conv_layer, pooling_layer.cpp,
lrn_layer.cpp, batch_norm_layer.cpp, ...) and TensorFlow's kernels where the
switch models the TF side (``same_pads``, ``exclude_pad`` average pooling,
half-pixel bilinear resize).

>>> import numpy as np
>>> x = np.arange(16.0).reshape(1, 1, 4, 4)
>>> pool2d(x, (2, 2), (2, 2), (0, 0, 0, 0), "MAX")[0, 0].tolist()
[[5.0, 7.0], [13.0, 15.0]]
>>> caffe_pool_out(3, 3, 2, 0, ceil=True), caffe_pool_out(3, 3, 2, 0, ceil=False)
(1, 1)
>>> caffe_pool_out(6, 3, 2, 0, ceil=True), caffe_pool_out(6, 3, 2, 0, ceil=False)
(3, 2)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

Pads = tuple[int, int, int, int]  # top, bottom, left, right


# -- output sizes --------------------------------------------------------------


def caffe_conv_out(size: int, k: int, s: int, p: int, d: int = 1) -> int:
    """Caffe Convolution: ``floor((H + 2p - (d(k-1)+1)) / s) + 1``."""
    return (size + 2 * p - (d * (k - 1) + 1)) // s + 1


def caffe_pool_out(size: int, k: int, s: int, p: int, ceil: bool = True) -> int:
    """Caffe Pooling: ceil (default) or floor, minus one if the last window starts in the padding."""
    if ceil:
        out = int(math.ceil((size + 2 * p - k) / s)) + 1
    else:
        out = (size + 2 * p - k) // s + 1
    if p > 0 and (out - 1) * s >= size + p:
        out -= 1
    return out


def caffe_deconv_out(size: int, k: int, s: int, p: int, d: int = 1) -> int:
    """Caffe Deconvolution: ``s(H-1) + d(k-1)+1 - 2p``."""
    return s * (size - 1) + d * (k - 1) + 1 - 2 * p


def tf_same_out(size: int, s: int) -> int:
    return -(-size // s)


def tf_valid_out(size: int, k_eff: int, s: int) -> int:
    return (size - k_eff) // s + 1


def tf_same_pads(size: int, k_eff: int, s: int) -> tuple[int, int]:
    """TF 'SAME' padding (before, after): the odd pixel goes to the bottom/right."""
    out = tf_same_out(size, s)
    total = max((out - 1) * s + k_eff - size, 0)
    return total // 2, total - total // 2


def same_pads_2d(h: int, w: int, k: Sequence[int], s: Sequence[int], d: Sequence[int] = (1, 1)) -> Pads:
    kh, kw = d[0] * (k[0] - 1) + 1, d[1] * (k[1] - 1) + 1
    top, bot = tf_same_pads(h, kh, s[0])
    left, right = tf_same_pads(w, kw, s[1])
    return top, bot, left, right


# -- convolution -----------------------------------------------------------------


def conv2d(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    stride: Sequence[int] = (1, 1),
    pads: Pads = (0, 0, 0, 0),
    dilation: Sequence[int] = (1, 1),
    group: int = 1,
) -> np.ndarray:
    """Cross-correlation, Caffe weights (O, I/g, kH, kW), explicit (top, bottom, left, right) pads."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    if cg * group != c or o % group:
        raise ValueError(f"weights {w.shape} do not fit input {x.shape} with group {group}")
    t, bt, lf, r = pads
    xp = np.pad(x, ((0, 0), (0, 0), (t, bt), (lf, r)))
    sh, sw = stride
    dh, dw = dilation
    oh = (h + t + bt - (dh * (kh - 1) + 1)) // sh + 1
    ow = (wd + lf + r - (dw * (kw - 1) + 1)) // sw + 1
    if oh <= 0 or ow <= 0:
        raise ValueError("empty convolution output")
    og = o // group
    out = np.zeros((n, o, oh, ow))
    for i in range(kh):
        for j in range(kw):
            patch = xp[:, :, i * dh : i * dh + sh * (oh - 1) + 1 : sh, j * dw : j * dw + sw * (ow - 1) + 1 : sw]
            for g in range(group):
                # (n, c, oh, ow) x (o, c) -> (n, oh, ow, o): one BLAS call per tap and group
                part = np.tensordot(patch[:, g * cg : (g + 1) * cg], w[g * og : (g + 1) * og, :, i, j], axes=([1], [1]))
                out[:, g * og : (g + 1) * og] += part.transpose(0, 3, 1, 2)
    if b is not None:
        out += np.asarray(b, np.float64).reshape(1, -1, 1, 1)
    return out


def conv2d_rows(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None,
    stride: Sequence[int],
    pads: Pads,
    dilation: Sequence[int],
    group: int,
    rows: Sequence[int],
) -> np.ndarray:
    """:func:`conv2d`, only at output rows ``rows`` (ascending): each contiguous run of
    rows is convolved from the band of the padded input it reads, so a large layer can
    be recomputed on part of its output at a fraction of the cost."""
    x = np.asarray(x, np.float64)
    t, bt, lf, r = pads
    xp = np.pad(x, ((0, 0), (0, 0), (t, bt), (lf, r)))
    sh, dh = stride[0], dilation[0]
    kh_eff = dh * (np.shape(w)[2] - 1) + 1
    rows = [int(i) for i in rows]
    if not rows or rows != sorted(set(rows)) or rows[0] < 0:
        raise ValueError(f"rows must be ascending and distinct, got {rows[:8]}")
    runs: list[tuple[int, int]] = []
    for i in rows:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    outs = []
    for a, z in runs:
        band = xp[:, :, a * sh : (z - 1) * sh + kh_eff]
        if band.shape[2] < (z - 1 - a) * sh + kh_eff:
            raise ValueError("rows beyond the convolution output")
        outs.append(conv2d(band, w, b, stride, (0, 0, 0, 0), dilation, group))
    return np.concatenate(outs, axis=2)


def deconv2d(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    stride: Sequence[int] = (1, 1),
    crop: Pads = (0, 0, 0, 0),
    dilation: Sequence[int] = (1, 1),
    group: int = 1,
    out_hw: tuple[int, int] | None = None,
) -> np.ndarray:
    """Caffe Deconvolution, weights (C_in, C_out/g, kH, kW): scatter into the full
    ``s(H-1)+k_eff`` canvas, then crop (top, bottom, left, right); ``out_hw`` takes a
    window of that size starting at (top, left) instead (TF 'SAME')."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64)
    n, c, h, wd = x.shape
    ci, cog, kh, kw = w.shape
    sh, sw = stride
    dh, dw = dilation
    fh, fw = sh * (h - 1) + dh * (kh - 1) + 1, sw * (wd - 1) + dw * (kw - 1) + 1
    cig = c // group
    full = np.zeros((n, cog * group, fh, fw))
    for i in range(kh):
        for j in range(kw):
            for g in range(group):
                contrib = np.tensordot(
                    x[:, g * cig : (g + 1) * cig], w[g * cig : (g + 1) * cig, :, i, j], axes=([1], [0])
                ).transpose(0, 3, 1, 2)
                full[:, g * cog : (g + 1) * cog, i * dh : i * dh + sh * (h - 1) + 1 : sh,
                     j * dw : j * dw + sw * (wd - 1) + 1 : sw] += contrib
    t, bt, lf, r = crop
    if out_hw is not None:
        out = full[:, :, t : t + out_hw[0], lf : lf + out_hw[1]]
    else:
        out = full[:, :, t : fh - bt, lf : fw - r]
    if b is not None:
        out = out + np.asarray(b, np.float64).reshape(1, -1, 1, 1)
    return out


def inner_product(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """Caffe InnerProduct: flattens C*H*W (NCHW memory order), weights (N_out, K)."""
    x = np.asarray(x, np.float64).reshape(x.shape[0], -1)
    out = x @ np.asarray(w, np.float64).T
    if b is not None:
        out = out + np.asarray(b, np.float64).reshape(1, -1)
    return out


# -- pooling ---------------------------------------------------------------------


def pool2d(
    x: np.ndarray,
    k: Sequence[int],
    s: Sequence[int],
    pads: Pads,
    mode: str,
    out_hw: tuple[int, int] | None = None,
    divisor: str = "caffe",
    caffe_pad: tuple[int, int] | None = None,
) -> np.ndarray:
    """Pooling with windows starting at ``o*s - pad_top``.

    ``divisor`` for AVE: ``"caffe"`` (window clipped to the padded size ``H + pad``,
    padding counted), ``"exclude_pad"`` (TF: valid elements only), ``"full"``
    (always k*k, as after an explicit zero pad). MAX ignores padding (-inf).
    """
    x = np.asarray(x, np.float64)
    n, c, h, w = x.shape
    kh, kw = k
    sh, sw = s
    t, b, lf, r = pads
    if out_hw is None:
        oh = (h + t + b - kh) // sh + 1
        ow = (w + lf + r - kw) // sw + 1
    else:
        oh, ow = out_hw
    cph, cpw = caffe_pad if caffe_pad is not None else (t, lf)
    out = np.empty((n, c, oh, ow))
    for i in range(oh):
        hs0 = i * sh - t
        he0 = hs0 + kh
        hs, he = max(hs0, 0), min(he0, h)
        for j in range(ow):
            ws0 = j * sw - lf
            we0 = ws0 + kw
            ws, we = max(ws0, 0), min(we0, w)
            if hs >= he or ws >= we:
                out[:, :, i, j] = 0.0 if mode != "MAX" else -np.inf
                continue
            win = x[:, :, hs:he, ws:we]
            if mode == "MAX":
                out[:, :, i, j] = win.max(axis=(2, 3))
            else:
                if divisor == "caffe":
                    size = (min(he0, h + cph) - hs0) * (min(we0, w + cpw) - ws0)
                elif divisor == "full":
                    size = kh * kw
                else:
                    size = (he - hs) * (we - ws)
                out[:, :, i, j] = win.sum(axis=(2, 3)) / size
    return out


def caffe_pool(x: np.ndarray, k: Sequence[int], s: Sequence[int], p: Sequence[int], mode: str,
               ceil: bool = True) -> np.ndarray:
    h, w = x.shape[2:]
    oh = caffe_pool_out(h, k[0], s[0], p[0], ceil)
    ow = caffe_pool_out(w, k[1], s[1], p[1], ceil)
    return pool2d(x, k, s, (p[0], p[0], p[1], p[1]), mode, (oh, ow), "caffe", (p[0], p[1]))


# -- normalization -----------------------------------------------------------------


def lrn_across(x: np.ndarray, lo: int, hi: int, coef: float, beta: float, k: float) -> np.ndarray:
    """``x * (k + coef * sum_{c-lo..c+hi} x^2)^-beta``. Caffe: lo=(n-1)//2, hi=n-1-lo,
    coef=alpha/n. TF: lo=hi=depth_radius, coef=alpha."""
    x = np.asarray(x, np.float64)
    sq = x * x
    c = x.shape[1]
    padded = np.pad(sq, ((0, 0), (lo, hi), (0, 0), (0, 0)))
    acc = np.zeros_like(x)
    for d in range(lo + hi + 1):
        acc += padded[:, d : d + c]
    return x * (k + coef * acc) ** (-beta)


def batchnorm(x: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float) -> np.ndarray:
    sh = (1, -1) + (1,) * (x.ndim - 2)
    return (np.asarray(x, np.float64) - np.reshape(mean, sh)) / np.sqrt(np.reshape(var, sh) + eps)


def caffe_bn_stats(blobs: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray, float]:
    """Caffe BatchNorm blobs ``[mean*S, var*S, S]`` -> (mean, var, S) (S == 0 -> zeros)."""
    s = float(np.asarray(blobs[2]).reshape(-1)[0]) if len(blobs) > 2 else 1.0
    f = 0.0 if s == 0 else 1.0 / s
    return np.asarray(blobs[0], np.float64) * f, np.asarray(blobs[1], np.float64) * f, s


def channel_affine(x: np.ndarray, a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    sh = (1, -1) + (1,) * (x.ndim - 2)
    out = np.asarray(x, np.float64) * np.reshape(a, sh)
    if b is not None:
        out = out + np.reshape(b, sh)
    return out


def softmax(x: np.ndarray, axis: int | tuple[int, ...]) -> np.ndarray:
    x = np.asarray(x, np.float64)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# -- resizing ----------------------------------------------------------------------


def _interp_axis(n_in: int, n_out: int, mode: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    o = np.arange(n_out, dtype=np.float64)
    if mode == "align_corners":
        src = o * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(n_out)
    elif mode == "half_pixel":
        src = (o + 0.5) * (n_in / n_out) - 0.5
    else:  # "asymmetric": legacy tf.compat.v1.image.resize_bilinear
        src = o * (n_in / n_out)
    f = np.floor(src)
    lo = np.clip(f, 0, n_in - 1).astype(int)
    hi = np.clip(np.ceil(src), 0, n_in - 1).astype(int)
    frac = src - f
    if mode == "align_corners":
        frac = np.clip(src - lo, 0, 1)
    return lo, hi, frac


def resize_bilinear(x: np.ndarray, out_hw: tuple[int, int], mode: str = "align_corners") -> np.ndarray:
    """Bilinear resize of an NCHW array: ``align_corners`` (Caffe Interp), ``half_pixel``
    (tf.image.resize / Keras UpSampling2D), ``asymmetric`` (TF1 default)."""
    x = np.asarray(x, np.float64)
    hl, hh, hf = _interp_axis(x.shape[2], out_hw[0], mode)
    wl, wh, wf = _interp_axis(x.shape[3], out_hw[1], mode)
    top = x[:, :, hl] * (1 - hf)[None, None, :, None] + x[:, :, hh] * hf[None, None, :, None]
    return top[:, :, :, wl] * (1 - wf) + top[:, :, :, wh] * wf


def interp_zoom_out(size: int, zoom: int) -> int:
    """Caffe Interp (PSPNet/DeepLab) output for zoom_factor z: ``in + (in-1)(z-1)``."""
    return size + (size - 1) * (zoom - 1)


# -- rearranging, normalizing and pyramid layers of Caffe forks ---------------------


def pixel_shuffle(x: np.ndarray, r: int, grouping: str = "caffe") -> np.ndarray:
    """PixelShuffle (pixelshuffle_layer.cpp): ``out[n, c, i*r + a, j*r + b] = x[n, q, i, j]`` with
    ``q = c*r*r + a*r + b`` (``grouping="caffe"``: channels grouped (c, r*r)) or ``q = (a*r + b)*C + c``
    (``"tf"``: what ``tf.nn.depth_to_space`` reads from an NHWC tensor, grouped (r*r, c))."""
    x = np.asarray(x, np.float64)
    n, q, h, w = x.shape
    if r < 1 or q % (r * r):
        raise ValueError(f"{q} channels do not split into upscale_factor {r} squared")
    c = q // (r * r)
    g = x.reshape(n, c, r, r, h, w) if grouping == "caffe" else x.reshape(n, r, r, c, h, w).transpose(0, 3, 1, 2, 4, 5)
    return g.transpose(0, 1, 4, 2, 5, 3).reshape(n, c, h * r, w * r)


def mvn(x: np.ndarray, across_channels: bool = False, normalize_variance: bool = True, eps: float = 1e-9,
        eps_inside_sqrt: bool = False) -> np.ndarray:
    """MVN (mvn_layer.cpp): ``(x - mean) / (sqrt(var) + eps)`` per item and channel (per item when
    ``across_channels``); Caffe adds eps *outside* the square root (``eps_inside_sqrt`` models
    ``sqrt(var + eps)``, as ``tf.nn.batch_normalization`` does). ``normalize_variance`` False: ``x - mean``."""
    x = np.asarray(x, np.float64)
    axes = tuple(range(1 if across_channels else 2, x.ndim))
    d = x - x.mean(axis=axes, keepdims=True)
    if not normalize_variance:
        return d
    var = (d * d).mean(axis=axes, keepdims=True)
    return d / (np.sqrt(var + eps) if eps_inside_sqrt else np.sqrt(var) + eps)


def spp_level_geometry(size: int, bins: int) -> tuple[int, int]:
    """Caffe SPP's (kernel, pad) of one level along one axis (spp_layer.cpp): kernel ceil(size / bins),
    stride = kernel, pad (kernel*bins - size + 1) // 2 on both sides."""
    k = -(-size // bins)
    return k, (k * bins - size + 1) // 2


def spp(x: np.ndarray, pyramid_height: int, mode: str = "MAX", bins: str = "caffe") -> np.ndarray:
    """SPP: per level l < pyramid_height, 2**l bins per side, pooled, flattened C,H,W, concatenated:
    ``(N, C * sum 4**l)``. ``bins="caffe"``: Caffe's pooling (kernel/stride/pad of
    :func:`spp_level_geometry`, Caffe's AVE divisor); ``"adaptive"``: adaptive pooling's bins
    ``[floor(i*H/b), ceil((i+1)*H/b))`` (PyTorch's AdaptiveMaxPool2d / a hand-written port)."""
    x = np.asarray(x, np.float64)
    n, c, h, w = x.shape
    levels = []
    for lv in range(pyramid_height):
        b = 2**lv
        if bins == "caffe":
            if pyramid_height == 1:  # Caffe: one level is a global pooling
                p = x.max(axis=(2, 3), keepdims=True) if mode == "MAX" else x.mean(axis=(2, 3), keepdims=True)
            else:
                (kh, ph), (kw, pw) = spp_level_geometry(h, b), spp_level_geometry(w, b)
                p = caffe_pool(x, (kh, kw), (kh, kw), (ph, pw), mode)
        else:
            p = np.empty((n, c, b, b))
            for i in range(b):
                hs, he = (i * h) // b, -(-(i + 1) * h // b)
                for j in range(b):
                    ws, we = (j * w) // b, -(-(j + 1) * w // b)
                    win = x[:, :, hs:he, ws:we]
                    p[:, :, i, j] = win.max(axis=(2, 3)) if mode == "MAX" else win.mean(axis=(2, 3))
        levels.append(p.reshape(n, -1))
    return np.concatenate(levels, axis=1)


def prior_box(feat_hw: tuple[int, int], img_hw: tuple[int, int], min_sizes: Sequence[float],
              max_sizes: Sequence[float] = (), aspect_ratios: Sequence[float] = (), flip: bool = True,
              clip: bool = False, variance: Sequence[float] = (0.1,), offset: float = 0.5,
              step_hw: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """SSD's PriorBox (prior_box_layer.cpp): ``1 x 2 x (H*W*num_priors*4)``, boxes (x1, y1, x2, y2)
    normalized by the image size, clipped to [0, 1] when ``clip``, then the variances. Caffe
    truncates min/max sizes to int; steps default to image size / feature size."""
    fh, fw = feat_hw
    ih, iw = img_hw
    ars = [1.0]
    for a in aspect_ratios:
        if all(abs(a - b) >= 1e-6 for b in ars):
            ars.append(float(a))
            if flip:
                ars.append(1.0 / float(a))
    sth, stw = step_hw
    if not sth or not stw:
        sth, stw = np.float32(ih) / np.float32(fh), np.float32(iw) / np.float32(fw)
    sizes: list[tuple[float, float]] = []
    for s, mn in enumerate(min_sizes):
        mn = int(mn)
        sizes.append((mn, mn))
        if max_sizes:
            sizes.append((math.sqrt(mn * int(max_sizes[s])),) * 2)
        sizes += [(mn * math.sqrt(a), mn / math.sqrt(a)) for a in ars if abs(a - 1.0) >= 1e-6]
    bw = np.array([s[0] for s in sizes], np.float64)
    bh = np.array([s[1] for s in sizes], np.float64)
    cy = (np.arange(fh) + offset) * float(sth)
    cx = (np.arange(fw) + offset) * float(stw)
    cyy, cxx = np.meshgrid(cy, cx, indexing="ij")
    cxx, cyy = cxx[:, :, None], cyy[:, :, None]
    boxes = np.stack([(cxx - bw / 2) / iw, (cyy - bh / 2) / ih, (cxx + bw / 2) / iw, (cyy + bh / 2) / ih], -1)
    boxes = boxes.reshape(-1)
    if clip:
        boxes = np.clip(boxes, 0.0, 1.0)
    var = np.asarray(variance, np.float64).reshape(-1)
    var = np.full(boxes.size, var[0]) if var.size == 1 else np.tile(var, boxes.size // 4)
    return np.stack([boxes, var])[None]


def lstm(x: np.ndarray, cont: np.ndarray, w_xc: np.ndarray, b_c: np.ndarray, w_hc: np.ndarray) -> np.ndarray:
    """Caffe's LSTM (lstm_layer.cpp + lstm_unit_layer.cpp): ``x`` T x N x C, ``cont`` T x N, gate blocks
    i, f, o, g; the previous h and c are multiplied by ``cont`` (0 starts a new sequence), the
    state before t = 0 is zero. Returns h, T x N x H."""
    x = np.asarray(x, np.float64)
    cont = np.asarray(cont, np.float64).reshape(x.shape[0], x.shape[1], 1)
    w_xc, b_c, w_hc = (np.asarray(a, np.float64) for a in (w_xc, b_c, w_hc))
    hd = w_hc.shape[1]
    if w_xc.shape != (4 * hd, x.shape[2]) or b_c.reshape(-1).shape != (4 * hd,) or w_hc.shape != (4 * hd, hd):
        raise ValueError("LSTM blobs do not match the input and hidden sizes")
    h = np.zeros((x.shape[1], hd))
    c = np.zeros_like(h)
    out = np.empty((x.shape[0], x.shape[1], hd))
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    for t in range(x.shape[0]):
        g = x[t] @ w_xc.T + b_c.reshape(-1) + (cont[t] * h) @ w_hc.T
        i, f, o, gg = sig(g[:, :hd]), sig(g[:, hd:2 * hd]), sig(g[:, 2 * hd:3 * hd]), np.tanh(g[:, 3 * hd:])
        c = cont[t] * f * c + i * gg
        h = o * np.tanh(c)
        out[t] = h
    return out

"""Convolution, Deconvolution and InnerProduct: padding, weight transforms,
flatten order and input preprocessing, each confirmed by recomputing the layer
from its Caffe input and weights (decision list steps 4 and 8)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..layout import conv_weight_tf_to_caffe, nchw_to_nhwc, nhwc_to_nchw
from ..result import Diagnosis
from ..weights import TRANSFORM_FIXES, compare_layer
from . import reference as ref
from ._core import CONF_FINGERPRINT, CONF_WEIGHTS, Case, hw, pad_fix, rnd
from .generic import name_scale

#: Recompute at most this many multiply-adds per hypothesis (a big layer takes seconds in NumPy):
#: a larger convolution is recomputed, and judged, on as many of its top and bottom output rows as fit.
MAX_MACS = 1e8

FIXES = TRANSFORM_FIXES


#: What each weight transform did, for the summary.
WEIGHT_BUGS = {
    "kernel_flipped": "kernel rotated by 180 degrees",
    "kernel_hw_swapped": "kernel with height and width swapped",
    "reshape_not_transpose": "array reshaped to the TF shape instead of transposed",
    "channel_order": "kernel with its input channels reversed (BGR vs RGB)",
    "deconv_in_out_swapped": "transpose-conv kernel with input and output channels swapped",
    "flatten_order": "InnerProduct weights transposed without permuting the rows from C*H*W to H*W*C order",
}




def padding_check(case: Case, pool: bool = False) -> tuple[ref.Pads, ref.Pads] | None:
    """(Caffe pads, TF 'SAME' pads) for this layer; records the ruling-out when they agree."""
    in_shape = case.input_shape()
    if in_shape is None or len(in_shape) != 4:
        return None
    if pool:
        k, s, p = hw(case.cparams, "kernel_size", 1), hw(case.cparams, "stride", 1), hw(case.cparams, "pad", 0)
        d = (1, 1)
    else:
        k, s, p, d, _ = case.conv_geom()
    h, w = in_shape[2], in_shape[3]
    same = ref.same_pads_2d(h, w, k, s, d)
    caffe = (p[0], p[0], p[1], p[1])
    pad_mode = case.tf_padding()
    if pad_mode == "SAME" and same == caffe:
        case.ruled_out.append(
            f"padding: TF 'SAME' (kernel {k[0]}x{k[1]}, stride {s[0]}x{s[1]}, input {h}x{w}) pads "
            f"{same} (top, bottom, left, right) = Caffe's symmetric pad {p[0]}x{p[1]} exactly"
        )
    elif pad_mode == "VALID" and p == (0, 0):
        case.ruled_out.append("padding: both sides unpadded (Caffe pad 0, TF 'VALID')")
    return caffe, same






def _weights_evidence(case: Case, kind: str, chw=None, group: int = 1) -> list[Diagnosis]:
    """The TF weights themselves, held against Caffe's under the expected transform."""
    if not case.cw or not case.tw:
        return []
    try:
        status, blobs, _ = compare_layer(kind, case.cw, case.tw, chw, group)
    except Exception:  # noqa: BLE001 - odd TF arrays: no weight evidence
        if case.strict:
            raise
        return []
    if status.startswith("equal_under:"):
        bug = status.split(":", 1)[1]
        case.proven = True
        return [case.diag(bug, f"The TF weights are Caffe's {WEIGHT_BUGS.get(bug, 'under `' + bug + '`')}: "
                          "that transform is the bug.",
                          FIXES.get(bug, "Use the expected weight transform (see docs/weights.md)."),
                          CONF_WEIGHTS, confirmed_by="weights",
                          weight_blobs=[b.to_dict() for b in blobs if b.status != "equal"],
                          **({"input_chw": [int(v) for v in chw]} if chw else {}))]
    if status == "different":
        case.evidence_extra["weights"] = "TF weights differ from Caffe's under every known transform"
    elif status == "equal":
        case.ruled_out.append("weights: the TF weights equal Caffe's under the expected transform")
    return []


def conv_rules(case: Case) -> list[Diagnosis]:
    out: list[Diagnosis] = []
    x, t = case.x0, case.t
    k, s, p, d, g = case.conv_geom()
    pads = padding_check(case)
    group = g
    out += _weights_evidence(case, "conv", group=group)
    if x is None or not case.cw or t is None or x.ndim != 4:
        if pads and pads[0] != pads[1] and case.tf_padding() == "SAME" and t is not None:
            out.append(case.diag(
                "padding_asymmetry",
                f"TF 'SAME' pads {pads[1]} (top, bottom, left, right) where Caffe pads {pads[0]}: "
                "the sampling grids are shifted (not confirmed: the layer's input/weights were not given).",
                pad_fix(p), CONF_FINGERPRINT + 0.1, caffe_pads=list(pads[0]), tf_same_pads=list(pads[1]),
                stride=list(s)))
        return out
    w = case.cw[0]
    b = case.cw[1] if len(case.cw) > 1 else None
    if case.proven:  # the weights already name the bug: no need to recompute anything
        return out
    sym = (p[0], p[0], p[1], p[1])
    whole = case
    macs = float(np.prod(t.shape)) * float(np.prod(w.shape[1:]))
    rows = _rows_within_budget(t.shape[2], macs)
    if rows is None:

        def conv(xx=x, ww=w, pads_=sym):
            return ref.conv2d(xx, ww, b, s, pads_, d, group)
    else:
        # too large to recompute whole: recompute (and judge every hypothesis) on the top
        # and bottom output rows only, where the borders and the sampling grid show
        case = case.at_rows(rows)
        case.evidence_extra["recomputation"] = (f"on {len(rows)} of {t.shape[2]} output rows (the whole layer "
                                                f"is {macs:.3g} multiply-adds)")

        def conv(xx=x, ww=w, pads_=sym):
            return ref.conv2d_rows(xx, ww, b, s, pads_, d, group, rows)

    n_before = len(out)
    _conv_hypotheses(case, out, conv, x, w, b, k, s, p, pads, group)
    if case is not whole:
        whole.proven = case.proven
        for dg in out[n_before:]:
            if "max_abs_error_now" in dg.evidence and np.isfinite(whole.r0):
                dg.evidence["max_abs_error_now"] = rnd(whole.r0 * whole.scale)
            dg.evidence["recomputed_output_rows"] = [len(rows), int(t.shape[2])]
    return out


def _rows_within_budget(oh: int, macs: float) -> list[int] | None:
    """``None`` when the whole layer fits :data:`MAX_MACS`; else the output rows that
    do (at least two): the top half of them from the first row down, the rest from the last up."""
    if macs <= MAX_MACS or oh <= 2:
        return None
    n = int(min(max(MAX_MACS // (macs / oh), 2), oh - 1))
    top = (n + 1) // 2
    return list(range(top)) + list(range(oh - (n - top), oh))


def _conv_hypotheses(case: Case, out: list[Diagnosis], conv: Callable[..., np.ndarray], x: np.ndarray,
                     w: np.ndarray, b: np.ndarray | None, k, s, p, pads, group: int) -> None:
    sym = (p[0], p[0], p[1], p[1])
    base = conv()
    case.set_reference(base)
    if pads and pads[1] != sym:
        case.attempt(out, "padding_asymmetry",
             f"TF 'SAME' padding {pads[1]} (top, bottom, left, right) is not Caffe's symmetric pad "
             f"{p[0]}x{p[1]} at stride {s[0]}: the sampling grid is shifted by a pixel. Recomputing "
             "Caffe's convolution with TF's padding reproduces the TF output.",
             pad_fix(p), lambda: conv(pads_=pads[1]),
             caffe_pads=list(sym), tf_same_pads=list(pads[1]), stride=list(s),
             input_hw=[x.shape[2], x.shape[3]], odd_input=bool(x.shape[2] % 2))
    case.attempt(out, "kernel_flipped", "The TF kernel is Caffe's rotated by 180 degrees: recomputing with "
         "the flipped kernel reproduces the TF output.", FIXES["kernel_flipped"],
         lambda: conv(ww=w[:, :, ::-1, ::-1]))
    if k[0] == k[1] and k[0] > 1:
        case.attempt(out, "kernel_hw_swapped", "The TF kernel is Caffe's with height and width swapped: "
             "recomputing with the transposed kernel reproduces the TF output.", FIXES["kernel_hw_swapped"],
             lambda: conv(ww=w.transpose(0, 1, 3, 2)))
    elif k[0] != k[1] or s[0] != s[1] or p[0] != p[1]:
        # not square (kernel 3x5, or stride/pad differing in H and W): the swapped layer swaps its
        # stride and pad too (a spatially transposed port); recomputed whole, when the size allows
        sw, pw = (s[1], s[0]), (p[1], p[1], p[0], p[0])
        d = case.conv_geom()[3]
        dsw = (d[1], d[0])
        macs = float(x.shape[0] * w.shape[0]) * float(np.prod(x.shape[2:])) / (s[0] * s[1]) * float(np.prod(w.shape[1:]))
        if macs <= MAX_MACS:  # a layer too big is judged on some output rows only: not this hypothesis
            case.attempt(out, "kernel_hw_swapped", "The TF layer is Caffe's with height and width swapped (kernel "
                 f"{k[1]}x{k[0]}, stride {sw[0]}x{sw[1]}, pad {p[1]}x{p[0]}): recomputing with the transposed "
                 "kernel, stride and pad reproduces the TF output.", FIXES["kernel_hw_swapped"],
                 lambda: ref.conv2d(x, w.transpose(0, 1, 3, 2), b, sw, pw, dsw, group),
                 kernel=list(k), stride=list(s), pad=list(p))
    o, cg, kh, kw = w.shape
    case.attempt(out, "reshape_not_transpose", "The TF kernel is Caffe's (O, I, kH, kW) array reshaped to "
         "(kH, kW, I, O) instead of transposed: recomputing with it reproduces the TF output.",
         FIXES["reshape_not_transpose"], lambda: conv(ww=conv_weight_tf_to_caffe(w.reshape(kh, kw, cg, o))),
         where="weights")
    n, c, h, wd = x.shape
    case.attempt(out, "reshape_not_transpose", "The TF input is Caffe's NCHW blob reshaped to NHWC instead "
         "of transposed: recomputing the layer on the reshaped input reproduces the TF output.",
         "Feed TF `np.transpose(x, (0, 2, 3, 1))`, never `x.reshape(N, H, W, C)`; a channels-first input "
         "ported with `Reshape((H, W, C))` needs `Permute((2, 3, 1))` instead.",
         lambda: conv(xx=nhwc_to_nchw(x.reshape(n, h, wd, c))), where="input")
    if c > 1:
        case.attempt(out, "channel_order", "The layer sees its input channels in reverse order (BGR vs RGB "
             "when this is the first layer): recomputing with reversed input channels reproduces the TF output.",
             FIXES["channel_order"], lambda: conv(xx=x[:, ::-1]))
    _input_scale_offset(case, out, base, b, lambda xx: conv(xx=xx))




def _input_scale_offset(case: Case, out: list[Diagnosis], base: np.ndarray, b: np.ndarray | None,
                        layer: Callable[[np.ndarray], np.ndarray]) -> None:
    """A linear layer fed c*x or x + m: fit c (one number) or m (one per input channel)."""
    t, x = case.t, case.x0
    assert t is not None and x is not None
    if case.proven:
        return
    bb = 0.0 if b is None else b.reshape((1, -1) + (1,) * (t.ndim - 2))
    # through a fused ReLU only the positions where neither side is clipped carry the linear relation
    valid = ((t > 0) & (case.post(base) > 0)) if case.tail else np.ones(t.shape, bool)
    ly, lt = np.where(valid, base - bb, 0.0), np.where(valid, t - bb, 0.0)
    den = float(np.sum(ly * ly))
    if den > 0:
        c = float(np.sum(lt * ly) / den)
        if abs(c - 1) > 1e-3 and c != 0 and np.isfinite(c):
            case.attempt(out, "constant_scale",
                 f"The TF layer sees its input times {name_scale(c)}: recomputing the layer on {name_scale(c)}*x "
                 "reproduces the TF output (a preprocessing scale applied on one side only).",
                 "Scale the input identically on both sides (Caffe Transformer: raw_scale 255 on [0, 1] images, "
                 "input_scale); check `Rescaling` / `/255.` in the TF pipeline.",
                 lambda: layer(c * x), factor=rnd(c), named=name_scale(c), where="input")
    macs = float(np.prod(t.shape)) * float(np.prod(case.cw[0].shape[1:])) if case.cw else 0.0
    if x.ndim == 4 and x.shape[1] <= 16 and macs * (x.shape[1] + 1) <= MAX_MACS:
        basis = []
        zero = layer(np.zeros_like(x))
        for ch in range(x.shape[1]):
            e = np.zeros_like(x[:1])
            e[:, ch] = 1.0
            basis.append((layer(e) - zero[:1]).reshape(-1))
        a = np.stack(basis, 1)
        rhs = (t - base)[0].reshape(-1)
        keep = valid[0].reshape(-1)
        if keep.sum() < a.shape[1]:
            return
        m, *_ = np.linalg.lstsq(a[keep], rhs[keep], rcond=None)
        if np.max(np.abs(m)) > 1e-6 * (np.max(np.abs(x)) or 1.0):
            case.attempt(out, "constant_offset",
                 "The TF layer sees its input plus a constant per channel (a mean subtracted on one side only): "
                 "recomputing the layer on x + m reproduces the TF output.",
                 "Subtract the same per-channel mean on both sides (Caffe's mean is BGR, e.g. [104, 117, 123]).",
                 lambda: layer(x + m.reshape(1, -1, 1, 1)),
                 offset_per_channel=[rnd(v) for v in m], offset_caffe_minus_tf=[rnd(-v) for v in m], where="input")


def deconv_rules(case: Case) -> list[Diagnosis]:
    out: list[Diagnosis] = []
    out += _weights_evidence(case, "deconv")
    x, t = case.x0, case.t
    if x is None or not case.cw or t is None or x.ndim != 4:
        return out
    w = case.cw[0]
    b = case.cw[1] if len(case.cw) > 1 else None
    k, s, p, d, g = case.conv_geom()
    crop = (p[0], p[0], p[1], p[1])

    def deconv(ww=w):
        return ref.deconv2d(x, ww, b, s, crop, d, g)

    case.attempt(out, "kernel_flipped", "The TF transpose-conv kernel is Caffe's rotated by 180 degrees: "
         "recomputing with it reproduces the TF output.", FIXES["kernel_flipped"], lambda: deconv(w[:, :, ::-1, ::-1]))
    if w.shape[0] == w.shape[1] * g:
        case.attempt(out, "deconv_in_out_swapped", "The TF transpose-conv kernel has Caffe's input and output "
             "channel axes swapped: recomputing with them swapped reproduces the TF output.",
             FIXES["deconv_in_out_swapped"], lambda: deconv(w.transpose(1, 0, 2, 3)))
    return out


def _flat_chw_candidates(k: int) -> list[tuple[int, int, int]]:
    """(C, H, W) with H == W > 1 and C > 1 whose C*H*W is k: what a flattened square blob could have been."""
    out = []
    h = 2
    while h * h * 2 <= k:
        if k % (h * h) == 0:
            out.append((k // (h * h), h, h))
        h += 1
    return out


def _input_chw(case: Case) -> tuple[int, int, int] | None:
    """(C, H, W) of the InnerProduct's input: from the value, else from the input probe (flat_shape)."""
    x = case.x0
    if x is not None and x.ndim == 4:
        return tuple(int(v) for v in x.shape[1:])
    for name in case.cp.inputs if case.primary in (case.cp.layer, case.cp.name) else []:
        p = case.ctx.caffe_probes.get(name)
        if p is None:
            continue
        if len(p.shape) == 4:
            return tuple(int(v) for v in p.shape[1:])
        if p.flat_shape is not None and len(p.flat_shape) == 3 and p.layout.startswith("flat:NCHW"):
            return tuple(int(v) for v in p.flat_shape)
    return None


def fc_rules(case: Case) -> list[Diagnosis]:
    out: list[Diagnosis] = []
    x, t = case.x0, case.t
    chw = _input_chw(case)
    if chw is not None or x is None or x.ndim == 4:
        out += _weights_evidence(case, "fc", chw=chw)
    # else: a 2-D input of unknown origin (an explicit Caffe Flatten): W.T may be right or the bug
    if x is None or not case.cw or t is None:
        return out
    w = case.cw[0]
    b = case.cw[1] if len(case.cw) > 1 else None
    bias = 0 if b is None else b
    n = x.shape[0]
    flat_caffe = x.reshape(n, -1)
    base = ref.inner_product(x, w, b)
    if base.shape != t.shape:
        return out  # an InnerProduct over a later axis (axis: 2 on a T x N x C sequence): the rules below flatten from axis 1
    cands = [chw] if chw is not None else _flat_chw_candidates(flat_caffe.shape[1])
    for c_, h_, w_ in cands:
        if h_ * w_ <= 1:
            continue
        flat_tf = nchw_to_nhwc(flat_caffe.reshape(n, c_, h_, w_)).reshape(n, -1)
        if case.attempt(out, "flatten_order",
                f"Everything matches up to the flatten; the Dense layer multiplies Keras' H*W*C flattening by "
                f"Caffe's C*H*W-ordered weight rows (input C,H,W = {(c_, h_, w_)}): recomputing that reproduces the "
                "TF output.", FIXES["flatten_order"], lambda f=flat_tf: f @ w.T + bias, input_chw=[c_, h_, w_]):
            break
        # the converse, seen in converter output: the data is flattened C*H*W (the port transposes
        # back to NCHW first) but the weight columns were permuted to H*W*C order
        flat_back = flat_caffe.reshape(n, h_, w_, c_).transpose(0, 3, 1, 2).reshape(n, -1)
        if case.attempt(out, "flatten_order",
                f"Everything matches up to the flatten; the port flattens the data in Caffe's C*H*W order but its "
                f"MatMul/Dense weight rows are permuted to H*W*C order (input C,H,W = {(c_, h_, w_)}): recomputing "
                "that reproduces the TF output.", "The data reaching this layer is already in Caffe's C*H*W order "
                "(the port transposes back to NCHW before flattening): use Caffe's weight as it is (`W.T` for a "
                "Dense/MatMul kernel), without permuting its rows to H*W*C.", lambda f=flat_back: f @ w.T + bias,
                input_chw=[c_, h_, w_], weight_order="H*W*C", data_order="C*H*W"):
            break
        case.attempt(out, "reshape_not_transpose", "The Dense kernel is Caffe's (N, K) weights reshaped to (K, N) "
             "instead of transposed: recomputing with it reproduces the TF output.", FIXES["reshape_not_transpose"],
             lambda f=flat_tf: f @ w.reshape(w.shape[1], w.shape[0]) + bias, where="weights")
    case.attempt(out, "reshape_not_transpose", "The Dense kernel is Caffe's (N, K) weights reshaped to (K, N) "
         "instead of transposed: recomputing with it reproduces the TF output.", FIXES["reshape_not_transpose"],
         lambda: flat_caffe @ w.reshape(w.shape[1], w.shape[0]) + bias, where="weights")
    case.set_reference(base)
    _input_scale_offset(case, out, base, b, lambda xx: ref.inner_product(xx, w, b))
    return out

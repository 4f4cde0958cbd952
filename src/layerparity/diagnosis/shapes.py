"""Step 1 of the decision list: the output shapes differ. Recompute Caffe's size
rules and say which one explains TF's shape."""

from __future__ import annotations

import numpy as np

from ..detections import detection_count
from ..errors import InputError
from ..layout import relayout_shape
from ..result import Diagnosis
from . import reference as ref
from ._core import CONF_FINGERPRINT, CONF_FORMULA, Case, pad_fix, rnd
from .detection import detection_output_rules
from .elementwise import concat_shape_rule, deconv_shape_rule, interp_shape_rule
from .pooling import pool_shape_rule, spp_shape_rule

INTERP_KINDS = {"Interp", "BilinearInterpolate", "Resize", "Upsample"}


def tf_shape_in_caffe_layout(case: Case) -> tuple[int, ...]:
    """The TF value's shape re-expressed in the Caffe probe's layout (as is when that cannot be done)."""
    shape = tuple(case.t_raw.shape)
    try:
        return relayout_shape(shape, case.tp.layout, case.tp.flat_shape, case.cp.layout, case.cp.flat_shape)
    except (ValueError, InputError):
        return shape


def conv_shape_rule(case: Case, t_shape: tuple[int, ...]) -> list[Diagnosis]:
    in_shape = case.input_shape()
    if in_shape is None or len(in_shape) != 4 or len(t_shape) != 4:
        return []
    k, s, p, d, _ = case.conv_geom()
    h, w = in_shape[2:]
    keff = (d[0] * (k[0] - 1) + 1, d[1] * (k[1] - 1) + 1)
    c_out = (ref.caffe_conv_out(h, k[0], s[0], p[0], d[0]), ref.caffe_conv_out(w, k[1], s[1], p[1], d[1]))
    valid = (ref.tf_valid_out(h, keff[0], s[0]), ref.tf_valid_out(w, keff[1], s[1]))
    same = (ref.tf_same_out(h, s[0]), ref.tf_same_out(w, s[1]))
    got = tuple(t_shape[2:])
    ev = dict(input_hw=[h, w], kernel=list(k), stride=list(s), pad=list(p), caffe_out=list(c_out),
              tf_valid_out=list(valid), tf_same_out=list(same), tf_out=list(got))
    if got == valid and got != c_out:
        return [case.diag("padding_mismatch", f"TF convolves 'VALID' ({got[0]}x{got[1]}) where Caffe pads {p[0]}x{p[1]} "
                          f"({c_out[0]}x{c_out[1]}).", pad_fix(p), CONF_FORMULA, **ev)]
    if got == same and got != c_out:
        return [case.diag("padding_mismatch", f"TF 'SAME' gives ceil(H/s) = {got[0]}x{got[1]}; Caffe's pad {p[0]}x{p[1]} "
                          f"gives {c_out[0]}x{c_out[1]}.", pad_fix(p), CONF_FORMULA, **ev)]
    # a layer whose geometry is not square (kernel 3x5, stride 1x2, pad 1x2) ported with H and W
    # swapped (kernel 5x3, stride 2x1, pad 2x1): a spatially transposed (MATLAB-convention) port
    swapped = (ref.caffe_conv_out(h, k[1], s[1], p[1], d[1]), ref.caffe_conv_out(w, k[0], s[0], p[0], d[0]))
    if got == swapped and got != c_out and (k[0], s[0], p[0], d[0]) != (k[1], s[1], p[1], d[1]):
        return [case.diag(
            "kernel_hw_swapped",
            f"TF's output size {got[0]}x{got[1]} is Caffe's size rule with height and width swapped (kernel "
            f"{k[1]}x{k[0]}, stride {s[1]}x{s[0]}, pad {p[1]}x{p[0]} instead of {k[0]}x{k[1]}, {s[0]}x{s[1]}, "
            f"{p[0]}x{p[1]}; Caffe gives {c_out[0]}x{c_out[1]}): the TF layer is Caffe's with H and W swapped.",
            "Use the kernel as `w.transpose(2, 3, 1, 0)` (kH, kW, I, O) and Caffe's (h, w) order for strides and "
            "pads; if every layer is swapped like this, the port takes spatially transposed input: declare it "
            "(`tf_layout=\"NWHC\"` / `--tf-layout NWHC`).", CONF_FORMULA, swapped_out=list(swapped), **ev)]
    return []


def reshaped_memory_rule(case: Case) -> list[Diagnosis]:
    """Same number of elements, shapes that do not line up: is the TF tensor a reshape of Caffe's blob?"""
    y, tr = case.y, case.t_raw
    if y.ndim != 4 or tr.size != y.size:
        return []
    n, c, h, w = y.shape
    fix = ("Move tensors between NCHW and NHWC with a transpose, never a reshape: `tf.transpose(x, [0, 3, 1, 2])` "
           "(NHWC->NCHW) or `[0, 2, 3, 1]` (NCHW->NHWC).")
    # TF computed NHWC, then reshaped its memory into Caffe's NCHW shape
    cand = tr.reshape(n, h, w, c).transpose(0, 3, 1, 2)
    r = case.resid(cand, target=y)
    if r <= 1e-4:
        return [case.diag(
            "reshape_not_transpose",
            f"The TF tensor {tuple(tr.shape)} is the NHWC result reshaped into Caffe's NCHW shape instead of "
            "transposed: read back as NHWC memory it equals Caffe's blob (the values are all there, in the wrong "
            "places).", fix, CONF_FORMULA + 0.05, where="output", residual_as_nhwc_memory=rnd(r))]
    cand = tr.reshape(n, c, h, w)
    r = case.resid(cand, target=y)
    if r <= 1e-4:
        if tuple(tr.shape) == tuple(y.shape):
            return [case.diag(
                "layout_declaration",
                f"The TF tensor is exactly Caffe's NCHW blob but is declared {case.tp.layout or 'without a layout'}: "
                "the port is right here, the declared layout is not.",
                "Declare the TF tensor's layout as NCHW (load_tf(..., data_format='channels_first'), or fix the "
                "layout of this op), or leave it in NHWC inside the port.", CONF_FORMULA, residual=rnd(r))]
        return [case.diag(
            "reshape_not_transpose",
            f"The TF tensor {tuple(tr.shape)} holds Caffe's NCHW memory reshaped to {case.tp.layout or 'another'} "
            "shape instead of transposed.", fix, CONF_FORMULA + 0.05, where="output", residual_as_nchw_memory=rnd(r))]
    d = float(np.max(np.abs(np.sort(y, axis=None) - np.sort(tr, axis=None)), initial=0.0)) / case.scale
    if d <= 1e-4:
        return [case.diag(
            "reshape_not_transpose",
            "The TF tensor holds exactly Caffe's values in another shape and order: a reshape or wrong transpose "
            "moved them.", fix, CONF_FINGERPRINT + 0.1, sorted_values_max_diff=rnd(d * case.scale))]
    return []


def shape_rules(case: Case) -> list[Diagnosis]:
    t_shape = tf_shape_in_caffe_layout(case)
    out: list[Diagnosis] = []
    k = case.ckind
    if k in ("pool_max", "pool_avg", "global_pool"):
        out += pool_shape_rule(case, t_shape)
    elif k in ("conv", "depthwise_conv"):
        out += conv_shape_rule(case, t_shape)
    elif k == "deconv":
        out += deconv_shape_rule(case, t_shape)
    elif k == "concat":
        out += concat_shape_rule(case, t_shape)
    elif case.ckind_raw in INTERP_KINDS or k == "resize":
        out += interp_shape_rule(case, t_shape)
    elif k == "spp":
        out += spp_shape_rule(case, t_shape)
    elif k == "detection_output":  # another number of detections: which parameter gives TF's
        out += detection_output_rules(case)
    for d in reshaped_memory_rule(case):  # ranked with the size rules by confidence
        d.layer = case.output_layer(d.kind)  # the TF tensor's layout, not a member of a chain
        out.append(d)
    if not out:
        y = case.y
        ev = {"caffe_shape": list(y.shape), "caffe_layout": case.cp.layout, "tf_shape": list(case.t_raw.shape),
              "tf_layout": case.tp.layout, "tf_shape_in_caffe_layout": list(t_shape)}
        t = case.tf_relayout() if k == "detection_output" else None
        rows = t is not None and t.ndim == 4 and t.shape[-1] == y.shape[-1] == 7  # ssd_keras's table read as rows
        if int(np.prod(y.shape)) == int(np.prod(case.t_raw.shape)) and not rows:
            ev["same_number_of_elements"] = True
            out.append(case.diag("shape_mismatch",
                                 f"Same number of elements, different shapes (Caffe {tuple(y.shape)} {case.cp.layout}, TF "
                                 f"{tuple(case.t_raw.shape)} {case.tp.layout}): a reshape or a wrongly declared layout.",
                                 "Check the Reshape/Flatten/Permute feeding this layer and the layout declared for it.",
                                 CONF_FINGERPRINT - 0.2, layer=case.output_layer(), **ev))
        elif rows and t is not None:  # another number of detections
            kept = detection_count(y)
            ev.update(caffe_detections=kept, tf_detections=int(t.shape[2]))
            out.append(case.diag("shape_mismatch",
                                 f"TF lists {t.shape[2]} detection(s) where Caffe lists {kept}, and no single "
                                 "DetectionOutput parameter changed alone gives TF's rows.",
                                 "Check the detection parameters together: Caffe takes each class's best "
                                 "nms_param.top_k scores above confidence_threshold, NMS's them at nms_threshold, then "
                                 "keeps the keep_top_k best over all classes (ssd_keras: its top_k is keep_top_k, its "
                                 "nms_max_output_size caps NMS's output where nms_param.top_k caps its input).",
                                 CONF_FINGERPRINT - 0.3, layer=case.output_layer(), **ev))
        else:
            out.append(case.diag("shape_mismatch",
                                 f"The output shapes differ (Caffe {tuple(y.shape)} {case.cp.layout}, TF "
                                 f"{tuple(case.t_raw.shape)} {case.tp.layout}, i.e. {t_shape} in Caffe's layout) and no "
                                 "size rule explains it.", "Compare the layer's parameters (kernel, stride, pad, axis) "
                                 "on both sides.", CONF_FINGERPRINT - 0.3, layer=case.output_layer(), **ev))
    return out

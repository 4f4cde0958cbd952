"""Caffe prototxt + weights -> a Keras 3 Functional model (NHWC), correct by default.

The port is what a careful engineer writes by hand: one Keras layer per Caffe
layer, named after it (``/`` becomes ``_``: Keras forbids it), explicit padding
(``ZeroPadding2D`` / a -inf ``Pad`` for MAX pooling) before 'valid' layers,
Caffe's ceil-mode pooling as extra bottom/right padding, AVE pooling as a
k*k-divided sum over the zero-padded input (Caffe's divisor counts the padding),
``BatchNormalization(center=False, scale=False)`` fed mean/S and var/S plus a
``Scale`` layer, InnerProduct after a spatial blob as ``Flatten`` + ``Dense``
with its rows permuted from C*H*W to H*W*C order, Caffe axis 1 as NHWC axis -1,
Dropout left out, SSD's ``Permute(0,2,3,1)`` as an identity. Time-major blobs (CRNN's
``Permute(3,0,1,2)`` top and after it: T x N x ...) are batch-major in Keras (N x T x ...);
an LSTM is ``RNN(ContLSTMCell)`` over the sequence with Caffe's ``cont`` (a ``Parameter``
constant, ``Const``) appended to each step, gates reordered i,f,o,g -> i,f,c,o; a BatchReindex of a
sequence by a constant index (CRNN's time reversals around its backward LSTM) is a gather along
Keras' T axis (``keras.ops.take(x, index, axis=1)``). Helper layers are
named ``<layer>_pad`` / ``<layer>_flatten`` / ``<layer>_cont`` / ``<layer>_x_and_cont``.

``bugs`` injects the classic porting mistakes, each named after the diagnosis kind
that should explain it (see :data:`BUGS`), at the first layer it applies to or
at a named layer: ``bugs=["pool_rounding"]`` or ``bugs=[("pool_rounding", "pool2")]``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from layerparity.layout import (
    conv_weight_caffe_to_tf,
    deconv_weight_caffe_to_tf,
    depthwise_weight,
    inner_product_weight_caffe_to_tf,
    lstm_weight_caffe_to_keras,
)

from .netspec import NetInfo, net_info, read_params, with_input_shape

#: What each injected bug does to the port.
BUG_DOC = {
    "padding_asymmetry": "stride>1 Convolution ported as Conv2D(padding='same') instead of explicit symmetric pad",
    "pool_rounding": "Pooling rounded down ('valid' after the symmetric pad) instead of Caffe's ceil",
    "avg_pool_padding_divisor": "AVE Pooling with pad ported as AveragePooling2D(padding='same') (divisor excludes padding)",
    "reshape_not_transpose": "Convolution kernel reshaped to (kH, kW, I, O) instead of transposed",
    "flatten_order": "InnerProduct after a spatial blob: Dense kernel = W.T, rows not permuted to H*W*C order",
    "channel_order": "first Convolution's input channels reversed (RGB vs BGR)",
    "kernel_flipped": "Convolution kernel rotated 180 degrees",
    "kernel_hw_swapped": "Convolution kernel with kH and kW swapped",
    "lrn_alpha_scaling": "LRN with TF alpha = Caffe alpha (not alpha / local_size)",
    "batchnorm_epsilon": "BatchNormalization with Keras' default epsilon 1e-3 instead of Caffe's eps",
    "batchnorm_scale_factor": "BatchNorm mean/var not divided by the scale factor blob S",
    "missing_scale": "the Scale layer after a BatchNorm left at gamma=1, beta=0",
    "softmax_axis": "Softmax over axis 1 (Caffe's channel axis number) instead of the NHWC channel axis",
    "concat_axis": "Concat along NHWC axis 1 (Caffe's axis number) instead of -1",
    "eltwise_coeff": "Eltwise SUM with coefficients ported as a plain Add",
    "leaky_slope": "ReLU(negative_slope) ported as LeakyReLU() with Keras' default slope 0.3",
    "prelu_shared_axes": "per-channel PReLU ported with one slope shared over channels",
    "constant_scale": "a Convolution's kernel and bias multiplied by 255",
    "constant_offset": "a Convolution's bias shifted by +1",
    "spatial_shift": "Crop offsets off by one",
    "interp_align_corners": "bilinear Interp ported as tf.image.resize (half-pixel) instead of align_corners",
    "lstm_gate_order": "LSTM weights copied in Caffe's gate order i,f,o,g where Keras reads i,f,c,o",
    "axis_reversed": "a BatchReindex reversing a sequence along T (CRNN's backward direction) left out",
    "priorbox_parameters": "PriorBox priors centred at (w + 0) * step instead of Caffe's offset (0.5)",
    "detection_output_parameters": "DetectionOutput NMS with IoU threshold 0.6 (the TF Object Detection API's SSD "
                                   "configs) instead of Caffe's nms_threshold",
}

SCALE_BUG_FACTOR = 255.0
BUG_NMS = 0.6
OFFSET_BUG_SHIFT = 1.0


def kname(caffe_name: str) -> str:
    """The Keras layer name of a Caffe layer."""
    return caffe_name.replace("/", "_")


# -- where a bug applies ------------------------------------------------------------


def _pair(rep, h, w, default):
    """[h, w] from a repeated field and optional _h/_w fields (``None`` when unset)."""
    if h is not None or w is not None:
        return [int(h), int(w)]
    if len(rep) == 0:
        return [default, default]
    return [int(rep[0]), int(rep[-1])] if len(rep) > 1 else [int(rep[0])] * 2


def conv_geom(lp) -> dict:
    cp = lp.convolution_param

    def hw(field):
        h, w = field + "_h", field + "_w"
        return (getattr(cp, h) if cp.HasField(h) else None, getattr(cp, w) if cp.HasField(w) else None)

    return {
        "k": _pair(cp.kernel_size, *hw("kernel"), 1),
        "s": _pair(cp.stride, *hw("stride"), 1),
        "p": _pair(cp.pad, *hw("pad"), 0),
        "d": _pair(cp.dilation, None, None, 1),
        "group": int(cp.group),
        "bias": bool(cp.bias_term),
        "n": int(cp.num_output),
    }


def pool_geom(lp, in_shape) -> dict:
    pp = lp.pooling_param

    def hw(field):
        h, w = field + "_h", field + "_w"
        return (getattr(pp, h) if pp.HasField(h) else None, getattr(pp, w) if pp.HasField(w) else None)

    if pp.global_pooling:
        return {"k": list(in_shape[2:]), "s": [1, 1], "p": [0, 0], "global": True, "ave": pp.pool == 1}
    return {
        "k": _pair([pp.kernel_size] if pp.HasField("kernel_size") else [], *hw("kernel"), 1),
        "s": _pair([pp.stride] if pp.HasField("stride") else [], *hw("stride"), 1),
        "p": _pair([pp.pad] if pp.HasField("pad") else [], *hw("pad"), 0),
        "global": False,
        "ave": pp.pool == 1,
    }


def caffe_pool_out(h: int, k: int, s: int, p: int, ceil: bool = True) -> int:
    """Caffe's pooled size: rounded up (or down), minus one if the last window starts in the padding."""
    span = h + 2 * p - k
    out = (-(-span // s) if ceil else span // s) + 1
    if p > 0 and (out - 1) * s >= h + p:
        out -= 1
    return out


def _same_out(h, k, s):
    return -(-h // s)


def _same_pad_top(h, k, s):
    out = _same_out(h, k, s)
    total = max((out - 1) * s + k - h, 0)
    return total // 2


def _is_depthwise(g, in_c, out_c):
    return g > 1 and g == in_c and out_c % in_c == 0


def _applies(kind: str, info: NetInfo, lp) -> bool:
    t = lp.type
    sh = info.shapes
    if kind in ("reshape_not_transpose", "kernel_flipped", "kernel_hw_swapped", "channel_order",
                "padding_asymmetry", "constant_scale", "constant_offset"):
        if t != "Convolution":
            return False
        g = conv_geom(lp)
        in_shape = sh[lp.bottom[0]]
        if kind == "reshape_not_transpose":
            return not _is_depthwise(g["group"], in_shape[1], g["n"]) and in_shape[1] // g["group"] * g["n"] > 1
        if kind == "kernel_flipped":
            return max(g["k"]) > 1
        if kind == "kernel_hw_swapped":
            return g["k"][0] == g["k"][1] > 1
        if kind == "channel_order":
            return lp.bottom[0] == info.input_blob and in_shape[1] > 1 and g["group"] == 1
        if kind == "padding_asymmetry":
            out_shape = sh[lp.top[0]]
            if max(g["s"]) == 1 or max(g["p"]) == 0 or g["d"] != [1, 1]:
                return False
            ks = [(kk - 1) * 1 + 1 for kk in g["k"]]
            same = [_same_out(in_shape[2 + i], ks[i], g["s"][i]) for i in range(2)]
            tops = [_same_pad_top(in_shape[2 + i], ks[i], g["s"][i]) for i in range(2)]
            return same == list(out_shape[2:]) and tops != g["p"]
        if kind == "constant_offset":
            return g["bias"]
        return True
    if kind in ("pool_rounding", "avg_pool_padding_divisor"):
        if t != "Pooling":
            return False
        in_shape, out_shape = sh[lp.bottom[0]], sh[lp.top[0]]
        pg = pool_geom(lp, in_shape)
        if pg["global"]:
            return False
        if kind == "pool_rounding":
            floor = [(in_shape[2 + i] + 2 * pg["p"][i] - pg["k"][i]) // pg["s"][i] + 1 for i in range(2)]
            return floor != list(out_shape[2:])
        same = [_same_out(in_shape[2 + i], pg["k"][i], pg["s"][i]) for i in range(2)]
        return pg["ave"] and max(pg["p"]) > 0 and same == list(out_shape[2:])
    if kind == "flatten_order":
        if t != "InnerProduct":
            return False
        s = sh[lp.bottom[0]]
        return len(s) == 4 and s[2] * s[3] > 1
    if kind == "lrn_alpha_scaling":
        return t == "LRN" and lp.lrn_param.norm_region == 0 and lp.lrn_param.local_size > 1
    if kind in ("batchnorm_epsilon", "batchnorm_scale_factor"):
        return t == "BatchNorm" and (kind != "batchnorm_epsilon" or abs(lp.batch_norm_param.eps - 1e-3) > 1e-6)
    if kind == "missing_scale":
        if t != "Scale":
            return False
        before = info.layers[: info.layers.index(lp)]
        prev = [p for p in before if lp.bottom[0] in p.top]
        return bool(prev) and prev[-1].type == "BatchNorm"
    if kind == "softmax_axis":
        if t != "Softmax":
            return False
        rank = len(sh[lp.bottom[0]])
        caffe_axis = lp.softmax_param.axis % rank
        keras_axis = rank - 1 if (rank == 4 and caffe_axis == 1) else caffe_axis
        return rank > 2 and keras_axis != 1
    if kind == "concat_axis":
        if t != "Concat":
            return False
        shapes = [sh[b] for b in lp.bottom]
        return all(len(s) == 4 for s in shapes) and len(set(shapes)) == 1 and lp.concat_param.axis == 1
    if kind == "eltwise_coeff":
        return t == "Eltwise" and lp.eltwise_param.operation == 1 and any(c != 1 for c in lp.eltwise_param.coeff)
    if kind == "leaky_slope":
        return t == "ReLU" and lp.relu_param.negative_slope != 0 and abs(lp.relu_param.negative_slope - 0.3) > 1e-6
    if kind == "prelu_shared_axes":
        return t == "PReLU" and not lp.prelu_param.channel_shared and len(sh[lp.bottom[0]]) == 4
    if kind == "spatial_shift":
        return t == "Crop"
    if kind == "interp_align_corners":
        return t == "BilinearInterpolate" and lp.bilinear_interpolate_param.align_corners
    if kind == "lstm_gate_order":
        return t == "LSTM"
    if kind == "axis_reversed":
        return t == "BatchReindex"
    if kind == "priorbox_parameters":
        return t == "PriorBox" and lp.prior_box_param.offset != 0
    if kind == "detection_output_parameters":
        dp = lp.detection_output_param
        return t == "DetectionOutput" and dp.HasField("nms_param") and abs(dp.nms_param.nms_threshold - BUG_NMS) > 1e-6
    raise ValueError(f"unknown bug kind {kind!r}; known: {sorted(BUG_DOC)}")


BUGS: tuple[str, ...] = tuple(BUG_DOC)


#: Bugs that change a blob's shape: they apply only where the rest of the port still
#: builds with the original weights (a real porter would otherwise have noticed).
SHAPE_CHANGING = ("pool_rounding", "concat_axis")


def applicable_layers(info: NetInfo, kind: str, first: bool = False) -> list[str]:
    """Caffe layer names where bug ``kind`` can be injected, in net order (``first``: the
    first one only, sparing the shapes-only builds of the others)."""
    where = []
    for lp in info.layers:
        if _applies(kind, info, lp) and _survives(info, lp.name, kind):
            where.append(lp.name)
            if first:
                break
    return where


def _survives(info: NetInfo, layer: str, kind: str) -> bool:
    """A shape-changing bug at ``layer`` leaves a port that still builds (memoized on ``info``)."""
    if kind not in SHAPE_CHANGING:
        return True
    key = (layer, kind)
    if key not in info.buildable:
        info.buildable[key] = _buildable(info, {layer: kind})
    return info.buildable[key]


def _buildable(info: NetInfo, plan: dict[str, str]) -> bool:
    try:
        _build(info, None, plan, shapes_only=True)
    except ValueError:
        return False
    return True


def plan_bugs(info: NetInfo, bugs: Iterable[str | tuple[str, str]]) -> dict[str, str]:
    """``{caffe layer: bug kind}`` for ``bugs`` (first applicable layer unless named)."""
    plan: dict[str, str] = {}
    for b in bugs:
        kind, layer = (b, None) if isinstance(b, str) else b
        if kind not in BUG_DOC:
            raise ValueError(f"unknown bug kind {kind!r}; known: {sorted(BUG_DOC)}")
        if layer is None:
            where = applicable_layers(info, kind, first=True)
            if not where:
                raise ValueError(f"{info.prototxt}: bug {kind!r} applies to no layer")
            layer = where[0]
        elif not any(lp.name == layer and _applies(kind, info, lp) for lp in info.layers) or not _survives(
                info, layer, kind):
            raise ValueError(f"{info.prototxt}: bug {kind!r} does not apply to layer {layer!r} "
                             f"(applies to {applicable_layers(info, kind)})")
        if layer in plan:
            raise ValueError(f"two bugs at layer {layer!r}: {plan[layer]!r} and {kind!r}")
        plan[layer] = kind
    return plan


# -- the builder --------------------------------------------------------------------


@dataclass
class _T:
    """A Caffe blob on the Keras side: the tensor and how its axes relate to Caffe's."""

    x: object
    layout: str  # "nhwc": Caffe NCHW transposed; "same": same axes as Caffe; "flat": Keras Flatten of NHWC;
    # "tnc": a time-major Caffe blob (T x N x ...) batch-major in Keras (its axes 0 and 1 swapped)
    chw: tuple[int, int, int] | None = None  # for "flat": the (C, H, W) that was flattened


def _resolve(prototxt, input_shape, tmpdir) -> NetInfo:
    info = net_info(prototxt)
    info.resolved = info.prototxt
    if input_shape is not None and tuple(info.shapes[info.input_blob]) != tuple(input_shape):
        path = with_input_shape(prototxt, tuple(input_shape), os.path.join(tmpdir, "deploy.prototxt"))
        info = net_info(path)
        info.resolved = path
        info.prototxt = os.fspath(prototxt)
    return info


def build_keras(
    prototxt: str | os.PathLike[str] | NetInfo,
    caffemodel_or_params: str | os.PathLike[str] | dict[str, list[np.ndarray]],
    input_shape: tuple[int, int, int, int] | None = None,
    bugs: Iterable[str | tuple[str, str]] = (),
    shapes_only: bool = False,
):
    """A Keras Functional model (NHWC) porting ``prototxt`` with its weights.

    ``prototxt`` may be a path or an already parsed :class:`NetInfo` (then the
    weights must be a dict). ``caffemodel_or_params``: a .caffemodel or
    ``{layer: [blobs in Caffe's layout]}``. ``input_shape`` is Caffe's (N, C, H, W)
    (default: the prototxt's). ``bugs``: see :data:`BUG_DOC` and :func:`plan_bugs`.
    ``shapes_only`` builds the layers, checks every weight shape and returns None
    (how :func:`applicable_layers` tells a shape-changing bug the port survives).
    The model's input is named after the Caffe input blob; every Caffe layer that
    computes something has a Keras layer of the same name (``/`` -> ``_``).
    """
    if isinstance(prototxt, NetInfo):  # already parsed (the matrix builds one net many times)
        if input_shape is not None and tuple(prototxt.shapes[prototxt.input_blob]) != tuple(input_shape):
            raise ValueError(f"{prototxt.prototxt}: parsed for input {prototxt.shapes[prototxt.input_blob]}, not {input_shape}")
        if not isinstance(caffemodel_or_params, dict):
            raise ValueError("pass the parameters as a dict with a parsed NetInfo")
        return _build(prototxt, caffemodel_or_params, plan_bugs(prototxt, bugs), shapes_only=shapes_only,
                      name=os.path.splitext(os.path.basename(prototxt.prototxt))[0])
    with tempfile.TemporaryDirectory() as tmp:
        info = _resolve(os.fspath(prototxt), input_shape, tmp)
        if caffemodel_or_params is None or isinstance(caffemodel_or_params, dict):
            params = caffemodel_or_params
        else:
            params = read_params(info.resolved, os.fspath(caffemodel_or_params))
    return _build(info, params, plan_bugs(info, bugs), shapes_only=shapes_only,
                  name=os.path.splitext(os.path.basename(os.fspath(prototxt)))[0])


def _build(info: NetInfo, params, plan: dict[str, str], shapes_only: bool = False, name: str = "port"):
    import keras

    from . import layers as L

    if params is None:
        if not shapes_only:
            raise ValueError("weights are needed unless shapes_only")
        params = {n: [np.zeros(s, np.float32) for s in shapes] for n, shapes in info.param_shapes.items()}
    model_name = name
    sh = info.shapes
    n, c, h, w = sh[info.input_blob]
    inp = keras.Input(shape=(h, w, c), name=kname(info.input_blob))
    blobs: dict[str, _T] = {info.input_blob: _T(inp, "nhwc")}
    weights: list[tuple[object, list[np.ndarray]]] = []

    def add(layer, ws=None):
        if ws is not None:
            weights.append((layer, ws))
        return layer

    for lp in info.layers:
        t, name = lp.type, kname(lp.name)
        bug = plan.get(lp.name)
        ins = [blobs[b] for b in lp.bottom]
        p = params.get(lp.name, [])
        top = lp.top[0] if lp.top else None
        out_shape = sh.get(top) if top else None

        if t == "Input":
            continue
        if t == "Dropout":
            blobs[top] = ins[0]
            continue
        if t in ("Convolution", "Deconvolution"):
            blobs[top] = _T(_conv(keras, lp, name, ins[0], sh, p, bug, info, add), "nhwc")
        elif t == "Pooling":
            blobs[top] = _T(_pool(keras, L, lp, name, ins[0], sh, bug), "nhwc")
        elif t == "ReLU":
            slope = lp.relu_param.negative_slope
            if slope == 0:
                y = keras.layers.ReLU(name=name)(ins[0].x)
            elif bug == "leaky_slope":
                y = keras.layers.LeakyReLU(name=name)(ins[0].x)
            else:
                y = keras.layers.LeakyReLU(negative_slope=slope, name=name)(ins[0].x)
            blobs[top] = _T(y, ins[0].layout, ins[0].chw)
        elif t == "PReLU":
            slope = p[0]
            rank = len(sh[lp.bottom[0]])
            if bug == "prelu_shared_axes":
                layer = keras.layers.PReLU(shared_axes=[1, 2, 3], name=name)
                ws = [np.full((1, 1, 1), slope.mean(), np.float32)]
            elif rank == 4:
                layer = keras.layers.PReLU(shared_axes=[1, 2], name=name)
                ws = [np.broadcast_to(slope, (1, 1, slope.size)).copy()]
            else:
                layer = keras.layers.PReLU(name=name)
                ws = [np.broadcast_to(slope, (sh[lp.bottom[0]][1],)).copy()]
            blobs[top] = _T(add(layer, ws)(ins[0].x), ins[0].layout, ins[0].chw)
        elif t == "LRN":
            lr = lp.lrn_param
            if lr.norm_region != 0:
                raise NotImplementedError(f"{lp.name}: LRN WITHIN_CHANNEL")
            alpha = lr.alpha if bug == "lrn_alpha_scaling" else lr.alpha / lr.local_size
            y = L.LRN(lr.local_size // 2, lr.k, alpha, lr.beta, name=name)(ins[0].x)
            blobs[top] = _T(y, "nhwc")
        elif t == "BatchNorm":
            mean, var, s = p[0], p[1], float(p[2][0])
            f = 0.0 if s == 0 else 1.0 / s
            if bug == "batchnorm_scale_factor":
                f = 1.0
            eps = lp.batch_norm_param.eps
            layer = keras.layers.BatchNormalization(
                center=False, scale=False, epsilon=1e-3 if bug == "batchnorm_epsilon" else eps, name=name)
            blobs[top] = _T(add(layer, [mean * f, var * f])(ins[0].x), ins[0].layout, ins[0].chw)
        elif t == "Scale":
            bias = lp.scale_param.bias_term
            ws = [p[0], p[1]] if bias else [p[0]]
            if bug == "missing_scale":
                ws = [np.ones_like(p[0])] + ([np.zeros_like(p[1])] if bias else [])
            blobs[top] = _T(add(L.Scale(bias_term=bias, name=name), ws)(ins[0].x), ins[0].layout, ins[0].chw)
        elif t == "Eltwise":
            ep = lp.eltwise_param
            xs = [i.x for i in ins]
            if ep.operation == 1:
                coeff = list(ep.coeff) or [1.0] * len(xs)
                if all(cf == 1 for cf in coeff) or bug == "eltwise_coeff":
                    y = keras.layers.Add(name=name)(xs)
                else:
                    y = L.Eltwise(coeff, name=name)(xs)
            elif ep.operation == 0:
                y = keras.layers.Multiply(name=name)(xs)
            else:
                y = keras.layers.Maximum(name=name)(xs)
            blobs[top] = _T(y, ins[0].layout, ins[0].chw)
        elif t == "Concat":
            axis = lp.concat_param.axis
            layout = ins[0].layout
            if layout == "nhwc":
                kaxis = 1 if bug == "concat_axis" else {1: -1, 2: 1, 3: 2}[axis % 4]
            else:
                kaxis = axis
            blobs[top] = _T(keras.layers.Concatenate(axis=kaxis, name=name)([i.x for i in ins]), layout)
        elif t == "InnerProduct":
            src = ins[0]
            x = src.x
            chw = None
            if src.layout == "tnc" and lp.inner_product_param.axis != len(sh[lp.bottom[0]]) - 1:
                raise NotImplementedError(f"{lp.name}: InnerProduct of a sequence over more than its last axis")
            if src.layout == "nhwc":
                chw = tuple(sh[lp.bottom[0]][1:])
                x = keras.layers.Flatten(name=name + "_flatten")(x)
            elif src.layout == "flat":
                chw = src.chw
            wk = p[0]
            if bug == "flatten_order" or chw is None:
                kernel = wk.T
            else:
                kernel = inner_product_weight_caffe_to_tf(wk, chw)
            use_bias = lp.inner_product_param.bias_term
            layer = keras.layers.Dense(lp.inner_product_param.num_output, use_bias=use_bias, name=name)
            blobs[top] = _T(add(layer, [kernel, p[1]] if use_bias else [kernel])(x),
                            "tnc" if src.layout == "tnc" else "same")
        elif t == "Softmax":
            rank = len(sh[lp.bottom[0]])
            caffe_axis = lp.softmax_param.axis % rank
            axis = rank - 1 if (ins[0].layout == "nhwc" and caffe_axis == 1) else caffe_axis
            if ins[0].layout == "tnc":
                axis = {0: 1, 1: 0}.get(caffe_axis, caffe_axis)
            if bug == "softmax_axis":
                axis = 1
            blobs[top] = _T(keras.layers.Softmax(axis=axis, name=name)(ins[0].x), ins[0].layout, ins[0].chw)
        elif t == "Flatten":
            src = ins[0]
            y = keras.layers.Flatten(name=name)(src.x)
            if src.layout == "nhwc" and len(sh[lp.bottom[0]]) == 4:
                blobs[top] = _T(y, "flat", tuple(sh[lp.bottom[0]][1:]))
            else:
                blobs[top] = _T(y, "same")
        elif t == "Reshape" and ins[0].layout == "nhwc" and len(out_shape) == 4:
            from . import rcnn  # Faster R-CNN's RPN score reshapes: on NCHW memory order

            blobs[top] = _T(rcnn.nchw_reshape(lp, name, ins[0].x), "nhwc")
        elif t == "Reshape" and ins[0].layout == "tnc":
            # Caffe's T x N x ... reshaped keeping T and N: Keras reshapes the rest of N x T x ...
            if tuple(out_shape[:2]) != tuple(sh[lp.bottom[0]][:2]):
                raise NotImplementedError(f"{lp.name}: Reshape of a sequence that moves T or N")
            y = keras.layers.Reshape((out_shape[0], *out_shape[2:]), name=name)(ins[0].x)
            blobs[top] = _T(y, "tnc")
        elif t == "Reshape":
            if ins[0].layout not in ("same",):
                raise NotImplementedError(f"{lp.name}: Reshape of an NHWC blob")
            dims = list(lp.reshape_param.shape.dim)[1:]
            target = tuple(int(ins[0].x.shape[i + 1]) if d == 0 else int(d) for i, d in enumerate(dims))
            y = keras.layers.Reshape(target, name=name)(ins[0].x)
            blobs[top] = _T(y, "same")
        elif t == "Permute":
            order = list(lp.permute_param.order)
            if order == [0, 2, 3, 1] and ins[0].layout == "nhwc":
                blobs[top] = _T(keras.layers.Identity(name=name)(ins[0].x), "same")
            elif order == [3, 0, 1, 2] and ins[0].layout == "nhwc":
                # CRNN: N x C x H x W -> W x N x C x H, time-major; Keras keeps N first: N x W x C x H
                blobs[top] = _T(keras.layers.Permute((2, 3, 1), name=name)(ins[0].x), "tnc")
            else:
                raise NotImplementedError(f"{lp.name}: Permute {order}")
        elif t == "Normalize":
            npar = lp.norm_param
            layer = L.Normalize(npar.across_spatial, npar.channel_shared, npar.eps, name=name)
            blobs[top] = _T(add(layer, [p[0].reshape(-1)])(ins[0].x), "nhwc")
        elif t == "Crop":
            blobs[top] = _T(_crop(keras, lp, name, ins[0], sh, bug), "nhwc")
        elif t == "BilinearInterpolate":
            size = tuple(out_shape[2:])
            y = L.Interp(size, align_corners=bug != "interp_align_corners", name=name)(ins[0].x)
            blobs[top] = _T(y, "nhwc")
        elif t == "Parameter":
            # a constant of the deploy net (a recurrent layer's cont), in Caffe's own shape
            blobs[top] = _T(L.Const(p[0], name=name)(inp), "const")
        elif t == "LSTM":
            blobs[top] = _T(_lstm(keras, L, lp, name, ins, p, bug, add), "tnc")
        elif t == "BatchReindex":
            blobs[top] = _T(_batch_reindex(keras, lp, name, ins, bug), "tnc")
        elif t == "PriorBox":
            img = sh[lp.bottom[1]] if len(lp.bottom) > 1 else None
            pri = prior_boxes(lp.prior_box_param, sh[lp.bottom[0]][2:], img[2:] if img is not None else None,
                              offset=0.0 if bug == "priorbox_parameters" else None)
            blobs[top] = _T(L.PriorBox(pri, name=name)(ins[0].x), "const")
        elif t == "DetectionOutput":
            dp = lp.detection_output_param
            if not dp.share_location or dp.code_type != 2 or dp.variance_encoded_in_target:
                raise NotImplementedError(f"{lp.name}: DetectionOutput other than shared CENTER_SIZE locations")
            layer = L.DetectionOutput(dp.num_classes, dp.background_label_id, dp.confidence_threshold,
                                      BUG_NMS if bug == "detection_output_parameters" else dp.nms_param.nms_threshold,
                                      dp.nms_param.top_k, dp.keep_top_k, name=name)
            blobs[top] = _T(layer([i.x for i in ins]), "same")
        elif t == "Sigmoid":
            blobs[top] = _T(keras.layers.Activation("sigmoid", name=name)(ins[0].x), ins[0].layout, ins[0].chw)
        elif t == "TanH":
            blobs[top] = _T(keras.layers.Activation("tanh", name=name)(ins[0].x), ins[0].layout, ins[0].chw)
        elif t == "Python":
            from . import rcnn  # the zoo's Python layers (fixtures/zoo/pylayers) ported in TF ops

            y = rcnn.python_layer(lp, name, [i.x for i in ins])
            blobs[top] = _T(y, "nhwc" if len(out_shape) == 4 else "same")
        else:
            raise NotImplementedError(f"{info.prototxt}: layer {lp.name!r} of type {t!r} has no port")

    if shapes_only:
        for layer, ws in weights:
            want = [tuple(v.shape) for v in layer.weights]
            if want != [tuple(np.shape(a)) for a in ws]:
                raise ValueError(f"layer {layer.name}: weights {[np.shape(a) for a in ws]} do not fit {want}")
        return None
    outputs = _outputs(info, blobs)
    model = keras.Model(inp, outputs, name=model_name)
    for layer, ws in weights:
        layer.set_weights([np.asarray(a, np.float32) for a in ws])
    return model


def _outputs(info: NetInfo, blobs: dict[str, _T]) -> list:
    consumed = {b for lp in info.layers for b in lp.bottom if b not in lp.top}
    outs = []
    for lp in info.layers:
        for top in lp.top:
            if lp.type != "Input" and top not in consumed and blobs[top].x not in outs:
                outs.append(blobs[top].x)
    return outs


def prior_boxes(pp, feat_hw, img_hw, offset: float | None = None) -> np.ndarray:
    """Caffe's PriorBox (this build's prior_box_layer.cpp): 1 x 2 x (H*W*P*4), boxes then variances.
    Min and max sizes are read as ints, the aspect ratios start with 1 (then each new one and,
    with flip, its inverse), per cell: min box, sqrt(min*max) box, the other ratios."""
    fh, fw = (int(v) for v in feat_hw)
    ih, iw = (pp.img_h, pp.img_w) if pp.img_h and pp.img_w else (int(pp.img_size),) * 2 if pp.img_size else img_hw
    sh_, sw_ = (pp.step_h, pp.step_w) if pp.step_h and pp.step_w else (pp.step,) * 2 if pp.step else (ih / fh, iw / fw)
    offset = pp.offset if offset is None else offset
    ars = [1.0]
    for a in pp.aspect_ratio:
        if all(abs(a - b) >= 1e-6 for b in ars):
            ars.append(a)
            if pp.flip:
                ars.append(1.0 / a)
    out = []
    for h in range(fh):
        for w in range(fw):
            cx, cy = (w + offset) * sw_, (h + offset) * sh_
            for s, mn in enumerate(pp.min_size):
                mn = int(mn)
                sizes = [(mn, mn)]
                if len(pp.max_size):
                    sizes.append((np.sqrt(mn * int(pp.max_size[s])),) * 2)
                sizes += [(mn * np.sqrt(a), mn / np.sqrt(a)) for a in ars if abs(a - 1.0) >= 1e-6]
                for bw, bh in sizes:
                    out += [(cx - bw / 2.0) / iw, (cy - bh / 2.0) / ih, (cx + bw / 2.0) / iw, (cy + bh / 2.0) / ih]
    boxes = np.asarray(out, np.float32)
    if pp.clip:
        boxes = np.clip(boxes, 0.0, 1.0)
    var = list(pp.variance) or [0.1]
    var = np.full(boxes.shape, var[0], np.float32) if len(var) == 1 else np.tile(np.asarray(var, np.float32), len(boxes) // 4)
    return np.stack([boxes, var])[None]


def _lstm(keras, L, lp, name, ins: list[_T], p, bug, add: Callable):
    """Caffe LSTM (x: T x N x C, cont: T x N) as Keras RNN(ContLSTMCell) over N x T x (C + 1):
    the cont flags transposed to batch-major and appended to each step's input."""
    rp = lp.recurrent_param
    if len(ins) != 2 or rp.expose_hidden or ins[0].layout != "tnc" or ins[1].layout != "const":
        raise NotImplementedError(f"{lp.name}: LSTM other than x (a sequence) + cont (a constant)")
    cont = keras.layers.Lambda(lambda c: keras.ops.expand_dims(keras.ops.transpose(c), -1),
                               name=name + "_cont")(ins[1].x)
    seq = keras.layers.Concatenate(name=name + "_x_and_cont")([ins[0].x, cont])
    wx, b, wh = p
    if bug == "lstm_gate_order":
        ws = [wx.T, wh.T, b]
    else:
        ws = [lstm_weight_caffe_to_keras(wx), lstm_weight_caffe_to_keras(wh), lstm_weight_caffe_to_keras(b)]
    layer = keras.layers.RNN(L.ContLSTMCell(int(rp.num_output)), return_sequences=True, name=name)
    return add(layer, [np.ascontiguousarray(w) for w in ws])(seq)


def _batch_reindex(keras, lp, name, ins: list[_T], bug=None):
    """Caffe BatchReindex (top[i] = bottom[index[i]] along axis 0) of a time-major sequence, its
    index a constant of the deploy net: a gather along T, which is axis 1 of Keras' N x T x C.
    (CRNN's index reverses T: the input of the backward LSTM, and that LSTM's output back in
    time order; the port mirrors both reversals, so each Keras output holds Caffe's blob.)
    Bug ``axis_reversed``: the reordering left out (the layer passes its sequence through)."""
    if len(ins) != 2 or ins[0].layout != "tnc" or ins[1].layout != "const":
        raise NotImplementedError(f"{lp.name}: BatchReindex other than a sequence reordered along T by a constant")
    if bug == "axis_reversed":
        return keras.layers.Lambda(lambda ts: ts[0], name=name)([ins[0].x, ins[1].x])
    return keras.layers.Lambda(lambda ts: keras.ops.take(ts[0], keras.ops.cast(ts[1], "int32"), axis=1),
                               name=name)([ins[0].x, ins[1].x])


def _conv(keras, lp, name, src: _T, sh, p, bug, info, add: Callable):
    g = conv_geom(lp)
    in_c = sh[lp.bottom[0]][1]
    wk = p[0]
    bias = p[1] if g["bias"] else None
    kh, kw = g["k"]
    if lp.type == "Deconvolution":
        if g["group"] != 1 or g["d"] != [1, 1]:
            raise NotImplementedError(f"{lp.name}: grouped or dilated Deconvolution")
        layer = keras.layers.Conv2DTranspose(g["n"], (kh, kw), strides=g["s"], padding="valid",
                                             use_bias=g["bias"], name=name if max(g["p"]) == 0 else name + "_full")
        y = add(layer, [deconv_weight_caffe_to_tf(wk)] + ([bias] if bias is not None else []))(src.x)
        if max(g["p"]) > 0:
            ph, pw = g["p"]
            y = keras.layers.Cropping2D(((ph, ph), (pw, pw)), name=name)(y)
        return y
    if bug == "channel_order":
        wk = wk[:, ::-1]
    elif bug == "kernel_flipped":
        wk = wk[:, :, ::-1, ::-1]
    elif bug == "kernel_hw_swapped":
        wk = wk.transpose(0, 1, 3, 2)
    elif bug == "constant_scale":
        wk = wk * SCALE_BUG_FACTOR
        bias = bias * SCALE_BUG_FACTOR if bias is not None else None
    elif bug == "constant_offset":
        bias = bias + OFFSET_BUG_SHIFT
    x = src.x
    if bug == "padding_asymmetry":
        padding = "same"
    else:
        padding = "valid"
        if max(g["p"]) > 0:
            ph, pw = g["p"]
            x = keras.layers.ZeroPadding2D(((ph, ph), (pw, pw)), name=name + "_pad")(x)
    common = dict(strides=tuple(g["s"]), padding=padding, dilation_rate=tuple(g["d"]), use_bias=g["bias"], name=name)
    if _is_depthwise(g["group"], in_c, g["n"]):
        layer = keras.layers.DepthwiseConv2D((kh, kw), depth_multiplier=g["n"] // in_c, **common)
        kernel = depthwise_weight(wk, in_c)
    else:
        layer = keras.layers.Conv2D(g["n"], (kh, kw), groups=g["group"], **common)
        if bug == "reshape_not_transpose":
            kernel = wk.reshape(kh, kw, wk.shape[1], wk.shape[0])
        else:
            kernel = conv_weight_caffe_to_tf(wk)
    return add(layer, [np.ascontiguousarray(kernel)] + ([bias] if bias is not None else []))(x)


def _pool(keras, L, lp, name, src: _T, sh, bug):
    # Sizes come from the Keras tensor, as in a hand-written port (an upstream bug may have
    # changed them); Caffe's own rule decides the output size.
    in_shape = (None, None, *src.x.shape[1:3])
    g = pool_geom(lp, sh[lp.bottom[0]])
    if g["global"]:
        cls = keras.layers.GlobalAveragePooling2D if g["ave"] else keras.layers.GlobalMaxPooling2D
        return cls(keepdims=True, name=name)(src.x)
    (kh, kw), (sh_, sw), (ph, pw) = g["k"], g["s"], g["p"]
    if bug == "avg_pool_padding_divisor":
        return keras.layers.AveragePooling2D((kh, kw), (sh_, sw), padding="same", name=name)(src.x)
    oh, ow = (caffe_pool_out(in_shape[2 + i], g["k"][i], g["s"][i], g["p"][i], ceil=bug != "pool_rounding")
              for i in range(2))
    # Bottom/right padding that makes a 'valid' pool produce exactly oh x ow windows.
    eb = max((oh - 1) * sh_ + kh - in_shape[2] - ph, 0)
    er = max((ow - 1) * sw + kw - in_shape[3] - pw, 0)
    x = src.x
    if g["ave"]:
        if eb > ph or er > pw:
            # Caffe clips the divisor of windows that hang over the padded border.
            raise NotImplementedError(f"{lp.name}: AVE pooling whose last window overhangs the padding")
        if ph or pw or eb or er:
            x = keras.layers.ZeroPadding2D(((ph, eb), (pw, er)), name=name + "_pad")(x)
        return keras.layers.AveragePooling2D((kh, kw), (sh_, sw), padding="valid", name=name)(x)
    if ph or pw or eb or er:
        x = L.Pad(((ph, eb), (pw, er)), value=float(np.finfo(np.float32).min), name=name + "_pad")(x)
    return keras.layers.MaxPooling2D((kh, kw), (sh_, sw), padding="valid", name=name)(x)


def _crop(keras, lp, name, src: _T, sh, bug):
    cp = lp.crop_param
    if cp.axis != 2:
        raise NotImplementedError(f"{lp.name}: Crop axis {cp.axis}")
    in_shape, ref = (None, None, *src.x.shape[1:3]), sh[lp.bottom[1]]
    offs = list(cp.offset) or [0]
    oh, ow = (offs * 2)[:2] if len(offs) == 1 else offs[:2]
    if bug == "spatial_shift":
        oh = oh + 1 if oh + 1 + ref[2] <= in_shape[2] else oh - 1
        ow = ow + 1 if ow + 1 + ref[3] <= in_shape[3] else ow - 1
    return keras.layers.Cropping2D(
        ((oh, in_shape[2] - oh - ref[2]), (ow, in_shape[3] - ow - ref[3])), name=name)(src.x)

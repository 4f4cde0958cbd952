"""Caffe layer types of the element-wise, normalisation and blob-plumbing family, each
"captured and aligned" by layerparity against real Caffe and real TensorFlow: for each
type in ``COVERED``, a tiny real Caffe net holding the layer (non-default parameters,
inputs that exercise it) and a Keras port written as a porter would write it are
compared with the real engine. The correct port passes with the layer in a compared
row's chain (not unmapped, not uncovered); a plausible porting bug of that layer fails
with the first divergence's chain holding the layer.

``COVERED`` and ``NOT_YET`` are read by the docs/layers.md generator (by AST: plain
dict literals of str -> str)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

from diagnose_cases import (
    assert_clean,
    caffe_net,
    compare,
    conv_w,
    f32,
    hwio,
    keras,
    keras_input,
    prototxt,
    rng,
)
from layerparity.keras_layers import lrn_layer_class

#: Caffe type -> the TF/Keras counterpart its correct port in this file uses.
COVERED = {
    "AbsVal": "keras Lambda(keras.ops.abs)",
    "BNLL": "keras Activation('softplus')",
    "Exp": "keras Lambda: base ** (shift + scale * x)",
    "Log": "keras Lambda: log(shift + scale * x) / log(base)",
    "Power": "keras Lambda: (shift + scale * x) ** power",
    "Threshold": "keras Lambda: cast(x > threshold, float32)",
    "HardSigmoid": "keras Lambda: clip(alpha * x + beta, 0, 1)",
    "HardSwish": "keras Activation('hard_swish')",
    "ReLU": "keras LeakyReLU(negative_slope)",
    "ReLU6": "keras ReLU(max_value=6)",
    "ELU": "keras ELU(alpha)",
    "PReLU": "keras PReLU(shared_axes=[1, 2])",
    "Sigmoid": "keras Activation('sigmoid')",
    "TanH": "keras Activation('tanh')",
    "Softmax": "keras Softmax(axis=-1)",
    "Bias": "keras Lambda: x + beta (per channel, last axis)",
    "Scale": "keras Lambda: x * gamma + beta (per channel, last axis)",
    "BatchNorm": "keras BatchNormalization(center=False, scale=False), stats divided by the scale factor",
    "BatchNormKyle": "keras BatchNormalization (gamma, beta = the fork's alpha, beta blobs); TF FusedBatchNormV3",
    "MVN": "keras Lambda: (x - mean) / (std + eps) over H, W",
    "Normalize": "keras Lambda: x / sqrt(sum_C x^2 + eps) * scale",
    "LRN": "layerparity.keras_layers LRN (tf.nn.local_response_normalization, alpha / local_size)",
    "Eltwise": "keras Lambda: x1 - 0.5 * x2 (SUM with coeff 1, -0.5)",
    "Concat": "keras Concatenate(axis=-1)",
    "Slice": "keras Lambda: keras.ops.split(x, [1, 3], axis=-1), one layer with three outputs",
    "Split": "nothing: the port reads the tensor twice (each copy compared against the split's input)",
    "Silence": "nothing: the silenced output computed and left unused (Silence has no top, so no probe; "
               "a port that never computes the silenced top still fails: it counts as a net output)",
    "Dropout": "keras Dropout (identity at inference)",
    "Reduction": "keras Lambda: coeff * keras.ops.mean(x, axis=(1, 2))",
    "ArgMax": "keras Lambda: cast(expand_dims(argmax(x, axis=-1), -1), float32)",
    "Flatten": "keras Permute((3, 1, 2)) then Reshape (axis 2: a 3-D blob); keras Flatten (axis 1)",
    "Reshape": "keras Permute((3, 1, 2)) then Reshape",
    "Unsqueeze": "keras Lambda: keras.ops.expand_dims(x, 2) on an (N, C) blob",
    "Tile": "keras Lambda: keras.ops.tile(x, (1, 1, 1, tiles))",
    "Filter": "keras Lambda: tf.boolean_mask(x, selector != 0) (selector a second input)",
    "BatchReindex": "keras Lambda: keras.ops.take(x, indices, axis=0) (indices a second input; "
                    "only as many indices as items: inputs must agree on the batch size)",
    "Parameter": "a keras layer holding the blob as its weight and returning it (or the blob folded "
                 "into its consumer: left unmapped, not required)",
}

#: Caffe types of this family not covered, and why (honest: what fails or is missing).
NOT_YET = {}


@dataclass
class Case:
    """One Caffe layer under test: the net, its Keras port and the input."""

    net: object
    model: object
    x: np.ndarray | dict[str, np.ndarray]
    layer: str  # the Caffe layer under test
    kw: dict = field(default_factory=dict)  # extra compare() arguments


SHAPE = (1, 3, 5, 5)
CONV = ('layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"\n'
        '  convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }\n')


def _after_conv(tmp_path, caffe_layer: str, keras_layer, *, x_scale: float = 1.0, params=None) -> Case:
    """data -> conv1 (3 -> 4 channels) -> THE LAYER (in place on conv1 where Caffe allows it);
    the port is Conv2D(name conv1) -> ``keras_layer`` (named like the Caffe layer)."""
    w, b = conv_w(4, 3, 3, seed=7)
    body = CONV + caffe_layer + "\n"
    net = caffe_net(tmp_path, prototxt({"data": SHAPE}, body), {"conv1": [w, b], **(params or {})})
    inp = keras_input(SHAPE)
    conv = keras.layers.Conv2D(4, 3, padding="same", name="conv1")
    model = keras.Model(inp, keras_layer(conv(inp)))
    conv.set_weights([hwio(w), b])
    x = f32(rng(3).standard_normal(SHAPE) * x_scale)
    return Case(net, model, x, _name_of(caffe_layer))


def _on_input(tmp_path, caffe_layer: str, keras_layer, x: np.ndarray, params=None, shape=SHAPE) -> Case:
    """data -> THE LAYER; the port is Input -> ``keras_layer``."""
    net = caffe_net(tmp_path, prototxt({"data": shape}, caffe_layer + "\n"), params)
    inp = keras_input(shape)
    model = keras.Model(inp, keras_layer(inp))
    return Case(net, model, f32(x), _name_of(caffe_layer))


def _name_of(layer_text: str) -> str:
    return layer_text.split('name: "', 1)[1].split('"', 1)[0]


def _lambda(fn: Callable, name: str):
    return keras.layers.Lambda(fn, name=name)


def _normal(scale: float = 1.0, shape=SHAPE, seed: int = 3) -> np.ndarray:
    return f32(rng(seed).standard_normal(shape) * scale)


# -- activations and other neurons --------------------------------------------------


def case_absval(tmp_path, wrong: bool) -> Case:
    layer = keras.layers.Activation("relu", name="abs1") if wrong else _lambda(keras.ops.abs, "abs1")
    return _after_conv(tmp_path, 'layer { name: "abs1" type: "AbsVal" bottom: "conv1" top: "abs1" }', layer)


def case_bnll(tmp_path, wrong: bool) -> Case:
    # wrong: BNLL taken for a smooth ReLU and ported as a ReLU
    layer = keras.layers.Activation("relu" if wrong else "softplus", name="bnll1")
    return _after_conv(tmp_path, 'layer { name: "bnll1" type: "BNLL" bottom: "conv1" top: "conv1" }', layer)


def case_exp(tmp_path, wrong: bool) -> Case:
    # y = base ^ (shift + scale * x); wrong: the base ignored (natural exp)
    base, scale, shift = 2.0, 0.5, 0.3
    fn = (lambda t: keras.ops.exp(shift + scale * t)) if wrong else (lambda t: keras.ops.power(base, shift + scale * t))
    return _on_input(tmp_path, 'layer { name: "exp1" type: "Exp" bottom: "data" top: "exp1"\n'
                     f"  exp_param {{ base: {base} scale: {scale} shift: {shift} }} }}",
                     _lambda(fn, "exp1"), _normal())


def case_log(tmp_path, wrong: bool) -> Case:
    # y = log_base(shift + scale * x) on positive x; wrong: natural log (base dropped)
    base, scale, shift = 10.0, 2.0, 1.0
    if wrong:
        fn = lambda t: keras.ops.log(shift + scale * t)  # noqa: E731
    else:
        fn = lambda t: keras.ops.log(shift + scale * t) / np.log(base).astype(np.float32)  # noqa: E731
    x = rng(3).uniform(0.05, 3.0, SHAPE)
    return _on_input(tmp_path, 'layer { name: "log1" type: "Log" bottom: "data" top: "log1"\n'
                     f"  log_param {{ base: {base} scale: {scale} shift: {shift} }} }}",
                     _lambda(fn, "log1"), x)


def case_power(tmp_path, wrong: bool) -> Case:
    # y = (shift + scale * x) ^ power; wrong: the shift dropped
    power, scale, shift = 2.0, 0.5, 1.5
    fn = (lambda t: keras.ops.power(scale * t, power)) if wrong else (lambda t: keras.ops.power(shift + scale * t, power))
    return _after_conv(tmp_path, 'layer { name: "pow1" type: "Power" bottom: "conv1" top: "conv1"\n'
                       f"  power_param {{ power: {power} scale: {scale} shift: {shift} }} }}",
                       _lambda(fn, "pow1"))


def case_threshold(tmp_path, wrong: bool) -> Case:
    # y = x > threshold ? 1 : 0; wrong: the threshold dropped (x > 0)
    t = 0.0 if wrong else 0.4
    return _after_conv(tmp_path, 'layer { name: "thr1" type: "Threshold" bottom: "conv1" top: "conv1"\n'
                       "  threshold_param { threshold: 0.4 } }",
                       _lambda(lambda v: keras.ops.cast(v > t, "float32"), "thr1"))


def case_hardsigmoid(tmp_path, wrong: bool) -> Case:
    # y = clip(alpha * x + beta, 0, 1); wrong: Keras' own hard_sigmoid (slope 1/6, offset 1/2)
    alpha, beta = 0.3, 0.4
    if wrong:
        layer = keras.layers.Activation("hard_sigmoid", name="hsig1")
    else:
        layer = _lambda(lambda v: keras.ops.clip(alpha * v + beta, 0.0, 1.0), "hsig1")
    return _after_conv(tmp_path, 'layer { name: "hsig1" type: "HardSigmoid" bottom: "conv1" top: "conv1"\n'
                       f"  hardsigmoid_param {{ alpha: {alpha} beta: {beta} }} }}", layer, x_scale=3.0)


def case_hardswish(tmp_path, wrong: bool) -> Case:
    # y = x * clip(x / 6 + 1/2, 0, 1); wrong: a swish (x * sigmoid(x))
    layer = keras.layers.Activation("silu" if wrong else "hard_swish", name="hswish1")
    return _after_conv(tmp_path, 'layer { name: "hswish1" type: "HardSwish" bottom: "conv1" top: "conv1" }',
                       layer, x_scale=4.0)


def case_relu(tmp_path, wrong: bool) -> Case:
    # leaky: negative_slope 0.1; wrong: Keras' LeakyReLU default slope (0.3)
    layer = keras.layers.LeakyReLU(name="relu1") if wrong else keras.layers.LeakyReLU(negative_slope=0.1, name="relu1")
    return _after_conv(tmp_path, 'layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1"\n'
                       "  relu_param { negative_slope: 0.1 } }", layer)


def case_relu6(tmp_path, wrong: bool) -> Case:
    # min(max(x, 0), 6) on values beyond 6; wrong: the cap dropped (a plain ReLU)
    layer = keras.layers.ReLU(name="relu6_1") if wrong else keras.layers.ReLU(max_value=6.0, name="relu6_1")
    return _after_conv(tmp_path, 'layer { name: "relu6_1" type: "ReLU6" bottom: "conv1" top: "conv1" }',
                       layer, x_scale=6.0)


def case_elu(tmp_path, wrong: bool) -> Case:
    # alpha 0.5; wrong: Keras' default alpha 1
    layer = keras.layers.ELU(name="elu1") if wrong else keras.layers.ELU(alpha=0.5, name="elu1")
    return _after_conv(tmp_path, 'layer { name: "elu1" type: "ELU" bottom: "conv1" top: "conv1"\n'
                       "  elu_param { alpha: 0.5 } }", layer, x_scale=2.0)


def case_prelu(tmp_path, wrong: bool) -> Case:
    # one slope per channel; wrong: the learned slopes never copied (Caffe's initial 0.25 left)
    slopes = f32([0.1, -0.3, 0.6, 1.5])
    layer = keras.layers.PReLU(alpha_initializer=keras.initializers.Constant(0.25), shared_axes=[1, 2], name="prelu1")
    case = _after_conv(tmp_path, 'layer { name: "prelu1" type: "PReLU" bottom: "conv1" top: "conv1" }', layer,
                       params={"prelu1": [slopes]})
    if not wrong:
        layer.set_weights([slopes.reshape(1, 1, 4)])
    return case


def case_sigmoid(tmp_path, wrong: bool) -> Case:
    layer = keras.layers.Activation("hard_sigmoid" if wrong else "sigmoid", name="sig1")
    return _after_conv(tmp_path, 'layer { name: "sig1" type: "Sigmoid" bottom: "conv1" top: "conv1" }', layer,
                       x_scale=2.0)


def case_tanh(tmp_path, wrong: bool) -> Case:
    layer = keras.layers.Activation("sigmoid" if wrong else "tanh", name="tanh1")
    return _after_conv(tmp_path, 'layer { name: "tanh1" type: "TanH" bottom: "conv1" top: "conv1" }', layer)


def case_softmax(tmp_path, wrong: bool) -> Case:
    # Caffe's axis 1 (C) is the last axis in NHWC; wrong: Caffe's axis number kept (H in NHWC)
    layer = keras.layers.Softmax(axis=1 if wrong else -1, name="prob")
    return _after_conv(tmp_path, 'layer { name: "prob" type: "Softmax" bottom: "conv1" top: "prob"\n'
                       "  softmax_param { axis: 1 } }", layer, x_scale=2.0)


# -- affine and normalisation ---------------------------------------------------------

C4 = 4  # channels after conv1


def _chan(seed: int, lo: float, hi: float, n: int = C4) -> np.ndarray:
    return f32(rng(seed).uniform(lo, hi, n))


def case_bias(tmp_path, wrong: bool) -> Case:
    # one learned bias per channel (axis 1); wrong: the bias left out (taken as folded into conv1)
    beta = _chan(11, -1.0, 1.0)
    fn = (lambda t: t) if wrong else (lambda t: t + beta)
    return _after_conv(tmp_path, 'layer { name: "bias1" type: "Bias" bottom: "conv1" top: "conv1"\n'
                       "  bias_param { axis: 1 num_axes: 1 } }", _lambda(fn, "bias1"),
                       params={"bias1": [beta]})


def case_scale(tmp_path, wrong: bool) -> Case:
    # y = x * gamma + beta per channel (bias_term); wrong: the beta blob forgotten
    gamma, beta = _chan(12, 0.5, 2.0), _chan(13, -1.0, 1.0)
    fn = (lambda t: t * gamma) if wrong else (lambda t: t * gamma + beta)
    return _after_conv(tmp_path, 'layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1"\n'
                       "  scale_param { axis: 1 bias_term: true } }", _lambda(fn, "scale1"),
                       params={"scale1": [gamma, beta]})


def _bn_stats(scale_factor: float):
    mean, var = _chan(14, -0.5, 0.5), _chan(15, 0.2, 2.0)
    return mean, var, [mean * scale_factor, var * scale_factor, f32([scale_factor])]


def case_batchnorm(tmp_path, wrong: bool) -> Case:
    # global stats stored times a scale factor (0.5), eps 1e-3; wrong: the stats not divided by it
    sf = 0.5
    mean, var, blobs = _bn_stats(sf)
    layer = keras.layers.BatchNormalization(epsilon=1e-3, center=False, scale=False, name="bn1")
    case = _after_conv(tmp_path, 'layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1"\n'
                       "  batch_norm_param { use_global_stats: true eps: 0.001 } }", layer,
                       params={"bn1": blobs})
    layer.set_weights([blobs[0], blobs[1]] if wrong else [mean, var])
    return case


def case_batchnormkyle(tmp_path, wrong: bool) -> Case:
    # the fork's BatchNorm with its own alpha/beta blobs (use_alpha_beta), eps 0.01;
    # wrong: Keras' default epsilon (1e-3) kept
    sf = 2.0
    mean, var, blobs = _bn_stats(sf)
    var = var * 0.05  # small variances: eps matters
    blobs[1] = var * sf
    gamma, beta = _chan(16, 0.5, 2.0), _chan(17, -1.0, 1.0)
    layer = keras.layers.BatchNormalization(epsilon=1e-3 if wrong else 1e-2, name="bnk1")
    case = _after_conv(tmp_path, 'layer { name: "bnk1" type: "BatchNormKyle" bottom: "conv1" top: "bnk1"\n'
                       "  batch_norm_param { use_global_stats: true eps: 0.01 use_alpha_beta: true } }", layer,
                       params={"bnk1": [*blobs, gamma, beta]})
    layer.set_weights([gamma, beta, mean, var])
    return case


def case_mvn(tmp_path, wrong: bool) -> Case:
    # per channel over H, W: (x - mean) / (std + eps); wrong: the mean only (no variance normalisation)
    eps = 1e-3

    def mvn(t):
        m = keras.ops.mean(t, axis=(1, 2), keepdims=True)
        d = t - m
        if wrong:
            return d
        return d / (keras.ops.sqrt(keras.ops.mean(d * d, axis=(1, 2), keepdims=True)) + eps)

    return _after_conv(tmp_path, 'layer { name: "mvn1" type: "MVN" bottom: "conv1" top: "mvn1"\n'
                       f"  mvn_param {{ normalize_variance: true across_channels: false eps: {eps} }} }}",
                       _lambda(mvn, "mvn1"), x_scale=2.0)


def case_normalize(tmp_path, wrong: bool) -> Case:
    # SSD's L2 Normalize over C at each position, one scale per channel;
    # wrong: normalised over C*H*W (across_spatial taken as true)
    scale = _chan(18, 5.0, 20.0)
    axes = (1, 2, 3) if wrong else (-1,)

    def l2(t):
        return t / keras.ops.sqrt(keras.ops.sum(t * t, axis=axes, keepdims=True) + 1e-10) * scale

    return _after_conv(tmp_path, 'layer { name: "norm1" type: "Normalize" bottom: "conv1" top: "norm1"\n'
                       "  norm_param { across_spatial: false channel_shared: false } }", _lambda(l2, "norm1"),
                       params={"norm1": [scale]})


def case_lrn(tmp_path, wrong: bool) -> Case:
    # ACROSS_CHANNELS local_size 3, alpha 0.3, beta 0.6, k 2; TF's alpha is Caffe's alpha / local_size;
    # wrong: alpha not divided by local_size
    size, alpha, beta, k = 3, 0.3, 0.6, 2.0
    lrn = lrn_layer_class()(depth_radius=size // 2, bias=k, alpha=alpha if wrong else alpha / size, beta=beta, name="norm1")
    return _after_conv(tmp_path, 'layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1"\n'
                       f"  lrn_param {{ local_size: {size} alpha: {alpha} beta: {beta} k: {k} }} }}", lrn,
                       x_scale=2.0)


# -- blob plumbing --------------------------------------------------------------------


def _two_convs(tmp_path, caffe_layer: str, keras_layer, params=None) -> Case:
    """data -> conv1, conv2 (4 channels each) -> THE LAYER over both."""
    w1, b1 = conv_w(4, 3, 3, seed=7)
    w2, b2 = conv_w(4, 3, 3, seed=8)
    body = (CONV + 'layer { name: "conv2" type: "Convolution" bottom: "data" top: "conv2"\n'
            '  convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }\n' + caffe_layer + "\n")
    net = caffe_net(tmp_path, prototxt({"data": SHAPE}, body), {"conv1": [w1, b1], "conv2": [w2, b2], **(params or {})})
    inp = keras_input(SHAPE)
    c1 = keras.layers.Conv2D(4, 3, padding="same", name="conv1")
    c2 = keras.layers.Conv2D(4, 3, padding="same", name="conv2")
    model = keras.Model(inp, keras_layer([c1(inp), c2(inp)]))
    c1.set_weights([hwio(w1), b1])
    c2.set_weights([hwio(w2), b2])
    return Case(net, model, _normal(), _name_of(caffe_layer))


def case_eltwise(tmp_path, wrong: bool) -> Case:
    # SUM with coefficients (1, -0.5); wrong: a plain Add (coefficients dropped)
    layer = keras.layers.Add(name="elt1") if wrong else _lambda(lambda ts: ts[0] - 0.5 * ts[1], "elt1")
    return _two_convs(tmp_path, 'layer { name: "elt1" type: "Eltwise" bottom: "conv1" bottom: "conv2" top: "elt1"\n'
                      "  eltwise_param { operation: SUM coeff: 1 coeff: -0.5 } }", layer)


def case_concat(tmp_path, wrong: bool) -> Case:
    # channels (Caffe axis 1) are the last axis in NHWC; wrong: the inputs in the other order
    layer = keras.layers.Concatenate(axis=-1, name="cat1")
    if wrong:
        return _two_convs(tmp_path, 'layer { name: "cat1" type: "Concat" bottom: "conv1" bottom: "conv2" top: "cat1"\n'
                          "  concat_param { axis: 1 } }", lambda ts: layer(ts[::-1]))
    return _two_convs(tmp_path, 'layer { name: "cat1" type: "Concat" bottom: "conv1" bottom: "conv2" top: "cat1"\n'
                      "  concat_param { axis: 1 } }", layer)


def case_slice(tmp_path, wrong: bool) -> Case:
    # C = 4 cut at 1 and 3 into three tops; wrong: cut at Caffe's axis number (1 = H in NHWC)
    ax = 1 if wrong else -1
    return _after_conv(tmp_path, 'layer { name: "slice1" type: "Slice" bottom: "conv1" top: "s_a" top: "s_b" top: "s_c"\n'
                       "  slice_param { axis: 1 slice_point: 1 slice_point: 3 } }",
                       _lambda(lambda t: keras.ops.split(t, [1, 3], axis=ax), "slice1"))


def case_split(tmp_path, wrong: bool) -> Case:
    # a Split the user wrote: relu1's output copied to two tops, each read by its own layer; the
    # port reads relu1 twice. wrong: the second branch taken from before the ReLU (conv1's output)
    body = ('layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }\n'
            'layer { name: "split1" type: "Split" bottom: "conv1" top: "c_a" top: "c_b" }\n'
            'layer { name: "abs1" type: "AbsVal" bottom: "c_a" top: "abs1" }\n'
            'layer { name: "sig1" type: "Sigmoid" bottom: "c_b" top: "sig1" }')

    def port(t):
        r = keras.layers.ReLU(name="relu1")(t)
        return [_lambda(keras.ops.abs, "abs1")(r), keras.layers.Activation("sigmoid", name="sig1")(t if wrong else r)]

    case = _after_conv(tmp_path, body, port)
    case.layer = "split1"
    return case


def case_dropout(tmp_path, wrong: bool) -> Case:
    # identity at inference (Caffe scales at training time); wrong: scaled by 1 - ratio at inference
    # (a port of a non-inverted dropout)
    layer = _lambda(lambda t: t * 0.7, "drop1") if wrong else keras.layers.Dropout(0.3, name="drop1")
    return _after_conv(tmp_path, 'layer { name: "drop1" type: "Dropout" bottom: "conv1" top: "conv1"\n'
                       "  dropout_param { dropout_ratio: 0.3 } }", layer)


def case_reduction(tmp_path, wrong: bool) -> Case:
    # MEAN over every axis from 2 (H, W) -> (N, C), times coeff 2.5; wrong: coeff dropped
    coeff = 1.0 if wrong else 2.5
    return _after_conv(tmp_path, 'layer { name: "red1" type: "Reduction" bottom: "conv1" top: "red1"\n'
                       "  reduction_param { operation: MEAN axis: 2 coeff: 2.5 } }",
                       _lambda(lambda t: coeff * keras.ops.mean(t, axis=(1, 2)), "red1"))


def case_argmax(tmp_path, wrong: bool) -> Case:
    # the index of the largest channel at each position, (N, 1, H, W) in Caffe, (N, H, W, 1) in NHWC;
    # wrong: the largest value instead of its index (out_max_val semantics)
    if wrong:
        fn = lambda t: keras.ops.max(t, axis=-1, keepdims=True)  # noqa: E731
    else:
        fn = lambda t: keras.ops.cast(keras.ops.expand_dims(keras.ops.argmax(t, axis=-1), -1), "float32")  # noqa: E731
    return _after_conv(tmp_path, 'layer { name: "amax" type: "ArgMax" bottom: "conv1" top: "amax"\n'
                       "  argmax_param { axis: 1 } }", _lambda(fn, "amax"))


def case_flatten(tmp_path, wrong: bool) -> Case:
    # axis 2: (N, C, H, W) -> (N, C, H*W), a 3-D blob compared as is; the port moves C first
    # (Permute) then reshapes; wrong: the reshape on NHWC (the classic layout bug)
    def port(t):
        if not wrong:
            t = keras.layers.Permute((3, 1, 2), name="to_nchw")(t)
        return keras.layers.Reshape((4, 25), name="flat1")(t)

    return _after_conv(tmp_path, 'layer { name: "flat1" type: "Flatten" bottom: "conv1" top: "flat1"\n'
                       "  flatten_param { axis: 2 } }", port)


def case_reshape(tmp_path, wrong: bool) -> Case:
    # (N, 4, 5, 5) -> (N, 2, 50) by dims 0, 2, -1; the port moves C first then reshapes;
    # wrong: the reshape on NHWC
    def port(t):
        if not wrong:
            t = keras.layers.Permute((3, 1, 2), name="to_nchw")(t)
        return keras.layers.Reshape((2, 50), name="rs1")(t)

    return _after_conv(tmp_path, 'layer { name: "rs1" type: "Reshape" bottom: "conv1" top: "rs1"\n'
                       "  reshape_param { shape { dim: 0 dim: 2 dim: -1 } } }", port)


def case_unsqueeze(tmp_path, wrong: bool) -> Case:
    # (N, C) after a Reduction -> (N, C, 1) (dim 2); wrong: the unit axis inserted at 1
    body = ('layer { name: "red1" type: "Reduction" bottom: "conv1" top: "red1"\n'
            "  reduction_param { operation: SUMSQ axis: 2 } }\n"
            'layer { name: "unsq1" type: "Unsqueeze" bottom: "red1" top: "unsq1" unsqueeze_param { dim: 2 } }')

    def port(t):
        r = _lambda(lambda v: keras.ops.sum(v * v, axis=(1, 2)), "red1")(t)
        return _lambda(lambda v: keras.ops.expand_dims(v, 1 if wrong else 2), "unsq1")(r)

    case = _after_conv(tmp_path, body, port)
    case.layer = "unsq1"
    return case


def case_tile(tmp_path, wrong: bool) -> Case:
    # the channels copied 3 times as a block (c0..c3, c0..c3, ...); wrong: each channel
    # repeated in place (c0, c0, c0, c1, ...: repeat, not tile)
    if wrong:
        fn = lambda t: keras.ops.repeat(t, 3, axis=-1)  # noqa: E731
    else:
        fn = lambda t: keras.ops.tile(t, (1, 1, 1, 3))  # noqa: E731
    return _after_conv(tmp_path, 'layer { name: "tile1" type: "Tile" bottom: "conv1" top: "tile1"\n'
                       "  tile_param { axis: 1 tiles: 3 } }", _lambda(fn, "tile1"))


def case_silence(tmp_path, wrong: bool) -> Case:
    # conv1 sliced in two; the second part silenced (read by nothing), the first read by sig1.
    # The port splits in one layer and leaves its second output unused. wrong: the part nobody
    # reads cut off by one channel (v[..., 2:]: an off-by-one on the silenced part)
    body = ('layer { name: "slice1" type: "Slice" bottom: "conv1" top: "s_a" top: "s_b"\n'
            "  slice_param { axis: 1 slice_point: 1 } }\n"
            'layer { name: "sil1" type: "Silence" bottom: "s_b" }\n'
            'layer { name: "sig1" type: "Sigmoid" bottom: "s_a" top: "sig1" }')

    def port(t):
        cut = (lambda v: [v[..., :1], v[..., 2:]]) if wrong else (lambda v: keras.ops.split(v, [1], axis=-1))
        a, _b = _lambda(cut, "slice1")(t)
        return keras.layers.Activation("sigmoid", name="sig1")(a)

    case = _after_conv(tmp_path, body, port)
    case.layer = "sil1"
    return case

# -- batch selection and learned constants ---------------------------------------------

BATCH = (2, 3, 5, 5)


def _batch_net(tmp_path, inputs: dict, layer_text: str, params=None):
    return caffe_net(tmp_path, prototxt(inputs, layer_text + "\n"), params)


def case_filter(tmp_path, wrong: bool) -> Case:
    # the items whose selector is non-zero (here item 1 of 2); wrong: the selector inverted
    net = _batch_net(tmp_path, {"data": BATCH, "sel": (2, 1)},
                     'layer { name: "filt" type: "Filter" bottom: "data" bottom: "sel" top: "filt" }')
    inp, sel = keras_input(BATCH), keras.Input((1,), batch_size=2, name="sel")

    def keep(ts):
        import tensorflow as tf  # here, not at the top: caffe (diagnose_cases) must be imported first

        mask = ts[1][:, 0] == 0 if wrong else ts[1][:, 0] != 0
        return tf.boolean_mask(ts[0], mask)

    model = keras.Model([inp, sel], _lambda(keep, "filt")([inp, sel]))
    return Case(net, model, {"data": _normal(shape=BATCH), "sel": f32([[0], [1]])}, "filt")


def case_batchreindex(tmp_path, wrong: bool) -> Case:
    # the batch reordered by an index blob: item i of the output is item idx[i] (a gather);
    # wrong: the indices used as destinations (a scatter: the inverse permutation)
    shape, order = (3, 3, 5, 5), [2, 0, 1]
    net = _batch_net(tmp_path, {"data": shape, "idx": (3,)},
                     'layer { name: "reidx" type: "BatchReindex" bottom: "data" bottom: "idx" top: "reidx" }')
    inp, idx = keras_input(shape), keras.Input((), batch_size=3, name="idx")
    if wrong:
        fn = lambda ts: keras.ops.take(ts[0], keras.ops.argsort(keras.ops.cast(ts[1], "int32")), axis=0)  # noqa: E731
    else:
        fn = lambda ts: keras.ops.take(ts[0], keras.ops.cast(ts[1], "int32"), axis=0)  # noqa: E731
    model = keras.Model([inp, idx], _lambda(fn, "reidx")([inp, idx]))
    return Case(net, model, {"data": _normal(shape=shape), "idx": f32(order)}, "reidx")


def _parameter_layer():
    class LearnedConstant(keras.layers.Layer):
        """A Caffe ``Parameter``: its blob as the layer's weight, returned whatever the input."""

        def build(self, input_shape):
            self.w = self.add_weight(shape=(3,), initializer="zeros", name="w")

        def call(self, x):
            return self.w

        def compute_output_shape(self, input_shape):
            return (3,)

    return LearnedConstant


def case_parameter(tmp_path, wrong: bool) -> Case:
    # a learned (3,) blob added per channel by a two-bottom Bias; the port holds it as the weight
    # of a layer of the same name; wrong: the weight never copied (left at its zero init)
    p = f32([0.5, -1.0, 2.0])
    body = ('layer { name: "p1" type: "Parameter" top: "p1" parameter_param { shape { dim: 3 } } }\n'
            'layer { name: "bias1" type: "Bias" bottom: "data" bottom: "p1" top: "bias1" }')
    net = caffe_net(tmp_path, prototxt({"data": BATCH}, body), {"p1": [p]})
    inp = keras_input(BATCH)
    const = _parameter_layer()(name="p1")
    model = keras.Model(inp, _lambda(lambda ts: ts[0] + ts[1], "bias1")([inp, const(inp)]))
    if not wrong:
        const.set_weights([p])
    return Case(net, model, _normal(shape=BATCH), "p1")


CASES: dict[str, Callable[..., Case]] = {
    "AbsVal": case_absval, "BNLL": case_bnll, "Exp": case_exp, "Log": case_log, "Power": case_power,
    "Threshold": case_threshold, "HardSigmoid": case_hardsigmoid, "HardSwish": case_hardswish,
    "ReLU": case_relu, "ReLU6": case_relu6, "ELU": case_elu, "PReLU": case_prelu, "Sigmoid": case_sigmoid,
    "TanH": case_tanh, "Softmax": case_softmax, "Bias": case_bias, "Scale": case_scale,
    "BatchNorm": case_batchnorm, "BatchNormKyle": case_batchnormkyle, "MVN": case_mvn,
    "Normalize": case_normalize, "LRN": case_lrn, "Eltwise": case_eltwise, "Concat": case_concat,
    "Slice": case_slice, "Split": case_split, "Dropout": case_dropout, "Reduction": case_reduction,
    "ArgMax": case_argmax, "Flatten": case_flatten, "Reshape": case_reshape, "Unsqueeze": case_unsqueeze,
    "Tile": case_tile, "Silence": case_silence, "Filter": case_filter, "BatchReindex": case_batchreindex,
    "Parameter": case_parameter,
}


#: The diagnosis a wrong port of this file gets, where one names the bug as it is.
WRONG_KIND = {
    "Slice": "shape_mismatch",  # cut along H
    "Unsqueeze": "shape_mismatch",
    "Silence": "shape_mismatch",
    "Dropout": "constant_scale",  # times 1 - ratio
    "Reduction": "constant_scale",  # coeff dropped
    "Flatten": "reshape_not_transpose",
    "Reshape": "reshape_not_transpose",
    "Eltwise": "eltwise_coeff",
    "Log": "constant_scale",  # log(v) vs log10(v): a constant factor ln(10)
    "ReLU": "leaky_slope",
    "Softmax": "softmax_axis",
    "Bias": "constant_offset",  # the per-channel bias missing
    "Scale": "constant_offset",  # the per-channel beta missing
    "BatchNorm": "batchnorm_scale_factor",
    "LRN": "lrn_alpha_scaling",
}


#: Trivial types whose wrong port cannot diverge at the layer itself, and the Caffe probe the
#: first divergence names instead. Split: a copy, compared against the TF value of its input
#: (``how="identity"``), so a bug on one branch is named at the branch's layer and the copies
#: pass. Silence: no top, so no probe: the engine never sees it; the top it silences is still
#: its producer's output and compared (a wrong silenced part is named there).
WRONG_AT = {"Split": "sig1", "Silence": "slice1/s_b"}


def _probes_of(names, layer: str) -> list[str]:
    """The Caffe probes of ``layer`` among ``names``: ``layer``, or ``layer/top`` for several tops."""
    return [n for n in names if n == layer or n.startswith(layer + "/")]


def _rows_with(report, layer: str):
    return [r for r in report.rows if _probes_of(r.caffe_chain, layer)]


def test_every_covered_type_has_a_case_and_no_type_is_both():
    assert set(CASES) == set(COVERED)
    assert not set(COVERED) & set(NOT_YET)


@pytest.mark.parametrize("ctype", sorted(COVERED))
def test_a_correct_port_passes_with_the_layer_aligned(tmp_path, ctype):
    case = CASES[ctype](tmp_path, wrong=False)
    report = compare(case.net, case.model, case.x, **case.kw)
    assert_clean(report)
    assert bool(report), report.summary()
    assert not _probes_of(report.unmapped_caffe, case.layer)
    assert not _probes_of(report.coverage.uncovered, case.layer)
    if ctype == "Silence":  # no top, no probe: in no row, and the top it silences is still compared
        assert not _rows_with(report, case.layer)
        assert _rows_with(report, "slice1/s_b")
        return
    assert _rows_with(report, case.layer), f"{case.layer!r} in no compared row: {report.summary()}"
    if ctype == "Split":  # each copy compared against the TF value of the split's input
        rows = _rows_with(report, case.layer)
        assert [r.caffe_chain for r in rows] == [["split1/c_a"], ["split1/c_b"]]
        assert all(r.tf_layer == "relu1" for r in rows)


@pytest.mark.parametrize("ctype", sorted(COVERED))
def test_a_wrong_port_fails_at_the_layer(tmp_path, ctype):
    case = CASES[ctype](tmp_path, wrong=True)
    report = compare(case.net, case.model, case.x, **case.kw)
    fd = report.first_divergence
    assert not report and fd is not None, report.summary()
    at = WRONG_AT.get(ctype, case.layer)
    assert _probes_of(fd.caffe_chain, at), (fd.caffe_chain, report.summary())
    if ctype == "Split":
        assert all(r.passed for r in _rows_with(report, case.layer))
    if ctype in WRONG_KIND:
        assert fd.diagnoses and fd.diagnoses[0].kind == WRONG_KIND[ctype], [d.kind for d in fd.diagnoses]


def test_a_multi_top_layer_pairs_with_the_outputs_of_one_tf_op():
    """Alignment alone (no framework): Caffe ``slice1`` with tops a, b, c against one TF op with
    three outputs pairs top i with output i, by name, by structure (names lost) and by an explicit
    mapping (each top, or the layer as a whole); a TF op with another number of outputs is not
    paired (which output is which top would be a guess)."""
    from layerparity.alignment import align
    from layerparity.errors import MappingError
    from layerparity.trace import Probe, Trace

    caffe = Trace("caffe", probes=[
        Probe("data", "Input"),
        *(Probe(f"slice1/{t}", "Slice", layer="slice1", blob=t, inputs=["data"]) for t in "abc")])

    def tf(n: int, name: str = "slice1", kind: str = "Lambda") -> Trace:
        return Trace("tensorflow", probes=[
            Probe("data", "InputLayer"),
            *(Probe(name if i == 0 else f"{name}:{i}", kind, layer=name, inputs=["data"]) for i in range(n))])

    def pairs(a):
        return [(p.caffe_chain, p.tf, p.how) for p in a.pairs][1:]

    def want(how: str, name: str = "slice1"):
        return [(["slice1/a"], name, how), (["slice1/b"], f"{name}:1", how), (["slice1/c"], f"{name}:2", how)]

    a = align(caffe, tf(3))
    assert pairs(a) == want("name") and not a.unmapped_caffe and not a.unmapped_tf
    a = align(caffe, tf(3, "split", "SplitV"))
    assert pairs(a) == want("structural", "split") and not a.unmapped_caffe and not a.unmapped_tf
    a = align(caffe, tf(3, "split", "SplitV"), {"slice1/a": "split", "slice1/b": "split:1", "slice1/c": "split:2"})
    assert pairs(a) == want("explicit", "split")
    assert pairs(align(caffe, tf(3, "split", "SplitV"), {"slice1": "split"})) == want("explicit", "split")
    with pytest.raises(MappingError, match="'slice1' has 3 tops"):
        align(caffe, tf(2, "split", "SplitV"), {"slice1": "split"})
    with pytest.raises(MappingError, match="'slice1/a' is mapped twice"):
        align(caffe, tf(3, "split", "SplitV"), {"slice1": "split", "slice1/a": "split:1"})
    with pytest.raises(MappingError, match="'split' is mapped from two Caffe layers"):
        align(caffe, tf(3, "split", "SplitV"), {"data": "split:1", "slice1": "split"})
    assert align(caffe, tf(2)).unmapped_caffe == ["slice1/a", "slice1/b", "slice1/c"]


def test_a_parameter_folded_into_its_consumer_is_not_required(tmp_path):
    """The other correct port of a ``Parameter``: its blob a constant inside the consumer (no TF
    layer of its own). A constant computes nothing at inference: the report passes, the layer is
    not 'uncovered' (it is left unmapped), and its value is still checked through the consumer's row."""
    p = f32([0.5, -1.0, 2.0])
    body = ('layer { name: "p1" type: "Parameter" top: "p1" parameter_param { shape { dim: 3 } } }\n'
            'layer { name: "bias1" type: "Bias" bottom: "data" bottom: "p1" top: "bias1" }')
    x = _normal(shape=BATCH)
    for const, ok in ((p, True), (p[::-1].copy(), False)):
        net = caffe_net(tmp_path, prototxt({"data": BATCH}, body), {"p1": [p]})
        inp = keras_input(BATCH)
        model = keras.Model(inp, _lambda(lambda t, c=const: t + c, "bias1")(inp))
        report = compare(net, model, x)
        assert report.unmapped_caffe == ["p1"] and not report.coverage.uncovered, report.summary()
        if ok:
            assert_clean(report)
            assert bool(report), report.summary()
        else:  # the blob in the wrong order: named at the consumer
            assert not report and report.first_divergence.caffe_chain == ["bias1"], report.summary()


def test_a_slice_ported_as_one_tf_split_in_a_saved_model_is_aligned_by_structure(tmp_path):
    """A converter-style graph (names lost): conv1 then one ``tf.split`` with three outputs in a
    SavedModel. Each Caffe top pairs with its output of the split (structural), and a split at the
    wrong points is named at the first top."""
    import tensorflow as tf  # here: caffe (diagnose_cases) is imported first

    w, b = conv_w(4, 3, 3, seed=7)
    body = CONV + ('layer { name: "slice1" type: "Slice" bottom: "conv1" top: "s_a" top: "s_b" top: "s_c"\n'
                   "  slice_param { axis: 1 slice_point: 1 slice_point: 3 } }")
    net = caffe_net(tmp_path, prototxt({"data": SHAPE}, body), {"conv1": [w, b]})
    for sizes in ([1, 2, 1], [2, 1, 1]):
        @tf.function(input_signature=[tf.TensorSpec((1, 5, 5, 3), tf.float32, name="data")])
        def port(x, sizes=sizes):
            c = tf.nn.bias_add(tf.nn.conv2d(x, tf.constant(hwio(w)), 1, "SAME"), b)
            parts = tf.split(c, sizes, axis=3)
            return {f"out{i}": tf.identity(p) for i, p in enumerate(parts)}

        path = str(tmp_path / f"sm{sizes[0]}")
        tf.saved_model.save(tf.Module(), path, signatures=port.get_concrete_function())
        report = compare(net, path, _normal())
        rows = _rows_with(report, "slice1")
        assert [(r.caffe_chain, r.tf_layer.rsplit("/", 1)[-1]) for r in rows] == [
            (["slice1/s_a"], "split"), (["slice1/s_b"], "split:1"), (["slice1/s_c"], "split:2")]
        assert not report.unmapped_caffe and not report.coverage.uncovered, report.summary()
        if sizes == [1, 2, 1]:
            assert_clean(report)
            assert bool(report), report.summary()
        else:
            assert not report and report.first_divergence.caffe_chain == ["slice1/s_a"], report.summary()


#: More parameter settings of two-input types, each with its correct Keras port (the layer "elt1").
VARIANTS = {
    "Eltwise PROD": ("Eltwise", "eltwise_param { operation: PROD }", lambda: keras.layers.Multiply(name="elt1")),
    "Eltwise MAX": ("Eltwise", "eltwise_param { operation: MAX }", lambda: keras.layers.Maximum(name="elt1")),
    "Eltwise SUM": ("Eltwise", "", lambda: keras.layers.Add(name="elt1")),
    "Concat axis 2 (H)": ("Concat", "concat_param { axis: 2 }", lambda: keras.layers.Concatenate(axis=1, name="elt1")),
    "Concat axis 3 (W)": ("Concat", "concat_param { axis: 3 }", lambda: keras.layers.Concatenate(axis=2, name="elt1")),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_more_settings_of_two_input_layers_pass_with_their_keras_merge_layer(tmp_path, variant):
    ctype, param, layer = VARIANTS[variant]
    case = _two_convs(tmp_path, f'layer {{ name: "elt1" type: "{ctype}" bottom: "conv1" bottom: "conv2" top: "elt1"\n'
                      f"  {param} }}", layer())
    report = compare(case.net, case.model, case.x)
    assert_clean(report)
    assert bool(report) and [r.caffe_chain for r in _rows_with(report, "elt1")] == [["elt1"]], report.summary()


def test_a_flatten_to_2d_passes_against_keras_flatten_in_its_own_order(tmp_path):
    """Caffe's default Flatten (axis 1: C*H*W order) against Keras' Flatten (H*W*C order): the
    engine compares the two through their declared flattened layouts, so the correct port passes."""
    case = _after_conv(tmp_path, 'layer { name: "flat1" type: "Flatten" bottom: "conv1" top: "flat1" }',
                       keras.layers.Flatten(name="flat1"))
    report = compare(case.net, case.model, case.x)
    assert_clean(report)
    assert bool(report) and [r.caffe_chain for r in _rows_with(report, "flat1")] == [["flat1"]], report.summary()


def test_batchnormkyle_weights_are_checked_as_a_batchnorm_with_its_own_alpha_beta(tmp_path):
    """Weight parity (before any forward pass): the fork's BatchNormKyle is a BatchNorm
    (mean*S, var*S, S) with its own alpha/beta blobs, held against Keras' gamma, beta,
    moving mean and variance; alpha and beta swapped in the port is named at the layer."""
    from diagnose_cases import save_caffemodel
    from layerparity.weights import weight_parity

    case = case_batchnormkyle(tmp_path, wrong=False)
    caffemodel = save_caffemodel(case.net, tmp_path)
    report = weight_parity(str(tmp_path / "net.prototxt"), caffemodel, case.model)
    assert report, str(report)
    (row,) = [r for r in report.rows if r.caffe_layer == "bnk1"]
    assert [b.role for b in row.blobs] == ["mean", "var", "scale_factor", "gamma", "beta"], str(report)
    bn = case.model.get_layer("bnk1")
    gamma, beta, mean, var = bn.get_weights()
    bn.set_weights([beta, gamma, mean, var])
    report = weight_parity(str(tmp_path / "net.prototxt"), caffemodel, case.model)
    assert not report and [r.caffe_layer for r in report.problems] == ["bnk1"], str(report)


def test_batchnormkyle_pairs_by_structure_with_a_fused_batch_norm_op(tmp_path):
    """A converter-style SavedModel (names lost): conv, FusedBatchNormV3, Relu. The fork's
    BatchNormKyle is a BatchNorm kind, so it pairs with the TF batch-norm op by structure."""
    import tensorflow as tf  # here: caffe (diagnose_cases) is imported first

    w, b = conv_w(4, 3, 3, seed=7)
    mean, var, blobs = _bn_stats(2.0)
    gamma, beta = _chan(16, 0.5, 2.0), _chan(17, -1.0, 1.0)
    body = CONV + ('layer { name: "bnk1" type: "BatchNormKyle" bottom: "conv1" top: "bnk1"\n'
                   "  batch_norm_param { use_global_stats: true eps: 0.01 use_alpha_beta: true } }\n"
                   'layer { name: "relu1" type: "ReLU" bottom: "bnk1" top: "bnk1" }')
    net = caffe_net(tmp_path, prototxt({"data": SHAPE}, body), {"conv1": [w, b], "bnk1": [*blobs, gamma, beta]})

    @tf.function(input_signature=[tf.TensorSpec((1, 5, 5, 3), tf.float32, name="data")])
    def port(x):
        c = tf.nn.bias_add(tf.nn.conv2d(x, tf.constant(hwio(w)), 1, "SAME"), b)
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(c, gamma, beta, mean, var, epsilon=0.01, is_training=False)
        return {"y": tf.nn.relu(y)}

    path = str(tmp_path / "sm")
    tf.saved_model.save(tf.Module(), path, signatures=port.get_concrete_function())
    report = compare(net, path, _normal())
    assert_clean(report)
    assert bool(report), report.summary()
    (row,) = _rows_with(report, "bnk1")
    assert row.tf_layer.endswith("FusedBatchNormV3"), report.summary()


SCALE_GAMMA, SCALE_BETA = f32([0.5, 1.5, 2.0, -1.0]), f32([0.1, -0.2, 0.3, 0.0])


def _graph_ports():
    """Caffe layer text after conv1 -> the TF ops a converter writes for it (names lost)."""
    import tensorflow as tf  # here: caffe (diagnose_cases) is imported first

    return {
        "AbsVal": ('layer { name: "abs1" type: "AbsVal" bottom: "conv1" top: "abs1" }', tf.abs),
        "BNLL": ('layer { name: "bnll1" type: "BNLL" bottom: "conv1" top: "conv1" }', tf.nn.softplus),
        "TanH": ('layer { name: "tanh1" type: "TanH" bottom: "conv1" top: "conv1" }', tf.tanh),
        "ArgMax": ('layer { name: "amax" type: "ArgMax" bottom: "conv1" top: "amax" argmax_param { axis: 1 } }',
                   lambda t: tf.cast(tf.expand_dims(tf.argmax(t, axis=-1), -1), tf.float32)),
        "Tile": ('layer { name: "tile1" type: "Tile" bottom: "conv1" top: "tile1" tile_param { axis: 1 tiles: 3 } }',
                 lambda t: tf.tile(t, [1, 1, 1, 3])),
        "Unsqueeze": ('layer { name: "red1" type: "Reduction" bottom: "conv1" top: "red1"\n'
                      "  reduction_param { operation: SUM axis: 2 } }\n"
                      'layer { name: "unsq1" type: "Unsqueeze" bottom: "red1" top: "unsq1" unsqueeze_param { dim: 2 } }\n'
                      'layer { name: "sig1" type: "Sigmoid" bottom: "unsq1" top: "sig1" }',
                      lambda t: tf.sigmoid(tf.expand_dims(tf.reduce_sum(t, axis=[1, 2]), 2))),
        "Reduction": ('layer { name: "red1" type: "Reduction" bottom: "conv1" top: "red1"\n'
                      "  reduction_param { operation: MEAN axis: 2 } }", lambda t: tf.reduce_mean(t, axis=[1, 2])),
        "Scale": ('layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }',
                  lambda t: t * tf.constant(SCALE_GAMMA) + tf.constant(SCALE_BETA)),
        "ReLU6": ('layer { name: "r6" type: "ReLU6" bottom: "conv1" top: "conv1" }', tf.nn.relu6),
        "ELU": ('layer { name: "elu1" type: "ELU" bottom: "conv1" top: "conv1" }', tf.nn.elu),
        "Softmax": ('layer { name: "prob" type: "Softmax" bottom: "conv1" top: "prob" }', tf.nn.softmax),
        "LRN": ('layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1" lrn_param { local_size: 3 alpha: 0.3 } }',
                lambda t: tf.nn.local_response_normalization(t, 1, 1.0, 0.1, 0.75)),
        "Sigmoid": ('layer { name: "sig1" type: "Sigmoid" bottom: "conv1" top: "conv1" }', tf.sigmoid),
        "Dropout": ('layer { name: "drop1" type: "Dropout" bottom: "conv1" top: "conv1" }', tf.identity),
    }


@pytest.mark.parametrize("ctype", ["AbsVal", "ArgMax", "BNLL", "Dropout", "ELU", "LRN", "ReLU6", "Reduction", "Scale",
                                   "Sigmoid", "Softmax", "TanH", "Tile", "Unsqueeze"])
def test_a_converter_style_graph_port_is_aligned_by_structure(tmp_path, ctype):
    """A SavedModel whose op names say nothing (conv1 is 'Conv2D', the layer 'Softplus', ...):
    every Caffe layer pairs with its op by structure and kind, and the correct port passes."""
    import tensorflow as tf

    layer, op = _graph_ports()[ctype]
    w, b = conv_w(4, 3, 3, seed=7)
    params = {"scale1": [SCALE_GAMMA, SCALE_BETA]} if ctype == "Scale" else {}
    net = caffe_net(tmp_path, prototxt({"data": SHAPE}, CONV + layer + "\n"), {"conv1": [w, b], **params})

    @tf.function(input_signature=[tf.TensorSpec((1, 5, 5, 3), tf.float32, name="data")])
    def port(x):
        return {"y": op(tf.nn.bias_add(tf.nn.conv2d(x, tf.constant(hwio(w)), 1, "SAME"), b))}

    path = str(tmp_path / "sm")
    tf.saved_model.save(tf.Module(), path, signatures=port.get_concrete_function())
    report = compare(net, path, _normal())
    assert not report.unmapped_caffe and not report.coverage.uncovered, report.summary()
    assert_clean(report)
    assert bool(report), report.summary()
    if ctype == "ArgMax":  # compared after the ops that give back Caffe's (N, 1, H, W) float blob
        (row,) = _rows_with(report, "amax")
        assert row.tf_layer.endswith("Cast") and not report.unmapped_tf, report.summary()


@pytest.mark.parametrize(("ctype", "activation"), [("BNLL", "softplus"), ("HardSwish", "hard_swish")])
def test_a_neuron_fused_into_the_keras_conv_is_compared_in_its_chain(tmp_path, ctype, activation):
    """conv1 + an in-place neuron against one Keras Conv2D(activation=...): one chain, own error
    measured (as tests/test_fused_activations.py holds for ReLU, ELU, Sigmoid, TanH, Softmax)."""
    w, b = conv_w(4, 3, 3, seed=7)
    body = CONV + f'layer {{ name: "act1" type: "{ctype}" bottom: "conv1" top: "conv1" }}\n'
    net = caffe_net(tmp_path, prototxt({"data": SHAPE}, body), {"conv1": [w, b]})
    inp = keras_input(SHAPE)
    conv = keras.layers.Conv2D(4, 3, padding="same", activation=activation, name="conv1")
    model = keras.Model(inp, conv(inp))
    conv.set_weights([hwio(w), b])
    report = compare(net, model, _normal(2.0))
    assert_clean(report)
    assert bool(report), report.summary()
    (row,) = _rows_with(report, "act1")
    assert row.caffe_chain == ["conv1", "act1"] and row.own is not None and row.own.passed

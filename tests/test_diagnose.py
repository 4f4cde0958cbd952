"""diagnose(): each classic porting bug injected into a real Keras port of a tiny real
Caffe net, compared end to end (capture_caffe via CaffeBackend.from_net, the Keras
backend, compare_models), must come out as the TOP diagnosis of the first divergent
layer; the correct port must get none."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import tensorflow as tf

from diagnose_cases import (
    assert_clean,
    caffe_net,
    compare,
    conv_w,
    demo_relu6_port,
    f32,
    hwio,
    keras,
    keras_input,
    kinds,
    prototxt,
    rng,
    top,
)
from layerparity.diagnosis import (
    DIAGNOSIS_KINDS,
    STRICT_ENV,
    DiagnosisContext,
    DiagnosisInputError,
    diagnose,
    diagnose_report,
)
from layerparity.errors import InputError
from layerparity.layout import inner_product_weight_caffe_to_tf
from layerparity.result import LayerResult
from layerparity.trace import Probe

SHAPE = (1, 3, 8, 8)

# A diagnosis bug must fail these tests, not hide as "rules_skipped" evidence or as the
# engine's "diagnosis of ... failed" warning.
pytestmark = pytest.mark.filterwarnings("error:diagnosis of:RuntimeWarning")


@pytest.fixture(autouse=True)
def _strict_diagnosis(monkeypatch):
    """Strict mode for every test here: a rule that raises propagates."""
    monkeypatch.setenv(STRICT_ENV, "1")


def x_in(shape=SHAPE, seed=1, scale=1.0):
    return f32(rng(seed).standard_normal(shape) * scale)


def conv_layer(name, bottom, n, k, s=1, p=0, extra=""):
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}"\n'
            f"  convolution_param {{ num_output: {n} kernel_size: {k} stride: {s} pad: {p} {extra} }} }}\n")


# -- convolution ------------------------------------------------------------------------


def _conv_case(tmp_path, k=3, s=2, p=1, shape=SHAPE, n_out=4):
    w, b = conv_w(n_out, shape[1], k, seed=3)
    net = caffe_net(tmp_path, prototxt({"data": shape}, conv_layer("conv1", "data", n_out, k, s, p)), {"conv1": [w, b]})
    return net, w, b


def _conv_port(shape, w, b, k=3, s=2, p=1, padding="explicit", kernel=None, pre=None):
    inp = keras_input(shape)
    h = inp
    if pre is not None:
        h = pre(h)
    if padding == "explicit":
        if p:
            h = keras.layers.ZeroPadding2D(p, name="pad1")(h)
        out = keras.layers.Conv2D(w.shape[0], k, strides=s, padding="valid", name="conv1")(h)
    else:
        out = keras.layers.Conv2D(w.shape[0], k, strides=s, padding=padding, name="conv1")(h)
    m = keras.Model(inp, out)
    m.get_layer("conv1").set_weights([hwio(w) if kernel is None else kernel, b])
    return m


def test_correct_conv_port_gets_no_diagnosis(tmp_path):
    net, w, b = _conv_case(tmp_path)
    assert_clean(compare(net, _conv_port(SHAPE, w, b), x_in()))


def test_padding_asymmetry_same_vs_symmetric_pad_stride2(tmp_path):
    net, w, b = _conv_case(tmp_path)
    rep = compare(net, _conv_port(SHAPE, w, b, padding="same"), x_in())
    d = top(rep)
    assert rep.first_divergence.caffe_layer == "conv1"
    assert d.kind == "padding_asymmetry"
    assert d.evidence["confirmed_by"] == "recomputation"
    assert d.evidence["caffe_pads"] == [1, 1, 1, 1] and d.evidence["tf_same_pads"] == [0, 1, 0, 1]
    assert d.evidence["residual"] < 1e-5
    assert "ZeroPadding2D((1, 1))" in d.fix
    assert d.confidence >= 0.95


@pytest.mark.parametrize("size,n_out", [(16, 8), (224, 64)])
def test_padding_asymmetry_7x7_stride2_pad3_even_input(tmp_path, size, n_out):
    # GoogLeNet's and ResNet's conv1: TF 'SAME' pads (2, 3) where Caffe pads (3, 3). At the real
    # 224x224 with 64 outputs the layer is 1.2e8 multiply-adds, above the recomputation budget:
    # it is recomputed on part of its output rows instead of being skipped
    shape = (1, 3, size, size)
    net, w, b = _conv_case(tmp_path, k=7, s=2, p=3, shape=shape, n_out=n_out)
    rep = compare(net, _conv_port(shape, w, b, k=7, s=2, p=3, padding="same"), x_in(shape))
    d = top(rep)
    assert rep.first_divergence.caffe_layer == "conv1"
    assert d.kind == "padding_asymmetry"
    assert d.evidence["confirmed_by"] == "recomputation" and d.confidence >= 0.95
    assert d.evidence["caffe_pads"] == [3, 3, 3, 3] and d.evidence["tf_same_pads"] == [2, 3, 2, 3]
    assert d.evidence["residual"] < 1e-5
    assert "ZeroPadding2D((3, 3))" in d.fix
    if size == 224:
        rows, total = d.evidence["recomputed_output_rows"]
        assert total == 112 and 2 <= rows < 112
        assert d.evidence["max_abs_error_now"] == pytest.approx(rep.first_divergence.max_abs_error, rel=1e-3)
    else:
        assert "recomputed_output_rows" not in d.evidence


def test_padding_same_is_exact_for_odd_input(tmp_path):
    # the field guide: k3 s2 p1 with H=7 samples the same grid in both frameworks
    shape = (1, 3, 7, 7)
    net, w, b = _conv_case(tmp_path, shape=shape)
    assert_clean(compare(net, _conv_port(shape, w, b, padding="same"), x_in(shape)))


def test_stride1_same_rules_padding_out_and_finds_weight_reshape(tmp_path):
    net, w, b = _conv_case(tmp_path, k=3, s=1, p=1)
    bad = w.reshape(3, 3, 3, 4)  # reshape instead of transpose
    rep = compare(net, _conv_port(SHAPE, w, b, k=3, s=1, p=1, padding="same", kernel=bad), x_in())
    d = top(rep)
    assert d.kind == "reshape_not_transpose"
    assert "padding_asymmetry" not in kinds(rep)
    ruled = " ".join(d.evidence["ruled_out"])
    assert "padding" in ruled and "'SAME'" in ruled and "(1, 1, 1, 1)" in ruled
    assert "Ruled out: padding" in d.summary


def test_stride1_same_input_reshaped_not_transposed(tmp_path):
    # the "only some columns match" report: a stride-1 SAME conv is fine, the data was reshaped
    net, w, b = _conv_case(tmp_path, k=3, s=1, p=1)

    def reshape_in(h):
        return keras.layers.Lambda(lambda z: tf.reshape(tf.transpose(z, [0, 3, 1, 2]), tf.shape(z)),
                                   name="to_nchw_reshaped")(h)

    rep = compare(net, _conv_port(SHAPE, w, b, k=3, s=1, p=1, padding="same", pre=reshape_in), x_in())
    d = top(rep)
    assert d.kind == "reshape_not_transpose"
    assert d.evidence["where"] == "input"
    assert any("padding" in r for r in d.evidence["ruled_out"])


def test_reshape_not_transpose_output_holds_same_values(tmp_path):
    net, w, b = _conv_case(tmp_path)
    x = x_in()
    m = _conv_port(SHAPE, w, b)
    rep = compare(net, m, x)
    assert rep.passed
    y = rep.rows[-1]
    # the port hands over its NHWC output re-read as NCHW memory (a reshape): hand-assembled probes
    cval = net.blobs["conv1"].data.copy()
    tval = cval.reshape(1, 4, 4, 4)  # NCHW memory declared as NHWC
    row = LayerResult("conv1", "conv1", "conv1", caffe_shape=cval.shape, tf_shape=tval.shape)
    d = diagnose(row, Probe("conv1", "Convolution", cval, layout="NCHW", params={"kernel_size": [3, 3]}),
                 Probe("conv1", "Conv2D", tval, layout="NHWC"))
    assert y.passed
    assert d[0].kind == "reshape_not_transpose" and d[0].evidence["where"] == "output"
    assert d[0].evidence["sorted_values_max_diff"] == 0.0


def test_kernel_flipped(tmp_path):
    net, w, b = _conv_case(tmp_path)
    rep = compare(net, _conv_port(SHAPE, w, b, kernel=hwio(w)[::-1, ::-1]), x_in())
    d = top(rep)
    assert d.kind == "kernel_flipped"
    assert d.evidence["confirmed_by"] == "weights"


def test_kernel_hw_swapped(tmp_path):
    net, w, b = _conv_case(tmp_path)
    rep = compare(net, _conv_port(SHAPE, w, b, kernel=np.ascontiguousarray(hwio(w).transpose(1, 0, 2, 3))), x_in())
    assert top(rep).kind == "kernel_hw_swapped"


def test_kernel_bugs_confirmed_by_recomputation_without_tf_weights(tmp_path):
    net, w, b = _conv_case(tmp_path)
    x = x_in()
    for kernel, want in ((hwio(w)[::-1, ::-1], "kernel_flipped"),
                         (hwio(w).transpose(1, 0, 2, 3), "kernel_hw_swapped"),
                         (hwio(w)[:, :, ::-1, :], "channel_order")):
        m = _conv_port(SHAPE, w, b, kernel=np.ascontiguousarray(kernel))
        tval = m.get_layer("conv1")(keras.layers.ZeroPadding2D(1)(x.transpose(0, 2, 3, 1))).numpy()
        net.blobs["data"].data[...] = x
        net.forward()
        cval = net.blobs["conv1"].data.copy()
        row = LayerResult("conv1", "conv1", "conv1")
        cp = Probe("conv1", "Convolution", cval, layout="NCHW",
                   params={"kernel_size": [3, 3], "stride": [2, 2], "pad": [1, 1], "dilation": [1, 1], "group": 1})
        tp = Probe("conv1", "Conv2D", tval, layout="NHWC", params={"padding": "VALID"})
        d = diagnose(row, cp, tp, [x], [w, b], None)
        assert d[0].kind == want, (want, [(e.kind, e.confidence) for e in d])
        assert d[0].evidence["confirmed_by"] == "recomputation"


def test_channel_order_first_layer_weights(tmp_path):
    net, w, b = _conv_case(tmp_path)
    rep = compare(net, _conv_port(SHAPE, w, b, kernel=np.ascontiguousarray(hwio(w)[:, :, ::-1, :])), x_in())
    assert top(rep).kind == "channel_order"


def test_channel_order_bgr_input(tmp_path):
    net, w, b = _conv_case(tmp_path)
    rgb = lambda h: keras.layers.Lambda(lambda z: z[..., ::-1], name="bgr_to_rgb")(h)  # noqa: E731
    rep = compare(net, _conv_port(SHAPE, w, b, pre=rgb), x_in())
    d = top(rep)
    assert d.kind == "channel_order"
    assert d.evidence["confirmed_by"] == "recomputation"


def test_constant_scale_255(tmp_path):
    net, w, b = _conv_case(tmp_path)
    scale = lambda h: keras.layers.Rescaling(255.0, name="times255")(h)  # noqa: E731
    rep = compare(net, _conv_port(SHAPE, w, b, pre=scale), x_in())
    d = top(rep)
    assert d.kind == "constant_scale"
    assert abs(d.evidence["factor"] - 255.0) < 1e-3
    assert d.evidence["named"].startswith("255")


def test_constant_offset_mean_not_subtracted(tmp_path):
    net, w, b = _conv_case(tmp_path)
    mean = [104.0, 117.0, 123.0]
    sub = lambda h: keras.layers.Normalization(mean=mean, variance=[1.0, 1.0, 1.0], name="submean")(h)  # noqa: E731
    rep = compare(net, _conv_port(SHAPE, w, b, pre=sub), x_in())
    d = top(rep)
    assert d.kind == "constant_offset"
    np.testing.assert_allclose(d.evidence["offset_caffe_minus_tf"], mean, rtol=1e-3)


def test_constant_offset_bias_shifted_on_a_1x1_map(tmp_path):
    # MobileNet's fc7: a 1x1 classifier conv on a 1x1 map, one value per channel, the bias loaded +1
    shape = (1, 32, 1, 1)
    w, b = conv_w(40, 32, 1, seed=7)
    net = caffe_net(tmp_path, prototxt({"data": shape}, conv_layer("fc7", "data", 40, 1)), {"fc7": [w, b]})
    inp = keras_input(shape)
    c = keras.layers.Conv2D(40, 1, name="fc7")
    m = keras.Model(inp, c(inp))
    c.set_weights([hwio(w), b + 1.0])
    d = top(compare(net, m, x_in(shape)))
    assert d.kind == "constant_offset"
    assert d.evidence["offset"] == pytest.approx(1.0, rel=1e-4)
    assert d.confidence >= 0.9


def test_unknown_when_weights_are_just_different(tmp_path):
    net, w, b = _conv_case(tmp_path)
    other, _ = conv_w(4, 3, 3, seed=99)
    rep = compare(net, _conv_port(SHAPE, w, b, kernel=hwio(other)), x_in())
    d = top(rep)
    assert d.kind == "unknown"
    assert d.evidence["max_abs_error"] > 0.1 and 0 < d.evidence["mismatched_fraction"] <= 1
    assert d.confidence < 0.5


# -- pooling --------------------------------------------------------------------------


def _pool_net(tmp_path, pool="MAX", k=3, s=2, p=0, shape=SHAPE, extra=""):
    body = (f'layer {{ name: "pool1" type: "Pooling" bottom: "data" top: "pool1"\n'
            f"  pooling_param {{ pool: {pool} kernel_size: {k} stride: {s} pad: {p} {extra} }} }}\n")
    return caffe_net(tmp_path, prototxt({"data": shape}, body))


def test_pool_rounding_shape_off_by_one(tmp_path):
    net = _pool_net(tmp_path)
    inp = keras_input(SHAPE)
    bad = keras.Model(inp, keras.layers.MaxPooling2D(3, 2, padding="valid", name="pool1")(inp))
    rep = compare(net, bad, x_in())
    d = top(rep)
    assert d.kind == "pool_rounding"
    assert d.evidence["caffe_out"] == [4, 4] and d.evidence["tf_out"] == [3, 3]
    assert d.evidence.get("tf_equals_caffe_without_last_row_col") is True


def test_pool_rounding_correct_port_and_overhang_divisor(tmp_path):
    net = _pool_net(tmp_path, pool="AVE")
    x = x_in()

    def port(divisor_bug):
        inp = keras_input(SHAPE)
        if divisor_bug:  # pads the overhang with zeros and divides by 9
            h = keras.layers.ZeroPadding2D(((0, 1), (0, 1)), name="ceilpad")(inp)
            out = keras.layers.AveragePooling2D(3, 2, padding="valid", name="pool1")(h)
        else:  # 'same' here pads bottom/right by one and excludes it: Caffe's clipped divisor
            out = keras.layers.AveragePooling2D(3, 2, padding="same", name="pool1")(inp)
        return keras.Model(inp, out)

    assert_clean(compare(net, port(False), x))
    d = top(compare(net, port(True), x))
    assert d.kind == "pool_rounding"
    assert d.evidence["confirmed_by"] == "recomputation"


def test_avg_pool_padding_divisor_border_ratios(tmp_path):
    net = _pool_net(tmp_path, pool="AVE", k=3, s=1, p=1)
    x = f32(np.abs(x_in()) + 0.5)
    inp = keras_input(SHAPE)
    bad = keras.Model(inp, keras.layers.AveragePooling2D(3, 1, padding="same", name="pool1")(inp))
    good_in = keras_input(SHAPE)
    good = keras.Model(good_in, keras.layers.AveragePooling2D(3, 1, name="pool1")(
        keras.layers.ZeroPadding2D(1, name="pad")(good_in)))
    assert_clean(compare(net, good, x))
    d = top(compare(net, bad, x))
    assert d.kind == "avg_pool_padding_divisor"
    assert d.evidence["ratio_caffe_over_tf_corner"] == pytest.approx(4 / 9, abs=1e-4)
    assert d.evidence["ratio_caffe_over_tf_edge"] == pytest.approx(6 / 9, abs=1e-4)
    assert d.evidence["interior_max_abs_error"] < 1e-5


def test_avg_pool_divisor_fingerprint_without_inputs(tmp_path):
    net = _pool_net(tmp_path, pool="AVE", k=3, s=1, p=1)
    x = f32(np.abs(x_in()) + 0.5)
    net.blobs["data"].data[...] = x
    net.forward()
    cval = net.blobs["pool1"].data.copy()
    tval = keras.layers.AveragePooling2D(3, 1, padding="same")(x.transpose(0, 2, 3, 1)).numpy()
    cp = Probe("pool1", "Pooling", cval, layout="NCHW",
               params={"pool": "AVE", "kernel_size": [3, 3], "stride": [1, 1], "pad": [1, 1], "round_mode": "CEIL"})
    d = diagnose(LayerResult("pool1", "pool1", "pool1"), cp, Probe("pool1", "AveragePooling2D", tval, layout="NHWC"))
    assert d[0].kind == "avg_pool_padding_divisor"
    assert 0.8 <= d[0].confidence < 0.95  # a fingerprint ranks below a recomputation


def test_pool_same_padding_stride2(tmp_path):
    inp = keras_input(SHAPE)
    same = keras.Model(inp, keras.layers.MaxPooling2D(3, 2, padding="same", name="pool1")(inp))
    # ceil rounding (Caffe's default): 5x5 against TF's ceil(8/2) = 4x4, the size rule says so
    d = top(compare(_pool_net(tmp_path, pool="MAX", k=3, s=2, p=1), same, x_in()))
    assert d.kind == "pool_rounding"
    assert d.evidence["caffe_out"] == [5, 5] and d.evidence["tf_same_out"] == [4, 4]
    # floor rounding: same 4x4 shape, but 'SAME' pads (0, 1) where Caffe pads (1, 1)
    (tmp_path / "floor").mkdir()
    net = _pool_net(tmp_path / "floor", pool="MAX", k=3, s=2, p=1, extra="ceil_mode: false")
    d = top(compare(net, same, x_in()))
    assert d.kind == "padding_asymmetry"
    assert d.evidence["tf_same_pads"] == [0, 1, 0, 1] and d.evidence["confirmed_by"] == "recomputation"


# -- inner product -------------------------------------------------------------------------


def _fc_case(tmp_path):
    w1, b1 = conv_w(4, 3, 3, seed=5)
    w2 = f32(rng(6).standard_normal((6, 4 * 6 * 6)) * 0.2)
    b2 = f32(rng(7).standard_normal(6) * 0.1)
    body = conv_layer("conv1", "data", 4, 3) + (
        'layer { name: "ip1" type: "InnerProduct" bottom: "conv1" top: "ip1"\n'
        "  inner_product_param { num_output: 6 } }\n")
    net = caffe_net(tmp_path, prototxt({"data": SHAPE}, body), {"conv1": [w1, b1], "ip1": [w2, b2]})

    def port(bug):
        inp = keras_input(SHAPE)
        h = keras.layers.Conv2D(4, 3, name="conv1")(inp)
        h = keras.layers.Flatten(name="flat")(h)
        out = keras.layers.Dense(6, name="ip1")(h)
        m = keras.Model(inp, out)
        m.get_layer("conv1").set_weights([hwio(w1), b1])
        m.get_layer("ip1").set_weights([w2.T if bug else inner_product_weight_caffe_to_tf(w2, (4, 6, 6)), b2])
        return m

    return net, port


def test_flatten_order(tmp_path):
    net, port = _fc_case(tmp_path)
    x = x_in()
    assert_clean(compare(net, port(False), x))
    rep = compare(net, port(True), x)
    assert rep.first_divergence.caffe_layer == "ip1"
    d = top(rep)
    assert d.kind == "flatten_order"
    assert d.confidence >= 0.95
    # one value per channel (a 1 x N InnerProduct output) proves no per-channel relation
    assert kinds(rep) == ["flatten_order"]


# -- LRN, BatchNorm, Scale -------------------------------------------------------------------


def test_lrn_alpha_scaling(tmp_path):
    shape = (1, 8, 4, 4)
    body = ('layer { name: "norm1" type: "LRN" bottom: "data" top: "norm1"\n'
            "  lrn_param { local_size: 5 alpha: 0.5 beta: 0.75 k: 1 } }\n")
    net = caffe_net(tmp_path, prototxt({"data": shape}, body))
    x = x_in(shape, scale=2.0)

    def port(alpha):
        inp = keras_input(shape)
        out = keras.layers.Lambda(lambda z: tf.nn.local_response_normalization(
            z, depth_radius=2, bias=1.0, alpha=alpha, beta=0.75), name="norm1")(inp)
        return keras.Model(inp, out)

    assert_clean(compare(net, port(0.5 / 5), x))
    d = top(compare(net, port(0.5), x))
    assert d.kind == "lrn_alpha_scaling"
    assert d.evidence["expected_tf_alpha"] == pytest.approx(0.1)
    assert d.evidence["ratio_max"] > d.evidence["ratio_min"] >= 1.0  # not a constant ratio


BN_SHAPE = (1, 4, 5, 5)


def _bn_case(tmp_path, s=1.0):
    r = rng(11)
    mean = f32(r.standard_normal(4))
    var = f32(r.uniform(1e-3, 1e-2, 4))
    gamma, beta = f32(r.uniform(0.5, 2, 4)), f32(r.standard_normal(4))
    body = ('layer { name: "bn1" type: "BatchNorm" bottom: "data" top: "bn1" }\n'
            'layer { name: "scale1" type: "Scale" bottom: "bn1" top: "bn1" scale_param { bias_term: true } }\n')
    net = caffe_net(tmp_path, prototxt({"data": BN_SHAPE}, body),
                    {"bn1": [mean * s, var * s, f32([s])], "scale1": [gamma, beta]})
    x = f32(mean.reshape(1, 4, 1, 1) + np.sqrt(var).reshape(1, 4, 1, 1) * r.standard_normal(BN_SHAPE))

    def port(eps=1e-5, divide=True, with_scale=True):
        inp = keras_input(BN_SHAPE)
        bn = keras.layers.BatchNormalization(epsilon=eps, center=with_scale, scale=with_scale, name="bn1")
        m = keras.Model(inp, bn(inp))
        stats = [mean, var] if divide else [mean * s, var * s]
        bn.set_weights(([gamma, beta] if with_scale else []) + stats)
        return m

    return net, x, port


def test_batchnorm_correct_port(tmp_path):
    net, x, port = _bn_case(tmp_path, s=2.0)
    assert_clean(compare(net, port(), x))


def test_batchnorm_epsilon(tmp_path):
    net, x, port = _bn_case(tmp_path)
    d = top(compare(net, port(eps=1e-3), x))
    assert d.kind == "batchnorm_epsilon"
    assert d.evidence["tf_eps"] == pytest.approx(1e-3) and d.evidence["caffe_eps"] == pytest.approx(1e-5)
    assert d.evidence["confirmed_by"] == "recomputation"


def test_batchnorm_scale_factor(tmp_path):
    net, x, port = _bn_case(tmp_path, s=2.0)
    d = top(compare(net, port(divide=False), x))
    assert d.kind == "batchnorm_scale_factor"
    assert d.confidence >= 0.95


def test_missing_scale(tmp_path):
    net, x, port = _bn_case(tmp_path)
    d = top(compare(net, port(with_scale=False), x))
    assert d.kind == "missing_scale"


# -- other layers ------------------------------------------------------------------------------


def test_softmax_axis(tmp_path):
    shape = (1, 4, 3, 5)
    net = caffe_net(tmp_path, prototxt({"data": shape}, 'layer { name: "prob" type: "Softmax" bottom: "data" top: "prob" }\n'))
    x = x_in(shape)

    def port(axis):
        inp = keras_input(shape)
        return keras.Model(inp, keras.layers.Softmax(axis=axis, name="prob")(inp))

    assert_clean(compare(net, port(-1), x))
    d = top(compare(net, port(1), x))
    assert d.kind == "softmax_axis"
    assert d.evidence["tf_axis_nhwc"] == 1 and d.evidence["caffe_axis"] == 1


def _two_branch(tmp_path, merge: str):
    wa, ba = conv_w(4, 3, 3, seed=21)
    wb, bb = conv_w(4, 3, 3, seed=22)
    body = conv_layer("ca", "data", 4, 3, 1, 1) + conv_layer("cb", "data", 4, 3, 1, 1) + merge
    net = caffe_net(tmp_path, prototxt({"data": SHAPE}, body), {"ca": [wa, ba], "cb": [wb, bb]})

    def port(merge_layer):
        inp = keras_input(SHAPE)
        a = keras.layers.Conv2D(4, 3, padding="same", name="ca")(inp)
        c = keras.layers.Conv2D(4, 3, padding="same", name="cb")(inp)
        m = keras.Model(inp, merge_layer([a, c]))
        m.get_layer("ca").set_weights([hwio(wa), ba])
        m.get_layer("cb").set_weights([hwio(wb), bb])
        return m

    return net, port


def test_concat_axis(tmp_path):
    net, port = _two_branch(tmp_path, 'layer { name: "cat" type: "Concat" bottom: "ca" bottom: "cb" top: "cat" }\n')
    x = x_in()
    assert_clean(compare(net, port(keras.layers.Concatenate(axis=-1, name="cat")), x))
    d = top(compare(net, port(keras.layers.Concatenate(axis=1, name="cat")), x))
    assert d.kind == "concat_axis"
    assert d.evidence["tf_axis"] == 1 and d.evidence["expected_tf_axis"] == 3
    assert d.evidence["confirmed_by"] == "recomputation"


def test_concat_order_is_channel_order(tmp_path):
    net, port = _two_branch(tmp_path, 'layer { name: "cat" type: "Concat" bottom: "ca" bottom: "cb" top: "cat" }\n')

    class Swapped(keras.layers.Layer):
        def call(self, xs):
            return tf.concat([xs[1], xs[0]], axis=-1)

    d = top(compare(net, port(Swapped(name="cat")), x_in()))
    assert d.kind == "channel_order"
    assert d.evidence["permutation"] == [4, 5, 6, 7, 0, 1, 2, 3]


def test_eltwise_coeff(tmp_path):
    net, port = _two_branch(tmp_path, 'layer { name: "diff" type: "Eltwise" bottom: "ca" bottom: "cb" top: "diff"\n'
                                      "  eltwise_param { operation: SUM coeff: 1 coeff: -1 } }\n")
    x = x_in()
    assert_clean(compare(net, port(keras.layers.Subtract(name="diff")), x))
    d = top(compare(net, port(keras.layers.Add(name="diff")), x))
    assert d.kind == "eltwise_coeff"
    assert d.evidence["caffe_coeff"] == [1.0, -1.0]
    np.testing.assert_allclose(d.evidence["tf_coeff"], [1.0, 1.0], atol=1e-5)


def test_leaky_slope(tmp_path):
    w, b = conv_w(4, 3, 3, seed=31)
    body = conv_layer("conv1", "data", 4, 3, 1, 1) + (
        'layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" relu_param { negative_slope: 0.1 } }\n')
    net = caffe_net(tmp_path, prototxt({"data": SHAPE}, body), {"conv1": [w, b]})

    def port(act):
        inp = keras_input(SHAPE)
        c = keras.layers.Conv2D(4, 3, padding="same", name="conv1")
        m = keras.Model(inp, act(c(inp)))
        c.set_weights([hwio(w), b])
        return m

    x = x_in()
    assert_clean(compare(net, port(keras.layers.LeakyReLU(negative_slope=0.1, name="relu1")), x))
    rep = compare(net, port(keras.layers.LeakyReLU(name="relu1")), x)
    d = top(rep)
    assert rep.first_divergence.caffe_layer == "relu1"
    assert d.kind == "leaky_slope"
    assert d.evidence["tf_slope"] == pytest.approx(0.3) and d.evidence["caffe_slope"] == pytest.approx(0.1)


def test_prelu_shared_axes(tmp_path):
    w, b = conv_w(4, 3, 3, seed=41)
    slopes = f32([0.05, 0.2, 0.4, 0.7])
    body = conv_layer("conv1", "data", 4, 3, 1, 1) + 'layer { name: "prelu1" type: "PReLU" bottom: "conv1" top: "conv1" }\n'
    net = caffe_net(tmp_path, prototxt({"data": SHAPE}, body), {"conv1": [w, b], "prelu1": [slopes]})

    def port(shared_all):
        inp = keras_input(SHAPE)
        c = keras.layers.Conv2D(4, 3, padding="same", name="conv1")
        pr = keras.layers.PReLU(shared_axes=[1, 2, 3] if shared_all else [1, 2], name="prelu1")
        m = keras.Model(inp, pr(c(inp)))
        c.set_weights([hwio(w), b])
        pr.set_weights([f32([[[slopes.mean()]]]) if shared_all else slopes.reshape(1, 1, 4)])
        return m

    x = x_in()
    assert_clean(compare(net, port(False), x))
    d = top(compare(net, port(True), x))
    assert d.kind == "prelu_shared_axes"
    assert d.evidence["tf_slope"] == pytest.approx(float(slopes.mean()), rel=1e-5)


def test_spatial_shift_crop_offsets(tmp_path):
    w, b = conv_w(4, 3, 3, seed=51)
    body = conv_layer("conv1", "data", 4, 3, 1, 1) + (
        'layer { name: "pool1" type: "Pooling" bottom: "data" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
        'layer { name: "crop" type: "Crop" bottom: "conv1" bottom: "pool1" top: "crop" crop_param { axis: 2 offset: 1 } }\n')
    net = caffe_net(tmp_path, prototxt({"data": SHAPE}, body), {"conv1": [w, b]})

    def port(crop):
        inp = keras_input(SHAPE)
        c = keras.layers.Conv2D(4, 3, padding="same", name="conv1")
        m = keras.Model(inp, keras.layers.Cropping2D(crop, name="crop")(c(inp)))
        c.set_weights([hwio(w), b])
        return m

    x = x_in()
    assert_clean(compare(net, port(((1, 3), (1, 3))), x))
    d = top(compare(net, port(((2, 2), (2, 2))), x))  # a centred crop
    assert d.kind == "spatial_shift"
    assert d.evidence["caffe_offset"] == [1, 1] and d.evidence["tf_offset"] == [2, 2]


def test_interp_align_corners(tmp_path):
    shape = (1, 2, 4, 5)
    body = ('layer { name: "up" type: "BilinearInterpolate" bottom: "data" top: "up"\n'
            "  bilinear_interpolate_param { scale_factor: 2 } }\n")
    net = caffe_net(tmp_path, prototxt({"data": shape}, body))
    x = x_in(shape)

    def port(aligned):
        inp = keras_input(shape)
        if aligned:
            out = keras.layers.Lambda(lambda z: tf.compat.v1.image.resize_bilinear(z, (8, 10), align_corners=True),
                                      name="up")(inp)
        else:
            out = keras.layers.UpSampling2D(2, interpolation="bilinear", name="up")(inp)
        return keras.Model(inp, out)

    assert_clean(compare(net, port(True), x))
    d = top(compare(net, port(False), x))
    assert d.kind == "interp_align_corners"
    assert d.evidence["tf_sampling"] == "half_pixel"


def test_deconv_same_is_one_pixel_larger(tmp_path):
    shape = (1, 3, 4, 4)
    w = f32(rng(61).standard_normal((3, 2, 3, 3)) * 0.3)
    b = f32([0.1, -0.1])
    body = ('layer { name: "up1" type: "Deconvolution" bottom: "data" top: "up1"\n'
            "  convolution_param { num_output: 2 kernel_size: 3 stride: 2 pad: 1 } }\n")
    net = caffe_net(tmp_path, prototxt({"data": shape}, body), {"up1": [w, b]})
    inp = keras_input(shape)
    dc = keras.layers.Conv2DTranspose(2, 3, strides=2, padding="same", name="up1")
    m = keras.Model(inp, dc(inp))
    dc.set_weights([np.ascontiguousarray(w.transpose(2, 3, 1, 0)), b])
    d = top(compare(net, m, x_in(shape)))
    assert d.kind == "deconv_same_padding"
    assert d.evidence["caffe_out"] == [7, 7] and d.evidence["tf_out"] == [8, 8]


# -- precision drift ------------------------------------------------------------------------------


def _deep_correct_port(tmp_path, shape=(1, 8, 8, 8)):
    """Eight 3x3 convs, Caffe and a correct Keras port: only float32 rounding differs."""
    body, params = "", {}
    bottom = "data"
    for i in range(8):
        body += conv_layer(f"c{i}", bottom, 8, 3, 1, 1)
        params[f"c{i}"] = list(conv_w(8, 8, 3, seed=100 + i))
        bottom = f"c{i}"
    net = caffe_net(tmp_path, prototxt({"data": shape}, body), params)
    inp = keras_input(shape)
    h = inp
    for i in range(8):
        h = keras.layers.Conv2D(8, 3, padding="same", name=f"c{i}")(h)
    m = keras.Model(inp, h)
    for i in range(8):
        m.get_layer(f"c{i}").set_weights([hwio(params[f"c{i}"][0]), params[f"c{i}"][1]])
    return net, m, x_in(shape)


def test_precision_drift_over_a_deep_correct_port(tmp_path):
    shape = (1, 8, 8, 8)
    net, m, x = _deep_correct_port(tmp_path, shape)
    assert compare(net, m, x).passed  # a correct port passes at the default tolerance
    rep = compare(net, m, x, rtol=1e-9, atol=1e-10)  # far below float32 noise
    assert not rep.passed
    # the first divergent layer alone: TF is as close to the float64 reference as Caffe is
    first = top(rep)
    assert first.kind == "precision_drift"
    assert first.evidence["tf_vs_float64_reference"] <= 10 * max(first.evidence["caffe_vs_float64_reference"], 1.2e-6)
    ds = diagnose_report(rep)
    assert [d.kind for d in ds] == ["precision_drift"]
    ev = ds[0].evidence
    assert ev["rel_rms_max"] < 1e-5 and ev["largest_jump"] < 30
    # the suggested tolerance really passes
    assert compare(net, m, x, rtol=ev["suggested_rtol"], atol=ev["suggested_atol"]).passed
    # and diagnose() with the rows as context says the same about the last layer
    last = rep.rows[-1]
    cval = net.blobs["c7"].data.copy()
    tval = m(x.transpose(0, 2, 3, 1)).numpy()
    d = diagnose(last, Probe("c7", "Convolution", cval, layout="NCHW"), Probe("c7", "Conv2D", tval, layout="NHWC"),
                 context=DiagnosisContext(rows=rep.rows))
    assert d[0].kind == "precision_drift"


def test_diagnose_report_of_a_passing_report_is_empty(tmp_path):
    net, w, b = _conv_case(tmp_path)
    assert diagnose_report(compare(net, _conv_port(SHAPE, w, b), x_in())) == []


# -- contract --------------------------------------------------------------------------------------


def test_fine_layer_gets_empty_list():
    v = f32(rng(0).standard_normal((1, 2, 3, 3)))
    row = LayerResult("c", "c", "c")
    assert diagnose(row, Probe("c", "Convolution", v, layout="NCHW"),
                    Probe("c", "Conv2D", v.transpose(0, 2, 3, 1), layout="NHWC")) == []


@pytest.mark.parametrize("args", [
    ("not a row", Probe("c", value=np.zeros(2)), Probe("c", value=np.zeros(2))),
    (LayerResult("c", "c", "c"), Probe("c"), Probe("c", value=np.zeros(2))),
    (LayerResult("c", "c", "c"), Probe("c", value=np.zeros(2)), "tf"),
])
def test_bad_input_raises_input_error(args):
    with pytest.raises(DiagnosisInputError) as e:
        diagnose(*args)
    assert isinstance(e.value, InputError)


def test_bad_caffe_inputs_and_context_raise_input_error():
    v = np.zeros((1, 2, 2, 2), np.float32)
    row, cp, tp = LayerResult("c", "c", "c"), Probe("c", value=v), Probe("c", value=v + 1)
    with pytest.raises(InputError, match="caffe_inputs"):
        diagnose(row, cp, tp, caffe_inputs=v)
    with pytest.raises(InputError, match="context"):
        diagnose(row, cp, tp, context=42)


def test_every_documented_kind_is_in_the_cookbook():
    import pathlib

    text = (pathlib.Path(__file__).parents[1] / "docs" / "diagnosis.md").read_text()
    missing = [k for k in DIAGNOSIS_KINDS if f"`{k}`" not in text]
    assert not missing, missing


# -- a fused chain and a whole correct net ---------------------------------------------------------


def test_padding_asymmetry_through_a_fused_relu(tmp_path):
    w, b = conv_w(4, 3, 3, seed=3)
    body = conv_layer("conv1", "data", 4, 3, 2, 1) + 'layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }\n'
    net = caffe_net(tmp_path, prototxt({"data": SHAPE}, body), {"conv1": [w, b]})
    inp = keras_input(SHAPE)
    c = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="conv1")
    m = keras.Model(inp, c(inp))
    c.set_weights([hwio(w), b])
    rep = compare(net, m, x_in())
    assert rep.first_divergence.caffe_chain == ["conv1", "relu1"]
    d = top(rep)
    assert d.kind == "padding_asymmetry" and d.evidence["confirmed_by"] == "recomputation"


def test_correct_port_of_a_small_classic_net(tmp_path):
    shape = (2, 3, 12, 12)
    r = rng(5)
    p = {
        "conv1": list(conv_w(8, 3, 5, seed=1)),
        "bn1": [f32(r.standard_normal(8)), f32(r.uniform(0.5, 2, 8)), f32([1.0])],
        "scale1": [f32(r.uniform(0.5, 2, 8)), f32(r.standard_normal(8))],
        "conv2": list(conv_w(8, 8, 3, seed=2)),
        "ip1": [f32(r.standard_normal((5, 8 * 3 * 3)) * 0.1), f32(r.standard_normal(5))],
    }
    body = (conv_layer("conv1", "data", 8, 5, 2, 2)
            + 'layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }\n'
            + 'layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }\n'
            + 'layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }\n'
            + 'layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }\n'
            + 'layer { name: "norm1" type: "LRN" bottom: "pool1" top: "norm1" lrn_param { local_size: 5 alpha: 0.1 beta: 0.75 } }\n'
            + conv_layer("conv2", "norm1", 8, 3, 1, 1)
            + 'layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }\n'
            + 'layer { name: "ip1" type: "InnerProduct" bottom: "conv2" top: "ip1" inner_product_param { num_output: 5 } }\n'
            + 'layer { name: "prob" type: "Softmax" bottom: "ip1" top: "prob" }\n')
    net = caffe_net(tmp_path, prototxt({"data": shape}, body), p)
    inp = keras_input(shape)
    h = keras.layers.ZeroPadding2D(2, name="pad1")(inp)
    h = keras.layers.Conv2D(8, 5, strides=2, name="conv1")(h)
    h = keras.layers.BatchNormalization(epsilon=1e-5, name="bn1")(h)
    h = keras.layers.ReLU(name="relu1")(h)
    h = keras.layers.ZeroPadding2D(((0, 1), (0, 1)), name="ceil")(h)  # ceil rounding, inputs >= 0
    h = keras.layers.MaxPooling2D(3, 2, name="pool1")(h)
    h = keras.layers.Lambda(lambda z: tf.nn.local_response_normalization(z, 2, 1.0, 0.1 / 5, 0.75), name="norm1")(h)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(h)
    h = keras.layers.Flatten(name="flat")(h)
    h = keras.layers.Dense(5, name="ip1")(h)
    m = keras.Model(inp, keras.layers.Softmax(name="prob")(h))
    m.get_layer("conv1").set_weights([hwio(p["conv1"][0]), p["conv1"][1]])
    m.get_layer("bn1").set_weights([p["scale1"][0], p["scale1"][1], p["bn1"][0], p["bn1"][1]])
    m.get_layer("conv2").set_weights([hwio(p["conv2"][0]), p["conv2"][1]])
    m.get_layer("ip1").set_weights([inner_product_weight_caffe_to_tf(p["ip1"][0], (8, 3, 3)), p["ip1"][1]])
    x = x_in(shape)
    rep = compare(net, m, x)
    assert_clean(rep)
    assert len(rep.rows) >= 7


# -- fingerprints: no inputs, no weights (rank below a recomputation) -------------------------------


def _caffe_values(tmp_path, shape, body, x, params=None):
    net = caffe_net(tmp_path, prototxt({"data": shape}, body), params)
    net.blobs["data"].data[...] = x
    net.forward()
    return {k: v.data.copy() for k, v in net.blobs.items()}


def _fp(cval, ckind, cparams, tval, tkind, tparams=None, context=None):
    row = LayerResult("L", "L", "L", caffe_kind=ckind, tf_kind=tkind)
    cp = Probe("L", ckind, cval, layout="NCHW", params=cparams, inputs=["data"])
    tp = Probe("L", tkind, tval, layout="NHWC", params=tparams or {})
    return diagnose(row, cp, tp, None, None, None, context)


def _nhwc(a):
    return np.ascontiguousarray(np.transpose(a, (0, 2, 3, 1)))


def test_fingerprint_lrn(tmp_path):
    shape = (1, 8, 4, 4)
    x = x_in(shape, scale=2.0)
    v = _caffe_values(tmp_path, shape, 'layer { name: "L" type: "LRN" bottom: "data" top: "L" lrn_param { alpha: 0.5 } }\n', x)
    t = tf.nn.local_response_normalization(_nhwc(x), depth_radius=2, bias=1.0, alpha=0.5, beta=0.75).numpy()
    d = _fp(v["L"], "LRN", {"local_size": 5, "alpha": 0.5, "beta": 0.75, "k": 1.0}, t, "LRN",
            {"alpha": 0.5, "depth_radius": 2})
    assert d[0].kind == "lrn_alpha_scaling" and d[0].confidence < 0.95
    assert d[0].evidence["ratio_max"] > d[0].evidence["ratio_min"]


def test_fingerprint_batchnorm_epsilon(tmp_path):
    r = rng(3)
    mean, var = f32(r.standard_normal(4)), f32(r.uniform(1e-3, 1e-2, 4))
    x = f32(mean.reshape(1, 4, 1, 1) + r.standard_normal(BN_SHAPE) * 0.1)
    v = _caffe_values(tmp_path, BN_SHAPE, 'layer { name: "L" type: "BatchNorm" bottom: "data" top: "L" }\n', x,
                      {"L": [mean, var, f32([1.0])]})
    bn = keras.layers.BatchNormalization(center=False, scale=False)
    bn.build((1, 5, 5, 4))
    bn.set_weights([mean, var])
    t = bn(_nhwc(x), training=False).numpy()
    d = _fp(v["L"], "BatchNorm", {"eps": 1e-5}, t, "BatchNormalization", {"epsilon": 1e-3})
    assert d[0].kind == "batchnorm_epsilon" and d[0].confidence < 0.95
    assert 0.5 < d[0].evidence["slope_min"] <= d[0].evidence["slope_max"] < 1.0
    np.testing.assert_allclose(d[0].evidence["implied_var"], var, rtol=1e-2)


def test_fingerprint_softmax_axis(tmp_path):
    shape = (1, 4, 3, 5)
    x = x_in(shape)
    v = _caffe_values(tmp_path, shape, 'layer { name: "L" type: "Softmax" bottom: "data" top: "L" }\n', x)
    d = _fp(v["L"], "Softmax", {"axis": 1}, tf.nn.softmax(_nhwc(x), axis=2).numpy(), "Softmax")
    assert d[0].kind == "softmax_axis" and d[0].evidence["tf_axis_nhwc"] == 2


def test_fingerprint_interp_corners_exact(tmp_path):
    shape = (1, 2, 4, 5)
    x = x_in(shape)
    v = _caffe_values(tmp_path, shape, 'layer { name: "L" type: "BilinearInterpolate" bottom: "data" top: "L" '
                      "bilinear_interpolate_param { scale_factor: 2 } }\n", x)
    t = tf.image.resize(_nhwc(x), (8, 10), "bilinear").numpy()
    d = _fp(v["L"], "BilinearInterpolate", {}, t, "UpSampling2D")
    assert d[0].kind == "interp_align_corners" and d[0].confidence < 0.9


def test_fingerprint_relu_negatives(tmp_path):
    x = x_in()
    v = _caffe_values(tmp_path, SHAPE, 'layer { name: "L" type: "ReLU" bottom: "data" top: "L" }\n', x)
    t = keras.layers.LeakyReLU()(_nhwc(x)).numpy()
    d = _fp(v["L"], "ReLU", {"negative_slope": 0.0}, t, "LeakyReLU")
    assert d[0].kind == "leaky_slope" and d[0].evidence["caffe_slope"] == 0.0


def test_fingerprint_padding_without_inputs(tmp_path):
    net, w, b = _conv_case(tmp_path)
    x = x_in()
    net.blobs["data"].data[...] = x
    net.forward()
    c = keras.layers.Conv2D(4, 3, strides=2, padding="same")
    t = c(_nhwc(x))
    c.set_weights([hwio(w), b])
    t = c(_nhwc(x)).numpy()
    ctx = DiagnosisContext(caffe_probes={"data": Probe("data", "Input", x, layout="NCHW")})
    d = _fp(net.blobs["conv1"].data.copy(), "Convolution",
            {"kernel_size": [3, 3], "stride": [2, 2], "pad": [1, 1]}, t, "Conv2D", {"padding": "same"}, ctx)
    assert d[0].kind == "padding_asymmetry" and 0.6 <= d[0].confidence < 0.95


@pytest.mark.parametrize("make,kind", [
    (lambda x: 255.0 * x, "constant_scale"),
    (lambda x: x[:, ::-1], "channel_order"),
    (lambda x: x - f32([104, 117, 123]).reshape(1, 3, 1, 1), "constant_offset"),
    (lambda x: np.swapaxes(x, 2, 3), "wrong_transpose"),
])
def test_fingerprint_input_blob(make, kind):
    x = x_in()
    d = _fp(x, "Input", {}, _nhwc(make(x)), "InputLayer")
    assert d[0].kind == kind
    assert d[0].confidence >= 0.85


def test_generic_spatial_shift():
    y = x_in((1, 4, 6, 6))
    t = np.zeros_like(y)
    t[:, :, :-1, :-1] = y[:, :, 1:, 1:]
    d = _fp(y, "Convolution", {}, _nhwc(t), "Conv2D")
    assert d[0].kind == "spatial_shift" and (d[0].evidence["shift_rows"], d[0].evidence["shift_cols"]) == (1, 1)


# -- the extra kinds ----------------------------------------------------------------------------------


def test_padding_mismatch_valid_where_caffe_pads(tmp_path):
    net, w, b = _conv_case(tmp_path, k=3, s=1, p=1)
    d = top(compare(net, _conv_port(SHAPE, w, b, k=3, s=1, p=1, padding="valid"), x_in()))
    assert d.kind == "padding_mismatch"
    assert d.evidence["caffe_out"] == [8, 8] and d.evidence["tf_out"] == [6, 6]


def test_eltwise_operation(tmp_path):
    net, port = _two_branch(tmp_path, 'layer { name: "prod" type: "Eltwise" bottom: "ca" bottom: "cb" top: "prod"\n'
                                      "  eltwise_param { operation: PROD } }\n")
    x = x_in()
    assert_clean(compare(net, port(keras.layers.Multiply(name="prod")), x))
    d = top(compare(net, port(keras.layers.Add(name="prod")), x))
    assert d.kind == "eltwise_operation"
    assert (d.evidence["caffe_operation"], d.evidence["tf_operation"]) == ("PROD", "SUM")


def test_lrn_depth_radius(tmp_path):
    shape = (1, 12, 3, 3)
    net = caffe_net(tmp_path, prototxt({"data": shape}, 'layer { name: "norm1" type: "LRN" bottom: "data" top: "norm1"\n'
                                       "  lrn_param { local_size: 5 alpha: 0.5 } }\n"))
    inp = keras_input(shape)
    m = keras.Model(inp, keras.layers.Lambda(lambda z: tf.nn.local_response_normalization(
        z, depth_radius=5, bias=1.0, alpha=0.1, beta=0.75), name="norm1")(inp))
    d = top(compare(net, m, x_in(shape, scale=2.0)))
    assert d.kind == "lrn_depth_radius"


def test_deconv_in_out_swapped(tmp_path):
    shape = (1, 3, 4, 4)
    w = f32(rng(62).standard_normal((3, 3, 2, 2)))
    b = f32([0.1, -0.1, 0.2])
    net = caffe_net(tmp_path, prototxt({"data": shape}, 'layer { name: "up1" type: "Deconvolution" bottom: "data" '
                                       'top: "up1" convolution_param { num_output: 3 kernel_size: 2 stride: 2 } }\n'),
                    {"up1": [w, b]})

    def port(kernel):
        inp = keras_input(shape)
        dc = keras.layers.Conv2DTranspose(3, 2, strides=2, name="up1")
        m = keras.Model(inp, dc(inp))
        dc.set_weights([np.ascontiguousarray(kernel), b])
        return m

    x = x_in(shape)
    assert_clean(compare(net, port(w.transpose(2, 3, 1, 0)), x))
    d = top(compare(net, port(w.transpose(2, 3, 0, 1)), x))
    assert d.kind == "deconv_in_out_swapped"


def test_interp_zoom_size_rule():
    x = x_in((1, 2, 4, 5))
    from layerparity.diagnosis import reference as ref

    cval = ref.resize_bilinear(x, (7, 9), "align_corners")  # Caffe Interp zoom_factor 2: in + (in-1)(z-1)
    tval = _nhwc(ref.resize_bilinear(x, (8, 10), "half_pixel"))
    d = diagnose(LayerResult("up", "up", "up"), Probe("up", "Interp", cval, layout="NCHW", params={"zoom_factor": 2}),
                 Probe("up", "ResizeBilinear", tval, layout="NHWC"), [x])
    assert d[0].kind == "interp_align_corners"
    assert d[0].evidence["zoom"] == 2 and d[0].evidence["caffe_out"] == [7, 9] and d[0].evidence["tf_out"] == [8, 10]


def test_shape_mismatch_without_a_rule():
    y = x_in((1, 4, 3, 3))
    d = diagnose(LayerResult("r", "r", "r"), Probe("r", "Reshape", y, layout="NCHW"),
                 Probe("r", "Reshape", x_in((1, 5, 5, 2)), layout="NHWC"))
    assert [e.kind for e in d] == ["shape_mismatch"]
    assert d[0].evidence["caffe_shape"] == [1, 4, 3, 3] and d[0].evidence["tf_shape"] == [1, 5, 5, 2]


def test_unknown_reports_an_exact_per_channel_affine_relation():
    y = x_in((1, 4, 5, 5))
    a, b = f32([1.5, 0.5, 2.0, 3.0]).reshape(1, 4, 1, 1), f32([0.1, -0.2, 0.3, 0.0]).reshape(1, 4, 1, 1)
    d = diagnose(LayerResult("s", "s", "s"), Probe("s", "Power", y, layout="NCHW"),
                 Probe("s", "Multiply", _nhwc(a * y + b), layout="NHWC"))
    assert d[0].kind == "unknown"
    pca = d[0].evidence["per_channel_affine"]
    assert pca["slope_min"] == pytest.approx(0.5) and pca["slope_max"] == pytest.approx(3.0)
    assert "per channel" in d[0].summary


def test_constant_scale_through_a_fused_relu(tmp_path):
    w, b = conv_w(4, 3, 3, seed=3)
    body = conv_layer("conv1", "data", 4, 3, 1, 1) + 'layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }\n'
    net = caffe_net(tmp_path, prototxt({"data": SHAPE}, body), {"conv1": [w, b]})
    inp = keras_input(SHAPE)
    c = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")
    m = keras.Model(inp, c(keras.layers.Rescaling(255.0, name="times255")(inp)))
    c.set_weights([hwio(w), b])
    d = top(compare(net, m, x_in()))
    assert d.kind == "constant_scale" and d.evidence["factor"] == pytest.approx(255.0, rel=1e-4)
    assert d.evidence["confirmed_by"] == "recomputation"


def test_flatten_order_after_an_explicit_caffe_flatten(tmp_path):
    w1, b1 = conv_w(4, 3, 3, seed=5)
    w2 = f32(rng(6).standard_normal((6, 4 * 6 * 6)) * 0.2)
    b2 = f32(rng(7).standard_normal(6) * 0.1)
    body = conv_layer("conv1", "data", 4, 3) + (
        'layer { name: "flat" type: "Flatten" bottom: "conv1" top: "flat" }\n'
        'layer { name: "ip1" type: "InnerProduct" bottom: "flat" top: "ip1" inner_product_param { num_output: 6 } }\n')
    net = caffe_net(tmp_path, prototxt({"data": SHAPE}, body), {"conv1": [w1, b1], "ip1": [w2, b2]})

    def port(bug):
        inp = keras_input(SHAPE)
        h = keras.layers.Conv2D(4, 3, name="conv1")(inp)
        h = keras.layers.Flatten(name="flat")(h)
        m = keras.Model(inp, keras.layers.Dense(6, name="ip1")(h))
        m.get_layer("conv1").set_weights([hwio(w1), b1])
        m.get_layer("ip1").set_weights([w2.T if bug else inner_product_weight_caffe_to_tf(w2, (4, 6, 6)), b2])
        return m

    x = x_in()
    assert_clean(compare(net, port(False), x))
    rep = compare(net, port(True), x)
    assert rep.first_divergence.caffe_layer == "ip1"
    d = top(rep)
    assert d.kind == "flatten_order"
    assert d.evidence["input_chw"] == [4, 6, 6]


def test_shape_mismatch_explained_as_reshaped_memory(tmp_path):
    net, w, b = _conv_case(tmp_path, k=3, s=1, p=1)
    x = x_in((1, 3, 8, 8))
    net.blobs["data"].data[...] = x
    net.forward()
    y = net.blobs["conv1"].data.copy()[:, :, :, :6]  # (1, 4, 8, 6): H != W so every shape is distinct
    nhwc = np.ascontiguousarray(_nhwc(y))
    row = LayerResult("conv1", "conv1", "conv1")
    cp = Probe("conv1", "Convolution", y, layout="NCHW")
    # the Q1 bug: the NHWC result reshaped to Caffe's NCHW shape, declared NHWC
    d = diagnose(row, cp, Probe("conv1", "Reshape", nhwc.reshape(y.shape), layout="NHWC"))
    assert d[0].kind == "reshape_not_transpose" and d[0].evidence["where"] == "output"
    # Caffe's blob itself, declared with the wrong layout: not a porting bug
    d = diagnose(row, cp, Probe("conv1", "Identity", y.copy(), layout="NHWC"))
    assert d[0].kind == "layout_declaration"


# -- strict mode -----------------------------------------------------------------------------------


def _conv_probe_pair(seed=0):
    x = f32(rng(seed).standard_normal((1, 3, 6, 6)))
    w, b = conv_w(2, 3, 3, seed=seed + 1)
    row = LayerResult("conv1", "conv1", "conv1", caffe_kind="Convolution", tf_kind="Conv2D", caffe_chain=["conv1"])
    y = f32(np.ones((1, 2, 4, 4)))
    cp = Probe("conv1", "Convolution", y, layout="NCHW", params={"kernel_size": [3, 3]})
    tp = Probe("conv1", "Conv2D", 2 * y.transpose(0, 2, 3, 1) + 0.5, layout="NHWC")
    return row, cp, tp, [x], [w, b]


def test_strict_mode_makes_a_raising_rule_propagate(monkeypatch):
    from layerparity.diagnosis import decide

    def boom(case):
        raise ZeroDivisionError("a rule bug")

    monkeypatch.setitem(decide.RULES_BY_KIND, "conv", [boom])
    row, cp, tp, xs, ws = _conv_probe_pair()
    monkeypatch.delenv(STRICT_ENV)
    d = diagnose(row, cp, tp, xs, ws)  # lenient: the rule is counted as skipped
    assert any("boom: ZeroDivisionError: a rule bug" in s for s in d[0].evidence["rules_skipped"])
    with pytest.raises(ZeroDivisionError, match="a rule bug"):
        diagnose(row, cp, tp, xs, ws, strict=True)
    monkeypatch.setenv(STRICT_ENV, "1")
    with pytest.raises(ZeroDivisionError, match="a rule bug"):
        diagnose(row, cp, tp, xs, ws)
    assert "rules_skipped" in diagnose(row, cp, tp, xs, ws, strict=False)[0].evidence  # the argument wins


def test_strict_mode_makes_a_raising_hypothesis_propagate():
    from layerparity.diagnosis import DiagnosisContext as Ctx
    from layerparity.diagnosis._core import Case

    row, cp, tp, xs, ws = _conv_probe_pair()

    def bad():
        raise ValueError("cannot recompute")

    lenient = Case(row, cp, tp, xs, ws, None, Ctx())
    assert lenient.attempt([], "kernel_flipped", "s", "f", bad) is False
    strict = Case(row, cp, tp, xs, ws, None, Ctx(), strict=True)
    with pytest.raises(ValueError, match="cannot recompute"):
        strict.attempt([], "kernel_flipped", "s", "f", bad)


def test_hostile_zero_stride_falls_back_instead_of_dividing_by_zero():
    """Found by strict mode: a stride of 0 (params are archive data) made the padding rules divide by zero."""
    row, cp, tp, xs, ws = _conv_probe_pair()
    cp.params = {"kernel_size": [3, 3], "stride": [0, 0], "pad": [0, 0]}
    tp.params = {"padding": "SAME", "strides": [1, 1]}
    d = diagnose(row, cp, tp, xs, ws, strict=True)
    assert d and "rules_skipped" not in d[0].evidence


# -- the context's rows: up to and including the diagnosed row (the engine's fallback) -------------------


def test_rows_after_the_diagnosed_row_do_not_decide_about_it(tmp_path):
    """The engine names a divergence after the fact (every failing row passed its own error) and
    hands the diagnosis the finished report. DiagnosisContext promises the rows up to this one:
    a contaminated row further down must not turn float drift into "unknown"."""
    from layerparity.metrics import compute_metrics
    from layerparity.result import Tolerance

    shape = (1, 8, 8, 8)
    body, params, bottom = "", {}, "data"
    for i in range(5):
        body += conv_layer(f"c{i}", bottom, 8, 3, 1, 1)
        params[f"c{i}"] = list(conv_w(8, 8, 3, seed=100 + i))
        bottom = f"c{i}"
    net = caffe_net(tmp_path, prototxt({"data": shape}, body), params)
    inp = keras_input(shape)
    h = inp
    for i in range(5):
        h = keras.layers.Conv2D(8, 3, padding="same", name=f"c{i}")(h)
    m = keras.Model(inp, h)
    for i in range(5):
        m.get_layer(f"c{i}").set_weights([hwio(params[f"c{i}"][0]), params[f"c{i}"][1]])
    x = x_in(shape)
    rep = compare(net, m, x, rtol=1e-9, atol=1e-10)
    rows = list(rep.rows)
    k = next(i for i, r in enumerate(rows) if r.caffe_layer == "c3")
    row = rows[k]
    assert not row.passed
    # a later row, contaminated far beyond float noise (1% relative error)
    ref = f32(rng(7).standard_normal((1, 8, 8, 8)))
    later = LayerResult("c9", "c9", "c9", caffe_kind="Convolution", tf_kind="Conv2D", caffe_chain=["c9"],
                        metrics=compute_metrics(ref, ref * 1.01, Tolerance(1e-9, 1e-10)),
                        tolerance=Tolerance(1e-9, 1e-10))
    cval = net.blobs["c3"].data.copy()
    tval = keras.Model(inp, m.get_layer("c3").output)(x.transpose(0, 2, 3, 1)).numpy()
    cp, tp = Probe("c3", "Convolution", cval, layout="NCHW"), Probe("c3", "Conv2D", tval, layout="NHWC")
    so_far = diagnose(row, cp, tp, context=DiagnosisContext(rows=rows[: k + 1]))
    whole = diagnose(row, cp, tp, context=DiagnosisContext(rows=[*rows, later]))
    assert so_far[0].kind == "precision_drift" and "growth_per_layer" in so_far[0].evidence
    assert [d.to_dict() for d in whole] == [d.to_dict() for d in so_far]
    # the same later row, diagnosed itself, sees every row before it: not drift
    lp = Probe("c9", "Convolution", ref, layout="NCHW")
    lt = Probe("c9", "Conv2D", (ref * 1.01).transpose(0, 2, 3, 1), layout="NHWC")
    assert diagnose(later, lp, lt, context=DiagnosisContext(rows=[*rows, later]))[0].kind != "precision_drift"


# -- names in chains: Diagnosis.layer is the chain member the bug is placed in ----------------------------------


def relu_layer(name, blob, slope=None):
    extra = f" relu_param {{ negative_slope: {slope} }}" if slope is not None else ""
    return f'layer {{ name: "{name}" type: "ReLU" bottom: "{blob}" top: "{blob}"{extra} }}\n'


def _conv_relu_case(tmp_path, shape=(1, 3, 8, 8), n_out=4):
    w, b = conv_w(n_out, shape[1], 3, seed=3)
    body = conv_layer("conv1", "data", n_out, 3, 1, 1) + relu_layer("relu1", "conv1")
    net = caffe_net(tmp_path, prototxt({"data": shape}, body), {"conv1": [w, b]})

    def port(kernel=None, activation="relu"):
        inp = keras_input(shape)
        c = keras.layers.Conv2D(n_out, 3, padding="same", activation=activation, name="conv1")
        m = keras.Model(inp, c(inp))
        c.set_weights([hwio(w) if kernel is None else kernel, b])
        return m

    return net, w, b, port


@pytest.mark.parametrize("bug,kind", [
    (lambda k: k[::-1, ::-1], "kernel_flipped"),
    (lambda k: k.transpose(1, 0, 2, 3), "kernel_hw_swapped"),
    (lambda k: k[:, :, ::-1], "channel_order"),
])
def test_a_kernel_bug_in_a_conv_relu_chain_names_the_conv(tmp_path, bug, kind):
    net, w, b, port = _conv_relu_case(tmp_path)
    assert_clean(compare(net, port(), x_in()))
    rep = compare(net, port(np.ascontiguousarray(bug(hwio(w)))), x_in())
    fd = rep.first_divergence
    assert fd.caffe_chain == ["conv1", "relu1"]
    d = top(rep)
    assert (d.kind, d.layer) == (kind, "conv1")


def test_padding_in_a_conv_relu_chain_names_the_conv(tmp_path):
    w, b = conv_w(4, 3, 3, seed=3)
    body = conv_layer("conv1", "data", 4, 3, 2, 1) + relu_layer("relu1", "conv1")
    net = caffe_net(tmp_path, prototxt({"data": SHAPE}, body), {"conv1": [w, b]})
    inp = keras_input(SHAPE)
    c = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="conv1")
    m = keras.Model(inp, c(inp))
    c.set_weights([hwio(w), b])
    rep = compare(net, m, x_in())
    assert rep.first_divergence.caffe_chain == ["conv1", "relu1"]
    assert (top(rep).kind, top(rep).layer) == ("padding_asymmetry", "conv1")


def test_a_fused_leaky_activation_in_a_chain_names_the_relu(tmp_path):
    """Conv2D(activation='leaky_relu') (slope 0.2) held against conv1 + a plain Caffe ReLU: the conv is
    right, the activation is not, and the diagnosis says so."""
    net, w, b, port = _conv_relu_case(tmp_path)
    rep = compare(net, port(activation="leaky_relu"), x_in())
    assert rep.first_divergence.caffe_chain == ["conv1", "relu1"]
    d = top(rep)
    assert (d.kind, d.layer) == ("leaky_slope", "relu1")
    assert d.evidence["tf_slope"] == pytest.approx(0.2) and d.evidence["caffe_slope"] == 0
    assert d.evidence["confirmed_by"] == "recomputation"


def test_an_input_scale_through_a_chain_names_the_conv(tmp_path):
    net, w, b, port = _conv_relu_case(tmp_path)
    m = port()
    inp = keras_input(SHAPE)
    scaled = keras.Model(inp, m(keras.layers.Rescaling(255.0, name="scale255")(inp)))
    rep = compare(net, m, x_in())
    assert_clean(rep)
    x = x_in()
    net.blobs["data"].data[...] = x
    net.forward()
    cval = net.blobs["conv1"].data.copy()
    tval = scaled(x.transpose(0, 2, 3, 1)).numpy()
    row = LayerResult("relu1", "conv1", "conv1", caffe_kind="ReLU", tf_kind="Conv2D", caffe_chain=["conv1", "relu1"])
    ctx = DiagnosisContext(caffe_probes={
        "conv1": Probe("conv1", "Convolution", layer="conv1", params={"kernel_size": [3, 3], "pad": [1, 1]}),
        "relu1": Probe("relu1", "ReLU", layer="relu1", params={"negative_slope": 0.0})})
    d = diagnose(row, Probe("relu1", "ReLU", cval, layout="NCHW", layer="relu1"),
                 Probe("conv1", "Conv2D", tval, layout="NHWC", params={"padding": "same"}),
                 caffe_inputs=[x], caffe_weights={"conv1": [w, b]}, context=ctx)
    assert (d[0].kind, d[0].layer) == ("constant_scale", "conv1")


def _bn_chain_row(rep):
    fd = rep.first_divergence
    assert fd.caffe_chain == ["bn1", "scale1"], fd.caffe_chain
    return top(rep)


def test_batchnorm_epsilon_in_a_bn_scale_chain_names_the_batchnorm(tmp_path):
    net, x, port = _bn_case(tmp_path)
    d = _bn_chain_row(compare(net, port(eps=1e-3), x))
    assert (d.kind, d.layer) == ("batchnorm_epsilon", "bn1")


def test_batchnorm_scale_factor_in_a_bn_scale_chain_names_the_batchnorm(tmp_path):
    net, x, port = _bn_case(tmp_path, s=2.0)
    d = _bn_chain_row(compare(net, port(divide=False), x))
    assert (d.kind, d.layer) == ("batchnorm_scale_factor", "bn1")


def test_missing_scale_in_a_bn_scale_chain_names_the_scale(tmp_path):
    net, x, port = _bn_case(tmp_path)
    d = _bn_chain_row(compare(net, port(with_scale=False), x))
    assert (d.kind, d.layer) == ("missing_scale", "scale1")


def test_unknown_names_no_layer(tmp_path):
    net, w, b, port = _conv_relu_case(tmp_path)
    other = hwio(conv_w(4, 3, 3, seed=99)[0])
    d = top(compare(net, port(other), x_in()))
    assert (d.kind, d.layer) == ("unknown", "")


# -- conventions: one convention over the whole port, from real rows -----------------------------------------


TSHAPE = (1, 3, 10, 10)


def _three_conv_case(tmp_path):
    """conv1+relu1, pool1, conv2+relu2, conv3: real Caffe; the Keras port carries the ReLUs."""
    p = {n: list(conv_w(4, c, 3, seed=s)) for n, c, s in (("conv1", 3, 1), ("conv2", 4, 2), ("conv3", 4, 3))}
    body = (conv_layer("conv1", "data", 4, 3, 1, 1) + relu_layer("relu1", "conv1")
            + 'layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" '
              'pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
            + conv_layer("conv2", "pool1", 4, 3, 1, 1) + relu_layer("relu2", "conv2")
            + conv_layer("conv3", "conv2", 4, 3, 1, 0))
    net = caffe_net(tmp_path, prototxt({"data": TSHAPE}, body), p)

    def port(**bugs):
        inp = keras_input(TSHAPE)
        h = keras.layers.ZeroPadding2D(1, name="pad1")(inp)
        h = keras.layers.Conv2D(4, 3, activation="relu", name="conv1")(h)
        h = keras.layers.MaxPooling2D(2, 2, name="pool1")(h)
        h = keras.layers.ZeroPadding2D(1, name="pad2")(h)
        h = keras.layers.Conv2D(4, 3, activation="relu", name="conv2")(h)
        m = keras.Model(inp, keras.layers.Conv2D(4, 3, name="conv3")(h))
        for n in p:
            k = hwio(p[n][0])
            if n in bugs:
                k = np.ascontiguousarray(bugs[n](k))
            m.get_layer(n).set_weights([k, p[n][1]])
        return m

    return net, p, port


def _hw(k):
    return k.transpose(1, 0, 2, 3)


def test_every_conv_hw_swapped_is_a_spatially_transposed_port(tmp_path):
    from layerparity.diagnosis import conventions

    net, p, port = _three_conv_case(tmp_path)
    x = x_in(TSHAPE)
    assert_clean(compare(net, port(), x))
    assert conventions(compare(net, port(), x).rows) == []
    m = port(conv1=_hw, conv2=_hw, conv3=_hw)
    # the premise: a MATLAB-convention port, right when fed spatially transposed input
    net.blobs["data"].data[...] = x
    net.forward()
    t = m(x.transpose(0, 3, 2, 1)).numpy()
    assert np.abs(t - net.blobs["conv3"].data.transpose(0, 3, 2, 1)).max() <= 1e-5
    rep = compare(net, m, x)
    conv_rows = [r for r in rep.rows if r.diagnoses]
    assert [(r.caffe_chain, r.diagnoses[0].kind, r.diagnoses[0].layer) for r in conv_rows] == [
        (["conv1", "relu1"], "kernel_hw_swapped", "conv1"),
        (["conv2", "relu2"], "kernel_hw_swapped", "conv2"),
        (["conv3"], "kernel_hw_swapped", "conv3")]
    cs = conventions(rep.rows)
    assert [c.kind for c in cs] == ["spatially_transposed_port"]
    c = cs[0]
    assert c.layer == "" and c.evidence["layers"] == ["conv1", "conv2", "conv3"]
    assert 'tf_layout="NWHC"' in c.fix and "--tf-layout NWHC" in c.fix
    json.dumps(c.to_dict(), allow_nan=False)


@pytest.mark.parametrize("bugs", [
    {"conv1": _hw},                                              # one conv: not a convention
    {"conv1": _hw, "conv2": _hw, "conv3": lambda k: k[::-1, ::-1]},  # a conv contradicts it
], ids=["one_conv", "contradicted"])
def test_no_spatial_convention_without_consistent_convs(tmp_path, bugs):
    from layerparity.diagnosis import conventions

    net, p, port = _three_conv_case(tmp_path)
    rep = compare(net, port(**bugs), x_in(TSHAPE))
    tops = [r.diagnoses[0].kind for r in rep.rows if r.diagnoses]
    assert "kernel_hw_swapped" in tops
    assert [c.kind for c in conventions(rep.rows)] == []


def test_channel_order_at_the_first_conv_only_is_an_input_convention(tmp_path):
    from layerparity.diagnosis import conventions

    net, p, port = _three_conv_case(tmp_path)
    rep = compare(net, port(conv1=lambda k: k[:, :, ::-1]), x_in(TSHAPE))  # the port takes RGB, Caffe BGR
    assert [r.diagnoses[0].kind for r in rep.rows if r.diagnoses] == ["channel_order"]
    cs = conventions(rep.rows)
    assert [c.kind for c in cs] == ["input_channel_order"]
    assert cs[0].evidence["layers"] == ["conv1"] and cs[0].layer == ""
    assert "tf_inputs=" in cs[0].fix and "--tf-input FILE" in cs[0].fix


def test_channel_order_further_down_is_no_input_convention(tmp_path):
    from layerparity.diagnosis import conventions

    net, p, port = _three_conv_case(tmp_path)
    rep = compare(net, port(conv2=lambda k: k[:, :, ::-1]), x_in(TSHAPE))
    fd = rep.first_divergence
    assert fd.caffe_chain[0] == "conv2" and top(rep).kind == "channel_order" and top(rep).layer == "conv2"
    assert conventions(rep.rows) == []


def test_conventions_take_rows_only():
    from layerparity.diagnosis import conventions

    assert conventions([]) == []
    with pytest.raises(DiagnosisInputError, match="rows"):
        conventions("rows")
    with pytest.raises(DiagnosisInputError, match="LayerResult"):
        conventions([1, 2])


def test_the_python_examples_in_docs_diagnosis_run():
    import pathlib
    import re

    text = (pathlib.Path(__file__).parents[1] / "docs" / "diagnosis.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)
    assert len(blocks) >= 2
    for code in blocks:
        exec(compile(code, "docs/diagnosis.md", "exec"), {"__name__": "docs_example"})  # each asserts its result


def test_permuted_output_channels_of_the_first_conv_are_no_input_convention(tmp_path):
    """conv1's filters (and biases) in another order: TF's conv1 output is Caffe's with its channels
    permuted (channel_order, from the values), a bug inside the port, not the input's order."""
    from layerparity.diagnosis import conventions

    net, p, port = _three_conv_case(tmp_path)
    m = port()
    perm = [1, 0, 3, 2]
    m.get_layer("conv1").set_weights([hwio(p["conv1"][0])[..., perm], p["conv1"][1][perm]])
    rep = compare(net, m, x_in(TSHAPE))
    d = top(rep)
    assert d.kind == "channel_order" and d.evidence["permutation"] == perm and d.layer == "conv1"
    assert conventions(rep.rows) == []


def test_an_innerproduct_softmax_chain_recomputes_through_the_softmax():
    """ip1 + prob held against one Dense(activation='softmax'): candidates get Caffe's Softmax applied,
    so a weight bug is confirmed by recomputation and blamed on ip1."""
    from layerparity.diagnosis.reference import softmax

    r = rng(4)
    x = f32(r.standard_normal((2, 8)))
    w, b = f32(r.standard_normal((5, 8))), f32(r.standard_normal(5) * 0.1)
    y = f32(softmax(x @ w.T + b, 1))
    t = f32(softmax(x @ w.reshape(8, 5) + b, 1))  # the Dense kernel is Caffe's W reshaped, not transposed
    row = LayerResult("prob", "prob", "ip1", caffe_kind="Softmax", tf_kind="Dense", caffe_chain=["ip1", "prob"])
    ctx = DiagnosisContext(caffe_probes={"ip1": Probe("ip1", "InnerProduct", layer="ip1", params={"num_output": 5}),
                                         "prob": Probe("prob", "Softmax", layer="prob", params={"axis": 1})})
    d = diagnose(row, Probe("prob", "Softmax", y, layout="NC", layer="prob"), Probe("ip1", "Dense", t, layout="NC"),
                 caffe_inputs=[x], caffe_weights={"ip1": [w, b]}, context=ctx)
    assert (d[0].kind, d[0].layer, d[0].evidence["confirmed_by"]) == ("reshape_not_transpose", "ip1", "recomputation")


# -- the cookbook's "Report." blocks are real diagnoses ---------------------------------------------

_NUM = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def _cookbook_blocks() -> dict[str, tuple[str, str, float, str, str]]:
    """kind -> (block, layer, confidence, summary, evidence text) of each cookbook 'Report.' block."""
    import pathlib

    text = (pathlib.Path(__file__).parents[1] / "docs" / "diagnosis.md").read_text()
    out = {}
    for block in re.findall(r"^\*\*Report[^\n]*\n```\n(.*?)^```", text, re.S | re.M):
        head, *rest = block.strip("\n").splitlines()
        m = re.fullmatch(r"(?:(\S+)\s+)?([a-z_]+) \(([\d.]+)\)", head.strip())
        assert m, f"docs/diagnosis.md: a Report block's first line is not 'layer kind (confidence)': {head!r}"
        body = "\n".join(rest)
        summary, _, evidence = body.partition("evidence:")
        out[m.group(2)] = (block, m.group(1) or "", float(m.group(3)), " ".join(summary.split()), " ".join(evidence.split()))
    return out


def _split_top(s: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in s:
        depth += (ch in "[(") - (ch in "])")
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return [p for p in [*parts, cur.strip()] if p]


def _numbers_agree(shown: str, real: str, factor: float) -> bool:
    a, b = float(shown), float(real)
    if factor > 1:  # float noise: within a factor
        return (a == b == 0) or (a * b > 0 and max(abs(a), abs(b)) <= factor * min(abs(a), abs(b)))
    digits = len(shown.split("e")[0].partition(".")[2])
    scale = 10.0 ** int(shown.split("e")[1]) if "e" in shown else 1.0
    return abs(a - b) <= max(0.5 * 10.0 ** -digits * scale, 1e-3 * abs(a))


def _text_mismatch(shown: str, real: str, factor: float) -> str:
    """'' when ``shown`` (``...`` = any text) is a prefix of ``real`` with its numbers agreeing."""
    pattern = "".join(
        ".*?" if tok == "..." else "(" + _NUM.pattern + ")" if _NUM.fullmatch(tok) else re.escape(tok)
        for tok in re.split(r"(\.\.\.|" + _NUM.pattern + ")", shown) if tok)
    m = re.match(pattern, real, re.S)
    if not m:
        return f"shown {shown!r}\n  real  {real!r}"
    nums = [t for t in re.split(r"(\.\.\.|" + _NUM.pattern + ")", shown) if t and _NUM.fullmatch(t)]
    bad = [(s, r) for s, r in zip(nums, m.groups(), strict=True) if not _numbers_agree(s, r, factor)]
    return f"numbers {bad} in {shown!r}" if bad else ""


def _value_text(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value_text(x) for x in v) + "]"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _cookbook_case(kind: str, tmp_path):
    """The real diagnosis each cookbook block shows, built as the block's heading says."""
    from layerparity.diagnosis import conventions

    if kind == "padding_asymmetry":
        net, w, b = _conv_case(tmp_path)
        return top(compare(net, _conv_port(SHAPE, w, b, padding="same"), x_in()))
    if kind == "pool_rounding":
        net = _pool_net(tmp_path)
        inp = keras_input(SHAPE)
        return top(compare(net, keras.Model(inp, keras.layers.MaxPooling2D(3, 2, padding="valid", name="pool1")(inp)),
                           x_in()))
    if kind == "reshape_not_transpose":
        net, w, b = _conv_case(tmp_path, k=3, s=1, p=1)
        return top(compare(net, _conv_port(SHAPE, w, b, k=3, s=1, p=1, padding="same", kernel=w.reshape(3, 3, 3, 4)),
                           x_in()))
    if kind == "precision_drift":
        net, m, x = _deep_correct_port(tmp_path)
        return diagnose_report(compare(net, m, x, rtol=1e-9, atol=1e-10))[0]
    if kind == "spatially_transposed_port":
        net, _, port = _three_conv_case(tmp_path)
        return conventions(compare(net, port(conv1=_hw, conv2=_hw, conv3=_hw), x_in(TSHAPE)).rows)[0]
    if kind == "relu_capped":  # the demo with relu1 a ReLU6 (docs/sweep.md), on a large input
        from layerparity import demo

        f = demo.files()
        x = np.random.default_rng(3).uniform(-0.2, 0.2, size=(40, 3, 32, 32)).astype(np.float32)
        return top(compare(f.prototxt, demo_relu6_port(), x[2:3] * 100, caffe_weights=f.caffemodel))
    raise AssertionError(f"docs/diagnosis.md shows a Report block for {kind!r}, which this test cannot build")


@pytest.mark.parametrize("kind", sorted(_cookbook_blocks()))
def test_the_cookbook_report_blocks_are_real_diagnoses(kind, tmp_path):
    """Each cookbook 'Report.' block (an abridged rendering: layer, kind, confidence, summary, evidence)
    is what the diagnosis says on the case it describes: the summary a prefix of the real one (``...``
    any text), every evidence key shown present with the value shown. Float noise (precision_drift's
    numbers, a recomputation's residual) within a factor of 10, as it differs by CPU and BLAS kernel;
    every other number to its digits."""
    block, layer, confidence, summary, evidence = _cookbook_blocks()[kind]
    d = _cookbook_case(kind, tmp_path)
    factor = 10.0 if kind == "precision_drift" else 1.0
    assert (d.kind, d.layer, d.confidence) == (kind, layer, confidence), block
    assert not _text_mismatch(summary, " ".join(d.summary.split()), factor), _text_mismatch(summary, d.summary, factor)
    for item in _split_top(evidence):
        key, _, value = item.partition(" ")
        assert key in d.evidence, f"{kind}: evidence {key!r} not in {sorted(d.evidence)}"
        problem = _text_mismatch(value, _value_text(d.evidence[key]), 10.0 if key == "residual" else factor)
        assert not problem, f"{kind}: evidence {key}: {problem}"


def test_relu_capped_is_not_said_of_a_plain_relu_port(tmp_path):
    """The correct demo port on the same large input: no relu_capped (nor any diagnosis)."""
    from layerparity import demo

    f = demo.files()
    port = demo.build_keras_port(demo.demo_weights(), buggy=False)
    x = np.random.default_rng(3).uniform(-0.2, 0.2, size=(40, 3, 32, 32)).astype(np.float32)
    assert_clean(compare(f.prototxt, port, x[2:3] * 100, caffe_weights=f.caffemodel))


def test_the_cookbook_matcher_finds_stale_text_and_numbers():
    assert not _text_mismatch("pads (0, 1) at stride 2: the grid ...", "pads (0, 1) at stride 2: the grid shifts. More.", 1)
    assert _text_mismatch("pads (0, 1) at stride 3", "pads (0, 1) at stride 2", 1)
    assert _text_mismatch("residual 1.1e-07", "residual 2.3e-07", 1)
    assert not _text_mismatch("residual 1.1e-07", "residual 1.1432e-07", 1)
    assert not _text_mismatch("rel RMS 1.8e-07", "rel RMS 4.1e-07", 10.0)
    assert _text_mismatch("rel RMS 1.8e-07", "rel RMS 2.1e-06", 10.0)


def test_pool_rounding_is_confirmed_on_a_port_in_a_declared_layout(tmp_path):
    """A port declared N, W, H, C (tf_layout="NWHC"): TF's pooled value is brought to NCHW by the
    layout maths of layerparity.layout, so 'Caffe's output without its last row/column' is checked
    (the pooling rule knew only NHWC and NCHW: no confirmation, a lower confidence)."""
    shape = (1, 3, 8, 10)
    net = _pool_net(tmp_path, shape=shape)
    inp = keras.Input((10, 8, 3), batch_size=1, name="data")  # N, W, H, C
    port = keras.Model(inp, keras.layers.MaxPooling2D(3, 2, padding="valid", name="pool1")(inp))
    rep = compare(net, port, x_in(shape), tf_layout="NWHC")
    d = top(rep)
    assert d.kind == "pool_rounding"
    assert d.evidence.get("tf_equals_caffe_without_last_row_col") is True and d.confidence >= 0.95

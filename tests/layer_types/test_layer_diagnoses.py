"""Layer-specific diagnosis kinds of Caffe fork layers (issue 15): PixelShuffle
(``pixel_shuffle_order``), MVN (``mvn_parameters``), SPP (``spp_pyramid``) and PriorBox
(``priorbox_parameters``) and LSTM (``lstm_sequence_start``). For each, a real Caffe net and a Keras port with the classic bug:
the first divergence's top diagnosis is the kind, confirmed by recomputing Caffe's formula
with the bug (confidence 0.95), naming what differs; the correct port stays clean (no false
alarm). Real Caffe, real TF. The ports are the family modules' cases where they exist."""

from __future__ import annotations

import caffe  # noqa: F401  (Caffe before TensorFlow: the other order segfaults)
import keras
import numpy as np
import pytest
import tensorflow as tf
from test_elementwise_layers import case_mvn
from test_sequence_detection_layers import (
    FEAT,
    IMG,
    detection_case,
    detection_output_case,
    lstm_case,
    prior_box_case,
    prior_boxes,
)
from test_spatial_layers import case_pixelshuffle, case_spp

from diagnose_cases import (
    assert_clean,
    caffe_net,
    compare,
    conv_w,
    f32,
    hwio,
    keras_input,
    prototxt,
    rng,
    top,
)
from layerparity.diagnosis import DIAGNOSIS_KINDS

NEW_KINDS = ("pixel_shuffle_order", "mvn_parameters", "spp_pyramid", "priorbox_parameters", "lstm_sequence_start",
             "detection_output_parameters")


def _assert_top(report, kind: str, layer: str):
    assert not report, report.summary()
    d = top(report)
    assert report.first_divergence.caffe_chain == [layer], report.summary()
    assert d.kind == kind, [(x.kind, x.confidence, x.summary) for x in report.first_divergence.diagnoses]
    assert d.confidence == pytest.approx(0.95)
    assert d.evidence["confirmed_by"] == "recomputation"
    assert d.evidence["reference_reproduces_caffe"] is True
    assert d.layer == layer and d.fix
    return d


def test_the_new_kinds_are_stable_diagnosis_kinds():
    assert set(NEW_KINDS) <= set(DIAGNOSIS_KINDS)


# -- PixelShuffle --------------------------------------------------------------------------


def test_pixel_shuffle_by_depth_to_space_without_the_channel_reorder(tmp_path):
    net, model, x, layer, _ = case_pixelshuffle(tmp_path, bug=True)
    d = _assert_top(compare(net, model, x), "pixel_shuffle_order", layer)
    assert d.evidence["upscale_factor"] == 2
    assert "depth_to_space" in d.fix


def test_a_correct_pixel_shuffle_port_is_clean(tmp_path):
    net, model, x, _, _ = case_pixelshuffle(tmp_path, bug=False)
    assert_clean(compare(net, model, x))


# -- SPP ---------------------------------------------------------------------------------


def test_spp_with_adaptive_pooling_bins(tmp_path):
    net, model, x, layer, _ = case_spp(tmp_path, bug=True)
    d = _assert_top(compare(net, model, x), "spp_pyramid", layer)
    assert d.evidence["pyramid_height"] == 3 and d.evidence["pool"] == "MAX"
    # input 9 x 7, 4 bins: kernel ceil(9/4) = 3, pad (3*4 - 9 + 1) // 2 = 2 (Caffe's spp_layer.cpp)
    assert d.evidence["caffe_levels"][2] == {"bins": 4, "kernel": [3, 2], "stride": [3, 2], "pad": [2, 1]}


def test_a_correct_spp_port_is_clean(tmp_path):
    net, model, x, _, _ = case_spp(tmp_path, bug=False)
    assert_clean(compare(net, model, x))


def test_spp_with_a_wrong_pyramid_height(tmp_path):
    """Caffe's pyramid_height 3 (bins 1, 2, 4) ported with two levels, Caffe's windows each: the
    output is shorter (3 * 5 values, not 3 * 21); recomputing a height-2 pyramid confirms it."""
    shape = (1, 3, 9, 7)
    body = ('layer { name: "spp" type: "SPP" bottom: "data" top: "spp"\n'
            "  spp_param { pyramid_height: 3 pool: MAX } }\n")
    net = caffe_net(tmp_path, prototxt({"data": shape}, body))
    n, _, h, w = shape

    def level(t, bins):
        kh, kw = -(-h // bins), -(-w // bins)
        ph, pw = (kh * bins - h + 1) // 2, (kw * bins - w + 1) // 2
        t = tf.pad(t, [[0, 0], [ph, kh * bins - h - ph], [pw, kw * bins - w - pw], [0, 0]], constant_values=-3.0e38)
        p = tf.nn.max_pool2d(t, (kh, kw), (kh, kw), "VALID")
        return tf.reshape(tf.transpose(p, (0, 3, 1, 2)), (n, -1))

    inp = keras_input(shape)
    out = keras.layers.Lambda(lambda t: tf.concat([level(t, 2**i) for i in range(2)], axis=1), name="spp")(inp)
    d = top(compare(net, keras.Model(inp, out), f32(rng(14).standard_normal(shape))))
    assert d.kind == "spp_pyramid" and d.confidence == pytest.approx(0.95), (d.kind, d.summary)
    assert (d.evidence["caffe_pyramid_height"], d.evidence["tf_pyramid_height"]) == (3, 2)
    assert d.evidence["confirmed_by"] == "recomputation" and d.evidence["tf_bins"] == "caffe"


# -- MVN ---------------------------------------------------------------------------------

SHAPE = (1, 3, 5, 5)
MVN_EPS = 1e-3


def _mvn_case(tmp_path, *, across=False, normalize_variance=True, eps=MVN_EPS, tf_across=None, tf_norm=None,
              tf_eps=None, eps_inside=False):
    """conv1 -> MVN (Caffe's params) against Conv2D -> a Lambda computing MVN with the TF switches."""
    w, b = conv_w(4, 3, 3, seed=7)
    body = ('layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"\n'
            "  convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }\n"
            'layer { name: "mvn1" type: "MVN" bottom: "conv1" top: "mvn1"\n'
            f"  mvn_param {{ normalize_variance: {str(normalize_variance).lower()} "
            f"across_channels: {str(across).lower()} eps: {eps} }} }}\n")
    net = caffe_net(tmp_path, prototxt({"data": SHAPE}, body), {"conv1": [w, b]})
    tf_across = across if tf_across is None else tf_across
    tf_norm = normalize_variance if tf_norm is None else tf_norm
    tf_eps = eps if tf_eps is None else tf_eps
    axes = (1, 2, 3) if tf_across else (1, 2)

    def mvn(t):
        d = t - keras.ops.mean(t, axis=axes, keepdims=True)
        if not tf_norm:
            return d
        var = keras.ops.mean(d * d, axis=axes, keepdims=True)
        return d / (keras.ops.sqrt(var + tf_eps) if eps_inside else keras.ops.sqrt(var) + tf_eps)

    inp = keras_input(SHAPE)
    conv = keras.layers.Conv2D(4, 3, padding="same", name="conv1")
    model = keras.Model(inp, keras.layers.Lambda(mvn, name="mvn1")(conv(inp)))
    conv.set_weights([hwio(w), b])
    return net, model, f32(rng(3).standard_normal(SHAPE) * 2.0)


def test_mvn_without_the_variance_normalization_of_the_family_case(tmp_path):
    c = case_mvn(tmp_path, wrong=True)
    d = _assert_top(compare(c.net, c.model, c.x, **c.kw), "mvn_parameters", c.layer)
    assert (d.evidence["parameter"], d.evidence["caffe_value"], d.evidence["tf_value"]) == (
        "normalize_variance", True, False)


@pytest.mark.parametrize(("caffe_params", "tf_switches", "parameter", "caffe_value"), [
    ({}, {"tf_across": True}, "across_channels", False),
    ({"across": True}, {"tf_across": False}, "across_channels", True),
    ({}, {"eps_inside": True}, "eps_inside_sqrt", False),
    ({"normalize_variance": False}, {"tf_norm": True}, "normalize_variance", False),
])
def test_mvn_with_one_parameter_changed_names_it(tmp_path, caffe_params, tf_switches, parameter, caffe_value):
    net, model, x = _mvn_case(tmp_path, **caffe_params, **tf_switches)
    d = _assert_top(compare(net, model, x), "mvn_parameters", "mvn1")
    assert d.evidence["parameter"] == parameter and d.evidence["caffe_value"] == caffe_value
    assert d.evidence["tf_value"] == (not caffe_value if parameter != "eps_inside_sqrt" else True)


@pytest.mark.parametrize("caffe_params", [{}, {"across": True}, {"normalize_variance": False}])
def test_a_correct_mvn_port_is_clean(tmp_path, caffe_params):
    net, model, x = _mvn_case(tmp_path, **caffe_params)
    assert_clean(compare(net, model, x))


def test_an_mvn_bug_no_switch_explains_is_not_claimed(tmp_path):
    """Another eps value is not one of the switches the rule recomputes: no mvn_parameters."""
    net, model, x = _mvn_case(tmp_path, tf_eps=0.3)
    report = compare(net, model, x)
    assert not report and "mvn_parameters" not in [d.kind for d in report.first_divergence.diagnoses]


# -- PriorBox ------------------------------------------------------------------------------


@pytest.mark.parametrize(("bug", "parameter", "caffe_value", "tf_value"), [
    ("no_clip", "clip", True, False),
    ("offset", "offset", 0.5, 0.0),
    ("variance", "variance", [0.1, 0.1, 0.2, 0.2], [1.0, 1.0, 1.0, 1.0]),
])
def test_priorbox_with_one_switch_changed_names_it(tmp_path, bug, parameter, caffe_value, tf_value):
    net, model, x, kw, layer = prior_box_case(tmp_path, bug=bug)
    d = _assert_top(compare(net, model, x, **kw), "priorbox_parameters", layer)
    assert d.evidence["parameter"] == parameter
    assert np.allclose(d.evidence["caffe_value"], caffe_value) and np.allclose(d.evidence["tf_value"], tf_value)
    assert d.evidence["feature_hw"] == [4, 4] and d.evidence["image_hw"] == [16, 16]


def test_a_correct_priorbox_port_is_clean(tmp_path):
    net, model, x, kw, _ = prior_box_case(tmp_path)
    assert_clean(compare(net, model, x, **kw))


def test_priors_no_switch_explains_are_not_claimed(tmp_path):
    """Priors laid out for another image size (step 18/4 instead of 16/4): neither clip, offset nor
    variance recomputes them, so no priorbox_parameters (the family case's net, other TF priors)."""
    net, model, x, kw, layer = prior_box_case(tmp_path)
    wrong = prior_boxes(FEAT, FEAT, IMG + 2, IMG + 2)
    port = keras.Model(model.inputs, [model.outputs[0], keras.layers.Lambda(
        lambda t: keras.ops.convert_to_tensor(wrong), name=layer)(model.outputs[0])])
    report = compare(net, port, x, **kw)
    fd = report.first_divergence
    assert not report and fd is not None and fd.caffe_chain == [layer], report.summary()
    assert "priorbox_parameters" not in [d.kind for d in fd.diagnoses], [d.summary for d in fd.diagnoses]


# -- LSTM ----------------------------------------------------------------------------------


def test_an_lstm_port_that_ignores_cont_is_diagnosed_at_the_restart(tmp_path):
    net, model, x, kw, layer = lstm_case(tmp_path, bug="cont_ignored")
    d = _assert_top(compare(net, model, x, **kw), "lstm_sequence_start", layer)
    assert d.evidence["sequence_starts"] == [[3, 1]]  # item 1 starts a new sequence at t = 3


def test_a_correct_lstm_port_is_clean(tmp_path):
    net, model, x, kw, _ = lstm_case(tmp_path)
    assert_clean(compare(net, model, x, **kw))


def test_an_lstm_gate_order_bug_keeps_its_weight_proven_kind(tmp_path):
    """Ignoring cont does not explain swapped gates: the weight check's kind stays first, alone."""
    net, model, x, kw, layer = lstm_case(tmp_path, bug="gate_order")
    report = compare(net, model, x, **kw)
    assert not report and top(report).kind == "lstm_gate_order"
    assert "lstm_sequence_start" not in [d.kind for d in report.first_divergence.diagnoses]


# -- DetectionOutput -----------------------------------------------------------------------

@pytest.mark.parametrize(("tf_params", "parameter", "tf_value"), [
    ({"nms": 0.6}, "nms_threshold", 0.6),           # the TF Object Detection API's SSD configs
    ({"nms": 0.5}, "nms_threshold", 0.5),           # tf.image.non_max_suppression's default
    ({"top_k": 3}, "top_k", 3),                     # a smaller per-class cut before NMS
    ({"keep_top_k": 10}, "keep_top_k", 10),         # max_total_size 10 over all classes
    ({"conf": 0.5}, "confidence_threshold", 0.5),   # another score threshold
    ({"variance": False}, "variance_encoded_in_target", True),
])
def test_detection_output_with_one_parameter_changed_names_it(tmp_path, tf_params, parameter, tf_value):
    net, model, x, _, layer = detection_output_case(tmp_path, **tf_params)
    d = _assert_top(compare(net, model, x), "detection_output_parameters", layer)
    assert d.evidence["parameter"] == parameter, d.summary
    caffe_value = {"nms_threshold": 0.45, "top_k": 10, "keep_top_k": 12, "confidence_threshold": 0.2,
                   "variance_encoded_in_target": False}[parameter]
    assert d.evidence["caffe_value"] == pytest.approx(caffe_value)
    if parameter == "top_k":  # the rows say which cut, up to the values that cut the same
        lo, hi = d.evidence["tf_range"]
        assert lo <= tf_value and (hi is None or tf_value <= hi), d.evidence
    else:
        assert d.evidence["tf_value"] == pytest.approx(tf_value), d.summary
    assert f"{caffe_value:g}" in d.fix if parameter != "variance_encoded_in_target" else "varianc" in d.fix


def test_a_correct_detection_output_port_is_clean(tmp_path):
    net, model, x, _, _ = detection_output_case(tmp_path)
    assert_clean(compare(net, model, x))


@pytest.mark.parametrize("shift", [0.01, -0.02])
def test_detections_no_parameter_explains_are_not_claimed(tmp_path, shift):
    """Boxes decoded against other priors (shifted): no one-parameter change of Caffe's
    DetectionOutput gives those rows, so no detection_output_parameters."""
    net, model, x, _, layer = detection_output_case(tmp_path, prior_shift=shift)
    report = compare(net, model, x)
    fd = report.first_divergence
    assert not report and fd is not None and fd.caffe_chain == [layer], report.summary()
    assert "detection_output_parameters" not in [d.kind for d in fd.diagnoses], [d.summary for d in fd.diagnoses]


def test_detections_with_swapped_coordinates_are_not_a_parameter(tmp_path):
    """The family module's port writing its boxes in TF's y, x order keeps Caffe's detections
    and count; no parameter of Caffe's DetectionOutput swaps coordinates: not claimed."""
    net, model, x, _, layer = detection_case(tmp_path, bug="yx")
    report = compare(net, model, x)
    fd = report.first_divergence
    assert not report and fd is not None and fd.caffe_chain == [layer], report.summary()
    assert "detection_output_parameters" not in [d.kind for d in fd.diagnoses], [d.summary for d in fd.diagnoses]

"""A chain of Caffe layers (a convolution and its activation layer) against one Keras Conv2D
that carries the activation (issue 13, "alignment of decomposed and fused layers"): for each
activation Caffe has as a layer and Keras can fuse into a Conv2D (ReLU, leaky ReLU, ELU,
Sigmoid, TanH, Softmax), the correct port passes with the chain shown and own error
measured, and a kernel bug is named at the convolution inside the chain. Real Caffe and TF.

PReLU is a layer of its own in Keras (it has weights: no Conv2D ``activation=`` carries it),
so it pairs one to one and is covered by the MTCNN O-Net of the zoo."""

from __future__ import annotations

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

SHAPE = (1, 3, 9, 9)

# Caffe activation layer (type and params), Keras activation, the Caffe output's shape is the conv's
ACTIVATIONS = {
    "relu": ('type: "ReLU"', "relu"),
    "leaky_relu": ('type: "ReLU" relu_param { negative_slope: 0.2 }', "leaky_relu"),  # Keras' default slope 0.2
    "elu": ('type: "ELU"', "elu"),
    "sigmoid": ('type: "Sigmoid"', "sigmoid"),
    "tanh": ('type: "TanH"', "tanh"),
    "softmax": ('type: "Softmax"', "softmax"),  # Caffe's axis 1 (C) = Keras' last axis
}


def _case(tmp_path, act: str, kernel_bug: bool = False):
    caffe_act, keras_act = ACTIVATIONS[act]
    w, b = conv_w(4, 3, 3, seed=7)
    body = (f'layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"\n'
            f"  convolution_param {{ num_output: 4 kernel_size: 3 pad: 1 }} }}\n"
            f'layer {{ name: "act1" {caffe_act} bottom: "conv1" top: "act1" }}\n')
    net = caffe_net(tmp_path, prototxt({"data": SHAPE}, body), {"conv1": [w, b]})
    inp = keras_input(SHAPE)
    conv = keras.layers.Conv2D(4, 3, padding="same", activation=keras_act, name="conv1")
    model = keras.Model(inp, conv(inp))
    kernel = hwio(w)[::-1, ::-1] if kernel_bug else hwio(w)
    conv.set_weights([kernel.copy(), b])
    x = f32(rng(3).standard_normal(SHAPE))
    return net, model, x


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_a_correct_port_with_a_fused_activation_passes_as_one_chain(tmp_path, act):
    net, model, x = _case(tmp_path, act)
    report = compare(net, model, x)
    assert_clean(report)
    assert bool(report) and not report.unmapped_caffe, report.summary()
    (row,) = [r for r in report.rows if r.tf_layer == "conv1"]
    assert row.caffe_chain == ["conv1", "act1"]
    assert row.own is not None and row.own.passed  # own error replayed on the chain


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_a_kernel_bug_under_a_fused_activation_is_named_at_the_conv(tmp_path, act):
    net, model, x = _case(tmp_path, act, kernel_bug=True)
    report = compare(net, model, x)
    fd = report.first_divergence
    assert not report and fd is not None, report.summary()
    assert fd.caffe_chain == ["conv1", "act1"]
    assert fd.divergent_layer == "conv1", report.summary()
    assert fd.diagnoses and fd.diagnoses[0].kind == "kernel_flipped", [d.kind for d in fd.diagnoses]

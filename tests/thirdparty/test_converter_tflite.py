"""The converter ports as a new user would ship them: caffe2onnx -> onnx2tf SavedModels, then
TensorFlow's own ``tf.lite.TFLiteConverter.from_saved_model`` (default options, float32).

TFLite's converter folds more than onnx2tf does: each BatchNorm + Scale (+ ReLU) goes into its
conv's filter and bias (one ``CONV_2D``), each MatMul + Add into a ``FULLY_CONNECTED``; and it
keeps its kernels in its own layouts (``CONV_2D`` filter ``(O, kH, kW, I)``, ``FULLY_CONNECTED``
weight ``(O, I)``). Measured before the fix these tests guard: ``layerparity weights`` said
"Weights differ!" on every correct port (every conv ``different``, every fc ``equal_under``),
and ``compare`` named ``conv1`` with ``unknown`` for ResNet's ``bn_conv1`` scale-factor bug and
``scale2a_branch2a`` / ``missing_scale`` for the ``bn2a_branch2a`` epsilon bug (the weight check
of the diverged chain, which names the layer inside a folded chain, read the kernels in the
wrong layout; an eps folded into a kernel was never solved for).

Each port is converted here, into a temporary folder, by the installed TensorFlow; nothing is
downloaded. A missing port cache is a failure (thirdparty_ports.load_ports), never a skip.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from thirdparty_ports import load_ports

import layerparity as lp
from layerparity.weights import GOOD, weight_parity


@pytest.fixture(scope="module")
def tflite(tmp_path_factory):
    """``tflite(ports, port)``: the SavedModel ``port`` of a net converted to a float32 .tflite
    (once per module)."""
    import tensorflow as tf

    out = tmp_path_factory.mktemp("tflite")
    done: dict[tuple[str, str], str] = {}

    def convert(p, port: str) -> str:
        key = (p.name, port)
        if key not in done:
            path = out / f"{p.name}-{port}.tflite"
            path.write_bytes(tf.lite.TFLiteConverter.from_saved_model(p.path(port)).convert())
            done[key] = os.fspath(path)
        return done[key]

    return convert


def _problems(rep) -> list[tuple[str, str]]:
    return [(r.caffe_layer, r.status) for r in rep.rows if r.status not in GOOD]


@pytest.mark.slow
def test_resnet_correct_tflite_port_passes_compare_and_weights(tflite) -> None:
    p = load_ports("resnet50_quarter")
    model = tflite(p, p.manifest["correct"]["savedmodel"])
    report = lp.compare_models(p.prototxt, model, p.input(), caffe_weights=p.caffemodel)
    assert report and report.first_divergence is None, report.summary()
    assert len(report.rows) == 74 and not report.unmapped_caffe, report.summary()
    rep = weight_parity(p.prototxt, p.caffemodel, model)
    text = rep.to_text(max_rows=8)
    assert rep and not _problems(rep), text
    # BatchNorm + Scale folded into the CONV_2D filter and bias: checked against the formula
    assert rep.counts().get("folded", 0) >= 150, text
    assert rep.row("conv1").status == "folded" and rep.row("bn_conv1").status == "folded", text


#: TFLite fuses conv + BatchNorm + Scale + ReLU into one CONV_2D: the norm rule recomputes the
#: BatchNorm on the conv's Caffe output (it took the chain's first input, the image: a
#: ValueError on bn_conv1, a wrong reference deeper in the net) and reads no gamma/beta from the
#: fused op's kernel and bias (a false second diagnosis, missing_scale 0.95, on the eps bug).


@pytest.mark.slow
@pytest.mark.parametrize("bug", [
    "bn_conv1_scale_factor",
    "bn2a_branch2a_epsilon",
    "scale2a_branch2b_missing",
])
def test_resnet_tflite_bug_in_a_folded_chain_is_named(tflite, bug: str) -> None:
    _named(tflite, bug)


@pytest.mark.slow
def test_resnet_tflite_bn_scale_factor_as_the_cli_reports_it(tflite, monkeypatch) -> None:
    """The user's view (diagnosis not strict, as in the CLI): bn_conv1 and batchnorm_scale_factor,
    from the weight check of the fused chain, despite the norm rule's crash above."""
    monkeypatch.setenv("LAYERPARITY_DIAGNOSIS_STRICT", "0")
    _named(tflite, "bn_conv1_scale_factor")


def _named(tflite, bug: str) -> None:
    p = load_ports("resnet50_quarter")
    b = p.bug(bug)
    model = tflite(p, b["savedmodel"])
    report = lp.compare_models(p.prototxt, model, p.input(), caffe_weights=p.caffemodel)
    fd = report.first_divergence
    assert fd is not None, report.summary()
    assert fd.divergent_layer == b["layer"], (
        f"{bug}: first divergence {fd.divergent_layer!r} (chain {fd.caffe_chain}), expected {b['layer']!r}; "
        f"diagnoses {[(d.kind, d.confidence) for d in fd.diagnoses]}")
    assert fd.diagnoses and fd.diagnoses[0].kind in b["kinds"], [(d.kind, d.confidence) for d in fd.diagnoses]
    wrong = [d.kind for d in fd.diagnoses if d.confidence >= 0.9 and d.kind not in b["kinds"]]
    assert not wrong, f"{bug}: confident diagnoses of another bug: {wrong}"
    rep = weight_parity(p.prototxt, p.caffemodel, model)
    assert [c for c, _ in _problems(rep)] == [b["layer"]], rep.to_text(max_rows=8)
    assert rep.row(b["layer"]).transform in b["kinds"], rep.to_text(max_rows=8)


@pytest.mark.slow
def test_alexnet_tflite_fully_connected_weights_read_in_tflite_layout(tflite) -> None:
    """FULLY_CONNECTED holds (O, I), CONV_2D (O, kH, kW, I): the correct port's weights are all
    equal (fc6 reads a transpose back to NCHW, so plain W); fc7's transposed square weight is
    named, and nothing else."""
    p = load_ports("alexnet")
    rep = weight_parity(p.prototxt, p.caffemodel, tflite(p, p.manifest["correct"]["savedmodel"]))
    assert rep and rep.counts() == {"equal": 8}, rep.to_text(max_rows=8)
    b = p.bug("fc7_weight_transposed")
    rep = weight_parity(p.prototxt, p.caffemodel, tflite(p, b["savedmodel"]))
    assert _problems(rep) == [("fc7", "equal_under:reshape_not_transpose")], rep.to_text(max_rows=8)


# -- every TFLite kernel layout, on a small net (no cached ports) -------------------------------

SMALL = (1, 3, 8, 8)
SMALL_BODY = """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 6 kernel_size: 3 } }
layer { name: "dw" type: "Convolution" bottom: "conv1" top: "dw" convolution_param { num_output: 12 kernel_size: 3 group: 6 } }
layer { name: "up" type: "Deconvolution" bottom: "dw" top: "up" convolution_param { num_output: 5 kernel_size: 3 } }
layer { name: "fc" type: "InnerProduct" bottom: "up" top: "fc" inner_product_param { num_output: 7 } }
"""


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    from diagnose_cases import caffe_net, conv_w, f32, prototxt, rng, save_caffemodel

    tmp = tmp_path_factory.mktemp("small")
    r = rng(7)
    params = {
        "conv1": list(conv_w(6, 3, 3, seed=1)),
        "dw": list(conv_w(12, 1, 3, seed=2)),
        "up": [f32(r.standard_normal((12, 5, 3, 3)) * 0.3), f32(r.standard_normal(5) * 0.1)],
        "fc": [f32(r.standard_normal((7, 5 * 6 * 6)) * 0.1), f32(r.standard_normal(7) * 0.1)],
    }
    model = save_caffemodel(caffe_net(tmp, prototxt({"data": SMALL}, SMALL_BODY), params), tmp)
    return str(tmp / "net.prototxt"), model, params, tmp


def _small_tflite(params, path, *, flip_dw: bool = False) -> str:
    """The Keras port (Conv2D, DepthwiseConv2D with multiplier 2, Conv2DTranspose, Dense) as .tflite:
    CONV_2D, DEPTHWISE_CONV_2D, TRANSPOSE_CONV, FULLY_CONNECTED."""
    import keras
    import tensorflow as tf

    from layerparity.layout import (
        conv_weight_caffe_to_tf,
        deconv_weight_caffe_to_tf,
        depthwise_weight,
        inner_product_weight_caffe_to_tf,
    )

    inp = keras.Input((8, 8, 3), batch_size=1, name="data")
    conv = keras.layers.Conv2D(6, 3, name="conv1")
    dw = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw")
    up = keras.layers.Conv2DTranspose(5, 3, name="up")
    fc = keras.layers.Dense(7, name="fc")
    x = up(dw(conv(inp)))
    model = keras.Model(inp, fc(keras.layers.Flatten(name="flat")(x)))
    k = depthwise_weight(params["dw"][0], 6)
    conv.set_weights([conv_weight_caffe_to_tf(params["conv1"][0]), params["conv1"][1]])
    dw.set_weights([k[::-1, ::-1] if flip_dw else k, params["dw"][1]])
    up.set_weights([deconv_weight_caffe_to_tf(params["up"][0]), params["up"][1]])
    fc.set_weights([inner_product_weight_caffe_to_tf(params["fc"][0], (5, 6, 6)), params["fc"][1]])
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return os.fspath(path)


def test_every_tflite_kernel_layout_is_read_as_tflite_holds_it(small) -> None:
    proto, caffemodel, params, tmp = small
    good = _small_tflite(params, tmp / "good.tflite")
    from layerparity.backends.tensorflow import load_tf

    with load_tf(good) as b:
        kinds = {p.kind for p in b.capture(np.zeros(SMALL, np.float32))}
    assert {"CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED"} <= kinds, kinds
    rep = weight_parity(proto, caffemodel, good)
    assert rep and {r.caffe_layer: r.status for r in rep.rows} == dict.fromkeys(params, "equal"), rep.to_text()
    rep = weight_parity(proto, caffemodel, _small_tflite(params, tmp / "flipped.tflite", flip_dw=True))
    assert _problems(rep) == [("dw", "equal_under:kernel_flipped")], rep.to_text()

"""A correct port converted to float32 TFLite passes: TFLite fuses a conv with the ReLU that
follows it into one op named ``relu/Relu;conv/BiasAdd;conv/Conv2D`` (the fused TF ops' names
joined by ``;``), and the Caffe conv + in-place ReLU must be compared as one chain against it,
not the ReLU alone with the conv left out (that was a false alarm: "Caffe layers that compute
something with no TF counterpart").

Real Caffe (the bundled demo net) against its Keras port, exported by the TFLite converter,
both straight from the Keras model and from a reloaded ``.keras`` (whose retraced scopes carry
``_1`` suffixes, as ports loaded from disk do).
"""

from __future__ import annotations

import numpy as np
import pytest

import layerparity as lp
from layerparity import demo

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")


def _weights():
    return (getattr(demo, "demo_weights", None) or demo._weights)()


@pytest.fixture(scope="module")
def ports(tmp_path_factory):
    demo.register_keras_objects()
    d = tmp_path_factory.mktemp("tflite")
    m = demo.build_keras_port(_weights(), buggy=False)
    (d / "direct.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(m).convert())
    m.save(str(d / "port.keras"))
    again = keras.models.load_model(str(d / "port.keras"))
    again(np.zeros((1, 32, 32, 3), np.float32))  # traced a second time: scopes become conv1_1, ...
    (d / "reloaded.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(again).convert())
    return d


@pytest.mark.parametrize("form", ["direct", "reloaded"])
def test_float32_tflite_of_a_correct_port_passes_with_conv_relu_chains(ports, form):
    f = demo.files()
    x = np.random.default_rng(2).uniform(-1, 1, (1, 3, 32, 32)).astype(np.float32)
    r = lp.compare_models(f.prototxt, str(ports / f"{form}.tflite"), x, caffe_weights=f.caffemodel)
    assert r, r.summary()
    assert r.coverage.passes and not r.unmapped_caffe, r.summary()
    chains = {tuple(row.caffe_chain) for row in r.rows}
    fused = [row for row in r.rows if ";" in row.tf_layer]
    assert fused, [row.tf_layer for row in r.rows]  # TFLite did fuse something: the case under test
    assert {("conv1", "relu1"), ("conv2", "relu2")} <= chains, sorted(chains)

"""Declared TF layouts (``tf_layout=``) against real Caffe and real TF.

The port under test keeps the MATLAB Caffe convention: it takes the image spatially
transposed (its 4-D tensors are N, W, H, C relative to Caffe's N, C, H, W), its conv
kernels are H/W-swapped to match, and a ``Permute`` brings Caffe's C, H, W order back
before the flatten and the fully connected layer. It is a correct port: with
``tf_layout="NWHC"`` every probe is labelled so that, relayouted to Caffe's layout,
it equals Caffe's blob.
"""

from __future__ import annotations

import caffe  # noqa: F401  - before TensorFlow (the other order segfaults in caffe.Net)
import numpy as np
import pytest

import portbuilder as pb  # noqa: E402

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from layerparity.backends.base import InputSpec  # noqa: E402
from layerparity.backends.caffe import capture_caffe  # noqa: E402
from layerparity.backends.tensorflow import capture_tf, load_tf  # noqa: E402
from layerparity.backends.tfcommon import (  # noqa: E402
    normalize_tf_layout,
    probe_layout,
    to_model_layout,
)
from layerparity.compare import compare_traces  # noqa: E402
from layerparity.errors import InputDataError  # noqa: E402
from layerparity.layout import relayout  # noqa: E402

H, W = 10, 8  # not square: a swapped H/W cannot pass unnoticed

PROTOTXT = f"""
name: "matlab_net"
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 2 dim: 3 dim: {H} dim: {W} }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 4 kernel_h: 3 kernel_w: 1 pad_h: 1 pad_w: 0 }} }}
layer {{ name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }}
layer {{ name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" inner_product_param {{ num_output: 6 }} }}
"""


def _matlab_port(params: dict, h: int = H, w: int = W) -> keras.Model:
    """The Keras port in the MATLAB convention (input N, W, H, C)."""
    inp = keras.Input((w, h, 3), name="data")
    conv = keras.layers.Conv2D(4, (1, 3), padding="same", name="conv1")
    x = conv(inp)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    x = keras.layers.Permute((3, 2, 1), name="to_caffe_order")(x)  # N, W, H, C -> N, C, H, W
    x = keras.layers.Flatten(name="flat")(x)
    fc = keras.layers.Dense(6, name="fc")
    out = fc(x)
    model = keras.Model(inp, out, name="matlab_port")
    w, b = params["conv1"]
    conv.set_weights([w.transpose(3, 2, 1, 0), b])  # Caffe (O, I, kH, kW) -> (kW, kH, I, O)
    w, b = params["fc"]
    fc.set_weights([w.T, b])  # the flatten is in Caffe's C, H, W order already
    return model


@pytest.fixture(scope="module")
def matlab(tmp_path_factory):
    d = tmp_path_factory.mktemp("matlab")
    proto = str(d / "net.prototxt")
    with open(proto, "w") as f:
        f.write(PROTOTXT)
    x = pb.random_input((2, 3, H, W), seed=3)
    params = pb.make_caffemodel(proto, d / "net.caffemodel", x, seed=4)
    caffe_trace = capture_caffe(proto, str(d / "net.caffemodel"), x)
    return _matlab_port(params), x, caffe_trace, d


EXPECTED = {
    "data": ("NWHC", None),
    "conv1": ("NWHC", None),
    "relu1": ("NWHC", None),
    "pool1": ("NWHC", None),
    "to_caffe_order": ("NCHW", None),
    "flat": ("flat:NCHW", (4, H // 2, W // 2)),
    "fc": ("NC", None),
}


def _same_as_caffe(tf_probe, caffe_trace, caffe_name):
    c = caffe_trace[caffe_name]
    v = relayout(tf_probe.value, tf_probe.layout, tf_probe.flat_shape, c.layout, c.flat_shape)
    np.testing.assert_allclose(v, c.value, rtol=1e-4, atol=1e-4 * float(np.abs(c.value).max()))


def test_keras_port_declared_nwhc_is_fed_transposed_and_labelled(matlab):
    model, x, caffe_trace, _ = matlab
    b = load_tf(model, tf_layout="NWHC")
    assert b.input_specs() == [InputSpec("data", (None, 3, H, W), "NCHW")]
    assert b.input_layouts() == {"data": "NWHC"}
    t = b.capture(x)
    assert {p.name: (p.layout, p.flat_shape) for p in t} == EXPECTED
    np.testing.assert_array_equal(t["data"].value, x.transpose(0, 3, 2, 1))
    for name in ("conv1", "relu1", "pool1", "fc"):
        _same_as_caffe(t[name], caffe_trace, name)
    np.testing.assert_allclose(
        t["to_caffe_order"].value, caffe_trace["pool1"].value, rtol=1e-5, atol=1e-5
    )
    report = compare_traces(caffe_trace, t)
    assert bool(report) and report.first_divergence is None, report


def test_without_the_declaration_the_port_takes_another_input(matlab):
    model, x, _, _ = matlab
    b = load_tf(model)
    assert b.input_specs()[0].shape == (None, 3, W, H)  # read as NHWC: H and W swapped
    with pytest.raises(InputDataError, match="axis 2 differs"):
        b.capture(x)


def test_square_port_without_the_declaration_fails_the_comparison(tmp_path):
    """At a square size the transposed port runs under the default NHWC labels too,
    and the comparison must then fail (a conv with an H/W-swapped kernel)."""
    proto = str(tmp_path / "sq.prototxt")
    with open(proto, "w") as f:
        f.write(PROTOTXT.replace(f"dim: {H} dim: {W}", "dim: 8 dim: 8"))
    x = pb.random_input((2, 3, 8, 8), seed=5)
    params = pb.make_caffemodel(proto, tmp_path / "sq.caffemodel", x, seed=6)
    caffe_trace = capture_caffe(proto, str(tmp_path / "sq.caffemodel"), x)
    model = _matlab_port(params, 8, 8)
    good = compare_traces(caffe_trace, capture_tf(model, x, tf_layout="NWHC"))
    bad = compare_traces(caffe_trace, capture_tf(model, x))
    assert bool(good) and not bool(bad)
    assert bad.first_divergence is not None


def test_saved_model_and_tflite_of_the_port_follow_transposes(matlab):
    model, x, caffe_trace, d = matlab
    sm = str(d / "sm")
    model.export(sm, verbose=False)
    t = capture_tf(sm, x, tf_layout="NWHC")
    by_kind = {}
    for p in t:
        by_kind.setdefault(p.kind, p)
    assert t[t.names[0]].layout == "NWHC"
    assert by_kind["Conv2D"].layout == "NWHC" and by_kind["MaxPool"].layout == "NWHC"
    assert by_kind["Transpose"].layout == "NCHW"
    assert by_kind["Reshape"].layout == "flat:NCHW"
    _same_as_caffe(by_kind["MaxPool"], caffe_trace, "pool1")
    last = [p for p in t if p.kind in ("BiasAdd", "AddV2")][-1]
    _same_as_caffe(last, caffe_trace, "fc")

    lite = d / "port.tflite"
    lite.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    t = capture_tf(str(lite), x, tf_layout="NWHC")
    kinds = {p.kind: p for p in t}
    assert kinds["CONV_2D"].layout == "NWHC" and kinds["MAX_POOL_2D"].layout == "NWHC"
    assert kinds["TRANSPOSE"].layout == "NCHW"
    _same_as_caffe(kinds["MAX_POOL_2D"], caffe_trace, "pool1")
    _same_as_caffe(kinds["FULLY_CONNECTED"], caffe_trace, "fc")


def test_normalize_tf_layout():
    assert normalize_tf_layout("nwhc") == "NWHC"
    assert normalize_tf_layout(None, "channels_first") == "NCHW"
    assert normalize_tf_layout("channels_last") == "NHWC"
    assert normalize_tf_layout(None) is None
    with pytest.raises(InputDataError, match="permutation of the letters N, C, H, W"):
        normalize_tf_layout("NHWX")
    with pytest.raises(InputDataError, match="disagree"):
        normalize_tf_layout("NWHC", "channels_first")
    with pytest.raises(InputDataError, match="tf_layout"):
        load_tf(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]), tf_layout="NCH")


def test_probe_layout_rule():
    # a declared data_format keeps the spatial order of what the op reads
    assert probe_layout((1, 5, 4, 3), data_format="channels_last", in_layouts=["NWHC"], default="NHWC") == ("NWHC", None)
    assert probe_layout((1, 3, 5, 4), data_format="NCHW", in_layouts=["NWHC"], default="NHWC") == ("NCWH", None)
    assert probe_layout((1, 5, 4, 3), data_format="channels_last", default="NWHC") == ("NWHC", None)
    assert probe_layout((1, 5, 4, 3), in_layouts=["NHWC"], default="NWHC") == ("NHWC", None)
    # transposes move labels; a flatten of any 4-D layout keeps it
    assert probe_layout((1, 3, 4, 5), op="transpose", perm=[0, 3, 2, 1], in_layouts=["NWHC"], default="NHWC") == ("NCHW", None)
    assert probe_layout((1, 60), op="flatten", in_layouts=["NWHC"], in_shape=(1, 5, 4, 3), default="NHWC") == (
        "flat:NWHC",
        (5, 4, 3),
    )
    # Keras' channels_first Flatten moves axis 1 last before flattening
    assert probe_layout(
        (1, 60), op="flatten", data_format="channels_first", in_layouts=["NCHW"], in_shape=(1, 3, 4, 5), default="NHWC"
    ) == ("flat:NHWC", (4, 5, 3))
    assert probe_layout((1, 60), op="reshape", in_layouts=["NWHC"], in_shape=(1, 5, 4, 3), default="NHWC") == (
        "flat:NWHC",
        (5, 4, 3),
    )
    x = np.arange(24).reshape(1, 2, 3, 4)
    assert to_model_layout(x, "NWHC").shape == (1, 4, 3, 2)
    np.testing.assert_array_equal(to_model_layout(x, "NWHC"), x.transpose(0, 3, 2, 1))


def test_compare_models_with_the_declared_layout(matlab):
    from layerparity.compare import compare_models

    model, x, _, d = matlab
    proto, weights = str(d / "net.prototxt"), str(d / "net.caffemodel")
    for kw in ({"tf_layout": "NWHC"}, {"tf_options": {"tf_layout": "NWHC"}}):
        report = compare_models(proto, model, x, caffe_weights=weights, **kw)
        assert bool(report) and report.first_divergence is None, report
    with pytest.raises(InputDataError):  # read as NHWC, the port takes another input size
        compare_models(proto, model, x, caffe_weights=weights)

"""A port in the MATLAB convention (spatially transposed input, kernels H/W-swapped to
match) whose convolutions are NOT square: 3x5 kernels, strides and pads differing in H
and W (the input itself is square, so the undeclared
port runs at all). Real Caffe against a real Keras port: it fails without ``tf_layout="NWHC"``
with the convention named, and passes with it."""

from __future__ import annotations

import os

import numpy as np
import pytest

from layerparity import compare_models

keras = pytest.importorskip("keras")  # present: the conftest makes a missing TF a usage error

# conv1: kernel 3x5, stride 1x2, pad 1x2; conv2: kernel 5x3, stride 2x1, pad 2x1; conv3: 1x3, pad 0x1
PROTOTXT = """name: "matlab_nonsquare"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 16 dim: 16 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_h: 3 kernel_w: 5 stride_h: 1 stride_w: 2 pad_h: 1 pad_w: 2 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 5 kernel_h: 5 kernel_w: 3 stride_h: 2 stride_w: 1 pad_h: 2 pad_w: 1 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "conv3" type: "Convolution" bottom: "conv2" top: "conv3"
  convolution_param { num_output: 3 kernel_h: 1 kernel_w: 3 pad_h: 0 pad_w: 1 } }
"""

CONVS = {  # Caffe (kernel, stride, pad), each (h, w)
    "conv1": ((3, 5), (1, 2), (1, 2)),
    "conv2": ((5, 3), (2, 1), (2, 1)),
    "conv3": ((1, 3), (1, 1), (0, 1)),
}


@pytest.fixture(scope="module")
def matlab(tmp_path_factory):
    import portbuilder as pb

    d = tmp_path_factory.mktemp("matlab_nonsquare")
    proto = d / "net.prototxt"
    proto.write_text(PROTOTXT)
    x = pb.random_input((1, 3, 16, 16), seed=21)
    params = pb.make_caffemodel(os.fspath(proto), d / "net.caffemodel", x, seed=22)
    inp = keras.Input((16, 16, 3), name="data")  # N, W, H, C relative to Caffe
    h = inp
    layers = []
    for name, (k, s, p) in CONVS.items():
        w, b = params[name]
        # everything spatial swapped: the port's first spatial axis is Caffe's W
        h = keras.layers.ZeroPadding2D(((p[1], p[1]), (p[0], p[0])), name=f"pad_{name}")(h)
        conv = keras.layers.Conv2D(w.shape[0], (k[1], k[0]), strides=(s[1], s[0]), padding="valid",
                                   activation="relu" if name != "conv3" else None, name=name)
        h = conv(h)
        layers.append((conv, [w.transpose(3, 2, 1, 0), b]))  # (O, I, kH, kW) -> (kW, kH, I, O)
    model = keras.Model(inp, h)
    for layer, ws in layers:
        layer.set_weights(ws)
    model.save(d / "port.keras")
    return {"proto": os.fspath(proto), "weights": os.fspath(d / "net.caffemodel"), "x": x,
            "keras": os.fspath(d / "port.keras"), "params": params}


def test_premise_the_port_is_right_on_transposed_input(matlab):
    import caffe

    net = caffe.Net(matlab["proto"], matlab["weights"], caffe.TEST)
    net.blobs["data"].data[...] = matlab["x"]
    net.forward()
    m = keras.models.load_model(matlab["keras"])
    t = m(matlab["x"].transpose(0, 3, 2, 1)).numpy()  # N, W, H, C
    want = net.blobs["conv3"].data.transpose(0, 3, 2, 1)
    assert t.shape == want.shape
    assert np.abs(t - want).max() <= 1e-4 * np.abs(want).max()


def test_nonsquare_transposed_port_passes_declared_and_fails_naming_the_convention(matlab):
    good = compare_models(matlab["proto"], matlab["keras"], matlab["x"], caffe_weights=matlab["weights"],
                          tf_layout="NWHC")
    assert good, good.summary()
    assert good.conventions == []
    bad = compare_models(matlab["proto"], matlab["keras"], matlab["x"], caffe_weights=matlab["weights"])
    print(bad.summary())
    for r in bad.rows:
        print(r.caffe_chain, r.note, [(d.kind, d.layer, d.summary[:100]) for d in r.diagnoses])
    assert not bad
    assert bad.first_divergence.divergent_layer == "conv1"
    diag = {r.diagnoses[0].layer: r.diagnoses[0].kind for r in bad.rows if r.diagnoses}
    assert diag == {"conv1": "kernel_hw_swapped", "conv2": "kernel_hw_swapped", "conv3": "kernel_hw_swapped"}
    assert [d.kind for d in bad.conventions] == ["spatially_transposed_port"]
    assert bad.conventions[0].evidence["layers"] == ["conv1", "conv2", "conv3"]
    assert 'tf_layout="NWHC"' in bad.conventions[0].fix
    assert "port convention: spatially_transposed_port" in str(bad)


# -- the per-layer diagnosis of one non-square layer -------------------------------------------


def test_weights_find_a_non_square_kernel_hw_swapped():
    from layerparity.weights import check_weights

    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 5)).astype(np.float32)  # (O, I, kH, kW): 3x5
    assert check_weights({"conv1": [w]}, {"conv1": [w.transpose(2, 3, 1, 0)]}).rows[0].status == "equal"
    swapped = w.transpose(3, 2, 1, 0)  # (kW, kH, I, O): held as 5x3
    assert check_weights({"conv1": [w]}, {"conv1": [swapped]}).rows[0].status == "equal_under:kernel_hw_swapped"
    # a 1x3 kernel held as 3x1: the same memory, another kernel; never "equal"
    w13 = rng.standard_normal((4, 3, 1, 3)).astype(np.float32)
    rep = check_weights({"conv1": [w13]}, {"conv1": [w13.transpose(3, 2, 1, 0)]})
    assert rep.rows[0].status == "equal_under:kernel_hw_swapped" and not rep


def test_recomputation_finds_kernel_stride_and_pad_swapped_without_tf_weights(tmp_path):
    """Caffe conv 3x5, pad 1x2 (stride 1: the same output size either way); the TF layer is
    5x3, pad 2x1 on NHWC input. Without the TF weights only a recomputation can tell."""
    import caffe

    from layerparity.diagnosis import diagnose
    from layerparity.result import LayerResult
    from layerparity.trace import Probe

    proto = tmp_path / "one.prototxt"
    proto.write_text('name: "one"\nlayer { name: "data" type: "Input" top: "data" '
                     'input_param { shape { dim: 1 dim: 3 dim: 10 dim: 12 } } }\n'
                     'layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"\n'
                     '  convolution_param { num_output: 4 kernel_h: 3 kernel_w: 5 pad_h: 1 pad_w: 2 } }\n')
    net = caffe.Net(str(proto), caffe.TEST)
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 3, 3, 5)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    net.params["conv1"][0].data[...] = w
    net.params["conv1"][1].data[...] = b
    x = rng.standard_normal((1, 3, 10, 12)).astype(np.float32)
    net.blobs["data"].data[...] = x
    net.forward()
    y = net.blobs["conv1"].data.copy()
    inp = keras.Input((10, 12, 3))
    h = keras.layers.ZeroPadding2D(((2, 2), (1, 1)))(inp)
    conv = keras.layers.Conv2D(4, (5, 3), padding="valid")
    m = keras.Model(inp, conv(h))
    conv.set_weights([w.transpose(3, 2, 1, 0), b])
    t = m(x.transpose(0, 2, 3, 1)).numpy()
    assert t.shape == (1, 10, 12, 4)  # the same size as Caffe's, other values
    params = {"kernel_size": [3, 5], "stride": [1, 1], "pad": [1, 2], "dilation": [1, 1], "group": 1,
              "num_output": 4}
    cp = Probe("conv1", "Convolution", y, layout="NCHW", inputs=["data"], params=params)
    tp = Probe("conv1", "Conv2D", t, layout="NHWC", params={"padding": "VALID", "strides": [1, 1]})
    ds = diagnose(LayerResult("conv1", "conv1", "conv1", caffe_kind="Convolution"), cp, tp, [x], [w, b], None)
    assert ds[0].kind == "kernel_hw_swapped" and ds[0].layer == "conv1"
    assert ds[0].evidence["confirmed_by"] == "recomputation"

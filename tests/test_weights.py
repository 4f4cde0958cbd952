"""Weight parity: a tiny real Caffe net (every kind of param blob) against a real Keras
port, correct and with each classic weight-transform bug."""

from __future__ import annotations

import json

import numpy as np
import pytest

from diagnose_cases import (
    caffe_net,
    conv_w,
    f32,
    hwio,
    keras,
    keras_input,
    prototxt,
    rng,
    save_caffemodel,
)
from layerparity.backends.caffe import CaffeBackend
from layerparity.backends.tensorflow import load_tf
from layerparity.errors import InputError, WeightParityError
from layerparity.layout import depthwise_weight, inner_product_weight_caffe_to_tf
from layerparity.weights import (
    check_weights,
    iter_transform_names,
    weight_parity,
)

SHAPE = (1, 3, 6, 6)
S = 2.0  # BatchNorm scale factor (third blob)

BODY = """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "prelu1" type: "PReLU" bottom: "conv1" top: "conv1" }
layer { name: "dw1" type: "Convolution" bottom: "conv1" top: "dw1" convolution_param { num_output: 8 kernel_size: 3 pad: 1 group: 4 } }
layer { name: "g1" type: "Convolution" bottom: "dw1" top: "g1" convolution_param { num_output: 4 kernel_size: 1 group: 2 } }
layer { name: "up1" type: "Deconvolution" bottom: "g1" top: "up1" convolution_param { num_output: 4 kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "up1" top: "ip1" inner_product_param { num_output: 5 } }
"""


def _params():
    r = rng(7)
    w1, b1 = conv_w(4, 3, 3, seed=1)
    return {
        "conv1": [w1, b1],
        "bn1": [f32(r.standard_normal(4)) * S, f32(r.uniform(0.5, 2, 4)) * S, f32([S])],
        "scale1": [f32(r.uniform(0.5, 2, 4)), f32(r.standard_normal(4))],
        "prelu1": [f32([0.1, 0.2, 0.3, 0.4])],
        "dw1": list(conv_w(8, 1, 3, seed=2)),
        "g1": list(conv_w(4, 4, 1, seed=3)),
        "up1": [f32(r.standard_normal((4, 4, 2, 2))), f32(r.standard_normal(4))],
        "ip1": [f32(r.standard_normal((5, 4 * 12 * 12)) * 0.05), f32(r.standard_normal(5))],
    }


@pytest.fixture(scope="module")
def caffe_side(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("weights")
    params = _params()
    net = caffe_net(tmp, prototxt({"data": SHAPE}, BODY), params)
    model = save_caffemodel(net, tmp)
    with CaffeBackend(str(tmp / "net.prototxt"), model) as cb:
        cw = cb.weights()
        probes = [p.without_value() for p in cb.capture(np.zeros(SHAPE, np.float32))]
    return {"prototxt": str(tmp / "net.prototxt"), "model": model, "params": params, "cw": cw, "probes": probes}


def port(p, **bug):
    """A Keras port of BODY; keyword arguments replace one layer's TF weights (the injected bug)."""
    inp = keras_input(SHAPE)
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(inp)
    with_scale = not bug.get("missing_scale")
    h = keras.layers.BatchNormalization(epsilon=1e-5, scale=with_scale, center=with_scale, name="bn1")(h)
    h = keras.layers.PReLU(shared_axes=[1, 2, 3] if "prelu1" in bug else [1, 2], name="prelu1")(h)
    h = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw1")(h)
    h = keras.layers.Conv2D(4, 1, groups=2, name="g1")(h)
    h = keras.layers.Conv2DTranspose(4, 2, strides=2, name="up1")(h)
    h = keras.layers.Flatten(name="flat")(h)
    h = keras.layers.Dense(5, name=bug.get("dense_name", "ip1"))(h)
    m = keras.Model(inp, h)
    mean, var = p["bn1"][0] / S, p["bn1"][1] / S
    if bug.get("bn_raw"):
        mean, var = p["bn1"][0], p["bn1"][1]
    weights = {
        "conv1": [bug.get("conv1", hwio(p["conv1"][0])), p["conv1"][1]],
        "bn1": ([p["scale1"][0], p["scale1"][1]] if with_scale else []) + [mean, var],
        "prelu1": [bug["prelu1"] if "prelu1" in bug else p["prelu1"][0].reshape(1, 1, 4)],
        "dw1": [depthwise_weight(p["dw1"][0], 4), p["dw1"][1]],
        "g1": [hwio(p["g1"][0]), p["g1"][1]],
        "up1": [bug.get("up1", p["up1"][0].transpose(2, 3, 1, 0)), p["up1"][1]],
        bug.get("dense_name", "ip1"): [bug.get("ip1", inner_product_weight_caffe_to_tf(p["ip1"][0], (4, 12, 12))),
                                        p["ip1"][1]],
    }
    for name, arrs in weights.items():
        m.get_layer(name).set_weights([np.ascontiguousarray(a) for a in arrs])
    return m


def check(caffe_side, m, mapping=None):
    return check_weights(caffe_side["cw"], load_tf(m).weights(), caffe_side["probes"], mapping)


def test_correct_port_all_equal_end_to_end(caffe_side):
    rep = weight_parity(caffe_side["prototxt"], caffe_side["model"], port(caffe_side["params"]))
    assert rep, rep.to_text()
    assert [r.caffe_layer for r in rep.rows] == ["conv1", "bn1", "scale1", "prelu1", "dw1", "g1", "up1", "ip1"]
    assert all(r.status == "equal" for r in rep.rows)
    assert rep.row("scale1").tf_layer == "bn1"  # Scale fused into the BatchNormalization
    assert rep.unmatched_tf == []
    assert rep.to_text().startswith("Weights match.")


W1 = _params()["conv1"][0]
UP = _params()["up1"][0]
IP = _params()["ip1"][0]


@pytest.mark.parametrize("layer,bug,status", [
    ("conv1", {"conv1": W1.reshape(3, 3, 3, 4)}, "equal_under:reshape_not_transpose"),
    ("conv1", {"conv1": hwio(W1)[::-1, ::-1]}, "equal_under:kernel_flipped"),
    ("conv1", {"conv1": hwio(W1).transpose(1, 0, 2, 3)}, "equal_under:kernel_hw_swapped"),
    ("conv1", {"conv1": hwio(W1)[:, :, ::-1, :]}, "equal_under:channel_order"),
    ("up1", {"up1": UP.transpose(2, 3, 0, 1)}, "equal_under:deconv_in_out_swapped"),
    ("ip1", {"ip1": IP.T}, "equal_under:flatten_order"),
    ("bn1", {"bn_raw": True}, "equal_under:batchnorm_scale_factor"),
    ("prelu1", {"prelu1": f32([[[0.25]]])}, "equal_under:prelu_shared_axes"),
])
def test_each_wrong_transform_is_named(caffe_side, layer, bug, status):
    rep = check(caffe_side, port(caffe_side["params"], **bug))
    assert not rep
    assert rep.row(layer).status == status
    assert [r.caffe_layer for r in rep.problems] == [layer]
    assert rep.row(layer).transform == status.split(":")[1]
    assert rep.row(layer).fix and rep.row(layer).to_dict()["fix"] == rep.row(layer).fix
    assert status in rep.to_text()


def test_missing_scale(caffe_side):
    rep = check(caffe_side, port(caffe_side["params"], missing_scale=True))
    assert rep.row("scale1").status == "missing"
    assert "missing_scale" in rep.row("scale1").note
    assert rep.row("conv1").status == "equal"


def test_different_and_missing_and_unmatched(caffe_side):
    other, _ = conv_w(4, 3, 3, seed=77)
    rep = check(caffe_side, port(caffe_side["params"], conv1=hwio(other), dense_name="logits"))
    assert rep.row("conv1").status == "different"
    assert rep.row("conv1").blobs[0].max_abs_error > 0.01 and rep.row("conv1").blobs[1].status == "equal"
    assert rep.row("ip1").status == "missing" and rep.row("ip1").tf_layer is None
    assert rep.unmatched_tf == ["logits"]
    # an explicit mapping fixes the name
    rep2 = check(caffe_side, port(caffe_side["params"], dense_name="logits"), mapping={"ip1": "logits"})
    assert rep2, rep2.to_text()


def test_to_dict_is_json(caffe_side):
    rep = check(caffe_side, port(caffe_side["params"], conv1=hwio(W1)[::-1, ::-1]))
    d = json.loads(json.dumps(rep.to_dict()))
    assert d["passed"] is False
    row = next(r for r in d["layers"] if r["caffe_layer"] == "conv1")
    assert row["status"] == "equal_under:kernel_flipped" and row["transform"] == "kernel_flipped"
    assert row["blobs"][0]["caffe_shape"] == [4, 3, 3, 3] and row["blobs"][0]["tf_shape"] == [3, 3, 3, 4]


def test_weight_parity_end_to_end_names_the_bug(caffe_side):
    rep = weight_parity(caffe_side["prototxt"], caffe_side["model"], port(caffe_side["params"], ip1=IP.T))
    assert not rep
    assert rep.row("ip1").status == "equal_under:flatten_order"


def test_dict_api_without_probes():
    w = f32(rng(1).standard_normal((2, 3, 3, 3)))
    assert check_weights({"conv1": [w]}, {"conv1": [hwio(w)]})
    rep = check_weights({"Conv1/7x7_s2": [w]}, {"conv1_7x7_s2": [hwio(w)[::-1, ::-1]]})
    assert rep.rows[0].tf_layer == "conv1_7x7_s2" and rep.rows[0].status == "equal_under:kernel_flipped"
    assert set(iter_transform_names()) >= {"reshape_not_transpose", "flatten_order", "batchnorm_scale_factor"}


@pytest.mark.parametrize("args,match", [
    (([1, 2], {}), "two dicts"),
    (({"a": [np.zeros(2)]}, {"b": [np.zeros(2)]}, None, 42), "mapping must be"),
    (({"a": [np.zeros(2)]}, {"b": [np.zeros(2)]}, None, {"a": 3}), "expected a TF layer"),
])
def test_bad_input(args, match):
    with pytest.raises(InputError, match=match):
        check_weights(*args)


def test_mapping_entries_without_weights():
    w = f32(rng(2).standard_normal((5, 4)))
    rep = check_weights({"ip1": [w]}, {"dense": [w.T]}, None, {"relu1": "re_lu", "ip1": "nowhere"})
    assert rep.row("ip1").status == "missing" and "'nowhere'" in rep.row("ip1").note
    assert rep.unmatched_tf == ["dense"]
    assert check_weights({"ip1": [w]}, {"dense": [w.T]}, None, {"relu1": "re_lu", "ip1": "model/dense/MatMul:0"})
    with pytest.raises(WeightParityError):
        check_weights({"ip1": [object()]}, {"dense": [w.T]})


def test_docs_example_runs(tmp_path, monkeypatch, capsys):
    import pathlib
    import re

    text = (pathlib.Path(__file__).parents[1] / "docs" / "weights.md").read_text()
    code = re.search(r"## A runnable example\s+```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/weights.md", "exec"), {"__name__": "docs_example"})
    out = capsys.readouterr().out
    assert "fc1 (InnerProduct) -> fc1: equal_under:flatten_order" in out


def test_graph_op_keyed_weights_are_grouped_by_layer_scope():
    w = f32(rng(3).standard_normal((4, 3, 3, 3)))
    b = f32(rng(4).standard_normal(4))
    tw = {"StatefulPartitionedCall/model/conv1/Conv2D": [hwio(w)], "StatefulPartitionedCall/model/conv1/BiasAdd": [b],
          "StatefulPartitionedCall/model/fc/MatMul": [f32(np.zeros((2, 2)))]}
    rep = check_weights({"conv1": [w, b]}, tw)
    assert rep, rep.to_text()
    assert rep.row("conv1").tf_layer == "conv1"


def test_savedmodel_port_end_to_end(tmp_path):
    w, b = conv_w(4, 3, 3, seed=8)
    net = caffe_net(tmp_path, prototxt({"data": (1, 3, 6, 6)},
                                       'layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" '
                                       "convolution_param { num_output: 4 kernel_size: 3 } }\n"), {"conv1": [w, b]})
    inp = keras_input((1, 3, 6, 6))
    c = keras.layers.Conv2D(4, 3, name="conv1")
    m = keras.Model(inp, c(inp))
    c.set_weights([hwio(w)[::-1, ::-1], b])  # flipped
    m.export(str(tmp_path / "sm"), verbose=False)
    rep = weight_parity(str(tmp_path / "net.prototxt"), save_caffemodel(net, tmp_path), str(tmp_path / "sm"))
    assert rep.row("conv1").status == "equal_under:kernel_flipped", rep.to_text()


def test_flatten_order_through_an_explicit_caffe_flatten(tmp_path):
    w1, b1 = conv_w(4, 3, 3, seed=5)
    w2 = f32(rng(6).standard_normal((6, 4 * 4 * 4)))
    body = ('layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 3 } }\n'
            'layer { name: "flat" type: "Flatten" bottom: "conv1" top: "flat" }\n'
            'layer { name: "ip1" type: "InnerProduct" bottom: "flat" top: "ip1" inner_product_param { num_output: 6 bias_term: false } }\n')
    net = caffe_net(tmp_path, prototxt({"data": (1, 3, 6, 6)}, body), {"conv1": [w1, b1], "ip1": [w2]})
    model = save_caffemodel(net, tmp_path)

    def port(kernel):
        inp = keras_input((1, 3, 6, 6))
        h = keras.layers.Flatten(name="flat")(keras.layers.Conv2D(4, 3, name="conv1")(inp))
        m = keras.Model(inp, keras.layers.Dense(6, use_bias=False, name="ip1")(h))
        m.get_layer("conv1").set_weights([hwio(w1), b1])
        m.get_layer("ip1").set_weights([kernel])
        return m

    proto = str(tmp_path / "net.prototxt")
    assert weight_parity(proto, model, port(inner_product_weight_caffe_to_tf(w2, (4, 4, 4))))
    assert weight_parity(proto, model, port(w2.T)).row("ip1").status == "equal_under:flatten_order"

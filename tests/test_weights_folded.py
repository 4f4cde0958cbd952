"""Weight parity on decomposed / folded weights, paired by structure: a tiny real Caffe net
(Convolution with bias, BatchNorm + Scale, InnerProduct reading the spatial blob) against real
TF graphs built op by op the way converters emit them (Conv2D -> Add bias, BatchNorm + Scale as
Mul/AddV2 constants or folded into the kernel, Gemm as MatMul -> Mul alpha -> AddV2). The TF op
names say nothing about Caffe's (``op_3``...), so only the structure pairs them."""

from __future__ import annotations

import numpy as np
import pytest

from diagnose_cases import caffe_net, conv_w, f32, hwio, prototxt, rng, save_caffemodel
from layerparity.backends.tfgraph import GraphBackend
from layerparity.errors import WeightParityError
from layerparity.weights import GOOD, check_weights, weight_parity

SHAPE = (1, 3, 6, 6)
S = 4.0
EPS = 1e-5
BODY = """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" }
layer { name: "scale1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc1" type: "InnerProduct" bottom: "conv1" top: "fc1" inner_product_param { num_output: 5 } }
"""


def _params():
    r = rng(11)
    w1, b1 = conv_w(4, 3, 3, seed=5)
    return {
        "conv1": [w1, b1],
        "bn1": [f32(r.standard_normal(4)) * S, f32(r.uniform(0.5, 2, 4)) * S, f32([S])],
        "scale1": [f32(r.uniform(0.5, 2, 4)), f32(r.standard_normal(4))],
        "fc1": [f32(r.standard_normal((5, 4 * 4 * 4)) * 0.1), f32(r.standard_normal(5))],
    }


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("folded")
    params = _params()
    model = save_caffemodel(caffe_net(tmp, prototxt({"data": SHAPE}, BODY), params), tmp)
    return str(tmp / "net.prototxt"), model, params


def _bn_fold(p, eps=EPS, with_scale=True, s=S):
    mean, var = p["bn1"][0] / s, p["bn1"][1] / s
    gamma, beta = (p["scale1"] if with_scale else (np.ones(4), np.zeros(4)))
    mul = gamma / np.sqrt(var + eps)
    return f32(mul), f32(beta - mean * mul)


def graph_port(p, *, eps=EPS, fold_into_kernel=False, alpha=1.0, transpose_b=False, edit=None):
    """A converter-style TF graph of BODY; ``edit(name, array) -> array`` plants a bug in one constant."""
    import tensorflow as tf

    edit = edit or (lambda name, a: a)
    g = tf.Graph()
    mul, add = _bn_fold(p, eps)
    k = hwio(p["conv1"][0])
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, (1, 6, 6, 3), name="op_0")
        if fold_into_kernel:
            h = tf.nn.conv2d(x, tf.constant(edit("kernel", f32(k * mul))), 1, "VALID", name="op_1")
            h = tf.add(h, tf.constant(edit("bias", f32(p["conv1"][1] * mul + add))), name="op_2")
        else:
            h = tf.nn.conv2d(x, tf.constant(edit("kernel", k)), 1, "VALID", name="op_1")
            h = tf.add(h, tf.constant(edit("bias", p["conv1"][1])), name="op_2")
            h = tf.multiply(h, tf.constant(edit("mul", mul)), name="op_3")
            h = tf.add(h, tf.constant(edit("add", add)), name="op_4")
        h = tf.nn.relu(h, name="op_5")
        h = tf.transpose(h, (0, 3, 1, 2), name="op_6")  # back to NCHW: flattened C*H*W, as Caffe does
        h = tf.reshape(h, (1, 64), name="op_7")
        w = p["fc1"][0]
        kern = w if transpose_b else w.T
        h = tf.matmul(h, tf.constant(edit("fc", f32(kern / alpha))), transpose_b=transpose_b, name="op_8")
        h = tf.multiply(h, tf.constant(alpha, tf.float32), name="op_9")
        tf.add(h, tf.constant(edit("fc_bias", p["fc1"][1])), name="op_10")
    return GraphBackend.from_graph(g, source="converter-style graph")


def _statuses(rep):
    return {r.caffe_layer: r.status for r in rep.rows}


def test_correct_graph_is_equal_or_folded_and_paired_by_structure(net):
    proto, model, p = net
    with graph_port(p) as tb:
        rep = weight_parity(proto, model, tb)
    assert _statuses(rep) == {"conv1": "equal", "bn1": "folded", "scale1": "folded", "fc1": "equal"}, rep.to_text()
    assert rep and not rep.unmatched_tf
    assert {r.how for r in rep.rows} == {"structural"}
    conv = rep.row("conv1")
    assert [b.tf_name for b in conv.blobs] == ["op_1", "op_2"]  # the bias is held by the Add
    bn = rep.row("bn1")
    assert {b.role for b in bn.blobs} == {"factor", "offset"} and all("sqrt" in b.formula for b in bn.blobs)
    d = rep.to_dict()
    assert d["counts"] == {"equal": 2, "folded": 2} and d["layers"][1]["blobs"][0]["formula"]


def test_batchnorm_folded_into_the_kernel(net):
    proto, model, p = net
    with graph_port(p, fold_into_kernel=True) as tb:
        rep = weight_parity(proto, model, tb)
    assert _statuses(rep) == {"conv1": "folded", "bn1": "folded", "scale1": "folded", "fc1": "equal"}, rep.to_text()
    assert rep.row("conv1").tf_ops == ["op_1", "op_2"]


def test_gemm_alpha_and_transpose_b(net):
    proto, model, p = net
    with graph_port(p, alpha=2.0) as tb:
        rep = weight_parity(proto, model, tb)
    assert rep.row("fc1").status == "folded", rep.to_text()
    assert "op_9" in rep.row("fc1").blobs[0].formula
    with graph_port(p, transpose_b=True) as tb:
        rep = weight_parity(proto, model, tb)
    assert rep.row("fc1").status == "equal", rep.to_text()


@pytest.mark.parametrize("bug,layer,status", [
    ("eps", "bn1", "equal_under:batchnorm_epsilon"),
    ("no_scale", "scale1", "equal_under:missing_scale"),
    ("no_s", "bn1", "equal_under:batchnorm_scale_factor"),
    ("flip", "conv1", "equal_under:kernel_flipped"),
    ("flatten", "fc1", "equal_under:flatten_order"),
])
def test_one_wrong_weight_names_its_layer_and_transform(net, bug, layer, status):
    proto, model, p = net
    mul_eps, add_eps = _bn_fold(p, eps=1e-3)
    mul_ns, add_ns = _bn_fold(p, s=1.0)
    mul_nsc, add_nsc = _bn_fold(p, with_scale=False)
    chw = (4, 4, 4)
    from layerparity.layout import inner_product_weight_caffe_to_tf

    def edit(name, a):
        if bug == "eps" and name in ("mul", "add"):
            return mul_eps if name == "mul" else add_eps
        if bug == "no_s" and name in ("mul", "add"):
            return mul_ns if name == "mul" else add_ns
        if bug == "no_scale" and name in ("mul", "add"):
            return mul_nsc if name == "mul" else add_nsc
        if bug == "flip" and name == "kernel":
            return np.ascontiguousarray(a[::-1, ::-1])
        if bug == "flatten" and name == "fc":
            return f32(inner_product_weight_caffe_to_tf(p["fc1"][0], chw))
        return a

    with graph_port(p, edit=edit) as tb:
        rep = weight_parity(proto, model, tb)
    assert not rep
    assert [r.caffe_layer for r in rep.problems] == [layer], rep.to_text()
    assert rep.row(layer).status == status, rep.to_text()
    assert rep.row(layer).fix


def test_unexplained_difference_reports_the_worst_element(net):
    proto, model, p = net

    def edit(name, a):
        if name == "add":
            a = a.copy()
            a[2] += 0.5
        return a

    with graph_port(p, edit=edit) as tb:
        rep = weight_parity(proto, model, tb)
    assert not rep
    bad = {r.caffe_layer for r in rep.problems}
    assert bad == {"bn1", "scale1"}, rep.to_text()
    off = next(b for b in rep.row("bn1").blobs if b.role == "offset")
    assert off.status == "different" and off.worst["index"] == [2]
    assert abs(off.worst["got"] - off.worst["expected"]) > 0.4
    assert "worst element (2,)" in rep.to_text()
    assert all(r.status in GOOD for r in rep.rows if r.caffe_layer in ("conv1", "fc1"))


def test_tf_probes_without_caffe_probes_is_an_input_error(net):
    proto, model, p = net
    with pytest.raises(WeightParityError, match="caffe_probes"):
        check_weights({"conv1": p["conv1"]}, {"op_1": [hwio(p["conv1"][0])]}, None, tf_probes=[])


TWIN = """
layer { name: "a" type: "Convolution" bottom: "data" top: "a" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "b" type: "Convolution" bottom: "data" top: "b" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "cat" type: "Concat" bottom: "a" bottom: "b" top: "cat" }
"""


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("twin")
    params = {"a": list(conv_w(4, 3, 1, seed=21)), "b": list(conv_w(4, 3, 1, seed=22))}
    model = save_caffemodel(caffe_net(tmp, prototxt({"data": SHAPE}, TWIN), params), tmp)
    return str(tmp / "net.prototxt"), model, params


def twin_port(p):
    """Two parallel 1x1 convolutions of one input with same-shaped kernels, built b first: structure
    alone cannot tell which is Caffe's a."""
    import tensorflow as tf

    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, (1, 6, 6, 3), name="op_0")
        outs = {}
        for n, k in (("b", "op_1"), ("a", "op_2")):
            h = tf.nn.conv2d(x, tf.constant(hwio(p[n][0])), 1, "VALID", name=k)
            outs[n] = tf.add(h, tf.constant(p[n][1]), name=k + "_bias")
        tf.concat([outs["a"], outs["b"]], axis=3, name="op_3")
    return GraphBackend.from_graph(g, source="twin graph")


def test_structure_cannot_pair_twins_and_says_so_then_values_do(twin):
    proto, model, p = twin
    with twin_port(p) as tb:
        rep = weight_parity(proto, model, tb)
    assert not rep
    assert any("fit(s) as well" in r.note for r in rep.problems), rep.to_text()
    assert any("pair by value" in n for n in rep.pairing_notes), rep.to_text()
    # a structural guess the weights did not confirm is no verdict on the weights: not judged, not "differ"
    assert not rep.judged and set(rep.undecided) == {r.caffe_layer for r in rep.problems}, rep.to_text()
    assert rep.to_text().startswith("Weights not judged:") and rep.to_dict()["undecided"] == rep.undecided
    x = rng(3).standard_normal(SHAPE).astype(np.float32)
    with twin_port(p) as tb:
        rep = weight_parity(proto, model, tb, by_value=x)
    assert rep, rep.to_text()
    assert {r.how for r in rep.rows} == {"value"}
    assert rep.row("a").tf_ops[0] == "op_2" and rep.row("b").tf_ops[0] == "op_1"


def test_probes_that_are_not_probes_are_an_input_error(net):
    proto, model, p = net
    with pytest.raises(WeightParityError, match="TF probe 0 is a str"):
        check_weights({"conv1": p["conv1"]}, {"op_1": [hwio(p["conv1"][0])]}, [], tf_probes=["op_1"])


def test_cli_weights_by_value_on_a_frozen_graph(twin, tmp_path, capsys):
    import tensorflow as tf

    from layerparity import cli

    proto, model, p = twin
    with twin_port(p) as tb:
        tf.io.write_graph(tb.graph.as_graph_def(), str(tmp_path), "twin.pb", as_text=False)
    x = tmp_path / "x.npy"
    np.save(x, rng(4).standard_normal(SHAPE).astype(np.float32))
    args = ["weights", "--caffe-model", proto, "--caffe-weights", model, "--tf-model", str(tmp_path / "twin.pb")]
    assert cli.main(args) == 1
    out = capsys.readouterr().out
    assert "Weights not judged:" in out and "--by-value" in out
    assert cli.main([*args, "--by-value", str(x), "--json", str(tmp_path / "w.json")]) == 0
    assert "Weights match." in capsys.readouterr().out
    import json

    d = json.loads((tmp_path / "w.json").read_text())
    assert {r["how"] for r in d["layers"]} == {"value"} and d["counts"] == {"equal": 2}
    assert cli.main([*args, "--by-value", str(tmp_path / "missing.npy")]) == 2
    assert "missing.npy" in capsys.readouterr().err

"""TF graph units as a converter writes them (onnx-tf), against real Caffe and real TF.

onnx-tf exports a Caffe net (through ONNX) as a SavedModel that takes NCHW input and
wraps every op that wants channels_last in ``Transpose`` ops; a grouped convolution
becomes ``Split -> k x Conv2D -> ConcatV2 -> AddV2``; the ops it names after ONNX
nodes are ``onnx_tf_prefix_<Caffe name>``, and Caffe names may hold a ``/``
(GoogLeNet's ``conv2/relu_3x3_reduce``). The port here is written op by op in that
shape with real TF (onnx-tf itself is not part of the test setup):

- the input layout is found through ``Pad``/``Transpose`` (no ``tf_layout`` given);
- the grouped conv is one ``conv`` unit, compared, replayed and diagnosed as one;
- ``onnx_tf_prefix_blk/relu_reduce``, ``.../relu`` and ``.../norm`` share a name
  prefix but are not connected: they are three layers, not one.

A correct port passes; a bug planted in the grouped conv, in the LRN after it and in
the fully connected layer at the end is found at that layer with the right diagnosis.
"""

from __future__ import annotations

import caffe  # noqa: F401  - before TensorFlow (the other order segfaults in caffe.Net)
import numpy as np
import pytest

import portbuilder as pb  # noqa: E402

tf = pytest.importorskip("tensorflow")

import layerparity  # noqa: E402
from layerparity.alignment import align  # noqa: E402
from layerparity.backends.tensorflow import load_tf  # noqa: E402
from layerparity.backends.tfcommon import scope_layers  # noqa: E402
from layerparity.errors import InputDataError  # noqa: E402
from layerparity.trace import Probe  # noqa: E402

H, W = 12, 10  # not square: a layout taken the wrong way round cannot fit
ALPHA, SIZE = 0.3, 3

PROTOTXT = f"""
name: "onnx_tf_like"
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 3 dim: {H} dim: {W} }} }} }}
layer {{ name: "blk/reduce" type: "Convolution" bottom: "data" top: "blk/reduce"
  convolution_param {{ num_output: 4 kernel_size: 1 }} }}
layer {{ name: "blk/relu_reduce" type: "ReLU" bottom: "blk/reduce" top: "blk/reduce" }}
layer {{ name: "blk/conv" type: "Convolution" bottom: "blk/reduce" top: "blk/conv"
  convolution_param {{ num_output: 6 kernel_size: 3 pad: 1 group: 2 }} }}
layer {{ name: "blk/relu" type: "ReLU" bottom: "blk/conv" top: "blk/conv" }}
layer {{ name: "blk/norm" type: "LRN" bottom: "blk/conv" top: "blk/norm"
  lrn_param {{ local_size: {SIZE} alpha: {ALPHA} beta: 0.75 k: 1 }} }}
layer {{ name: "pool" type: "Pooling" bottom: "blk/norm" top: "pool"
  pooling_param {{ pool: MAX kernel_size: 2 stride: 2 }} }}
layer {{ name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param {{ num_output: 5 }} }}
"""


def _onnx_tf_like(P: dict, bug: str = "") -> tf.types.experimental.ConcreteFunction:
    """The port as onnx-tf writes it: NCHW in, Transposes around every NHWC op."""

    def kernel(w: np.ndarray) -> tf.Tensor:
        return tf.constant(np.ascontiguousarray(w.transpose(2, 3, 1, 0)))  # (O, I, kH, kW) -> (kH, kW, I, O)

    @tf.function(input_signature=[tf.TensorSpec((1, 3, H, W), tf.float32, name="data")])
    def port(x):
        t = tf.transpose(x, [0, 2, 3, 1], name="transpose_1")
        c = tf.nn.conv2d(t, kernel(P["blk/reduce"][0]), 1, "VALID", name="convolution")
        c = tf.add(c, tf.constant(P["blk/reduce"][1]), name="Add")
        c = tf.transpose(c, [0, 3, 1, 2], name="transpose_2")
        r = tf.nn.relu(c, name="onnx_tf_prefix_blk/relu_reduce")
        p = tf.pad(r, [[0, 0], [0, 0], [1, 1], [1, 1]], name="Pad")
        t = tf.transpose(p, [0, 2, 3, 1], name="transpose_3")
        parts = tf.split(t, 2, axis=-1, name="split")
        w = P["blk/conv"][0]  # (6, 2, 3, 3): two groups of 3 outputs reading 2 channels each
        if bug == "conv_hw":
            w = w.transpose(0, 1, 3, 2)
        convs = [tf.nn.conv2d(parts[g], kernel(w[3 * g: 3 * g + 3]), 1, "VALID", name=f"convolution_{g + 1}")
                 for g in range(2)]
        c = tf.concat(convs, axis=-1, name="concat")
        c = tf.add(c, tf.constant(P["blk/conv"][1]), name="Add_1")
        c = tf.transpose(c, [0, 3, 1, 2], name="transpose_4")
        r = tf.nn.relu(c, name="onnx_tf_prefix_blk/relu")
        t = tf.transpose(r, [0, 2, 3, 1], name="transpose_5")
        alpha = ALPHA if bug == "lrn_alpha" else ALPHA / SIZE
        n = tf.nn.local_response_normalization(t, depth_radius=SIZE // 2, bias=1.0, alpha=alpha, beta=0.75,
                                               name="onnx_tf_prefix_blk/norm")
        n = tf.transpose(n, [0, 3, 1, 2], name="transpose_6")
        t = tf.transpose(n, [0, 2, 3, 1], name="transpose_7")
        m = tf.nn.max_pool2d(t, 2, 2, "VALID", name="MaxPool2d")
        m = tf.transpose(m, [0, 3, 1, 2], name="transpose_8")
        f = tf.reshape(m, [1, -1], name="flatten")
        wf = P["fc"][0]  # (5, C*H*W)
        wf = wf.reshape(wf.shape[1], wf.shape[0]) if bug == "fc_reshape" else wf.T
        y = tf.matmul(f, tf.constant(np.ascontiguousarray(wf)), name="MatMul")
        return {"fc": tf.add(y, tf.constant(P["fc"][1]), name="Add_2")}

    return port.get_concrete_function()


def _save(fn, path) -> str:
    tf.saved_model.save(tf.Module(), str(path), signatures=fn)
    return str(path)


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx_tf_like")
    proto = str(d / "net.prototxt")
    with open(proto, "w") as f:
        f.write(PROTOTXT)
    x = pb.random_input((1, 3, H, W), seed=11)
    P = pb.make_caffemodel(proto, d / "net.caffemodel", x, seed=12)
    return proto, str(d / "net.caffemodel"), P, x, d


@pytest.fixture(scope="module")
def correct(net):
    proto, weights, P, x, d = net
    return _save(_onnx_tf_like(P), d / "correct")


# -- A: the input layout, found through Pad/Transpose ---------------------------------


def test_nchw_input_is_found_through_transpose(correct):
    b = load_tf(correct)
    assert b.input_layouts() == {"data": "NCHW"}
    assert [s.shape for s in b.input_specs()] == [(1, 3, H, W)]


def test_nchw_input_is_found_through_pad_then_transpose(tmp_path):
    @tf.function(input_signature=[tf.TensorSpec((1, 3, H, W), tf.float32, name="data")])
    def port(x):
        p = tf.pad(x, [[0, 0], [0, 0], [1, 1], [1, 1]], name="Pad")
        t = tf.transpose(p, [0, 2, 3, 1], name="transpose_1")
        return {"y": tf.nn.max_pool2d(t, 2, 2, "VALID", name="MaxPool2d")}

    b = load_tf(port.get_concrete_function().graph.as_graph_def())
    assert b.input_layouts() == {"data": "NCHW"}


def test_undecidable_layout_error_says_the_models_own_shape(tmp_path):
    """No op says a data_format: the input is read as NHWC, and an NCHW input that fits
    the model's own shape as is gets told so, with the declaration to make."""

    @tf.function(input_signature=[tf.TensorSpec((1, 3, H, W), tf.float32, name="data")])
    def port(x):
        return {"y": tf.nn.relu(x * 2.0)}

    b = load_tf(port.get_concrete_function().graph.as_graph_def())
    x = np.zeros((1, 3, H, W), np.float32)
    with pytest.raises(InputDataError) as e:
        b.capture(x)
    msg = str(e.value)
    assert f"the model's own input is (1, 3, {H}, {W})" in msg, msg
    assert "--tf-layout NCHW" in msg and 'tf_layout="NCHW"' in msg, msg
    assert load_tf(port.get_concrete_function().graph.as_graph_def(), tf_layout="NCHW").capture(x)


# -- C: a unit is connected ops, not only a shared name prefix -------------------------


def test_scope_layers_splits_unconnected_ops_of_one_scope():
    names = ["m/conv1/Conv2D", "m/conv1/BiasAdd", "m/p_blk/relu_a", "m/convolution", "m/p_blk/relu_b",
             "m/transpose", "m/p_blk/norm", "m/split", "m/split:1"]
    # relu_b and norm are linked only through an op outside their scope
    inputs = {"m/conv1/BiasAdd": ["m/conv1/Conv2D"], "m/p_blk/relu_a": ["m/conv1/BiasAdd"],
              "m/convolution": ["m/p_blk/relu_a"], "m/p_blk/relu_b": ["m/convolution"],
              "m/transpose": ["m/p_blk/relu_b"], "m/p_blk/norm": ["m/transpose"]}
    by_name = scope_layers(names)
    assert by_name["m/p_blk/relu_a"] == by_name["m/p_blk/norm"] == "p_blk"  # names alone cannot tell
    got = scope_layers(names, inputs)
    assert got["m/conv1/Conv2D"] == got["m/conv1/BiasAdd"] == "conv1"  # connected: one layer
    assert got["m/split"] == got["m/split:1"] == "split"  # two outputs of one op: one layer
    assert got["m/p_blk/relu_a"] == "p_blk/relu_a"
    assert got["m/p_blk/relu_b"] == "p_blk/relu_b" and got["m/p_blk/norm"] == "p_blk/norm"
    # branch ReLUs joined by a concat that shares their scope (GoogLeNet's inception_3a/relu_1x1,
    # .../relu_3x3 and .../output): each branch and the join are layers of their own
    names3 = ["m/p_inc/relu_a", "m/p_inc/relu_b", "m/p_inc/output", "m/t1", "m/t2"]
    got3 = scope_layers(names3, {"m/p_inc/relu_a": ["m/t1"], "m/p_inc/relu_b": ["m/t2"],
                                 "m/p_inc/output": ["m/p_inc/relu_a", "m/p_inc/relu_b"]})
    assert [got3[n] for n in names3[:3]] == ["p_inc/relu_a", "p_inc/relu_b", "p_inc/output"]
    # ...but a layer's ops that read its inputs stay one layer: a 3-way add, a normalization
    names4 = ["m/add3/add", "m/add3/add_1", "m/ln/mean", "m/ln/sub", "m/x1", "m/x2", "m/x3"]
    got4 = scope_layers(names4, {"m/add3/add": ["m/x1", "m/x2"], "m/add3/add_1": ["m/add3/add", "m/x3"],
                                 "m/ln/mean": ["m/x1"], "m/ln/sub": ["m/x1", "m/ln/mean"]})
    assert got4["m/add3/add"] == got4["m/add3/add_1"] == "add3"
    assert got4["m/ln/mean"] == got4["m/ln/sub"] == "ln"
    # ops linked directly are one layer, named after the layer they are in
    names2 = ["m/p_blk/x/Relu", "m/p_blk/x/LRN", "m/other"]
    got2 = scope_layers(names2, {"m/p_blk/x/LRN": ["m/p_blk/x/Relu"]})
    assert got2["m/p_blk/x/Relu"] == got2["m/p_blk/x/LRN"] == "p_blk"


def test_prefixed_ops_are_separate_layers_of_the_graph(correct):
    b = load_tf(correct)
    t = b.capture(np.zeros((1, 3, H, W), np.float32))
    layers = {p.layer for p in t if "onnx_tf_prefix_blk" in p.name}
    assert layers == {"onnx_tf_prefix_blk/relu_reduce", "onnx_tf_prefix_blk/relu", "onnx_tf_prefix_blk/norm"}


# -- B: a grouped conv written as Split -> Conv2D x k -> ConcatV2 is one conv unit ------


def test_grouped_conv_is_one_unit_in_the_aligner():
    def P(name, kind, inputs, layout="NHWC", shape=(1, 6, 6, 4), **params):
        return Probe(name, kind, inputs=inputs, layout=layout, shape=shape, params=params, layer=name.split(":")[0])

    caffe_probes = [Probe("data", "Input", layout="NCHW", shape=(1, 4, 6, 6)),
             Probe("conv", "Convolution", inputs=["data"], layout="NCHW", shape=(1, 6, 6, 6),
                   params={"group": 2, "num_output": 6})]
    tf_probes = [P("x", "Placeholder", []), P("split", "Split", ["x"], shape=(1, 6, 6, 2), axis=-1, num_split=2),
                 P("split:1", "Split", ["x"], shape=(1, 6, 6, 2), axis=-1, num_split=2),
                 P("c1", "Conv2D", ["split"], shape=(1, 6, 6, 3), data_format="NHWC"),
                 P("c2", "Conv2D", ["split:1"], shape=(1, 6, 6, 3), data_format="NHWC"),
                 P("cat", "ConcatV2", ["c1", "c2"], shape=(1, 6, 6, 6), axis=-1),
                 P("bias", "AddV2", ["cat"], shape=(1, 6, 6, 6))]
    a = align(caffe_probes, tf_probes)
    pair = a.pair_for("conv")
    assert pair is not None and pair.tf == "bias", a.to_dict()
    assert pair.tf_group == ["split", "split:1", "c1", "c2", "cat", "bias"]
    assert a.unmapped_tf == []
    # a split along another axis than the channels is no grouped conv
    for q in tf_probes:
        if q.kind == "Split":
            q.params["axis"] = 1
    assert align(caffe_probes, tf_probes).pair_for("conv") is None


@pytest.mark.parametrize("tf_layout", [None, "NCHW"])
def test_onnx_tf_like_correct_port_passes(net, correct, tf_layout):
    proto, weights, _, x, _ = net
    r = layerparity.compare_models(proto, correct, x, caffe_weights=weights, tf_layout=tf_layout)
    assert r, r
    assert r.first_divergence is None and r.unmapped_caffe == []
    conv = r.row("blk/conv")
    assert conv.tf_layer.endswith("Add_1"), conv.tf_layer
    assert conv.own is not None and conv.own.passed, conv.note  # replayed from the Split's input
    assert r.row("blk/relu_reduce").tf_kind == "Relu"
    assert r.row("blk/norm").tf_kind == "LRN"


@pytest.mark.parametrize(
    "bug, layer, diagnosis",
    [("conv_hw", "blk/conv", "kernel_hw_swapped"),
     ("lrn_alpha", "blk/norm", "lrn_alpha_scaling"),
     ("fc_reshape", "fc", "reshape_not_transpose")],
)
@pytest.mark.parametrize("tf_layout", [None, "NCHW"])
def test_onnx_tf_like_bug_is_found_at_its_layer(net, bug, layer, diagnosis, tf_layout):
    proto, weights, P, x, d = net
    port = _save(_onnx_tf_like(P, bug), d / f"{bug}_{tf_layout}")
    r = layerparity.compare_models(proto, port, x, caffe_weights=weights, tf_layout=tf_layout)
    assert not r
    fd = r.first_divergence
    assert fd is not None and fd.caffe_layer == layer, r
    assert fd.diagnoses and fd.diagnoses[0].kind == diagnosis, [d.kind for d in fd.diagnoses]
    assert r.unmapped_caffe == []

"""alignment.py on hand-built traces: names, explicit mappings, chains, structural matching."""

from __future__ import annotations

import doctest
import json

import numpy as np
import pytest

import layerparity.alignment as align_mod
import layerparity.kinds as kinds_mod
from layerparity.alignment import align, canon, load_mapping, tf_name_keys
from layerparity.errors import InputError, MappingError
from layerparity.kinds import canonical_kind, compatible
from layerparity.trace import Probe, Trace


def C(name, kind, inputs=(), blob="", shape=(1, 8, 4, 4), layout="NCHW", value=None, **params):
    return Probe(name, kind, inputs=list(inputs), blob=blob, layout=layout, params=params,
                 value=value, shape=shape if value is None else ())


def T(name, kind, inputs=(), layer="", shape=(1, 4, 4, 8), layout="NHWC", value=None, fused=(), **params):
    return Probe(name, kind, inputs=list(inputs), layer=layer, layout=layout, params=params, fused=list(fused),
                 value=value, shape=shape if value is None else ())


def pairs(a):
    return [(p.caffe_chain, p.tf, p.how) for p in a.pairs]


def test_doctests():
    assert doctest.testmod(align_mod).failed == 0
    assert doctest.testmod(kinds_mod).failed == 0


# -- kinds -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind,params,n,want",
    [
        ("Convolution", {}, 1, "conv"), ("Conv2D", {}, 1, "conv"), ("CONV_2D", {}, 1, "conv"),
        ("DepthwiseConv2dNative", {}, 1, "depthwise_conv"), ("DEPTHWISE_CONV_2D", {}, 1, "depthwise_conv"),
        ("Deconvolution", {}, 1, "deconv"), ("Conv2DTranspose", {}, 1, "deconv"), ("TRANSPOSE_CONV", {}, 1, "deconv"),
        ("Pooling", {"pool": "MAX"}, 1, "pool_max"), ("Pooling", {"pool": "AVE"}, 1, "pool_avg"),
        ("Pooling", {"pool": "AVE", "global_pooling": True}, 1, "global_pool"),
        ("MaxPool", {}, 1, "pool_max"), ("AvgPool", {}, 1, "pool_avg"), ("MAX_POOL_2D", {}, 1, "pool_max"),
        ("GlobalAveragePooling2D", {}, 1, "global_pool"), ("LRN", {}, 1, "lrn"),
        ("LOCAL_RESPONSE_NORMALIZATION", {}, 1, "lrn"), ("ReLU", {}, 1, "relu"),
        ("ReLU", {"negative_slope": 0.1}, 1, "leaky_relu"), ("LeakyReLU", {}, 1, "leaky_relu"),
        ("PReLU", {}, 1, "prelu"), ("Sigmoid", {}, 1, "sigmoid"), ("LOGISTIC", {}, 1, "sigmoid"),
        ("TanH", {}, 1, "tanh"), ("Softmax", {}, 1, "softmax"), ("InnerProduct", {}, 1, "fc"),
        ("Dense", {}, 1, "fc"), ("MatMul", {}, 1, "fc"), ("FULLY_CONNECTED", {}, 1, "fc"),
        ("Flatten", {}, 1, "flatten"), ("Reshape", {}, 1, "reshape"), ("Concat", {}, 2, "concat"),
        ("ConcatV2", {}, 2, "concat"), ("CONCATENATION", {}, 2, "concat"), ("Eltwise", {}, 2, "add"),
        ("Eltwise", {"operation": "PROD"}, 2, "mul"), ("AddV2", {}, 2, "add"), ("AddV2", {}, 1, "bias"),
        ("BiasAdd", {}, 1, "bias"), ("BatchNorm", {}, 1, "bn"), ("FusedBatchNormV3", {}, 1, "bn"),
        ("BatchNormalization", {}, 1, "bn"), ("Scale", {}, 1, "scale"), ("Bias", {}, 1, "bias"),
        ("Dropout", {}, 1, "dropout"), ("Split", {}, 1, "split"), ("Identity", {}, 1, "identity"),
        ("Pad", {}, 1, "pad"), ("ZeroPadding2D", {}, 1, "pad"), ("Crop", {}, 2, "crop"),
        ("Interp", {}, 1, "resize"), ("ResizeBilinear", {}, 1, "resize"), ("Permute", {}, 1, "permute"),
        ("Transpose", {}, 1, "permute"), ("Normalize", {}, 1, "normalize"), ("Input", {}, 0, "input"),
        ("InputLayer", {}, 0, "input"), ("Placeholder", {}, 0, "input"),
        ("Activation", {"activation": "relu"}, 1, "relu"), ("MyCustomLayer", {}, 1, "my_custom_layer"),
    ],
)
def test_canonical_kinds(kind, params, n, want):
    assert canonical_kind(kind, params, n) == want


def test_kind_compatibility():
    assert compatible("conv", "conv") and compatible("conv", "depthwise_conv")
    assert compatible("add", "eltwise") and compatible("global_pool", "pool_avg") and compatible("bn", "scale")
    assert not compatible("relu", "conv") and not compatible("pool_max", "conv") and not compatible("fc", "softmax")


# -- names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tf_name",
    ["model/conv1/BiasAdd:0", "conv1/Conv2D", "functional/conv1/Relu", "StatefulPartitionedCall/model/conv1/BiasAdd",
     "functional_3/conv1/convolution", "conv1"],
)
def test_tf_names_normalize_to_the_layer(tf_name):
    assert "conv1" in tf_name_keys(tf_name)
    keys = tf_name_keys(tf_name)
    assert keys.index("conv1") == min(i for i, k in enumerate(keys) if k in ("conv1", "BiasAdd", "Conv2D", "Relu", "convolution"))


def test_canon_folds_separators():
    assert canon("inception_3a/1x1") == canon("inception_3a-1x1") == "inception_3a_1x1"


def test_graph_ops_grouped_by_layer_last_op_is_the_output_and_chains_fold_in():
    caffe = Trace("caffe", probes=[
        C("data", "Input", shape=(1, 3, 4, 4)),
        C("conv1", "Convolution", ["data"]),
        C("relu1", "ReLU", ["conv1"], blob="conv1"),
        C("pool1", "Pooling", ["relu1"], pool="MAX"),
        C("fc1", "InnerProduct", ["pool1"], shape=(1, 10), layout="NC"),
    ])
    tf = Trace("tensorflow", probes=[
        T("x", "Placeholder", shape=(1, 4, 4, 3)),
        T("model/conv1/Conv2D", "Conv2D", ["x"], layer="conv1"),
        T("model/conv1/BiasAdd", "BiasAdd", ["model/conv1/Conv2D"], layer="conv1"),
        T("model/conv1/Relu", "Relu", ["model/conv1/BiasAdd"], layer="conv1"),
        T("model/pool1/MaxPool", "MaxPool", ["model/conv1/Relu"], layer="pool1"),
        T("model/flatten/Reshape", "Reshape", ["model/pool1/MaxPool"], layer="flatten", shape=(1, 128), layout="NC"),
        T("StatefulPartitionedCall/model/fc1/MatMul", "MatMul", ["model/flatten/Reshape"], layer="fc1", shape=(1, 10), layout="NC"),
        T("StatefulPartitionedCall/model/fc1/BiasAdd", "BiasAdd", ["StatefulPartitionedCall/model/fc1/MatMul"], layer="fc1", shape=(1, 10), layout="NC"),
    ])
    a = align(caffe, tf)
    assert pairs(a) == [
        (["data"], "x", "structural"),
        (["conv1", "relu1"], "model/conv1/Relu", "name"),
        (["pool1"], "model/pool1/MaxPool", "name"),
        (["fc1"], "StatefulPartitionedCall/model/fc1/BiasAdd", "name"),
    ]
    assert a.pair_for("conv1").tf_group == ["model/conv1/Conv2D", "model/conv1/BiasAdd", "model/conv1/Relu"]
    assert a.unmapped_caffe == []
    assert a.unmapped_tf == ["model/flatten/Reshape"]
    assert "relu1" in a.absorbed


def test_second_outputs_are_not_a_groups_output():
    caffe = [C("data", "Input"), C("bn1", "BatchNorm", ["data"]), C("scale1", "Scale", ["bn1"], blob="bn1")]
    tf = [T("input", "Placeholder"),
          T("bn1/FusedBatchNormV3", "FusedBatchNormV3", ["input"], layer="bn1"),
          T("bn1/FusedBatchNormV3:1", "FusedBatchNormV3", ["input"], layer="bn1", shape=(8,), layout="")]
    a = align(caffe, tf)
    assert a.pair_for("bn1").tf == "bn1/FusedBatchNormV3"
    assert a.pair_for("bn1").caffe_chain == ["bn1", "scale1"]  # Keras/TF BN includes gamma/beta


# -- explicit mappings -------------------------------------------------------------------


def _two_convs():
    caffe = [C("data", "Input"), C("conv1", "Convolution", ["data"]), C("conv2", "Convolution", ["conv1"])]
    tf = [T("input_1", "InputLayer"), T("conv1", "Conv2D", ["input_1"]), T("conv2", "Conv2D", ["conv1"])]
    return caffe, tf


def test_explicit_mapping_wins_over_names():
    caffe, tf = _two_convs()
    a = align(caffe, tf, {"conv1": "conv2", "conv2": "conv1"})
    assert (["conv1"], "conv2", "explicit") in pairs(a)
    assert (["conv2"], "conv1", "explicit") in pairs(a)
    assert [p.caffe for p in a.pairs] == ["data", "conv1", "conv2"]  # Caffe order


def test_explicit_mapping_accepts_a_layer_scope_for_graph_ops():
    caffe = [C("data", "Input"), C("c1", "Convolution", ["data"])]
    tf = [T("x", "Placeholder"), T("net/tf.nn.convolution_3/convolution", "Conv2D", ["x"], layer="tf.nn.convolution_3"),
          T("net/tf.math.add_2/Add", "AddV2", ["net/tf.nn.convolution_3/convolution"], layer="tf.math.add_2")]
    a = align(caffe, tf, {"c1": "tf.nn.convolution_3"})
    p = a.pair_for("c1")
    assert p.how == "explicit"
    assert p.tf == "net/tf.math.add_2/Add"  # the bias add of a converter is part of the conv
    assert p.tf_group == ["net/tf.nn.convolution_3/convolution", "net/tf.math.add_2/Add"]


def test_mapping_errors_name_the_file_and_the_layer(tmp_path):
    caffe, tf = _two_convs()
    f = tmp_path / "map.json"
    f.write_text(json.dumps({"conv9": "conv1"}))
    with pytest.raises(MappingError, match=r"map\.json: Caffe layer 'conv9' is not in the Caffe trace"):
        align(caffe, tf, str(f))
    f.write_text(json.dumps({"conv1": "convX"}))
    with pytest.raises(MappingError, match=r"map\.json: TF name 'convX' \(for Caffe layer 'conv1'\) is not in the TF trace"):
        align(caffe, tf, f)
    f.write_text('{"conv1": "conv1", "conv1": "conv2"}')
    with pytest.raises(MappingError, match=r"map\.json: Caffe layer 'conv1' is mapped twice"):
        load_mapping(f)
    f.write_text(json.dumps({"conv1": "conv1", "conv2": "conv1"}))
    with pytest.raises(MappingError, match=r"map\.json: TF name 'conv1' is mapped from two Caffe layers"):
        load_mapping(f)
    f.write_text(json.dumps({"conv1": 3}))
    with pytest.raises(MappingError, match=r"map\.json: Caffe layer 'conv1' maps to 3"):
        load_mapping(f)
    f.write_text("{not json")
    with pytest.raises(MappingError, match=r"map\.json: not valid JSON"):
        load_mapping(f)
    with pytest.raises(MappingError, match=r"nothere\.yaml: cannot read"):
        load_mapping(tmp_path / "nothere.yaml")
    assert issubclass(MappingError, InputError)


def test_yaml_mapping_file(tmp_path):
    caffe, tf = _two_convs()
    f = tmp_path / "map.yaml"
    f.write_text("mapping:\n  conv1: conv2\n  conv2: conv1\n")
    m = load_mapping(f)
    assert dict(m) == {"conv1": "conv2", "conv2": "conv1"} and m.source == str(f)
    assert (["conv1"], "conv2", "explicit") in pairs(align(caffe, tf, f))
    f.write_text("conv1: conv2\nconv1: conv1\n")
    with pytest.raises(MappingError, match=r"map\.yaml: Caffe layer 'conv1' is mapped twice \(line 2\)"):
        load_mapping(f)
    f.write_text("- conv1\n")
    with pytest.raises(MappingError, match=r"map\.yaml: a layer mapping is one mapping"):
        load_mapping(f)


def test_mapping_dict_duplicates_are_errors_too():
    caffe, tf = _two_convs()
    with pytest.raises(MappingError, match="mapping argument: TF name 'conv1' is mapped from two Caffe layers"):
        align(caffe, tf, {"conv1": "conv1", "conv2": "conv1"})


# -- chains --------------------------------------------------------------------------------


def test_inplace_relu_against_a_separate_keras_relu_is_its_own_pair():
    caffe = [C("data", "Input"), C("conv1", "Convolution", ["data"]), C("relu1", "ReLU", ["conv1"], blob="conv1"),
             C("conv2", "Convolution", ["relu1"])]
    tf = [T("input_1", "InputLayer"), T("conv1", "Conv2D", ["input_1"]), T("re_lu", "ReLU", ["conv1"]),
          T("conv2", "Conv2D", ["re_lu"])]
    a = align(caffe, tf)
    assert pairs(a)[1:] == [(["conv1"], "conv1", "name"), (["relu1"], "re_lu", "structural"), (["conv2"], "conv2", "name")]


def test_conv_bn_scale_relu_against_one_fused_tf_layer():
    caffe = [C("data", "Input"), C("conv1", "Convolution", ["data"]), C("bn1", "BatchNorm", ["conv1"], blob="conv1"),
             C("scale1", "Scale", ["bn1"], blob="conv1"), C("relu1", "ReLU", ["scale1"], blob="conv1"),
             C("pool1", "Pooling", ["relu1"], pool="MAX")]
    tf = [T("input_1", "InputLayer"), T("conv1", "Conv2D", ["input_1"], fused=["relu"]),
          T("pool1", "MaxPooling2D", ["conv1"])]
    a = align(caffe, tf)
    assert pairs(a)[1:] == [(["conv1", "bn1", "scale1", "relu1"], "conv1", "name"), (["pool1"], "pool1", "name")]
    assert set(a.absorbed) == {"bn1", "scale1", "relu1"}
    assert a.unmapped_caffe == [] and a.unmapped_tf == []


def test_trivial_layers_are_never_dropped():
    caffe = [C("data", "Input", shape=(1, 16), layout="NC"),
             C("fc6", "InnerProduct", ["data"], shape=(1, 16), layout="NC"),
             C("relu6", "ReLU", ["fc6"], blob="fc6", shape=(1, 16), layout="NC"),
             C("drop6", "Dropout", ["relu6"], blob="fc6", shape=(1, 16), layout="NC"),
             C("split/a", "Split", ["drop6"], blob="a", shape=(1, 16), layout="NC"),
             C("split/b", "Split", ["drop6"], blob="b", shape=(1, 16), layout="NC"),
             C("fc7", "InnerProduct", ["split/a"], shape=(1, 4), layout="NC"),
             C("fc8", "InnerProduct", ["split/b"], shape=(1, 4), layout="NC")]
    tf = [T("in", "InputLayer", shape=(1, 16), layout="NC"), T("fc6", "Dense", ["in"], fused=["relu"], shape=(1, 16), layout="NC"),
          T("fc7", "Dense", ["fc6"], shape=(1, 4), layout="NC"), T("fc8", "Dense", ["fc6"], shape=(1, 4), layout="NC")]
    a = align(caffe, tf)
    assert pairs(a) == [
        (["data"], "in", "structural"),
        (["fc6", "relu6", "drop6"], "fc6", "name"),
        (["split/a"], "fc6", "identity"),
        (["split/b"], "fc6", "identity"),
        (["fc7"], "fc7", "name"),
        (["fc8"], "fc8", "name"),
    ]
    assert a.unmapped_caffe == []


def test_everything_unmapped_is_listed_on_both_sides():
    caffe = [C("data", "Input"), C("conv1", "Convolution", ["data"]),
             C("interp", "Interp", ["conv1"], shape=(1, 8, 8, 8)), C("softmax", "Softmax", ["interp"], shape=(1, 8, 8, 8))]
    tf = [T("in", "InputLayer"), T("conv1", "Conv2D", ["in"]), T("lambda", "Lambda", ["conv1"]),
          T("extra_dense", "Dense", ["lambda"], shape=(1, 3), layout="NC")]
    a = align(caffe, tf)
    assert a.unmapped_caffe == ["interp", "softmax"]
    assert a.unmapped_tf == ["lambda", "extra_dense"]


# -- structural ----------------------------------------------------------------------------


def _conv1x1(x, w, b):
    return np.einsum("nchw,oc->nohw", x, w) + b[None, :, None, None]


def _maxpool3(x):
    p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    return np.max([p[:, :, i:i + x.shape[2], j:j + x.shape[3]] for i in range(3) for j in range(3)], axis=0)


def _inception_traces():
    """A converter-style port: every op named tf.nn.xxx_N, branches in another order."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 4, 5, 5)).astype(np.float32)
    W = {k: (rng.normal(size=(o, i)).astype(np.float32), rng.normal(size=o).astype(np.float32))
         for k, (o, i) in {"stem": (6, 4), "b1": (4, 6), "b2r": (4, 6), "b2": (4, 4), "b3p": (4, 6)}.items()}
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    stem = relu(_conv1x1(x, *W["stem"]))
    b1 = relu(_conv1x1(stem, *W["b1"]))
    b2r = relu(_conv1x1(stem, *W["b2r"]))
    b2 = relu(_conv1x1(b2r, *W["b2"]))
    b3 = _maxpool3(stem)
    b3p = relu(_conv1x1(b3, *W["b3p"]))
    cat = np.concatenate([b1, b2, b3p], axis=1)
    caffe = Trace("caffe", probes=[
        C("data", "Input", value=x),
        C("stem", "Convolution", ["data"], value=_conv1x1(x, *W["stem"])),
        C("stem_relu", "ReLU", ["stem"], blob="stem", value=stem),
        C("inc/1x1", "Convolution", ["stem_relu"], value=_conv1x1(stem, *W["b1"])),
        C("inc/relu_1x1", "ReLU", ["inc/1x1"], blob="inc/1x1", value=b1),
        C("inc/3x3_reduce", "Convolution", ["stem_relu"], value=_conv1x1(stem, *W["b2r"])),
        C("inc/relu_3x3_reduce", "ReLU", ["inc/3x3_reduce"], blob="inc/3x3_reduce", value=b2r),
        C("inc/3x3", "Convolution", ["inc/relu_3x3_reduce"], value=_conv1x1(b2r, *W["b2"])),
        C("inc/relu_3x3", "ReLU", ["inc/3x3"], blob="inc/3x3", value=b2),
        C("inc/pool", "Pooling", ["stem_relu"], value=b3, pool="MAX"),
        C("inc/pool_proj", "Convolution", ["inc/pool"], value=_conv1x1(b3, *W["b3p"])),
        C("inc/relu_pool_proj", "ReLU", ["inc/pool_proj"], blob="inc/pool_proj", value=b3p),
        C("inc/output", "Concat", ["inc/relu_1x1", "inc/relu_3x3", "inc/relu_pool_proj"], value=cat),
    ])
    nhwc = lambda v: np.ascontiguousarray(v.transpose(0, 2, 3, 1))  # noqa: E731
    ops: list[Probe] = []
    n = iter(range(100))

    def op(kind, inputs, value, scope):
        i = next(n)
        name = f"model/{scope}_{i}/{kind}"
        ops.append(T(name, kind, inputs, layer=f"{scope}_{i}", value=nhwc(value)))
        return name

    def conv_bias_relu(src, w, b, xin):
        c = op("Conv2D", [src], np.einsum("nchw,oc->nohw", xin, w), "tf.nn.convolution")
        a = op("AddV2", [c], _conv1x1(xin, w, b), "tf.math.add")
        return op("Relu", [a], relu(_conv1x1(xin, w, b)), "tf.nn.relu")

    ops.append(T("input", "Placeholder", value=nhwc(x)))
    s = conv_bias_relu("input", *W["stem"], x)
    # branches in the reverse order of Caffe's; the concat keeps Caffe's axis order
    p = op("MaxPool", [s], b3, "tf.nn.max_pool2d")
    p3 = conv_bias_relu(p, *W["b3p"], b3)
    r2 = conv_bias_relu(s, *W["b2r"], stem)
    r2b = conv_bias_relu(r2, *W["b2"], b2r)
    r1 = conv_bias_relu(s, *W["b1"], stem)
    op("ConcatV2", [r1, r2b, p3], cat, "tf.concat")
    return caffe, Trace("tensorflow", probes=ops)


def test_converter_named_inception_is_aligned_structurally():
    caffe, tf = _inception_traces()
    a = align(caffe, tf)
    got = {p.caffe: p.tf for p in a.pairs}
    assert all(p.how == "structural" for p in a.pairs)
    assert a.unmapped_caffe == [] and a.unmapped_tf == []
    # every compared pair holds the same numbers
    for p in a.pairs:
        cv = caffe[p.caffe].value
        tv = tf[p.tf].value.transpose(0, 3, 1, 2)
        np.testing.assert_allclose(tv, cv, rtol=1e-5, atol=1e-5, err_msg=f"{p.caffe} vs {p.tf}")
    # conv + bias add + relu: the conv chain is held against the Relu op after the bias add
    p = a.pair_for("inc/1x1")
    assert p.caffe_chain == ["inc/1x1"] and got["inc/relu_1x1"].endswith("/Relu")
    assert len(a.pair_for("inc/3x3").tf_group) == 2  # Conv2D + AddV2(bias)


def test_structural_ties_between_same_shape_branches_need_the_values():
    caffe, tf = _inception_traces()
    # without values, the three same-shape 1x1 convs reading the stem are ambiguous
    blind = align(list(caffe), [p.without_value() for p in tf])
    seeing = align(caffe, tf)
    assert {p.caffe: p.tf for p in seeing.pairs} != {p.caffe: p.tf for p in blind.pairs}


def test_separate_keras_bn_and_scale_layers_each_pair_with_their_caffe_layer():
    # A Keras port with one layer per Caffe layer: BatchNormalization 'bn3' then a
    # Scale-like layer 'scale3'. The BN row must not swallow the TF scale layer.
    caffe = [C("data", "Input"), C("conv3", "Convolution", ["data"]),
             C("bn3", "BatchNorm", ["conv3"], blob="conv3"), C("scale3", "Scale", ["bn3"], blob="conv3")]
    tf = [T("data", "InputLayer"), T("conv3", "Conv2D", ["data"]),
          T("bn3", "BatchNormalization", ["conv3"]), T("scale3", "Scale", ["bn3"])]
    a = align(Trace("caffe", "c", caffe), Trace("tensorflow", "t", tf))
    assert a.pair_for("bn3").tf == "bn3"
    assert a.pair_for("bn3").caffe_chain == ["bn3"]
    assert a.pair_for("scale3").tf == "scale3"

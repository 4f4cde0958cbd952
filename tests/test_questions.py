"""The two user questions layerparity was born from, rebuilt with other values.

Q1 (a TF1 graph): a Caffe Convolution 5x5, stride 1, pad 2, 96 outputs on a
1x1x128x128 grey image, ported as a ``tf.compat.v1`` graph (``get_variable``
initialised from the weights transposed (2,3,1,0), ``tf.nn.conv2d(...,
padding='SAME')``, batch 10 where Caffe's deploy has batch 1). The user moved
blobs between Caffe's NCHW and TF's NHWC with ``reshape`` and saw the outputs
disagree. The library must rule padding out (stride 1 'SAME' is exactly pad 2),
name the reshape at the layer where it happens, and pass the corrected graph.
With one grey channel the reshape of the *input* is harmless (for C = 1 it equals
the transpose: checked below), so here, as in any 1-channel rebuild, the reshape
that bites is the one moving the 96-channel output back to Caffe's layout: nearly
every element differs while the sorted values agree.

Q2 (Keras): ``Conv2D(96, 11, strides=4, padding='valid')`` on a 500x500x3 image
against Caffe, weights, input and output moved between layouts by reshape; and
the minimal version (a 2x2 image, 1x1 kernel, 2 filters, weights 2, bias 0).
"""

from __future__ import annotations

import os

import caffe  # noqa: F401  - before TensorFlow (the other order segfaults in caffe.Net)
import numpy as np
import pytest

import layerparity as lp
from layerparity.layout import conv_weight_caffe_to_tf, nchw_to_nhwc, nhwc_to_nchw

Q1_PROTOTXT = """name: "q1"
layer { name: "data" type: "Input" top: "data" input_param { shape: { dim: 1 dim: 1 dim: 128 dim: 128 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 96 kernel_size: 5 stride: 1 pad: 2 } }
"""

Q2_PROTOTXT = """name: "q2"
input: "data"
input_shape { dim: 1 dim: %(c)d dim: %(h)d dim: %(w)d }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: %(n)d kernel_size: %(k)d pad: 0 stride: %(s)d } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
"""


def _caffe_net(tmp_path, text: str, params: list[np.ndarray]) -> tuple[str, str]:
    """Writes the prototxt and a caffemodel holding ``params`` for conv1 (through pycaffe)."""
    proto = tmp_path / "deploy.prototxt"
    proto.write_text(text)
    net = caffe.Net(os.fspath(proto), caffe.TEST)
    for blob, value in zip(net.params["conv1"], params, strict=True):
        blob.data[...] = value
    model = tmp_path / "weights.caffemodel"
    net.save(os.fspath(model))
    return os.fspath(proto), os.fspath(model)


def _caffe_output(proto: str, model: str, x: np.ndarray) -> np.ndarray:
    net = caffe.Net(proto, model, caffe.TEST)
    net.blobs["data"].reshape(*x.shape)
    net.reshape()
    return net.forward(data=x)["conv1"].copy()


# -- Q1: the TF1 graph ---------------------------------------------------------------


@pytest.fixture(scope="module")
def q1(tmp_path_factory):
    rng = np.random.default_rng(7)
    w = (rng.standard_normal((96, 1, 5, 5)) * 0.2).astype(np.float32)
    b = (rng.standard_normal(96) * 0.1).astype(np.float32)
    proto, model = _caffe_net(tmp_path_factory.mktemp("q1"), Q1_PROTOTXT, [w, b])
    x = rng.uniform(0, 1, (10, 1, 128, 128)).astype(np.float32)  # ten grey images, NCHW
    return proto, model, w, b, x


def _q1_session(w: np.ndarray, b: np.ndarray, *, by_reshape: bool):
    """The user's TF1 graph. It takes Caffe's NCHW blob and moves it to NHWC and back."""
    import tensorflow as tf

    g = tf.Graph()
    with g.as_default():
        blob = tf.compat.v1.placeholder(tf.float32, [10, 1, 128, 128], name="data")
        with tf.compat.v1.variable_scope("conv1"):
            if by_reshape:
                x = tf.reshape(blob, [10, 128, 128, 1], name="to_nhwc")
            else:
                x = tf.transpose(blob, [0, 2, 3, 1], name="to_nhwc")
            kernel = tf.compat.v1.get_variable("weights", initializer=conv_weight_caffe_to_tf(w))
            bias = tf.compat.v1.get_variable("biases", initializer=b)
            y = tf.nn.bias_add(tf.nn.conv2d(x, kernel, strides=[1, 1, 1, 1], padding="SAME"), bias)
            if by_reshape:
                tf.reshape(y, [10, 96, 128, 128], name="to_caffe")
            else:
                tf.transpose(y, [0, 3, 1, 2], name="to_caffe")
        sess = tf.compat.v1.Session(graph=g)
        sess.run(tf.compat.v1.global_variables_initializer())
    return sess


def test_q1_symptom_is_reproduced(q1):
    """What the user saw: the reshaped graph disagrees with Caffe, the transposed one agrees."""
    proto, model, w, b, x = q1
    np.testing.assert_array_equal(x.reshape(10, 128, 128, 1), nchw_to_nhwc(x))  # grey: input reshape is harmless
    ref = _caffe_output(proto, model, x)
    for by_reshape, expect_equal in ((True, False), (False, True)):
        sess = _q1_session(w, b, by_reshape=by_reshape)
        try:
            got = sess.run("conv1/to_caffe:0", {"data:0": x})
        finally:
            sess.close()
        assert got.shape == ref.shape
        equal = np.isclose(got, ref, rtol=1e-4, atol=1e-5)
        if expect_equal:
            assert equal.all()
        else:
            assert equal.mean() < 0.05  # nearly every element differs...
            np.testing.assert_allclose(np.sort(got, axis=None), np.sort(ref, axis=None), rtol=1e-4, atol=1e-5)
            # ...yet the values are all there: a layout bug, not arithmetic


def _q1_report(q1, by_reshape: bool):
    from layerparity.backends.tensorflow import load_tf

    proto, model, w, b, x = q1
    sess = _q1_session(w, b, by_reshape=by_reshape)
    try:
        backend = load_tf(sess, inputs=["data:0"], data_format="channels_first")
        with backend:
            return lp.compare_models(proto, backend, x, caffe_weights=model)
    finally:
        sess.close()


def test_q1_library_names_the_reshape_and_rules_out_padding(q1):
    report = _q1_report(q1, by_reshape=True)
    assert not report
    fd = report.first_divergence
    assert fd is not None and fd.caffe_layer == "conv1"
    kinds = [d.kind for d in fd.diagnoses]
    assert kinds[0] == "reshape_not_transpose", [(d.kind, d.summary) for d in fd.diagnoses]
    assert "padding_asymmetry" not in kinds  # stride 1 'SAME' with k=5 is Caffe's pad 2 exactly
    text = " ".join(d.summary + " " + d.fix for d in fd.diagnoses[:1]).lower()
    assert "reshape" in text and "transpose" in text


def test_q1_corrected_graph_passes(q1):
    report = _q1_report(q1, by_reshape=False)
    assert report, [(r.caffe_layer, r.tf_layer, r.max_abs_error, r.note) for r in report.rows if not r.passed]
    assert report.first_divergence is None
    assert any(r.caffe_layer == "conv1" for r in report.rows)


# -- Q2: Keras Conv2D 11x11/4 on 500x500x3, and the minimal version --------------------

Q2_CASES = {
    #          c, h,   w,   n,  k,  s
    "alexnet_conv1": (3, 500, 500, 96, 11, 4),
    "minimal": (3, 2, 2, 2, 1, 1),
}


def _q2_setup(tmp_path, case: str):
    c, h, w_, n, k, s = Q2_CASES[case]
    rng = np.random.default_rng(11)
    if case == "minimal":
        wc = np.full((n, c, k, k), 2.0, np.float32)
        bc = np.zeros(n, np.float32)
        x = np.arange(c * h * w_, dtype=np.float32).reshape(1, c, h, w_)
    else:
        wc = (rng.standard_normal((n, c, k, k)) * 0.1).astype(np.float32)
        bc = (rng.standard_normal(n) * 0.1).astype(np.float32)
        x = rng.uniform(0, 1, (1, c, h, w_)).astype(np.float32)
    proto, model = _caffe_net(tmp_path, Q2_PROTOTXT % dict(c=c, h=h, w=w_, n=n, k=k, s=s), [wc, bc])
    return proto, model, wc, bc, x


def _q2_keras(case: str, wc, bc, *, by_reshape: bool):
    """The user's Keras model; with ``by_reshape`` its input, weights and output are moved by reshape."""
    import keras

    c, h, w_, n, k, s = Q2_CASES[case]
    inp = keras.Input((c, h, w_), name="data")  # takes Caffe's NCHW blob, like the user's code
    if by_reshape:
        x = keras.layers.Reshape((h, w_, c), name="to_nhwc")(inp)
    else:
        x = keras.layers.Permute((2, 3, 1), name="to_nhwc")(inp)
    conv = keras.layers.Conv2D(n, k, strides=s, padding="valid", activation="relu", name="conv1")
    y = conv(x)
    oh, ow = y.shape[1], y.shape[2]
    if by_reshape:
        out = keras.layers.Reshape((n, oh, ow), name="to_caffe")(y)
    else:
        out = keras.layers.Permute((3, 1, 2), name="to_caffe")(y)
    model = keras.Model(inp, out)
    kernel = wc.reshape(k, k, c, n) if by_reshape else conv_weight_caffe_to_tf(wc)
    conv.set_weights([kernel, bc])
    return model


@pytest.mark.parametrize("case", list(Q2_CASES))
def test_q2_symptom_is_reproduced(case, tmp_path):
    proto, model, wc, bc, x = _q2_setup(tmp_path, case)
    ref = _caffe_output(proto, model, x)
    bad = np.asarray(_q2_keras(case, wc, bc, by_reshape=True)(x))
    good = np.asarray(_q2_keras(case, wc, bc, by_reshape=False)(x))
    np.testing.assert_allclose(good, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    assert bad.shape == ref.shape and not np.allclose(bad, ref, rtol=1e-3, atol=1e-3)
    if case == "minimal":
        # Every weight is 2, so the weight reshape is harmless; the input/output reshapes are not.
        np.testing.assert_array_equal(wc.reshape(1, 1, 3, 2), conv_weight_caffe_to_tf(wc))


def _q2_port(case: str, wc, bc, *, by_reshape: bool):
    """The part of the user's model that is a port: NHWC in, NHWC out (the library moves the blobs)."""
    import keras

    c, h, w_, n, k, s = Q2_CASES[case]
    inp = keras.Input((h, w_, c), name="data")
    conv = keras.layers.Conv2D(n, k, strides=s, padding="valid", activation="relu", name="conv1")
    model = keras.Model(inp, conv(inp))
    conv.set_weights([wc.reshape(k, k, c, n) if by_reshape else conv_weight_caffe_to_tf(wc), bc])
    return model


def test_q2_library_names_the_weight_reshape(tmp_path):
    proto, model, wc, bc, x = _q2_setup(tmp_path, "alexnet_conv1")
    report = lp.compare_models(proto, _q2_port("alexnet_conv1", wc, bc, by_reshape=True), x, caffe_weights=model)
    assert not report
    fd = report.first_divergence
    assert fd is not None and "conv1" in (fd.caffe_layer, *fd.caffe_chain)
    assert fd.diagnoses and fd.diagnoses[0].kind == "reshape_not_transpose", [(d.kind, d.summary) for d in fd.diagnoses]


@pytest.mark.parametrize("case", list(Q2_CASES))
def test_q2_library_names_the_blob_reshape(case, tmp_path):
    """The user's whole model, blobs moved by Reshape layers inside it, fed Caffe's NCHW blob."""
    from layerparity.backends.tensorflow import load_tf

    proto, model, wc, bc, x = _q2_setup(tmp_path, case)
    backend = load_tf(_q2_keras(case, wc, bc, by_reshape=True), data_format="channels_first")
    with backend:
        report = lp.compare_models(proto, backend, x, caffe_weights=model)
    assert not report
    fd = report.first_divergence
    assert fd is not None
    kinds = [d.kind for d in fd.diagnoses]
    assert kinds and kinds[0] == "reshape_not_transpose", [(d.kind, d.summary) for d in fd.diagnoses]


@pytest.mark.parametrize("case", list(Q2_CASES))
def test_q2_corrected_versions_pass(case, tmp_path):
    from layerparity.backends.tensorflow import load_tf

    proto, model, wc, bc, x = _q2_setup(tmp_path, case)
    report = lp.compare_models(proto, _q2_port(case, wc, bc, by_reshape=False), x, caffe_weights=model)
    assert report, [(r.caffe_layer, r.tf_layer, r.max_abs_error, r.note) for r in report.rows if not r.passed]
    backend = load_tf(_q2_keras(case, wc, bc, by_reshape=False), data_format="channels_first")
    with backend:
        report = lp.compare_models(proto, backend, x, caffe_weights=model)
    assert report, [(r.caffe_layer, r.tf_layer, r.max_abs_error, r.note) for r in report.rows if not r.passed]


def test_layout_helpers_are_transposes():
    x = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    assert np.array_equal(nhwc_to_nchw(nchw_to_nhwc(x)), x)
    assert not np.array_equal(nchw_to_nhwc(x), x.reshape(1, 3, 4, 2))

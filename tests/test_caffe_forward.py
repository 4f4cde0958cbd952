"""Caffe input reshaping (other spatial sizes, as pycaffe's ``blob.reshape`` + ``net.reshape()``)
and the plain forward (``Backend.forward``), against real pycaffe and real TensorFlow (never mocked).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from layerparity.backends.caffe import CaffeBackend
from layerparity.errors import CaffeError, InputDataError

DATA = Path(__file__).parent / "data" / "caffe"


def proto(name: str) -> str:
    return str(DATA / f"{name}.prototxt")


def rand(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.fixture(scope="module")
def caffe_mod():
    import caffe

    caffe.set_mode_cpu()
    return caffe


@pytest.fixture(scope="module")
def weights(tmp_path_factory, caffe_mod):
    """Real caffemodels (random fillers, saved by an in-process caffe.Net)."""
    d = tmp_path_factory.mktemp("caffemodels")
    out = {}
    for name in ("fcn", "small", "gap_fc", "bn_chain"):
        net = caffe_mod.Net(proto(name), caffe_mod.TEST)
        out[name] = str(d / f"{name}.caffemodel")
        net.save(out[name])
    return out


def pycaffe_forward(caffe_mod, name, weights, x):
    """The plain pycaffe way: reshape the input blob, net.reshape(), forward."""
    net = caffe_mod.Net(proto(name), weights, caffe_mod.TEST)
    net.blobs["data"].reshape(*x.shape)
    net.reshape()
    net.blobs["data"].data[...] = x
    net.forward()
    return {k: v.data.copy() for k, v in net.blobs.items()}


# -- input reshaping ---------------------------------------------------------------------


def test_fully_convolutional_net_takes_other_sizes_like_pycaffe(caffe_mod, weights):
    small_x, big_x = rand((1, 3, 12, 12), 1), rand((2, 3, 37, 45), 2)
    with CaffeBackend(proto("fcn"), weights["fcn"]) as b:
        (spec,) = b.input_specs()
        assert spec.shape == (1, 3, None, None)  # H and W are free; batch is the current one
        assert b.input_shapes() == {"data": (1, 3, 12, 12)}
        at_prototxt = b.capture(small_x)
        at_other = b.capture(big_x)
        assert b.input_shapes() == {"data": (2, 3, 37, 45)} and at_other.meta["batch"] == 2
        back = b.capture(small_x)  # and back to the declared size
    for x, t in ((small_x, at_prototxt), (big_x, at_other), (small_x, back)):
        ref = pycaffe_forward(caffe_mod, "fcn", weights["fcn"], x)
        assert t["data"].shape == x.shape
        for probe, blob in (("pool1", "pool1"), ("relu2", "conv2"), ("score", "score"), ("prob", "prob")):
            np.testing.assert_array_equal(t[probe].value, ref[blob])
    assert at_other["prob"].shape == (2, 2, 16, 20)  # 37x45 -> pool (ceil) 18x22 -> conv 3x3 16x20


def test_global_pooling_before_the_classifier_frees_the_input_size(caffe_mod, weights):
    x = rand((1, 3, 37, 45), 3)
    with CaffeBackend(proto("gap_fc"), weights["gap_fc"]) as b:
        assert b.input_specs()[0].shape == (1, 3, None, None)
        t = b.capture(x)
    np.testing.assert_array_equal(t["fc"].value, pycaffe_forward(caffe_mod, "gap_fc", weights["gap_fc"], x)["fc"])


def test_fc_net_fed_another_size_names_the_inner_product_layer(weights):
    with CaffeBackend(proto("small"), weights["small"]) as b:
        assert b.input_specs()[0].shape == (2, 3, 12, 12)  # the InnerProduct fixes H and W
        msg = (r"small\.prototxt:\d+: input 'data' has shape \(1, 3, 37, 45\), but layer 'fc' \(InnerProduct\) "
               r"fixes its H x W at 12 x 12 \(the prototxt's size\): it takes 8x6x6 = 288 values per item at "
               r"the declared size \(its weights are \(10, 288\)\)")
        with pytest.raises(InputDataError, match=msg):
            b.capture(rand((1, 3, 37, 45)))
        with pytest.raises(InputDataError, match=msg.replace("37, 45", "12, 13")):
            b.forward(rand((1, 3, 12, 13)), ["prob"])
        assert b.alive  # refused before Caffe saw it: the worker is untouched
        assert b.capture(rand((3, 3, 12, 12))).names[-1] == "prob"  # another batch is fine


def test_a_size_too_small_for_the_net_is_a_caffe_error_naming_the_layer(weights):
    for run in ("capture", "forward"):
        with CaffeBackend(proto("fcn"), weights["fcn"]) as b:
            with pytest.raises(CaffeError, match=r"fcn\.prototxt:\d+: layer 'conv2' \(Convolution\): Caffe aborted "
                                                 r"while running it: .*SIGABRT"):
                if run == "capture":
                    b.capture(rand((1, 3, 2, 2)))
                else:
                    b.forward(rand((1, 3, 2, 2)), ["prob"])
            assert not b.alive  # the worker died; the caller did not


# -- the plain forward --------------------------------------------------------------------


def test_forward_gives_each_probes_value_as_capture_does(weights):
    x = rand((1, 3, 6, 6), 4)
    with CaffeBackend(proto("bn_chain"), weights["bn_chain"]) as b:
        t = b.capture(x)
        names = t.names  # data, conv, bn, scale, relu, drop: one blob, five in-place layers
        got = b.forward(x, names)
        assert list(got) == names
        for n in names:
            np.testing.assert_array_equal(got[n], t[n].value, err_msg=n)
        only_mid = b.forward(x, ["bn"])  # an earlier in-place probe alone
        np.testing.assert_array_equal(only_mid["bn"], t["bn"].value)
        assert list(only_mid) == ["bn"]


def test_forward_multitop_names_and_unknown_names():
    x = rand((1, 6, 4, 4), 5)
    with CaffeBackend(proto("multitop")) as b:
        got = b.forward(x, ["slice/b", "cat"])
        np.testing.assert_array_equal(got["slice/b"], x[:, 1:3])
        assert got["cat"].shape == (1, 6, 4, 4)
        with pytest.raises(CaffeError, match=r"multitop\.prototxt: the net has no probe 'slice/d' .*did you mean "):
            b.forward(x, ["slice/d"])
        assert b.alive


def test_forward_runs_the_net_in_one_call_unless_the_shape_changed(weights):
    """Stepping (one marker per layer, so an abort is named) only on a new input shape."""
    x = rand((1, 3, 12, 12), 6)
    with CaffeBackend(proto("fcn"), weights["fcn"]) as b:
        proc = b._engine.proc
        chan = proc.chan

        def run(arr):
            mark, before = os.fstat(proc.log.fileno()).st_size, chan.received
            out = b.forward(arr, ["prob"])
            assert chan.received == before + 1  # one answer holding only the asked values
            return out, proc.read_log(mark).count("layerparity-layer:")

        _, steps_first = run(x)  # the net was built at 12x12, but never run: stepped once
        _, steps_same = run(x)
        _, steps_new = run(rand((1, 3, 20, 24)))
        _, steps_again = run(rand((1, 3, 20, 24), 7))
        b.capture(x)  # a capture at 12x12 counts as a run at that shape
        _, steps_after_capture = run(x)
    n_layers = 8
    assert (steps_first, steps_same, steps_new, steps_again, steps_after_capture) == (n_layers, 0, n_layers, 0, 0)


def test_forward_in_process_from_net(caffe_mod, weights):
    x = rand((1, 3, 37, 45), 8)
    net = caffe_mod.Net(proto("fcn"), weights["fcn"], caffe_mod.TEST)
    b = CaffeBackend.from_net(net, prototxt=proto("fcn"))
    assert b.input_specs()[0].shape == (1, 3, None, None)
    got = b.forward(x, ["conv1", "relu1", "prob"])
    ref = pycaffe_forward(caffe_mod, "fcn", weights["fcn"], x)
    np.testing.assert_array_equal(got["prob"], ref["prob"])
    np.testing.assert_array_equal(got["relu1"], ref["conv1"])  # the in-place chain's last value
    assert (got["conv1"] < 0).any() and not (got["relu1"] < 0).any()  # conv1 read before the ReLU


# -- end to end: a Keras port of a fully convolutional net, at a size not in the prototxt ----


def keras_fcn_port(w):
    import keras

    inp = keras.Input((None, None, 3), name="data")
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(inp)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.MaxPooling2D(3, 2, name="pool1")(x)  # valid == Caffe's ceil where (size-3) is even
    x = keras.layers.Conv2D(4, 3, name="conv2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.Conv2D(2, 1, name="score")(x)
    out = keras.layers.Softmax(axis=-1, name="prob")(x)
    model = keras.Model(inp, out)
    for name in ("conv1", "conv2", "score"):
        kernel, bias = w[name]
        model.get_layer(name).set_weights([kernel.transpose(2, 3, 1, 0), bias])
    return model


def test_compare_models_checks_a_fully_convolutional_port_at_another_size(weights):
    import layerparity

    with CaffeBackend(proto("fcn"), weights["fcn"]) as b:
        w = b.weights()
    model = keras_fcn_port(w)
    x = rand((1, 3, 37, 45), 9)
    report = layerparity.compare_models(proto("fcn"), model, x, caffe_weights=weights["fcn"])
    assert report, report
    compared = {r.caffe_layer for r in report.rows}
    assert {"conv1", "pool1", "conv2", "score", "prob"} <= compared
    assert report.row("prob").caffe_shape == (1, 2, 16, 20)

    # a planted bug at this size is still found at its layer
    bad = keras_fcn_port(w)
    k, bias = bad.get_layer("conv2").get_weights()
    bad.get_layer("conv2").set_weights([k[::-1, ::-1], bias])  # kernel flipped
    bad_report = layerparity.compare_models(proto("fcn"), bad, x, caffe_weights=weights["fcn"])
    assert not bad_report and bad_report.first_divergence.caffe_layer in ("conv2", "relu2")


def test_googlenet_forward_matches_capture_for_outputs_and_in_place_probes():
    found = sorted(Path(os.path.expanduser("~/.cache/layerparity")).glob("caffe-*/models/bvlc_googlenet/deploy.prototxt"))
    assert found, "GoogLeNet deploy.prototxt not found; run `make test` (it builds Caffe)"
    x = rand((1, 3, 224, 224), 10)
    names = ["conv1/7x7_s2", "conv1/relu_7x7", "inception_3a/output", "inception_5b/relu_pool_proj", "prob"]
    with CaffeBackend(found[0], batch=1) as b:
        t = b.capture(x)
        got = b.forward(x, names)
    for n in names:
        np.testing.assert_array_equal(got[n], t[n].value, err_msg=n)
    assert (got["conv1/7x7_s2"] < 0).any()  # read before its in-place ReLU ran

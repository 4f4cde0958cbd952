"""TensorFlow capture backends, against real TensorFlow/Keras on tiny models."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from layerparity.backends.base import Backend  # noqa: E402
from layerparity.backends.tensorflow import capture_tf, load_tf  # noqa: E402
from layerparity.backends.tfcommon import scope_layers  # noqa: E402
from layerparity.errors import InputDataError, ModelLoadError  # noqa: E402
from layerparity.trace import Trace  # noqa: E402

RNG = np.random.default_rng(0)


def nchw(n=2, c=3, h=8, w=8):
    return RNG.standard_normal((n, c, h, w)).astype(np.float32)


def nhwc(x):
    return x.transpose(0, 2, 3, 1)


def _functional():
    keras.utils.set_random_seed(1)
    inp = keras.Input((8, 8, 3), name="data")
    ident = keras.layers.Identity(name="ident")(inp)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(ident)
    x = keras.layers.BatchNormalization(epsilon=1e-5, name="bn")(x)
    y = keras.layers.Conv2D(4, 1, name="side")(x)
    x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.Flatten(name="flat")(x)
    out = keras.layers.Dense(5, name="fc")(x)
    m = keras.Model(inp, out, name="net")
    # non-trivial BN statistics, so the frozen graphs carry real numbers
    bn = m.get_layer("bn")
    bn.set_weights(
        [w + RNG.uniform(0.5, 1.5, w.shape).astype(np.float32) for w in bn.get_weights()]
    )
    return m


@pytest.fixture(scope="module")
def functional():
    return _functional()


@pytest.fixture(scope="module")
def exported(functional, tmp_path_factory):
    d = tmp_path_factory.mktemp("export") / "sm"
    functional.export(str(d), verbose=False)
    return str(d)


# -- Keras: Functional ---------------------------------------------------------------


def test_functional_probes_order_kinds_edges_params(functional):
    x = nchw()
    b = load_tf(functional)
    assert b.framework == "tensorflow"
    t = b.capture(x)
    assert t.names == ["data", "ident", "conv1", "bn", "side", "add", "pool", "flat", "fc"]
    assert t["data"].kind == "Input" and t["conv1"].kind == "Conv2D" and t["add"].kind == "Add"
    assert t["add"].inputs == ["bn", "side"]
    assert t["conv1"].inputs == ["ident"]
    p = t["conv1"].params
    assert p["padding"] == "same" and p["strides"] == [1, 1] and p["kernel_size"] == [3, 3]
    assert p["dilation_rate"] == [1, 1] and p["groups"] == 1 and p["use_bias"] is True
    assert t["bn"].params["epsilon"] == pytest.approx(1e-5)
    assert t["pool"].params["pool_size"] == [2, 2]
    # fused activation recorded, none where there is none
    assert t["conv1"].fused == ["relu"]
    assert t["side"].fused == [] and t["fc"].fused == []
    # declared layouts
    assert t["conv1"].layout == "NHWC" and t["fc"].layout == "NC"
    assert t["flat"].layout == "flat:NHWC" and t["flat"].flat_shape == (4, 4, 4)
    # values: the last probe is the model's own output, intermediate ones too
    np.testing.assert_allclose(t["fc"].value, functional(nhwc(x)).numpy(), rtol=1e-5, atol=1e-6)
    sub = keras.Model(functional.input, functional.get_layer("pool").output)
    np.testing.assert_allclose(t["pool"].value, sub(nhwc(x)).numpy(), rtol=1e-5, atol=1e-6)


def test_input_spec_in_nchw_and_input_transposed(functional):
    b = load_tf(functional)
    (spec,) = b.input_specs()
    assert spec.name == "data" and spec.shape == (None, 3, 8, 8) and spec.layout == "NCHW"
    x = nchw(n=3)
    probes = list(b.iter_capture(x))
    by = {p.name: p for p in probes}
    assert by["data"].layout == "NHWC"
    np.testing.assert_array_equal(by["ident"].value, x.transpose(0, 2, 3, 1))
    # an NHWC array is not silently accepted
    with pytest.raises(InputDataError, match=r"axis 1 differs"):
        b.capture(nhwc(x))


def test_fixed_batch_is_a_clear_error():
    inp = keras.Input((4, 4, 2), batch_size=1, name="img")
    m = keras.Model(inp, keras.layers.Conv2D(2, 1, name="c")(inp))
    b = load_tf(m)
    assert b.input_specs()[0].shape == (1, 2, 4, 4)
    with pytest.raises(
        InputDataError, match=r"'img' has batch 2, but the model's batch is fixed at 1"
    ):
        b.capture(nchw(n=2, c=2, h=4, w=4))
    assert b.capture(nchw(n=1, c=2, h=4, w=4))["c"].shape == (1, 4, 4, 2)


_CHANNELS_FIRST = """
import numpy as np, keras
from layerparity.backends.tensorflow import load_tf
from layerparity.errors import ModelLoadError
from layerparity.layout import convert

inp = keras.Input((3, 8, 8), name="data")
x = keras.layers.Conv2D(4, 3, padding="same", data_format="channels_first", name="conv1")(inp)
x = keras.layers.ReLU(name="relu")(x)
x = keras.layers.MaxPooling2D(data_format="channels_first", name="pool")(x)
out = keras.layers.Flatten(data_format="channels_first", name="flat")(x)
m = keras.Model(inp, out)
b = load_tf(m)
assert b.input_specs()[0].shape == (None, 3, 8, 8) and b.input_layouts() == {"data": "NCHW"}
x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
try:
    t = b.capture(x)
except ModelLoadError as e:
    # TF has no NCHW Conv2D kernel on this CPU: one line naming the layer and why
    msg = str(e)
    assert "\\n" not in msg and "layer 'conv1' (Conv2D)" in msg, msg
    assert "cannot run" in msg and "NHWC" in msg and "channels_last" in msg, msg
    print("refused")
else:
    np.testing.assert_array_equal(t["data"].value, x)  # not transposed
    assert [t[n].layout for n in ("data", "conv1", "relu", "pool")] == ["NCHW"] * 4
    # Keras' channels_first Flatten moves C last: the flat order is H, W, C
    assert t["flat"].layout == "flat:NHWC" and t["flat"].flat_shape == (4, 4, 4)
    caffe_order = convert(t["flat"].value, "flat:NHWC", "flat:NCHW", t["flat"].flat_shape)
    np.testing.assert_array_equal(caffe_order, t["pool"].value.reshape(2, -1))
    print("ran")


class Net(keras.Model):  # subclassed: captured eagerly, layer by layer
    def __init__(self):
        super().__init__()
        self.stem = keras.layers.Conv2D(3, 1, data_format="channels_first", name="stem")

    def call(self, x):
        return self.stem(x)


net = Net()
net.build((None, 3, 8, 8))
try:
    t = load_tf(net).capture(x)
except ModelLoadError as e:
    assert "layer 'stem' (Conv2D)" in str(e) and "\\n" not in str(e), str(e)
else:
    assert t["stem"].layout == "NCHW", t["stem"].layout
"""


def test_channels_first_model_is_fed_nchw_and_declares_it():
    """Captured and checked where TF can run an NCHW conv here; a one-line error naming
    the layer where it cannot (a CPU without oneDNN). Never skipped."""
    exec(compile(_CHANNELS_FIRST, "channels_first_check", "exec"), {})


def test_channels_first_model_with_onednn_off():
    """The same check in a process with oneDNN off, as on a fresh machine's CI: on an
    x86 CPU TF then has no NCHW Conv2D, and the error path runs."""
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}
    r = subprocess.run(
        [sys.executable, "-c", _CHANNELS_FIRST], capture_output=True, text=True, timeout=300, env=env
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip().splitlines()[-1] in ("ran", "refused"), r.stdout


def test_session_graph_tf_cannot_run_names_the_op():
    g = tf.Graph()
    with g.as_default():
        x = tf.compat.v1.placeholder(tf.float32, (None, 3, 8, 8), name="x")
        w = tf.constant(RNG.standard_normal((3, 3, 3, 4)).astype(np.float32))
        with tf.name_scope("conv1"):
            y = tf.nn.relu(tf.nn.conv2d(x, w, strides=1, padding="SAME", data_format="NCHW"))
    sess = tf.compat.v1.Session(graph=g)
    b = load_tf(sess, inputs=["x:0"])
    xin = nchw()
    try:
        t = b.capture(xin)
    except ModelLoadError as e:
        msg = str(e)
        assert "op 'conv1/Conv2D' (Conv2D, layer 'conv1')" in msg and "\n" not in msg, msg
        assert "cannot run" in msg and "NHWC" in msg, msg
    else:
        assert t["conv1/Relu"].layout == "NCHW"
        np.testing.assert_allclose(t["conv1/Relu"].value, sess.run(y, {x: xin}), rtol=1e-6)
    sess.close()


def test_two_inputs_by_name():
    img = keras.Input((4, 4, 2), name="img")
    vec = keras.Input((3,), name="vec")
    a = keras.layers.GlobalAveragePooling2D(name="gap")(img)
    out = keras.layers.Concatenate(name="cat")([a, vec])
    m = keras.Model([img, vec], out)
    b = load_tf(m)
    specs = {s.name: s for s in b.input_specs()}
    assert (
        specs["img"].shape == (None, 2, 4, 4)
        and specs["vec"].shape == (None, 3)
        and specs["vec"].layout == "NC"
    )
    x = nchw(n=2, c=2, h=4, w=4)
    v = RNG.standard_normal((2, 3)).astype(np.float32)
    t = b.capture({"img": x, "vec": v})
    assert t["cat"].inputs == ["gap", "vec"] and t["cat"].params["axis"] == -1
    np.testing.assert_allclose(
        t["cat"].value, np.concatenate([x.mean(axis=(2, 3)), v], 1), rtol=1e-5, atol=1e-6
    )
    with pytest.raises(InputDataError, match="pass a dict"):
        b.capture(x)


def test_keras_replay_conv_reproduces_capture(functional):
    b = load_tf(functional)
    t = b.capture(nchw())
    assert b.can_replay("conv1") and b.can_replay("add")
    out = b.replay("conv1", [t["ident"].value])
    np.testing.assert_array_equal(out, t["conv1"].value)
    out = b.replay("add", [t["bn"].value, t["side"].value])
    np.testing.assert_allclose(out, t["add"].value, rtol=0, atol=0)
    # a different input gives a different output (it really ran the layer)
    assert not np.allclose(b.replay("conv1", [t["ident"].value * 2]), t["conv1"].value)
    with pytest.raises(InputDataError, match=r"'add' reads 2 input"):
        b.replay("add", [t["bn"].value])
    assert not b.can_replay("nope")


def _close(got, want, rtol=1e-6):
    want = np.asarray(want)
    np.testing.assert_allclose(
        got, want, rtol=rtol, atol=rtol * max(float(np.abs(want).max()), 1.0)
    )


def _compiled(backend, name):
    return backend._by_name[name].compiled not in (None, False)


def test_compiled_capture_matches_eager_layers_at_any_batch(functional):
    b = load_tf(functional)
    names = [n for n in b.capture(nchw(n=1)).names if n != "data"]
    assert b._probe_fn is None  # a one-off capture does not pay for a trace
    eager = keras.Model(functional.input, [functional.get_layer(n).output for n in names])
    for n in (2, 5, 1):  # the batch changes between captures
        x = nchw(n=n)
        t = b.capture(x)
        for name, want in zip(names, eager(nhwc(x), training=False), strict=True):
            assert t[name].shape[0] == n
            _close(t[name].value, want.numpy())
    assert b._probe_fn.experimental_get_tracing_count() == 1  # one trace for every batch


def test_replay_compiled_matches_eager_op(functional):
    b = load_tf(functional)
    b.replay_compile_at = 2
    t = b.capture(nchw(n=2))
    bn, add = functional.get_layer("bn"), functional.get_layer("add")
    first = b.replay("bn", [t["conv1"].value])
    assert not _compiled(b, "bn")  # the first replay is eager
    _close(first, bn(t["conv1"].value, training=False).numpy())
    for n in (2, 3):  # compiled from the second replay on, at any batch
        x = RNG.standard_normal((n, 8, 8, 4)).astype(np.float32)
        y = RNG.standard_normal((n, 8, 8, 4)).astype(np.float32)
        _close(b.replay("bn", [x]), bn(x, training=False).numpy())  # moving statistics
        _close(b.replay("add", [x, y]), add([x, y]).numpy())
    assert _compiled(b, "bn") and _compiled(b, "add")
    h = RNG.standard_normal((4, 64)).astype(np.float32)
    for _ in range(2):
        _close(b.replay("fc", [h]), functional.get_layer("fc")(h).numpy())


def test_replay_compiles_only_at_the_threshold(functional):
    b = load_tf(functional)
    b.replay_compile_at = 3
    t = b.capture(nchw())
    for _ in range(2):
        out = b.replay("conv1", [t["ident"].value])
    assert not _compiled(b, "conv1")
    np.testing.assert_array_equal(out, t["conv1"].value)
    _close(b.replay("conv1", [t["ident"].value]), t["conv1"].value)
    assert _compiled(b, "conv1")


class _EagerOnly(keras.layers.Layer):
    """Runs eagerly but cannot be traced: NumPy on the tensor's value in ``call``."""

    def call(self, x):
        return tf.convert_to_tensor(np.tanh(x.numpy()))

    def compute_output_shape(self, shape):
        return shape


def test_layer_that_cannot_be_traced_stays_eager():
    inp = keras.Input((4, 4, 2), name="x")
    c = keras.layers.Conv2D(2, 1, name="c")(inp)
    m = keras.Model(inp, keras.layers.Flatten(name="flat")(_EagerOnly(name="np")(c)))
    b = load_tf(m)
    b.replay_compile_at = 1
    for n in (2, 3):
        t = b.capture(nchw(n=n, c=2, h=4, w=4))
        _close(t["np"].value, np.tanh(t["c"].value))
        _close(b.replay("np", [t["c"].value]), np.tanh(t["c"].value))
    assert b._probe_fn is False and b._by_name["np"].compiled is False
    # an input at fault is not taken for an untraceable layer: the eager error is raised
    with pytest.raises(ValueError, match="incompatible with the layer"):
        b.replay("c", [np.zeros((2, 4, 4, 3), np.float32)])
    assert _compiled(b, "c")
    _close(b.replay("c", [t["x"].value]), t["c"].value)


def test_subclassed_model_compiled_replay():
    keras.utils.set_random_seed(5)
    m = _Sub()
    m(np.zeros((1, 8, 8, 3), np.float32))
    b = load_tf(m)
    b.replay_compile_at = 1
    t = b.capture(nchw())
    for n in (2, 4):
        x = RNG.standard_normal((n, 8, 8, 3)).astype(np.float32)
        _close(b.replay("block/conv", [x]), m.block.conv(x).numpy())
        _close(b.replay("block", [x]), m.block(x).numpy())
    assert _compiled(b, "block") and _compiled(b, "block/conv")
    _close(b.replay("head", [t["pool"].value]), t["head"].value)


# -- replay_many: all of a check's layers in one call ------------------------------------

_MANY = ["ident", "conv1", "bn", "side", "add", "pool", "flat", "fc"]


def _requests(t, names=_MANY):
    return [(n, [t[i].value for i in t[n].inputs]) for n in names]


def _random_requests(t, n, names=_MANY):
    """Requests at batch ``n`` with fresh inputs of the captured shapes (not the capture's)."""
    return [
        (
            name,
            [RNG.standard_normal((n, *t[i].shape[1:])).astype(np.float32) for i in t[name].inputs],
        )
        for name in names
    ]


def _batch(backend, names):
    return backend._batches[tuple(names)]


def test_replay_many_matches_replay_eager_then_compiled_at_any_batch(functional):
    b = load_tf(functional)
    ref = load_tf(functional)  # per-item replays on another backend: b's counters stay at 0
    t = b.capture(nchw(n=2))
    ref.capture(nchw(n=2))
    for call, reqs in enumerate(
        [_requests(t), _requests(t), _random_requests(t, 3), _random_requests(t, 1)], start=1
    ):
        got = b.replay_many(reqs)
        assert len(got) == len(reqs)
        for (name, xs), out in zip(reqs, got, strict=True):
            assert isinstance(out, np.ndarray), (name, out)
            assert out.shape[0] == xs[0].shape[0]
            _close(out, ref.replay(name, xs))
        fn = _batch(b, _MANY).fn
        if call == 1:  # a one-off check pays no trace
            assert fn is None
            np.testing.assert_array_equal(got[_MANY.index("fc")], t["fc"].value)
        else:  # compiled from the second call on
            assert fn not in (None, False)
    # one trace serves every batch size (the first is traced with the batch free)
    assert _batch(b, _MANY).fn.experimental_get_tracing_count() == 1
    # what the per-item path counts and compiles is left alone
    assert all(r.replays == 0 and r.compiled is None for r in b._records)
    # a different list of probes is a batch of its own, eager on its first call
    sub = ["bn", "add"]
    got = b.replay_many(_requests(t, sub))
    assert _batch(b, sub).fn is None and _batch(b, _MANY).fn
    _close(got[1], t["add"].value)


def test_replay_many_faulty_requests_get_their_error_in_their_slot(functional):
    b = load_tf(functional)
    t = b.capture(nchw(n=2))
    good = _requests(t, ["conv1", "add", "fc"])
    bad = [
        ("nope", [t["ident"].value]),  # unknown probe
        ("add", [t["bn"].value]),  # one input of two
        ("conv1", [np.zeros((2, 8, 8, 5), np.float32)]),  # 5 channels for 3
        ("data", [t["data"].value]),  # a model input, not a layer output
        ("fc", [np.array([["a", "b"]])]),  # not numbers
    ]
    reqs = [good[0], bad[0], good[1], bad[1], bad[2], good[2], bad[3], bad[4]]
    names = [n for n, _ in reqs]
    for _ in range(3):  # eager, first compiled call, compiled
        got = b.replay_many(reqs)
        assert len(got) == len(reqs)
        for i in (0, 2, 5):
            _close(got[i], t[names[i]].value)
        assert all(isinstance(got[i], InputDataError) for i in (1, 3, 4, 6, 7))
        assert "no layer output 'nope'" in str(got[1])
        assert "'add' reads 2 input" in str(got[3])
        assert "replaying layer 'conv1' failed" in str(got[4])
        assert "incompatible with the layer" in str(got[4])  # Keras' own words are kept
        assert isinstance(got[4].__cause__, ValueError)
        assert "no layer output 'data'" in str(got[6])
        assert "inputs of layer 'fc' are not usable tensors" in str(got[7])
    valid = [n for n, out in zip(names, got, strict=True) if not isinstance(out, Exception)]
    assert valid == ["conv1", "add", "fc"]
    # faulty inputs are not taken for a batch that cannot be traced: it stays compiled
    fn = _batch(b, ["conv1", "add", "conv1", "fc"]).fn
    assert fn not in (None, False)
    ok = b.replay_many([good[0], good[1], good[0], good[2]])
    assert all(isinstance(o, np.ndarray) for o in ok)
    _close(ok[2], t["conv1"].value)
    # the failed calls did not spoil the batch-free trace: one trace for both batch sizes
    t5 = b.capture(nchw(n=5))
    ok = b.replay_many(_requests(t5, ["conv1", "add", "conv1", "fc"]))
    _close(ok[3], t5["fc"].value)
    assert fn.experimental_get_tracing_count() == 1
    assert all(r.replays == 0 and r.compiled is None for r in b._records)


def test_replay_many_with_nothing_to_replay(functional):
    b = load_tf(functional)
    assert b.replay_many([]) == []
    b.capture(nchw())
    assert b.replay_many([]) == []
    (out,) = b.replay_many([("nope", [])])
    assert isinstance(out, InputDataError)
    assert b._batches == {}


def test_replay_many_of_a_layer_that_cannot_be_traced_runs_eagerly():
    inp = keras.Input((4, 4, 2), name="x")
    c = keras.layers.Conv2D(2, 1, name="c")(inp)
    m = keras.Model(inp, keras.layers.Flatten(name="flat")(_EagerOnly(name="np")(c)))
    b = load_tf(m)
    b.replay_many_compile_at = 1
    t = b.capture(nchw(n=2, c=2, h=4, w=4))
    for n in (2, 3):
        x = RNG.standard_normal((n, 4, 4, 2)).astype(np.float32)
        c_out, np_out = b.replay_many([("c", [x]), ("np", [x])])
        _close(c_out, m.get_layer("c")(x).numpy())
        _close(np_out, np.tanh(x))
    assert _batch(b, ["c", "np"]).fn is False  # eager for good
    _close(b.replay_many([("flat", [t["np"].value])])[0], t["flat"].value)


def test_replay_many_of_a_subclassed_model_after_a_capture():
    keras.utils.set_random_seed(5)
    m = _Sub()
    m(np.zeros((1, 8, 8, 3), np.float32))
    b = load_tf(m)
    names = ["block/conv", "block", "head"]
    before = b.replay_many([(n, [np.zeros((1, 8, 8, 3), np.float32)]) for n in names])
    assert all(isinstance(o, InputDataError) and "after a capture" in str(o) for o in before)
    for _ in range(2):  # each capture makes new records: their batches start over
        t = b.capture(nchw())
        for call in range(3):
            x = RNG.standard_normal((2, 8, 8, 3)).astype(np.float32)
            conv, block, head = b.replay_many(
                [("block/conv", [x]), ("block", [x]), ("head", [t["pool"].value])]
            )
            _close(conv, m.block.conv(x).numpy())
            _close(block, m.block(x).numpy())
            _close(head, t["head"].value)
            assert (_batch(b, names).fn is None) == (call == 0)


class _NumpyBackend(Backend):
    """A backend whose replay is NumPy: ``double`` doubles, ``sum`` adds, ``boom`` is a bug."""

    def can_replay(self, probe_name):
        return probe_name in ("double", "sum", "boom")

    def replay(self, probe_name, inputs):
        if probe_name == "boom":
            raise RuntimeError("a bug")
        if not self.can_replay(probe_name):
            raise InputDataError(f"no layer {probe_name!r}")
        if probe_name == "double":
            (x,) = inputs
            return 2 * np.asarray(x)
        return np.add(*inputs)


def test_default_replay_many_loops_over_replay():
    b = _NumpyBackend("np")
    x, y = np.arange(4.0), np.ones(4)
    out = b.replay_many([("double", [x]), ("nope", [x]), ("sum", [x, y])])
    np.testing.assert_array_equal(out[0], 2 * x)
    assert isinstance(out[1], InputDataError) and "'nope'" in str(out[1])
    np.testing.assert_array_equal(out[2], x + y)
    assert b.replay_many([]) == []
    with pytest.raises(RuntimeError, match="a bug"):  # not an input error: it propagates
        b.replay_many([("double", [x]), ("boom", [x])])


def test_keras_weights(functional):
    w = load_tf(functional).weights()
    assert [a.shape for a in w["conv1"]] == [(3, 3, 3, 4), (4,)]
    assert len(w["bn"]) == 4 and w["fc"][0].shape == (64, 5)
    assert "pool" not in w and "data" not in w
    np.testing.assert_array_equal(w["conv1"][0], functional.get_layer("conv1").kernel.numpy())


def test_tensors_filter(functional):
    t = load_tf(functional, tensors=["conv1", "fc"]).capture(nchw())
    assert t.names == ["data", "conv1", "fc"]
    with pytest.raises(ModelLoadError, match=r"tensors= names \['conv9'\]"):
        load_tf(functional, tensors=["conv1", "conv9"])


# -- Keras: Sequential with a nested Sequential, subclassed ----------------------------


def test_sequential_with_nested_sequential_is_flattened():
    keras.utils.set_random_seed(2)
    inner = keras.Sequential(
        [
            keras.Input((4, 4, 4)),
            keras.layers.Conv2D(3, 1, name="c2"),
            keras.layers.LeakyReLU(0.1, name="lrelu"),
        ],
        name="inner",
    )
    m = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, strides=2, padding="same", name="c1"),
            inner,
            keras.layers.GlobalAveragePooling2D(name="gap"),
            keras.layers.Dense(2, activation="softmax", name="out"),
        ],
        name="outer",
    )
    x = nchw()
    t = load_tf(m).capture(x)
    names = t.names
    assert names[1:] == ["c1", "inner/c2", "inner/lrelu", "gap", "out"]
    assert t[names[0]].kind == "Input"
    assert t["inner/c2"].inputs == ["c1"] and t["gap"].inputs == ["inner/lrelu"]
    assert t["inner/lrelu"].params["negative_slope"] == pytest.approx(0.1)
    assert t["c1"].params["strides"] == [2, 2]
    assert t["out"].fused == ["softmax"] and t["gap"].layout == "NC"
    np.testing.assert_allclose(t["out"].value, m(nhwc(x)).numpy(), rtol=1e-5, atol=1e-6)
    w = load_tf(m).weights()
    assert w["inner/c2"][0].shape == (1, 1, 4, 3)


class _Block(keras.layers.Layer):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.conv = keras.layers.Conv2D(3, 3, padding="same", name="conv")
        self.act = keras.layers.ReLU(name="act")

    def call(self, x):
        return self.act(self.conv(x))


class _Sub(keras.Model):
    def __init__(self):
        super().__init__(name="sub")
        self.stem = keras.layers.Conv2D(3, 1, activation="relu", name="stem")
        self.block = _Block(name="block")
        self.pool = keras.layers.GlobalAveragePooling2D(name="pool")
        self.head = keras.layers.Dense(2, name="head")
        self.explode = False

    def call(self, x):
        x = self.block(self.stem(x))
        if self.explode:
            raise RuntimeError("boom")
        return self.head(self.pool(x))


def test_subclassed_model_captured_eagerly_and_restored():
    keras.utils.set_random_seed(3)
    m = _Sub()
    m(np.zeros((1, 8, 8, 3), np.float32))
    b = load_tf(m)
    assert b.mode == "eager"
    assert b.input_specs()[0].shape == (None, 3, 8, 8)
    x = nchw()
    t = b.capture(x)
    assert t.names == ["input", "stem", "block/conv", "block/act", "block", "pool", "head"]
    assert t["stem"].fused == ["relu"] and t["block/conv"].inputs == ["stem"]
    assert t["block/act"].inputs == ["block/conv"] and t["head"].inputs == ["pool"]
    np.testing.assert_allclose(t["head"].value, m(nhwc(x)).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(t["block"].value, t["block/act"].value)
    for layer in (m.stem, m.block, m.block.conv, m.head):
        assert "call" not in layer.__dict__
    # replay after a capture
    np.testing.assert_allclose(
        b.replay("block/conv", [t["stem"].value]), t["block/conv"].value, rtol=1e-6, atol=1e-6
    )
    assert set(b.weights()) == {"stem", "block/conv", "head"}
    # the wrappers are removed even when the forward pass raises
    m.explode = True
    with pytest.raises(RuntimeError, match="boom"):
        b.capture(x)
    for layer in (m.stem, m.block, m.block.conv, m.block.act):
        assert "call" not in layer.__dict__
    m.explode = False
    np.testing.assert_allclose(m(nhwc(x)).numpy(), t["head"].value, rtol=1e-5, atol=1e-6)


# -- Keras files -----------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".keras", ".h5"])
def test_keras_file_round_trip(functional, tmp_path, ext):
    path = tmp_path / f"net{ext}"
    functional.save(str(path))
    x = nchw()
    t = capture_tf(str(path), x)
    ref = load_tf(functional).capture(x)
    assert t.source == str(path)
    assert t.names == ref.names
    for p in ref:
        np.testing.assert_allclose(t[p.name].value, p.value, rtol=1e-6, atol=1e-6)
    assert t["conv1"].fused == ["relu"]


@pytest.mark.parametrize("ext", [".keras", ".h5"])
def test_lambda_refused_in_safe_mode(tmp_path, ext):
    inp = keras.Input((4, 4, 2), name="x")
    out = keras.layers.Lambda(lambda v: v * 2.0, name="double")(inp)
    m = keras.Model(inp, out)
    path = tmp_path / f"lam{ext}"
    m.save(str(path))
    with pytest.raises(
        ModelLoadError, match=r"layer 'double' is a Lambda layer.*pass safe_mode=False"
    ) as ei:
        load_tf(str(path))
    assert str(path) in str(ei.value)
    t = load_tf(str(path), safe_mode=False).capture(nchw(n=1, c=2, h=4, w=4))
    np.testing.assert_allclose(t["double"].value, 2 * t["x"].value)


# -- graphs: SavedModel, frozen .pb, Session ------------------------------------------------


def _graph_checks(t, model, x):
    convs = [p for p in t if p.kind == "Conv2D"]
    assert len(convs) == 2
    conv = convs[0]
    assert (
        conv.layer == "conv1"
        and conv.params["padding"] == "SAME"
        and conv.params["strides"] == [1, 1, 1, 1]
    )
    assert conv.layout == "NHWC" and conv.inputs == [t.names[0]]
    kinds = [p.kind for p in t]
    assert kinds[0] == "Input" and "Relu" in kinds and "MaxPool" in kinds and "MatMul" in kinds
    assert not {"Const", "Identity", "NoOp", "ReadVariableOp", "Shape"} & set(kinds)
    flat = [p for p in t if p.kind == "Reshape"][0]
    assert flat.layer == "flat" and flat.layout == "flat:NHWC" and flat.flat_shape == (4, 4, 4)
    relu = [p for p in t if p.kind == "Relu"][0]
    np.testing.assert_allclose(
        relu.value,
        keras.Model(model.input, model.get_layer("conv1").output)(nhwc(x)),
        rtol=1e-5,
        atol=1e-5,
    )
    np.testing.assert_allclose(t.probes[-1].value, model(nhwc(x)).numpy(), rtol=1e-5, atol=1e-5)
    assert {p.layer for p in t} >= {"conv1", "bn", "side", "add", "pool", "flat", "fc"}


def test_saved_model_from_keras_export(functional, exported):
    x = nchw()
    b = load_tf(exported)
    assert b.input_specs()[0].shape == (None, 3, 8, 8) and b.input_specs()[0].layout == "NCHW"
    t = b.capture(x)
    _graph_checks(t, functional, x)
    assert t.meta["model_format"] == "saved_model:serving_default"


def test_saved_model_from_tf_saved_model_save(functional, tmp_path):
    path = tmp_path / "tfsm"
    tf.saved_model.save(functional, str(path))
    x = nchw()
    _graph_checks(load_tf(str(path)).capture(x), functional, x)


def test_graph_replay_and_weights(functional, exported):
    b = load_tf(exported)
    t = b.capture(nchw())
    conv = [p for p in t if p.kind == "Conv2D"][0]
    assert b.can_replay(conv.name)
    np.testing.assert_allclose(
        b.replay(conv.name, [t[conv.inputs[0]].value]), conv.value, rtol=1e-6, atol=1e-6
    )
    np.testing.assert_allclose(
        b.replay(conv.name, [t[conv.inputs[0]].value]), conv.value, rtol=1e-6, atol=1e-6
    )
    add = [p for p in t if p.kind == "AddV2" and p.layer == "add"][0]
    assert len(add.inputs) == 2
    np.testing.assert_allclose(
        b.replay(add.name, [t[n].value for n in add.inputs]), add.value, rtol=1e-6
    )
    w = b.weights()
    np.testing.assert_array_equal(w[conv.name][0], functional.get_layer("conv1").kernel.numpy())
    fc = [p for p in t if p.kind == "MatMul"][0]
    np.testing.assert_array_equal(w[fc.name][0], functional.get_layer("fc").kernel.numpy())


def test_frozen_graph_def_pb(functional, tmp_path):
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    fn = tf.function(lambda v: functional(v, training=False)).get_concrete_function(
        tf.TensorSpec((None, 8, 8, 3), tf.float32, name="image")
    )
    frozen = convert_variables_to_constants_v2(fn)
    path = tmp_path / "frozen.pb"
    path.write_bytes(frozen.graph.as_graph_def().SerializeToString())
    x = nchw()
    b = load_tf(str(path))
    assert [s.name for s in b.input_specs()] == ["image"]
    t = b.capture(x)
    _graph_checks(t, functional, x)
    assert t.meta["model_format"] == "graph_def"


def test_legacy_session_graph():
    g = tf.Graph()
    with g.as_default():
        xp = tf.compat.v1.placeholder(tf.float32, (None, 8, 8, 3), name="x")
        with tf.compat.v1.variable_scope("conv1"):
            w = tf.compat.v1.get_variable("weights", (3, 3, 3, 4))
            bias = tf.compat.v1.get_variable(
                "biases", (4,), initializer=tf.compat.v1.random_normal_initializer()
            )
            y = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(xp, w, strides=2, padding="SAME"), bias))
        with tf.compat.v1.variable_scope("pool1"):
            y = tf.nn.max_pool2d(y, 2, 2, "VALID")
        y = tf.concat([y, -y], axis=3, name="cat")
        labels = tf.compat.v1.placeholder(tf.float32, (None, 2, 2, 8), name="labels")
        tf.reduce_mean(tf.square(y - labels), name="loss")
        sess = tf.compat.v1.Session(graph=g)
        sess.run(tf.compat.v1.global_variables_initializer())
    x = nchw()
    b = load_tf(sess, inputs=["x:0"])
    t = b.capture(x)
    assert t.names == [
        "x",
        "conv1/Conv2D",
        "conv1/BiasAdd",
        "conv1/Relu",
        "pool1/MaxPool2d",
        "Neg",
        "cat",
    ]
    conv = t["conv1/Conv2D"]
    assert (
        conv.layer == "conv1"
        and conv.params["padding"] == "SAME"
        and conv.params["strides"] == [1, 2, 2, 1]
    )
    assert t["cat"].params["axis"] == 3 and t["cat"].inputs == ["pool1/MaxPool2d", "Neg"]
    assert t["conv1/BiasAdd"].inputs == ["conv1/Conv2D"]
    wv, bv = sess.run([w, bias])
    ref = sess.run(y, {xp: nhwc(x)})
    np.testing.assert_array_equal(t["cat"].value, ref)
    np.testing.assert_allclose(
        t["conv1/Conv2D"].value, tf.nn.conv2d(nhwc(x), wv, 2, "SAME").numpy(), rtol=1e-5, atol=1e-5
    )
    weights = b.weights()
    np.testing.assert_array_equal(weights["conv1/Conv2D"][0], wv)
    np.testing.assert_array_equal(weights["conv1/BiasAdd"][0], bv)
    np.testing.assert_allclose(
        b.replay("conv1/Conv2D", [t["x"].value]), conv.value, rtol=1e-6, atol=1e-6
    )
    b.close()
    assert sess.run(w).shape == (3, 3, 3, 4)  # the caller's session is left open
    with pytest.raises(ModelLoadError, match=r"input 'nope' is not a tensor of the graph"):
        load_tf(sess, inputs=["nope"])
    only = load_tf(sess, inputs=["x"], tensors=["conv1/Relu:0", "cat"]).capture(x)
    assert only.names == ["x", "conv1/Relu", "cat"]
    # without inputs=, every placeholder is an input, including the labels
    assert {s.name for s in load_tf(sess).input_specs()} == {"x", "labels"}


def test_graph_params_and_weights_of_caffe_style_ops():
    g = tf.Graph()
    with g.as_default():
        xp = tf.compat.v1.placeholder(tf.float32, (None, 6, 6, 3), name="x")
        y = tf.pad(xp, [[0, 0], [1, 1], [1, 1], [0, 0]], name="pad")
        dw = tf.constant(RNG.standard_normal((3, 3, 3, 2)).astype(np.float32))
        y = tf.nn.depthwise_conv2d(y, dw, [1, 1, 1, 1], "VALID", name="dw")
        stats = [tf.constant(RNG.uniform(0.5, 1.5, 6).astype(np.float32)) for _ in range(4)]
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(
            y, *stats, epsilon=1e-5, is_training=False, name="bn"
        )
        y = tf.nn.local_response_normalization(
            y, depth_radius=2, bias=1.0, alpha=1e-4 / 5, beta=0.75, name="lrn"
        )
        y = tf.reduce_mean(y, axis=[1, 2], name="gap")
    b = load_tf(g)
    x = nchw(n=2, c=3, h=6, w=6)
    t = b.capture(x)
    assert [p.kind for p in t] == [
        "Input",
        "Pad",
        "DepthwiseConv2dNative",
        "FusedBatchNormV3",
        "LRN",
        "Mean",
    ]
    assert t["pad"].params["paddings"] == [[0, 0], [1, 1], [1, 1], [0, 0]]
    bn = t["bn"]
    assert bn.params["epsilon"] == pytest.approx(1e-5) and bn.params["is_training"] is False
    assert "bn:1" not in t  # unconsumed batch statistics are not probes
    lrn = t["lrn"].params
    assert lrn["depth_radius"] == 2 and lrn["alpha"] == pytest.approx(2e-5) and lrn["beta"] == 0.75
    assert t["gap"].params["axis"] == [1, 2] and t["gap"].layout == "NC"
    w = b.weights()
    assert w["dw"][0].shape == (3, 3, 3, 2) and len(w["bn"]) == 4
    with tf.compat.v1.Session(graph=g) as s:
        ref = s.run(y, {xp: nhwc(x)})
        scale_offset_mean_var = s.run(stats)
    for got, want in zip(w["bn"], scale_offset_mean_var, strict=True):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(t["gap"].value, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        b.replay("lrn", [t["bn"].value]), t["lrn"].value, rtol=1e-6, atol=1e-7
    )


# -- TFLite -------------------------------------------------------------------------------------


def test_tflite_intermediate_tensors_and_fused_activation(functional, tmp_path):
    path = tmp_path / "net.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(functional).convert())
    x = nchw(n=2)
    b = load_tf(str(path))
    assert b.input_specs()[0].shape[1:] == (3, 8, 8)
    t = b.capture(x)
    kinds = [p.kind for p in t]
    assert (
        kinds[0] == "Input"
        and "CONV_2D" in kinds
        and "MAX_POOL_2D" in kinds
        and "FULLY_CONNECTED" in kinds
    )
    assert len(t) >= 6
    conv = [p for p in t if p.kind == "CONV_2D"][0]
    assert conv.fused == ["relu"] and conv.layer == "conv1" and conv.params["padding"] == "SAME"
    assert conv.inputs == [t.names[0]] and conv.layout == "NHWC"
    relu_ref = keras.Model(functional.input, functional.get_layer("conv1").output)(nhwc(x)).numpy()
    np.testing.assert_allclose(conv.value, relu_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        t.probes[-1].value, functional(nhwc(x)).numpy(), rtol=1e-4, atol=1e-5
    )
    assert b.can_replay(conv.name)  # a one-op model (tests/test_tf_forward_replay.py)
    np.testing.assert_array_equal(b.replay(conv.name, [t[conv.inputs[0]].value]), conv.value)
    # TFLite holds the filter as (O, kH, kW, I); weights() gives it in TF's layout, as every backend
    np.testing.assert_array_equal(b.weights()[conv.name][0], functional.get_layer("conv1").get_weights()[0])


def test_tflite_full_integer_model_quantizes_input(tmp_path):
    keras.utils.set_random_seed(4)
    inp = keras.Input((8, 8, 3), name="data")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inp)
    m = keras.Model(inp, keras.layers.Dense(5, name="fc")(keras.layers.Flatten(name="flat")(x)))
    conv = tf.lite.TFLiteConverter.from_keras_model(m)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    # the checked input is one of the calibration samples, so its output lies inside the
    # calibrated int8 range (a fresh random input may be clipped at the range's edge)
    samples = [np.random.default_rng(i).random((1, 8, 8, 3), dtype=np.float32) for i in range(20)]
    conv.representative_dataset = lambda: ([s] for s in samples)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = conv.inference_output_type = tf.int8
    path = tmp_path / "q.tflite"
    path.write_bytes(conv.convert())
    x = np.ascontiguousarray(samples[7].transpose(0, 3, 1, 2))
    t = load_tf(str(path)).capture(x)
    last = t.probes[-1]
    assert last.dtype == "int8" and t.probes[0].dtype == "float32"
    scale, zero = last.params["quantization"]
    deq = (last.value.astype(np.float32) - zero) * scale
    ref = m(nhwc(x)).numpy()
    assert np.abs(deq - ref).max() < 8 * scale  # a few quantization steps, not garbage


# -- errors ---------------------------------------------------------------------------------------


def test_bad_paths_raise_model_load_error(tmp_path):
    missing = tmp_path / "missing.keras"
    with pytest.raises(ModelLoadError, match="no such file") as ei:
        load_tf(str(missing))
    assert str(missing) in str(ei.value)
    empty_dir = tmp_path / "dir"
    empty_dir.mkdir()
    with pytest.raises(ModelLoadError, match="not a SavedModel"):
        load_tf(str(empty_dir))
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(ModelLoadError, match="unrecognised model file"):
        load_tf(str(txt))
    cases = {
        "bad.keras": "not a .keras archive",
        "bad.h5": "not an HDF5 file",
        "bad.pb": "not a GraphDef",
        "bad.tflite": "not a TFLite flatbuffer",
    }
    for name, msg in cases.items():
        p = tmp_path / name
        p.write_bytes(b"\x08\x01garbage" * 50)
        with pytest.raises(ModelLoadError, match=msg) as ei:
            load_tf(str(p))
        assert str(p) in str(ei.value)
    bad_sm = tmp_path / "badsm"
    bad_sm.mkdir()
    (bad_sm / "saved_model.pb").write_bytes(b"\x00\x01\x02 corrupt")
    with pytest.raises(ModelLoadError, match="not a loadable SavedModel") as ei:
        load_tf(str(bad_sm))
    assert str(bad_sm) in str(ei.value)
    with pytest.raises(ModelLoadError, match="cannot capture a builtins.int"):
        load_tf(3)


def test_weights_only_h5_is_refused(functional, tmp_path):
    p = tmp_path / "only.weights.h5"
    functional.save_weights(str(p))
    with pytest.raises(ModelLoadError, match="holds no model config"):
        load_tf(str(p))


# -- archive ----------------------------------------------------------------------------------------


def test_archive_round_trip(functional, tmp_path):
    t = load_tf(functional).capture(nchw())
    path = tmp_path / "tf_trace.npz"
    t.save(path)
    back = Trace.load(path)
    assert back.framework == "tensorflow" and back.names == t.names
    assert back.meta["input_layouts"] == {"data": "NHWC"}
    for p in t:
        q = back[p.name]
        np.testing.assert_array_equal(q.value, p.value)
        assert (q.kind, q.layout, q.flat_shape, q.inputs, q.fused, q.params) == (
            p.kind,
            p.layout,
            p.flat_shape,
            p.inputs,
            p.fused,
            p.params,
        )


# -- pure helpers and lazy import ------------------------------------------------------------------------


def test_scope_layers_rule():
    m = scope_layers(
        [
            "StatefulPartitionedCall/model/conv1/Conv2D",
            "StatefulPartitionedCall/model/conv1/BiasAdd",
            "StatefulPartitionedCall/model/bn/batchnorm/mul_1",
            "StatefulPartitionedCall/model/Relu",
        ]
    )
    assert m["StatefulPartitionedCall/model/conv1/BiasAdd"] == "conv1"
    assert m["StatefulPartitionedCall/model/bn/batchnorm/mul_1"] == "bn"
    assert m["StatefulPartitionedCall/model/Relu"] == "Relu"
    assert (
        scope_layers(["model/conv1/BiasAdd", "model/fc/MatMul"])["model/conv1/BiasAdd"] == "conv1"
    )
    assert scope_layers(["conv1/Conv2D", "conv1/BiasAdd"])["conv1/Conv2D"] == "conv1"
    traced = scope_layers(["model_1/conv1_1/convolution", "model_1/bn_1/batchnorm/mul"])
    assert traced == {"model_1/conv1_1/convolution": "conv1", "model_1/bn_1/batchnorm/mul": "bn"}


def test_import_does_not_import_tensorflow():
    code = (
        "import sys, layerparity, layerparity.backends.tensorflow, layerparity.backends.tfcommon, "
        "layerparity.backends.keras, "
        "layerparity.backends.tfgraph, layerparity.backends.tflite; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'imported eagerly'"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr

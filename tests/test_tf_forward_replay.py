"""Plain ``forward`` of every TF backend, and TFLite own-error replay, against real TF."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from layerparity.backends.base import Backend  # noqa: E402
from layerparity.backends.tensorflow import load_tf  # noqa: E402
from layerparity.errors import InputDataError, InputError  # noqa: E402

RNG = np.random.default_rng(11)


def _model():
    keras.utils.set_random_seed(5)
    inp = keras.Input((8, 8, 3), name="data")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inp)
    y = keras.layers.Conv2D(4, 1, name="side")(x)
    x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.Flatten(name="flat")(x)
    return keras.Model(inp, keras.layers.Dense(5, activation="softmax", name="fc")(x), name="fwd")


@pytest.fixture(scope="module")
def forms(tmp_path_factory):
    d = tmp_path_factory.mktemp("forms")
    m = _model()
    m.export(str(d / "sm"), verbose=False)
    (d / "m.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(m).convert())
    return {"keras": m, "saved_model": str(d / "sm"), "tflite": str(d / "m.tflite")}


@pytest.mark.parametrize("form", ["keras", "saved_model", "tflite"])
def test_forward_returns_the_named_probes_as_captured(forms, form):
    b = load_tf(forms[form])
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    t = b.capture(x)
    names = [t.names[0], [p.name for p in t][len(t) // 2], t.names[-1]]
    for batch in (x, x[:1], x):  # compiled once, any batch
        out = b.forward(batch, names)
        ref = t if batch is x else b.capture(batch)
        assert list(out) == names
        for n in names:
            assert out[n].shape == ref[n].value.shape
            # a plain run may fuse ops a capture keeps apart: float32 noise, no more
            np.testing.assert_allclose(out[n], ref[n].value, rtol=1e-5, atol=1e-6)
    slow = Backend._forward_impl(b, b.normalize_inputs(x), names)  # the capture-based default
    for n in names:
        np.testing.assert_allclose(b.forward(x, names)[n], slow[n], rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="no probe 'nope'"):
        b.forward(x, ["nope"])
    b.close()


def test_keras_forward_caches_one_function_per_set_of_names(forms):
    b = load_tf(forms["keras"])
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    first = b.forward(x, ["fc"])["fc"]
    assert b._forward_fns[("fc",)].fn is None  # a one-off call runs eagerly, no trace
    second = b.forward(x, ["fc"])["fc"]
    assert b._forward_fns[("fc",)].fn  # compiled from the second call on
    np.testing.assert_allclose(first, second, rtol=1e-6, atol=1e-7)
    b.forward(x, ["pool", "fc"])
    assert sorted(b._forward_fns) == [("fc",), ("pool", "fc")]


def test_tflite_replay_of_single_ops_reproduces_the_capture(forms):
    b = load_tf(forms["tflite"])
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    t = b.capture(x)
    replayable = [p for p in t if b.can_replay(p.name)]
    assert {p.kind for p in replayable} >= {"CONV_2D", "ADD", "MAX_POOL_2D", "FULLY_CONNECTED", "SOFTMAX"}
    for p in replayable:
        v = b.replay(p.name, [t[n].value for n in p.inputs])
        np.testing.assert_array_equal(v, p.value)
    # own error: fed other values, the op computes on them (a conv on zeros gives its bias)
    conv = next(p for p in replayable if p.kind == "CONV_2D")
    zeros = np.zeros_like(t[conv.inputs[0]].value)
    bias = b.weights()[conv.name][-1]
    act = np.maximum if "relu" in conv.fused else (lambda a, _: a)
    np.testing.assert_allclose(b.replay(conv.name, [zeros])[0, 0, 0], act(bias, 0), rtol=1e-6)
    # another batch size: the one-op model is resized
    one = b.replay(conv.name, [t[conv.inputs[0]].value[:1]])
    np.testing.assert_array_equal(one, conv.value[:1])
    out = b.replay_many([(conv.name, [t[conv.inputs[0]].value]), (conv.name, []), ("nope", [zeros])])
    np.testing.assert_array_equal(out[0], conv.value)
    assert isinstance(out[1], InputDataError) and "reads 1 input" in str(out[1])
    assert isinstance(out[2], InputDataError) and "cannot be replayed" in str(out[2])
    with pytest.raises(InputDataError, match="failed"):
        b.replay(conv.name, [np.zeros((1, 3, 3), np.float32)])


def test_tflite_replay_group_runs_the_ops_between_probes(forms):
    b = load_tf(forms["tflite"])
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    t = b.capture(x)
    add = next(p for p in t if p.kind == "ADD")
    conv1 = next(p for p in t if p.kind == "CONV_2D" and p.layer == "conv1")
    # ADD reads conv1 and the side conv, which reads conv1: the group is {side conv, ADD}
    assert b.can_replay_group(add.name, [conv1.name])
    v = b.replay_group(add.name, [conv1.name], [conv1.value])
    np.testing.assert_array_equal(v, add.value)
    other = RNG.standard_normal(conv1.value.shape).astype(np.float32)
    side = next(p for p in t if p.kind == "CONV_2D" and p.layer == "side")
    expect = other + b.replay(side.name, [other])
    np.testing.assert_allclose(b.replay_group(add.name, [conv1.name], [other]), expect, rtol=1e-6, atol=1e-6)
    # the whole net from its input, fed through the base loop of replay_groups
    last = [p for p in t][-1]
    outs = b.replay_groups([(last.name, [t.names[0]], [t[t.names[0]].value]), (add.name, [], [])])
    np.testing.assert_array_equal(outs[0], last.value)
    assert isinstance(outs[1], InputDataError) and "not among its inputs" in str(outs[1])
    assert not b.can_replay_group(add.name, []) and not b.can_replay_group("nope", [conv1.name])

"""Graph backend speed features against real TF: replay of many groups in one
Session call, SavedModels/GraphDefs opened once per process, plain ``forward``."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from layerparity.backends import tfgraph  # noqa: E402
from layerparity.backends.tensorflow import load_tf  # noqa: E402
from layerparity.errors import InputDataError, InputError  # noqa: E402

RNG = np.random.default_rng(7)


def _model():
    keras.utils.set_random_seed(3)
    inp = keras.Input((8, 8, 3), name="data")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inp)
    y = keras.layers.Conv2D(4, 1, name="side")(x)
    x = keras.layers.Add(name="add")([x, y])
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    x = keras.layers.Flatten(name="flat")(x)
    return keras.Model(inp, keras.layers.Dense(5, name="fc")(x), name="net")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("graph_speed") / "sm"
    _model().export(str(d), verbose=False)
    return str(d)


@pytest.fixture()
def backend(saved):
    b = load_tf(saved)
    yield b
    b.close()


def _groups(trace):
    """One group per layer scope: the ops of a layer fed what comes from outside it."""
    by_layer: dict[str, list] = {}
    for p in trace:
        if p.kind != "Input":
            by_layer.setdefault(p.layer, []).append(p)
    out = []
    for ps in by_layer.values():
        names = {p.name for p in ps}
        ins = list(dict.fromkeys(n for p in ps for n in p.inputs if n not in names))
        out.append((ps[-1].name, ins, [trace[n].value for n in ins]))
    return out


def test_replay_groups_in_one_call_equals_each_group_alone(backend):
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    t = backend.capture(x)
    groups = _groups(t)
    assert {t[o].layer for o, _, _ in groups} >= {"conv1", "side", "add", "pool", "flat", "fc"}
    calls = []
    real = backend._run_batch
    backend._run_batch = lambda batch: calls.append(len(batch)) or real(batch)
    together = backend.replay_groups(groups)
    backend._run_batch = real
    assert calls == [len(groups)]  # one Session call for every group
    for (out, ins, arrays), v in zip(groups, together, strict=True):
        np.testing.assert_array_equal(v, backend.replay_group(out, ins, arrays))
        np.testing.assert_allclose(v, t[out].value, rtol=1e-5, atol=1e-5)
    again = backend.replay_groups(groups)  # cached callable, same values
    for a, b in zip(together, again, strict=True):
        np.testing.assert_array_equal(a, b)


def test_replay_groups_faulty_requests_get_their_error_in_their_slot(backend):
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    t = backend.capture(x)
    good = _groups(t)
    conv = next(g for g in good if t[g[0]].layer == "conv1")
    fc = next(g for g in good if t[g[0]].layer == "fc")
    requests = [
        conv,
        ("no/such/op", conv[1], conv[2]),  # unknown output
        (fc[0], fc[1], []),  # too few arrays
        (fc[0], fc[1], [np.zeros((1, 7), np.float32)]),  # a shape the op refuses
        (fc[0], [], []),  # needs the model input, which it is not fed
        fc,
    ]
    out = backend.replay_groups(requests)
    np.testing.assert_allclose(out[0], t[conv[0]].value, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[5], t[fc[0]].value, rtol=1e-5, atol=1e-5)
    for i, pat in [(1, "cannot be replayed"), (2, "got 0 array"), (3, "failed"), (4, "not among its inputs")]:
        assert isinstance(out[i], InputDataError), (i, out[i])
        assert pat in str(out[i]), (i, str(out[i]))


def test_groups_that_cut_into_each_other_run_in_separate_calls(backend):
    """Group B feeds a tensor inside group A (A: conv -> bias -> relu fed the input;
    B: the relu alone fed other values): one Session call would hand A B's values."""
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    t = backend.capture(x)
    conv_ops = [p for p in t if p.layer == "conv1"]
    assert [p.kind for p in conv_ops][-1] == "Relu"
    relu, before = conv_ops[-1], conv_ops[-2]
    other = RNG.standard_normal(t[before.name].value.shape).astype(np.float32)
    a = (relu.name, [t.names[0]], [t[t.names[0]].value])
    b = (relu.name, [before.name], [other])
    out = backend.replay_groups([a, b])
    np.testing.assert_allclose(out[0], relu.value, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out[1], np.maximum(other, 0))


def test_graph_replay_many_in_one_call_equals_replay(backend):
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    t = backend.capture(x)
    reqs = [(p.name, [t[n].value for n in p.inputs]) for p in t if backend.can_replay(p.name)]
    reqs.append(("nope", []))
    out = backend.replay_many(reqs)
    for (name, arrays), v in zip(reqs[:-1], out[:-1], strict=True):
        np.testing.assert_array_equal(v, backend.replay(name, arrays))
    assert isinstance(out[-1], InputError)


def test_saved_model_is_opened_and_frozen_once_per_process(saved):
    b1 = load_tf(saved)
    b2 = load_tf(saved)
    assert b1.graph is b2.graph and b1.session is b2.session
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    v = b1.capture(x)
    b1.close()  # the shared Session stays open for b2
    w = b2.capture(x)
    for p in v:
        np.testing.assert_array_equal(p.value, w[p.name].value)
    b2.close()
    tfgraph.clear_cache()
    b3 = load_tf(saved)
    assert b3.graph is not b1.graph
    b3.close()


def test_frozen_pb_is_opened_once_and_reopened_when_it_changes(tmp_path):
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    def write(scale):
        v = tf.Variable(np.full((3,), scale, np.float32))
        fn = tf.function(lambda a: a * v).get_concrete_function(tf.TensorSpec((None, 3), tf.float32, name="a"))
        (tmp_path / "m.pb").write_bytes(convert_variables_to_constants_v2(fn).graph.as_graph_def().SerializeToString())

    write(2.0)
    one = np.ones((1, 3), np.float32)
    b1, b2 = load_tf(str(tmp_path / "m.pb")), load_tf(str(tmp_path / "m.pb"))
    assert b1.graph is b2.graph
    assert float(list(b1.capture(one))[-1].value[0, 0]) == 2.0
    write(3.0)  # another size or time: opened afresh
    b3 = load_tf(str(tmp_path / "m.pb"))
    assert b3.graph is not b1.graph and float(list(b3.capture(one))[-1].value[0, 0]) == 3.0


def test_the_same_group_twice_in_one_call_keeps_each_its_own_inputs(backend):
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    t = backend.capture(x)
    fc = _groups(t)[-1]
    other = [RNG.standard_normal(a.shape).astype(np.float32) for a in fc[2]]
    out = backend.replay_groups([fc, (fc[0], fc[1], other), fc])
    np.testing.assert_allclose(out[0], t[fc[0]].value, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out[1], backend.replay_group(fc[0], fc[1], other))
    np.testing.assert_array_equal(out[2], out[0])


def test_a_second_backend_on_the_same_file_reuses_the_replay_copies(saved):
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    b1 = load_tf(saved)
    t = b1.capture(x)
    groups = _groups(t)
    first = b1.replay_groups(groups)
    n_ops = len(b1.graph.get_operations())
    b1.close()
    b2 = load_tf(saved)
    assert b2.graph is b1.graph
    second = b2.replay_groups(groups)
    assert len(b2.graph.get_operations()) == n_ops  # no new copies
    assert [p.name for p in b2.capture(x)] == [p.name for p in t]  # copies are never probes
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)
    b2.close()

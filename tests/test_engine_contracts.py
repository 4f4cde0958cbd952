"""Defects of issue 12 (item 9) held at the engine's level, against real Caffe and TF:

- a Caffe backend (or trace, or prototxt) given where the TF one belongs, or the reverse,
  is an InputError saying so, not an alignment attempted between two nets of one framework;
- the fallback diagnosis (every failing row passed its own error) is given its row's held
  values and the rows up to that row, as DiagnosisContext promises;
- the spool of a live stream survives short writes to its spill file.
"""

from __future__ import annotations

import numpy as np
import pytest

import layerparity as lp
from diagnose_cases import caffe_net, conv_w, f32, hwio, keras, keras_input, prototxt, rng
from layerparity import compare as engine
from layerparity import demo, sources
from layerparity.backends.caffe import CaffeBackend
from layerparity.backends.tensorflow import load_tf
from layerparity.errors import InputError
from layerparity.trace import Probe

# -- the two sides swapped -------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_backends():
    f = demo.files()
    demo.register_keras_objects()
    x = np.load(f.input)
    with CaffeBackend(f.prototxt, f.caffemodel) as cb, load_tf(f.keras) as tb:
        yield f, x, cb, tb


def test_swapped_backends_are_an_input_error_not_an_alignment(demo_backends):
    f, x, cb, tb = demo_backends
    with pytest.raises(InputError, match=r"^caffe_model: got a tensorflow backend .*did you swap the caffe and tf arguments\?$"):
        lp.compare_models(tb, cb, x)
    with pytest.raises(InputError, match=r"^caffe_model: got a tensorflow backend"):
        lp.compare_models(tb, tb, x)
    with pytest.raises(InputError, match=r"^tf_model: got a caffe backend .*did you swap"):
        lp.compare_models(cb, cb, x)
    with pytest.raises(InputError, match=r"is a Caffe prototxt; did you swap the caffe and tf arguments\?"):
        lp.compare_models(cb, f.prototxt, x)
    # assert_parity says the same, and not with an AssertionError ("the models differ")
    with pytest.raises(InputError, match="did you swap"):
        lp.assert_parity(tb, cb, x)
    # the backends still work afterwards, and the right order passes its own check
    assert lp.compare_models(cb, tb, x).first_divergence.caffe_layer == demo.BUG_LAYER


def test_swapped_recorded_traces_are_an_input_error(demo_backends, tmp_path):
    f, x, cb, tb = demo_backends
    caffe, tf = cb.capture(x), tb.capture(x)
    with pytest.raises(InputError, match=r"caffe side: .* is a tensorflow trace; did you swap the caffe and tf arguments\?"):
        lp.compare_traces(tf, caffe)
    caffe.save(tmp_path / "c.npz")
    with pytest.raises(InputError, match=r"tensorflow side: .* is a caffe trace; did you swap the caffe and tf arguments\?$"):
        lp.compare_models(tmp_path / "c.npz", tmp_path / "c.npz", x)
    assert lp.compare_traces(caffe, tf).first_divergence.caffe_layer == demo.BUG_LAYER


def test_the_sweep_refuses_swapped_or_same_framework_sides(demo_backends):
    """The sweep's workers open the models through compare_models' own opening: the same
    backend on both sides was a PASS there (one model compared with itself), and swapped
    backends a FAIL; both are the caller's mistake."""
    f, x, cb, tb = demo_backends
    xs = np.repeat(x, 2, axis=0)
    with pytest.raises(InputError, match=r"^caffe_model: got a tensorflow backend .*did you swap the caffe and tf arguments\?$"):
        lp.sweep(tb, tb, xs, workers=0, progress=False)
    with pytest.raises(InputError, match=r"^(caffe_model: got a tensorflow|tf_model: got a caffe) backend .*did you swap"):
        lp.sweep(tb, cb, xs, workers=0, progress=False)
    with pytest.raises(InputError, match=r"^tf_model: got a caffe backend .*did you swap"):
        lp.sweep(cb, cb, xs, workers=0, progress=False)
    with pytest.raises(InputError, match=r"is a Caffe prototxt; did you swap the caffe and tf arguments\?"):
        lp.sweep(f.prototxt, f.prototxt, xs, caffe_weights=f.caffemodel, workers=0, progress=False)
    # the backends still work afterwards, and the right order finds the demo's bug
    result = lp.sweep(cb, tb, xs, workers=0, progress=False)
    assert not result.passed


def test_a_caffe_backend_given_as_replay_is_an_input_error(demo_backends):
    """It measured no own error at all, silently (every row 'not replayable')."""
    f, x, cb, tb = demo_backends
    caffe, tf = cb.capture(x), tb.capture(x)
    with pytest.raises(InputError, match=r"^replay: got a caffe backend .*pass the TF backend$"):
        lp.compare_traces(caffe, tf, replay=cb)
    report = lp.compare_traces(caffe, tf, replay=tb)
    assert report.first_divergence.own is not None


# -- the fallback diagnosis ------------------------------------------------------------------


def _conv(name, bottom, n):
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}"\n'
            f"  convolution_param {{ num_output: {n} kernel_size: 3 pad: 1 }} }}\n")


def test_the_fallback_diagnosis_gets_its_rows_values_and_the_rows_up_to_it(tmp_path, monkeypatch):
    """A TF-only layer (an Add of conv1 with itself) between conv1 and conv2: conv2 and
    conv3 fail by their total error, yet each passes its own error (fed Caffe's input), so no
    row diverges and the engine names the first failing row afterwards. That diagnosis must
    see the row's Caffe/TF values and input, and only the rows up to it."""
    shape = (1, 3, 8, 8)
    params = {"conv1": list(conv_w(4, 3, 3, seed=1)), "conv2": list(conv_w(4, 4, 3, seed=2)),
              "conv3": list(conv_w(4, 4, 3, seed=3))}
    net = caffe_net(tmp_path, prototxt({"data": shape}, _conv("conv1", "data", 4) + _conv("conv2", "conv1", 4)
                                       + _conv("conv3", "conv2", 4)), params)
    inp = keras_input(shape)
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(inp)
    h = keras.layers.Add(name="tf_only_double")([h, h])  # two inputs: own error cannot replay through it
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv2")(h)
    h = keras.layers.Conv2D(4, 3, padding="same", name="conv3")(h)
    m = keras.Model(inp, h)
    for n in ("conv1", "conv2", "conv3"):
        m.get_layer(n).set_weights([hwio(params[n][0]), params[n][1]])
    x = f32(rng(5).standard_normal(shape))

    seen = []
    real_fn, ctx_cls = engine._diagnose_hook()

    def spy(row, cp, tp, cin, cw, tw, ctx):
        seen.append(dict(row=row, cp=cp, tp=tp, cin=cin, cw=cw, ctx=ctx))
        return real_fn(row, cp, tp, cin, cw, tw, ctx)

    monkeypatch.setattr(engine, "_diagnose_hook", lambda: (spy, ctx_cls))
    rep = lp.compare_models(net, m, x)
    by = {r.caffe_layer: r for r in rep.rows}
    assert by["conv1"].passed
    assert not by["conv2"].passed and by["conv2"].own is not None and by["conv2"].own.passed
    assert not by["conv3"].passed and by["conv3"].own is not None and by["conv3"].own.passed
    assert rep.first_divergence is by["conv2"]
    assert rep.meta["first_divergence_by"] == "total (own error passed everywhere)"
    assert by["conv3"].contaminated_by == "conv2"

    assert [s["row"].caffe_layer for s in seen] == ["conv2"]  # diagnosed once, after the last row
    s = seen[0]
    # its held values: Caffe's and TF's conv2 output, Caffe's conv2 input, Caffe's conv2 weights
    np.testing.assert_array_equal(s["cp"].value, net.blobs["conv2"].data)
    assert s["tp"].value is not None and s["tp"].value.shape == (1, 8, 8, 4)
    assert s["cin"] is not None and len(s["cin"]) == 1
    np.testing.assert_array_equal(s["cin"][0], net.blobs["conv1"].data)
    assert s["cw"] is not None and len(s["cw"]) == 2
    np.testing.assert_array_equal(s["cw"][0], params["conv2"][0])
    # the rows up to and including conv2, not the finished report (conv3 comes after it)
    assert [r.caffe_layer for r in s["ctx"].rows] == [r.caffe_layer for r in rep.rows[: rep.rows.index(by["conv2"]) + 1]]
    assert s["ctx"].rows[-1] is by["conv2"]
    assert by["conv2"].diagnoses  # the real diagnosis ran on those values


# -- the spool's spill file ------------------------------------------------------------------


def test_the_spool_survives_short_writes_to_its_spill_file(tmp_path, monkeypatch):
    """Every value spilled (budget 0) through a file whose unbuffered write takes at most
    5 bytes a call: each value reads back exactly (a short write unnoticed shifts every
    later offset)."""

    class Dribbling:
        def __init__(self, f):
            self.f = f

        def write(self, b):
            return self.f.write(bytes(memoryview(b).cast("B")[:5]))

        def close(self):
            self.f.close()

    real_open = open
    dribbled = []

    def fake_open(path, mode="r", *args, **kw):
        f = real_open(path, mode, *args, **kw)
        if "w" in mode:
            dribbled.append(path)
            return Dribbling(f)
        return f

    monkeypatch.setattr(sources, "open", fake_open, raising=False)
    values = {f"p{i}": f32(rng(i).standard_normal((1 + i, 3, 2))) for i in range(6)}
    values["empty"] = np.zeros((0, 4), np.float32)
    values["ints"] = np.arange(7, dtype=np.int64)
    spool = sources.Spool("caffe", "net.prototxt", lambda: str(tmp_path), 0)
    try:
        spool.fill(Probe(n, "Convolution", v) for n, v in values.items())
        assert dribbled and spool.spilled_bytes == sum(v.nbytes for v in values.values())
        for n, v in values.items():
            got = spool.value(n)
            assert got.dtype == v.dtype and got.shape == v.shape
            np.testing.assert_array_equal(got, v)
    finally:
        spool.close()

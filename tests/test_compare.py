"""compare.py: the engine on hand-built traces, plus one end-to-end run with real Caffe and real Keras."""

from __future__ import annotations

import doctest
import json
import os
import tracemalloc

import numpy as np
import pytest

import layerparity
import layerparity.compare as compare_mod
import layerparity.sources as sources_mod
from layerparity.backends.base import Backend, InputSpec
from layerparity.compare import compare_traces
from layerparity.errors import InputError, MappingError
from layerparity.layout import LayoutMismatch, relayout
from layerparity.result import Tolerance
from layerparity.trace import Probe, Trace

rng = np.random.default_rng(11)
nhwc = lambda v: np.ascontiguousarray(np.transpose(v, (0, 2, 3, 1)))  # noqa: E731


def test_doctests():
    assert doctest.testmod(compare_mod).failed == 0


def _pair(cval, tval, clayout="NCHW", tlayout="NHWC", cflat=None, tflat=None, ckind="Convolution", tkind="Conv2D"):
    c = Trace("caffe", probes=[Probe("layer", ckind, layout=clayout, flat_shape=cflat, value=cval)])
    t = Trace("tensorflow", probes=[Probe("layer", tkind, layout=tlayout, flat_shape=tflat, value=tval)])
    return compare_traces(c, t)


def test_nhwc_value_is_transposed_into_nchw():
    x = rng.normal(size=(2, 3, 5, 7)).astype(np.float32)
    r = _pair(x, nhwc(x))
    assert r and r.rows[0].metrics.max_abs_error == 0.0
    y = nhwc(x).copy()
    y[1, 4, 6, 2] += 1.0  # TF coordinates (n, h, w, c)
    row = _pair(x, y).rows[0]
    assert not row.passed and row.metrics.max_abs_index == (1, 2, 4, 6)  # reported in NCHW


def test_flatten_order_is_compared_under_the_declared_permutation():
    x = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    caffe_flat = x.reshape(2, -1)
    keras_flat = nhwc(x).reshape(2, -1)
    ok = _pair(caffe_flat, keras_flat, "flat:NCHW", "flat:NHWC", (3, 4, 5), (4, 5, 3), "Flatten", "Flatten")
    assert ok and ok.rows[0].metrics.max_abs_error == 0.0
    # a TF probe declaring flat:NHWC that actually holds Caffe's C*H*W order is a mismatch
    bad = _pair(caffe_flat, caffe_flat, "flat:NCHW", "flat:NHWC", (3, 4, 5), (4, 5, 3), "Flatten", "Flatten")
    assert not bad and bad.rows[0].metrics is not None and bad.rows[0].metrics.mismatched > 0


def test_layout_is_never_guessed():
    x = rng.normal(size=(1, 4, 4, 4)).astype(np.float32)  # C == H == W: any permutation fits the shape
    undeclared = _pair(x, nhwc(x), "NCHW", "")
    assert not undeclared and undeclared.rows[0].metrics.mismatched > 0
    y = rng.normal(size=(1, 3, 5, 6)).astype(np.float32)
    mism = _pair(y, nhwc(y), "NCHW", "")  # compared as is: (1,3,5,6) vs (1,5,6,3)
    row = mism.rows[0]
    assert not mism and row.metrics is None
    assert row.note == "shape mismatch: caffe (1, 3, 5, 6) in NCHW vs tf (1, 5, 6, 3)"
    assert mism.first_divergence is row


def test_a_match_only_under_another_permutation_is_not_a_pass():
    x = rng.normal(size=(1, 3, 6, 6)).astype(np.float32)
    h_w_swapped = np.ascontiguousarray(x.transpose(0, 3, 2, 1))  # (N, W, H, C) declared NHWC
    r = _pair(x, h_w_swapped)
    assert not r
    m = r.rows[0].metrics
    assert m.mismatched > 0.5 * m.total
    # the values are all there (sorted values agree): still a failure, left for diagnosis to name
    assert np.array_equal(np.sort(x.ravel()), np.sort(h_w_swapped.ravel()))


def test_unit_axes_only_one_side_has_are_reconciled():
    g = rng.normal(size=(2, 7, 1, 1)).astype(np.float32)  # Caffe global pooling output
    r = _pair(g, g.reshape(2, 7), "NCHW", "NC", ckind="Pooling", tkind="GlobalAveragePooling2D")
    assert r and r.rows[0].metrics.max_abs_error == 0.0
    fc = rng.normal(size=(2, 7)).astype(np.float32)  # InnerProduct ported as a 1x1 conv
    assert _pair(fc, fc.reshape(2, 1, 1, 7), "NC", "NHWC")
    bad = _pair(rng.normal(size=(2, 7, 2, 1)).astype(np.float32), g.reshape(2, 7), "NCHW", "NC")
    assert not bad and bad.rows[0].note == "shape mismatch: caffe (2, 7, 2, 1) in NCHW vs tf (2, 7) in NC (as NCHW (2, 7, 1, 1))"
    flat = _pair(g.reshape(2, 7), rng.normal(size=(2, 28)).astype(np.float32), "NC", "flat:NHWC", tflat=(2, 2, 7))
    assert not flat and flat.rows[0].note.startswith("layout mismatch: caffe (2, 7) in NC vs tf (2, 28) in flat:NHWC")


def test_relayout_refuses_to_guess():
    with pytest.raises(LayoutMismatch, match="cannot reconcile 'flat:NHWC' with 'NCHW'"):
        relayout(np.zeros((1, 12)), "flat:NHWC", (2, 2, 3), "NCHW")
    with pytest.raises(LayoutMismatch, match="flattened shapes differ"):
        relayout(np.zeros((1, 12)), "flat:NHWC", (2, 2, 3), "flat:NCHW", (3, 1, 4))
    assert issubclass(LayoutMismatch, InputError)


# -- divergence, contamination, own error ------------------------------------------------------


def _conv1x1(x, w):
    return np.einsum("nchw,oc->nohw", x, w)


class NumpyReplay(Backend):
    """A TF-side backend whose layers are NumPy functions on NHWC arrays (our interface, not a framework)."""

    framework = "tensorflow"

    def __init__(self, layers):
        super().__init__("numpy-replay")
        self.layers = layers
        self.calls: list[str] = []

    def _input_specs_impl(self):
        return [InputSpec("data", (None, 4, 6, 6), "NCHW")]

    def can_replay(self, probe_name):
        return probe_name in self.layers

    def replay(self, probe_name, inputs):
        self.calls.append(probe_name)
        return self.layers[probe_name](*inputs)


def _chain_net(broken: str | None = None, scale: float = 1.01):
    """data -> conv1 -> conv2 -> conv3, plus a side branch side1 reading conv1. TF weights of ``broken`` scaled."""
    x = rng.normal(size=(2, 4, 6, 6)).astype(np.float32)
    W = {n: rng.normal(size=(4, 4)).astype(np.float32) / 2 for n in ("conv1", "conv2", "conv3", "side1")}
    tfW = {n: (w * scale if n == broken else w) for n, w in W.items()}
    edges = {"conv1": "data", "conv2": "conv1", "conv3": "conv2", "side1": "data"}
    cvals, tvals = {"data": x}, {"data": x}
    for n, src in edges.items():
        cvals[n] = _conv1x1(cvals[src], W[n])
        tvals[n] = _conv1x1(tvals[src], tfW[n])
    caffe = Trace("caffe", probes=[Probe("data", "Input", layout="NCHW", value=x)] + [
        Probe(n, "Convolution", inputs=[src], layout="NCHW", value=cvals[n]) for n, src in edges.items()])
    tf = Trace("tensorflow", probes=[Probe("data", "InputLayer", layout="NHWC", value=nhwc(x))] + [
        Probe(n, "Conv2D", inputs=[src], layout="NHWC", value=nhwc(tvals[n])) for n, src in edges.items()])
    replay = NumpyReplay({n: (lambda a, w=tfW[n]: np.einsum("nhwc,oc->nhwo", a, w)) for n in edges})
    return caffe, tf, replay


def test_first_divergence_and_downstream_contamination():
    caffe, tf, _ = _chain_net(broken="conv2")
    r = compare_traces(caffe, tf, diagnose=False)
    names = [row.caffe_layer for row in r.rows]
    assert names == ["data", "conv1", "conv2", "conv3", "side1"]
    assert r.first_divergence.caffe_layer == "conv2"
    assert r.row("conv3").contaminated_by == "conv2"
    assert r.row("side1").passed and r.row("side1").contaminated_by is None  # not downstream of conv2
    assert r.row("conv1").passed
    assert not r and r.meta["first_divergence_by"] == "total"


def test_own_error_tells_the_broken_layer_from_the_ones_it_contaminates():
    caffe, tf, replay = _chain_net(broken="conv1")
    r = compare_traces(caffe, tf, replay=replay, diagnose=False)
    conv1, conv2, conv3 = (r.row(n) for n in ("conv1", "conv2", "conv3"))
    assert conv1.own is not None and not conv1.own.passed and not conv1.passed
    # conv2 is fed Caffe's conv1 output: its own error passes while its total error fails
    assert conv2.own is not None and conv2.own.passed and not conv2.passed
    assert conv3.own.passed and not conv3.passed
    assert r.first_divergence is conv1 and r.meta["first_divergence_by"] == "own"
    assert conv2.contaminated_by == "conv1" and conv3.contaminated_by == "conv1"
    assert set(replay.calls) == {"conv1", "conv2", "conv3", "side1"}


def test_own_error_inputs_are_the_caffe_values_in_tf_layout():
    caffe, tf, replay = _chain_net(broken=None)
    seen = {}
    real = replay.layers["conv3"]

    def spy(a):
        seen["shape"] = a.shape
        seen["value"] = a
        return real(a)

    replay.layers["conv3"] = spy
    r = compare_traces(caffe, tf, replay=replay, diagnose=False)
    assert r and r.row("conv3").own.passed
    assert seen["shape"] == (2, 6, 6, 4)
    np.testing.assert_array_equal(seen["value"], nhwc(caffe["conv2"].value))


def test_per_layer_tolerance_override():
    caffe, tf, _ = _chain_net(broken="conv3", scale=1.001)
    assert not compare_traces(caffe, tf, diagnose=False)
    r = compare_traces(caffe, tf, tolerances={"conv*3": (1e-2, 1e-3)}, diagnose=False)
    assert r and r.row("conv3").tolerance == Tolerance(1e-2, 1e-3)
    assert r.row("conv2").tolerance == Tolerance(1e-4, 3e-5)
    r = compare_traces(caffe, tf, rtol=1e-2, atol=1e-2, diagnose=False)
    assert r and r.tolerance == Tolerance(1e-2, 1e-2)
    with pytest.raises(ValueError, match="rtol and atol must be given together"):
        compare_traces(caffe, tf, atol=1e-3)


def test_on_row_streams_rows_in_caffe_order_and_report_is_json():
    caffe, tf, _ = _chain_net(broken="conv2")
    seen = []
    r = compare_traces(caffe, tf, on_row=lambda row: seen.append(row.caffe_layer), diagnose=False)
    assert seen == [row.caffe_layer for row in r.rows]
    d = json.loads(r.to_json())
    assert d["first_divergence"]["caffe_layer"] == "conv2"
    assert [x["caffe_layer"] for x in d["layers"]] == seen


def test_archives_and_bad_sides(tmp_path):
    caffe, tf, _ = _chain_net(broken=None)
    caffe.save(tmp_path / "c.npz")
    tf.save(tmp_path / "t.npz")
    r = compare_traces(str(tmp_path / "c.npz"), tmp_path / "t.npz")
    assert r and len(r.rows) == 5
    with pytest.raises(InputError, match="no such trace archive"):
        compare_traces(str(tmp_path / "missing.npz"), tf)
    with pytest.raises(InputError, match="caffe side: expected a Trace"):
        compare_traces(42, tf)
    with pytest.raises(InputError, match="tensorflow stream: expected Probe objects"):
        compare_traces(caffe, iter([1, 2]))
    f = tmp_path / "map.json"
    f.write_text('{"conv1": "nope"}')
    with pytest.raises(MappingError, match=r"map\.json: TF name 'nope'"):
        compare_traces(caffe, tf, mapping=f)


def test_unmapped_layers_are_reported():
    caffe, tf, _ = _chain_net()
    tf.add(Probe("extra", "Softmax", inputs=["conv3"], layout="NHWC", value=np.zeros((2, 6, 6, 4), np.float32)))
    caffe.add(Probe("loss", "Python", inputs=["conv3"], layout="", value=np.zeros((1,), np.float32)))
    r = compare_traces(caffe, tf)
    assert r.unmapped_tf == ["extra"] and r.unmapped_caffe == ["loss"]


def test_no_value_is_a_failing_row():
    caffe, tf, _ = _chain_net()
    t2 = Trace("tensorflow", probes=[p if p.name != "conv2" else p.without_value() for p in tf])
    r = compare_traces(caffe, t2)
    assert not r and r.row("conv2").note == "no TF value for 'conv2'" and r.row("conv2").metrics is None


# -- streaming ------------------------------------------------------------------------------------

SHAPE = (1, 8, 64, 64)  # 128 KB per value


def _stream(side: str, n_layers: int, break_at: int | None = None):
    for i in range(n_layers):
        v = np.random.default_rng(i).normal(size=SHAPE).astype(np.float32)
        if side == "caffe":
            yield Probe(f"l{i}", "ReLU" if i else "Input", inputs=[f"l{i - 1}"] if i else [], layout="NCHW", value=v)
        else:
            if i == break_at:
                v = v * 1.01
            yield Probe(f"l{i}", "ReLU" if i else "InputLayer", inputs=[f"l{i - 1}"] if i else [], layout="NHWC",
                        value=nhwc(v))


def _peak(n_layers: int):
    tracemalloc.start()
    try:
        r = compare_traces(_stream("caffe", n_layers), _stream("tf", n_layers, break_at=n_layers - 20))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return r, peak


def test_streaming_peak_memory_is_the_budget_not_the_sum(monkeypatch):
    one = int(np.prod(SHAPE)) * 4
    monkeypatch.setattr(sources_mod, "STREAM_MEMORY_BYTES", 8 * one)  # per side; the rest spills to a file
    r100, peak100 = _peak(60)
    r300, peak300 = _peak(180)  # 2 x 180 x 128 KB = 45 MB of layers
    for r, n in ((r100, 60), (r300, 180)):
        assert len(r.rows) == n and r.first_divergence.caffe_layer == f"l{n - 20}"
        # the rows in flight (each a Caffe and a TF value) and the input of the first
        window = 2 * compare_mod._WINDOW + 1
        assert r.meta["streaming"]["max_held_values"] <= window
        assert r.meta["streaming"]["max_held_bytes"] <= window * one
        for side in ("caffe", "tensorflow"):
            assert r.meta["streaming"][f"{side}_spooled_in_memory_bytes"] == 8 * one
            assert r.meta["streaming"][f"{side}_spilled_bytes"] == (n - 8) * one
    # 120 more layers add only their metadata and rows (a few KB each), not their values
    # (holding them would add 2 x 128 KB per layer) ...
    per_layer = (peak300 - peak100) / 120
    assert per_layer < one / 8, f"{peak100 / 2**20:.2f} MB -> {peak300 / 2**20:.2f} MB ({per_layer / 1024:.1f} KB/layer)"
    # ... and stays a small constant: the two budgets, the rows in flight, the metric blocks
    assert peak300 < 48 * one, f"peak {peak300 / 2**20:.1f} MB"


@pytest.mark.parametrize("budget_values", [0, 5, 1000])
def test_spilled_and_held_streams_give_the_same_report(monkeypatch, budget_values):
    one = int(np.prod(SHAPE)) * 4
    reference = compare_traces(Trace("caffe", probes=_stream("caffe", 30)),
                               Trace("tensorflow", probes=_stream("tf", 30, break_at=12)))
    monkeypatch.setattr(sources_mod, "STREAM_MEMORY_BYTES", budget_values * one)
    r = compare_traces(_stream("caffe", 30), _stream("tf", 30, break_at=12))
    assert r.to_dict()["layers"] == reference.to_dict()["layers"]
    assert r.first_divergence.caffe_layer == "l12"
    spilled = r.meta["streaming"]["caffe_spilled_bytes"]
    assert spilled == max(0, 30 - budget_values) * one


@pytest.mark.parametrize("threads,window", [(0, 1), (1, 3), (2, 8)])
def test_rows_in_threads_or_inline_give_the_same_report(monkeypatch, threads, window):
    caffe, tf, replay = _chain_net(broken="conv2")
    reference = compare_traces(caffe, tf, replay=replay).to_dict()
    monkeypatch.setattr(compare_mod, "_THREADS", threads)
    monkeypatch.setattr(compare_mod, "_WINDOW", window)
    seen = []
    r = compare_traces(caffe, tf, replay=replay, on_row=lambda row: seen.append(row.caffe_layer))
    assert r.to_dict() == reference and r.first_divergence.caffe_layer == "conv2"
    assert seen == [row.caffe_layer for row in r.rows]  # on_row still in Caffe order
    r = compare_traces(_stream("caffe", 12), _stream("tf", 12, break_at=4))
    assert r.first_divergence.caffe_layer == "l4" and [row.caffe_layer for row in r.rows] == [f"l{i}" for i in range(12)]


def test_stream_memory_from_the_environment(monkeypatch):
    monkeypatch.setenv("LAYERPARITY_STREAM_MEMORY_MB", "0.25")  # two 128 KB values
    r = compare_traces(_stream("caffe", 5), _stream("tf", 5))
    assert r.meta["streaming"]["caffe_spooled_in_memory_bytes"] == 2 * int(np.prod(SHAPE)) * 4
    monkeypatch.setenv("LAYERPARITY_STREAM_MEMORY_MB", "lots")
    with pytest.raises(InputError, match="LAYERPARITY_STREAM_MEMORY_MB='lots': expected a number of MiB"):
        compare_traces(_stream("caffe", 5), _stream("tf", 5))


def test_stream_failures_reach_the_caller_caffe_first():
    def broken(side: str, at: int):
        for i, p in enumerate(_stream(side, 10)):
            if i == at:
                raise InputError(f"{side} broke at l{i}")
            yield p

    with pytest.raises(InputError, match="caffe broke at l3"):  # raised in the draining thread
        compare_traces(broken("caffe", 3), _stream("tf", 10))
    with pytest.raises(InputError, match="tf broke at l5"):
        compare_traces(_stream("caffe", 10), broken("tf", 5))
    with pytest.raises(InputError, match="caffe broke at l7"):
        compare_traces(broken("caffe", 7), broken("tf", 2))
    dup = [Probe("a", value=np.zeros(3, np.float32)), Probe("a", value=np.zeros(3, np.float32))]
    with pytest.raises(InputError, match="probe name 'a' appears twice"):
        compare_traces(iter(dup), iter(dup))


def test_streaming_holds_tf_probes_until_their_caffe_partner_arrives(tmp_path):
    caffe, tf, _ = _chain_net(broken=None)
    order = ["data", "side1", "conv1", "conv2", "conv3"]  # TF runs the side branch first
    t2 = Trace("tensorflow", probes=[tf[n] for n in order])
    r = compare_traces(caffe, iter(list(t2)))
    assert r and [row.caffe_layer for row in r.rows] == ["data", "conv1", "conv2", "conv3", "side1"]
    assert r.meta["streaming"]["max_held_values"] >= 2  # side1 was held until its row


# -- diagnosis hook -------------------------------------------------------------------------------


def test_diagnosis_hook_runs_on_the_first_divergence_when_available():
    caffe, tf, replay = _chain_net(broken="conv1")
    hook = compare_mod._diagnose_hook()
    r = compare_traces(caffe, tf, replay=replay)
    if hook is None:  # diagnose.py not written yet: the engine works without it
        assert r.first_divergence.diagnoses == []
    else:
        assert r.first_divergence.diagnoses, "diagnose() returned nothing for a broken layer"
        assert r.row("conv2").diagnoses == []  # own error passes: not diagnosed
    assert compare_traces(caffe, tf, replay=replay, diagnose=False).first_divergence.diagnoses == []


# -- end to end: real Caffe, real Keras --------------------------------------------------------

TINY = """
name: "tiny"
input: "data"
input_shape { dim: 2 dim: 3 dim: 12 dim: 12 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2" convolution_param { num_output: 8 kernel_size: 3 pad: 1 bias_term: false } }
layer { name: "bn2" type: "BatchNorm" bottom: "conv2" top: "conv2" batch_norm_param { use_global_stats: true } }
layer { name: "scale2" type: "Scale" bottom: "conv2" top: "conv2" scale_param { bias_term: true } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "conv3" type: "Convolution" bottom: "conv2" top: "conv3" convolution_param { num_output: 16 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "fc" type: "InnerProduct" bottom: "conv3" top: "fc" inner_product_param { num_output: 10 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""


_MAKE_TINY = r"""
import sys
import numpy as np
import caffe
proto, weights, params = sys.argv[1:4]
net = caffe.Net(proto, caffe.TEST)
g = np.random.default_rng(0)
for blobs in net.params.values():
    for b in blobs:
        b.data[...] = g.normal(0, 0.3, b.data.shape)
# variances where a BatchNorm epsilon 1e-3 vs 1e-5 bug is smallest: ratio 1.0003 .. 1.003
net.params["bn2"][0].data[...] = g.normal(0, 0.5, 8)
net.params["bn2"][1].data[...] = g.uniform(0.166, 1.65, 8)
net.params["bn2"][2].data[...] = 1.0
net.save(weights)
np.savez(params, **{f"{k}__{i}": b.data for k, v in net.params.items() for i, b in enumerate(v)})
"""


@pytest.fixture(scope="module")
def tiny_caffe(tmp_path_factory):
    """The prototxt, a caffemodel written by real pycaffe, and the params as arrays.

    pycaffe runs in a subprocess: creating a caffe.Net in a process that imported
    TensorFlow first can crash it (protobuf), and this file imports TF before Caffe.
    """
    import subprocess
    import sys

    d = tmp_path_factory.mktemp("tiny")
    proto, weights, pfile = d / "tiny.prototxt", d / "tiny.caffemodel", d / "params.npz"
    proto.write_text(TINY)
    env = {**os.environ, "GLOG_minloglevel": "2"}
    out = subprocess.run([sys.executable, "-c", _MAKE_TINY, str(proto), str(weights), str(pfile)],
                         capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    params: dict[str, list[np.ndarray]] = {}
    with np.load(pfile) as z:
        for k in sorted(z.files, key=lambda k: (k.split("__")[0], int(k.split("__")[1]))):
            params.setdefault(k.split("__")[0], []).append(z[k])
    x = np.random.default_rng(1).normal(size=(2, 3, 12, 12)).astype(np.float32)
    return str(proto), str(weights), params, x


def _keras_port(P, bn_eps=1e-5, naive_fc=False):
    """A by-hand Keras port of TINY with the weights copied from Caffe."""
    import keras

    from layerparity.layout import conv_weight_caffe_to_tf, inner_product_weight_caffe_to_tf

    x = inp = keras.Input((12, 12, 3), name="data")
    c1 = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")
    x = c1(x)
    x = keras.layers.MaxPooling2D(2, 2, name="pool1")(x)
    c2 = keras.layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv2")
    x = c2(x)
    bn = keras.layers.BatchNormalization(epsilon=bn_eps, name="bn2")
    x = bn(x)
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.ZeroPadding2D(1, name="pad3")(x)  # Caffe's symmetric pad for a stride-2 conv
    c3 = keras.layers.Conv2D(16, 3, strides=2, padding="valid", name="conv3")
    x = c3(x)
    x = keras.layers.Flatten(name="flatten")(x)
    fc = keras.layers.Dense(10, name="fc")
    x = fc(x)
    x = keras.layers.Softmax(name="prob")(x)
    model = keras.Model(inp, x)
    c1.set_weights([conv_weight_caffe_to_tf(P["conv1"][0]), P["conv1"][1]])
    c2.set_weights([conv_weight_caffe_to_tf(P["conv2"][0])])
    s = P["bn2"][2][0]
    bn.set_weights([P["scale2"][0], P["scale2"][1], P["bn2"][0] / s, P["bn2"][1] / s])
    c3.set_weights([conv_weight_caffe_to_tf(P["conv3"][0]), P["conv3"][1]])
    W = P["fc"][0]
    fc.set_weights([W.T if naive_fc else inner_product_weight_caffe_to_tf(W, (16, 3, 3)), P["fc"][1]])
    return model


def test_end_to_end_correct_port_passes_with_default_tolerances(tiny_caffe):
    proto, weights, P, x = tiny_caffe
    r = layerparity.compare_models(proto, _keras_port(P), x, caffe_weights=weights)
    assert r, r.to_json()
    assert r.first_divergence is None
    assert [row.caffe_chain for row in r.rows] == [
        ["data"], ["conv1", "relu1"], ["pool1"], ["conv2"], ["bn2", "scale2"], ["relu2"], ["conv3"], ["fc"], ["prob"]]
    assert r.unmapped_caffe == [] and r.unmapped_tf == ["pad3", "flatten"]
    # own error measured for every layer, through the TF-only ZeroPadding2D and Flatten too
    assert all(row.own is not None and row.own.passed for row in r.rows[1:])
    # the measured float32 noise of a correct port sits far below the default tolerance
    assert max(row.metrics.min_atol for row in r.rows) < 3e-5 / 3


def test_end_to_end_batchnorm_epsilon_bug_is_the_first_divergence(tiny_caffe):
    proto, weights, P, x = tiny_caffe
    r = layerparity.compare_models(proto, _keras_port(P, bn_eps=1e-3), x, caffe_weights=weights)
    assert not r
    first = r.first_divergence
    assert first.caffe_chain == ["bn2", "scale2"] and first.tf_layer == "bn2"
    assert not first.own.passed and r.meta["first_divergence_by"] == "own"
    assert all(row.passed for row in r.rows[:4])
    # downstream: total error fails, own error passes -> inherited, not a second bug
    conv3 = r.row("conv3")
    assert not conv3.passed and conv3.own.passed and conv3.contaminated_by == first.caffe_layer
    assert r.row("relu2").contaminated_by == first.caffe_layer
    if compare_mod._diagnose_hook() is not None:
        assert first.diagnoses and first.diagnoses[0].kind == "batchnorm_epsilon"


def test_end_to_end_flatten_order_bug_diverges_at_the_fc_layer(tiny_caffe, tmp_path):
    from layerparity.backends.caffe import capture_caffe
    from layerparity.backends.tensorflow import capture_tf

    proto, weights, P, x = tiny_caffe
    capture_caffe(proto, weights, inputs=x).save(tmp_path / "caffe.npz")
    capture_tf(_keras_port(P, naive_fc=True), x).save(tmp_path / "tf.npz")
    r = compare_traces(tmp_path / "caffe.npz", tmp_path / "tf.npz")
    assert not r
    assert r.first_divergence.caffe_layer == "fc"
    assert all(row.passed for row in r.rows if row.caffe_layer not in ("fc", "prob"))
    assert r.row("fc").metrics.mismatched_fraction > 0.5
    # the Caffe side from an archive, the TF side live
    r2 = layerparity.compare_models(tmp_path / "caffe.npz", _keras_port(P), x)
    assert r2 and r2.caffe_source == proto


INCEPTION = """
name: "inc"
input: "data"
input_shape { dim: 1 dim: 3 dim: 10 dim: 10 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "inc/1x1" type: "Convolution" bottom: "conv1" top: "inc/1x1" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "inc/relu_1x1" type: "ReLU" bottom: "inc/1x1" top: "inc/1x1" }
layer { name: "inc/3x3_reduce" type: "Convolution" bottom: "conv1" top: "inc/3x3_reduce" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "inc/relu_3x3_reduce" type: "ReLU" bottom: "inc/3x3_reduce" top: "inc/3x3_reduce" }
layer { name: "inc/3x3" type: "Convolution" bottom: "inc/3x3_reduce" top: "inc/3x3" convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "inc/relu_3x3" type: "ReLU" bottom: "inc/3x3" top: "inc/3x3" }
layer { name: "inc/pool" type: "Pooling" bottom: "conv1" top: "inc/pool" pooling_param { pool: MAX kernel_size: 3 stride: 1 pad: 1 } }
layer { name: "inc/pool_proj" type: "Convolution" bottom: "inc/pool" top: "inc/pool_proj" convolution_param { num_output: 4 kernel_size: 1 } }
layer { name: "inc/relu_pool_proj" type: "ReLU" bottom: "inc/pool_proj" top: "inc/pool_proj" }
layer { name: "inc/output" type: "Concat" bottom: "inc/1x1" bottom: "inc/3x3" bottom: "inc/pool_proj" top: "inc/output" }
"""


def test_end_to_end_converter_style_graph_without_names_aligns_structurally(tmp_path):
    """Real Caffe vs a real frozen TF graph of raw tf.nn ops (every name lost), branches in another order."""
    import subprocess
    import sys

    import tensorflow as tf

    proto, weights, pfile = tmp_path / "inc.prototxt", tmp_path / "inc.caffemodel", tmp_path / "p.npz"
    proto.write_text(INCEPTION)
    script = _MAKE_TINY.split("# variances")[0] + (
        "net.save(weights)\n"
        "np.savez(params, **{f'{k}__{i}': b.data for k, v in net.params.items() for i, b in enumerate(v)})\n")
    out = subprocess.run([sys.executable, "-c", script, str(proto), str(weights), str(pfile)],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "GLOG_minloglevel": "2"})
    assert out.returncode == 0, out.stderr[-2000:]
    with np.load(pfile) as z:
        P = {k.replace("__0", ""): z[k] for k in z.files if k.endswith("__0")}
        B = {k.replace("__1", ""): z[k] for k in z.files if k.endswith("__1")}

    def conv(v, name, pad):
        w = tf.constant(P[name].transpose(2, 3, 1, 0))
        if pad:
            v = tf.pad(v, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
        return tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(v, w, 1, "VALID"), B[name]))

    @tf.function(input_signature=[tf.TensorSpec((1, 10, 10, 3), tf.float32, name="data")])
    def port(x):
        c1 = conv(x, "conv1", 1)
        b3 = conv(tf.nn.max_pool2d(c1, 3, 1, "SAME"), "inc/pool_proj", 0)  # branch order reversed
        b2 = conv(conv(c1, "inc/3x3_reduce", 0), "inc/3x3", 1)
        b1 = conv(c1, "inc/1x1", 0)
        return tf.concat([b1, b2, b3], axis=3)

    graph_def = port.get_concrete_function().graph.as_graph_def()
    x = np.random.default_rng(2).normal(size=(1, 3, 10, 10)).astype(np.float32)
    r = layerparity.compare_models(str(proto), graph_def, x, caffe_weights=str(weights))
    assert r, [(row.caffe_chain, row.tf_layer, row.note) for row in r.rows]
    assert r.unmapped_caffe == []
    by = {row.caffe_layer: row for row in r.rows}
    assert by["inc/output"].tf_kind == "ConcatV2"
    assert by["inc/pool"].tf_kind == "MaxPool"
    assert all(row.tf_kind == "Relu" for name, row in by.items() if "relu" in name)
    assert r.meta["alignment"].get("structural", 0) >= 12
    # the 1x1 and 3x3_reduce convs read the same tensor and have the same shape: told apart by value
    assert by["inc/relu_1x1"].tf_layer != by["inc/relu_3x3_reduce"].tf_layer
    assert by["inc/relu_1x1"].metrics.max_abs_error < 1e-4
    # own error is measured for multi-op groups too (Pad -> Conv2D -> BiasAdd), by feeding the group's input
    grouped = [row for row in r.rows if row.caffe_kind == "Convolution"]
    assert grouped and all(row.own is not None and row.own.passed for row in grouped), [
        (row.caffe_layer, row.tf_layer, row.note) for row in grouped]


def test_end_to_end_savedmodel_port_measures_own_error_of_op_groups(tiny_caffe, tmp_path):
    """A SavedModel export: each Keras layer becomes a group of graph ops; own error still measured."""
    proto, weights, P, x = tiny_caffe
    model = _keras_port(P)
    model.export(str(tmp_path / "sm"), verbose=False)
    r = layerparity.compare_models(proto, str(tmp_path / "sm"), x[:1], caffe_weights=weights)
    assert r, [(row.caffe_chain, row.tf_layer, row.note) for row in r.rows]
    conv1 = r.row("conv1")
    assert conv1.own is not None and conv1.own.passed, conv1.note
    # a wrong BN epsilon in the exported graph is caught by its own error, at bn2
    bad = _keras_port(P, bn_eps=1e-3)
    bad.export(str(tmp_path / "bad"), verbose=False)
    rb = layerparity.compare_models(proto, str(tmp_path / "bad"), x[:1], caffe_weights=weights)
    assert not rb and rb.first_divergence.caffe_layer in ("bn2", "scale2")
    assert rb.first_divergence.own is not None and not rb.first_divergence.own.passed


def test_end_to_end_keras_port_with_auto_names_aligns_structurally(tiny_caffe):
    import keras

    proto, weights, P, x = tiny_caffe
    named = _keras_port(P)
    cfg = json.dumps(named.get_config())
    for i, layer in enumerate(named.layers):  # every Caffe name gone: layer_0, layer_1, ...
        cfg = cfg.replace(f'"{layer.name}"', f'"layer_{i}"')
    anon = keras.Model.from_config(json.loads(cfg))
    anon.set_weights(named.get_weights())
    r = layerparity.compare_models(proto, anon, x, caffe_weights=weights)
    assert r and r.meta["alignment"] == {"structural": 9}
    assert [(row.caffe_chain, row.tf_layer) for row in r.rows][1:5] == [
        (["conv1", "relu1"], "layer_1"), (["pool1"], "layer_2"), (["conv2"], "layer_3"), (["bn2", "scale2"], "layer_4")]
    assert r.unmapped_tf == ["layer_6", "layer_8"]  # the ZeroPadding2D and the Flatten


def test_a_short_write_to_the_spill_file_is_retried_not_lost():
    from layerparity.sources import write_all

    class Dribble:  # an unbuffered file that takes at most 3 bytes a call, like a signal-interrupted write
        def __init__(self):
            self.data = bytearray()

        def write(self, b):
            chunk = bytes(memoryview(b)[:3])
            self.data += chunk
            return len(chunk)

    f = Dribble()
    payload = np.arange(10, dtype=np.float32)
    write_all(f, payload.view(np.uint8).data, "spill.raw")
    assert np.array_equal(np.frombuffer(bytes(f.data), np.float32), payload)

    class Full:
        def write(self, b):
            return 0

    with pytest.raises(OSError, match="spill.raw: could not write the spilled values"):
        write_all(Full(), payload.view(np.uint8).data, "spill.raw")

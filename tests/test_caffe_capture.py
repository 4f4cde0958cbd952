"""The Caffe capture backend against real pycaffe (never mocked).

Nets live in tests/data/caffe; caffemodels are written at run time by an
in-process caffe.Net (random fillers) so every weight file is real.
"""

from __future__ import annotations

import gc
import os
import sys
import time
import weakref
from pathlib import Path

import numpy as np
import pytest

from layerparity.backends.caffe import CaffeBackend, capture_caffe
from layerparity.errors import CaffeError, FrameworkMissingError, InputDataError, InputError
from layerparity.layout import convert
from layerparity.trace import Trace

DATA = Path(__file__).parent / "data" / "caffe"
MODELS = Path(os.path.expanduser("~/.cache/layerparity"))


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
def models(tmp_path_factory, caffe_mod):
    """Real caffemodels of the test nets, plus broken variants."""
    d = tmp_path_factory.mktemp("caffemodels")
    caffe = caffe_mod
    out = {}
    for name in ("small", "other_net", "small_nobias", "bn_chain", "small_head"):
        net = caffe.Net(proto(name), caffe.TEST)
        path = d / f"{name}.caffemodel"
        net.save(str(path))
        out[name] = str(path)
    data = Path(out["small"]).read_bytes()
    (d / "truncated.caffemodel").write_bytes(data[: len(data) * 2 // 3])
    (d / "empty.caffemodel").write_bytes(b"")
    (d / "random.caffemodel").write_bytes(np.random.default_rng(1).bytes(20000))
    for k in ("truncated", "empty", "random"):
        out[k] = str(d / f"{k}.caffemodel")
    return out


@pytest.fixture(scope="module")
def small(models):
    with CaffeBackend(proto("small"), models["small"]) as b:
        yield b


# -- in-place layers ------------------------------------------------------------------


def test_inplace_relu_gives_a_probe_per_layer_with_the_value_before_and_after(small):
    x = rand((2, 3, 12, 12))
    t = small.capture(x)
    conv, relu = t["conv1"], t["relu1"]
    assert conv.blob == relu.blob == "conv1"
    assert (conv.layer, relu.layer) == ("conv1", "relu1")
    assert relu.inputs == ["conv1"] and t["pool1"].inputs == ["relu1"]
    neg = conv.value < 0
    assert neg.any() and (~neg).any()
    differs = conv.value != relu.value
    np.testing.assert_array_equal(differs, neg)  # differ exactly where conv1 < 0
    np.testing.assert_array_equal(relu.value, np.maximum(conv.value, 0))


def test_probe_order_kinds_layouts_and_params(small):
    t = small.capture(rand((2, 3, 12, 12)))
    assert t.names == ["data", "conv1", "relu1", "pool1", "norm1", "fc", "prob"]
    assert [p.kind for p in t] == ["Input", "Convolution", "ReLU", "Pooling", "LRN", "InnerProduct", "Softmax"]
    assert [p.layout for p in t] == ["NCHW"] * 5 + ["NC", "NC"]
    assert t["conv1"].params == {
        "num_output": 8, "bias_term": True, "group": 1, "axis": 1, "kernel_size": [3, 3],
        "stride": [1, 1], "pad": [1, 1], "dilation": [1, 1], "width_group": 1, "height_group": 1,
    }
    assert t["pool1"].params == {
        "pool": "MAX", "global_pooling": False, "kernel_size": [3, 3], "stride": [2, 2],
        "pad": [0, 0], "ceil_mode": True, "round_mode": "CEIL",
    }
    assert t["norm1"].params == {"local_size": 5, "alpha": 0.0001, "beta": 0.75,
                                 "norm_region": "ACROSS_CHANNELS", "k": 1.0}
    assert t["fc"].params == {"num_output": 10, "bias_term": True, "axis": 1, "transpose": False}
    assert t["prob"].params["axis"] == 1
    assert t["pool1"].shape == (2, 8, 6, 6)  # Caffe's ceil rounding: (12 - 3) / 2 -> 5.5 -> 6
    np.testing.assert_allclose(t["prob"].value.sum(axis=1), 1.0, rtol=1e-5)


def test_four_layer_inplace_chain_matches_numpy(models):
    with CaffeBackend(proto("bn_chain"), models["bn_chain"]) as b:
        t = b.capture(rand((1, 3, 6, 6), seed=3))
        w = b.weights()
    names = ["conv", "bn", "scale", "relu", "drop"]
    assert [t[n].blob for n in names] == ["conv"] * 5
    assert [t[n].inputs for n in names[1:]] == [["conv"], ["bn"], ["scale"], ["relu"]]
    mean, var, s = w["bn"]
    f = 0.0 if s[0] == 0 else 1.0 / s[0]
    m, v = (mean * f)[None, :, None, None], (var * f)[None, :, None, None]
    bn = (t["conv"].value - m) / np.sqrt(v + 0.001)
    np.testing.assert_allclose(t["bn"].value, bn, rtol=1e-5, atol=1e-5)
    gamma, beta = w["scale"]
    sc = t["bn"].value * gamma[None, :, None, None] + beta[None, :, None, None]
    np.testing.assert_allclose(t["scale"].value, sc, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t["relu"].value, np.where(sc > 0, sc, 0.1 * sc), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(t["drop"].value, t["relu"].value)  # identity at TEST
    assert t["bn"].params["use_global_stats"] is True and t["bn"].params["eps"] == 0.001
    assert t["relu"].params == {"negative_slope": 0.1}
    p = t["conv"].params
    assert (p["kernel_size"], p["stride"], p["pad"]) == ([3, 1], [1, 2], [1, 0])
    assert t["pool"].params["kernel_size"] == [6, 3] and t["pool"].params["global_pooling"] is True
    assert (t["flat"].layout, t["flat"].flat_shape) == ("flat:NCHW", (4, 6, 3))
    assert t["flat"].inputs == ["drop"] and t["pool"].inputs == ["drop"]


def test_train_phase_uses_batch_statistics_and_dropout():
    with CaffeBackend(proto("bn_chain"), phase="TRAIN") as b:
        t = b.capture(rand((1, 3, 6, 6), seed=3))
        assert b.meta()["phase"] == "TRAIN"
    assert t["bn"].params["use_global_stats"] is False
    per_channel_mean = t["bn"].value.mean(axis=(0, 2, 3))
    np.testing.assert_allclose(per_channel_mean, 0, atol=1e-4)  # normalized by its own batch
    dropped = (t["drop"].value == 0) & (t["relu"].value != 0)
    assert dropped.any()


# -- multi-top, branches, inputs -----------------------------------------------------------


def test_multitop_slice_names_and_values():
    x = rand((1, 6, 4, 4), seed=2)
    with CaffeBackend(proto("multitop")) as b:
        t = b.capture(x)
    assert t.names == ["data", "slice/a", "slice/b", "slice/c", "diff", "cat"]
    assert [t[n].blob for n in ("slice/a", "slice/b", "slice/c")] == ["a", "b", "c"]
    assert {t[n].layer for n in ("slice/a", "slice/b", "slice/c")} == {"slice"}
    np.testing.assert_array_equal(t["slice/b"].value, x[:, 1:3])
    assert t["diff"].inputs == ["slice/a", "slice/a"]
    assert t["diff"].params == {"operation": "SUM", "coeff": [1.0, -1.0]}
    np.testing.assert_array_equal(t["diff"].value, np.zeros((1, 1, 4, 4), np.float32))
    assert t["cat"].inputs == ["slice/b", "slice/c", "diff"]
    np.testing.assert_array_equal(t["cat"].value, np.concatenate([x[:, 1:3], x[:, 3:], t["diff"].value], axis=1))


def test_branches_and_concat_edges_hide_caffes_inserted_split():
    with CaffeBackend(proto("branches")) as b:
        t = b.capture(rand((1, 3, 9, 9)))
        layers = b.layers
    assert any(layer["type"] == "Split" for layer in layers)  # Caffe did insert one...
    assert all(p.kind != "Split" for p in t)  # ...and it is not a probe
    assert t.names == ["data", "stem", "stem_relu", "b1", "b2", "b3", "join"]
    assert [t[n].inputs for n in ("b1", "b2", "b3")] == [["stem_relu"]] * 3
    assert t["join"].inputs == ["b1", "b2", "b3"]
    assert t.consumers("stem_relu") == ["b1", "b2", "b3"]
    np.testing.assert_array_equal(t["join"].value, np.concatenate([t[n].value for n in ("b1", "b2", "b3")], axis=1))


def test_legacy_input_dim_field():
    with CaffeBackend(proto("legacy_dim")) as b:
        (spec,) = b.input_specs()
        assert (spec.name, spec.shape, spec.layout) == ("data", (1, 3, None, None), "NCHW")  # fully conv
        assert b.input_shapes() == {"data": (1, 3, 5, 5)}
        x = rand((1, 3, 5, 5))
        t = b.capture(x)
    assert t.names == ["data", "conv"]
    assert (t["data"].kind, t["data"].layer, t["data"].inputs) == ("Input", "input", [])
    np.testing.assert_array_equal(t["data"].value, x)
    assert t["conv"].inputs == ["data"] and t["conv"].shape == (1, 2, 3, 3)


def test_legacy_input_shape_fields_with_two_inputs():
    img, mask = rand((1, 2, 4, 4), 1), (rand((1, 2, 4, 4), 2) > 0).astype(np.float32)
    with CaffeBackend(proto("legacy_shape")) as b:
        assert [s.name for s in b.input_specs()] == ["image", "mask"]
        t = b.capture({"image": img, "mask": mask})
    assert t.names == ["image", "mask", "masked"]
    assert t["masked"].inputs == ["image", "mask"]
    np.testing.assert_array_equal(t["masked"].value, img * mask)
    assert set(t.inputs) == {"image", "mask"}


def test_v1_layers_format_is_upgraded_like_caffe_does():
    x = rand((1, 3, 7, 7))
    with CaffeBackend(proto("v1_format")) as b:
        t = b.capture(x)
    assert [(p.name, p.kind) for p in t] == [
        ("data", "Input"), ("conv1", "Convolution"), ("relu1", "ReLU"), ("pool1", "Pooling"), ("fc", "InnerProduct")]
    assert t["conv1"].params["stride"] == [2, 2] and t["pool1"].params["pool"] == "AVE"
    assert t["relu1"].blob == "conv1" and t["pool1"].inputs == ["relu1"]
    np.testing.assert_array_equal(t["data"].value, x)


def test_permute_and_flatten_layouts_follow_the_data():
    x = rand((2, 3, 4, 5))
    with CaffeBackend(proto("permute")) as b:
        t = b.capture(x)
    assert (t["perm"].layout, t["perm"].params["order"]) == ("NHWC", [0, 2, 3, 1])
    np.testing.assert_array_equal(t["perm"].value, x.transpose(0, 2, 3, 1))
    assert (t["perm_flat"].layout, t["perm_flat"].flat_shape) == ("flat:NHWC", (4, 5, 3))
    assert (t["flat"].layout, t["flat"].flat_shape) == ("flat:NCHW", (3, 4, 5))
    assert (t["scaled"].layout, t["scaled"].flat_shape) == ("flat:NCHW", (3, 4, 5))
    # the declared layouts are exactly what layout.convert needs to line the two up
    np.testing.assert_array_equal(convert(t["perm_flat"].value, "flat:NHWC", "flat:NCHW", (4, 5, 3)), t["flat"].value)
    np.testing.assert_allclose(t["scaled"].value, 2 * t["flat"].value + 1, rtol=1e-6)


def test_batch_override_and_reshape_to_the_given_batch(models):
    x5 = rand((5, 3, 12, 12), seed=7)
    with CaffeBackend(proto("small"), models["small"], batch=5) as b:
        assert b.input_specs()[0].shape == (5, 3, 12, 12)
        t5 = b.capture(x5)
        assert t5["conv1"].shape == (5, 8, 12, 12) and t5.meta["batch"] == 5
        t3 = b.capture(x5[:3])  # a different batch: the net is reshaped to it
        assert t3["fc"].shape == (3, 10) and t3.meta["batch"] == 3
        assert b.input_specs()[0].shape == (3, 3, 12, 12)
    np.testing.assert_allclose(t3["prob"].value, t5["prob"].value[:3], rtol=1e-5, atol=1e-7)


def test_layer_that_cannot_take_a_new_batch_is_named():
    with CaffeBackend(proto("reshape_fixed")) as b:
        assert b.capture(np.ones((2, 3, 1, 1), np.float32)).names == ["data", "relu", "fixed", "out"]
        with pytest.raises(CaffeError, match=r"reshape_fixed\.prototxt:5: layer 'fixed' \(Reshape\): Caffe aborted "
                                             r"while running it: .*output count must match input count.*SIGABRT"):
            b.capture(np.ones((3, 3, 1, 1), np.float32))
    with pytest.raises(CaffeError, match=r"reshape_fixed\.prototxt:5: layer 'fixed' \(Reshape\): Caffe could not "
                                         r"reshape it for batch 3"):
        CaffeBackend(proto("reshape_fixed"), batch=3)


def test_input_validation_names_the_input(small):
    with pytest.raises(InputDataError, match=r"small\.prototxt: input 'data' has shape \(2, 4, 12, 12\)"):
        small.capture(rand((2, 4, 12, 12)))
    with pytest.raises(InputDataError, match="unknown input 'image'"):
        small.capture({"image": rand((2, 3, 12, 12))})


# -- streaming and memory ---------------------------------------------------------------


def test_streaming_yields_probes_lazily_one_at_a_time(small):
    chan = small._engine.proc.chan
    x = rand((2, 3, 12, 12))
    before = chan.received
    stream = small.iter_capture(x)
    assert chan.received == before  # nothing requested yet
    first = next(stream)
    assert first.name == "data" and chan.received == before + 1
    ref = weakref.ref(first.value)
    del first
    second = next(stream)
    gc.collect()
    assert second.name == "conv1" and chan.received == before + 2
    assert ref() is None  # the backend keeps no copy of what it yielded
    rest = [p.name for p in stream]
    assert rest == ["relu1", "pool1", "norm1", "fc", "prob"]


def test_an_abandoned_stream_is_drained_and_cannot_be_resumed(small):
    x = rand((2, 3, 12, 12))
    stream = small.iter_capture(x)
    next(stream)
    t = small.capture(x)  # another request while the stream is half read
    assert len(t) == 7
    with pytest.raises(InputError, match="abandoned"):
        next(stream)
    assert small.capture(x).names == t.names  # the worker is still in sync


# -- weights, from_net, archives -----------------------------------------------------------


def test_weights_match_net_params(models, caffe_mod):
    net = caffe_mod.Net(proto("small"), models["small"], caffe_mod.TEST)
    with CaffeBackend(proto("small"), models["small"]) as b:
        w = b.weights()
        x = rand((2, 3, 12, 12), seed=5)
        t = b.capture(x)
    assert list(w) == list(net.params) == ["conv1", "fc"]
    with CaffeBackend(proto("small"), models["small"]) as b:
        stream = b.iter_weights()
        name, first = next(stream)  # one layer at a time, in execution order
        assert name == "conv1" and len(first) == 2
        assert [n for n, _ in stream] == ["fc"]
    for name, blobs in net.params.items():
        assert [a.shape for a in w[name]] == [bb.data.shape for bb in blobs]
        for a, bb in zip(w[name], blobs, strict=True):
            np.testing.assert_array_equal(a, bb.data)
    net.blobs["data"].data[...] = x
    out = net.forward()
    np.testing.assert_array_equal(t["prob"].value, out["prob"])  # the worker ran the same net


def test_from_net_runs_in_process_and_matches_the_worker(models, caffe_mod):
    net = caffe_mod.Net(proto("small"), models["small"], caffe_mod.TEST)
    x = rand((2, 3, 12, 12), seed=9)
    live = CaffeBackend.from_net(net, source="small (live)")
    t_live = live.capture(x)
    assert t_live.meta["isolated"] is False and t_live.source == "small (live)"
    with CaffeBackend(proto("small"), models["small"]) as b:
        t = b.capture(x)
    assert t_live.names == t.names
    for p in t:
        q = t_live[p.name]
        assert (q.kind, q.blob, q.inputs, q.layout, q.params) == (p.kind, p.blob, p.inputs, p.layout, p.params)
        np.testing.assert_array_equal(q.value, p.value)
    with pytest.raises(InputError, match="no worker"):
        live.worker_info()


def test_from_net_recognizes_legacy_inputs_without_the_prototxt(caffe_mod):
    net = caffe_mod.Net(proto("legacy_dim"), caffe_mod.TEST)
    t = CaffeBackend.from_net(net).capture(rand((1, 3, 5, 5)))
    assert t.names == ["data", "conv"] and t["data"].layer == "input"
    assert t["conv"].params["kernel_size"] == [3, 3]  # params recovered from the live net


def test_archive_round_trip(models, tmp_path):
    t = capture_caffe(proto("bn_chain"), models["bn_chain"], inputs=rand((1, 3, 6, 6)))
    path = tmp_path / "caffe_trace.npz"
    t.save(path)
    u = Trace.load(path)
    assert (u.framework, u.source, u.names) == ("caffe", t.source, t.names)
    assert u.meta == t.meta and u.meta["phase"] == "TEST"
    for p in t:
        q = u[p.name]
        assert q.meta() == p.meta()
        np.testing.assert_array_equal(q.value, p.value)
    np.testing.assert_array_equal(u.inputs["data"], t.inputs["data"])


def test_capture_caffe_requires_inputs():
    with pytest.raises(InputError, match="needs inputs="):
        capture_caffe(proto("small"))


# -- isolation ----------------------------------------------------------------------------


def test_worker_never_imports_tensorflow(small):
    import tensorflow  # noqa: F401 - the caller has TF loaded; the worker must not

    small.capture(rand((2, 3, 12, 12)))
    info = small.worker_info()
    assert info["pid"] != os.getpid()
    assert info["caffe_imported"] is True
    assert info["tensorflow_imported"] is False


def test_worker_that_hangs_is_killed_after_timeout():
    b = CaffeBackend(proto("multitop"), timeout=120)  # loading may be slow on a busy machine
    b._engine.timeout = b._engine.proc.timeout = 1  # then a 1 s budget per answer
    proc = b._engine.proc.proc
    t0 = time.monotonic()
    with pytest.raises(CaffeError, match=r"did not answer within 1 s"):
        b._engine._sleep(30)
    assert time.monotonic() - t0 < 10
    assert proc.poll() is not None  # killed
    with pytest.raises(CaffeError, match="the worker is gone"):
        b.capture(rand((1, 6, 4, 4)))
    b.close()


def test_python_option_runs_the_worker_under_another_interpreter(tmp_path):
    # an "environment" without site-packages: no numpy, no caffe
    wrapper = tmp_path / "bare-python"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")
    wrapper.chmod(0o755)
    with pytest.raises(CaffeError, match=r"No module named 'numpy'") as ei:
        CaffeBackend(proto("small"), python=str(wrapper))
    assert "small.prototxt" in str(ei.value)
    with pytest.raises(FrameworkMissingError, match="no-such-python"):
        CaffeBackend(proto("small"), python=str(tmp_path / "no-such-python"))
    with CaffeBackend(proto("multitop"), python=sys.executable, env={"OMP_NUM_THREADS": "1"}) as b:
        assert b.worker_info()["python"] == sys.executable
        assert b.meta()["python"] == sys.executable


def test_closed_backend_refuses_work():
    b = CaffeBackend(proto("multitop"))
    proc = b._engine.proc.proc
    b.close()
    assert proc.wait(timeout=10) == 0
    with pytest.raises(InputError, match="closed"):
        b.capture(rand((1, 6, 4, 4)))


HOSTILE_PROTOTXTS = [
    ("bad_syntax", r"bad_syntax\.prototxt:8:52: syntax error \(in layer 'conv1'\): .*no field named \"strides\""),
    ("bad_type", r"bad_type\.prototxt:4: layer 'act': unknown layer type 'Relu'.*did you mean 'ReLU'"),
    ("bad_bottom", r"bad_bottom\.prototxt:3: layer 'conv1': reads blob 'dat', which no earlier layer produces"),
    ("bad_cycle", r"bad_cycle\.prototxt:3: layer 'a': reads blob 'b', which is only produced later by layer 'b'"),
    ("bad_duplicate_top", r"bad_duplicate_top\.prototxt:4: layer 'conv2': top blob 'feat' is already produced by layer 'conv1'"),
    ("bad_legacy_mixed", r"bad_legacy_mixed\.prototxt:3: 2 legacy 'input' fields but 1 'input_shape'"),
    # these two pass every check of ours: Caffe itself aborts (glog CHECK, SIGABRT)
    ("bad_no_kernel", r"bad_no_kernel\.prototxt:5: layer 'conv2' \(Convolution\): Caffe refused the layer: .*"
                      r"kernel_size must be specified once.*SIGABRT"),
    ("bad_concat", r"bad_concat\.prototxt:5: layer 'join' \(Concat\): Caffe refused the layer: .*"
                   r"All inputs must have the same shape.*SIGABRT"),
]


@pytest.mark.parametrize("name,pattern", HOSTILE_PROTOTXTS, ids=[h[0] for h in HOSTILE_PROTOTXTS])
def test_hostile_prototxt_gives_caffe_error_naming_file_and_layer(name, pattern):
    with pytest.raises(CaffeError, match=pattern) as ei:
        CaffeBackend(proto(name))
    assert isinstance(ei.value, InputError)
    assert str(DATA / f"{name}.prototxt") in str(ei.value)


def test_caller_survives_a_caffe_abort_and_keeps_working():
    with pytest.raises(CaffeError, match="SIGABRT"):
        CaffeBackend(proto("bad_concat"))
    with CaffeBackend(proto("multitop")) as b:
        assert len(b.capture(rand((1, 6, 4, 4)))) == 6


def hostile_weights(models):
    return [
        ("other_net", r"other_net\.caffemodel: does not fit .*small\.prototxt:4: layer 'conv1' \(Convolution\): "
                      r"shape mismatch for param 0: the caffemodel holds \(8, 1, 5, 5\) \[200 values\], "
                      r"the prototxt's layer needs \(8, 3, 3, 3\) \[216 values\].*SIGABRT"),
        ("small_nobias", r"small_nobias\.caffemodel: does not fit .*small\.prototxt:4: layer 'conv1' \(Convolution\): "
                         r"the caffemodel holds 1 parameter blob\(s\) for this layer, the prototxt's layer has 2"),
        ("truncated", r"truncated\.caffemodel: truncated or not a Caffe model: .* \(after layer '[^']+'\)"),
        ("empty", r"empty\.caffemodel: the weights file is empty \(0 bytes\)"),
        ("random", r"random\.caffemodel: truncated or not a Caffe model"),
        ("bn_chain", r"bn_chain\.caffemodel: shares no layer name with .*small\.prototxt.*conv1, fc.*conv, bn, scale"),
    ]


@pytest.mark.parametrize("case", range(6))
def test_hostile_caffemodel_gives_caffe_error(models, case):
    key, pattern = hostile_weights(models)[case]
    with pytest.raises(CaffeError, match=pattern):
        CaffeBackend(proto("small"), models[key])


def test_prototxt_given_as_weights_and_weights_as_prototxt(models):
    with pytest.raises(CaffeError, match=r"small\.prototxt: this is a text prototxt, not a binary \.caffemodel"):
        CaffeBackend(proto("small"), proto("small"))
    with pytest.raises(CaffeError, match=r"small\.caffemodel: this is a binary file, not a text prototxt"):
        CaffeBackend(models["small"])
    notes = Path(models["small"]).with_name("notes.caffemodel")
    notes.write_text("just some notes, not weights\n")
    with pytest.raises(CaffeError, match=r"notes\.caffemodel: this is a text file, not a binary \.caffemodel"):
        CaffeBackend(proto("small"), str(notes))
    with pytest.raises(CaffeError, match=r"nowhere\.caffemodel: no such weights file"):
        CaffeBackend(proto("small"), str(DATA / "nowhere.caffemodel"))


def test_caffemodel_missing_some_layers_warns_and_records_them(models, caffe_mod):
    with pytest.warns(UserWarning, match=r"1 layer\(s\) of .*small\.prototxt .* keep their fillers: fc"):
        b = CaffeBackend(proto("small"), models["small_head"])
    with b:
        assert b.meta()["weights_missing"] == ["fc"]
        w = b.weights()
    head = caffe_mod.Net(proto("small_head"), models["small_head"], caffe_mod.TEST)
    np.testing.assert_array_equal(w["conv1"][0], head.params["conv1"][0].data)


# -- a real model ----------------------------------------------------------------------------


def _googlenet() -> Path:
    found = sorted(MODELS.glob("caffe-*/models/bvlc_googlenet/deploy.prototxt"))
    assert found, f"GoogLeNet deploy.prototxt not found under {MODELS}; run `make test` (it builds Caffe)"
    return found[0]


def test_googlenet_capture_one_probe_per_layer_in_execution_order(caffe_mod):
    path = _googlenet()
    from google.protobuf import text_format

    netp = caffe_mod.proto.caffe_pb2.NetParameter()
    text_format.Parse(path.read_text(), netp)
    layers = [(lp.name, lp.type) for lp in netp.layer]
    with CaffeBackend(path, batch=1) as b:
        t = b.capture(rand((1, 3, 224, 224)))
    assert [(p.name, p.kind) for p in t] == layers  # every prototxt layer, once, in order
    assert len(t) == 143 and t.meta["batch"] == 1
    assert t["conv1/relu_7x7"].blob == "conv1/7x7_s2" and t["conv1/relu_7x7"].inputs == ["conv1/7x7_s2"]
    assert t["inception_3a/output"].inputs == [
        "inception_3a/relu_1x1", "inception_3a/relu_3x3", "inception_3a/relu_5x5", "inception_3a/relu_pool_proj"]
    assert t["inception_3a/1x1"].inputs == ["pool2/3x3_s2"]  # through Caffe's hidden Split
    assert t["pool1/3x3_s2"].shape == (1, 64, 56, 56)  # ceil rounding: 112 -> 56 with k3 s2
    assert t["loss3/classifier"].layout == "NC" and t["prob"].shape == (1, 1000)

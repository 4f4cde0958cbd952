"""The verdict covers the whole Caffe net, names the layer inside a chain, and lets real
port conventions be declared: real Caffe against real Keras ports, in Python, in the
pytest fixture and in the CLI."""

from __future__ import annotations

import os

import caffe
import numpy as np
import pytest

from layerparity import compare_models
from layerparity.cli import main as cli_main
from layerparity.layout import conv_weight_caffe_to_tf, inner_product_weight_caffe_to_tf
from layerparity.testing import assert_parity

keras = pytest.importorskip("keras")  # present: the conftest makes a missing TF a usage error

PROTOTXT = """name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape: { dim: 1 dim: 3 dim: 16 dim: 16 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "fc" type: "InnerProduct" bottom: "conv2" top: "fc" inner_product_param { num_output: 10 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""

MEAN = np.array([104.0, 117.0, 123.0], np.float32)  # BGR, as Caffe users subtract it


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    d = tmp_path_factory.mktemp("verdict")
    proto = d / "deploy.prototxt"
    proto.write_text(PROTOTXT)
    n = caffe.Net(os.fspath(proto), caffe.TEST)
    rng = np.random.default_rng(3)
    params = {}
    for name in ("conv1", "conv2", "fc"):
        for blob in n.params[name]:
            fan_in = int(np.prod(blob.data.shape[1:])) or 1
            blob.data[...] = rng.standard_normal(blob.data.shape).astype(np.float32) * np.sqrt(2.0 / fan_in)
        params[name] = [b.data.copy() for b in n.params[name]]
    weights = d / "weights.caffemodel"
    n.save(os.fspath(weights))
    x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    return {"proto": os.fspath(proto), "weights": os.fspath(weights), "params": params, "x": x, "dir": d}


def _conv(name: str, params, *, relu: bool = True, swap_hw: bool = False):
    w, b = params[name]
    k = conv_weight_caffe_to_tf(w)
    if swap_hw:
        k = k.transpose(1, 0, 2, 3)
    layer = keras.layers.Conv2D(w.shape[0], w.shape[2], padding="same", activation="relu" if relu else None, name=name)
    return layer, [k, b]


def _port(params, *, stop_after_pool: bool = False, swap_conv1: bool = False, preprocess: bool = False,
          batch_size: int | None = None):
    inp = keras.Input((16, 16, 3), batch_size=batch_size, name="data")
    x = inp
    if preprocess:  # the port takes RGB in [0, 255] and does Caffe's preprocessing itself
        x = keras.layers.Lambda(lambda t: t[..., ::-1] - MEAN, name="to_bgr_minus_mean")(x)
    c1, w1 = _conv("conv1", params, swap_hw=swap_conv1)
    x = c1(x)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    sets = [(c1, w1)]
    if not stop_after_pool:
        c2, w2 = _conv("conv2", params)
        x = c2(x)
        x = keras.layers.Flatten(name="flatten")(x)
        w, b = params["fc"]
        fc = keras.layers.Dense(10, activation="softmax", name="fc")
        x = fc(x)
        sets += [(c2, w2), (fc, [inner_product_weight_caffe_to_tf(w, (8, 8, 8)), b])]
    m = keras.Model(inp, x)
    for layer, ws in sets:
        layer.set_weights(ws)
    return m


# -- the whole net ---------------------------------------------------------------------


def test_correct_port_with_a_fused_softmax_passes_and_shows_the_chain(net):
    r = compare_models(net["proto"], _port(net["params"]), net["x"], caffe_weights=net["weights"])
    assert r, r.summary()
    fc = r.row("prob")
    assert fc.caffe_chain == ["fc", "prob"] and fc.tf_layer == "fc"
    assert r.unmapped_caffe == [] and r.coverage.missing_outputs == [] and r.coverage.uncovered == []
    assert r.coverage.outputs == ["prob"]


def test_a_truncated_port_fails_in_python_and_names_what_is_missing(net):
    r = compare_models(net["proto"], _port(net["params"], stop_after_pool=True), net["x"], caffe_weights=net["weights"])
    assert all(row.passed for row in r.rows)  # every compared row agrees ...
    assert not r  # ... but the port stops after pool1
    assert r.coverage.missing_outputs == ["prob"]
    assert r.coverage.uncovered == ["conv2", "relu2", "fc", "prob"]
    assert "Caffe output(s) not compared: 'prob'" in str(r) and "'conv2'" in str(r)
    with pytest.raises(AssertionError) as e:
        assert_parity(net["proto"], _port(net["params"], stop_after_pool=True), net["x"], caffe_weights=net["weights"])
    msg = str(e.value)
    assert msg.startswith("The TF port does not cover the Caffe net!")
    assert "Caffe output(s) not compared: 'prob'" in msg and "'fc'" in msg


def test_a_truncated_port_fails_in_the_fixture(net, parity):
    with pytest.raises(AssertionError, match="Caffe output\\(s\\) not compared: 'prob'"):
        parity.check(net["proto"], _port(net["params"], stop_after_pool=True), net["x"], caffe_weights=net["weights"])


def test_a_truncated_port_fails_in_the_cli(net, tmp_path, capsys):
    model = tmp_path / "partial.keras"
    _port(net["params"], stop_after_pool=True).save(model)
    x = tmp_path / "x.npy"
    np.save(x, net["x"])
    args = ["compare", "--caffe-model", net["proto"], "--caffe-weights", net["weights"], "--tf-model", os.fspath(model),
            "--input", os.fspath(x)]
    assert cli_main(args) == 1
    out = capsys.readouterr().out
    assert "not compared: 'prob'" in out
    assert cli_main([*args, "--partial"]) == 0
    assert "left out" in capsys.readouterr().out
    assert cli_main([*args, "--partial", "pool1"]) == 0
    assert cli_main([*args, "--partial", "conv2"]) == 1
    assert cli_main([*args, "--partial", "nope"]) == 2
    assert "Caffe layer 'nope' is not in the Caffe net" in capsys.readouterr().err


def test_a_declared_partial_check_passes_and_says_what_was_left_out(net):
    port = _port(net["params"], stop_after_pool=True)
    r = compare_models(net["proto"], port, net["x"], caffe_weights=net["weights"], partial=True)
    assert r and r.coverage.left_out == ["conv2", "relu2", "fc", "prob"]
    assert "partial check; left out: 'conv2'" in str(r)
    r = compare_models(net["proto"], port, net["x"], caffe_weights=net["weights"], partial=["pool1"])
    assert r and r.coverage.scope == ["data", "conv1", "relu1", "pool1"]
    r = compare_models(net["proto"], port, net["x"], caffe_weights=net["weights"], partial=["conv2"])
    assert not r and r.coverage.missing_outputs == ["conv2"]


# -- names in chains --------------------------------------------------------------------


def test_the_first_divergence_names_the_conv_inside_a_fused_chain(net):
    r = compare_models(net["proto"], _port(net["params"], swap_conv1=True), net["x"], caffe_weights=net["weights"])
    fd = r.first_divergence
    assert not r and fd.caffe_chain == ["conv1", "relu1"]
    assert fd.divergent_layer == "conv1"
    assert r.to_dict()["first_divergence"]["divergent_layer"] == "conv1"
    with pytest.raises(AssertionError, match=r"Models diverge at Caffe layer 'conv1' \(chain conv1\+relu1; TF layer 'conv1'\)!"):
        assert_parity(net["proto"], _port(net["params"], swap_conv1=True), net["x"], caffe_weights=net["weights"])


# -- conventions ------------------------------------------------------------------------


def test_a_port_that_preprocesses_inside_the_model_is_fed_its_own_input(net):
    bgr_minus_mean = net["x"]
    rgb = (bgr_minus_mean + MEAN[None, :, None, None])[:, ::-1].copy()  # what the port is fed
    port = _port(net["params"], preprocess=True)
    r = compare_models(net["proto"], port, bgr_minus_mean, caffe_weights=net["weights"], tf_inputs=rgb)
    assert r, r.summary()
    data = r.row("data")
    assert data.tf_layer == "to_bgr_minus_mean" and "compared after its preprocessing" in data.note
    assert "to_bgr_minus_mean" not in r.unmapped_tf
    # fed the Caffe input instead, the same port is wrong from its first layer on
    assert not compare_models(net["proto"], port, bgr_minus_mean, caffe_weights=net["weights"])


def test_the_cli_keeps_a_batch_together_when_the_model_fixes_it(net, tmp_path):
    model = tmp_path / "batch2.keras"
    _port(net["params"], batch_size=2).save(model)
    rng = np.random.default_rng(5)
    x = tmp_path / "x2.npy"
    np.save(x, rng.standard_normal((2, 3, 16, 16)).astype(np.float32))
    args = ["compare", "--caffe-model", net["proto"], "--caffe-weights", net["weights"], "--tf-model", os.fspath(model)]
    assert cli_main([*args, "--input", os.fspath(x)]) == 0
    x3 = tmp_path / "x3.npy"
    np.save(x3, rng.standard_normal((3, 3, 16, 16)).astype(np.float32))
    assert cli_main([*args, "--input", os.fspath(x3)]) == 2  # 3 items cannot make batches of 2


# -- a port in the MATLAB convention (spatially transposed input) ------------------------

MATLAB_PROTOTXT = """name: "matlab_net"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool1" type: "Pooling" bottom: "conv2" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" inner_product_param { num_output: 6 } }
"""


@pytest.fixture(scope="module")
def matlab(tmp_path_factory):
    import portbuilder as pb

    d = tmp_path_factory.mktemp("matlab_e2e")
    proto = d / "net.prototxt"
    proto.write_text(MATLAB_PROTOTXT)
    x = pb.random_input((1, 3, 8, 8), seed=11)
    params = pb.make_caffemodel(os.fspath(proto), d / "net.caffemodel", x, seed=12)
    inp = keras.Input((8, 8, 3), name="data")  # N, W, H, C relative to Caffe
    convs = []
    h = inp
    for name in ("conv1", "conv2"):
        w, b = params[name]
        conv = keras.layers.Conv2D(4, (w.shape[3], w.shape[2]), padding="same", activation="relu", name=name)
        h = conv(h)
        convs.append((conv, [w.transpose(3, 2, 1, 0), b]))  # (O, I, kH, kW) -> (kW, kH, I, O)
    h = keras.layers.MaxPooling2D(2, name="pool1")(h)
    h = keras.layers.Permute((3, 2, 1), name="to_caffe_order")(h)  # N, W, H, C -> N, C, H, W
    h = keras.layers.Flatten(name="flat")(h)
    fc = keras.layers.Dense(6, name="fc")
    model = keras.Model(inp, fc(h))
    for layer, ws in convs:
        layer.set_weights(ws)
    w, b = params["fc"]
    fc.set_weights([w.T, b])
    model.save(d / "port.keras")
    return {"proto": os.fspath(proto), "weights": os.fspath(d / "net.caffemodel"), "x": x,
            "keras": os.fspath(d / "port.keras"), "dir": d}


def test_a_spatially_transposed_port_passes_only_when_declared_and_the_convention_is_named(matlab):
    good = compare_models(matlab["proto"], matlab["keras"], matlab["x"], caffe_weights=matlab["weights"], tf_layout="NWHC")
    assert good, good.summary()
    assert good.coverage.passes and good.conventions == []
    bad = compare_models(matlab["proto"], matlab["keras"], matlab["x"], caffe_weights=matlab["weights"])
    assert not bad
    assert bad.first_divergence.divergent_layer == "conv1"
    assert [d.kind for d in bad.conventions] == ["spatially_transposed_port"]
    assert 'tf_layout="NWHC"' in bad.conventions[0].fix
    assert "port convention: spatially_transposed_port" in str(bad)
    with pytest.raises(AssertionError, match="Port convention: spatially_transposed_port"):
        assert_parity(matlab["proto"], matlab["keras"], matlab["x"], caffe_weights=matlab["weights"])


def test_the_cli_takes_the_declared_layout(matlab, capsys):
    x = matlab["dir"] / "x.npy"
    np.save(x, matlab["x"])
    args = ["compare", "--caffe-model", matlab["proto"], "--caffe-weights", matlab["weights"],
            "--tf-model", matlab["keras"], "--input", os.fspath(x)]
    assert cli_main([*args, "--tf-layout", "NWHC"]) == 0
    assert cli_main(args) == 1
    assert "--tf-layout NWHC" in capsys.readouterr().out


def test_a_row_that_passes_never_diverges_whatever_its_own_error():
    """A replay fed something else than the layer's input (a mapped bias-add on a converter
    port) can fail its own error where the port's value agrees with Caffe's: that row must not
    become the first divergence of a passing report (seen: PASS with 'first divergence: conv4')."""
    from layerparity.metrics import compute_metrics, default_tolerance
    from layerparity.result import LayerResult
    from layerparity.verdict import diverges

    tol = default_tolerance(np.float32)
    a = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 4, 4, 4)
    good, bad = compute_metrics(a, a + 1e-7, tol), compute_metrics(a, a + 5.0, tol)
    assert good.passed and not bad.passed

    def row(total, own):
        return LayerResult(caffe_layer="conv4", caffe_blob="conv4", tf_layer="Add_3", caffe_kind="Convolution",
                           tf_kind="AddV2",
                           caffe_shape=(1, 4, 4, 4), tf_shape=(1, 4, 4, 4), metrics=total, own=own)

    assert not diverges(row(good, bad))  # the value agrees: no divergence here
    assert diverges(row(bad, bad)) and diverges(row(bad, None))
    assert not diverges(row(bad, good))  # inherited from upstream


def test_first_divergence_is_decided_from_the_finished_rows():
    """verdict.first_divergence (the engine's choice, issue 12 item 3): the first row that
    diverges by its own error (or its total error where own was not measured); else, when every
    failing row passed its own error, the first failing row; else none."""
    from layerparity.metrics import compute_metrics, default_tolerance
    from layerparity.result import LayerResult
    from layerparity.verdict import first_divergence

    tol = default_tolerance(np.float32)
    a = np.linspace(-1, 1, 64, dtype=np.float32).reshape(1, 4, 4, 4)
    good, bad = compute_metrics(a, a + 1e-7, tol), compute_metrics(a, a + 5.0, tol)

    def row(name, total, own):
        return LayerResult(caffe_layer=name, caffe_blob=name, tf_layer=name, caffe_kind="Convolution",
                           tf_kind="Conv2D", caffe_shape=(1, 4, 4, 4), tf_shape=(1, 4, 4, 4), metrics=total, own=own)

    inherited, own_bad, unmeasured, ok = row("c1", bad, good), row("c2", bad, bad), row("c3", bad, None), row("c0", good, good)
    assert first_divergence([ok, inherited, own_bad, unmeasured]) == (own_bad, "own")
    assert first_divergence([ok, unmeasured, own_bad]) == (unmeasured, "total")
    assert first_divergence([ok, inherited, row("c4", bad, good)]) == (inherited, "total (own error passed everywhere)")
    assert first_divergence([ok, row("c5", good, bad)]) == (None, "")
    assert first_divergence([]) == (None, "")

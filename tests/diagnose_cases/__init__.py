"""Helpers for the diagnosis and weight-parity tests: tiny real Caffe nets (prototxt
written here, weights set with numpy through pycaffe) and Keras ports built in the
tests, compared end to end with the real engine."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import caffe  # noqa: E402
import keras  # noqa: E402

from layerparity.compare import compare_models  # noqa: E402
from layerparity.result import Diagnosis, Report  # noqa: E402

HEADER = 'name: "t"\n'


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def f32(a) -> np.ndarray:
    return np.asarray(a, np.float32)


def prototxt(inputs: dict[str, tuple[int, ...]], body: str) -> str:
    text = HEADER
    for name, shape in inputs.items():
        dims = "".join(f" dim: {d}" for d in shape)
        text += f'input: "{name}"\ninput_shape {{{dims} }}\n'
    return text + body


def caffe_net(tmp_path: Path, text: str, params: dict[str, list[np.ndarray]] | None = None,
              name: str = "net.prototxt") -> caffe.Net:
    """A real caffe.Net (TEST phase) with its params set from numpy arrays."""
    p = tmp_path / name
    p.write_text(text)
    net = caffe.Net(str(p), caffe.TEST)
    for layer, blobs in (params or {}).items():
        assert len(net.params[layer]) == len(blobs), f"{layer}: {len(net.params[layer])} blobs"
        for i, b in enumerate(blobs):
            assert net.params[layer][i].data.shape == np.shape(b), (layer, i, net.params[layer][i].data.shape, np.shape(b))
            net.params[layer][i].data[...] = b
    return net


def save_caffemodel(net: caffe.Net, tmp_path: Path, name: str = "net.caffemodel") -> str:
    path = str(tmp_path / name)
    net.save(path)
    return path


def conv_w(o: int, i: int, k: int, seed: int, scale: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    r = rng(seed)
    s = scale if scale is not None else (2.0 / (i * k * k)) ** 0.5
    return f32(r.standard_normal((o, i, k, k)) * s), f32(r.standard_normal(o) * 0.1)


def hwio(w: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def keras_input(shape_nchw: tuple[int, ...], name: str = "data"):
    n, c, h, w = shape_nchw
    return keras.Input((h, w, c), batch_size=n, name=name)


def compare(net, model, x, **kw) -> Report:
    return compare_models(net, model, x, **kw)


def top(report: Report) -> Diagnosis:
    fd = report.first_divergence
    assert fd is not None, "the port was expected to diverge"
    assert fd.diagnoses, f"no diagnosis for the first divergent layer {fd.caffe_layer!r} ({fd.note})"
    for d in fd.diagnoses:  # every diagnosis is JSON-stable
        json.dumps(d.to_dict(), allow_nan=False)
    if os.environ.get("LP_SHOW_DIAGNOSES"):
        print("\n" + fd.caffe_layer, json.dumps([d.to_dict() for d in fd.diagnoses], indent=1)[:3000])
    return fd.diagnoses[0]


def kinds(report: Report) -> list[str]:
    fd = report.first_divergence
    return [d.kind for d in fd.diagnoses] if fd is not None else []


def assert_clean(report: Report) -> None:
    """A correct port: every row passes and nothing is diagnosed."""
    bad = [(r.caffe_layer, r.note) for r in report.rows if not r.passed]
    assert not bad, f"correct port diverged: {bad}"
    assert report.first_divergence is None
    assert all(not r.diagnoses for r in report.rows)


def demo_relu6_port():
    """The demo's correct Keras port with relu1 capped at 6 (a ReLU6), as docs/sweep.md builds it:
    only inputs that drive conv1 above 6 diverge (at relu1)."""
    from layerparity import demo

    port = demo.build_keras_port(demo.demo_weights(), buggy=False)
    config = port.get_config()
    for layer in config["layers"]:
        if layer["config"]["name"] == "relu1":
            layer["config"]["max_value"] = 6.0
    relu6 = keras.Model.from_config(config)
    relu6.set_weights(port.get_weights())
    return relu6

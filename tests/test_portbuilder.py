"""tests/portbuilder checked directly against real Caffe, without layerparity's engine.

1. Each zoo net's correct Keras port reproduces every Caffe layer's output.
2. Each bug kind really changes the port: the injected layer's output differs from
   Caffe's beyond the default float32 tolerance (or has another shape) while every
   layer before it still matches.
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

import caffe  # noqa: F401  - before TensorFlow (the other order segfaults in caffe.Net)
import numpy as np
import pytest

sys.path.insert(0, os.fspath(Path(__file__).parent / "zoo"))

from zoo_nets import NETS, ZOO, use_pythonpath  # noqa: E402

use_pythonpath()  # faster_rcnn's Python layers, for pycaffe in this process

import portbuilder as pb  # noqa: E402

#: Nets small enough for the fast suite; the others run with the slow matrix.
SMALL = ("lenet", "fcn_head", "ssd_head", "mtcnn_onet", "ops_tour", "crnn", "ssd_full", "faster_rcnn")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    cache: dict[str, tuple] = {}

    def get(name):
        if name not in cache:
            net = NETS[name]
            d = tmp_path_factory.mktemp(name)
            proto = pb.with_input_shape(ZOO / net.file, net.input_shape, d / "deploy.prototxt")
            x = pb.random_input(net.input_shape, seed=1000 + net.seed)
            model = os.fspath(d / "weights.caffemodel")
            params = pb.make_caffemodel(proto, model, x, seed=net.seed)
            cache[name] = (proto, model, x, params, pb.net_info(proto), pb.caffe_layer_outputs(proto, model, x))
        return cache[name]

    return get


def keras_outputs(model, x_nchw) -> dict[str, np.ndarray]:
    import keras

    layers = [lyr for lyr in model.layers if not isinstance(lyr, keras.layers.InputLayer)]
    probe = keras.Model(model.inputs, [lyr.output for lyr in layers])
    vals = probe([x_nchw.transpose(0, 2, 3, 1)])
    return {lyr.name: np.asarray(v) for lyr, v in zip(layers, vals, strict=True)}


def as_caffe(info, layer_name: str, value: np.ndarray) -> np.ndarray:
    """A Keras layer output in Caffe's axis order (SSD's Permute output is already NHWC in Caffe)."""
    if _time_major(info, layer_name):
        return value.swapaxes(0, 1)  # Caffe T x N x ..., Keras N x T x ...
    if info.layer(layer_name).type == "Reshape" and value.ndim == 4:
        return value  # a 4-D Reshape's Keras layer reshapes in NCHW order (portbuilder/rcnn.py)
    after_permute = _after_permute(info, layer_name)
    if value.ndim == 4 and not after_permute:
        return value.transpose(0, 3, 1, 2)
    return value


def _after_permute(info, layer_name: str) -> bool:
    seen = {}
    for lp in info.layers:
        srcs = [seen.get(b, False) for b in lp.bottom]
        flag = lp.type == "Permute" or (lp.type not in ("InnerProduct",) and any(srcs))
        for t in lp.top:
            seen[t] = flag
        if lp.name == layer_name:
            return flag
    return False


def _by_label_and_score(rows: np.ndarray) -> np.ndarray:
    r = rows.reshape(-1, 7)
    return r[np.lexsort((-r[:, 2], r[:, 1]))].reshape(rows.shape)


def _time_major(info, layer_name: str) -> bool:
    """The layer's top is time-major in Caffe (CRNN's Permute(3, 0, 1, 2), a recurrent layer,
    and what follows them), batch-major in the Keras port."""
    seen = {}
    for lp in info.layers:
        flag = (lp.type == "Permute" and list(lp.permute_param.order)[:2] == [3, 0]) or lp.type in ("LSTM", "RNN") \
            or any(seen.get(b, False) for b in lp.bottom)
        for t in lp.top:
            seen[t] = flag
        if lp.name == layer_name:
            return flag
    return False


def close(ref: np.ndarray, got: np.ndarray, rtol: float, atol_rel: float) -> bool:
    """layerparity's default criterion: |got - ref| <= atol_rel * max|ref| + rtol * |ref|."""
    if ref.shape != got.shape:
        return False
    scale = float(np.abs(ref).max()) or 1.0
    return bool(np.all(np.abs(got - ref) <= atol_rel * scale + rtol * np.abs(ref)))


def _release():
    import keras

    keras.backend.clear_session()
    gc.collect()


#: Every layer of the correct port is checked against Caffe's value after the whole chain
#: before it, so float32 noise accumulates with depth. Measured worst |diff| / max|ref|:
#: ResNet-50 2.0e-4 (res5c, 50 convs deep), MobileNet v1 8e-5, GoogLeNet and VGG-16 < 2e-5;
#: one layer alone (own error) stays below 1e-5 everywhere (the matrix checks that part).
DEPTH_TOL = {"resnet50": 5e-4, "mobilenet_v1": 2e-4, "googlenet": 5e-5, "vgg16": 5e-5}


@pytest.mark.parametrize(
    "name", [n if n in SMALL else pytest.param(n, marks=pytest.mark.slow) for n in NETS])
def test_correct_port_matches_caffe_at_every_layer(name, prepared):
    proto, model_path, x, params, info, caffe_out = prepared(name)
    model = pb.build_keras(proto, params)
    outs = keras_outputs(model, x)
    tol = DEPTH_TOL.get(name, 2e-5)
    checked, bad = 0, []
    for lp in info.layers:
        k = pb.kname(lp.name)
        if lp.type in ("Input", "Dropout") or k not in outs:
            continue
        got = as_caffe(info, lp.name, outs[k])
        ref = caffe_out[lp.name]
        if lp.type == "DetectionOutput":  # a set of rows: Caffe lists them by label, the port by score
            ref, got = _by_label_and_score(ref), _by_label_and_score(got)
        checked += 1
        if not close(ref, got, tol, tol):
            bad.append((lp.name, ref.shape, got.shape, float(np.abs(got - ref).max()) if got.shape == ref.shape else None))
    computing = [lp.name for lp in info.layers if lp.type not in ("Input", "Dropout")]
    _release()
    assert checked == len(computing), f"layers without a Keras counterpart: {set(computing) - set(outs)}"
    assert not bad, f"{name}: the correct port differs from Caffe at {bad[:5]}"


def _bug_cases():
    """One small net per bug kind (the first small net it applies to)."""
    import tempfile

    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        infos = {n: pb.net_info(pb.with_input_shape(ZOO / NETS[n].file, NETS[n].input_shape, f"{tmp}/{n}.prototxt"))
                 for n in SMALL}
        for bug in pb.BUGS:
            for n in SMALL:
                where = pb.applicable_layers(infos[n], bug)
                if where:
                    cases.append((bug, n, where[0]))
                    break
            else:
                cases.append((bug, None, None))
    return cases


BUG_CASES = _bug_cases()


def test_every_bug_kind_has_a_small_net():
    assert [b for b, n, _ in BUG_CASES if n is None] == []
    assert sorted(b for b, _, _ in BUG_CASES) == sorted(pb.BUG_DOC)


@pytest.mark.parametrize("bug,name,layer", [c for c in BUG_CASES if c[1] is not None])
def test_bug_changes_the_injected_layer_only(bug, name, layer, prepared):
    proto, model_path, x, params, info, caffe_out = prepared(name)
    assert pb.plan_bugs(info, [bug]) == {layer: bug}
    outs = keras_outputs(pb.build_keras(proto, params, bugs=[bug]), x)
    _release()
    order = [lp.name for lp in info.layers]
    before = [n for n in order[: order.index(layer)] if pb.kname(n) in outs and info.layer(n).type != "Input"]
    for n in before:
        got = as_caffe(info, n, outs[pb.kname(n)])
        assert close(caffe_out[n], got, 2e-5, 2e-5), f"{bug}: {n} (before {layer}) changed"
    got = as_caffe(info, layer, outs[pb.kname(layer)])
    ref = caffe_out[layer]
    assert not close(ref, got, 1e-4, 1e-5), f"{bug} at {name}/{layer} leaves the output within tolerance"


def test_named_injection_point_and_refusals(prepared):
    proto, model_path, x, params, info, caffe_out = prepared("ops_tour")
    assert pb.plan_bugs(info, [("kernel_flipped", "conv2b")]) == {"conv2b": "kernel_flipped"}
    with pytest.raises(ValueError, match="does not apply to layer 'conv2a'"):
        pb.plan_bugs(info, [("kernel_flipped", "conv2a")])  # 1x1: nothing to flip
    with pytest.raises(ValueError, match="unknown bug kind"):
        pb.plan_bugs(info, ["no_such_bug"])
    with pytest.raises(ValueError, match="two bugs at layer 'conv1'"):
        pb.plan_bugs(info, ["kernel_flipped", "kernel_hw_swapped"])


def test_batchnorm_blobs_carry_a_scale_factor(prepared):
    *_, params, info, _ = prepared("ops_tour")
    mean_s, var_s, s = params["bn3"]
    assert s.shape == (1,) and s[0] == pytest.approx(pb.BN_SCALE_FACTOR) and s[0] != 1
    assert np.all(var_s > 0)


def test_zoo_prototxts_are_what_the_generator_writes():
    from make_prototxts import GENERATED

    for fname, fn in GENERATED.items():
        assert (ZOO / fname).read_text() == fn(), f"fixtures/zoo/{fname} differs from tests/zoo/make_prototxts.py"

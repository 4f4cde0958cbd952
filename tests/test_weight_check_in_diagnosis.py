"""A diverged row's diagnosis carries the weight check ``layerparity weights`` gives for
its layer (issue 16, "parity with compare"): in the diagnosis evidence, in the text
summary and in the JSON report (``layers[].weights``, validated by the reader), and
nothing of it in a passing report. Real Caffe against real Keras ports written by
tests/portbuilder; the converter ports' counterpart is
tests/thirdparty/test_converter_weight_check.py."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from layerparity import compare_models
from layerparity.errors import ReportFormatError
from layerparity.report.json import load_report, read_json, write_json
from layerparity.report.text import format_summary
from layerparity.weights import weight_parity

keras = pytest.importorskip("keras")  # present: the conftest makes a missing TF a usage error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LENET = os.path.join(ROOT, "fixtures", "zoo", "lenet.prototxt")


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    import portbuilder as pb

    d = tmp_path_factory.mktemp("weight_check")
    shape = (1, 1, 28, 28)
    x = pb.random_input(shape, seed=5)
    weights = d / "lenet.caffemodel"
    pb.make_caffemodel(LENET, weights, x, seed=6)

    def port(bugs, name):
        m = pb.build_keras(LENET, weights, shape, bugs=bugs)
        path = d / f"{name}.keras"
        m.save(path)
        return os.fspath(path)

    return {"x": x, "weights": os.fspath(weights), "dir": d,
            "correct": port([], "correct"),
            "flipped": port([("kernel_flipped", "conv2")], "flipped"),
            "bias": port([("constant_offset", "conv1")], "bias")}


def _compare(lenet, which):
    return compare_models(LENET, lenet[which], lenet["x"], caffe_weights=lenet["weights"])


def test_a_wrong_transform_is_in_the_diagnosis_text_and_json_as_weights_says(lenet):
    rep = _compare(lenet, "flipped")
    assert not rep
    fd = rep.first_divergence
    assert fd.divergent_layer == "conv2"
    # the same verdict `layerparity weights` gives for that layer
    wrow = weight_parity(LENET, lenet["weights"], lenet["flipped"]).row("conv2")
    assert wrow.status == "equal_under:kernel_flipped"
    assert [w.to_dict() for w in fd.weights] == [wrow.to_dict() | {"how": w.how} for w in fd.weights]
    assert [(w.caffe_layer, w.status) for w in fd.weights] == [("conv2", "equal_under:kernel_flipped")]
    top = fd.diagnoses[0]
    assert top.kind == "kernel_flipped" and top.layer == "conv2"
    assert top.evidence["weight_check"] == {"conv2": "equal_under:kernel_flipped"}
    assert top.evidence["weight_check_agrees"] is True
    text = format_summary(rep)
    assert "Weight check: 'conv2' -> TF 'conv2': equal_under:kernel_flipped" in text
    # only diagnosed rows carry it
    assert [r.caffe_layer for r in rep.rows if r.weights] == [r.caffe_layer for r in rep.rows if r.diagnoses]
    # JSON: written, validated, read back
    path = lenet["dir"] / "flipped.json"
    write_json(rep, path)
    data = read_json(path)
    assert data["first_divergence"]["weights"][0]["status"] == "equal_under:kernel_flipped"
    assert data["first_divergence"]["weights"][0]["transform"] == "kernel_flipped"
    row = next(x for x in data["layers"] if x["caffe_layer"] == fd.caffe_layer)
    assert row["weights"] == data["first_divergence"]["weights"]
    assert row["diagnoses"][0]["evidence"]["weight_check"] == {"conv2": "equal_under:kernel_flipped"}
    back = load_report(path)
    assert back.to_dict() == data
    assert back.first_divergence.weights[0].transform == "kernel_flipped"


def test_different_weights_with_no_transform_are_said(lenet):
    rep = _compare(lenet, "bias")
    fd = rep.first_divergence
    assert fd.divergent_layer == "conv1"
    assert [(w.caffe_layer, w.status) for w in fd.weights] == [("conv1", "different")]
    assert [b.role for b in fd.weights[0].blobs if b.status == "different"] == ["bias"]
    top = fd.diagnoses[0]
    assert top.evidence["weight_check"] == {"conv1": "different"}
    assert top.evidence["weights_different"] == ["conv1"]
    assert "differ from Caffe's under the expected layout and under every known wrong transform" in top.summary
    text = format_summary(rep)
    assert "Weight check: 'conv1' -> TF 'conv1': different (max abs error 1 under the expected layout)" in text
    assert "weights_different" in rep.to_json()


def test_a_passing_report_has_no_weight_check(lenet):
    rep = _compare(lenet, "correct")
    assert rep, rep.summary()
    assert all(r.weights == [] for r in rep.rows)
    d = rep.to_dict()
    assert d["first_divergence"] is None
    assert all(x["weights"] == [] for x in d["layers"])
    assert "Weight check" not in format_summary(rep)


def test_the_json_reader_refuses_a_bad_weights_entry(lenet):
    rep = _compare(lenet, "flipped")
    data = json.loads(rep.to_json())
    i = next(i for i, x in enumerate(data["layers"]) if x["weights"])
    bad = json.loads(json.dumps(data))
    bad["layers"][i]["weights"][0]["status"] = "fine"
    p = lenet["dir"] / "bad.json"
    p.write_text(json.dumps(bad))
    with pytest.raises(ReportFormatError, match=r"layers\[\d+\]\.weights\[0\]: 'status' is 'fine'"):
        read_json(p)
    bad = json.loads(json.dumps(data))
    bad["layers"][i]["weights"][0]["transform"] = "kernel_hw_swapped"
    p.write_text(json.dumps(bad))
    with pytest.raises(ReportFormatError, match="'transform' .* contradicts 'status'"):
        read_json(p)
    bad = json.loads(json.dumps(data))
    bad["layers"][i]["weights"] = {"conv2": "equal"}
    p.write_text(json.dumps(bad))
    with pytest.raises(ReportFormatError, match=r"weights: not a list"):
        read_json(p)
    np.testing.assert_equal(len(data["layers"][i]["weights"]), 1)

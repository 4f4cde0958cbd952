"""compare's diagnosis carries the weight check on converter output (issue 16, "parity with
compare"): real Caffe against caffe2onnx -> onnx2tf SavedModels (tests/thirdparty), where the
converter renamed every layer and decomposed the conv into Conv2D + Add. The first divergence of
a port with a wrong weight carries the verdict ``layerparity weights`` gives for that layer, in
the diagnosis evidence, the text summary and the JSON report; the correct port's report has none.
"""

from __future__ import annotations

import json

import pytest
from thirdparty_ports import load_ports

from layerparity import compare_models
from layerparity.report.json import validate_report
from layerparity.report.text import format_summary
from layerparity.weights import weight_parity

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def alexnet():
    return load_ports("alexnet")


def test_converter_weight_bug_carries_the_weight_verdict(alexnet):
    p = alexnet
    bug = p.bug("conv1_kernel_hw_swapped")
    port = p.path(bug["savedmodel"])
    rep = compare_models(p.prototxt, port, p.input(), caffe_weights=p.caffemodel)
    assert not rep
    fd = rep.first_divergence
    assert fd.divergent_layer == bug["layer"] == "conv1"
    want = weight_parity(p.prototxt, p.caffemodel, port).row("conv1")
    assert want.status == "equal_under:kernel_hw_swapped"
    assert [(w.caffe_layer, w.status) for w in fd.weights] == [("conv1", want.status)]
    assert fd.weights[0].tf_ops == want.tf_ops  # the same TF ops (Conv2D + the converter's bias Add)
    top = fd.diagnoses[0]
    assert top.kind == "kernel_hw_swapped"
    assert top.evidence["weight_check"] == {"conv1": "equal_under:kernel_hw_swapped"}
    assert top.evidence["weight_check_agrees"] is True
    text = format_summary(rep)
    assert f"Weight check: 'conv1' -> TF {fd.tf_layer!r}: equal_under:kernel_hw_swapped" in text
    data = json.loads(rep.to_json())
    validate_report(data)
    assert data["first_divergence"]["weights"][0]["transform"] == "kernel_hw_swapped"
    assert data["first_divergence"]["weights"][0]["tf_ops"] == want.tf_ops
    assert [x["caffe_layer"] for x in data["layers"] if x["weights"]] == [
        x["caffe_layer"] for x in data["layers"] if x["diagnoses"]]


def test_correct_converter_port_report_has_no_weight_check(alexnet):
    p = alexnet
    rep = compare_models(p.prototxt, p.path(p.manifest["correct"]["savedmodel"]), p.input(),
                         caffe_weights=p.caffemodel)
    assert rep, rep.summary()
    data = json.loads(rep.to_json())
    assert data["first_divergence"] is None
    assert all(x["weights"] == [] for x in data["layers"])
    assert "Weight check" not in format_summary(rep)

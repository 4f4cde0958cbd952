"""Weight parity on converter output: real Caffe against the SavedModels caffe2onnx -> onnx2tf made.

The converter renames every layer and folds weights (BatchNorm + Scale into a Mul/Add pair, a
bias into an Add, a Gemm into MatMul/Mul/AddV2), so ``weight_parity`` must pair layers by the
alignment ``compare`` uses and check the folded formulas. Per net (scripts/make_converter_ports.py
NETS):

- the correct port reports every Caffe layer with params ``equal`` or ``folded``;
- a bug that edits a weight (or a BatchNorm constant folded into one) before onnx2tf names that
  layer, with a transform among the bug's kinds, and no other layer;
- a bug that edits no weight (an LRN alpha, a pads attribute) leaves the weights all right.

Nothing is mocked: real pycaffe, real TensorFlow, ports nobody here wrote.
"""

from __future__ import annotations

import time

import pytest
from thirdparty_ports import NETS, load_ports

from layerparity.weights import GOOD, iter_transform_names, weight_parity

pytestmark = pytest.mark.slow

CASES = [(net, None) for net in NETS] + [(net, bug["name"]) for net in NETS for bug in NETS[net]["bugs"]]
WEIGHT_KINDS = set(iter_transform_names())


def _is_weight_bug(bug: dict) -> bool:
    return bool(set(bug["kinds"]) & WEIGHT_KINDS)


@pytest.mark.parametrize("net,bug", CASES, ids=[f"{n}-{b or 'correct'}" for n, b in CASES])
def test_converter_port_weights(net: str, bug: str | None, record_thirdparty) -> None:
    p = load_ports(net)
    port = p.manifest["correct"]["savedmodel"] if bug is None else p.bug(bug)["savedmodel"]
    t0 = time.perf_counter()
    rep = weight_parity(p.prototxt, p.caffemodel, p.path(port))
    seconds = time.perf_counter() - t0
    problems = [(r.caffe_layer, r.status) for r in rep.rows if r.status not in GOOD]
    entry = {"check": "weights", "net": net, "bug": bug, "seconds": seconds, "counts": rep.counts(),
             "layers": len(rep.rows), "passed": bool(rep), "problems": problems[:12],
             "how": sorted({r.how for r in rep.rows}), "pairing_notes": rep.pairing_notes[:6]}
    text = rep.to_text(max_rows=12)
    assert rep.rows, f"{net}: no Caffe layer with params was checked"
    if bug is None:
        record_thirdparty(entry)
        assert rep and not problems, f"{net}: the correct converter port's weights are not all equal/folded:\n{text}"
        assert all(r.tf_ops for r in rep.rows), f"{net}: a row was checked against no TF op:\n{text}"
        return
    b = p.bug(bug)
    if not _is_weight_bug(b):
        entry |= {"weight_bug": False, "layer_ok": not problems, "kind_ok": not problems}
        record_thirdparty(entry)
        assert rep and not problems, f"{net}/{bug} edits no weight ({b['what']}), yet:\n{text}"
        return
    row = rep.row(b["layer"])
    entry |= {"weight_bug": True, "expected_layer": b["layer"], "expected_kinds": b["kinds"],
              "status": row.status, "layer_ok": [c for c, _ in problems] == [b["layer"]],
              "kind_ok": row.transform in b["kinds"]}
    record_thirdparty(entry)
    assert not rep, f"{net}/{bug}: weight parity passes a port with a wrong weight ({b['what']}):\n{text}"
    assert [c for c, _ in problems] == [b["layer"]], (
        f"{net}/{bug}: expected only {b['layer']!r} wrong ({b['what']}), got {problems}:\n{text}")
    assert row.transform in b["kinds"], (
        f"{net}/{bug}: {b['layer']!r} is {row.status!r}, expected a transform among {b['kinds']}:\n{text}")

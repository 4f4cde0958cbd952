"""The third-party matrix: real Caffe against ports that caffe2onnx -> onnx2tf made.

Per net (scripts/make_converter_ports.py NETS): the converter's correct port must pass
``compare_models`` at the default tolerance; each bug, injected into the ONNX model before
onnx2tf, must make the report's first divergence the Caffe layer the bug is in
(``divergent_layer``) with a right diagnosis on top. Real Caffe, real TensorFlow, ports
that nobody here wrote: nothing is mocked and nothing is skipped.
"""

from __future__ import annotations

import time

import pytest
from thirdparty_ports import NETS, load_ports

import layerparity as lp

pytestmark = pytest.mark.slow

CASES = [(net, None) for net in NETS] + [(net, bug["name"]) for net in NETS for bug in NETS[net]["bugs"]]


def _row_dict(r) -> dict:
    m, o = r.metrics, r.own

    def metrics(x):
        if x is None:
            return None
        return {"max_abs_error": x.max_abs_error, "rel_rms_error": x.rel_rms_error, "cosine": x.cosine,
                "mismatched": x.mismatched, "total": x.total, "scale": x.scale, "passed": x.passed}

    return {
        "caffe_layer": r.caffe_layer, "caffe_chain": list(r.caffe_chain), "caffe_kind": r.caffe_kind,
        "tf_layer": r.tf_layer, "tf_kind": r.tf_kind, "caffe_shape": list(r.caffe_shape),
        "tf_shape": list(r.tf_shape), "note": r.note, "passed": r.passed,
        "metrics": metrics(m), "own": metrics(o), "contaminated_by": r.contaminated_by,
        "divergent_layer": r.divergent_layer,
        "diagnoses": [(d.kind, round(d.confidence, 3), d.layer, d.summary[:300]) for d in r.diagnoses],
    }


def _describe(report, limit: int = 8) -> str:
    """The failing rows, for the assertion message (the lead reads these)."""
    lines = [report.summary()]
    bad = [r for r in report.rows if not r.passed]
    for r in bad[:limit]:
        d = _row_dict(r)
        m = d["metrics"] or {}
        lines.append(
            f"  FAIL {'+'.join(d['caffe_chain']) or d['caffe_layer']} vs {d['tf_layer']} ({d['tf_kind']}): "
            f"shapes {d['caffe_shape']} / {d['tf_shape']}, max_abs {m.get('max_abs_error')}, "
            f"rel_rms {m.get('rel_rms_error')}, cos {m.get('cosine')}, "
            f"own {'passed' if (d['own'] or {}).get('passed') else d['own'] and d['own']['max_abs_error']}, "
            f"note {d['note']!r}, diagnoses {[k for k, *_ in d['diagnoses']]}"
        )
    if len(bad) > limit:
        lines.append(f"  ... and {len(bad) - limit} more failing rows")
    return "\n".join(lines)


@pytest.mark.parametrize("net,bug", CASES, ids=[f"{n}-{b or 'correct'}" for n, b in CASES])
def test_converter_port(net: str, bug: str | None, record_thirdparty) -> None:
    p = load_ports(net)
    port = p.manifest["correct"]["savedmodel"] if bug is None else p.bug(bug)["savedmodel"]
    t0 = time.perf_counter()
    report = lp.compare_models(p.prototxt, p.path(port), p.input(), caffe_weights=p.caffemodel)
    seconds = time.perf_counter() - t0
    fd = report.first_divergence
    entry = {
        "net": net, "bug": bug, "seconds": seconds, "rows": len(report.rows),
        "failing_rows": sum(not r.passed for r in report.rows),
        "unmapped_tf": list(report.unmapped_tf), "unmapped_caffe": list(report.unmapped_caffe),
        "passed": bool(report), "first": fd.divergent_layer if fd else None,
        "first_row": _row_dict(fd) if fd else None,
        "kinds": [d.kind for d in fd.diagnoses] if fd else [],
        "failing": [_row_dict(r) for r in report.rows if not r.passed][:12],
        "summary": report.summary(),
    }
    if bug is None:
        record_thirdparty(entry)
        assert report and fd is None, f"{net}: the converter's correct port does not pass:\n{_describe(report)}"
        return
    b = p.bug(bug)
    entry |= {"expected_layer": b["layer"], "expected_kinds": b["kinds"],
              "layer_ok": fd is not None and fd.divergent_layer == b["layer"],
              "kind_ok": fd is not None and bool(fd.diagnoses) and fd.diagnoses[0].kind in b["kinds"]}
    record_thirdparty(entry)
    assert fd is not None, f"{net}/{bug}: no divergence found ({b['what']}):\n{_describe(report)}"
    assert fd.divergent_layer == b["layer"], (
        f"{net}/{bug}: first divergence at {fd.divergent_layer!r} (row {'+'.join(fd.caffe_chain)} vs TF "
        f"{fd.tf_layer!r}), expected {b['layer']!r} ({b['what']}):\n{_describe(report)}"
    )
    top = fd.diagnoses[0].kind if fd.diagnoses else None
    assert top in b["kinds"], (
        f"{net}/{bug}: top diagnosis {top!r} at {fd.divergent_layer!r}, expected one of {b['kinds']} "
        f"({b['what']}); all: {[(d.kind, d.confidence) for d in fd.diagnoses]}:\n{_describe(report)}"
    )

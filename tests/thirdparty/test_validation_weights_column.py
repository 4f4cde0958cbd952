"""The third-party section writer's weights column, from recorded outcomes (no ports needed)."""

from __future__ import annotations

from validation_section import BAD, OK, render, write_section

NETS = {"net_a": {"bugs": [{"name": "conv1_flip", "layer": "conv1"}, {"name": "lrn_alpha", "layer": "norm1"}]}}


def _entries(weights_ok: bool) -> list[dict]:
    problems = [] if weights_ok else [["conv2", "different"]]
    return [
        {"net": "net_a", "bug": None, "passed": True, "failing_rows": 0, "first": None, "rows": 20, "unmapped_tf": []},
        {"net": "net_a", "bug": "conv1_flip", "layer_ok": True, "kind_ok": True, "kinds": ["kernel_flipped"],
         "first": "conv1"},
        {"check": "weights", "net": "net_a", "bug": None, "counts": {"equal": 3, "folded": 4} if weights_ok else
         {"equal": 2, "folded": 4, "different": 1}, "layers": 7, "passed": weights_ok, "problems": problems},
        {"check": "weights", "net": "net_a", "bug": "conv1_flip", "counts": {}, "layers": 7, "passed": False,
         "problems": [["conv1", "equal_under:kernel_flipped"]], "weight_bug": True, "layer_ok": True, "kind_ok": True},
        {"check": "weights", "net": "net_a", "bug": "lrn_alpha", "counts": {}, "layers": 7, "passed": weights_ok,
         "problems": problems, "weight_bug": False, "layer_ok": weights_ok, "kind_ok": weights_ok},
    ]


def test_weights_column_and_summary():
    text = render(_entries(True), NETS)
    assert "weights of the correct port: equal or folded" in text
    assert "| 7 / 7 (3 equal, 4 folded) |" in text
    assert f"{OK}{OK} weights: `conv1` `equal_under:kernel_flipped`" in text
    assert "correct ports with every Caffe layer with params equal or folded: **1 / 1**" in text
    assert "only that layer named, with a right transform: **1 / 1**" in text
    assert "other bugs leaving the weights all right: **1 / 1**" in text
    # the compare summary counts compare outcomes only
    assert "1 comparisons" not in text and "2 comparisons, 3 weight checks" in text


def test_weights_failures_are_shown():
    text = render(_entries(False), NETS)
    assert f"{BAD} 6 / 7 (2 equal, 4 folded); `conv2` different" in text
    assert f"{BAD} weights (no weight edited): `conv2` different" in text
    assert "correct ports with every Caffe layer with params equal or folded: **0 / 1**" in text


def test_section_written_between_markers(tmp_path):
    doc = tmp_path / "validation.md"
    doc.write_text("# Validation\n\nzoo text\n")
    write_section(doc, _entries(True), NETS)
    write_section(doc, _entries(True), NETS)
    text = doc.read_text()
    assert text.startswith("# Validation\n\nzoo text\n") and text.count("## Third-party matrix") == 1
    assert "weights of the correct port" in text

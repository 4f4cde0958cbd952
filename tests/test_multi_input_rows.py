"""Over several inputs, each row of the table/JSON is its worst input's row, the
first-divergence row included, and meta.inputs says which input each row shows
(docs/cli.md "Several inputs", docs/report-format.md ``meta.inputs``). Real Caffe and TF."""

from __future__ import annotations

import json

import numpy as np

from layerparity import cli, demo

FILES = demo.files()


def test_every_row_is_the_worst_input_and_says_which(tmp_path, capsys):
    x = np.load(FILES.input)
    paths = []
    for name, scale in (("small", 0.25), ("big", 3.0), ("mid", 1.0)):  # the first input is NOT the worst
        p = tmp_path / f"{name}.npy"
        np.save(p, (x * scale).astype(np.float32))
        paths.append(str(p))
    code = cli.main(["compare", "--caffe-model", FILES.prototxt, "--caffe-weights", FILES.caffemodel,
                     "--tf-model", FILES.keras, *[a for p in paths for a in ("--input", p)],
                     "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert code == 1
    assert "Over 3 inputs: each row shows its worst input" in out
    data = json.loads((tmp_path / "r.json").read_text())
    inputs = data["meta"]["inputs"]
    per = inputs["per_layer"]
    fd = data["first_divergence"]
    assert fd["caffe_layer"] == demo.BUG_LAYER
    # the first-divergence row is the worst input's row there, as the docs say
    assert inputs["first_divergence_input"] == per[demo.BUG_LAYER]["shown_input"] == paths[1]
    rows = {r["caffe_layer"]: r for r in data["layers"]}
    assert rows[demo.BUG_LAYER]["max_abs_error"] == per[demo.BUG_LAYER]["max_abs_error"]["max"]
    assert fd["max_abs_error"] == per[demo.BUG_LAYER]["max_abs_error"]["max"]
    for layer, stats in per.items():
        assert stats["shown_input"] in paths
        if stats["failed_inputs"]:  # a failing input is shown, and the worst of them
            assert rows[layer]["passed"] is False
        if stats["failed_inputs"] in (0, len(paths)):
            assert rows[layer]["max_abs_error"] == stats["max_abs_error"]["max"], layer
            assert stats["shown_input"] == stats["max_abs_error"]["worst_input"], layer


def test_aggregate_takes_the_worst_of_the_inputs_that_diverge_first():
    """The library call behind it: the same first layer on every input -> the worst there."""
    from layerparity import compare_models
    from layerparity.report import aggregate_reports

    x = np.load(FILES.input)
    reports = [compare_models(FILES.prototxt, FILES.keras, (x * s).astype(np.float32),
                              caffe_weights=FILES.caffemodel) for s in (0.25, 3.0)]
    agg = aggregate_reports(reports, ["small", "big"])
    assert agg.first_divergence is reports[1].first_divergence
    i = next(i for i, r in enumerate(agg.rows) if r is agg.first_divergence)
    assert agg.rows[i] is reports[1].rows[i]
    assert agg.meta["inputs"]["first_divergence_input"] == "big"

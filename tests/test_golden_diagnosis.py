"""Golden traces and ``diff`` diagnose as well as live runs: the caffemodel's weights are
read without Caffe (layerparity.caffemodel) and given to the diagnosis, so the demo's
padding bug is confirmed (confidence 0.95) in every mode. The zoo cases are in
tests/zoo/test_zoo_golden_diagnosis.py. Real Caffe and real TF."""

from __future__ import annotations

import json
import os
import shutil
import textwrap

import numpy as np
import pytest

from layerparity import cli, demo
from layerparity.errors import ModelLoadError

pytest_plugins = ["pytester"]

FILES = demo.files()


def test_read_caffemodel_equals_what_caffe_loads(tmp_path):
    from layerparity.backends.caffe import CaffeBackend
    from layerparity.caffemodel import read_caffemodel

    mine = read_caffemodel(FILES.caffemodel)
    with CaffeBackend(FILES.prototxt, FILES.caffemodel) as cb:
        theirs = cb.weights()
    assert sorted(mine) == sorted(theirs)
    for layer, blobs in theirs.items():
        assert [b.shape for b in mine[layer]] == [b.shape for b in blobs], layer
        for a, b in zip(mine[layer], blobs, strict=True):
            np.testing.assert_array_equal(a, b)  # a copy of the stored floats: no arithmetic
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(b"\xff\xff\xff")
    with pytest.raises(ModelLoadError, match="bad.caffemodel: not a readable caffemodel"):
        read_caffemodel(bad)


def _top(json_path) -> dict:
    data = json.loads(open(json_path).read())
    row = next(r for r in data["layers"] if r["caffe_layer"] == demo.BUG_LAYER)
    return row["diagnoses"][0]


def test_diff_confirms_like_a_live_compare(tmp_path, capsys):
    d = tmp_path / "demo"
    shutil.copytree(FILES.directory, d, ignore=shutil.ignore_patterns(".*"))
    c, t = tmp_path / "c.npz", tmp_path / "t.npz"
    assert cli.main(["capture", "--caffe-model", str(d / "deploy.prototxt"), "--caffe-weights",
                     str(d / "weights.caffemodel"), "--input", str(d / "input.npy"), "-o", str(c)]) == 0
    assert cli.main(["capture", "--tf-model", str(d / "port.keras"), "--input", str(d / "input.npy"), "-o", str(t)]) == 0
    assert cli.main(["compare", "--caffe-model", str(d / "deploy.prototxt"), "--caffe-weights",
                     str(d / "weights.caffemodel"), "--tf-model", str(d / "port.keras"), "--input",
                     str(d / "input.npy"), "--json", str(tmp_path / "live.json")]) == 1
    assert cli.main(["diff", str(c), str(t), "--json", str(tmp_path / "diff.json")]) == 1
    live, diffed = _top(tmp_path / "live.json"), _top(tmp_path / "diff.json")
    assert (diffed["kind"], diffed["confidence"]) == (live["kind"], live["confidence"]) == ("padding_asymmetry", 0.95)
    assert "not confirmed" not in diffed["summary"]
    # the recorded caffemodel rewritten since the capture: not trusted, the diagnosis stays unconfirmed ...
    (d / "weights.caffemodel").write_bytes((d / "weights.caffemodel").read_bytes() + b"\x00")
    assert cli.main(["diff", str(c), str(t), "--json", str(tmp_path / "stale.json")]) == 1
    stale = _top(tmp_path / "stale.json")
    assert stale["confidence"] < 0.95 and "not confirmed" in stale["summary"]
    # ... unless the weights are given
    assert cli.main(["diff", str(c), str(t), "--caffe-weights", FILES.caffemodel,
                     "--json", str(tmp_path / "given.json")]) == 1
    assert _top(tmp_path / "given.json")["confidence"] == 0.95
    capsys.readouterr()


def test_golden_mode_confirms_like_a_live_run(pytester, monkeypatch):
    monkeypatch.setenv("GLOG_minloglevel", "2")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    pytester.makepyfile(test_port=textwrap.dedent(f"""
        import numpy as np

        def test_live(parity):
            parity.check({FILES.prototxt!r}, {FILES.keras!r}, np.load({FILES.input!r}),
                         caffe_weights={FILES.caffemodel!r})

        def test_golden(parity):
            parity.check({FILES.prototxt!r}, {FILES.keras!r}, np.load({FILES.input!r}),
                         caffe_weights={FILES.caffemodel!r}, golden="demo")
    """))
    pytester.runpytest_subprocess("-p", "no:cacheprovider", "--parity-regen").assert_outcomes(failed=2)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--parity-report", "rep")
    result.assert_outcomes(failed=2)
    assert "not confirmed" not in result.stdout.str()
    tops = {}
    for name in ("live", "golden"):
        (path,) = [p for p in (pytester.path / "rep").glob(f"*test_{name}.json")]
        tops[name] = _top(path)
    assert tops["golden"] == tops["live"]
    assert tops["golden"]["confidence"] == 0.95
    assert os.path.isfile(pytester.path / "test_port" / "demo.caffe.npz")

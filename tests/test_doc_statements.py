"""Statements of the docs that the code decides, held against the code (no frameworks):
the JSON keys report-format.md lists for ``layers[]`` and ``meta.inputs``, the diagnosis
kinds it names, pytest.md's ``meta.golden`` keys, and install.md's measurement."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from layerparity.report import aggregate_reports
from layerparity.result import LayerResult, Metrics, Report, Tolerance

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _table_keys(page: str, heading: str) -> set[str]:
    text = (DOCS / page).read_text()
    start = text.index(heading)
    rows = []
    for line in text[start:].splitlines()[1:]:
        if line.startswith("#"):
            break
        if line.startswith("| `"):
            rows.append(line)
    return {re.match(r"\| `([^`]+)`", r).group(1) for r in rows}


def _row(name: str, err: float) -> LayerResult:
    m = Metrics(max_abs_error=err, max_abs_index=(0,), max_rel_error=err, max_rel_index=(0,), mean_abs_error=err,
                rel_rms_error=err, cosine=1.0, mismatched=0, total=1, nan_mismatch=0, scale=1.0,
                min_atol=0.0, min_rtol=0.0, passed=True)
    return LayerResult(caffe_layer=name, caffe_blob=name, caffe_kind="Convolution", tf_layer=name, tf_kind="Conv2D",
                       caffe_shape=(1,), tf_shape=(1,), metrics=m, tolerance=Tolerance(1e-4, 3e-5))


def test_report_format_lists_every_layers_key():
    written = set(_row("conv1", 0.0).to_dict())
    documented = _table_keys("report-format.md", "### `layers[]`")
    assert written == documented, (written - documented, documented - written)


def test_report_format_lists_every_meta_inputs_key():
    reports = [Report(rows=[_row("conv1", e)], unmapped_caffe=[], unmapped_tf=[]) for e in (0.0, 1e-9)]
    inputs = aggregate_reports(reports, ["a", "b"]).meta["inputs"]
    assert set(inputs) == _table_keys("report-format.md", "### `meta.inputs`")
    assert set(inputs["per_layer"]["conv1"]) <= set(re.findall(r"`(\w+)`", (DOCS / "report-format.md").read_text()))


def test_report_format_names_only_real_diagnosis_kinds():
    text = (DOCS / "report-format.md").read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("| `kind` |"))
    named = set(re.findall(r"`([a-z_]+)`", line)) - {"kind"}
    headings = set(re.findall(r"^### `([a-z_]+)`", (DOCS / "diagnosis.md").read_text(), re.M))
    assert named and named <= headings, named - headings


def test_pytest_md_names_the_golden_hash_keys():
    from layerparity.pytest_plugin import golden_hashes

    keys = set(golden_hashes(None, None, np.zeros((1, 3, 2, 2), np.float32)))
    text = (DOCS / "pytest.md").read_text()
    assert all(f"`{k}`" in text for k in keys), keys
    assert "a hash per input" not in text


def test_install_md_points_at_no_missing_measurement():
    text = (DOCS / "install.md").read_text()
    assert "measured below in the README" not in text
    assert re.search(r"1\.\d-1\.\d s in three runs", text)


def _documented_options(*pages: str) -> set[str]:
    """Options and keys a page names in its inline code (``--opt ARG --other``, ``ini_key``)."""
    text = "".join((DOCS / p).read_text() for p in pages)
    spans = re.findall(r"(?<!`)`([^`\n]+)`(?!`)", text)
    return {o for span in spans for o in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", span)} | \
        {span for span in spans if re.fullmatch(r"[a-z_]+", span)}


def test_cli_md_and_sweep_md_name_every_option_of_every_command():
    import argparse

    from layerparity.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    documented = _documented_options("cli.md", "sweep.md")
    missing = {}
    for command, p in sub.choices.items():
        opts = {o for a in p._actions for o in a.option_strings if o.startswith("--") and o != "--help"}
        if opts - documented:
            missing[command] = sorted(opts - documented)
    assert not missing, f"options of the layerparity command that docs/cli.md (or sweep.md) never names: {missing}"


def test_pytest_md_names_every_option_and_ini_key_of_the_plugin():
    from layerparity import pytest_plugin

    names: list[str] = []

    class Recorder:  # what pytest_addoption declares: its option and ini names
        def getgroup(self, *a, **k):
            return self

        def addoption(self, *opts, **k):
            names.extend(opts)

        def addini(self, name, *a, **k):
            names.append(name)

    pytest_plugin.pytest_addoption(Recorder())
    assert len(names) >= 8
    missing = sorted(set(names) - _documented_options("pytest.md"))
    assert not missing, f"plugin options/ini keys docs/pytest.md never names: {missing}"

"""docs/report-format.md's JSON example is the demo's real report, abridged: every key it shows
exists in the report ``layerparity demo --json`` writes, with the value shown. Real Caffe and TF.

An abridged place is written ``"..."`` (a key, a list item or part of a string). Numbers hold
within 1% or the digits shown: the demo's conv2 max rel error is the error on a near-zero
element, and OpenBLAS's sgemm kernel for the CPU moves it from 9151.98 to 9202.51 (testing.md)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "report-format.md"
ENV = {**os.environ, "GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "2"}


def shown_example() -> dict:
    text = PAGE.read_text()
    start = text.index("### Example (the demo, abridged)")
    block = re.search(r"```json\n(.*?)\n```", text[start:], re.S)
    assert block, "report-format.md: no ```json block under 'Example (the demo, abridged)'"
    return json.loads(block.group(1))


def mismatches(shown: Any, real: Any, path: str = "$") -> list[str]:
    """Where the shown (abridged) JSON is not the real one; [] when it is."""
    if isinstance(shown, dict):
        if not isinstance(real, dict):
            return [f"{path}: shown an object, the report has {type(real).__name__}"]
        out = []
        for k, v in shown.items():
            if k == "...":
                continue
            if k not in real:
                out.append(f"{path}.{k}: not in the report (it has {sorted(real)})")
            else:
                out += mismatches(v, real[k], f"{path}.{k}")
        return out
    if isinstance(shown, list):
        if not isinstance(real, list):
            return [f"{path}: shown a list, the report has {type(real).__name__}"]
        items = [v for v in shown if v != "..."]
        if len(items) < len(shown) or (items and isinstance(items[0], dict)):
            # abridged, or objects shown by example: each shown item is some item of the report
            out = []
            for i, v in enumerate(items):
                if not any(not mismatches(v, r) for r in real):
                    best = min((mismatches(v, r, f"{path}[{i}]") for r in real), key=len, default=[f"{path}: empty"])
                    out += best or [f"{path}[{i}]: no item of the report is this one"]
            return out
        if len(shown) != len(real):
            return [f"{path}: shown {len(shown)} items, the report has {len(real)}"]
        return [m for i, (a, b) in enumerate(zip(shown, real, strict=True)) for m in mismatches(a, b, f"{path}[{i}]")]
    if isinstance(shown, str):
        if "..." in shown:
            pattern = ".*".join(re.escape(p) for p in shown.split("..."))
            ok = isinstance(real, str) and re.fullmatch(pattern, real, re.S)
        else:
            ok = shown == real
        return [] if ok else [f"{path}: shown {shown!r}, the report has {real!r}"]
    if isinstance(shown, bool) or shown is None:
        return [] if shown is real else [f"{path}: shown {shown!r}, the report has {real!r}"]
    if isinstance(shown, (int, float)):
        if isinstance(real, bool) or not isinstance(real, (int, float)):
            return [f"{path}: shown {shown!r}, the report has {real!r}"]
        digits = len(repr(float(shown)).split(".")[1].rstrip("0")) if "e" not in repr(float(shown)) else 0
        allowed = max(0.5 * 10.0 ** -digits if digits else 0.0, 1e-2 * abs(shown))
        return [] if abs(real - shown) <= allowed else [f"{path}: shown {shown!r}, the report has {real!r}"]
    return [f"{path}: cannot compare {shown!r}"]


def test_the_matcher_finds_a_stale_key_number_or_string():
    real = {"a": 9168.44, "b": [{"k": "x", "v": 0.809}, {"k": "y"}], "s": "/abs/demo/deploy.prototxt", "t": True}
    assert mismatches({"a": 9202.51, "b": [{"k": "x", "v": 0.81}], "s": ".../demo/deploy.prototxt", "...": "..."}, real) == []
    assert mismatches({"a": 9302.51}, real)  # a number 1.5% off
    assert mismatches({"b": [{"k": "x", "v": 0.9}]}, real)
    assert mismatches({"c": 1}, real)  # a key the report does not write
    assert mismatches({"s": ".../demo/port.keras"}, real)
    assert mismatches({"t": False}, real)


@pytest.fixture(scope="module")
def demo_report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("demo") / "report.json"
    p = subprocess.run([sys.executable, "-m", "layerparity.cli", "demo", "--json", str(out)], env=ENV,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr  # the demo itself succeeds (its port has a bug)
    return json.loads(out.read_text())


def test_report_format_example_is_the_demos_real_report(demo_report):
    assert mismatches(shown_example(), demo_report) == []


def test_report_format_example_shows_every_top_level_key(demo_report):
    assert set(shown_example()) == set(demo_report)


def _table_keys(heading: str) -> set[str]:
    text = PAGE.read_text()
    keys = set()
    for line in text[text.index(heading):].splitlines()[1:]:
        if line.startswith("#"):
            break
        m = re.match(r"\| `([^`]+)`", line)
        if m:
            keys.add(m.group(1))
    return keys


def test_report_format_tables_list_every_key_the_report_writes(demo_report):
    assert _table_keys("### Top level") == set(demo_report)
    assert _table_keys("### `first_divergence`") == set(demo_report["first_divergence"])

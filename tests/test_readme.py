"""The README's Usage examples run as written, on the demo's files under the README's names:
the pytest example (with the ``parity`` fixture) passes on the correct port and fails on
the buggy one with the first-divergence message; the ``assert_parity`` snippet and the
CLI line fail on the buggy port the same way (the CLI writing the HTML report)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from layerparity import demo

pytest_plugins = ["pytester"]

README = Path(__file__).resolve().parents[1] / "README.md"
NAMES = ("deploy.prototxt", "model.keras", "weights.caffemodel", "input.npy")


def usage_blocks() -> list[tuple[str, str]]:
    """(language, code) of every fenced block in the README's Usage section, in order."""
    text = README.read_text(encoding="utf-8")
    m = re.search(r"^## Usage\n(.*?)^## ", text, re.S | re.M)
    assert m, "README.md has no '## Usage' section"
    return re.findall(r"^```(\w*)\n(.*?)^```", m.group(1), re.S | re.M)


def python_blocks() -> list[str]:
    return [code for lang, code in usage_blocks() if lang == "python"]


@pytest.fixture(scope="module")
def fixed_keras(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("fixed") / "fixed.keras"
    demo.build_keras_port(demo.demo_weights(), buggy=False).save(str(p))
    return p


def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, keras: str | Path) -> Path:
    """A project folder holding the demo's files under the names the README uses."""
    monkeypatch.setenv("GLOG_minloglevel", "2")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    f = demo.files()
    for name, src in zip(NAMES, (f.prototxt, keras, f.caffemodel, f.input), strict=True):
        shutil.copyfile(src, pytester.path / name)
    return pytester.path


def test_the_first_usage_example_is_a_pytest_test_with_the_parity_fixture():
    code = python_blocks()[0]
    assert re.search(r"^def test_\w+\(parity\):", code, re.M), code
    assert "parity.check(" in code
    for name in NAMES:  # the names the tests below provide
        assert code.count(f'"{name}"') == 1, f"README example should use {name!r}"
    compile(code, "README.md", "exec")


def write_readme_test(root: Path) -> Path:
    code = python_blocks()[0]
    path_comment = re.match(r"#\s*(\S+\.py)\s*\n", code)  # "# tests/test_port.py"
    test_file = root / (path_comment.group(1) if path_comment else "test_readme_example.py")
    test_file.parent.mkdir(parents=True, exist_ok=True)
    test_file.write_text(code, encoding="utf-8")  # as written in the README
    return test_file


def test_readme_pytest_example_passes_on_the_correct_port(pytester, monkeypatch, fixed_keras):
    root = project(pytester, monkeypatch, fixed_keras)
    write_readme_test(root)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_readme_pytest_example_fails_on_the_buggy_port_at_conv2(pytester, monkeypatch):
    root = project(pytester, monkeypatch, demo.files().keras)
    write_readme_test(root)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--parity-report", "reports")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*AssertionError: Models diverge at Caffe layer 'conv2' (TF layer 'conv2')!*",
        "*Fix: *ZeroPadding2D*",
        "*Reports: *.html*",
    ])
    # the README promises an HTML report with the error chart
    (page,) = (root / "reports").glob("*.html")
    html = page.read_text(encoding="utf-8")
    assert "<svg" in html and "first divergence: conv2" in html


def test_readme_assert_parity_snippet_fails_on_the_buggy_port(pytester, monkeypatch):
    blocks = python_blocks()
    assert len(blocks) >= 2 and "assert_parity(" in blocks[1]
    root = project(pytester, monkeypatch, demo.files().keras)
    script = root / "check.py"
    script.write_text(blocks[1], encoding="utf-8")
    out = subprocess.run([sys.executable, str(script)], cwd=root, capture_output=True, text=True, timeout=600,
                         env={**os.environ})
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    assert "AssertionError: Models diverge at Caffe layer 'conv2' (TF layer 'conv2')!" in out.stderr


def test_readme_cli_line_writes_the_html_report(pytester, monkeypatch):
    shell = [code for lang, code in usage_blocks() if lang == "" and "layerparity compare" in code]
    assert shell, "README Usage should show the CLI"
    argv = shlex.split(shell[0].replace("\\\n", " "))
    assert argv[:2] == ["layerparity", "compare"] and "--html" in argv
    root = project(pytester, monkeypatch, demo.files().keras)
    out = subprocess.run([sys.executable, "-m", "layerparity.cli", *argv[1:]], cwd=root, capture_output=True,
                         text=True, timeout=600, env={**os.environ, "COLUMNS": "160"})
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]  # 1: the models diverge
    html = (root / argv[argv.index("--html") + 1]).read_text(encoding="utf-8")
    assert "first divergence: conv2" in html and 'class="tolerance"' in html

"""Renderers of a Report: plain/Rich text, JSON (stable, validated), self-contained HTML."""

from __future__ import annotations

import html
import io
import json
import math
import re
import shutil
import subprocess
import sys

import pytest

from layerparity.report import (
    ReportFormatError,
    aggregate_reports,
    format_summary,
    format_table,
    load_report,
    print_report,
    read_json,
    render_html,
    report_from_dict,
    validate_report,
    write_html,
    write_json,
)
from layerparity.report.text import status
from layerparity.result import Diagnosis, LayerResult, Metrics, Report, Tolerance


def metrics(err: float = 0.0, passed: bool = True, idx=(0, 1, 2, 3), total: int = 64, mism: int = 0) -> Metrics:
    return Metrics(
        max_abs_error=err, max_abs_index=idx, max_rel_error=err / 2, max_rel_index=idx,
        mean_abs_error=err / 4, rel_rms_error=err / 8, cosine=1.0 - err / 10, mismatched=mism, total=total,
        nan_mismatch=0, scale=2.0, min_atol=err / 2, min_rtol=err, passed=passed,
    )


def small_report() -> Report:
    tol = Tolerance(rtol=1e-4, atol=1e-5)
    rows = [
        LayerResult("conv1", "conv1", "conv1", caffe_shape=(1, 8, 4, 4), tf_shape=(1, 4, 4, 8), metrics=metrics(), own=metrics(), tolerance=tol),
        LayerResult("conv2", "conv2", "block/conv2", caffe_shape=(1, 8, 2, 2), tf_shape=(1, 2, 2, 8),
                    metrics=metrics(0.5, False, mism=32), own=metrics(0.5, False, mism=32), tolerance=tol,
                    diagnoses=[Diagnosis("padding_asymmetry", "SAME is not pad 1", "use ZeroPadding2D(1)", 0.9, {"pads": [0, 1]}),
                               Diagnosis("unknown", "no rule fits", "look closer", 0.1)]),
        LayerResult("relu2", "conv2", "block/relu2", caffe_shape=(1, 8, 2, 2), tf_shape=(1, 2, 2, 8),
                    metrics=metrics(0.25, False, mism=16), own=metrics(), tolerance=tol, contaminated_by="conv2"),
        LayerResult("ip1", "ip1", "ip1", caffe_shape=(1, 10), tf_shape=(1, 11), metrics=None,
                    note="shape mismatch: caffe (1, 10) vs tf (1, 11)"),
    ]
    return Report(rows=rows, unmapped_caffe=[], unmapped_tf=["flatten"], tolerance=tol,
                  first_divergence=rows[1], caffe_source="deploy.prototxt", tf_source="port.keras",
                  meta={"note": "hand-built"})


def big_report(n: int = 100, first: int = 60) -> Report:
    rows = [LayerResult(f"l{i}", f"l{i}", f"t{i}", caffe_shape=(1, 4), metrics=metrics(0.0 if i < first else 1.0, i < first))
            for i in range(n)]
    return Report(rows=rows, unmapped_caffe=[], unmapped_tf=[], first_divergence=rows[first])


# -- text --------------------------------------------------------------------------------


def test_plain_table_is_pinned():
    expected = """\
#  Caffe layer  TF layer     shape         max abs  max rel  cosine  mismatch  own abs  status
1  conv1        conv1        (1, 8, 4, 4)        0        0       1        0%        0  ok
2  conv2        block/conv2  (1, 8, 2, 2)      0.5     0.25    0.95       50%      0.5  FIRST
3  relu2        block/relu2  (1, 8, 2, 2)     0.25    0.125   0.975       25%        0  inherited
4  ip1          ip1          (1, 10)             -        -       -         -        -  shape"""
    assert format_table(small_report()) == expected


def test_status_words():
    r = small_report()
    assert [status(x, r) for x in r.rows] == ["ok", "FIRST", "inherited", "shape"]
    r.rows[2].own = None  # own error not measured: a plain failure
    assert status(r.rows[2], r) == "FAIL"


def test_capped_table_says_so_and_shows_the_first_divergence():
    r = big_report()
    text = format_table(r, max_rows=20)
    lines = text.splitlines()
    assert lines[1] == "... 55 rows above not shown"
    assert "... 25 rows below not shown" in lines
    assert lines[-1] == "(showing rows 56-75 of 100 (capped at 20; the JSON/HTML report has every row))"
    first_row = next(line for line in lines if line.rstrip().endswith("FIRST"))
    assert first_row.split()[:3] == ["61", "l60", "t60"]
    assert len([line for line in lines if re.match(r"^\d+ ", line)]) == 20
    assert "not shown" not in format_table(r, max_rows=None)


def test_summary_names_first_divergence_diagnosis_fix_and_unmapped():
    s = format_summary(small_report())
    assert s.splitlines()[0] == "FAIL: 3 of 4 compared layers out of tolerance"
    assert "First divergence: Caffe layer 'conv2' / TF layer 'block/conv2': max abs 0.5, max rel 0.25" in s
    assert "Diagnosis: padding_asymmetry (confidence 0.9): SAME is not pad 1" in s
    assert "Fix: use ZeroPadding2D(1)" in s
    assert "also possible: unknown" in s
    assert "Unmapped TF layers: flatten" in s


def test_rich_table_highlights_first_row_and_prints_markup_literally():
    from rich.console import Console

    r = small_report()
    r.rows[0].caffe_layer = "[bold red]conv1[/]"  # Rich markup in a name must stay text
    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, color_system="truecolor", width=200)
    print_report(r, console=console)
    out = buf.getvalue()
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out)
    assert "[bold red]conv1[/]" in plain
    first = next(line for line in out.splitlines() if "FIRST" in line)
    ok = next(line for line in out.splitlines() if "block/relu2" in line)
    assert "48;5;88m" in first and "48;5;88m" not in ok  # dark red background on the first divergent row only
    assert "First divergence: Caffe layer 'conv2'" in plain


def test_print_report_falls_back_to_plain_text_without_rich(monkeypatch, capsys):
    for mod in [m for m in sys.modules if m == "rich" or m.startswith("rich.")]:
        monkeypatch.delitem(sys.modules, mod)
    monkeypatch.setitem(sys.modules, "rich", None)  # import rich -> ImportError
    print_report(small_report())
    out = capsys.readouterr().out
    assert out.startswith(format_table(small_report()))
    assert "FAIL: 3 of 4 compared layers out of tolerance" in out


def test_long_names_are_clipped_and_newlines_shown_escaped():
    r = small_report()
    r.rows[0].caffe_layer = "model/" + "a" * 100 + "/conv1/BiasAdd\nb"
    line = format_table(r).splitlines()[1]
    assert " model/aaaaaaa~aaaaaaaaa/conv1/BiasAdd\\nb " in line and "\n" not in line


# -- JSON --------------------------------------------------------------------------------


def test_json_round_trip_is_exact(tmp_path):
    r = small_report()
    p = tmp_path / "r.json"
    write_json(r, p)
    d = read_json(p)
    assert d == json.loads(r.to_json())
    back = load_report(p)
    assert back.to_dict() == d
    assert back.first_divergence is back.rows[1]
    assert not back


def test_json_has_the_documented_keys(tmp_path):
    p = tmp_path / "r.json"
    write_json(small_report(), p)
    d = json.loads(p.read_text())
    assert d["passed"] is False
    assert set(d["first_divergence"]) >= {"caffe_layer", "tf_layer", "max_abs_error", "max_rel_error", "diagnoses"}
    assert d["first_divergence"]["diagnoses"][0] == {
        "kind": "padding_asymmetry", "summary": "SAME is not pad 1", "evidence": {"pads": [0, 1]},
        "fix": "use ZeroPadding2D(1)", "confidence": 0.9, "layer": "",
    }
    assert d["first_divergence"]["divergent_layer"] == d["first_divergence"]["caffe_layer"]
    assert [x["caffe_layer"] for x in d["layers"]] == ["conv1", "conv2", "relu2", "ip1"]
    layer = d["layers"][1]
    for k in ("caffe_layer", "caffe_blob", "tf_layer", "caffe_shape", "tf_shape", "max_abs_error",
              "max_rel_error", "cosine", "mismatched_fraction", "passed", "own_error", "chain_head",
              "divergent_layer"):
        assert k in layer
    assert d["layers"][3]["max_abs_error"] is None and d["layers"][3]["own_error"] is None
    assert d["unmapped"] == {"caffe": [], "tf": ["flatten"]}


def test_json_is_strict_even_with_nan_and_inf(tmp_path):
    r = small_report()
    r.rows[1].metrics.max_abs_error = math.inf
    r.rows[1].metrics.cosine = math.nan
    p = tmp_path / "r.json"
    write_json(r, p)

    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    d = json.loads(p.read_text(), parse_constant=refuse)
    assert d["layers"][1]["max_abs_error"] == "inf" and d["layers"][1]["cosine"] == "nan"
    assert math.isinf(load_report(p).rows[1].max_abs_error)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.pop("passed"), "'passed' is missing or not a boolean"),
        (lambda d: d.update(version=99), "report format version 99 is not supported"),
        (lambda d: d.update(format="other"), "'format' is 'other'"),
        (lambda d: d["layers"][0].pop("tf_layer"), "layers[0]: 'tf_layer' is missing or not a str"),
        (lambda d: d["layers"][1]["metrics"].update(total="x"), "layers[1].metrics: 'total' is missing or not an integer"),
        (lambda d: d["first_divergence"].update(caffe_layer="nope"), "names Caffe layer 'nope', which is not in 'layers'"),
        (lambda d: d["first_divergence"]["diagnoses"][0].pop("fix"), "first_divergence.diagnoses[0]: 'fix' is missing"),
        (lambda d: d.pop("unmapped"), "'unmapped' is missing or not an object"),
        # found by the fuzz smoke test: a divergent_layer outside its chain changed on the round trip
        (lambda d: d["layers"][1].update(divergent_layer="\U0001f600"),
         "layers[1]: 'divergent_layer' is '\U0001f600', but its caffe_chain, chain_head and top diagnosis name"),
    ],
)
def test_validation_names_the_broken_key(tmp_path, edit, message):
    d = small_report().to_dict()
    edit(d)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    with pytest.raises(ReportFormatError, match=re.escape(message)) as exc:
        read_json(p)
    assert str(p) in str(exc.value)


def test_unreadable_json_is_an_input_error(tmp_path):
    from layerparity.errors import InputError

    p = tmp_path / "x.json"
    p.write_text("{not json")
    with pytest.raises(InputError, match=re.escape(f"{p}: not a JSON report")):
        read_json(p)
    with pytest.raises(ReportFormatError, match="no such report file"):
        read_json(tmp_path / "missing.json")
    with pytest.raises(ReportFormatError, match="top level is not a JSON object"):
        validate_report([1, 2])


def test_aggregate_keeps_the_worst_input_per_layer():
    a, b = small_report(), small_report()
    b.rows[0].metrics = metrics(0.75, False, mism=3)  # input b is worse at conv1 and diverges first there
    b.first_divergence = b.rows[0]
    agg = aggregate_reports([a, b], ["a.npy", "b.npy"])
    assert agg.rows[0] is b.rows[0] and agg.first_divergence is b.rows[0]
    stats = agg.meta["inputs"]["per_layer"]["conv1"]
    assert stats["failed_inputs"] == 1
    assert stats["max_abs_error"] == {"max": 0.75, "mean": 0.375, "worst_input": "b.npy"}
    assert agg.meta["inputs"]["count"] == 2
    assert "Over 2 inputs" in format_summary(agg)
    report_from_dict(agg.to_dict())  # still valid JSON report


# -- HTML --------------------------------------------------------------------------------

PAYLOADS = [
    "<img src=x onerror=\"document.body.setAttribute('data-pwned','img')\">",
    "<script>document.body.setAttribute('data-pwned','script')</script>",
    "\"><svg onload=\"document.body.setAttribute('data-pwned','svg')\">",
    "</pre></td></table><script>document.body.setAttribute('data-pwned','close')</script>",
]


def hostile_report() -> Report:
    r = small_report()
    r.rows[0].caffe_layer = PAYLOADS[0]
    r.rows[0].tf_layer = PAYLOADS[1]
    r.rows[1].caffe_layer = PAYLOADS[2]
    r.rows[1].note = PAYLOADS[3]
    r.rows[1].diagnoses[0].summary = PAYLOADS[1]
    r.rows[1].diagnoses[0].fix = PAYLOADS[3]
    r.rows[1].diagnoses[0].evidence = {PAYLOADS[0]: PAYLOADS[3]}
    r.unmapped_tf = [PAYLOADS[2]]
    r.caffe_source = PAYLOADS[0]
    r.meta = {PAYLOADS[1]: PAYLOADS[3]}
    return r


def test_html_is_self_contained_and_escapes_every_user_string():
    page = render_html(hostile_report())
    for p in PAYLOADS:
        assert p not in page
    assert page.count("<script>") == 1  # only ours
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:|//)", page)
    assert "<link" not in page and "@import" not in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in html.unescape(page)
    assert "&lt;img src=x onerror=" in page
    assert 'id=first-divergence' in page and "padding_asymmetry" in page


def _dom(path) -> str:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    assert chromium, "chromium is installed by scripts/ensure-debs.sh (make setup)"
    out = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom", path.as_uri()],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_html_payloads_are_inert_in_a_real_browser(tmp_path):
    page = tmp_path / "report.html"
    write_html(hostile_report(), page)
    dom = _dom(page)
    assert re.search(r"<html[^>]*data-report-js=\"ok\"", dom), "the page's own script should run"
    assert not re.search(r"<body[^>]*data-pwned", dom)
    assert "&lt;script&gt;document.body.setAttribute('data-pwned','script')&lt;/script&gt;" in dom

    # control: the same payload unescaped does run in this browser, so the check above can fail
    control = tmp_path / "control.html"
    control.write_text(f"<!DOCTYPE html><html><body><p>{PAYLOADS[1]}</p></body></html>")
    assert re.search(r"<body[^>]*data-pwned=\"script\"", _dom(control))


def test_html_row_tolerance_says_atol_is_relative():
    """Issue 12 item 7: each row's tolerance line says atol is times max|caffe|, as the header does."""
    page = render_html(small_report())
    rows = re.findall(r"<div>tolerance rtol=[^<]*</div>", page)
    assert rows and all("atol=" in r and "&times; max|caffe|" in r for r in rows), rows

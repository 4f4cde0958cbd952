"""The HTML report's per-layer error chart (report/chart.py), on the demo's real report
(real Caffe vs the real Keras port with its conv2 padding bug): the SVG itself, and
a screenshot of the page in headless Chromium whose pixels are checked."""

from __future__ import annotations

import copy
import math
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import layerparity as lp
from layerparity import demo
from layerparity.report import render_html, write_html
from layerparity.report.chart import (
    COLORS,
    NAME_CHARS,
    Geometry,
    clip_name,
    error_ratio,
    render_chart,
)
from layerparity.result import Report

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def report() -> Report:
    """The demo comparison, run once for the module through the public API."""
    f = demo.files()
    demo.register_keras_objects()
    r = lp.compare_models(f.prototxt, f.keras, np.load(f.input), caffe_weights=f.caffemodel)
    assert r.first_divergence is not None and r.first_divergence.caffe_layer == demo.BUG_LAYER
    return r


def svg_of(page_or_svg: str) -> ET.Element:
    m = re.search(r"<svg\b.*?</svg>", page_or_svg, re.S)
    assert m, "no <svg> in the page"
    return ET.fromstring(m.group(0))  # well-formed XML, or this raises


def elements(root: ET.Element, cls: str) -> list[ET.Element]:
    return [el for el in root.iter() if cls in (el.get("class") or "").split()]


def centre(el: ET.Element) -> tuple[float, float]:
    if el.get("cx") is not None:
        return float(el.get("cx")), float(el.get("cy"))
    return float(el.get("data-cx")), float(el.get("data-cy"))


def geometry(root: ET.Element, n: int) -> Geometry:
    return Geometry(n=n, lo=int(root.get("data-lo")), hi=int(root.get("data-hi")))


# -- the quantity ----------------------------------------------------------------------


def test_error_ratio_is_at_most_one_exactly_for_passing_layers(report):
    seen_pass = seen_fail = 0
    for row in report.rows:
        for m in (row.metrics, row.own):
            if m is None:
                continue
            v = error_ratio(m, row.tolerance or report.tolerance)
            assert v is not None and v >= 0
            assert (v <= 1.0) == m.passed, (row.caffe_layer, v, m.passed)
            seen_pass += m.passed
            seen_fail += not m.passed
    assert seen_pass >= 5 and seen_fail >= 5
    conv2 = report.row("conv2")
    # 4.16 max abs against atol 3e-5 * max|caffe|: tens of thousands of times the tolerance
    assert 1e4 < error_ratio(conv2.metrics, report.tolerance) < 1e5
    assert error_ratio(None, report.tolerance) is None


# -- the SVG -----------------------------------------------------------------------------


def test_one_total_marker_per_row_in_graph_order_and_own_where_measured(report):
    root = svg_of(render_chart(report))
    totals = elements(root, "total")
    assert len(totals) == len(report.rows) == 10
    by_row = sorted(totals, key=lambda el: int(el.get("data-row")))
    assert [int(el.get("data-row")) for el in by_row] == list(range(len(report.rows)))
    xs = [centre(el)[0] for el in by_row]
    assert all(a < b for a, b in zip(xs, xs[1:], strict=False)), xs
    own = elements(root, "own")
    assert len(own) == sum(1 for r in report.rows if r.own is not None) >= 8
    # colours follow pass/fail; the first divergence has its own
    for el in totals:
        row = report.rows[int(el.get("data-row"))]
        kind = "first" if row is report.first_divergence else ("pass" if row.passed else "fail")
        assert kind in el.get("class").split() and el.get("fill") == COLORS[kind]
    assert sum(1 for el in totals if "fail" in el.get("class").split()) == 4  # relu2, pool2, ip1, prob


#: The SVG writes coordinates to 0.01 px: a written y is within this of the exact one.
ROUNDING = 0.005


def assert_log_scale(root: ET.Element) -> list[tuple[float, float]]:
    """Every finite total-error point within the SVG's 0.01 px rounding of its exact
    log-scale position; a higher error never lower, and strictly higher as soon as the
    exact positions are further apart than the rounding can hide. Returns (value, y)."""
    lo, hi = int(root.get("data-lo")), int(root.get("data-hi"))
    top, bottom = float(root.get("data-top")), float(root.get("data-bottom"))
    per_decade = (bottom - top) / (hi - lo)

    def exact_y(v: float) -> float:  # the log scale, clipped to the plot area
        return min(max(bottom - (math.log10(v) - lo) * per_decade, top), bottom)

    pts = [(float(el.get("data-value")), centre(el)[1]) for el in elements(root, "total")]
    pos = sorted((v, y) for v, y in pts if v > 0 and math.isfinite(v))
    for v, y in pos:  # y is linear in log10(error)
        assert abs(y - exact_y(v)) <= ROUNDING + 1e-9, (v, y, exact_y(v))
    for (v1, y1), (v2, y2) in zip(pos, pos[1:], strict=False):  # higher error, higher up (smaller y)
        assert y2 <= y1, (v1, y1, v2, y2)
        if exact_y(v1) - exact_y(v2) > 2 * ROUNDING:
            assert y2 < y1, (v1, y1, v2, y2)
    return pos


def test_y_is_a_log_scale_of_the_error(report):
    """Geometry with a tolerance for rounding only (see assert_log_scale). Not "1.0001x
    the error -> strictly higher": 1.0001x is 0.002 px here, which rounding to 0.01 px
    hides, so that test failed on a CPU whose errors fell that close."""
    root = svg_of(render_chart(report))
    pos = assert_log_scale(root)
    assert len(pos) >= 8
    lo, hi = int(root.get("data-lo")), int(root.get("data-hi"))
    per_decade = (float(root.get("data-bottom")) - float(root.get("data-top"))) / (hi - lo)
    # the points span the plot: the rule is not vacuous
    assert (math.log10(pos[-1][0]) - math.log10(pos[0][0])) * per_decade > 100
    # the decades span the data: the worst error (conv2, ~2.7e4) in the top decade
    assert int(root.get("data-hi")) == 5 and int(root.get("data-lo")) <= -2
    # an exact zero (the input layer 'data') sits on the bottom edge
    data = next(el for el in elements(root, "total") if el.get("data-row") == "0")
    assert float(data.get("data-value")) == 0.0 and centre(data)[1] == float(root.get("data-bottom"))


def test_errors_closer_than_a_pixel_rounding_keep_their_order_and_others_stay_strict(report):
    """What another CPU's rounding does: two layers whose errors are 1.0002x apart (0.003 px)
    share a rounded y; one 1.1x apart (1.5 px) must still be drawn strictly higher."""
    import dataclasses

    r = copy.deepcopy(report)
    base = r.rows[6]  # relu2, failing: ~2e4 x the tolerance
    for i, factor in ((7, 1.0002), (8, 1.1)):
        m = base.metrics
        r.rows[i].metrics = dataclasses.replace(m, max_abs_error=m.max_abs_error * factor, min_atol=m.min_atol * factor)
        r.rows[i].tolerance = base.tolerance
    root = svg_of(render_chart(r))
    ys = {int(el.get("data-row")): centre(el)[1] for el in elements(root, "total")}
    assert ys[7] <= ys[6] and ys[6] - ys[7] <= 2 * ROUNDING + 1e-9  # within rounding: not provably apart
    assert ys[8] < ys[7] - 1  # clearly higher error, clearly higher up
    assert_log_scale(root)


def test_tolerance_line_is_at_one_and_separates_passing_from_failing(report):
    root = svg_of(render_chart(report))
    (line,) = elements(root, "tolerance")
    ty = float(line.get("y1"))
    assert float(line.get("y2")) == ty and line.get("stroke") == COLORS["tolerance"]
    assert ty == round(geometry(root, len(report.rows)).y(1.0))
    ytick_one = next(t for t in elements(root, "ytick") if t.text == "1")
    assert float(ytick_one.get("y")) - 4 == pytest.approx(ty, abs=0.5)
    assert float(line.get("x1")) == float(root.get("data-x0")) and float(line.get("x2")) == float(root.get("data-x1"))
    for el in elements(root, "total"):
        row = report.rows[int(el.get("data-row"))]
        _, y = centre(el)
        assert (y > ty) if row.passed else (y < ty), (row.caffe_layer, y, ty)


def test_first_divergence_is_marked_on_its_layer(report):
    root = svg_of(render_chart(report))
    (first,) = elements(root, "first")
    i = report.rows.index(report.first_divergence)
    assert report.rows[i].caffe_layer == "conv2" and int(first.get("data-row")) == i == 5
    cx, cy = centre(first)
    assert first.get("fill") == COLORS["first"] and float(first.get("r")) > max(float(c.get("r")) for c in elements(root, "total") if c is not first)
    (vline,) = elements(root, "first-line")
    assert float(vline.get("x1")) == cx == float(vline.get("x2"))
    (label,) = elements(root, "first-label")
    assert label.text == "first divergence: conv2" and label.get("fill") == COLORS["first"]
    tick = next(t for t in elements(root, "xtick") if t.get("data-row") == str(i))
    assert tick.text == "conv2" and tick.get("fill") == COLORS["first"]
    # every passing point is left of it, every other failing one right of it
    for el in elements(root, "total"):
        x = centre(el)[0]
        if "pass" in el.get("class").split():
            assert x < cx
        elif "fail" in el.get("class").split():
            assert x > cx


def test_names_are_escaped_clipped_and_shape_rows_sit_in_the_top_band(report):
    r = copy.deepcopy(report)
    bad = "<script>alert(1)</script>"
    r.rows[1].caffe_layer, r.rows[1].caffe_chain = bad, [bad]
    r.rows[2].tf_layer = "\"><img src=x onerror=alert(2)>"
    long = "model/" + "a" * 80 + "/conv1/BiasAdd"
    r.rows[3].caffe_layer, r.rows[3].caffe_chain = long, [long]
    r.rows[5].caffe_layer, r.rows[5].caffe_chain = bad + "2", [bad + "2"]  # the first divergence
    r.rows[8].metrics = None  # shape mismatch
    r.rows[8].note = "shape mismatch: caffe (1, 10) vs tf (1, 11)"
    page = render_html(r)
    assert bad not in page and "alert(1)</script>" not in page and "<img src=x" not in page
    assert page.count("<script>") == 1  # only the page's own
    svg_text = re.search(r"<svg\b.*?</svg>", page, re.S).group(0)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in svg_text
    root = svg_of(page)
    ticks = {int(t.get("data-row")): t.text for t in elements(root, "xtick")}
    assert ticks[1] == clip_name(bad) == "<script>~ert(1)</script>"  # 25 characters: clipped to 24
    assert len(ticks[3]) == NAME_CHARS
    assert ticks[3].startswith("model/") and ticks[3].endswith("/conv1/BiasAdd") and "~" in ticks[3]
    (label,) = elements(root, "first-label")
    assert label.text == "first divergence: " + bad + "2"
    titles = [t.text for t in root.iter(f"{SVG}title")]
    assert any("#2 <script>alert(1)</script> -> conv1" in t for t in titles if t)  # full name in the tooltip (as text)
    shape = next(el for el in elements(root, "total") if el.get("data-row") == "8")
    assert "nometrics" in shape.get("class").split() and el_tag(shape) == "path"
    assert centre(shape)[1] < float(root.get("data-top"))  # above the plot, in the band
    assert "n/a, inf" in svg_text


def el_tag(el: ET.Element) -> str:
    return el.tag.replace(SVG, "")


def test_many_layers_thin_and_rotate_the_labels_but_keep_the_first_divergence(report):
    base = report.rows[1]
    rows = []
    for i in range(300):
        r = copy.deepcopy(base)
        r.caffe_layer, r.caffe_chain = f"block{i}/conv", [f"block{i}/conv"]
        rows.append(r)
    rows[137] = copy.deepcopy(report.rows[5])
    rows[137].caffe_layer, rows[137].caffe_chain = "block137/conv", ["block137/conv"]
    big = Report(rows=rows, unmapped_caffe=[], unmapped_tf=[], tolerance=report.tolerance, first_divergence=rows[137])
    root = svg_of(render_chart(big))
    assert len(elements(root, "total")) == 300
    ticks = elements(root, "xtick")
    assert 20 <= len(ticks) <= 80
    assert any(t.get("data-row") == "137" and t.get("fill") == COLORS["first"] for t in ticks)
    assert all("rotate(-45)" in (t.get("transform") or "") for t in ticks)
    # the short demo names fit horizontally
    assert all(t.get("transform") is None for t in elements(svg_of(render_chart(report)), "xtick"))


def test_no_rows_no_chart():
    empty = Report(rows=[], unmapped_caffe=[], unmapped_tf=[])
    assert render_chart(empty) == "" and "<svg" not in render_html(empty)


# -- in a real browser ---------------------------------------------------------------------


def chromium(tmp_path, page, *args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("chromium") or "/usr/bin/chromium"
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run",
           f"--user-data-dir={tmp_path / 'chromium-profile'}", *args, page.as_uri()]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return out


def near(px: tuple[int, ...], hexcol: str, tol: int = 10) -> bool:
    want = tuple(int(hexcol[i:i + 2], 16) for i in (1, 3, 5))
    return all(abs(a - b) <= tol for a, b in zip(px[:3], want, strict=True))


def test_screenshot_shows_the_tolerance_line_and_the_first_divergence(report, tmp_path):
    from PIL import Image

    page = tmp_path / "report.html"
    write_html(report, page)
    shot = tmp_path / "shot.png"
    chromium(tmp_path, page, "--hide-scrollbars", "--force-device-scale-factor=1",
             f"--screenshot={shot}", "--window-size=1200,1000")
    img = Image.open(shot).convert("RGB")
    W, H = img.size
    px = img.load()
    root = svg_of(page.read_text())
    x0, x1 = float(root.get("data-x0")), float(root.get("data-x1"))
    top, bottom = float(root.get("data-top")), float(root.get("data-bottom"))
    ty = float(elements(root, "tolerance")[0].get("y1"))

    # 1. the tolerance line: the first pixel row that is mostly its colour, across the plot width
    best = (0, 0, 0, 0)  # pixels of the colour, row, first and last column
    for y in range(H):
        xs = [x for x in range(W) if near(px[x, y], COLORS["tolerance"])]
        if len(xs) > best[0]:
            best = (len(xs), y, xs[0], xs[-1])
    count, line_row, line_start, line_end = best
    span = line_end - line_start + 1
    assert abs(span - (x1 - x0)) <= 3, f"tolerance line spans {span}px, the plot is {x1 - x0}px wide"
    assert count >= 0.95 * span, f"only {count} of {span} pixels have the tolerance colour"
    # where the SVG sits in the screenshot (the 2px line covers rows ty-1 and ty)
    offx, offy = line_start - x0, line_row - (ty - 1)
    assert 0 <= offx < 200 and 100 < offy < H - bottom, (offx, offy)

    def colour_at(x: float, y: float, hexcol: str, r: int = 1) -> bool:
        cx, cy = round(x + offx), round(y + offy)
        return sum(near(px[cx + dx, cy + dy], hexcol) for dx in range(-r, r + 1) for dy in range(-r, r + 1)) >= (2 * r + 1) ** 2 - 2

    # 2. the first-divergence marker is drawn in its colour where the SVG puts it, above the line
    (first,) = elements(root, "first")
    fx, fy = centre(first)
    assert colour_at(fx, fy, COLORS["first"], r=2), "no first-divergence marker at conv2"
    assert fy + offy < line_row - 50  # far above the tolerance line: ~2.7e4 x the tolerance
    # 3. every other point has its pass/fail colour at its place
    for el in elements(root, "total"):
        if "first" in el.get("class").split():
            continue
        kind = "pass" if "pass" in el.get("class").split() else "fail"
        x, y = centre(el)
        assert colour_at(x, y, COLORS[kind]), (el.get("data-row"), kind)

    # 4. within the plot area: the marker colour is right of every passing (green) pixel,
    #    passing pixels are below the tolerance line, failing (red) ones above it
    purple, green, red = [], [], []
    for y in range(int(top + offy) - 8, int(bottom + offy) + 6):
        for x in range(int(x0 + offx), int(x1 + offx) + 1):
            p = px[x, y]
            if near(p, COLORS["first"], 6):
                purple.append((x, y))
            elif near(p, COLORS["pass"], 6):
                green.append((x, y))
            elif near(p, COLORS["fail"], 6):
                red.append((x, y))
    assert len(purple) > 60 and len(green) > 60 and len(red) > 60, (len(purple), len(green), len(red))
    assert min(x for x, _ in purple) > max(x for x, _ in green)
    assert max(y for _, y in green) > line_row and min(y for _, y in green) > line_row
    marker = [(x, y) for x, y in purple if abs(x - (fx + offx)) <= 8]
    assert marker and max(y for _, y in marker) < line_row
    assert max(y for _, y in red) < line_row and min(x for x, _ in red) > fx + offx - 12

    # control: without the chart the same page has none of these colours in that area
    bare = tmp_path / "bare.html"
    bare.write_text(page.read_text().replace(re.search(r"<svg\b.*?</svg>", page.read_text(), re.S).group(0), ""))
    shot2 = tmp_path / "bare.png"
    chromium(tmp_path, bare, "--hide-scrollbars", "--force-device-scale-factor=1", f"--screenshot={shot2}", "--window-size=1200,1000")
    img2 = Image.open(shot2).convert("RGB")
    px2 = img2.load()
    assert not any(near(px2[x, y], COLORS["first"]) or near(px2[x, y], COLORS["tolerance"])
                   for y in range(0, img2.size[1], 2) for x in range(0, img2.size[0], 2))


def test_hostile_names_in_the_chart_stay_inert_in_a_browser(report, tmp_path):
    r = copy.deepcopy(report)
    payload = "<img src=x onerror=\"document.body.setAttribute('data-pwned','chart')\">"
    for i in (2, 5):  # a plain point and the first divergence (its label)
        r.rows[i].caffe_layer, r.rows[i].caffe_chain = payload, [payload]
    page = tmp_path / "hostile.html"
    write_html(r, page)
    dom = chromium(tmp_path, page, "--dump-dom").stdout
    assert re.search(r"<html[^>]*data-report-js=\"ok\"", dom), "the page's own script should run"
    assert "<svg" in dom and "first divergence: &lt;img src=x" in dom
    assert not re.search(r"<body[^>]*data-pwned", dom)

"""The per-layer error chart of the HTML report: inline SVG built here (no script, no assets).

x: the compared layers in Caffe graph order (``report.rows``); y, log scale: each
layer's worst error **relative to its tolerance** (:func:`error_ratio`), so the
tolerance is the horizontal line at 1 for every layer, whatever its magnitude.
A filled dot is the total error (green within tolerance, red out of it), a hollow
square in a lighter green/red the own error (the TF layer fed the Caffe input)
where it was measured.
The first divergent layer is purple, with a vertical line and a label. Rows
without metrics (shapes could not be reconciled) and infinite errors (NaN/Inf
on one side) are a cross in the band above the plot; an exact zero sits on the
bottom edge.

Every layer name comes from a model file: it is escaped like the rest of the
page, clipped on the axis (the full name is in the marker's tooltip).

>>> from layerparity.result import Report
>>> render_chart(Report(rows=[], unmapped_caffe=[], unmapped_tf=[]))
''
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any

from .. import formatting
from ..formatting import fmt_num
from ..result import LayerResult, Metrics, Report, Tolerance

__all__ = ["render_chart", "error_ratio", "chart_points", "COLORS", "Geometry"]

#: Colours of the chart (the screenshot test looks for them). Purple and orange
#: are used nowhere else on the page.
COLORS = {
    "pass": "#1a7f37",
    "fail": "#cf222e",
    "first": "#8250df",
    "tolerance": "#bc4c00",
    "own_pass": "#4ac26b",  # the own-error squares: lighter than the total-error dots
    "own_fail": "#ff8182",
    "line": "#8c959f",
    "grid": "#eaeef2",
    "axis": "#57606a",
}
NAME_CHARS = 24  # axis labels longer than this keep their start and end around a "~"
_CHAR_W = 6.3  # approximate advance of an 11px system-ui character


def _esc(x: Any) -> str:
    """Escape for SVG/HTML text and quoted attributes (C0 controls, invalid in XML, dropped)."""
    s = "".join(ch if ch >= " " or ch in "\n\t" else "\ufffd" for ch in str(x))
    return html.escape(s, quote=True)


def clip_name(s: str, width: int = NAME_CHARS) -> str:
    """A layer name cut to ``width`` characters, both ends kept (the text report's rule)."""
    return formatting.clip_name(s, width)


def error_ratio(m: Metrics | None, tol: Tolerance | None) -> float | None:
    """A layer's worst error divided by what its tolerance allows: ``<= 1`` exactly when it passes.

    ``max(min_atol / atol, max_abs_error / (atol*scale + rtol*max|caffe|))``: the
    first term (the smallest passing atol in units of the allowed one) is above 1
    exactly for a failing layer; for a passing one both terms are lower bounds of
    the elementwise ``max |tf - caffe| / (atol*scale + rtol*|caffe|)``, the second
    keeping float noise visible where rtol alone absorbs it. With ``atol == 0``
    it is ``min_rtol / rtol``. ``None`` without metrics, ``inf`` for NaN/Inf
    mismatches. Without a tolerance: ``max_abs_error`` (no normalisation).
    """
    if m is None:
        return None
    if tol is None:
        return float(m.max_abs_error)
    if m.nan_mismatch or math.isinf(m.max_abs_error) or math.isnan(m.max_abs_error):
        return math.inf
    scale = m.scale if math.isfinite(m.scale) and m.scale > 0 else 1.0
    if tol.atol > 0:
        need = m.min_atol / tol.atol
    elif tol.rtol > 0:
        need = m.min_rtol / tol.rtol
    else:
        return math.inf if m.max_abs_error > 0 else 0.0
    allowed = tol.atol * (scale if tol.relative_atol else 1.0) + tol.rtol * scale
    noise = m.max_abs_error / allowed if allowed > 0 else 0.0
    v = max(need, noise)
    return math.inf if math.isnan(v) else float(v)


@dataclass
class Point:
    index: int  # row index (Caffe graph order)
    row: LayerResult
    total: float | None  # error_ratio of the total error (None: no metrics)
    own: float | None  # of the own error (None: not measured)
    passed: bool
    first: bool


def chart_points(report: Report) -> list[Point]:
    """One point per row, in graph order."""
    fd = report.first_divergence
    out = []
    for i, r in enumerate(report.rows):
        tol = r.tolerance or report.tolerance
        out.append(Point(i, r, error_ratio(r.metrics, tol), error_ratio(r.own, tol) if r.own is not None else None,
                         r.passed, r is fd))
    return out


@dataclass
class Geometry:
    """Where things are, in SVG user units (== CSS px: the SVG has no scaling viewBox)."""

    n: int
    lo: int  # bottom decade (log10)
    hi: int  # top decade
    width: float = 960.0
    left: float = 66.0
    right: float = 24.0
    band_y: float = 44.0  # the "no metrics / inf" band
    top: float = 62.0  # plot area top
    plot_h: float = 260.0

    @property
    def x0(self) -> float:
        return self.left

    @property
    def x1(self) -> float:
        return self.width - self.right

    @property
    def bottom(self) -> float:
        return self.top + self.plot_h

    @property
    def step(self) -> float:
        return (self.x1 - self.x0) / max(self.n, 1)

    def x(self, i: int) -> float:
        return round(self.x0 + self.step * (i + 0.5), 2)

    def y(self, v: float | None) -> float:
        """Log scale; zero and values below the bottom decade on the bottom edge; None/inf/NaN in the band."""
        if v is None or math.isnan(v) or math.isinf(v):
            return self.band_y
        if v <= 0:
            return self.bottom
        t = (math.log10(v) - self.lo) / (self.hi - self.lo)
        return round(self.bottom - min(max(t, 0.0), 1.0) * self.plot_h, 2)


def _decades(values: list[float], normalised: bool) -> tuple[int, int]:
    finite = [v for v in values if v > 0 and math.isfinite(v)]
    anchor = [1e-2, 1e1] if normalised else []  # keep the tolerance line (1) well inside
    pool = finite + anchor or [1e-6, 1.0]
    # within float range (10.0**309 overflows): larger ratios sit on the top edge
    lo = min(max(math.floor(math.log10(min(pool))), -300), 299)
    hi = min(math.ceil(math.log10(max(pool))), 300)
    if hi <= lo:
        hi = lo + 1
    if hi - lo > 16:  # very small noise: keep 16 decades, the rest sits on the bottom edge
        lo = hi - 16
    return lo, hi


def _decade_label(k: int) -> str:
    return {-2: "0.01", -1: "0.1", 0: "1", 1: "10", 2: "100"}.get(k, f"1e{k}")


def _name(row: LayerResult) -> str:
    return "+".join(row.caffe_chain) if len(row.caffe_chain) > 1 else row.caffe_layer


def _tip(p: Point) -> str:
    r = p.row
    lines = [f"#{p.index + 1} {_name(r)} -> {r.tf_layer}"]
    if r.metrics is None:
        lines.append(r.note or "no metrics")
    else:
        lines.append(f"total: error/tolerance {fmt_num(p.total)}, max abs {fmt_num(r.metrics.max_abs_error)}")
    if r.own is not None:
        lines.append(f"own: error/tolerance {fmt_num(p.own)}, max abs {fmt_num(r.own.max_abs_error)}")
    lines.append("first divergence" if p.first else ("within tolerance" if p.passed else "out of tolerance"))
    return "<title>" + _esc("\n".join(lines)) + "</title>"


def render_chart(report: Report) -> str:
    """The chart as one ``<svg>`` element (well-formed XML), or ``""`` for a report without rows."""
    pts = chart_points(report)
    if not pts:
        return ""
    normalised = any((r.tolerance or report.tolerance) is not None for r in report.rows)
    values = [v for p in pts for v in (p.total, p.own) if v is not None]
    lo, hi = _decades(values, normalised)
    g = Geometry(n=len(pts), lo=lo, hi=hi)
    C = COLORS

    # x labels: horizontal when they fit, else rotated by 45 degrees (then one label per
    # 19px at most, so neighbours do not overlap, and room on the left for the first one)
    labels = [clip_name(_name(p.row)) for p in pts]
    longest = max(len(s) for s in labels) * _CHAR_W
    rotate = longest > g.step - 6
    every = 1
    if rotate:
        g.left = max(g.left, longest * 0.71 - g.step / 2 + 8)
        every = max(1, math.ceil(19.0 / g.step))
    label_h = longest * 0.71 + 14 if rotate else 18
    height = g.bottom + 16 + label_h + 22

    o: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="error-chart" width="{g.width:g}" height="{height:.0f}" '
        f'viewBox="0 0 {g.width:g} {height:.0f}" role="img" aria-label="error per layer, relative to the tolerance" '
        f'font-size="11" font-family="system-ui,-apple-system,Segoe UI,Roboto,sans-serif" '
        f'data-lo="{lo}" data-hi="{hi}" data-top="{g.top:g}" data-bottom="{g.bottom:g}" data-x0="{g.x0:g}" data-x1="{g.x1:g}">'
    ]
    # grid and y axis (decades)
    k_every = 1 if hi - lo <= 10 else 2
    for k in range(lo, hi + 1):
        y = g.y(10.0**k)
        o.append(f'<line class="grid" x1="{g.x0:g}" x2="{g.x1:g}" y1="{y:g}" y2="{y:g}" stroke="{C["grid"]}"/>')
        if (k - lo) % k_every == 0:
            o.append(f'<text class="ytick" x="{g.x0 - 6:g}" y="{y + 4:g}" text-anchor="end" fill="{C["axis"]}">{_decade_label(k)}</text>')
    o.append(f'<line x1="{g.x0:g}" x2="{g.x0:g}" y1="{g.top:g}" y2="{g.bottom:g}" stroke="{C["axis"]}"/>')
    o.append(f'<line x1="{g.x0:g}" x2="{g.x1:g}" y1="{g.bottom:g}" y2="{g.bottom:g}" stroke="{C["axis"]}"/>')
    ytitle = "error \u00f7 tolerance (log)" if normalised else "max abs error (log)"
    cy = (g.top + g.bottom) / 2
    o.append(f'<text class="ytitle" transform="translate(14 {cy:g}) rotate(-90)" text-anchor="middle" fill="{C["axis"]}">{ytitle}</text>')
    # the band for rows without a finite value (only when one is there)
    banded = any(p.total is None or not math.isfinite(p.total) for p in pts) or any(
        p.own is not None and not math.isfinite(p.own) for p in pts)
    if banded:
        o.append(f'<text x="{g.x0 - 6:g}" y="{g.band_y + 4:g}" text-anchor="end" fill="{C["axis"]}">n/a, inf</text>')
        o.append(f'<line x1="{g.x0:g}" x2="{g.x1:g}" y1="{g.band_y:g}" y2="{g.band_y:g}" stroke="{C["grid"]}" stroke-dasharray="2 4"/>')

    # first divergence: vertical line and label (behind the points)
    fd = next((p for p in pts if p.first), None)
    if fd is not None:
        x = g.x(fd.index)
        o.append(f'<line class="first-line" x1="{x:g}" x2="{x:g}" y1="{g.band_y - 8:g}" y2="{g.bottom:g}" stroke="{C["first"]}" stroke-opacity="0.45" stroke-dasharray="4 3"/>')
        right = x < g.x0 + 0.7 * (g.x1 - g.x0)
        lx = x + 10 if right else x - 10
        o.append(
            f'<text class="first-label" x="{lx:g}" y="{g.top + 14:g}" text-anchor="{"start" if right else "end"}" '
            f'fill="{C["first"]}" font-weight="700" stroke="#fff" stroke-width="3" paint-order="stroke">'
            f'first divergence: {_esc(clip_name(_name(fd.row), 40))}</text>'
        )

    # the total error as a line through the finite points (broken at gaps)
    run: list[str] = []
    for p in pts + [None]:  # type: ignore[list-item]
        if p is not None and p.total is not None and math.isfinite(p.total):
            run.append(f"{g.x(p.index):g},{g.y(p.total):g}")
            continue
        if len(run) > 1:
            o.append(f'<polyline class="total-line" points="{" ".join(run)}" fill="none" stroke="{C["line"]}" stroke-width="1.25"/>')
        run = []

    # tolerance line (over the lines, under the points): 2px, on whole pixels so it renders in its exact colour
    if normalised:
        ty = round(g.y(1.0))
        o.append(f'<line class="tolerance" x1="{g.x0:g}" x2="{g.x1:g}" y1="{ty}" y2="{ty}" stroke="{C["tolerance"]}" stroke-width="2"/>')
        o.append(f'<text x="{g.x1 - 4:g}" y="{ty - 6}" text-anchor="end" fill="{C["tolerance"]}">tolerance</text>')

    r = max(2.0, min(4.5, g.step * 0.3))
    # own error: hollow squares around the dots
    for p in pts:
        if p.own is None:
            continue
        h = r + 2.5
        x, y = g.x(p.index), g.y(p.own)
        col = C["own_pass"] if p.row.own_passed else C["own_fail"]
        o.append(
            f'<rect class="pt own {"pass" if p.row.own_passed else "fail"}" data-row="{p.index}" data-value="{p.own!r}" '
            f'x="{x - h:g}" y="{y - h:g}" width="{2 * h:g}" height="{2 * h:g}" fill="none" stroke="{col}" stroke-width="1.5">{_tip(p)}</rect>'
        )
    # total error: one marker per row, the first divergence last (on top)
    for p in sorted(pts, key=lambda p: p.first):
        x, y = g.x(p.index), g.y(p.total)
        kind = "first" if p.first else ("pass" if p.passed else "fail")
        col = C[kind]
        attrs = f'data-row="{p.index}" data-value="{p.total!r}"'
        if p.total is None or not math.isfinite(p.total):  # no metrics / infinite: a cross in the band
            d = r + 1.5
            o.append(
                f'<path class="pt total {kind} nometrics" {attrs} data-cx="{x:g}" data-cy="{y:g}" '
                f'd="M{x - d:g} {y - d:g}L{x + d:g} {y + d:g}M{x - d:g} {y + d:g}L{x + d:g} {y - d:g}" '
                f'stroke="{col}" stroke-width="{3 if p.first else 2}">{_tip(p)}</path>'
            )
        else:
            rr = r + 2.5 if p.first else r
            o.append(f'<circle class="pt total {kind}" {attrs} cx="{x:g}" cy="{y:g}" r="{rr:g}" fill="{col}">{_tip(p)}</circle>')

    # x labels
    for p, text in zip(pts, labels, strict=True):
        if not p.first and (p.index % every or (fd is not None and 0 < abs(p.index - fd.index) < every)):
            continue  # thinned; the first divergence always keeps its label, its neighbours make room
        x, y = g.x(p.index), g.bottom + 20  # below the squares on the bottom edge
        extra = f' fill="{C["first"]}" font-weight="700"' if p.first else f' fill="{C["axis"]}"'
        if rotate:
            o.append(f'<text class="xtick" data-row="{p.index}" transform="translate({x + 3:g} {y - 4:g}) rotate(-45)" text-anchor="end"{extra}>{_esc(text)}</text>')
        else:
            o.append(f'<text class="xtick" data-row="{p.index}" x="{x:g}" y="{y:g}" text-anchor="middle"{extra}>{_esc(text)}</text>')
    o.append(f'<text x="{(g.x0 + g.x1) / 2:g}" y="{height - 6:.0f}" text-anchor="middle" fill="{C["axis"]}">Caffe layers, graph order'
             + (f" (one label every {every} layers)" if every > 1 else "") + "</text>")

    # legend
    lx = g.x0
    items = [("dot", C["pass"], "within tolerance"), ("dot", C["fail"], "out of tolerance"),
             ("dot", C["first"], "first divergence"), ("square", C["axis"], "own error (TF layer on the Caffe input)")]
    if banded:
        items.append(("cross", C["fail"], "no metrics / infinite"))
    if normalised:
        items.insert(3, ("line", C["tolerance"], "tolerance"))
    for shape, col, text in items:
        y = 14
        if shape == "dot":
            o.append(f'<circle cx="{lx + 5:g}" cy="{y:g}" r="4.5" fill="{col}"/>')
        elif shape == "square":
            o.append(f'<rect x="{lx:g}" y="{y - 5:g}" width="10" height="10" fill="none" stroke="{col}" stroke-width="1.5"/>')
        elif shape == "line":
            o.append(f'<line x1="{lx - 2:g}" x2="{lx + 12:g}" y1="{y:g}" y2="{y:g}" stroke="{col}" stroke-width="2"/>')
        else:
            o.append(f'<path d="M{lx + 1:g} {y - 4:g}L{lx + 9:g} {y + 4:g}M{lx + 1:g} {y + 4:g}L{lx + 9:g} {y - 4:g}" stroke="{col}" stroke-width="2"/>')
        o.append(f'<text x="{lx + 16:g}" y="{y + 4:g}" fill="{C["axis"]}">{_esc(text)}</text>')
        lx += 16 + len(text) * 5.6 + 16
    o.append("</svg>")
    return "".join(o)

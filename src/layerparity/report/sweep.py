"""Renderers of a sweep's result (:class:`~layerparity.sweeper.runner.SweepResult`): JSON, HTML, text.

The JSON (``format: "layerparity-sweep"``) is documented in docs/report-format.md
(section "Sweep"); :func:`validate_sweep` checks what the documentation promises.
The HTML page is self-contained like the single-input report: the verdict, the
first-divergence histogram, the failure groups with their first example's
diagnosis, the per-layer error distributions (an inline SVG on the axes of the
single-input chart: error over tolerance, log scale, the tolerance line at 1),
the per-layer table, the worst inputs and the errors. Every name is escaped.

>>> validate_sweep({"format": "layerparity-report"})
Traceback (most recent call last):
...
layerparity.errors.ReportFormatError: sweep JSON: 'format' is not 'layerparity-sweep'
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from ..atomic_write import write_text
from ..errors import ReportFormatError
from .chart import COLORS, Geometry, clip_name
from .html import e
from .text import fmt_num

__all__ = ["sweep_to_dict", "write_sweep_json", "read_sweep_json", "validate_sweep", "render_sweep_html",
           "write_sweep_html", "format_sweep_summary", "SWEEP_FORMAT", "SWEEP_VERSION"]

SWEEP_FORMAT = "layerparity-sweep"
SWEEP_VERSION = 1


def sweep_to_dict(result: Any) -> dict[str, Any]:
    """The JSON form of a SweepResult (strict JSON: non-finite numbers are the strings "nan", "inf", "-inf")."""
    c = result.counts
    d = {
        "format": SWEEP_FORMAT,
        "version": SWEEP_VERSION,
        "passed": result.passed,
        "interrupted": result.interrupted,
        "mode": result.mode,
        "caffe_source": result.caffe_source,
        "tf_source": result.tf_source,
        "tolerance": result.tolerance.to_dict() if result.tolerance is not None else None,
        "inputs": {
            "total": result.total,
            "completed": c["completed"],
            "passed": c["passed"],
            "failed": c["failed"],
            "errors": c["errors"],
            "full_comparisons": c["full"],
            "screen_failed": c["screen_failed"],
            "screen_failed_then_passed": c["screen_failed_passed"],
            "sample": list(result.sample),
            "batch": result.batch,
        },
        "outputs": [{"caffe_layer": a, "tf_layer": b} for a, b in result.outputs],
        "first_divergence_histogram": [{"caffe_layer": g.caffe_layer, "tf_layer": g.tf_layer, "count": g.count}
                                       for g in result.failures],
        "failures": [g.to_dict() for g in result.failures],
        "errors": {"count": c["errors"], "rows": [r.to_dict() for r in result.errors],
                   "more": c["errors"] - len(result.errors)},
        "layers": [lay.to_dict() for lay in result.layers],
        "worst_inputs": list(result.worst_inputs),
        "run": {"seconds": result.seconds, "inputs_per_second": c["completed"] / result.seconds if result.seconds else None,
                "executor": result.executor, "workers": result.workers},
        "sketch": {"kind": "ddsketch", "relative_accuracy": result.relative_accuracy},
        "notes": list(result.notes),
        "coverage_problem": result.coverage_problem,
    }
    return _safe(d)


def _safe(x: Any) -> Any:
    """Plain JSON values: NaN/Inf as strings, NumPy scalars and tuples as Python ones."""
    if isinstance(x, dict):
        return {str(k): _safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_safe(v) for v in x]
    if hasattr(x, "item") and hasattr(x, "dtype"):
        x = x.item() if getattr(x, "ndim", 0) == 0 else x.tolist()
        return _safe(x)
    if isinstance(x, float) and not math.isfinite(x):
        return "nan" if math.isnan(x) else "inf" if x > 0 else "-inf"
    return x


def write_sweep_json(result: Any, path: str | os.PathLike[str]) -> None:
    write_text(path, json.dumps(sweep_to_dict(result), indent=1, ensure_ascii=False, allow_nan=False) + "\n")


def read_sweep_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a sweep JSON file."""
    p = os.fspath(path)
    try:
        with open(p, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, ValueError) as err:
        raise ReportFormatError(f"{p}: not a readable sweep JSON file ({err})") from None
    validate_sweep(d, where=p)
    return d


def _num(x: Any) -> bool:
    return (isinstance(x, (int, float)) and not isinstance(x, bool)) or x in ("nan", "inf", "-inf")


def validate_sweep(d: Any, where: str = "sweep JSON") -> None:
    """Check the documented keys and types; raise ReportFormatError naming the first wrong one."""
    def bad(what: str) -> ReportFormatError:
        return ReportFormatError(f"{where}: {what}")

    if not isinstance(d, dict):
        raise bad("not a JSON object")
    if d.get("format") != SWEEP_FORMAT:
        raise bad(f"'format' is not {SWEEP_FORMAT!r}")
    if not isinstance(d.get("version"), int) or d["version"] > SWEEP_VERSION:
        raise bad(f"'version' {d.get('version')!r} is not one this layerparity reads (upgrade layerparity)")
    for k, t in (("passed", bool), ("interrupted", bool), ("mode", str), ("caffe_source", str), ("tf_source", str),
                 ("inputs", dict), ("outputs", list), ("first_divergence_histogram", list), ("failures", list),
                 ("errors", dict), ("layers", list), ("worst_inputs", list)):
        if not isinstance(d.get(k), t):
            raise bad(f"{k!r} is missing or not a {t.__name__}")
    ins = d["inputs"]
    for k in ("completed", "passed", "failed", "errors", "full_comparisons"):
        if not isinstance(ins.get(k), int) or ins[k] < 0:
            raise bad(f"inputs.{k} is missing or not an int >= 0")
    if ins["passed"] + ins["failed"] + ins["errors"] != ins["completed"]:
        raise bad("inputs: passed + failed + errors != completed")
    if sum(g.get("count", 0) for g in d["failures"]) != ins["failed"]:
        raise bad("failures: the group counts do not add up to inputs.failed")
    for i, g in enumerate(d["failures"]):
        if not isinstance(g.get("caffe_layer"), str) or not isinstance(g.get("count"), int):
            raise bad(f"failures[{i}]: 'caffe_layer'/'count' missing or of the wrong type")
        if not isinstance(g.get("inputs"), list) or any(not isinstance(x.get("index"), int) for x in g["inputs"]):
            raise bad(f"failures[{i}].inputs: expected a list of {{index, label}}")
    for i, lay in enumerate(d["layers"]):
        if not isinstance(lay.get("caffe_layer"), str) or not isinstance(lay.get("n"), int):
            raise bad(f"layers[{i}]: 'caffe_layer'/'n' missing or of the wrong type")
        for m in ("max_abs_error", "max_rel_error", "tolerance_ratio"):
            dist = lay.get(m)
            if not isinstance(dist, dict):
                raise bad(f"layers[{i}].{m} is missing")
            for q in ("max", "mean", "p50", "p99"):
                if dist.get(q) is not None and not _num(dist[q]):
                    raise bad(f"layers[{i}].{m}.{q} is not a number")


# -- text --------------------------------------------------------------------------------


def format_sweep_summary(result: Any) -> str:
    """A few lines: the verdict, the groups by first divergent layer, the errors."""
    c = result.counts
    total = f" of {result.total}" if result.total is not None else ""
    head = ("INTERRUPTED" if result.interrupted else "PASS" if result.passed else "FAIL")
    lines = [f"{head}: {c['completed']}{total} inputs checked ({result.mode}, {c['full']} compared layer by layer): "
             f"{c['passed']} passed, {c['failed']} failed, {c['errors']} errors"]
    for g in result.failures:
        shown = ", ".join(str(i) for i, _ in g.inputs[:12])
        more = g.count - min(len(g.inputs), 12)
        lines.append(f"  first divergence {g.caffe_layer} (TF {g.tf_layer or '?'}): {g.count} input(s): {shown}"
                     + (f" and {more} more" if more > 0 else ""))
        fd = (g.example or {}).get("first_divergence") or {}
        if fd.get("diagnoses"):
            top = fd["diagnoses"][0]
            lines.append(f"    {top.get('kind')}: {top.get('fix')}")
    if result.coverage_problem:
        lines.append(f"  not covered (every input): {result.coverage_problem}")
    for r in result.errors[:12]:
        lines.append(f"  error on input {r.index} ({r.label}): {r.error}")
    if c["errors"] > 12:
        lines.append(f"  ... and {c['errors'] - 12} more errors")
    for n in result.notes:
        lines.append(f"  note: {n}")
    if result.seconds:
        lines.append(f"  {c['completed'] / result.seconds:.1f} inputs/s over {result.seconds:.1f} s ({result.executor})")
    return "\n".join(lines)


# -- HTML --------------------------------------------------------------------------------

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em auto;max-width:1400px;padding:0 1em;color:#1d1d1f;background:#fff}
h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.15em;margin:1.4em 0 .4em}
.verdict{display:inline-block;padding:.15em .6em;border-radius:4px;font-weight:700;color:#fff}
.pass{background:#1a7f37}.fail{background:#cf222e}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:.25em .5em;border-bottom:1px solid #e5e7eb;text-align:left;vertical-align:top}
th{position:sticky;top:0;background:#f6f8fa}td.n{text-align:right;white-space:nowrap}
tr.s-FAIL td{color:#cf222e}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.92em;word-break:break-all}
dl{display:grid;grid-template-columns:max-content auto;gap:.1em 1em;margin:.3em 0}dt{color:#57606a}dd{margin:0}
.muted{color:#57606a}.chart{overflow-x:auto;margin:.4em 0}.chart svg{display:block}
"""


def _decades(values: list[float]) -> tuple[int, int]:
    """The log10 range of the error/tolerance axis: the values and the tolerance line (1), at most 16 decades."""
    finite = [v for v in values if v > 0 and math.isfinite(v)] + [1e-2, 1e1]
    lo = max(math.floor(math.log10(min(finite))), -300)
    hi = min(math.ceil(math.log10(max(finite))), 300)
    return max(lo, hi - 16), hi


def _esc(x: Any) -> str:
    return e(x)


def _csp() -> str:
    return "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'"


def histogram_svg(result: Any) -> str:
    """Failing inputs per first divergent layer: horizontal bars, layers in graph order."""
    groups = result.failures
    if not groups:
        return ""
    top = max(g.count for g in groups)
    row_h, left, width = 22, 230, 900
    height = row_h * len(groups) + 30
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" class="fd-histogram" width="{width}" height="{height}" '
         f'viewBox="0 0 {width} {height}" font-size="12" font-family="system-ui,sans-serif" role="img" '
         f'aria-label="failing inputs per first divergent layer">']
    span = width - left - 80
    for k, g in enumerate(groups):
        y = 10 + k * row_h
        w = max(2.0, span * g.count / top)
        o.append(f'<text x="{left - 8}" y="{y + 14}" text-anchor="end" fill="{COLORS["axis"]}">{_esc(clip_name(g.caffe_layer, 32))}'
                 f'<title>{_esc(g.caffe_layer)} (TF {_esc(g.tf_layer)})</title></text>')
        o.append(f'<rect class="bar" data-layer="{_esc(g.caffe_layer)}" data-count="{g.count}" x="{left}" y="{y + 2}" '
                 f'width="{w:.1f}" height="{row_h - 6}" fill="{COLORS["fail"]}"/>')
        o.append(f'<text x="{left + w + 6:.1f}" y="{y + 14}" fill="{COLORS["axis"]}">{g.count}</text>')
    o.append("</svg>")
    return "".join(o)


def distribution_svg(result: Any) -> str:
    """Per layer, in graph order: the error over tolerance of its inputs, p50 (dot) to max, p99 tick.

    Drawn on the single-input chart's axes (:class:`~layerparity.report.chart.Geometry`:
    log scale, the tolerance line at 1); red where an input failed, green otherwise;
    hollow dots are the output layers (measured on every input)."""
    layers = [lay for lay in result.layers if lay.n]
    if not layers:
        return ""
    vals: list[float] = []
    for lay in layers:
        d = lay.dists["tolerance_ratio"]
        vals += [v for v in (d.quantile(0.5), d.quantile(0.99), d.max) if v is not None and math.isfinite(v) and v > 0]
    lo, hi = _decades(vals)
    g = Geometry(n=len(layers), lo=lo, hi=hi)
    height = g.bottom + 90
    C = COLORS
    o = [f'<svg xmlns="http://www.w3.org/2000/svg" class="distribution-chart" width="{g.width:g}" height="{height:.0f}" '
         f'viewBox="0 0 {g.width:g} {height:.0f}" font-size="11" font-family="system-ui,sans-serif" role="img" '
         f'aria-label="error over tolerance per layer, over the inputs" data-lo="{lo}" data-hi="{hi}">']
    for k in range(lo, hi + 1):
        y = g.y(10.0**k)
        o.append(f'<line x1="{g.x0:g}" x2="{g.x1:g}" y1="{y:g}" y2="{y:g}" stroke="{C["grid"]}"/>')
        o.append(f'<text x="{g.x0 - 6:g}" y="{y + 4:g}" text-anchor="end" fill="{C["axis"]}">{"1" if k == 0 else f"1e{k}"}</text>')
    ty = round(g.y(1.0))
    o.append(f'<line class="tolerance" x1="{g.x0:g}" x2="{g.x1:g}" y1="{ty}" y2="{ty}" stroke="{C["tolerance"]}" stroke-width="2"/>')
    o.append(f'<text x="{g.x1 - 4:g}" y="{ty - 6}" text-anchor="end" fill="{C["tolerance"]}">tolerance</text>')
    every = max(1, math.ceil(14.0 / g.step))
    for i, lay in enumerate(layers):
        d = lay.dists["tolerance_ratio"]
        p50, p99, mx = d.quantile(0.5), d.quantile(0.99), d.max
        x = g.x(i)
        col = C["fail"] if lay.failed else C["pass"]
        tip = (f"{lay.caffe_layer} -> {lay.tf_layer}: {lay.n} inputs, {lay.failed} failed; error/tolerance "
               f"p50 {fmt_num(p50)}, p99 {fmt_num(p99)}, max {fmt_num(mx)}"
               + (f" (input {d.worst_index}: {d.worst_label})" if d.worst_index is not None else ""))
        o.append(f'<g class="layer" data-layer="{_esc(lay.caffe_layer)}" data-p50="{p50!r}" data-p99="{p99!r}" data-max="{mx!r}">'
                 f'<title>{_esc(tip)}</title>')
        o.append(f'<line x1="{x:g}" x2="{x:g}" y1="{g.y(p50):g}" y2="{g.y(mx):g}" stroke="{col}" stroke-width="2"/>')
        o.append(f'<line x1="{x - 4:g}" x2="{x + 4:g}" y1="{g.y(p99):g}" y2="{g.y(p99):g}" stroke="{col}" stroke-width="2"/>')
        fill = "#fff" if lay.output else col
        o.append(f'<circle cx="{x:g}" cy="{g.y(p50):g}" r="3.5" fill="{fill}" stroke="{col}" stroke-width="1.5"/></g>')
        if i % every == 0:
            y = g.bottom + 16
            o.append(f'<text transform="translate({x + 3:g} {y:g}) rotate(-45)" text-anchor="end" fill="{C["axis"]}">'
                     f'{_esc(clip_name(lay.caffe_layer, 16))}</text>')
    o.append(f'<text transform="translate(14 {(g.top + g.bottom) / 2:g}) rotate(-90)" text-anchor="middle" '
             f'fill="{C["axis"]}">error \u00f7 tolerance (log)</text>')
    o.append(f'<text x="{g.x0:g}" y="20" fill="{C["axis"]}">dot: p50, tick: p99, line up to the max; '
             "hollow: output layers (every input), filled: layers of the fully compared inputs</text>")
    o.append("</svg>")
    return "".join(o)


def _dist_cells(d: Any) -> str:
    return "".join(f"<td class=n>{e(fmt_num(v))}</td>" for v in (d.quantile(0.5), d.quantile(0.99), d.max, d.mean))


def render_sweep_html(result: Any, title: str = "layerparity sweep") -> str:
    c = result.counts
    verdict = "INTERRUPTED" if result.interrupted else "PASS" if result.passed else "FAIL"
    cls = "pass" if result.passed else "fail"
    total = f" of {result.total}" if result.total is not None else ""
    p = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f'<meta http-equiv="Content-Security-Policy" content="{e(_csp())}">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f"<p><span class='verdict {cls}'>{verdict}</span> ",
        e(f"{c['completed']}{total} inputs checked: {c['passed']} passed, {c['failed']} failed, {c['errors']} errors"),
        "</p>",
        (f"<p class=fail-note><b>Not covered (every input):</b> {e(result.coverage_problem)}</p>"
         if result.coverage_problem else ""),
        "<dl>",
        f"<dt>Caffe</dt><dd class=mono>{e(result.caffe_source)}</dd>",
        f"<dt>TensorFlow</dt><dd class=mono>{e(result.tf_source)}</dd>",
        f"<dt>mode</dt><dd>{e(result.mode)}; {c['full']} inputs compared layer by layer "
        f"(sample {e(', '.join(map(str, result.sample[:20])))}{'...' if len(result.sample) > 20 else ''}; "
        f"{c['screen_failed']} after failing outputs)</dd>",
        f"<dt>outputs screened</dt><dd class=mono>{e(', '.join(f'{a} -> {b}' for a, b in result.outputs) or '-')}</dd>",
    ]
    if result.tolerance is not None:
        t = result.tolerance
        p.append(f"<dt>tolerance</dt><dd class=mono>rtol={e(fmt_num(t.rtol))}, atol={e(fmt_num(t.atol))}"
                 f"{' &times; max|caffe|' if t.relative_atol else ''}</dd>")
    if result.seconds:
        rate = f"{c['completed'] / result.seconds:.2f}"
        p.append(f"<dt>run</dt><dd>{e(rate)} inputs/s, {e(f'{result.seconds:.1f}')} s, {e(result.executor)}</dd>")
    p.append("</dl>")
    for n in result.notes:
        p.append(f"<p class=muted>note: {e(n)}</p>")

    p.append("<h2>Failing inputs by first divergent layer</h2>")
    if result.failures:
        p.append("<div class=chart id=fd-histogram>" + histogram_svg(result) + "</div>")
        p.append("<table class=hist id=failures><thead><tr><th>first divergence (Caffe)</th><th>TF layer</th>"
                 "<th>inputs</th><th>which</th><th>diagnosis of the first one</th></tr></thead><tbody>")
        for g in result.failures:
            which = ", ".join(f"<span title='{e(lab)}'>{i}</span>" for i, lab in g.inputs[:50])
            if g.count > min(len(g.inputs), 50):
                which += e(f" ... and {g.count - min(len(g.inputs), 50)} more")
            fd = (g.example or {}).get("first_divergence") or {}
            diag = ""
            if fd.get("diagnoses"):
                top = fd["diagnoses"][0]
                diag = (f"<b class=mono>{e(top.get('kind'))}</b>: {e(top.get('summary'))}<br><b>Fix:</b> {e(top.get('fix'))}")
            elif g.example:
                diag = e(f"max abs {fmt_num(fd.get('max_abs_error'))}") if fd else ""
            p.append(f"<tr><td class=mono>{e(g.caffe_layer)}</td><td class=mono>{e(g.tf_layer)}</td>"
                     f"<td class=n>{g.count}</td><td class=mono>{which}</td><td>{diag}</td></tr>")
        p.append("</tbody></table>")
    else:
        p.append("<p class=muted>no input failed</p>")

    chart = distribution_svg(result)
    if chart:
        p.append("<h2>Error per layer over the inputs</h2><div class=chart id=distribution-chart>" + chart + "</div>")
    p.append("<h2>Layers</h2><table id=layers><thead><tr><th>#</th><th>Caffe layer</th><th>TF layer</th><th>inputs</th>"
             "<th>failed</th><th>abs p50</th><th>abs p99</th><th>abs max</th><th>abs mean</th><th>rel p50</th><th>rel p99</th>"
             "<th>rel max</th><th>rel mean</th><th>err/tol p99</th><th>err/tol max</th><th>worst input</th></tr></thead><tbody>")
    for k, lay in enumerate(result.layers):
        d = lay.dists
        w = d["tolerance_ratio"]
        worst = (f"<span title='{e(w.worst_label)}'>{w.worst_index}</span>" if w.worst_index is not None else "-")
        p.append(f"<tr class={'s-FAIL' if lay.failed else 's-ok'}><td class=n>{k + 1}</td>"
                 f"<td class=mono>{e(lay.caffe_layer)}{' (output)' if lay.output else ''}</td><td class=mono>{e(lay.tf_layer)}</td>"
                 f"<td class=n>{lay.n}</td><td class=n>{lay.failed}</td>" + _dist_cells(d["max_abs_error"])
                 + _dist_cells(d["max_rel_error"])
                 + f"<td class=n>{e(fmt_num(w.quantile(0.99)))}</td><td class=n>{e(fmt_num(w.max))}</td>"
                 f"<td class=n>{worst}</td></tr>")
    p.append("</tbody></table>")

    p.append("<h2>Worst inputs</h2><table id=worst-inputs><thead><tr><th>input</th><th>label</th><th>status</th>"
             "<th>outputs' error / tolerance</th><th>first divergence</th></tr></thead><tbody>")
    for w in result.worst_inputs:
        p.append(f"<tr><td class=n>{w['index']}</td><td class=mono>{e(w['label'])}</td><td>{e(w['status'])}</td>"
                 f"<td class=n>{e(fmt_num(w['tolerance_ratio']))}</td><td class=mono>{e(w['first_divergence'] or '-')}</td></tr>")
    p.append("</tbody></table>")
    p.append(f"<h2>Errors</h2><p>{c['errors']} input(s) could not be checked.</p>")
    if result.errors:
        p.append("<table id=errors><thead><tr><th>input</th><th>label</th><th>error</th></tr></thead><tbody>")
        for r in result.errors:
            p.append(f"<tr><td class=n>{r.index}</td><td class=mono>{e(r.label)}</td><td class=mono>{e(r.error)}</td></tr>")
        p.append("</tbody></table>")
    p.append(f"<p class=muted>layerparity sweep format {SWEEP_VERSION}; quantiles from a DDSketch (1 % relative accuracy)</p>")
    p.append("</body></html>\n")
    return "".join(p)


def write_sweep_html(result: Any, path: str | os.PathLike[str], title: str = "layerparity sweep") -> None:
    write_text(path, render_sweep_html(result, title))

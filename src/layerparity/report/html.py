"""One self-contained HTML file per report: no external assets, every user string escaped.

The page holds the verdict, the per-layer error chart (inline SVG from
:mod:`.chart`: log scale, graph order, the tolerance line, the first divergence
marked), the first divergence with its diagnoses and fixes, the full per-layer table (first divergent row highlighted, per-row metrics
folded in ``<details>``), the unmapped layers and the report's meta data.

Safety: layer names, sources, notes, diagnoses and meta are data from model
files, so every one of them goes through :func:`html.escape` (quotes too) and
never into a script, style or URL. On top of that the page carries a
Content-Security-Policy that allows only its own inline script (by hash) and
no network access, so even a markup injection could not run code or fetch
anything.

>>> from layerparity.result import Report
>>> page = render_html(Report(rows=[], unmapped_caffe=["<script>x</script>"], unmapped_tf=[]))
>>> "<script>x</script>" in page, "&lt;script&gt;x&lt;/script&gt;" in page
(False, True)
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
from typing import Any

from ..atomic_write import write_text
from ..formatting import fmt_num, fmt_shape
from ..result import LayerResult, Report
from .chart import render_chart
from .text import status, weight_check_lines

__all__ = ["render_html", "write_html"]

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em auto;max-width:1400px;padding:0 1em;color:#1d1d1f;background:#fff}
h1{font-size:1.4em;margin:.2em 0}h2{font-size:1.15em;margin:1.4em 0 .4em}
.verdict{display:inline-block;padding:.15em .6em;border-radius:4px;font-weight:700;color:#fff}
.pass{background:#1a7f37}.fail{background:#cf222e}
.box{border:1px solid #d0d7de;border-radius:6px;padding:.6em 1em;margin:.6em 0;background:#f6f8fa}
.first{border-color:#cf222e;background:#fff5f5}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:.25em .5em;border-bottom:1px solid #e5e7eb;text-align:left;vertical-align:top}
th{position:sticky;top:0;background:#f6f8fa}
td.n{text-align:right;white-space:nowrap}
tr.s-FIRST{background:#ffd7d5;font-weight:600}tr.s-FAIL td.st,tr.s-shape td.st{color:#cf222e;font-weight:600}
tr.s-inherited td.st{color:#9a6700}tr.s-ok td.st{color:#1a7f37}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:.92em;word-break:break-all}
dl{display:grid;grid-template-columns:max-content auto;gap:.1em 1em;margin:.3em 0}dt{color:#57606a}dd{margin:0}
pre{white-space:pre-wrap;word-break:break-all;background:#f6f8fa;padding:.6em;border-radius:6px}
.muted{color:#57606a}label{user-select:none}
.chart{overflow-x:auto;margin:.4em 0}.chart svg{display:block}
"""

# The only script: marks the page as scripted and toggles failing-only rows. It reads no user data.
_JS = (
    "document.documentElement.setAttribute('data-report-js','ok');"
    "document.getElementById('only-failing').addEventListener('change',function(e){"
    "var rows=document.querySelectorAll('#layers tbody tr');"
    "for(var i=0;i<rows.length;i++){rows[i].hidden=e.target.checked&&rows[i].classList.contains('s-ok');}"
    "});"
)


def _csp() -> str:
    digest = base64.b64encode(hashlib.sha256(_JS.encode("utf-8")).digest()).decode("ascii")
    return f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{digest}'; img-src data:; base-uri 'none'; form-action 'none'"


_C0 = {i: "\ufffd" for i in range(32) if chr(i) not in "\n\t"}


def e(x: Any) -> str:
    """Escape any value for HTML text or a quoted attribute (NUL and other C0 controls replaced)."""
    return html.escape(str(x).translate(_C0), quote=True)


def _metrics_dl(m: Any, title: str) -> str:
    if m is None:
        return ""
    items = [
        ("max abs", f"{fmt_num(m.max_abs_error, 6)} at {_idx(m.max_abs_index)}"),
        ("max rel", f"{fmt_num(m.max_rel_error, 6)} at {_idx(m.max_rel_index)}"),
        ("mean abs", fmt_num(m.mean_abs_error, 6)),
        ("rel RMS", fmt_num(m.rel_rms_error, 6)),
        ("cosine", fmt_num(m.cosine, 8)),
        ("mismatched", f"{m.mismatched} / {m.total} ({100 * m.mismatched_fraction:.3g}%)"),
        ("NaN/Inf mismatches", str(m.nan_mismatch)),
        ("scale max|caffe|", fmt_num(m.scale, 6)),
        ("smallest passing atol", fmt_num(m.min_atol)),
        ("smallest passing rtol", fmt_num(m.min_rtol)),
    ]
    body = "".join(f"<dt>{e(k)}</dt><dd class=mono>{e(v)}</dd>" for k, v in items)
    return f"<div><b>{e(title)}</b><dl>{body}</dl></div>"


def _idx(i: Any) -> str:
    return "-" if i is None else "(" + ", ".join(str(int(x)) for x in i) + ")"


def _diagnoses(row: LayerResult) -> str:
    if not row.diagnoses:
        return ""
    out = ["<ol class=diagnoses>"]
    for d in row.diagnoses:
        ev = ""
        if d.evidence:
            ev = "<details><summary>evidence</summary><pre>" + e(json.dumps(d.to_dict()["evidence"], indent=1, ensure_ascii=False)) + "</pre></details>"
        out.append(
            f"<li><b class=mono>{e(d.kind)}</b> <span class=muted>(confidence {e(fmt_num(d.confidence, 2))})</span>: "
            f"{e(d.summary)}<br><b>Fix:</b> {e(d.fix)}{ev}</li>"
        )
    out.append("</ol>")
    return "".join(out)


def _row(i: int, row: LayerResult, report: Report) -> str:
    st = status(row, report)
    m = row.metrics
    caffe = " + ".join(row.caffe_chain) if len(row.caffe_chain) > 1 else row.caffe_layer
    details = _metrics_dl(m, "total error") + _metrics_dl(row.own, "own error (TF layer fed the Caffe input)")
    extra = []
    if row.caffe_blob and row.caffe_blob != row.caffe_layer:
        extra.append(f"<div>Caffe blob <code>{e(row.caffe_blob)}</code></div>")
    if row.caffe_kind or row.tf_kind:
        extra.append(f"<div>kinds: <code>{e(row.caffe_kind)}</code> / <code>{e(row.tf_kind)}</code></div>")
    if row.tf_shape:
        extra.append(f"<div>TF shape <code>{e(fmt_shape(row.tf_shape))}</code></div>")
    if row.tolerance is not None:
        unit = " &times; max|caffe|" if row.tolerance.relative_atol else ""
        extra.append(f"<div>tolerance rtol={e(fmt_num(row.tolerance.rtol))} "
                     f"atol={e(fmt_num(row.tolerance.atol))}{unit}</div>")
    if row.note:
        extra.append(f"<div>note: {e(row.note)}</div>")
    if row.contaminated_by:
        extra.append(f"<div>contaminated by <code>{e(row.contaminated_by)}</code></div>")
    more = "".join(extra) + details + _diagnoses(row)
    cells = [
        f"<td class=n>{i + 1}</td>",
        f"<td class=mono>{e(caffe)}</td>",
        f"<td class=mono>{e(row.tf_layer)}</td>",
        f"<td class=mono>{e(fmt_shape(row.caffe_shape)) if row.caffe_shape else '-'}</td>",
        f"<td class=n>{e(fmt_num(m.max_abs_error)) if m else '-'}</td>",
        f"<td class=n>{e(fmt_num(m.max_rel_error)) if m else '-'}</td>",
        f"<td class=n>{e(fmt_num(m.cosine, 4)) if m else '-'}</td>",
        f"<td class=n>{e(f'{100 * m.mismatched_fraction:.3g}%') if m else '-'}</td>",
        f"<td class=n>{e(fmt_num(row.own.max_abs_error)) if row.own else '-'}</td>",
        f"<td class=st>{e(st)}</td>",
        f"<td>{'<details><summary>more</summary>' + more + '</details>' if more else ''}</td>",
    ]
    rid = " id=first-divergence" if st == "FIRST" else ""
    return f"<tr class=s-{e(st)}{rid}>" + "".join(cells) + "</tr>"


def _has_tolerance(report: Report) -> bool:
    return report.tolerance is not None or any(r.tolerance is not None for r in report.rows)


def render_html(report: Report, title: str = "layerparity report") -> str:
    """The whole page as a string (UTF-8 text, self-contained)."""
    passed = report.passed
    n = len(report.rows)
    failed = sum(1 for r in report.rows if not r.passed)
    parts = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        f'<meta http-equiv="Content-Security-Policy" content="{e(_csp())}">',
        '<meta name=viewport content="width=device-width,initial-scale=1">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        f"<p><span class='verdict {'pass' if passed else 'fail'}'>{'PASS' if passed else 'FAIL'}</span> ",
        e(f"all {n} compared layers within tolerance" if passed else f"{failed} of {n} compared layers out of tolerance"),
        "</p><dl>",
        f"<dt>Caffe</dt><dd class=mono>{e(report.caffe_source or '-')}</dd>",
        f"<dt>TensorFlow</dt><dd class=mono>{e(report.tf_source or '-')}</dd>",
    ]
    if report.tolerance is not None:
        t = report.tolerance
        unit = " &times; max|caffe|" if t.relative_atol else ""
        parts.append(f"<dt>tolerance</dt><dd class=mono>rtol={e(fmt_num(t.rtol))}, atol={e(fmt_num(t.atol))}{unit}</dd>")
    parts.append("</dl>")

    chart = render_chart(report)
    if chart:
        parts.append(
            "<h2>Error per layer</h2><div class=chart id=error-chart>" + chart + "</div>"
            "<p class=muted>"
            + ("Each layer's worst error divided by what its tolerance allows (log scale; above the "
               "tolerance line at 1 = out of tolerance)" if _has_tolerance(report) else "Each layer's max abs error (log scale)")
            + ", in Caffe graph order; dots: total error, squares: own error. Hover a point for its numbers.</p>"
        )

    cov = report.coverage
    if cov is not None and (cov.problem() or (cov.partial is not False and cov.left_out)):
        parts.append("<h2>Coverage</h2><div class='box first'>")
        if cov.problem():
            parts.append(f"<p>{e(cov.problem())}</p>")
        if cov.partial is not False and cov.left_out:
            parts.append(f"<p>partial check; left out: {e(', '.join(cov.left_out))}</p>")
        parts.append("</div>")
    for d in report.conventions:
        parts.append(f"<h2>Port convention</h2><div class=box><p><b>{e(d.kind)}</b>: {e(d.summary)}</p>"
                     f"<p>fix: {e(d.fix)}</p></div>")

    fd = report.first_divergence
    if fd is not None:
        m = fd.metrics
        parts.append("<h2>First divergence</h2><div class='box first'>")
        parts.append(
            f"<p>Caffe layer <code>{e(fd.divergent_layer)}</code>"
            + (f" (chain <code>{e(' + '.join(fd.caffe_chain))}</code>)" if len(fd.caffe_chain) > 1 else "")
            + f" &rarr; TF layer <code>{e(fd.tf_layer)}</code>: "
            f"max abs {e(fmt_num(fd.max_abs_error))}, max rel {e(fmt_num(fd.max_rel_error))}"
            + (f", worst element at NCHW index <code>{e(_idx(m.max_abs_index))}</code>" if m else "")
            + "</p>"
        )
        if fd.note:
            parts.append(f"<p>note: {e(fd.note)}</p>")
        if fd.own is not None:
            verdict = "the error starts in this layer" if not fd.own.passed else "the TF layer is right on the Caffe input: the error comes from upstream"
            parts.append(f"<p>own error (TF layer fed the Caffe input): max abs {e(fmt_num(fd.own.max_abs_error))} &mdash; {e(verdict)}</p>")
        parts.append(_diagnoses(fd) or "<p class=muted>no diagnosis</p>")
        for line in weight_check_lines(fd):
            parts.append(f"<p>{e(line)}</p>")
        parts.append("<p><a href='#first-divergence'>row in the table</a></p></div>")

    parts.append(
        "<h2>Layers</h2><p><label><input type=checkbox id=only-failing> only rows out of tolerance</label> "
        "<span class=muted>(Caffe graph order; own abs = error of the TF layer fed the Caffe input)</span></p>"
    )
    parts.append("<table id=layers><thead><tr>")
    for h in ("#", "Caffe layer", "TF layer", "shape (NCHW)", "max abs", "max rel", "cosine", "mismatch", "own abs", "status", ""):
        parts.append(f"<th>{e(h)}</th>")
    parts.append("</tr></thead><tbody>")
    parts += [_row(i, r, report) for i, r in enumerate(report.rows)]
    parts.append("</tbody></table>")
    if not report.rows:
        parts.append("<p class=muted>no layers were compared</p>")

    parts.append("<h2>Unmapped layers</h2>")
    for side, names in (("Caffe", report.unmapped_caffe), ("TF", report.unmapped_tf)):
        shown = ", ".join(f"<code>{e(x)}</code>" for x in names) or "<span class=muted>none</span>"
        parts.append(f"<p>{side}: {shown}</p>")
    if report.meta:
        meta = json.dumps(report.to_dict()["meta"], indent=1, ensure_ascii=False, sort_keys=True)
        parts.append(f"<h2>Meta</h2><pre>{e(meta)}</pre>")
    parts.append(f"<p class=muted>layerparity report format {e(report.to_dict()['version'])}</p>")
    parts.append(f"<script>{_JS}</script></body></html>\n")
    return "".join(parts)


def write_html(report: Report, path: str | os.PathLike[str], title: str = "layerparity report") -> None:
    """Write :func:`render_html` to ``path`` (UTF-8; atomically)."""
    write_text(path, render_html(report, title=title))

"""The per-layer table of a :class:`~layerparity.result.Report`, for terminals and messages.

Two forms of the same table:

- :func:`format_table` gives plain text (fixed-width columns, no colour): used in
  ``AssertionError`` messages, in logs, and whenever Rich is not installed.
- :func:`print_report` prints a Rich table (first divergent row highlighted) with
  the verdict and the top diagnosis, falling back to the plain text without Rich.

Long tables are capped at ``max_rows`` rows, in a window around the first
divergence, and say so (``... 12 rows above not shown``).

>>> from layerparity.result import Report, LayerResult, Metrics
>>> m = Metrics(0.0, (0, 0, 0, 0), 0.0, (0, 0, 0, 0), 0.0, 0.0, 1.0, 0, 8, 0, 1.0, 0.0, 0.0, True)
>>> r = Report(rows=[LayerResult("conv1", "conv1", "conv1", caffe_shape=(1, 2, 2, 2), metrics=m)],
...            unmapped_caffe=[], unmapped_tf=[])
>>> print(format_table(r))
#  Caffe layer  TF layer  shape         max abs  max rel  cosine  mismatch  own abs  status
1  conv1        conv1     (1, 2, 2, 2)        0        0       1        0%        -  ok
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import IO, Any

from ..formatting import clip_name, fmt_num, fmt_shape
from ..result import LayerResult, Report

__all__ = ["format_table", "format_summary", "print_report", "table_window", "status", "weight_check_lines",
           "DEFAULT_MAX_ROWS"]

#: Rows shown before the table is capped.
DEFAULT_MAX_ROWS = 40

COLUMNS = ("#", "Caffe layer", "TF layer", "shape", "max abs", "max rel", "cosine", "mismatch", "own abs", "status")
_RIGHT = {"#", "max abs", "max rel", "cosine", "mismatch", "own abs"}


def status(row: LayerResult, report: Report) -> str:
    """One word per row: ``ok``, ``FIRST`` (the first divergence), ``inherited``
    (wrong, but the TF layer is right when fed the Caffe input: the error came from
    upstream), ``drift`` (own error within tolerance, total error past it only by
    accumulated float noise: passes), ``FAIL`` (wrong, own error not measured or also wrong), ``shape``
    (shapes could not be reconciled)."""
    if row is report.first_divergence:
        return "FIRST"
    if row.metrics is None:
        return "shape"
    if row.drift:
        return "drift"
    if row.passed:
        return "ok"
    if row.own is not None and row.own.passed:
        return "inherited"
    return "FAIL"


def row_cells(i: int, row: LayerResult, report: Report) -> list[str]:
    m = row.metrics
    caffe = row.caffe_layer
    if len(row.caffe_chain) > 1:
        caffe = "+".join(row.caffe_chain)
    return [
        str(i + 1),
        clip_name(caffe),
        clip_name(row.tf_layer),
        fmt_shape(row.caffe_shape) if row.caffe_shape else "-",
        fmt_num(m.max_abs_error) if m else "-",
        fmt_num(m.max_rel_error) if m else "-",
        fmt_num(m.cosine, 4) if m else "-",
        (f"{100.0 * m.mismatched_fraction:.3g}%" if m else "-"),
        fmt_num(row.own.max_abs_error) if row.own else "-",
        status(row, report),
    ]


@dataclass
class Window:
    start: int  # first row shown (0-based)
    stop: int  # one past the last row shown
    total: int

    @property
    def capped(self) -> bool:
        return self.stop - self.start < self.total

    def notes(self) -> tuple[str | None, str | None]:
        above = f"... {self.start} row{'s' if self.start != 1 else ''} above not shown" if self.start else None
        n = self.total - self.stop
        below = f"... {n} row{'s' if n != 1 else ''} below not shown" if n else None
        return above, below

    def caption(self) -> str:
        if not self.capped:
            return f"{self.total} compared layer{'s' if self.total != 1 else ''}"
        return f"showing rows {self.start + 1}-{self.stop} of {self.total} (capped at {self.stop - self.start}; the JSON/HTML report has every row)"


def table_window(report: Report, max_rows: int | None = DEFAULT_MAX_ROWS, focus: int | None = None) -> Window:
    """Which rows to show: all of them, or ``max_rows`` around the focus row
    (the first divergence by default; a quarter of the window above it)."""
    n = len(report.rows)
    if max_rows is None or max_rows <= 0 or n <= max_rows:
        return Window(0, n, n)
    if focus is None:
        fd = report.first_divergence
        focus = next((i for i, r in enumerate(report.rows) if r is fd), 0) if fd is not None else 0
    start = max(0, min(focus - max_rows // 4, n - max_rows))
    return Window(start, start + max_rows, n)


def format_table(report: Report, max_rows: int | None = DEFAULT_MAX_ROWS, indent: str = "") -> str:
    """The per-layer table as plain text, capped at ``max_rows`` rows (and saying so)."""
    win = table_window(report, max_rows)
    body = [row_cells(i, report.rows[i], report) for i in range(win.start, win.stop)]
    widths = [max([len(c)] + [len(r[j]) for r in body]) for j, c in enumerate(COLUMNS)]

    def line(cells: list[str] | tuple[str, ...]) -> str:
        parts = [
            (c.rjust(w) if name in _RIGHT else c.ljust(w))
            for c, w, name in zip(cells, widths, COLUMNS, strict=True)
        ]
        return (indent + "  ".join(parts)).rstrip()

    above, below = win.notes()
    out = [line(COLUMNS)]
    if above:
        out.append(indent + above)
    out += [line(r) for r in body]
    if below:
        out.append(indent + below)
    if not report.rows:
        out.append(indent + "(no layers were compared)")
    if win.capped:
        out.append(indent + "(" + win.caption() + ")")
    return "\n".join(out)


def format_summary(report: Report) -> str:
    """Verdict, first divergence, top diagnosis and unmapped layers, as plain text lines."""
    lines = []
    n = len(report.rows)
    cov = report.coverage
    failed = sum(1 for r in report.rows if not r.passed)
    if report.passed:
        lines.append(f"PASS: all {n} compared layer{'s' if n != 1 else ''} within tolerance")
    elif failed:
        lines.append(f"FAIL: {failed} of {n} compared layers out of tolerance")
    else:
        lines.append(f"FAIL: all {n} compared layers within tolerance, but the TF port does not cover the Caffe net")
    if cov is not None and cov.problem():
        lines.append(cov.problem())
    if cov is not None and cov.partial is not False and cov.left_out:
        lines.append("Partial check; left out: " + _names(cov.left_out))
    if report.tolerance is not None:
        t = report.tolerance
        lines.append(f"Tolerance: rtol={fmt_num(t.rtol)}, atol={fmt_num(t.atol)}{' x max|caffe|' if t.relative_atol else ''}")
    inp = report.meta.get("inputs") if isinstance(report.meta, dict) else None
    if isinstance(inp, dict) and int(inp.get("count", 1)) > 1:
        lines.append(_inputs_line(report, inp))
    fd = report.first_divergence
    if fd is not None:
        chain = f" (chain {'+'.join(fd.caffe_chain)})" if len(fd.caffe_chain) > 1 else ""
        lines.append(
            f"First divergence: Caffe layer {fd.divergent_layer!r}{chain} / TF layer {fd.tf_layer!r}: "
            f"max abs {fmt_num(fd.max_abs_error)}, max rel {fmt_num(fd.max_rel_error)}"
        )
        if fd.note:
            lines.append(f"  note: {fd.note}")
        if fd.diagnoses:
            d = fd.diagnoses[0]
            lines.append(f"Diagnosis: {d.kind} (confidence {fmt_num(d.confidence, 2)}): {d.summary}")
            lines.append(f"Fix: {d.fix}")
            if len(fd.diagnoses) > 1:
                lines.append("  also possible: " + ", ".join(x.kind for x in fd.diagnoses[1:]))
        lines += weight_check_lines(fd)
    for d in report.conventions:
        lines.append(f"Port convention: {d.kind}: {d.summary}")
        lines.append(f"Fix: {d.fix}")
    if report.unmapped_caffe:
        lines.append("Unmapped Caffe layers: " + _names(report.unmapped_caffe))
    if report.unmapped_tf:
        lines.append("Unmapped TF layers: " + _names(report.unmapped_tf))
    return "\n".join(_cap_line(line) for line in lines)


def weight_check_lines(row: LayerResult) -> list[str]:
    """The row's weight check (``layerparity weights``' verdict per Caffe layer with params), one line each."""
    out = []
    for w in row.weights:
        tf = f"TF {w.tf_layer!r}" if w.tf_layer else "no TF op"
        worst = ""
        errs = [b.max_abs_error for b in w.blobs if b.status == "different" and isinstance(b.max_abs_error, (int, float))]
        if errs:
            worst = f" (max abs error {fmt_num(max(errs))} under the expected layout)"
        out.append(f"Weight check: {w.caffe_layer!r} -> {tf}: {w.status}{worst}")
    return out


_MAX_LINE = 1000


def _cap_line(line: str) -> str:
    """Cap a summary line (a model can name a layer with 100k characters), saying so."""
    if len(line) <= _MAX_LINE:
        return line
    return line[: _MAX_LINE - 40] + f"... ({len(line) - _MAX_LINE + 40} characters cut)"


def _names(names: list[str], cap: int = 12) -> str:
    shown = ", ".join(clip_name(n) for n in names[:cap])
    return shown + (f", ... ({len(names) - cap} more)" if len(names) > cap else "")


def format_report(report: Report, max_rows: int | None = DEFAULT_MAX_ROWS) -> str:
    """Table then summary, plain text: what :func:`print_report` prints without Rich."""
    return format_table(report, max_rows) + "\n\n" + format_summary(report)


_STYLES = {"ok": "green", "FIRST": "bold white on red", "inherited": "yellow", "FAIL": "red", "shape": "red"}


def print_report(
    report: Report,
    *,
    max_rows: int | None = DEFAULT_MAX_ROWS,
    console: Any = None,
    file: IO[str] | None = None,
    title: str | None = None,
) -> None:
    """Print the table and summary: a Rich table when Rich is importable, else plain text.

    The first divergent row is highlighted; ``max_rows`` caps the table around it.
    """
    try:
        from rich import box
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text
    except ImportError:
        import sys

        print(format_report(report, max_rows), file=file or sys.stdout)
        return
    if console is None:
        console = Console(file=file, highlight=False, soft_wrap=False)
    win = table_window(report, max_rows)
    table = Table(
        title=title or "layerparity: Caffe vs TensorFlow, layer by layer",
        caption=win.caption(),
        box=box.SIMPLE_HEAD,
        header_style="bold",
    )
    for name in COLUMNS:
        table.add_column(name, justify="right" if name in _RIGHT else "left", no_wrap=name != "Caffe layer")
    above, below = win.notes()
    if above:
        table.add_row("", Text(above, style="dim"), *[""] * (len(COLUMNS) - 2))
    for i in range(win.start, win.stop):
        row = report.rows[i]
        cells = row_cells(i, row, report)
        st = cells[-1]
        # Text objects: names are shown literally, never parsed as Rich markup
        texts = [Text(c) for c in cells[:-1]] + [Text(st, style=_STYLES.get(st, ""))]
        table.add_row(*texts, style="on dark_red" if st == "FIRST" else None)
    if below:
        table.add_row("", Text(below, style="dim"), *[""] * (len(COLUMNS) - 2))
    console.print(table)
    summary = format_summary(report)
    style = "bold green" if report.passed else "bold red"
    first, _, rest = summary.partition("\n")
    console.print(Text(first, style=style))
    if rest:
        console.print(Text(rest))


def _inputs_line(report: Report, inp: dict) -> str:
    """What the rows of a report over several inputs show (see report/aggregate.py)."""
    line = f"Over {inp['count']} inputs: each row shows its worst input"
    fd = report.first_divergence
    per = inp.get("per_layer") if isinstance(inp.get("per_layer"), dict) else {}
    stats = per.get(fd.caffe_layer) if fd is not None else None
    if isinstance(stats, dict) and stats.get("shown_input") != stats.get("max_abs_error", {}).get("worst_input"):
        line += (f", except the FIRST row, which shows {stats.get('shown_input')}, where the divergence starts "
                 f"earliest ({fd.caffe_layer}'s worst input is {stats['max_abs_error'].get('worst_input')}, "
                 f"max abs {fmt_num(stats['max_abs_error'].get('max'))})")
    return line + " (per-layer stats in the JSON report's meta.inputs)"

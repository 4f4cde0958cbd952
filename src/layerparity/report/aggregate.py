"""One report over many inputs: each row is one input's row (its worst input's, but the
first divergence's row is the input it was found on), per-layer stats and which input
each row shows in ``meta``.

>>> from layerparity.result import Report
>>> r = aggregate_reports([Report(rows=[], unmapped_caffe=[], unmapped_tf=[])] * 2, ["a.npy", "b.npy"])
>>> r.meta["inputs"]["count"]
2
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from ..errors import InputError
from ..result import Report

__all__ = ["aggregate_reports"]


def _key(x: float) -> float:
    return math.inf if math.isnan(x) else x


def aggregate_reports(reports: Sequence[Report], labels: Sequence[str] | None = None) -> Report:
    """Combine the reports of the same two models on several inputs.

    Caller mistakes (no report, labels that do not match the reports, reports of
    different models) raise :class:`~layerparity.errors.InputError`.

    - ``rows[i]`` is the row ``i`` of the worst input there (a failing input first,
      then the greatest max abs error), so it passes only if it passed on every input;
      except the first divergence's row:
    - ``first_divergence`` is the earliest first divergence over all inputs (among
      inputs diverging first at the same layer, the one with the greatest max abs
      error there); its row in ``rows`` is that input's row, which is not always the
      layer's worst (a later-diverging input can be worse at that layer);
    - ``meta["inputs"]`` = ``{"count", "labels", "first_divergence_input",
      "per_layer": {caffe_layer: {"failed_inputs", "shown_input",
      "max_abs_error": {"max", "mean", "worst_input"}, "max_rel_error": {"max", "mean"}}}}``;
      ``shown_input`` is the label of the input whose row ``rows`` holds.
    """
    if isinstance(reports, Report) or not isinstance(reports, Iterable):
        raise InputError(f"aggregate_reports needs a list of Report objects, got {type(reports).__name__}")
    reports = list(reports)
    if not reports:
        raise InputError("aggregate_reports needs at least one report")
    bad = next((r for r in reports if not isinstance(r, Report)), None)
    if bad is not None:
        raise InputError(f"aggregate_reports needs Report objects, got {type(bad).__name__}")
    if labels is not None and (isinstance(labels, (str, bytes)) or not isinstance(labels, Iterable)):
        raise InputError(f"aggregate_reports: labels must be a list with one label per report, got {labels!r:.80}")
    labels = [str(x) for x in labels] if labels is not None else [f"input {i}" for i in range(len(reports))]
    if len(labels) != len(reports):
        raise InputError(f"aggregate_reports: {len(reports)} reports but {len(labels)} labels")
    if len(reports) == 1:
        r = reports[0]
        r.meta = {**r.meta, "inputs": {"count": 1, "labels": labels[:1], "per_layer": {}}}
        return r
    base = reports[0]
    n_rows = len(base.rows)
    for k, r in enumerate(reports):
        names = [x.caffe_layer for x in r.rows]
        if len(r.rows) != n_rows or names != [x.caffe_layer for x in base.rows]:
            raise InputError(f"reports of {labels[k]!r} and {labels[0]!r} compare different layers "
                             "(aggregate only reports of the same two models)")
    rows = []
    shown: list[int] = []  # which input each row is taken from
    per_layer = {}
    for i in range(n_rows):
        cands = [r.rows[i] for r in reports]
        errs = [_key(c.max_abs_error) for c in cands]
        # a failing input always wins over a passing one, so the row passes only if all passed
        worst = max(range(len(cands)), key=lambda j: (not cands[j].passed, errs[j]))
        rows.append(cands[worst])
        shown.append(worst)
        rels = [_key(c.max_rel_error) for c in cands]
        per_layer[base.rows[i].caffe_layer] = {
            "failed_inputs": sum(1 for c in cands if not c.passed),
            "max_abs_error": {"max": max(errs), "mean": sum(errs) / len(errs), "worst_input": labels[max(range(len(errs)), key=errs.__getitem__)]},
            "max_rel_error": {"max": max(rels), "mean": sum(rels) / len(rels)},
        }
    # the first divergence: the earliest over all inputs; among inputs diverging first at
    # the same row, the worst one there (so it is that row's worst input when it can be)
    first = None
    first_idx = None
    first_input = None
    for k, r in enumerate(reports):
        fd = r.first_divergence
        if fd is None:
            continue
        idx = next((i for i, x in enumerate(r.rows) if x is fd), None)
        if idx is None:
            raise InputError(f"aggregate_reports: the report of {labels[k]!r} names {fd.caffe_layer!r} its first "
                             "divergence, but that row is not one of its rows")
        if first_idx is None or idx < first_idx or (
                idx == first_idx and _key(fd.max_abs_error) > _key(first.max_abs_error)):  # type: ignore[union-attr]
            first_idx, first, first_input = idx, fd, k
    if first is not None and first_idx is not None and first_input is not None:
        rows[first_idx] = first  # the FIRST row shows the input the divergence was found on
        shown[first_idx] = first_input
    for i, k in enumerate(shown):
        per_layer[base.rows[i].caffe_layer]["shown_input"] = labels[k]
    meta = dict(base.meta)
    meta["inputs"] = {"count": len(reports), "labels": labels, "per_layer": per_layer,
                      "first_divergence_input": labels[first_input] if first_input is not None else None}
    return Report(
        rows=rows,
        unmapped_caffe=list(base.unmapped_caffe),
        unmapped_tf=list(base.unmapped_tf),
        tolerance=base.tolerance,
        first_divergence=first,
        caffe_source=base.caffe_source,
        tf_source=base.tf_source,
        meta=meta,
        coverage=base.coverage,  # the same two models and alignment: the same coverage
        conventions=list(base.conventions),
    )

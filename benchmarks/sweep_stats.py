"""Per-layer error statistics over many inputs, accumulated one report at a time.

The engine's ``report.aggregate_reports`` needs every ``Report`` in memory at once
and gives max / mean / worst input; this keeps only a few floats per layer and
input (so memory stays flat however many inputs) and adds percentiles.

>>> from layerparity.result import Report
>>> s = SweepStats()
>>> s.add(Report(rows=[], unmapped_caffe=[], unmapped_tf=[]), "a")
>>> s.summary()["inputs"]
1
"""

from __future__ import annotations

import math
from array import array


class _Layer:
    __slots__ = ("abs_err", "rel_err", "own_abs", "failed", "order")

    def __init__(self, order: int) -> None:
        self.abs_err = array("d")
        self.rel_err = array("d")
        self.own_abs = array("d")
        self.failed = 0
        self.order = order


def _pct(sorted_vals: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default) of an already sorted list."""
    if not sorted_vals:
        return math.nan
    pos = (len(sorted_vals) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


class SweepStats:
    def __init__(self) -> None:
        self.layers: dict[str, _Layer] = {}
        self.labels: list[str] = []
        self.first_divergences: dict[str, int] = {}

    def add(self, report, label: str) -> None:
        self.labels.append(label)
        for row in report.rows:
            lay = self.layers.get(row.caffe_layer)
            if lay is None:
                lay = self.layers[row.caffe_layer] = _Layer(len(self.layers))
            lay.abs_err.append(float(row.max_abs_error))
            lay.rel_err.append(float(row.max_rel_error))
            if row.own is not None:
                lay.own_abs.append(float(row.own.max_abs_error))
            if not row.passed:
                lay.failed += 1
        fd = report.first_divergence
        if fd is not None:
            self.first_divergences[fd.caffe_layer] = self.first_divergences.get(fd.caffe_layer, 0) + 1

    def layer_summary(self, name: str) -> dict:
        lay = self.layers[name]
        vals = sorted(v if not math.isnan(v) else math.inf for v in lay.abs_err)
        worst = max(range(len(lay.abs_err)), key=lambda i: (math.isnan(lay.abs_err[i]), lay.abs_err[i]))
        return {
            "layer": name,
            "n": len(vals),
            "failed": lay.failed,
            "max": vals[-1],
            "mean": sum(vals) / len(vals),
            "p50": _pct(vals, 0.50),
            "p90": _pct(vals, 0.90),
            "p99": _pct(vals, 0.99),
            "worst": self.labels[worst] if worst < len(self.labels) else str(worst),
            "max_rel": max(lay.rel_err) if lay.rel_err else math.nan,
            "own_abs_max": max(lay.own_abs) if lay.own_abs else None,
        }

    def summary(self) -> dict:
        return {
            "inputs": len(self.labels),
            "layers": {n: self.layer_summary(n) for n in sorted(self.layers, key=lambda k: self.layers[k].order)},
            "first_divergences": dict(self.first_divergences),
        }

    def top(self, k: int = 10) -> list[dict]:
        rows = [self.layer_summary(n) for n in self.layers]
        rows.sort(key=lambda r: -r["max"])
        return rows[:k]

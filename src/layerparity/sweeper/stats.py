"""Streaming statistics of a sweep: memory does not grow with the number of inputs.

Per compared layer and per error measure (max abs error, max rel error, error
over tolerance) a :class:`Distribution` keeps a count, the sum of the finite
values (for the mean), the exact maximum with the input that reached it first,
and a DDSketch (``ddsketch.LogCollapsingLowestDenseDDSketch``) for the p50 and
p99: log-spaced buckets whose quantiles are within a **relative error of 1 %**
of a true sample quantile (``RELATIVE_ACCURACY``), with at most ``BIN_LIMIT``
buckets (beyond that the lowest buckets are merged, which only coarsens the
smallest values: errors 10^17 times smaller than the largest). Non-finite values
(NaN/Inf on one side, a layer whose shapes could not be reconciled) are counted
apart and sort above every finite value.

>>> d = Distribution()
>>> for i, v in enumerate([0.0, 1e-6, 2e-6, 3e-6, float("inf")]):
...     d.add(v, i, f"in{i}")
>>> d.n, d.max, d.worst_index, d.nonfinite
(5, inf, 4, 1)
>>> abs(d.quantile(0.5) - 2e-6) <= 0.01 * 2e-6     # within 1 % of the true median
True
>>> d.quantile(0.99)
inf
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Distribution", "LayerStats", "FailureGroup", "ErrorRow", "ItemResult", "SweepStats",
    "RELATIVE_ACCURACY", "BIN_LIMIT", "MEASURES",
]

#: Relative accuracy of the p50/p99 sketches: a reported quantile q' of a true sample
#: quantile q satisfies |q' - q| <= 0.01 * q.
RELATIVE_ACCURACY = 0.01
#: Buckets per sketch at most (about 8 bytes each): 2048 buckets of 2 % span 10^17.
BIN_LIMIT = 2048
#: The error measures kept per layer: the JSON keys.
MEASURES = ("max_abs_error", "max_rel_error", "tolerance_ratio")


def _sketch() -> Any:
    from ddsketch import LogCollapsingLowestDenseDDSketch

    return LogCollapsingLowestDenseDDSketch(relative_accuracy=RELATIVE_ACCURACY, bin_limit=BIN_LIMIT)


class Distribution:
    """Count, mean, max (with its input) and sketched quantiles of one non-negative error."""

    __slots__ = ("n", "nonfinite", "sum", "max", "fmax", "worst_index", "worst_label", "_sketch")

    def __init__(self) -> None:
        self.n = 0
        self.nonfinite = 0
        self.sum = 0.0
        self.max = -math.inf
        self.fmax = 0.0  # the largest finite value
        self.worst_index: int | None = None
        self.worst_label = ""
        self._sketch: Any = None

    def add(self, value: float | None, index: int, label: str) -> None:
        v = math.inf if value is None or math.isnan(value) else float(value)
        self.n += 1
        if v > self.max:  # strictly greater: the first input (in input order) keeps a tie
            self.max, self.worst_index, self.worst_label = v, index, label
        if math.isinf(v):
            self.nonfinite += 1
            return
        self.sum += v
        self.fmax = max(self.fmax, v)
        if self._sketch is None:
            self._sketch = _sketch()
        self._sketch.add(max(v, 0.0))

    @property
    def finite(self) -> int:
        return self.n - self.nonfinite

    @property
    def mean(self) -> float | None:
        """Mean of the finite values (None when there is none)."""
        return self.sum / self.finite if self.finite else None

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0 <= q <= 1) with rank ``q * (n - 1)``; non-finite values rank highest."""
        if self.n == 0:
            return None
        rank = q * (self.n - 1)
        if rank > self.finite - 1:
            return math.inf
        if rank == self.finite - 1:  # the largest finite value: known exactly
            return self.fmax
        q = 0.0 if self.finite == 1 else rank / (self.finite - 1)
        # the sketch answers within its relative accuracy; never above the exact maximum
        return min(float(self._sketch.get_quantile_value(q)), self.fmax)

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "nonfinite": self.nonfinite,
            "max": self.max if self.n else None,
            "mean": self.mean,
            "p50": self.quantile(0.5),
            "p99": self.quantile(0.99),
            "worst_input": None if self.worst_index is None else {"index": self.worst_index, "label": self.worst_label},
        }


@dataclass
class LayerStats:
    """One compared layer over every input that measured it."""

    caffe_layer: str
    tf_layer: str
    output: bool  # a Caffe output blob: measured on every input (the others on fully captured inputs)
    n: int = 0
    failed: int = 0
    dists: dict[str, Distribution] = field(default_factory=lambda: {m: Distribution() for m in MEASURES})

    def to_dict(self) -> dict[str, Any]:
        return {"caffe_layer": self.caffe_layer, "tf_layer": self.tf_layer, "output": self.output, "n": self.n,
                "failed": self.failed, **{m: d.to_dict() for m, d in self.dists.items()}}


@dataclass
class FailureGroup:
    """The failing inputs whose first divergence is one layer."""

    caffe_layer: str
    tf_layer: str
    count: int = 0
    inputs: list[tuple[int, str]] = field(default_factory=list)  # the first max_listed (index, label)
    example: dict[str, Any] | None = None  # the first failing input's first divergence (with diagnoses)

    @property
    def more(self) -> int:
        return self.count - len(self.inputs)

    def to_dict(self) -> dict[str, Any]:
        return {"caffe_layer": self.caffe_layer, "tf_layer": self.tf_layer, "count": self.count,
                "inputs": [{"index": i, "label": s} for i, s in self.inputs], "more": self.more,
                "example": self.example}


@dataclass
class ErrorRow:
    """An input that could not be checked (unreadable, refused, or its worker died)."""

    index: int
    label: str
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "label": self.label, "error": self.error}


#: (caffe_layer, tf_layer, max_abs_error, max_rel_error, tolerance_ratio, passed)
Measured = tuple[str, str, float, float, "float | None", bool]


@dataclass
class ItemResult:
    """What a worker found for one input; folded into :class:`SweepStats` and dropped."""

    index: int
    label: str
    status: str  # "pass" | "fail" | "error"
    full: bool = False  # a full per-layer comparison ran (sample, failed outputs, --every-layer)
    screen_failed: bool = False  # its outputs failed the plain-forward screen
    outputs: list[Measured] = field(default_factory=list)  # the screen, one per output pair
    rows: list[Measured] = field(default_factory=list)  # the full comparison, one per row
    first_divergence: str | None = None
    first_divergence_tf: str = ""
    example: dict[str, Any] | None = None  # first_divergence of the full report (failing inputs)
    error: str = ""


class SweepStats:
    """The accumulator: fold :class:`ItemResult` objects in input order (for identical means)."""

    def __init__(self, *, max_listed: int = 1000, worst: int = 10) -> None:
        self.max_listed = max_listed
        self.worst_k = worst
        self.layers: dict[str, LayerStats] = {}
        self.order: list[str] = []  # layer names in graph order (from the first full comparison)
        self.outputs: set[str] = set()
        self.groups: dict[str, FailureGroup] = {}
        self.errors: list[ErrorRow] = []
        self.counts = {"completed": 0, "passed": 0, "failed": 0, "errors": 0, "full": 0,
                       "screen_failed": 0, "screen_failed_passed": 0}
        self._worst: list[tuple[float, int, str, str, str | None]] = []  # min-heap of the worst_k

    def set_layers(self, rows: Iterable[tuple[str, str]], outputs: Iterable[str]) -> None:
        """The compared layers in graph order and which are outputs (from the first full comparison)."""
        self.outputs = set(outputs)
        for c, t in rows:
            self._layer(c, t)

    def _layer(self, c: str, t: str) -> LayerStats:
        lay = self.layers.get(c)
        if lay is None:
            lay = self.layers[c] = LayerStats(c, t, c in self.outputs)
            self.order.append(c)
        return lay

    def add(self, item: ItemResult) -> None:
        self.counts["completed"] += 1
        if item.status == "error":
            self.counts["errors"] += 1
            if len(self.errors) < self.max_listed:
                self.errors.append(ErrorRow(item.index, item.label, item.error))
            return
        measured = item.rows if item.full else item.outputs
        for c, t, a, r, ratio, passed in measured:
            lay = self._layer(c, t)
            lay.n += 1
            lay.failed += 0 if passed else 1
            for m, v in zip(MEASURES, (a, r, ratio), strict=True):
                lay.dists[m].add(v, item.index, item.label)
        self.counts["full"] += item.full
        self.counts["screen_failed"] += item.screen_failed
        if item.status == "pass":
            self.counts["passed"] += 1
            self.counts["screen_failed_passed"] += item.screen_failed
        else:
            self.counts["failed"] += 1
            key = item.first_divergence or "(outputs)"
            g = self.groups.get(key)
            if g is None:
                g = self.groups[key] = FailureGroup(key, item.first_divergence_tf)
            g.count += 1
            if len(g.inputs) < self.max_listed:
                g.inputs.append((item.index, item.label))
            if g.example is None and item.example is not None:
                g.example = {"index": item.index, "label": item.label, **item.example}
        # the worst inputs, by their outputs' error over tolerance
        outs = [m for m in measured if m[0] in self.outputs] or measured
        ratio = max((math.inf if m[4] is None or math.isnan(m[4]) else m[4] for m in outs), default=0.0)
        entry = (ratio, -item.index, item.label, item.status, item.first_divergence)
        if len(self._worst) < self.worst_k:
            heapq.heappush(self._worst, entry)
        elif self.worst_k and entry > self._worst[0]:
            heapq.heapreplace(self._worst, entry)

    def layer_list(self) -> list[LayerStats]:
        return [self.layers[n] for n in self.order]

    def failure_groups(self) -> list[FailureGroup]:
        """Groups in graph order of their layer (outputs-only failures last)."""
        rank = {n: i for i, n in enumerate(self.order)}
        return sorted(self.groups.values(), key=lambda g: rank.get(g.caffe_layer, len(rank)))

    def worst_inputs(self) -> list[dict[str, Any]]:
        out = sorted(self._worst, reverse=True)
        return [{"index": -i, "label": lab, "status": st, "tolerance_ratio": r, "first_divergence": fd}
                for r, i, lab, st, fd in out]

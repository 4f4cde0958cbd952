"""The value window: which streamed values the row loop holds, and until when.

Rows are computed in Caffe order. A Caffe value is held from the moment it is
read until the last row that compares it or feeds it (as a layer input, for own
error and diagnosis) is done; a TF value until the last row that compares it.
Everything else is dropped as it streams past, so memory stays bounded by the
rows in flight, not by the size of the net.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .alignment import Pair
from .sources import Side
from .trace import Probe

__all__ = ["ValueWindow"]


class ValueWindow:
    """Pull values for row ``k`` from two in-order streams, release them after."""

    def __init__(self, cs: Side, ts: Side, pairs: list[Pair], keep_inputs: bool) -> None:
        self.cs, self.ts = cs, ts
        self.tf_need: dict[str, list[int]] = {}
        self.c_until: dict[str, int] = {}
        for k, p in enumerate(pairs):
            self.tf_need.setdefault(p.tf, []).append(k)
            self.c_until[p.caffe] = max(self.c_until.get(p.caffe, -1), k)
            if keep_inputs:
                for i in cs.by_name[p.caffe_chain[0]].inputs:
                    if i in cs.by_name:
                        self.c_until[i] = max(self.c_until.get(i, -1), k)
        self.c_held: dict[str, Probe] = {}
        self.t_held: dict[str, Probe] = {}
        self.max_held = 0
        self.max_held_bytes = 0
        self._c_it: Iterator[Probe] = cs.values()
        self._t_it: Iterator[Probe] = ts.values()

    def _account(self) -> None:
        held = list(self.c_held.values()) + list(self.t_held.values())
        self.max_held = max(self.max_held, len(held))
        nbytes = sum(p.value.nbytes for p in held if p.value is not None)
        self.max_held_bytes = max(self.max_held_bytes, nbytes)

    def caffe(self, name: str, k: int) -> Probe | None:
        """The Caffe probe ``name`` (with its value) for row ``k``; None if the stream ended first."""
        while name not in self.c_held:
            p = next(self._c_it, None)
            if p is None:
                return None
            if self.c_until.get(p.name, -1) >= k:
                self.c_held[p.name] = p
                self._account()
        return self.c_held[name]

    def tf(self, name: str, k: int) -> Probe | None:
        """The TF probe ``name`` (with its value) for row ``k``; None if the stream ended first."""
        while name not in self.t_held:
            p = next(self._t_it, None)
            if p is None:
                return None
            if any(j >= k for j in self.tf_need.get(p.name, [])):
                self.t_held[p.name] = p
                self._account()
        return self.t_held[name]

    def caffe_inputs(self, pair: Pair) -> list[np.ndarray] | None:
        """The held Caffe values feeding the pair's chain, in order; None if one is not held."""
        names = [i for i in self.cs.by_name[pair.caffe_chain[0]].inputs if i in self.cs.by_name]
        vals = []
        for n in names:
            p = self.c_held.get(n)
            if p is None or p.value is None:
                return None
            vals.append(p.value)
        return vals

    def release(self, k: int) -> None:
        """Drop every value no row after ``k`` needs."""
        for n in [n for n in self.c_held if self.c_until.get(n, -1) <= k]:
            del self.c_held[n]
        for n in [n for n in self.t_held if all(j <= k for j in self.tf_need.get(n, []))]:
            del self.t_held[n]

    def stats(self) -> dict[str, int]:
        out = {"max_held_values": self.max_held, "max_held_bytes": self.max_held_bytes}
        for side in (self.cs, self.ts):
            if side.spool is not None:
                out[f"{side.framework}_spooled_in_memory_bytes"] = side.spool.held_bytes
                out[f"{side.framework}_spilled_bytes"] = side.spool.spilled_bytes
        return out

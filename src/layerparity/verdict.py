"""The verdict, decided from finished rows: pure functions, no values, no backends.

- :func:`diverges`: does a row break tolerance by its own error (or, where that was
  not measured, by its total error)?
- :func:`first_divergence`: which row the report names as the first divergence, and by what.
- :func:`contaminate`: mark failing rows downstream of the first divergence.
- :func:`coverage`: does the comparison cover the whole Caffe net? Every Caffe
  output blob (a top no layer consumes) must be compared, and every Caffe layer
  that computes something must be compared or absorbed into a compared chain.
  A deliberate partial check is declared (``partial=True``, or the Caffe layers
  to stop at), and the report then says what was left out.
- :func:`chain_head`: the layer of a chain to name when no diagnosis places the bug.

>>> from layerparity.trace import Probe
>>> metas = [Probe("data", "Input"), Probe("conv1", "Convolution", inputs=["data"]),
...          Probe("fc", "InnerProduct", inputs=["conv1"])]
>>> c = coverage(metas, compared={"data", "conv1"}, partial=False)
>>> c.missing_outputs, c.uncovered
(['fc'], [])
>>> coverage(metas, compared={"data", "conv1"}, partial=True).passes
True
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from .errors import InputError
from .kinds import TRIVIAL, probe_kind
from .result import Coverage, LayerResult
from .trace import Probe

__all__ = ["diverges", "first_divergence", "contaminate", "coverage", "chain_head", "NOT_COMPUTING", "WITH_PARAMS"]

#: Canonical kinds that compute nothing a port could get wrong on their own: inputs,
#: identities at inference, and pure data movement whose effect every downstream
#: comparison sees (a Flatten, a Reshape, a Permute: SSD's Permute(0,2,3,1) before a
#: Flatten has no TF counterpart in an NHWC port). They are never required to be compared;
#: an output blob is required whatever its kind.
NOT_COMPUTING = frozenset({"input", "flatten", "reshape", "squeeze", "expand_dims", "permute"}) | TRIVIAL

#: Canonical kinds of Caffe layers that carry learned parameters.
WITH_PARAMS = frozenset({"conv", "deconv", "depthwise_conv", "fc", "bn", "scale", "bias", "prelu", "normalize"})


def diverges(row: LayerResult) -> bool:
    """The row fails (its total error breaks tolerance) and the layer itself is to blame: its
    own error breaks tolerance too, or was not measured.

    A row whose total error passes never diverges, whatever its own error says: the port's
    value there agrees with Caffe's, so an own-error failure can only come from a replay fed
    something else than the layer's real input (a mapped group that starts after the layer's
    first op, seen on converter ports). Naming it the first divergence of a passing report
    would contradict the verdict."""
    if row.passed:
        return False
    if row.own is not None:
        return not row.own.passed
    return True


def first_divergence(rows: Sequence[LayerResult]) -> tuple[LayerResult | None, str]:
    """The first divergent row of finished rows (Caffe order) and what decided it: the first
    row that :func:`diverges` (``"own"`` when its own error was measured, else ``"total"``);
    when none does but a row fails (every failing row passed its own error: the error comes
    from something the alignment could not see, a TF-only layer), the first failing row,
    ``"total (own error passed everywhere)"``; else ``(None, "")``. The engine calls this on
    its rows; it diagnoses as rows stream, and this decides which one the report names."""
    for r in rows:
        if diverges(r):
            return r, ("own" if r.own is not None else "total")
    for r in rows:
        if not r.passed:
            return r, "total (own error passed everywhere)"
    return None, ""


def contaminate(rows: list[LayerResult], first: LayerResult, caffe_metas: Iterable[Probe]) -> None:
    """Set ``contaminated_by`` on every failing row downstream of ``first`` in the Caffe graph."""
    down: set[str] = set(first.caffe_chain)
    for p in caffe_metas:  # Caffe order is topological: one forward sweep finds descendants
        if any(i in down for i in p.inputs):
            down.add(p.name)
    start = rows.index(first)
    for r in rows[start + 1:]:
        if (r.metrics is None or not r.metrics.passed) and r.caffe_chain and r.caffe_chain[0] in down:
            r.contaminated_by = first.caffe_layer


def chain_head(chain: Sequence[str], caffe: dict[str, Probe]) -> str:
    """The first layer of ``chain`` that has parameters, else the chain's first layer."""
    for n in chain:
        p = caffe.get(n)
        if p is not None and probe_kind(p) in WITH_PARAMS:
            return n
    return chain[0] if chain else ""


def coverage(caffe_metas: Sequence[Probe], compared: set[str], partial: bool | Sequence[str] = False) -> Coverage:
    """What of the Caffe net the comparison covers.

    ``compared``: every Caffe probe name in a compared row's chain (absorbed layers
    included). ``partial``: False (the whole net is required), True (a deliberate
    partial check: nothing is required), or Caffe layer names to stop at (everything
    those depend on is required, nothing after them).
    """
    by_name = {p.name: p for p in caffe_metas}
    by_layer: dict[str, list[str]] = {}
    for p in caffe_metas:
        by_layer.setdefault(p.layer, []).append(p.name)
    consumed = {i for p in caffe_metas for i in p.inputs}
    outputs = [p.name for p in caffe_metas if p.name not in consumed and probe_kind(p) not in ("input", "silence")]
    scope: list[str] | None = None
    stop: list[str] = []
    if partial is not True and partial is not False:
        if isinstance(partial, str):
            partial = [partial]
        for n in partial:
            if n in by_name:
                stop.append(n)
            elif n in by_layer:
                stop.append(by_layer[n][-1])
            else:
                raise InputError(f"partial: Caffe layer {n!r} is not in the Caffe net (its layers: "
                                 f"{', '.join(list(by_layer)[:12])}{', ...' if len(by_layer) > 12 else ''})")
        need: set[str] = set(stop)
        for p in reversed(caffe_metas):  # reverse topological order: one sweep finds ancestors
            if p.name in need:
                need.update(i for i in p.inputs if i in by_name)
        scope = [p.name for p in caffe_metas if p.name in need]
    in_scope = set(scope) if scope is not None else set(by_name)
    required_outputs = stop if scope is not None else outputs
    missing = [n for n in required_outputs if n not in compared]
    uncovered = [p.name for p in caffe_metas
                 if p.name in in_scope and p.name not in compared and probe_kind(p) not in NOT_COMPUTING]
    left_out: list[str] = []
    if partial is True:
        left_out = [p.name for p in caffe_metas if p.name not in compared and probe_kind(p) not in NOT_COMPUTING]
    elif scope is not None:
        left_out = [p.name for p in caffe_metas if p.name not in in_scope and probe_kind(p) not in NOT_COMPUTING]
    return Coverage(
        outputs=outputs,
        missing_outputs=[] if partial is True else missing,
        uncovered=[] if partial is True else uncovered,
        partial=True if partial is True else (list(stop) if scope is not None else False),
        left_out=left_out,
        scope=scope,
    )

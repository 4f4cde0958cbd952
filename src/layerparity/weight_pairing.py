"""Which TF ops hold which Caffe layer's weights: the alignment ``compare`` uses.

Weight parity pairs layers with :func:`layerparity.alignment.align`, the same three
rules as ``compare`` (explicit mapping, then names, then structure). The probes it
aligns carry no values: the structural step reads the graph's edges, kinds and
shapes only. A Caffe chain (``conv1`` + ``bn_conv1`` + ``scale_conv1`` when the TF
port folded them) is paired with the TF *group* of ops that computes it
(``Conv2D`` -> ``Add`` for a converter's bias, ``MatMul`` -> ``Mul`` -> ``AddV2``
for a Gemm, ``Mul`` -> ``AddV2`` for a folded BatchNorm + Scale); the ops of that
group that hold weights are the TF side of the comparison, in execution order.

When structure alone cannot tell two TF ops apart (same kind, same inputs, same
weight shape, e.g. two parallel branches) the pairing says so
(:attr:`WeightPairing.ambiguous`); run both nets once on one input and pass their
values (``caffe_value`` / ``tf_value``) to break such ties by value, as
``compare`` does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .kinds import canonical_kind

#: canonical kinds of the TF ops whose first array is a kernel
KERNEL_KINDS = frozenset({"conv", "depthwise_conv", "deconv", "fc"})
#: TF kinds a flattened fc input is traced back through
_FLAT_PATH = frozenset({"reshape", "flatten", "squeeze", "identity", "expand_dims", "permute"})


@dataclass
class TFWeightOp:
    """One TF op (or Keras layer) of a paired group that holds weights."""

    name: str
    kind: str  # canonical kind (kinds.py)
    op_type: str  # the raw op / layer type
    arrays: list[np.ndarray]
    scalars: list[float] = field(default_factory=list)  # constant scalar operands (a Gemm's alpha)
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class WeightPairing:
    """One Caffe chain's layers with params, and the TF ops that hold their weights."""

    caffe_layers: list[str]  # the chain's Caffe layers with params, in order
    tf: str | None  # the TF probe the chain was paired with (None: not paired)
    how: str  # "explicit" | "name" | "structural" | "value" | "none"
    ops: list[TFWeightOp] = field(default_factory=list)
    #: for an fc: layout of the 4-D TF tensor its input was flattened from ("NCHW", "NHWC"), "" unknown
    fc_flatten: str = ""
    ambiguous: list[str] = field(default_factory=list)  # other TF ops structure cannot tell from ``ops``
    note: str = ""


def _probe_list(probes: Any) -> list[Any]:
    if probes is None:
        return []
    if isinstance(probes, Mapping):
        return list(probes.values())
    return list(getattr(probes, "probes", probes))


def _flatten_source(tp: Mapping[str, Any], name: str) -> str:
    """The layout of the 4-D tensor an fc op's input was flattened from, walking back
    through reshapes/transposes ('' when none is found)."""
    p = tp.get(name)
    seen = 0
    cur = [i for i in (getattr(p, "inputs", []) or []) if i in tp] if p is not None else []
    while cur and seen < 50:
        q = tp[cur[0]]
        shape = tuple(getattr(q, "shape", ()) or ())
        lay = str(getattr(q, "layout", "") or "")
        if lay.startswith("flat:"):
            return lay.split(":", 1)[1]
        if len(shape) == 4 and lay in ("NCHW", "NHWC"):
            return lay
        if canonical_kind(q.kind, q.params, len(q.inputs)) not in _FLAT_PATH:
            return ""
        cur = [i for i in (q.inputs or []) if i in tp]
        seen += 1
    return ""


def pair_weights(
    caffe_probes: Any,
    tf_probes: Any,
    tf_weights: Mapping[str, Sequence[np.ndarray]],
    param_layers: Iterable[str],
    *,
    tf_scalars: Mapping[str, Sequence[float]] | None = None,
    mapping: Any = None,
    caffe_value: Callable[[str], np.ndarray | None] | None = None,
    tf_value: Callable[[str], np.ndarray | None] | None = None,
) -> tuple[dict[str, WeightPairing], list[str]]:
    """Pair every Caffe layer with params with the TF ops holding its weights.

    Returns ``({caffe_layer: pairing}, unmatched_tf)``: layers of one chain share one
    :class:`WeightPairing`; ``unmatched_tf`` lists the TF weight holders no Caffe
    layer was paired with. ``caffe_value``/``tf_value`` (probe name -> value) break
    structural ties by value; without them ties are reported in ``ambiguous``.
    """
    from .alignment import align

    cps = _probe_list(caffe_probes)
    tps = _probe_list(tf_probes)
    by_value = caffe_value is not None and tf_value is not None
    al = align(cps, tps, mapping, caffe_value=caffe_value, tf_value=tf_value)
    params = set(param_layers)
    tp = {p.name: p for p in tps}
    layer_of = {p.name: (p.layer or p.name) for p in cps}
    out: dict[str, WeightPairing] = {}
    used: set[str] = set()
    for pr in al.pairs:
        wp = pairing_of(pr, layer_of, tp, tf_weights, params, tf_scalars=tf_scalars, by_value=by_value)
        if wp is None:
            continue
        used.update(o.name for o in wp.ops)
        for c in wp.caffe_layers:
            out[c] = wp
    unmatched = [k for k, v in tf_weights.items() if k not in used and any(np.asarray(a).size for a in v)]
    return out, unmatched


def pairing_of(
    pair: Any,
    caffe_layer_of: Mapping[str, str],
    tf_probes: Mapping[str, Any],
    tf_weights: Mapping[str, Sequence[np.ndarray]],
    param_layers: Iterable[str],
    *,
    tf_scalars: Mapping[str, Sequence[float]] | None = None,
    by_value: bool = False,
) -> WeightPairing | None:
    """The weight pairing of one aligned pair (an :class:`~layerparity.alignment.Pair` of the
    alignment ``compare`` made): its Caffe layers with params, and the ops of its TF group that
    hold weights. None when no layer of the chain has params.

    ``caffe_layer_of``: Caffe probe name -> layer name; ``tf_probes``: TF probe name -> probe
    (values not needed); ``by_value``: the alignment used values (ties broken by value)."""
    params = set(param_layers)
    tp = tf_probes
    scalars = {str(k): [float(x) for x in v] for k, v in (tf_scalars or {}).items()}
    layers = list(dict.fromkeys(caffe_layer_of.get(c, c) for c in pair.caffe_chain))
    layers = [c for c in layers if c in params]
    if not layers:
        return None

    def op_of(name: str) -> TFWeightOp | None:
        arrays = tf_weights.get(name)
        sc = scalars.get(name, [])
        if not arrays and not sc:
            return None
        p = tp[name]
        return TFWeightOp(name, canonical_kind(p.kind, p.params, len(p.inputs)), p.kind,
                          [np.asarray(a) for a in arrays or []], sc, dict(p.params or {}))

    group = pair.tf_group or ([pair.tf] if pair.tf else [])
    ops = [o for o in (op_of(g) for g in group if g in tp) if o is not None]
    how = "value" if pair.how == "structural" and by_value else pair.how
    wp = WeightPairing(layers, pair.tf or None, how, ops)
    kern = next((o for o in ops if o.kind in KERNEL_KINDS), None)
    if kern is not None and kern.kind == "fc":
        wp.fc_flatten = _flatten_source(tp, kern.name)
    if pair.how == "structural" and not by_value and kern is not None:
        wp.ambiguous = _look_alikes(kern, tp, tf_weights)
    if pair.how == "identity":
        wp.ops = []
        wp.note = f"paired with the TF value of its input ({pair.tf!r}), which holds no weights of it"
    return wp


def _look_alikes(kern: TFWeightOp, tp: Mapping[str, Any], tf_weights: Mapping[str, Sequence[np.ndarray]]) -> list[str]:
    """Other TF ops of the kernel's kind that read the same inputs with a same-shaped kernel:
    structure alone cannot tell them apart."""
    p = tp[kern.name]
    ins = set(p.inputs or [])
    shape = tuple(kern.arrays[0].shape) if kern.arrays else None
    out = []
    for q in tp.values():
        if q.name == kern.name or set(q.inputs or []) != ins:
            continue
        if canonical_kind(q.kind, q.params, len(q.inputs)) != kern.kind:
            continue
        arrays = tf_weights.get(q.name) or []
        if arrays and tuple(np.asarray(arrays[0]).shape) == shape:
            out.append(q.name)
    return out

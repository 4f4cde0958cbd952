"""Aligning two traces: which TF probe holds the value of which Caffe layer (chain).

Three rules, in order of authority:

1. **explicit**: a mapping ``{caffe_layer: tf_name}`` (dict, or a YAML/JSON file
   read by :func:`load_mapping`). It always wins. Unknown or duplicated names
   raise :class:`~layerparity.errors.MappingError` naming the mapping file.
2. **name**: TF names with scopes and op suffixes normalized
   (``model/conv1/BiasAdd:0``, ``conv1/Conv2D``, ``functional/conv1/Relu``,
   ``StatefulPartitionedCall/model/conv1/...`` all mean ``conv1``; ``/`` and ``-``
   count as ``_``). Graph ops are grouped by ``probe.layer``; the last op of a
   group (in execution order) is the group's output.
3. **structural**: for ports whose names are lost (converter output). Caffe probes
   are walked in order; a Caffe layer whose inputs are aligned is matched to an
   unaligned TF layer that reads the TF counterparts of those inputs (through
   TF-only ``Pad``/``Identity``/``Reshape``...), of a compatible canonical kind
   (:mod:`layerparity.kinds`); ties are broken by output shape in the converted
   layout, then by the cosine of the values. Inception branches in another order
   are found because candidates are chosen by edges, not by position.

N:1 chains: Caffe layers that a TF layer computes as part of itself (in-place
ReLU after a Convolution when the TF layer has a fused/trailing activation;
BatchNorm + Scale against one Keras BatchNormalization; a BatchNorm folded into
the TF convolution) extend the Caffe chain, and the chain's *last* value is
compared. On the TF side a trailing ``BiasAdd`` (or ``x + const``) after a
converter's convolution op likewise extends the TF group.

Trivial Caffe layers (Dropout at TEST, Split, Silence...) without a TF partner
are never dropped: in-place ones extend the chain they follow, the others are
paired with the TF probe of their input (``how="identity"``). Everything else
left over is listed in ``unmapped_caffe`` / ``unmapped_tf``.

A Caffe layer with several tops (probes ``layer/top``) against one TF op with as
many outputs (``name``, ``name:1``, ...) pairs top i with output i, by any rule
(:meth:`_Aligner.pair_tops`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import MappingError
from .kinds import (
    ABSORBABLE,
    INCLUDES,
    PASS_THROUGH,
    RECURRENT,
    REORDER,
    TRIVIAL,
    canonical_kind,
    compatible,
    fused_kinds,
)
from .layout import relayout, relayout_shape
from .names import COPY_SUFFIX as _COPY
from .names import canon, tf_name_keys
from .trace import Probe, Trace

ROOT = "\x00root"


@dataclass
class Pair:
    """One compared pair: a Caffe chain (its last probe is compared) and a TF probe."""

    caffe_chain: list[str]
    tf: str
    how: str  # "explicit" | "name" | "structural" | "identity"
    tf_group: list[str] = field(default_factory=list)  # every TF probe folded into this pair, in order
    note: str = ""

    @property
    def caffe(self) -> str:
        return self.caffe_chain[-1]


@dataclass
class Alignment:
    pairs: list[Pair]
    unmapped_caffe: list[str]
    unmapped_tf: list[str]
    absorbed: dict[str, str] = field(default_factory=dict)  # caffe probe -> why it is in a chain
    mapping_source: str = ""
    skipped: dict[str, str] = field(default_factory=dict)  # caffe probe -> why it is deliberately not compared

    def pair_for(self, caffe_name: str) -> Pair | None:
        for p in self.pairs:
            if caffe_name in p.caffe_chain:
                return p
        return None

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.pairs:
            out[p.how] = out.get(p.how, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "pairs": [{"caffe_chain": p.caffe_chain, "tf": p.tf, "how": p.how, "tf_group": p.tf_group, "note": p.note}
                      for p in self.pairs],
            "unmapped_caffe": self.unmapped_caffe,
            "unmapped_tf": self.unmapped_tf,
            "absorbed": self.absorbed,
        }


# -- mapping files -------------------------------------------------------------


class LayerMapping(dict):
    """``{caffe_layer: tf_name}`` plus where it came from (for error messages)."""

    source: str = "<mapping>"


def load_mapping(path: str | os.PathLike[str]) -> LayerMapping:
    """Read ``{caffe_layer: tf_name}`` from a JSON or YAML file.

    The file is one object/mapping of strings to strings, optionally under a
    top-level key ``mapping``::

        # mapping.yaml
        conv1: model/tf.nn.convolution_3
        "inception_3a/1x1": inception_3a_1x1

    A key given twice, a TF name given for two Caffe layers, or a non-string entry
    is a :class:`MappingError` naming the file and the entry.
    """
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise MappingError(f"{path}: cannot read the layer mapping ({e.strerror or e})") from None
    ext = os.path.splitext(path)[1].lower()
    if ext == ".json" or (ext not in (".yaml", ".yml") and text.lstrip().startswith("{")):
        data = _load_json(path, text)
    else:
        data = _load_yaml(path, text)
    if isinstance(data, dict) and set(data) == {"mapping"} and isinstance(data["mapping"], dict):
        data = data["mapping"]
    if not isinstance(data, dict):
        raise MappingError(f"{path}: a layer mapping is one mapping caffe_layer -> tf_name, got {type(data).__name__}")
    return _as_mapping(data, path)


def _load_json(path: str, text: str) -> Any:
    def pairs(items: list[tuple[str, Any]]) -> dict:
        out: dict = {}
        for k, v in items:
            if k in out:
                raise MappingError(f"{path}: Caffe layer {k!r} is mapped twice")
            out[k] = v
        return out

    try:
        return json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as e:
        raise MappingError(f"{path}: not valid JSON ({e})") from None


def _load_yaml(path: str, text: str) -> Any:
    try:
        import yaml
    except ImportError:  # pragma: no cover - pyyaml is a dev/cli dependency
        raise MappingError(f"{path}: reading a YAML mapping needs PyYAML (pip install pyyaml), or use JSON") from None

    class _Loader(yaml.SafeLoader):
        pass

    def construct_mapping(loader: Any, node: Any, deep: bool = False) -> dict:
        out: dict = {}
        for k_node, v_node in node.value:
            k = loader.construct_object(k_node, deep=deep)
            if not isinstance(k, str):
                raise MappingError(f"{path}: mapping key {k!r} (line {k_node.start_mark.line + 1}) is not a Caffe layer name")
            if k in out:
                raise MappingError(f"{path}: Caffe layer {k!r} is mapped twice (line {k_node.start_mark.line + 1})")
            out[k] = loader.construct_object(v_node, deep=deep)
        return out

    _Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, construct_mapping)
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise MappingError(f"{path}: not valid YAML ({e})") from None


def _as_mapping(data: Mapping[Any, Any], source: str) -> LayerMapping:
    m = LayerMapping()
    m.source = source
    seen: dict[str, str] = {}
    for k, v in data.items():
        if not isinstance(k, str) or not k:
            raise MappingError(f"{source}: mapping key {k!r} is not a Caffe layer name")
        if not isinstance(v, str) or not v:
            raise MappingError(f"{source}: Caffe layer {k!r} maps to {v!r}; expected a TF layer/op name")
        if v in seen:
            raise MappingError(f"{source}: TF name {v!r} is mapped from two Caffe layers ({seen[v]!r} and {k!r})")
        seen[v] = k
        m[k] = v
    return m


def as_mapping(mapping: Any) -> LayerMapping | None:
    if mapping is None:
        return None
    if isinstance(mapping, (str, os.PathLike)):
        return load_mapping(mapping)
    if isinstance(mapping, LayerMapping):
        return mapping
    if isinstance(mapping, Mapping):
        return _as_mapping(mapping, "mapping argument")
    raise MappingError(f"mapping must be a dict caffe_layer -> tf_name or a path to a YAML/JSON file, got {type(mapping).__name__}")


# -- graph model ----------------------------------------------------------------


@dataclass
class _Unit:
    """A TF layer: one probe, or the ops of one scope (``probe.layer``)."""

    key: str
    members: list[str]
    order: int
    kinds: list[str] = field(default_factory=list)
    fused: set[str] = field(default_factory=set)
    ext_inputs: list[str] = field(default_factory=list)  # unit keys
    consumers: list[str] = field(default_factory=list)
    out: str = ""
    kind: str = ""  # the unit's kind when its first op does not say it (a grouped conv starts with a split)

    @property
    def primary(self) -> str:
        return self.kind or (self.kinds[0] if self.kinds else "")


def _metas(t: Trace | Iterable[Probe]) -> list[Probe]:
    return list(t)


def _probe_kind(p: Probe) -> str:
    return canonical_kind(p.kind, p.params, len(p.inputs))


class _Aligner:
    def __init__(self, caffe: list[Probe], tf: list[Probe], caffe_value: Callable[[str], np.ndarray | None] | None,
                 tf_value: Callable[[str], np.ndarray | None] | None) -> None:
        self.c = caffe
        self.t = tf
        self.cp = {p.name: p for p in caffe}
        self.tp = {p.name: p for p in tf}
        self.cidx = {p.name: i for i, p in enumerate(caffe)}
        self.ckind = {p.name: _probe_kind(p) for p in caffe}
        self._ccanon = {canon(p.name) for p in caffe} | {canon(p.layer) for p in caffe}
        self.cons: dict[str, list[str]] = {p.name: [] for p in caffe}
        for p in caffe:
            for i in p.inputs:
                if i in self.cons:
                    self.cons[i].append(p.name)
        self.caffe_value = caffe_value
        self.tf_value = tf_value
        self.tops: dict[str, list[str]] = {}  # Caffe layer -> its probes ``layer/top``, when several
        for p in caffe:
            if p.name.startswith(p.layer + "/"):
                self.tops.setdefault(p.layer, []).append(p.name)
        self.tops = {k: v for k, v in self.tops.items() if len(v) > 1}
        self._build_units()
        self.pairs: list[Pair] = []
        self.pair_of_c: dict[str, Pair] = {}
        self.pair_units: dict[int, list[str]] = {}  # id(pair) -> TF unit keys, in order
        self.matched: set[str] = set()
        self.absorbed: dict[str, str] = {}
        self.skipped: dict[str, str] = {}  # Caffe probes deliberately not compared -> why

    # units ---------------------------------------------------------------
    def _build_units(self) -> None:
        units: dict[str, _Unit] = {}
        self.unit_of: dict[str, str] = {}
        grouped = _grouped_convs(self.t)
        for i, p in enumerate(self.t):
            key = grouped.get(p.name) or p.layer or p.name
            u = units.get(key)
            if u is None:
                u = units[key] = _Unit(key=key, members=[], order=i)
            u.members.append(p.name)
            u.kinds.append(_probe_kind(p))
            u.fused |= fused_kinds(p.fused)
            self.unit_of[p.name] = key
        for u in units.values():
            outs = [m for m in u.members if not re.search(r":[1-9]\d*$", m)] or u.members
            u.out = outs[-1]
            if u.key in grouped.values():
                u.kind = next(k for k in u.kinds if k in ("conv", "depthwise_conv"))
            ext: list[str] = []
            for m in u.members:
                for i in self.tp[m].inputs:
                    k = self.unit_of.get(i)
                    if k is not None and k != u.key and k not in ext:
                        ext.append(k)
            u.ext_inputs = ext
        for u in units.values():
            for k in u.ext_inputs:
                units[k].consumers.append(u.key)
        self.units = units
        self.uorder = sorted(units.values(), key=lambda u: u.order)

    def includes(self, pair: Pair) -> set[str]:
        inc: set[str] = set()
        for k in self.pair_units.get(id(pair), []):
            u = self.units[k]
            inc |= set(u.kinds) | u.fused
            for kd in u.kinds:
                inc |= INCLUDES.get(kd, frozenset())
        return inc

    # pairing ---------------------------------------------------------------
    def add_pair(self, chain: list[str], unit_key: str | None, how: str, tf_probe: str | None = None,
                 extend_tf: bool = True) -> Pair:
        units: list[str] = []
        if unit_key is not None:
            u = self.units[unit_key]
            tf_name = tf_probe or u.out
            units = [unit_key]
            group = list(u.members) if tf_probe is None else [tf_probe]
            self.matched.add(unit_key)
            if extend_tf and how != "identity":
                inc = INCLUDES.get(self.ckind[chain[0]], frozenset())
                while True:
                    last = self.units[units[-1]]
                    nxt = [self.units[k] for k in last.consumers]
                    if len(nxt) != 1 or len(last.consumers) != 1:
                        break
                    v = nxt[0]
                    if v.key in self.matched or v.ext_inputs != [last.key] or not v.kinds or v.primary not in inc:
                        break
                    if self._names_a_caffe_layer(v):
                        break  # a TF layer with its own Caffe counterpart (Keras BN then Scale) is not absorbed
                    units.append(v.key)
                    group.extend(v.members)
                    self.matched.add(v.key)
                    tf_name = v.out
        else:
            tf_name, group = tf_probe or "", []
        pair = Pair(caffe_chain=list(chain), tf=tf_name, how=how, tf_group=group)
        self.pairs.append(pair)
        self.pair_units[id(pair)] = units
        for c in chain:
            self.pair_of_c[c] = pair
        return pair

    def _names_a_caffe_layer(self, u: _Unit) -> bool:
        return any(k in self._ccanon for k in tf_name_keys(u.key, self.tp[u.out].kind))

    def extend(self, pair: Pair, c: str, why: str) -> None:
        pair.caffe_chain.append(c)
        self.pair_of_c[c] = pair
        self.absorbed[c] = why

    # phase 1 ------------------------------------------------------------------
    def explicit(self, mapping: LayerMapping) -> None:
        src = mapping.source
        by_layer: dict[str, list[str]] = {}
        for p in self.c:
            by_layer.setdefault(p.layer, []).append(p.name)
        taken: set[str] = set()  # TF probes mapped so far (outputs of one op may go to several tops)
        for ck, tv in mapping.items():
            whole = False  # a layer with several tops, mapped as a whole
            if ck in self.cp:
                cname = ck
            elif ck in by_layer and len(by_layer[ck]) == 1:
                cname = by_layer[ck][0]
            elif ck in self.tops:
                cname, whole = self.tops[ck][0], True
            else:
                near = _near(ck, list(self.cp))
                raise MappingError(f"{src}: Caffe layer {ck!r} is not in the Caffe trace{near}")
            if cname in self.pair_of_c:
                raise MappingError(f"{src}: Caffe layer {ck!r} is mapped twice")
            if tv in self.tp:
                ukey, probe = self.unit_of[tv], tv
                if self.units[ukey].out == tv and not _op_outputs(self.units[ukey]):
                    probe = None
            elif tv in self.units:
                ukey, probe = tv, None
            else:
                hits = [u.key for u in self.uorder if canon(tv) in tf_name_keys(u.key, self.tp[u.out].kind)[:1]]
                if len(hits) != 1:
                    near = _near(tv, list(self.tp))
                    raise MappingError(f"{src}: TF name {tv!r} (for Caffe layer {ck!r}) is not in the TF trace{near}")
                ukey, probe = hits[0], None
            if ukey in self.matched and (probe is None or whole or not _op_outputs(self.units[ukey]) or probe in taken):
                raise MappingError(f"{src}: TF name {tv!r} is mapped from two Caffe layers")
            if whole:
                if not self.pair_tops(cname, ukey, "explicit"):
                    raise MappingError(
                        f"{src}: Caffe layer {ck!r} has {len(self.tops[ck])} tops and TF {tv!r} is not as many "
                        f"outputs of one op; map each top ({', '.join(map(repr, self.tops[ck]))})")
                taken.update(self.units[ukey].members)
                continue
            self.add_pair([cname], ukey, "explicit", tf_probe=probe, extend_tf=probe is None)
            taken.update([probe] if probe else self.units[ukey].members)

    # phase 2 ------------------------------------------------------------------
    def by_name(self) -> None:
        cindex: dict[str, str] = {}
        for p in self.c:
            cindex.setdefault(canon(p.name), p.name)
        best: dict[str, tuple[int, int, str]] = {}  # caffe -> (score, -order, unit)
        for u in self.uorder:
            if u.key in self.matched:
                continue
            keys = self._fused_name_keys(u, cindex)
            keys += [k for k in tf_name_keys(u.key, self.tp[u.out].kind) if k not in keys]
            if u.key != u.out and len(u.members) == 1:
                keys += [k for k in tf_name_keys(u.out, self.tp[u.out].kind) if k not in keys]
            for rank, k in enumerate(keys):
                c = cindex.get(k)
                if c is None or c in self.pair_of_c:
                    continue
                score = (-rank, -u.order)
                if c not in best or score > best[c][:2]:
                    best[c] = (*score, u.key)
                break
        # one unit may have won two Caffe names: keep its best
        taken: dict[str, tuple[tuple[int, int], str]] = {}
        for c, (r, _o, uk) in best.items():
            if uk not in taken or (r, -self.cidx[c]) > taken[uk][0]:
                taken[uk] = ((r, -self.cidx[c]), c)
        for uk, (_, c) in sorted(taken.items(), key=lambda kv: self.cidx[kv[1][1]]):
            self.add_pair([c], uk, "name")
        self._multi_top_by_name()

    def _multi_top_by_name(self) -> None:
        """A Caffe layer with several tops against the TF layer of the layer's name."""
        for layer, names in self.tops.items():
            if any(n in self.pair_of_c for n in names):
                continue
            for u in self.uorder:
                if u.key not in self.matched and canon(layer) in tf_name_keys(u.key, self.tp[u.out].kind)[:1]:
                    self.pair_tops(names[0], u.key, "name")
                    break

    def pair_tops(self, c: str, unit_key: str, how: str) -> bool:
        """Pair every top of ``c``'s Caffe layer, if it has several (probes ``layer/top``) and
        none is paired yet, with the outputs of the TF unit when they are as many outputs of one
        op (``name``, ``name:1``, ...): top i with output i (a Slice ported as one split).
        False, pairing nothing, otherwise."""
        names = self.tops.get(self.cp[c].layer, [])
        outs = _op_outputs(self.units[unit_key])
        if c not in names or len(outs) != len(names) or any(n in self.pair_of_c for n in names):
            return False
        for n, m in zip(names, outs, strict=True):
            self.add_pair([n], unit_key, how, tf_probe=m, extend_tf=False)
        return True

    def _fused_name_keys(self, u: _Unit, cindex: dict[str, str]) -> list[str]:
        """For a TFLite op that fused several TF ops (``relu1/Relu;conv1/BiasAdd;conv1/Conv2D``:
        TFLite joins their names with ``;``), the Caffe layers its parts name, earliest in the
        Caffe net first: the chain then starts at the conv, and the walk extends it with the
        activation the op carries, instead of pairing the ReLU alone and leaving the conv out."""
        name = u.out if ";" in u.out else u.key
        if ";" not in name:
            return []
        found: list[str] = []
        for part in name.split(";"):
            comps = [c for c in part.split(":")[0].split("/") if c]
            # the op's scope, deepest first; a retraced model suffixes every scope with _N
            cands = tf_name_keys(part) + [k for c in reversed(comps[:-1]) for k in (canon(c), canon(_COPY.sub("", c)))]
            for k in cands:
                if k in cindex:
                    if k not in found:
                        found.append(k)
                    break
        return sorted(found, key=lambda k: self.cidx[cindex[k]])[:1]

    # phase 3 ------------------------------------------------------------------
    def walk(self) -> None:
        for p in self.c:
            c = p.name
            if c in self.pair_of_c:
                continue
            k = self.ckind[c]
            if k == "input":
                self._match_input(p)
                continue
            if (k in RECURRENT or k in REORDER) and (
                    self._bidirectional(p) or (k in REORDER and self._reversal_into_backward_rnn(p))):
                continue
            ins = [i for i in p.inputs if i in self.cp]
            if len(ins) == 1 and ins[0] in self.pair_of_c and (k in TRIVIAL or k in ABSORBABLE):
                P = self.pair_of_c[ins[0]]
                linear = ins[0] == P.caffe_chain[-1] and P.how != "identity"
                in_place = p.blob == self.cp[ins[0]].blob
                sole = self.cons.get(ins[0], []) == [c]
                if k in TRIVIAL:
                    if linear and (in_place or sole):
                        self.extend(P, c, f"identity at inference, compared within {P.caffe_chain[0]}")
                    else:
                        q = self.add_pair([c], None, "identity", tf_probe=P.tf)
                        self.pair_units[id(q)] = self.pair_units.get(id(P), [])
                        q.note = f"identity at inference: compared against the TF value of its input {ins[0]!r}"
                    continue
                if linear and k in self.includes(P):
                    self.extend(P, c, f"TF {P.tf!r} computes {k} as part of itself")
                    continue
                if linear:
                    u = self._choose(p, self._candidates(p))
                    if u is not None:
                        if not self.pair_tops(c, u, "structural"):
                            self.add_pair([c], u, "structural")
                        continue
                    if in_place or sole:
                        self.extend(P, c, f"no separate TF {k}: compared after it (folded into {P.tf!r}, or missing)")
                        continue
            u = self._choose(p, self._candidates(p))
            if u is not None and not self.pair_tops(c, u, "structural"):
                self.add_pair([c], u, "structural")

    # recurrent layers run backwards -------------------------------------------
    def _seq_inputs(self, p: Probe) -> list[str]:
        """``p``'s Caffe inputs other than constants (an LSTM's cont, a BatchReindex's index)."""
        return [i for i in p.inputs if i in self.cp and self.ckind[i] != "const"]

    def _go_backwards(self, u: _Unit) -> bool:
        return u.primary in RECURRENT and self.tp[u.out].params.get("go_backwards") is True

    def _reverses_time(self, p: Probe) -> bool:
        """A Caffe reordering (BatchReindex) whose index reverses its axis 0 (T of a T x N x C
        sequence): n-1, ..., 0. Without values (weight pairing aligns graphs only) the index
        cannot be read and the reordering is taken as it comes: the values compared after it
        (the backward layer's own row) decide, as for every pairing."""
        idx = [i for i in p.inputs if i in self.cp and self.ckind[i] == "const"]
        if len(idx) != 1 or self.caffe_value is None:
            return len(idx) == 1
        try:
            v = self.caffe_value(idx[0])
        except Exception:  # noqa: BLE001 - an unreadable index is not a known reversal
            return False
        if v is None:
            return True
        v = np.asarray(v).ravel()
        n = int(p.shape[0]) if p.shape else v.size
        return v.size == n and np.array_equal(v, np.arange(n - 1, -1, -1))

    def _reversal_into_backward_rnn(self, p: Probe) -> bool:
        """Caffe's backward direction reverses the sequence (a BatchReindex by n-1, ..., 0) and
        runs a recurrent layer over it; a Keras recurrent layer with ``go_backwards=True`` does
        both. Pair the two Caffe layers as one chain with that TF layer (its output is in
        reversed time order on both sides, so the chain's last value is compared as is): the
        reversal is compared within the backward layer's row, never dropped. A reversal back
        after the backward layer has a TF layer of its own (a flip, a gather) and is paired
        like any other layer."""
        xs = self._seq_inputs(p)
        if len(xs) != 1 or xs[0] not in self.pair_of_c:
            return False
        cons = self.cons.get(p.name, [])
        if len(cons) != 1 or self.ckind[cons[0]] not in RECURRENT:
            return False
        r = self.cp[cons[0]]
        if self._seq_inputs(r) != [p.name] or not self._reverses_time(p):
            return False
        want = self._tf_inputs_of(p)
        if want is None:
            return False

        def backward(u: _Unit) -> bool:
            return self._go_backwards(u) and compatible(self.ckind[r.name], u.primary) and self._resolved_inputs(u) == want

        why = (f"reversed in time inside TF {{}} (go_backwards=True): compared within {r.name!r}, whose "
               f"output is in reversed time order on both sides")
        pr = self.pair_of_c.get(r.name)
        if pr is not None:  # the backward layer is paired already (by name, or explicitly)
            units = self.pair_units.get(id(pr), [])
            if pr.caffe_chain[0] != r.name or not units or not backward(self.units[units[0]]):
                return False
            pr.caffe_chain.insert(0, p.name)
            self.pair_of_c[p.name] = pr
            self.absorbed[p.name] = why.format(repr(pr.tf))
            return True
        cands = [u for u in self.uorder if u.key not in self.matched and backward(u)]
        key = self._choose(r, cands)
        if key is None:
            return False
        pair = self.add_pair([p.name, r.name], key, "structural")
        self.absorbed[p.name] = why.format(repr(pair.tf))
        return True

    def _recurrent_block(self, x: str) -> list[str] | None:
        """Caffe's bidirectional recurrent layer over ``x``, as Caffe CRNNs build it: recurrent
        layers and reorderings (BatchReindex) reading ``x`` or each other, at least two
        recurrent ones, all joined by one layer (a Concat, an Eltwise) that reads nothing
        else. Returns those layers in Caffe order, the join last, or None."""
        inside = {x}
        region: list[str] = []
        for q in self.c[self.cidx[x] + 1:]:  # Caffe order is topological
            if self.ckind[q.name] not in RECURRENT and self.ckind[q.name] not in REORDER:
                continue
            ins = self._seq_inputs(q)
            if ins and all(i in inside for i in ins):
                region.append(q.name)
                inside.add(q.name)
        if sum(self.ckind[n] in RECURRENT for n in region) < 2:
            return None
        if any(not self.cons.get(n) for n in region):
            return None  # a branch that ends inside: an output of its own, not one layer's part
        outside = {c for n in region for c in self.cons[n] if c not in inside}
        if len(outside) != 1:
            return None
        j = outside.pop()
        if self.ckind[j] not in ("concat", "add", "mul", "max", "eltwise"):
            return None
        if not all(i in region for i in self._seq_inputs(self.cp[j])):
            return None
        return [*region, j]

    def _bidirectional(self, p: Probe) -> bool:
        """A Caffe bidirectional block (:meth:`_recurrent_block`) against one Keras
        ``Bidirectional`` layer reading the TF counterpart of the block's input: every layer
        of the block is one chain with it (a many-to-one group), compared at the join, whose
        value the Bidirectional layer outputs. Any Caffe layer of the block already paired
        with another TF layer leaves the block to the per-layer rules."""
        xs = self._seq_inputs(p)
        if len(xs) != 1 or xs[0] not in self.pair_of_c:
            return False
        block = self._recurrent_block(xs[0])
        if block is None or p.name not in block:
            return False
        want = self._tf_inputs_of(p)
        if want is None:
            return False
        owners = {id(self.pair_of_c[n]): self.pair_of_c[n] for n in block if n in self.pair_of_c}
        owner_units = {k for q in owners.values() for k in self.pair_units.get(id(q), [])}
        if any(set(q.caffe_chain) - set(block) for q in owners.values()) or len(owner_units) > 1:
            return False
        cands = [u for u in self.uorder
                 if u.primary == "bidirectional" and (u.key not in self.matched or u.key in owner_units)
                 and self._resolved_inputs(u) == want]
        if owner_units:
            cands = [u for u in cands if u.key in owner_units]
        key = self._choose(self.cp[block[-1]], cands)
        if key is None:
            return False
        how = "structural"
        for q in owners.values():
            how = q.how
            self.pairs.remove(q)
            self.pair_units.pop(id(q), None)
            for n in q.caffe_chain:
                self.pair_of_c.pop(n, None)
                self.absorbed.pop(n, None)
        self.matched.discard(key)
        pair = self.add_pair(block, key, how)
        kind = self.tp[self.units[key].out].kind
        for n in block[:-1]:
            self.absorbed[n] = (f"computed inside TF {pair.tf!r} ({kind}: both directions, the time reversals "
                                f"and their join): compared at the block's end, {block[-1]!r}")
        return True

    def inputs_after_preprocessing(self) -> None:
        """The TF side was fed its own inputs: hold each Caffe input against the end of the
        TF layers that preprocess it (a channel swap, a mean, a scale: a chain of unmatched
        TF units from the input), their first common point; with no such chain the input
        is not compared at all (the two sides were fed different values on purpose)."""
        for pair in list(self.pairs):
            c = pair.caffe_chain[0]
            if self.ckind[c] != "input":
                continue
            units = self.pair_units.get(id(pair), [])
            path: list[str] = []
            cur = units[-1] if units else None
            while cur is not None:
                cons = self.units[cur].consumers
                if len(cons) != 1 or cons[0] in self.matched:
                    break
                nxt = self.units[cons[0]]
                if nxt.ext_inputs != [cur] or nxt.primary in ("input", "const"):
                    break
                path.append(nxt.key)
                cur = nxt.key
            if path:
                for k in path:
                    self.matched.add(k)
                    pair.tf_group.extend(self.units[k].members)
                self.pair_units[id(pair)] = [*units, *path]
                pair.tf = self.units[path[-1]].out
                pair.note = (f"the TF side was fed its own input: compared after its preprocessing "
                             f"({', '.join(path)})")
            else:
                self.pairs.remove(pair)
                for n in pair.caffe_chain:
                    self.pair_of_c.pop(n, None)
                self.skipped[c] = "the TF side was fed its own input and has no preprocessing layers after it"

    def _match_input(self, p: Probe) -> None:
        cands = [u for u in self.uorder if u.key not in self.matched and "input" in u.kinds]
        if not cands:
            return
        same = [u for u in cands if self._shape_ok(p, u)]
        self.add_pair([p.name], (same or cands)[0].key, "structural")

    def _tf_inputs_of(self, p: Probe) -> set[str] | None:
        want: set[str] = set()
        skipped_const = False
        for i in p.inputs:
            if i not in self.cp:
                continue
            P = self.pair_of_c.get(i)
            if P is None:
                if self.ckind[i] == "input":
                    want.add(ROOT)
                    continue
                if self.ckind[i] == "const":
                    # a Caffe constant (a Parameter: an LSTM's cont, a BatchReindex's index) the
                    # TF layer holds inside itself or does without (a Keras LSTM has no cont)
                    skipped_const = True
                    continue
                return None
            units = self.pair_units.get(id(P), [])
            if not units:
                return None
            want.add(units[-1])
        if not want and skipped_const:
            return None
        return want or {ROOT}

    def _resolved_inputs(self, u: _Unit) -> set[str]:
        out: set[str] = set()
        for k in u.ext_inputs:
            seen = 0
            while k not in self.matched and self.units[k].primary in PASS_THROUGH and len(self.units[k].ext_inputs) == 1 and seen < 50:
                k = self.units[k].ext_inputs[0]
                seen += 1
            if k not in self.matched and self.units[k].primary in PASS_THROUGH and not self.units[k].ext_inputs:
                k = ROOT
            if k not in self.matched and "input" in self.units[k].kinds:
                k = ROOT
            out.add(k)
        return out or {ROOT}

    def _candidates(self, p: Probe) -> list[_Unit]:
        want = self._tf_inputs_of(p)
        if want is None:
            return []
        k = self.ckind[p.name]
        # reachable consumers of the wanted TF units, looking through unmatched pass-through units
        if ROOT in want:
            pool = self.uorder
        else:
            seen: set[str] = set()
            stack = list(want)
            while stack:
                for c in self.units[stack.pop()].consumers:
                    if c in seen:
                        continue
                    seen.add(c)
                    if c not in self.matched and self.units[c].primary in PASS_THROUGH:
                        stack.append(c)
            pool = sorted((self.units[c] for c in seen), key=lambda u: u.order)
        out = []
        for u in pool:
            if u.key in self.matched or not u.kinds or u.primary in ("input", "const"):
                continue
            if not compatible(k, u.primary):
                continue
            if k in RECURRENT and self._go_backwards(u):
                continue  # pairs only behind a Caffe time reversal (_reversal_into_backward_rnn)
            if self._resolved_inputs(u) == want:
                out.append(u)
        return out

    def _shape_ok(self, p: Probe, u: _Unit) -> bool:
        t = self.tp[u.out]
        try:
            return relayout_shape(t.shape, t.layout, t.flat_shape, p.layout, p.flat_shape) == tuple(p.shape)
        except Exception:  # noqa: BLE001 - not reconcilable means "not this one"
            return False

    def _choose(self, p: Probe, cands: list[_Unit]) -> str | None:
        if not cands:
            return None
        k = self.ckind[p.name]
        exact = [u for u in cands if u.primary == k]
        cands = exact or cands
        shaped = [u for u in cands if self._shape_ok(p, u)]
        cands = shaped or cands
        if len(cands) == 1:
            return cands[0].key
        best = self._by_value(p, cands) if shaped else None
        return best if best is not None else cands[0].key

    def _by_value(self, p: Probe, cands: list[_Unit]) -> str | None:
        if self.caffe_value is None or self.tf_value is None:
            return None
        cv = self.caffe_value(p.name)
        if cv is None:
            return None
        cv = np.asarray(cv, np.float64).ravel()
        scores = []
        for u in cands:
            t = self.tp[u.out]
            tv = self.tf_value(u.out)
            if tv is None:
                continue
            try:
                x = np.asarray(relayout(tv, t.layout, t.flat_shape, p.layout, p.flat_shape), np.float64).ravel()
            except Exception:  # noqa: BLE001
                continue
            if x.shape != cv.shape:
                continue
            den = float(np.linalg.norm(cv) * np.linalg.norm(x))
            cos = float(np.dot(cv, x) / den) if den > 0 else 0.0
            dist = float(np.linalg.norm(cv - x))
            scores.append((cos, -dist, -u.order, u.key))
        if not scores:
            return None
        return max(scores)[3]

    # result -------------------------------------------------------------------
    def result(self, source: str) -> Alignment:
        pairs = sorted(self.pairs, key=lambda q: self.cidx[q.caffe_chain[-1]])
        unmapped_c = [p.name for p in self.c if p.name not in self.pair_of_c and p.name not in self.skipped]
        unmapped_t = [m for u in self.uorder if u.key not in self.matched for m in u.members]
        return Alignment(pairs, unmapped_c, unmapped_t, dict(self.absorbed), source, dict(self.skipped))


def _grouped_convs(tf: list[Probe]) -> dict[str, str]:
    """TF probes of grouped convolutions written out as ops -> the one unit key each.

    A converter (onnx-tf) writes a Caffe convolution with ``group: k`` as
    ``Split(axis C) -> k x Conv2D (one per part) [-> a bias each] -> ConcatV2(axis C)``;
    the trailing bias-add after the concat is absorbed like any conv's. These ops are
    one ``conv`` unit, keyed by the concat's layer, whose input is the Split's input (so
    own-error replay feeds that). Anything else (parts read twice, a concat that mixes
    in other tensors, other axes) is left as it is.
    """
    by = {p.name: p for p in tf}
    cons: dict[str, list[str]] = {}
    for p in tf:
        for i in dict.fromkeys(p.inputs):
            cons.setdefault(i, []).append(p.name)
    layer_members: dict[str, list[str]] = {}
    for p in tf:
        layer_members.setdefault(p.layer or p.name, []).append(p.name)

    def alone(name: str) -> bool:  # the probe is a layer of its own
        return layer_members.get(by[name].layer or name) == [name]

    def channel_axis(p: Probe, axis: Any) -> int | None:
        try:
            a = int(np.asarray(axis).reshape(-1)[0])
        except (TypeError, ValueError, IndexError):
            return None
        rank = len(p.shape) if p.shape is not None else 0
        if rank != 4:
            return None
        a = a + rank if a < 0 else a
        lay = p.layout if isinstance(p.layout, str) and len(p.layout) == 4 and "C" in p.layout else ""
        return a if (not lay or lay.index("C") == a) else None

    out: dict[str, str] = {}
    for p in tf:
        if _probe_kind(p) != "split" or ":" in p.name or len(p.inputs) != 1 or p.name in out:
            continue
        parts = [n for n in layer_members.get(p.layer or p.name, []) if n.split(":")[0] == p.name]
        if len(parts) < 2 or len(parts) != len(layer_members.get(p.layer or p.name, [])):
            continue
        axis = channel_axis(by[p.inputs[0]], p.params.get("axis")) if p.inputs[0] in by else None
        if axis is None:
            continue
        chain: list[str] = []
        ends: list[str] = []
        for part in parts:
            nxt = cons.get(part, [])
            if len(nxt) != 1 or _probe_kind(by[nxt[0]]) not in ("conv", "depthwise_conv") or not alone(nxt[0]):
                break
            conv = nxt[0]
            if by[conv].inputs != [part]:
                break
            chain.append(conv)
            end = conv
            after = cons.get(conv, [])
            if len(after) == 1 and _probe_kind(by[after[0]]) == "bias" and alone(after[0]):
                end = after[0]
                chain.append(end)
            ends.append(end)
        else:
            heads = {n for e in ends for n in cons.get(e, [])}
            if len(heads) != 1:
                continue
            cat = by[heads.pop()]
            if (
                _probe_kind(cat) != "concat"
                or not alone(cat.name)
                or sorted(cat.inputs) != sorted(ends)
                or any(len(cons.get(e, [])) != 1 for e in ends)
                or channel_axis(cat, cat.params.get("axis")) != axis
            ):
                continue
            key = cat.layer or cat.name
            for n in [*parts, *chain, cat.name]:
                out[n] = key
    return out


def _output_index(name: str) -> int:
    """The output index of a TF probe name (``split:2`` -> 2; ``split`` -> 0)."""
    head, sep, tail = name.rpartition(":")
    return int(tail) if sep and head and tail.isdigit() else 0


def _op_outputs(u: _Unit) -> list[str]:
    """The unit's members in output order when they are two or more outputs of one op, else []."""
    outs = sorted(u.members, key=_output_index)
    one_op = len({m.rpartition(":")[0] if _output_index(m) else m for m in outs}) == 1
    return outs if len(outs) > 1 and one_op and [_output_index(m) for m in outs] == list(range(len(outs))) else []


def _near(name: str, pool: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(name, pool, n=3)
    return f" (did you mean {', '.join(map(repr, close))}?)" if close else ""


def align(
    caffe_trace: Trace | Iterable[Probe],
    tf_trace: Trace | Iterable[Probe],
    mapping: Mapping[str, str] | str | os.PathLike[str] | None = None,
    *,
    caffe_value: Callable[[str], np.ndarray | None] | None = None,
    tf_value: Callable[[str], np.ndarray | None] | None = None,
    separate_inputs: bool = False,
) -> Alignment:
    """Align a Caffe trace with a TF trace (values are only read to break structural ties).

    ``caffe_trace``/``tf_trace`` are :class:`Trace` objects or lists of probes
    (values optional). ``caffe_value``/``tf_value`` fetch a value by probe name
    when the probes carry none (archives). ``separate_inputs``: the TF side was fed
    its own inputs (see :meth:`_Aligner.inputs_after_preprocessing`). Returns an :class:`Alignment` whose
    pairs are in Caffe graph order.

    >>> from layerparity.trace import Probe, Trace
    >>> c = Trace("caffe", probes=[Probe("data", "Input"), Probe("conv1", "Convolution", inputs=["data"]),
    ...                            Probe("relu1", "ReLU", blob="conv1", inputs=["conv1"])])
    >>> t = Trace("tensorflow", probes=[Probe("input_1", "InputLayer"),
    ...                                 Probe("conv1", "Conv2D", inputs=["input_1"], fused=["relu"])])
    >>> a = align(c, t)
    >>> [(p.caffe_chain, p.tf, p.how) for p in a.pairs]
    [(['data'], 'input_1', 'structural'), (['conv1', 'relu1'], 'conv1', 'name')]
    """
    mp = as_mapping(mapping)
    cm, tm = _metas(caffe_trace), _metas(tf_trace)
    if caffe_value is None and isinstance(caffe_trace, Trace):
        caffe_value = lambda n: caffe_trace[n].value  # noqa: E731
    if tf_value is None and isinstance(tf_trace, Trace):
        tf_value = lambda n: tf_trace[n].value  # noqa: E731
    a = _Aligner(cm, tm, caffe_value, tf_value)
    if mp:
        a.explicit(mp)
    a.by_name()
    a.walk()
    if separate_inputs:
        a.inputs_after_preprocessing()
    return a.result(mp.source if mp else "")

"""Own error: each TF layer (or group of TF ops) re-run on its Caffe counterpart's input.

A layer whose own error passes computes the same function as Caffe; its total
error can then only be inherited from upstream. :func:`own_request` says what to
replay for a row (an :class:`OwnRequest`, or a note saying why it cannot be
measured), :func:`replay_all` runs a batch of requests through one backend call
per kind, and :func:`to_caffe_layout` brings an output back to the Caffe probe's
layout for the metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .alignment import Pair
from .backends.base import Replayer
from .detections import SET_KINDS, detection_count, in_reference_order, read_table
from .errors import InputError
from .kinds import probe_kind
from .layout import LayoutMismatch, relayout
from .trace import Probe

__all__ = ["OwnRequest", "own_request", "replay_all", "to_caffe_layout"]


@dataclass
class OwnRequest:
    """Run the TF probe ``tf`` on ``feed``.

    ``group_inputs`` is None for a single layer (``replay``); for a group of ops
    (``Conv2D -> BiasAdd -> Relu``, ``MatMul -> Mul -> AddV2``) it names the group's
    external inputs, fed in that order (``replay_group``).
    """

    tf: str
    feed: list[np.ndarray]
    group_inputs: list[str] | None = None


def to_caffe_layout(value: np.ndarray, tm: Probe, cm: Probe, ref: np.ndarray | None = None) -> tuple[np.ndarray | None, str]:
    """A TF value (declared by ``tm``) in the Caffe probe ``cm``'s layout, or None and why not.

    ``ref``, the Caffe value, puts the rows of a set of detections (a ``DetectionOutput``)
    in its order (:mod:`layerparity.detections`); ssd_keras's N x top_k x 6 table of detections
    is read as Caffe's rows first, and the note (returned with the value too) says so."""
    if ref is not None and cm.kind in SET_KINDS:
        table, read = read_table(ref, value)
        if table is None and read:
            return None, f"shape mismatch: caffe {tuple(cm.shape)} vs {read}"
        if table is not None:
            if table.shape != tuple(cm.shape):
                return None, f"shape mismatch: caffe {tuple(cm.shape)} vs {read}, where Caffe has {detection_count(ref)}"
            return in_reference_order(ref, table), read
    try:
        got = relayout(value, tm.layout, tm.flat_shape, cm.layout, cm.flat_shape)
    except LayoutMismatch as e:
        return None, (f"layout mismatch: caffe {tuple(cm.shape)} in {cm.layout or 'as is'} vs "
                      f"tf {tuple(np.shape(value))} in {tm.layout or 'as is'}: {e}")
    if tuple(got.shape) != tuple(cm.shape):
        how = f" (as {cm.layout} {tuple(got.shape)})" if tm.layout != cm.layout and cm.layout and tm.layout else ""
        return None, (f"shape mismatch: caffe {tuple(cm.shape)}{' in ' + cm.layout if cm.layout else ''} vs "
                      f"tf {tuple(np.shape(value))}{' in ' + tm.layout if tm.layout else ''}{how}")
    if ref is not None and cm.kind in SET_KINDS:
        got = in_reference_order(ref, got)
    return got, ""


def own_request(
    pair: Pair,
    cin: list[np.ndarray] | None,
    caffe: Mapping[str, Probe],
    tf: Mapping[str, Probe],
    pair_of_caffe: Mapping[str, Pair],
    replay: Replayer,
    keep: set[str],
) -> OwnRequest | str:
    """What to replay for the row of ``pair``, or a note saying why its own error is not
    measured ("" when the layer simply is not replayable).

    ``cin`` are the held Caffe values feeding the chain; ``caffe``/``tf`` the probe
    metadata by name; ``keep`` the TF probes that other rows compare (never skipped
    over when walking back through TF-only layers).
    """
    if pair.how == "identity":
        return ""
    tm = tf.get(pair.tf)
    group = len(pair.tf_group) > 1
    if group:  # several TF ops: feed the group's external inputs
        members = set(pair.tf_group)
        tnames: list[str] = []
        for m in pair.tf_group:
            for i in tf[m].inputs if m in tf else []:
                if i not in members and i not in tnames:
                    tnames.append(i)
    else:
        tnames = list(tm.inputs) if tm is not None else []
    try:
        can = replay.can_replay_group(pair.tf, tnames) if group else replay.can_replay(pair.tf)
        if not can:
            return ""
    except Exception as e:  # noqa: BLE001 - a backend question must not sink the comparison
        return f"own error not measured ({type(e).__name__}: {e})"
    c0 = caffe[pair.caffe_chain[0]]
    cnames = [i for i in c0.inputs if i in caffe]
    if cin is not None and len(cin) == len(cnames) != len(tnames):
        # Caffe constants the TF layer holds inside itself or does without (an LSTM's cont
        # against a Keras LSTM, a BatchReindex's index against a go_backwards layer): feed
        # the rest; a cont that does more than start the sequence then shows in the own error
        data = [k for k, n in enumerate(cnames) if probe_kind(caffe[n]) != "const"]
        if len(data) == len(tnames):
            cnames, cin = [cnames[k] for k in data], [cin[k] for k in data]
    if cin is None or len(cnames) != len(tnames) or not cnames:
        return f"own error not measured: {len(cnames)} Caffe input(s) vs {len(tnames)} TF input(s)"
    feed = []
    try:
        for cn, tn, v in zip(cnames, tnames, cin, strict=True):
            x, why = _feed(cn, tn, v, caffe, tf, pair_of_caffe, replay, keep)
            if x is None:
                return f"own error not measured: {why}"
            feed.append(x)
    except InputError as e:
        return f"own error not measured ({e})"
    return OwnRequest(pair.tf, feed, tnames if group else None)


def _feed(cn: str, tn: str, v: np.ndarray, caffe: Mapping[str, Probe], tf: Mapping[str, Probe],
          pair_of_caffe: Mapping[str, Pair], replay: Replayer, keep: set[str]) -> tuple[np.ndarray | None, str]:
    """The Caffe value ``v`` of ``cn`` as the TF layer's input ``tn``.

    ``tn`` is usually the TF counterpart of ``cn``; when TF-only layers sit in
    between (a ``ZeroPadding2D`` before a VALID conv, a ``Flatten`` before a
    ``Dense``), the Caffe value is fed in the counterpart's layout and those layers
    are replayed on it first.
    """
    cpair = pair_of_caffe.get(cn)
    start = tn
    path: list[str] = []
    if cpair is not None and cpair.caffe == cn:
        cur = tn
        while cur != cpair.tf and len(path) < 16:
            meta = tf.get(cur)
            if meta is None or len(meta.inputs) != 1 or cur in keep:
                path = []
                cur = tn
                break
            path.append(cur)
            cur = meta.inputs[0]
        if cur == cpair.tf:
            start = cur
        else:
            path = []
    smeta = tf.get(start)
    if smeta is None:
        return None, f"TF input {start!r} is not in the TF trace"
    cmeta = caffe[cn]
    try:
        x = relayout(v, cmeta.layout, cmeta.flat_shape, smeta.layout, smeta.flat_shape)
    except LayoutMismatch as e:
        return None, f"Caffe input {cn!r} does not fit TF input {start!r} ({e})"
    if smeta.shape and tuple(x.shape) != tuple(smeta.shape):
        return None, (f"Caffe input {cn!r} is {tuple(x.shape)} in {smeta.layout}, "
                      f"TF input {start!r} is {tuple(smeta.shape)}")
    # a view (NCHW -> NHWC) of the held Caffe value: the backend copies it into a tensor
    # once, so a contiguous copy here would only double the copying and the memory
    for q in reversed(path):
        if not replay.can_replay(q):
            return None, f"TF-only layer {q!r} between {start!r} and the layer cannot be replayed"
        x = np.asarray(replay.replay(q, [x]))
    return x, ""


def replay_all(replay: Replayer, requests: list[OwnRequest]) -> list[np.ndarray | Exception]:
    """Run every request: single layers in one ``replay_many`` call, groups in one
    ``replay_groups`` call. One output per request, in order; a request the backend
    refuses gets its :class:`InputError` in its slot."""
    out: list[np.ndarray | Exception | None] = [None] * len(requests)
    singles = [i for i, r in enumerate(requests) if r.group_inputs is None]
    groups = [i for i, r in enumerate(requests) if r.group_inputs is not None]
    if singles:
        got = replay.replay_many([(requests[i].tf, requests[i].feed) for i in singles])
        for i, g in zip(singles, got, strict=True):
            out[i] = g
    if groups:
        got = replay.replay_groups([(requests[i].tf, requests[i].group_inputs or [], requests[i].feed) for i in groups])
        for i, g in zip(groups, got, strict=True):
            out[i] = g
    return [o if o is not None else InputError("not replayed") for o in out]

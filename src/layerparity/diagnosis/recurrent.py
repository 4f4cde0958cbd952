"""LSTM: a port that ignores Caffe's ``cont`` (sequence-start) input; recompute Caffe's
LSTM with its state never reset after t = 0 and compare it with the TF output."""

from __future__ import annotations

import numpy as np

from ..result import Diagnosis
from . import reference as ref
from ._core import Case

LSTM_CONT_FIX = (
    "Caffe's LSTM multiplies the previous h and c by `cont` (0 starts a new sequence) at every step; a Keras "
    "LSTM never resets its state inside a batch row. Feed `cont` to the port and reset the state where it is 0: "
    "an RNN over a cell that multiplies the incoming states by cont (see tests/layer_types/"
    "test_sequence_detection_layers.py, ContLSTMCell), or split the rows at each sequence start.")


def lstm_rules(case: Case) -> list[Diagnosis]:
    out: list[Diagnosis] = []
    t = case.t
    if t is None or case.ckind_raw != "LSTM" or len(case.x) != 2 or len(case.cw) != 3:
        return out
    x, cont = case.x
    if x.ndim != 3 or cont.shape != x.shape[:2] or case.y.shape[:2] != x.shape[:2]:
        return out
    restarts = [(int(s), int(n)) for s, n in zip(*np.nonzero(cont[1:] == 0), strict=True)]
    if not restarts:
        return out  # no sequence starts after t = 0: ignoring cont changes nothing
    w_xc, b_c, w_hc = case.cw
    case.set_reference(ref.lstm(x, cont, w_xc, b_c, w_hc))
    if case.reference is None:
        return out
    no_reset = np.ones_like(cont)
    no_reset[0] = cont[0]
    starts = [[s + 1, n] for s, n in restarts]
    case.attempt(out, "lstm_sequence_start",
                 f"TF carries the LSTM state across the {len(starts)} sequence start(s) Caffe's cont input marks "
                 f"after t = 0 (time, item: {starts[:8]}): recomputing Caffe's LSTM with its state never reset "
                 "there reproduces the TF output (the two agree before the first restart).",
                 LSTM_CONT_FIX, lambda: ref.lstm(x, no_reset, w_xc, b_c, w_hc), sequence_starts=starts[:32])
    return out

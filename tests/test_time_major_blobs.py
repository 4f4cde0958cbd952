"""Time-major blobs before and after a recurrent layer (CRNN-style nets, issue 15).

- A Reshape that only drops size-1 axes keeps the labels of the axes it keeps, in the Caffe
  worker and in the TF backends alike: CRNN's ``Permute(3, 0, 1, 2)`` top (``WNCH``, T x N x C x 1)
  reshaped to T x N x C is ``WNC`` in Caffe and ``NWC`` in a batch-major Keras port, so the two
  are compared through a transpose instead of as is (a shape mismatch before).
- ``softmax_axis`` is named on a time-major (``TNC``) blob: a port normalizing over the time
  axis (Caffe axis 0, which is not a batch axis there) is recomputed and confirmed.
- A gather along T (CRNN's backward direction: BatchReindex over Caffe's axis 0, a Keras
  ``take`` along axis 1) keeps the sequence's labels on both sides, ``WNC``/``NWC`` included;
  a sequence left in reversed time order is named ``axis_reversed`` (axis T), nothing else is.
"""

from __future__ import annotations

import numpy as np

from layerparity.backends._caffe_net import layout_for, squeezed_layout
from layerparity.backends.tfcommon import probe_layout
from layerparity.diagnosis import DiagnosisContext, diagnose
from layerparity.diagnosis.reference import softmax
from layerparity.layout import relayout
from layerparity.result import LayerResult
from layerparity.trace import Probe

T, N, C = 7, 1, 5


def test_a_squeezing_reshape_keeps_the_labels_of_the_kept_axes_on_both_sides():
    # one rule, used by the Caffe worker's layout_for and the TF backends' probe_layout
    assert squeezed_layout("WNCH", (T, N, C, 1), (T, N, C)) == "WNC"
    assert squeezed_layout("NWCH", (N, T, C, 1), (N, T, C)) == "NWC"
    assert squeezed_layout("NCHW", (1, C, 1, T), (1, C, T)) == "NCW"
    assert squeezed_layout("WNCH", (T, N, C, 2), (T, N, 2 * C)) == ""  # merges two axes: not a squeeze
    assert squeezed_layout("WNCH", (T, N, C, 1), (T, N, C, 1)) == ""  # same rank: not this rule
    assert squeezed_layout("", (T, N, C, 1), (T, N, C)) == ""
    assert squeezed_layout("flat:NCHW", (1, 20), (1, 20)) == ""
    # Caffe: Reshape (0, 0, -1) of the WNCH Permute top; 2-D results keep the flatten rule
    assert layout_for("Reshape", {}, (T, N, C), [("WNCH", None, (T, N, C, 1))]) == ("WNC", None)
    assert layout_for("Reshape", {}, (N, C * T), [("NCHW", None, (N, C, 1, T))])[0] == "flat:NCHW"
    # Keras: Reshape((T, C)) of the Permute((2, 3, 1)) output
    assert probe_layout((N, T, C), op="reshape", in_layouts=["NWCH"], in_shape=(N, T, C, 1),
                        default="NHWC") == ("NWC", None)
    assert probe_layout((N, T * C), op="reshape", in_layouts=["NWCH"], in_shape=(N, T, C, 1),
                        default="NHWC")[0] != "NWC"
    # and the two labels are one transpose apart
    x = np.arange(T * N * C, dtype=np.float32).reshape(T, N, C)
    np.testing.assert_array_equal(relayout(x, "WNC", None, "NWC"), x.transpose(1, 0, 2))


def test_softmax_over_the_time_axis_of_a_time_major_blob_is_named():
    r = np.random.default_rng(3)
    x = r.standard_normal((T, 2, C)).astype(np.float32)  # T x N x C, Caffe's Softmax axis 2
    y = softmax(x, 2).astype(np.float32)
    t = softmax(x, 0).astype(np.float32)  # the port's Softmax(axis=1) on N x T x C: over T
    row = LayerResult("prob", "prob", "prob", caffe_kind="Softmax", tf_kind="Softmax", caffe_chain=["prob"])
    cp = Probe("prob", "Softmax", y, layout="TNC", layer="prob", params={"axis": 2})
    ctx = DiagnosisContext(caffe_probes={"prob": cp})
    d = diagnose(row, cp, Probe("prob", "Softmax", t, layout="TNC"), caffe_inputs=[x], caffe_weights=None,
                 tf_weights=None, context=ctx)
    assert d and d[0].kind == "softmax_axis", [(e.kind, e.summary) for e in d]
    assert d[0].evidence["confirmed_by"] == "recomputation" and d[0].evidence["tf_axis_nchw"] == 0


def test_a_gather_along_t_keeps_the_sequence_labels_on_both_sides():
    # CRNN's backward direction: its sequence (still labelled W, the image columns) reversed along
    # T before the backward LSTM (Caffe BatchReindex over axis 0; a Keras gather along axis 1)
    assert layout_for("BatchReindex", {}, (T, N, C), [("WNC", None, (T, N, C))]) == ("WNC", None)
    assert layout_for("BatchReindex", {}, (T, N, C), [("TNC", None, (T, N, C))]) == ("TNC", None)
    assert probe_layout((N, T, C), in_layouts=["NWC", ""], in_shape=(N, T, C), default="NHWC") == ("NWC", None)
    assert probe_layout((N, T, C), in_layouts=["NTC", ""], in_shape=(N, T, C), default="NHWC") == ("NTC", None)
    # only a batch-major sequence (N, one sequence axis, C): not other squeezed 3-D labels
    assert probe_layout((N, C, T), in_layouts=["NCW"], in_shape=(N, C, T), default="NHWC") == ("", None)
    # and the two labels are one transpose apart, reversed or not
    x = np.arange(T * N * C, dtype=np.float32).reshape(T, N, C)[::-1]
    np.testing.assert_array_equal(relayout(x, "WNC", None, "NWC"), x.transpose(1, 0, 2))


def _lstm_row_diagnoses(y: np.ndarray, t: np.ndarray):
    row = LayerResult("lstm1_back_reversed", "lstm1_back_reversed", "lstm1_back_reversed", caffe_kind="BatchReindex",
                      tf_kind="Lambda", caffe_chain=["lstm1_back_reversed"])
    cp = Probe("lstm1_back_reversed", "BatchReindex", y, layout="TNC", layer="lstm1_back_reversed")
    return diagnose(row, cp, Probe("lstm1_back_reversed", "Lambda", t.transpose(1, 0, 2), layout="NTC"),
                    caffe_inputs=None, caffe_weights=None, tf_weights=None,
                    context=DiagnosisContext(caffe_probes={"lstm1_back_reversed": cp}))


def test_a_sequence_left_in_reversed_time_order_is_named_axis_reversed():
    # CRNN's backward LSTM output not reversed back (or a go_backwards output used as is)
    y = np.random.default_rng(5).standard_normal((T, 2, C)).astype(np.float32)
    d = _lstm_row_diagnoses(y, y[::-1])
    assert d and d[0].kind == "axis_reversed", [(e.kind, e.summary) for e in d]
    assert d[0].evidence["axis"] == 0 and d[0].evidence["axis_label"] == "T" and d[0].confidence >= 0.9
    # the values moved otherwise (rolled by one step): no reversal claimed
    d = _lstm_row_diagnoses(y, np.roll(y, 1, axis=0))
    assert d and all(e.kind != "axis_reversed" for e in d), [(e.kind, e.summary) for e in d]


def _concat_row_diagnoses(fw: np.ndarray, bw: np.ndarray, t: np.ndarray):
    """CRNN's join (Concat axis 2 of two T x N x H sequences) with TF's value ``t`` (T x N x 2H)."""
    y = np.concatenate([fw, bw], axis=2)
    row = LayerResult("blstm1", "blstm1", "blstm1", caffe_kind="Concat", tf_kind="Concatenate", caffe_chain=["blstm1"])
    cp = Probe("blstm1", "Concat", y, inputs=["lstm1", "lstm1_back_reversed"], layout="TNC", layer="blstm1",
               params={"axis": 2})
    return diagnose(row, cp, Probe("blstm1", "Concatenate", t.transpose(1, 0, 2), layout="NTC"),
                    caffe_inputs=[fw, bw], caffe_weights=None, tf_weights=None,
                    context=DiagnosisContext(caffe_probes={"blstm1": cp}))


def test_a_concat_input_left_in_reversed_time_order_is_named_with_that_input():
    # a go_backwards output joined without its flip back: only the backward half is reversed
    r = np.random.default_rng(6)
    fw, bw = (r.standard_normal((T, 2, C)).astype(np.float32) for _ in range(2))
    d = _concat_row_diagnoses(fw, bw, np.concatenate([fw, bw[::-1]], axis=2))
    assert d and d[0].kind == "axis_reversed", [(e.kind, e.summary) for e in d]
    ev = d[0].evidence
    assert ev["axis"] == 0 and ev["axis_label"] == "T" and ev["concat_input_name"] == "lstm1_back_reversed"
    # the backward half rolled by a step, or the forward half reversed too: no one-input reversal claimed
    for t in (np.concatenate([fw, np.roll(bw, 1, axis=0)], axis=2), np.concatenate([fw[::-1], bw[::-1]], axis=2)):
        d = _concat_row_diagnoses(fw, bw, t)
        assert all("concat_input" not in e.evidence for e in d), [(e.kind, e.summary) for e in d]

"""The zoo's CRNN: its bidirectional LSTM is compared honestly (issue 15), real Caffe and real TF.

Caffe builds the backward direction by reversing the sequence along T (BatchReindex over
axis 0 with the index T-1, ..., 0), running a second LSTM and reversing its output back; the
correct port mirrors both reversals (a gather along Keras' T axis), so every Keras layer named
after a Caffe layer holds that layer's blob (the backward LSTM's in reversed time order on both
sides). These tests make that pairing fail where it should: a port that skips either reversal
diverges at that reversal, not earlier and not never, named ``axis_reversed`` (the matrix
injects that bug at the first reversal); a gate-order bug in the backward LSTM is
named there (the matrix injects it in the forward one, the first LSTM); the backward LSTM's
``cont`` starts its own reversed sequence, and a port that reverses the flags with the data
(a reset at the last step instead of the first) diverges at the backward LSTM.
"""

from __future__ import annotations

import numpy as np
import pytest

import portbuilder as pb
from portbuilder import layers as L

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("zoo-crnn")]

BACK, REV_IN, REV_OUT = "lstm1_back", "data_reversed", "lstm1_back_reversed"


def _variant(case, keep_input_order: bool = False, keep_output_order: bool = False, cont_reversed: bool = False):
    """The correct port with its backward branch rebuilt: a reversal left out (an identity
    named after it), or the backward LSTM's cont flags reversed along with its input."""
    import keras

    from layerparity.layout import lstm_weight_caffe_to_keras

    m = pb.build_keras(case.info, case.params)
    seq, cont, fw, idx = (m.get_layer(n).output for n in ("data_reshape", "cont", "lstm1", "reverse_index"))

    def take(ts):
        return keras.ops.take(ts[0], keras.ops.cast(ts[1], "int32"), axis=1)

    def first(ts):
        return ts[0]

    flags = keras.layers.Lambda(lambda c: keras.ops.expand_dims(keras.ops.transpose(c), -1), name=BACK + "_cont")(cont)
    if cont_reversed:
        flags = keras.layers.Lambda(lambda c: keras.ops.flip(c, axis=1), name=BACK + "_cont_reversed")(flags)
    rev = keras.layers.Lambda(first if keep_input_order else take, name=REV_IN)([seq, idx])
    rnn = keras.layers.RNN(L.ContLSTMCell(32), return_sequences=True, name=BACK)
    y = rnn(keras.layers.Concatenate(name=BACK + "_x_and_cont")([rev, flags]))
    out = keras.layers.Lambda(first if keep_output_order else take, name=REV_OUT)([y, idx])
    fc = keras.layers.Dense(37, name="fc1")
    prob = keras.layers.Softmax(axis=2, name="prob")(fc(keras.layers.Concatenate(axis=2, name="blstm1")([fw, out])))
    model = keras.Model(m.input, prob)
    wx, b, wh = case.params[BACK]
    rnn.set_weights([lstm_weight_caffe_to_keras(w) for w in (wx, wh, b)])
    fc.set_weights([case.params["fc1"][0].T, case.params["fc1"][1]])
    return model


def _rows(report) -> dict:
    return {r.caffe_layer: r for r in report.rows}


def test_the_backward_branch_is_compared_blob_for_blob(zoo):
    case = zoo("crnn")
    assert np.array_equal(case.params["reverse_index"][0], np.arange(25, -1, -1))
    rows = _rows(case.compare(pb.build_keras(case.info, case.params)))
    for layer in (REV_IN, BACK, REV_OUT, "blstm1"):
        assert rows[layer].tf_layer == layer and rows[layer].caffe_chain == [layer], rows[layer]
        assert rows[layer].passed, (layer, rows[layer].max_rel_error)


@pytest.mark.parametrize("skipped", [REV_IN, REV_OUT])
def test_a_port_that_skips_a_reversal_diverges_there(zoo, skipped):
    case = zoo("crnn")
    report = case.compare(_variant(case, keep_input_order=skipped == REV_IN, keep_output_order=skipped == REV_OUT))
    fd = report.first_divergence
    assert not report and fd is not None and fd.caffe_layer == skipped, fd
    assert fd.diagnoses and fd.diagnoses[0].kind == "axis_reversed" and fd.diagnoses[0].layer == skipped
    assert fd.diagnoses[0].evidence["axis"] == 0  # T (labelled W before the first LSTM: image columns)
    rows = _rows(report)
    before = [r.caffe_layer for r in report.rows][: [r.caffe_layer for r in report.rows].index(skipped)]
    assert all(rows[c].passed for c in before)


def test_a_gate_order_bug_in_the_backward_lstm_is_named_there(zoo):
    case = zoo("crnn")
    assert pb.applicable_layers(case.info, "lstm_gate_order") == ["lstm1", BACK]
    report = case.compare(pb.build_keras(case.info, case.params, bugs=[("lstm_gate_order", BACK)]))
    fd = report.first_divergence
    assert fd is not None and fd.caffe_layer == BACK
    assert fd.diagnoses and fd.diagnoses[0].kind == "lstm_gate_order" and fd.diagnoses[0].layer == BACK
    assert _rows(report)["lstm1"].passed


def test_the_backward_lstm_starts_its_own_reversed_sequence(zoo):
    # Caffe's one cont (0 at t = 0) serves both directions: the reversed sequence starts at its
    # own first step. Reversing the flags with the data resets the state at the last step.
    case = zoo("crnn")
    report = case.compare(_variant(case, cont_reversed=True))
    fd = report.first_divergence
    assert not report and fd is not None and fd.caffe_layer == BACK, fd
    assert _rows(report)[REV_IN].passed


def test_the_weight_check_does_not_call_the_parameter_constants_missing(zoo):
    """cont and the reversal index are Parameter layers: constants a port computes or does
    without, not weights. The weight check of the correct port says they are not judged (never
    "Weights differ!") and finds every learned layer equal."""
    from layerparity.weights import CONSTANT_NOTE, weight_parity

    case = zoo("crnn")
    rep = weight_parity(case.prototxt, case.caffemodel, pb.build_keras(case.info, case.params))
    consts = {"cont", "reverse_index"}
    assert set(rep.undecided) == consts and not rep and not rep.judged, rep.to_text()
    assert {r.caffe_layer for r in rep.problems} == consts and all(rep.row(c).note == CONSTANT_NOTE for c in consts)
    assert rep.counts()["equal"] == len(rep.rows) - 2
    assert rep.to_text().startswith("Weights not judged:"), rep.to_text()
    # a learned weight that differs is still a verdict: the backward LSTM's gate order
    bad = weight_parity(case.prototxt, case.caffemodel,
                        pb.build_keras(case.info, case.params, bugs=[("lstm_gate_order", BACK)]))
    assert bad.row(BACK).status == "equal_under:lstm_gate_order" and bad.to_text().startswith("Weights differ!"), bad.to_text()

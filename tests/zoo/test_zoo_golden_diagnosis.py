"""Golden traces diagnose as well as live runs: on zoo bugs, a comparison against the
recorded Caffe trace (golden mode: the archive plus the caffemodel, read without Caffe)
gives exactly the diagnoses of a live run (same kinds, blamed layers and confidences),
and confirms them (no "not confirmed" fallback). Real Caffe and real TF."""

from __future__ import annotations

import gc

import pytest

import portbuilder as pb

pytestmark = pytest.mark.slow

#: (net, bug): bugs whose diagnosis is confirmed by recomputing the layer from its Caffe
#: input and weights (padding, pooling, LRN) or by the weights (kernel transforms).
CASES = [
    ("mobilenet_v1", "padding_asymmetry"),
    ("ops_tour", "lrn_alpha_scaling"),
    ("ops_tour", "kernel_flipped"),
    ("ops_tour", "batchnorm_epsilon"),
    ("ops_tour", "avg_pool_padding_divisor"),
    ("ops_tour", "interp_align_corners"),
]


def _diagnoses(report) -> list[tuple]:
    return [(r.caffe_layer, [(d.kind, d.layer, d.confidence) for d in r.diagnoses])
            for r in report.rows if r.diagnoses]


@pytest.mark.parametrize("net,bug", [pytest.param(n, b, marks=pytest.mark.xdist_group(f"zoo-{n}")) for n, b in CASES])
def test_golden_and_live_diagnoses_are_equal(net, bug, zoo):
    import keras

    import layerparity as lp
    from layerparity.backends.tensorflow import load_tf

    case = zoo(net)
    layers = pb.applicable_layers(case.info, bug, first=True)
    assert layers, f"{bug} does not apply to {net}"
    model = pb.build_keras(case.info, case.params, bugs=[bug])
    try:
        with load_tf(model) as tb:
            live = lp.compare_models(case.prototxt, tb, case.x, caffe_weights=case.caffemodel)
            golden = lp.compare_models(case.caffe_trace, tb, case.x, caffe_weights=case.caffemodel)
            blind = lp.compare_models(case.caffe_trace, tb, case.x)  # what golden mode did before
    finally:
        del model
        keras.backend.clear_session()
        gc.collect()
    fd = live.first_divergence
    assert fd is not None and fd.diagnoses and fd.diagnoses[0].kind == bug
    assert _diagnoses(golden) == _diagnoses(live)
    top = golden.first_divergence.diagnoses[0]
    assert "not confirmed" not in top.summary
    if bug == "padding_asymmetry":  # without the weights (before): found, but only fingerprinted
        assert blind.first_divergence.diagnoses[0].confidence < top.confidence

"""An unclipped PriorBox ported with offset 0 is Caffe's priors plus a constant (-0.5 * step /
image size on every coordinate): the generic rule's exact "constant_offset" relation must not
stop the PriorBox rule, whose recomputation names ``priorbox_parameters`` (issue 15: found by the
ssd_full zoo net, clip: false as in SSD300's deploy files)."""

from __future__ import annotations

import numpy as np

from layerparity.diagnosis import DiagnosisContext, diagnose
from layerparity.diagnosis.reference import prior_box
from layerparity.result import LayerResult
from layerparity.trace import Probe

PARAMS = {"min_size": [6.0], "max_size": [13.0], "aspect_ratio": [2.0], "flip": True, "clip": False,
          "variance": [0.1, 0.1, 0.2, 0.2], "img_size": 0, "img_h": 0, "img_w": 0, "step": 0.0,
          "step_h": 0.0, "step_w": 0.0, "offset": 0.5}


def _priors(offset: float) -> np.ndarray:
    return prior_box((4, 4), (16, 16), [6.0], [13.0], [2.0], True, False, [0.1, 0.1, 0.2, 0.2], offset).astype(np.float32)


def test_an_unclipped_priorbox_with_offset_0_is_priorbox_parameters_not_a_constant_offset():
    y, t = _priors(0.5), _priors(0.0)
    boxes = (t - y)[0, 0]
    assert np.allclose(boxes, boxes[0]) and np.allclose((t - y)[0, 1], 0)  # a pure constant per "channel"
    feat = np.random.default_rng(0).standard_normal((1, 8, 4, 4)).astype(np.float32)
    data = np.random.default_rng(1).standard_normal((1, 3, 16, 16)).astype(np.float32)
    row = LayerResult("priors", "priors", "priors", caffe_kind="PriorBox", tf_kind="PriorBox", caffe_chain=["priors"])
    cp = Probe("priors", "PriorBox", y, layout="", layer="priors", params=PARAMS)
    d = diagnose(row, cp, Probe("priors", "PriorBox", t, layout=""), caffe_inputs=[feat, data],
                 caffe_weights=None, tf_weights=None, context=DiagnosisContext(caffe_probes={"priors": cp}))
    assert d[0].kind == "priorbox_parameters", [(e.kind, e.confidence) for e in d]
    assert d[0].evidence["parameter"] == "offset" and d[0].evidence["tf_value"] == 0.0
    assert d[0].evidence["confirmed_by"] == "recomputation"

"""The zoo's Faster R-CNN end to end through ``compare_models``: a net whose proposal layer and ROI
pooling are Python layers (fixtures/zoo/pylayers), run by the Caffe worker with the folder on
``caffe_pythonpath``, against its Keras port (tests/portbuilder/rcnn.py). Real Caffe and real TF.

The matrix (test_matrix.py) covers the port's classic bugs, all upstream of the proposal layer or
at fc6; here the proposal layer's own port is wrong: it uses TF's box convention (width x2 - x1,
IoU on the boxes as they are) where py-faster-rcnn counts pixels (x2 - x1 + 1), in the decoding of
the deltas and in the NMS.
"""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest
from zoo_nets import PYLAYERS

import portbuilder as pb

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("zoo-faster_rcnn")]


def _compare(case, pixel_boxes: bool = True, **kw):
    import keras

    import layerparity as lp
    from layerparity.backends.tensorflow import load_tf

    model = pb.build_keras(case.info, case.params)
    model.get_layer("proposal").pixel_boxes = pixel_boxes
    try:
        with load_tf(model) as tb:
            return lp.compare_models(case.prototxt, tb, case.x, caffe_weights=case.caffemodel, **kw)
    finally:
        del model
        keras.backend.clear_session()
        gc.collect()


def test_the_correct_port_passes_with_the_modules_on_caffe_pythonpath(zoo):
    case = zoo("faster_rcnn")
    report = _compare(case, caffe_pythonpath=[os.fspath(PYLAYERS)])
    rows = {r.caffe_layer: r for r in report.rows}
    assert report and report.first_divergence is None
    assert rows["proposal"].tf_layer == "proposal" and rows["roi_pool5"].tf_layer == "roi_pool5"
    assert rows["proposal"].caffe_shape == (8, 5) and rows["roi_pool5"].caffe_shape == (8, 32, 3, 3)


def test_the_modules_must_be_on_caffe_pythonpath(zoo):
    from layerparity.errors import CaffeError

    case = zoo("faster_rcnn")
    with pytest.raises(CaffeError, match="cannot import module 'rpn_proposal'"):
        _compare(case)


def test_a_proposal_port_with_tfs_box_convention_diverges_at_the_proposal_layer(zoo):
    case = zoo("faster_rcnn")
    report = _compare(case, pixel_boxes=False, caffe_pythonpath=[os.fspath(PYLAYERS)])
    fd = report.first_divergence
    assert not report and fd is not None and fd.caffe_layer == "proposal"
    # layerparity cannot recompute a user's Python layer: it says so rather than guess a kind
    assert fd.diagnoses and fd.diagnoses[0].kind == "unknown"
    rows = {r.caffe_layer: r for r in report.rows}
    assert all(rows[n].passed for n in ("rpn_cls_prob_reshape", "rpn_bbox_pred"))
    assert np.isfinite(rows["proposal"].max_rel_error)

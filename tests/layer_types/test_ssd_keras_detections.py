"""An open-loop trial of DetectionOutput: a Keras SSD port written as ssd_keras writes it.

layerparity's own DetectionOutput port (test_sequence_detection_layers.detection_output_case)
was written with layerparity in mind: 1 x 1 x K x 7 rows like Caffe's. Real Keras SSD ports
follow pierluigiferrari/ssd_keras: the model concatenates ``[classes softmax, 4 box offsets,
4 anchor boxes (cx, cy, w, h), 4 variances]`` into ``predictions`` and its ``DecodeDetections``
layer returns N x top_k x 6 rows ``[class, score, xmin, ymin, xmax, ymax]``, best score
first, padded with all-zero rows to top_k, the boxes in pixels when ``normalize_coords``.
:class:`DecodeDetections` below is that layer (keras_layers/keras_layer_DecodeDetections.py)
in Keras 3 / TF2 ops, line for line, with its parameters set from the prototxt the way its
docstring maps them (confidence_thresh, iou_threshold, top_k = keep_top_k,
nms_max_output_size = nms_param.top_k).

What the trial found (each a test below):

* Named as ssd_keras names it (``decoded_predictions``), the layer is not aligned with
  Caffe's ``detection_out``: the report fails, naming it unmapped; ``mapping=`` pairs them.
* Before layerparity read ssd_keras's table, every port (correct or not) failed the same way,
  "shape mismatch: caffe (1, 1, 12, 7) vs tf (1, 12, 6)" with the generic advice to compare
  "kernel, stride, pad, axis". Now the table is read as Caffe's rows (image = batch index,
  trailing all-zero rows = padding, said in the row's note) and compared as a set.
* ssd_keras's ``nms_max_output_size`` caps NMS's output where Caffe's ``nms_param.top_k``
  caps its input (the best top_k scores of a class are NMS'ed): the faithful port is a real
  divergence wherever that cap cuts, and layerparity names it (``top_k``). Where it does not
  cut, the faithful port passes; taking the top_k before NMS makes it pass everywhere.
* Its classic bugs (iou_threshold 0.5 for Caffe's 0.45, variances not applied) fail at
  ``detection_out`` with the parameter named; pixel boxes (``normalize_coords=True``) fail on
  their values, the note saying that TF's boxes look like pixels and were not rescaled; a
  different number of detections is a shape mismatch that counts them.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_sequence_detection_layers import DET_CAFFE, DET_CLASSES, DET_PRIORS, detection_output_case

from diagnose_cases import assert_clean, caffe_net, compare, keras, prototxt
from layerparity.detections import read_table

LAYER = "detection_out"
#: ssd_keras's name for its DecodeDetections layer
TF_LAYER = "decoded_predictions"
MAPPING = {LAYER: TF_LAYER}
#: a Caffe DetectionOutput whose nms_param.top_k cuts nothing (every prior) and whose
#: keep_top_k leaves room: the faithful ssd_keras port gives Caffe's detections, zero-padded
LOOSE = {"nms": 0.45, "top_k": DET_PRIORS, "keep_top_k": 30, "conf": 0.2}


class DecodeDetections(keras.layers.Layer):
    """ssd_keras's DecodeDetections (centroids, per-class threshold then
    tf.image.non_max_suppression capped at ``nms_max_output_size``, zero-padded, then the
    ``top_k`` best over all classes, zero-padded): (batch, top_k, 6) rows ``[class_id,
    confidence, xmin, ymin, xmax, ymax]``. ``apply_variances=False`` is the classic bug of
    leaving the variances out; ``caffe_top_k`` (not ssd_keras's) takes a class's best
    ``caffe_top_k`` scores before its NMS, as Caffe's nms_param.top_k does."""

    def __init__(self, confidence_thresh=0.01, iou_threshold=0.45, top_k=200, nms_max_output_size=400,
                 coords="centroids", normalize_coords=True, img_height=None, img_width=None,
                 apply_variances=True, caffe_top_k=None, **kwargs):
        super().__init__(**kwargs)
        if normalize_coords and (img_height is None or img_width is None):
            raise ValueError("normalize_coords needs img_height and img_width")
        if coords != "centroids":
            raise ValueError("only 'centroids'")
        self.confidence_thresh, self.iou_threshold, self.top_k = confidence_thresh, iou_threshold, top_k
        self.nms_max_output_size, self.normalize_coords = nms_max_output_size, normalize_coords
        self.img_height, self.img_width = img_height, img_width
        self.apply_variances, self.caffe_top_k = apply_variances, caffe_top_k

    def call(self, y_pred):
        import tensorflow as tf  # after caffe (diagnose_cases imported it)

        def var(i):
            return y_pred[..., i] if self.apply_variances else 1.0

        # 1. anchor offsets -> boxes: cx = cx_pred * cx_variance * w_anchor + cx_anchor, ...
        cx = y_pred[..., -12] * var(-4) * y_pred[..., -6] + y_pred[..., -8]
        cy = y_pred[..., -11] * var(-3) * y_pred[..., -5] + y_pred[..., -7]
        w = tf.exp(y_pred[..., -10] * var(-2)) * y_pred[..., -6]
        h = tf.exp(y_pred[..., -9] * var(-1)) * y_pred[..., -5]
        xmin, ymin, xmax, ymax = cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h
        if self.normalize_coords:  # relative -> absolute coordinates
            xmin, xmax = xmin * self.img_width, xmax * self.img_width
            ymin, ymax = ymin * self.img_height, ymax * self.img_height
        y_pred = tf.concat([y_pred[..., :-12]] + [c[..., None] for c in (xmin, ymin, xmax, ymax)], -1)
        n_classes = y_pred.shape[2] - 4
        nms_max, top_k = self.nms_max_output_size, self.top_k

        # 2. per class: confidence threshold, NMS; then top-k over all classes
        def filter_predictions(batch_item):
            def filter_single_class(index):
                confidences = tf.expand_dims(batch_item[..., index], -1)
                class_id = tf.fill(tf.shape(confidences), tf.cast(index, tf.float32))
                single_class = tf.concat([class_id, confidences, batch_item[..., -4:]], -1)
                single_class = tf.boolean_mask(single_class, single_class[:, 1] > self.confidence_thresh)
                if self.caffe_top_k is not None:
                    k = tf.minimum(self.caffe_top_k, tf.shape(single_class)[0])
                    single_class = tf.gather(single_class, tf.math.top_k(single_class[:, 1], k=k).indices)

                def perform_nms():
                    s = single_class
                    boxes = tf.stack([s[:, 3], s[:, 2], s[:, 5], s[:, 4]], -1)  # ymin, xmin, ymax, xmax
                    keep = tf.image.non_max_suppression(boxes, s[:, 1], nms_max, iou_threshold=self.iou_threshold)
                    return tf.gather(s, keep, axis=0)

                nms = tf.cond(tf.equal(tf.size(single_class), 0), lambda: tf.zeros((1, 6)), perform_nms)
                return tf.pad(nms, [[0, nms_max - tf.shape(nms)[0]], [0, 0]])

            per_class = tf.map_fn(filter_single_class, tf.range(1, n_classes),
                                  fn_output_signature=tf.TensorSpec((nms_max, 6), tf.float32))
            filtered = tf.reshape(per_class, (-1, 6))
            padded = tf.pad(filtered, [[0, tf.maximum(top_k - tf.shape(filtered)[0], 0)], [0, 0]])
            return tf.gather(padded, tf.nn.top_k(padded[:, 1], k=top_k, sorted=True).indices, axis=0)

        return tf.map_fn(filter_predictions, y_pred, fn_output_signature=tf.TensorSpec((top_k, 6), tf.float32))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.top_k, 6)


def ssd_keras_port(caffe: dict, name: str = TF_LAYER, **change):
    """The SSD head as ssd_keras builds it, from Caffe's loc, conf (softmaxed) and priors:
    reshaped to (1, P, 4), (1, P, C) and the anchors as centroids + variances (1, P, 8),
    concatenated as ``predictions``, decoded with the prototxt's parameters (``caffe``) and
    ``change`` (DecodeDetections' own keywords)."""
    import tensorflow as tf

    p, c = DET_PRIORS, DET_CLASSES
    ins = [keras.Input((p * 4,), batch_size=1, name="loc"),
           keras.Input((p * c,), batch_size=1, name="conf"),
           keras.Input((2, p * 4), batch_size=1, name="priors")]
    loc = keras.layers.Reshape((p, 4), name="mbox_loc_reshape")(ins[0])
    conf = keras.layers.Reshape((p, c), name="mbox_conf_reshape")(ins[1])

    def anchors(t):  # Caffe's corner priors as ssd_keras's AnchorBoxes output: cx, cy, w, h, variances
        b, v = tf.reshape(t[:, 0], (-1, p, 4)), tf.reshape(t[:, 1], (-1, p, 4))
        return tf.concat([(b[..., :2] + b[..., 2:]) / 2, b[..., 2:] - b[..., :2], v], -1)

    pri = keras.layers.Lambda(anchors, name="mbox_priorbox")(ins[2])
    pred = keras.layers.Concatenate(axis=2, name="predictions")([conf, loc, pri])
    kw = {"confidence_thresh": caffe["conf"], "iou_threshold": caffe["nms"], "top_k": caffe["keep_top_k"],
          "nms_max_output_size": caffe["top_k"], "normalize_coords": False, **change}
    return keras.Model(ins, DecodeDetections(name=name, **kw)(pred))


def ssd_net(tmp_path, caffe: dict):
    """A real Caffe DetectionOutput with ``caffe``'s parameters, fed detection_output_case's
    loc, conf and priors (3 classes, 40 priors in 5 clusters)."""
    _, _, x, _, _ = detection_output_case(tmp_path)
    body = (f'layer {{ name: "{LAYER}" type: "DetectionOutput" bottom: "loc" bottom: "conf" '
            f'bottom: "priors" top: "{LAYER}"\n'
            f'  detection_output_param {{ num_classes: {DET_CLASSES} share_location: true background_label_id: 0\n'
            f'    nms_param {{ nms_threshold: {caffe["nms"]} top_k: {caffe["top_k"]} }} code_type: CENTER_SIZE\n'
            f'    keep_top_k: {caffe["keep_top_k"]} confidence_threshold: {caffe["conf"]} }} }}\n')
    shapes = {k: v.shape for k, v in x.items()}
    return caffe_net(tmp_path, prototxt(shapes, body), name="ssd.prototxt"), x


def _outputs(net, model, x):
    for k, v in x.items():
        net.blobs[k].data[...] = v
    caffe_rows = net.forward()[LAYER].copy()
    return caffe_rows, np.asarray(model([x["loc"], x["conf"], x["priors"]]))


def _diagnosis(report):
    fd = report.first_divergence
    assert not report and fd is not None and fd.caffe_layer == LAYER, report.summary()
    assert fd.diagnoses, fd.note
    return fd, fd.diagnoses[0]


def test_named_as_ssd_keras_names_it_the_layer_is_unmapped_not_passed(tmp_path):
    net, x = ssd_net(tmp_path, LOOSE)
    report = compare(net, ssd_keras_port(LOOSE), x)
    assert not report and LAYER in report.unmapped_caffe and TF_LAYER in report.unmapped_tf, report.summary()
    assert "map them (mapping=...)" in report.summary()


def test_a_correct_ssd_keras_port_passes_its_zero_padded_table_read_as_caffes_rows(tmp_path):
    net, x = ssd_net(tmp_path, LOOSE)
    model = ssd_keras_port(LOOSE)
    caffe_rows, tf_table = _outputs(net, model, x)
    kept = caffe_rows.shape[2]
    assert tf_table.shape == (1, LOOSE["keep_top_k"], 6) and kept < LOOSE["keep_top_k"]
    assert not np.any(tf_table[0, kept:]) and np.all(np.any(tf_table[0, :kept], axis=1))  # zero padding
    assert not np.allclose(caffe_rows[0, 0, :, 1:], tf_table[0, :kept])  # another row order: by score
    report = compare(net, model, x, mapping=MAPPING)
    assert_clean(report)
    row = report.row(LAYER)
    assert row.max_abs_error < 1e-5
    assert "ssd_keras's DecodeDetections table" in row.note
    assert f"{kept} detection(s), {LOOSE['keep_top_k'] - kept} padding row(s)" in row.note


def test_ssd_keras_caps_nms_output_where_caffe_caps_its_input_and_layerparity_names_it(tmp_path):
    """DET_CAFFE's nms_param.top_k 10 cuts the candidates of a class before NMS; ssd_keras's
    nms_max_output_size 10 cuts its survivors: other detections, the same count (keep_top_k)."""
    net, x = ssd_net(tmp_path, DET_CAFFE)
    report = compare(net, ssd_keras_port(DET_CAFFE), x, mapping=MAPPING)
    fd, d = _diagnosis(report)
    assert d.kind == "detection_output_parameters" and d.evidence["parameter"] == "top_k", d.to_dict()
    assert d.evidence["caffe_rows"] == d.evidence["tf_rows"] == DET_CAFFE["keep_top_k"]
    assert "ssd_keras's DecodeDetections table" in fd.note
    # the best top_k of each class taken before NMS, as Caffe does: the port passes
    assert_clean(compare(net, ssd_keras_port(DET_CAFFE, caffe_top_k=DET_CAFFE["top_k"]), x, mapping=MAPPING))


@pytest.mark.parametrize("bug, parameter", [({"iou_threshold": 0.5}, "nms_threshold"),
                                            ({"apply_variances": False}, "variance_encoded_in_target")])
def test_a_classic_ssd_keras_bug_fails_at_detection_output_with_the_parameter_named(tmp_path, bug, parameter):
    net, x = ssd_net(tmp_path, DET_CAFFE)
    model = ssd_keras_port(DET_CAFFE, caffe_top_k=DET_CAFFE["top_k"], **bug)
    fd, d = _diagnosis(compare(net, model, x, mapping=MAPPING))
    assert d.kind == "detection_output_parameters" and d.evidence["parameter"] == parameter, d.to_dict()
    assert fd.max_abs_error > 0.01


def test_pixel_boxes_fail_on_their_values_and_are_not_rescaled(tmp_path):
    net, x = ssd_net(tmp_path, LOOSE)
    model = ssd_keras_port(LOOSE, normalize_coords=True, img_height=300, img_width=300)
    fd, _ = _diagnosis(compare(net, model, x, mapping=MAPPING))
    assert fd.max_abs_error > 100
    assert "pixel coordinates where Caffe's are normalized" in fd.note and "not rescaled" in fd.note


def test_ssd_keras_defaults_keep_other_detections_a_shape_mismatch_that_counts_them(tmp_path):
    """ssd_keras's defaults (top_k 200, nms_max_output_size 400) against keep_top_k 12: TF
    keeps every NMS survivor, more than Caffe's 12; nothing is matched."""
    net, x = ssd_net(tmp_path, DET_CAFFE)
    model = ssd_keras_port(DET_CAFFE, top_k=200, nms_max_output_size=400)
    _, tf_table = _outputs(net, model, x)
    found = int(np.any(tf_table[0], axis=1).sum())
    assert found > DET_CAFFE["keep_top_k"]
    fd, d = _diagnosis(compare(net, model, x, mapping=MAPPING))
    assert fd.metrics is None
    assert d.kind == "shape_mismatch" and (d.evidence["tf_detections"], d.evidence["caffe_detections"]) == (
        found, DET_CAFFE["keep_top_k"]), d.to_dict()
    assert "nms_max_output_size caps NMS's output" in d.fix and "kernel" not in d.fix
    assert (f"shape mismatch: caffe (1, 1, {DET_CAFFE['keep_top_k']}, 7) vs tf (1, 200, 6) read as ssd_keras's"
            in fd.note)
    assert f"{found} detection(s), {200 - found} padding row(s), where Caffe has {DET_CAFFE['keep_top_k']}" in fd.note


# -- read_table: only an unambiguous reading, never a mismatch made to pass ------------------

REF = np.array([[[[0, 1, .9, .1, .1, .5, .5], [0, 2, .8, .2, .2, .6, .6]]]], np.float32)


def test_read_table_reads_rows_with_the_batch_index_as_image_and_drops_trailing_zero_rows():
    got = np.array([[[2, .8, .2, .2, .6, .6], [1, .9, .1, .1, .5, .5], [0] * 6]], np.float32)
    rows, how = read_table(REF, got)
    assert rows.shape == (1, 1, 2, 7) and rows[0, 0, :, 0].tolist() == [0, 0]
    assert sorted(map(tuple, rows[0, 0].tolist())) == sorted(map(tuple, REF[0, 0].tolist()))
    assert "2 detection(s), 1 padding row(s)" in how


def test_read_table_leaves_other_shapes_alone():
    assert read_table(REF, REF) == (None, "")
    assert read_table(REF, np.zeros((1, 3, 7), np.float32)) == (None, "")
    assert read_table(REF[0, 0], np.zeros((1, 3, 6), np.float32)) == (None, "")


def test_a_zero_row_before_a_detection_is_not_read_as_padding():
    got = np.array([[[1, .9, .1, .1, .5, .5], [0] * 6, [2, .8, .2, .2, .6, .6]]], np.float32)
    rows, why = read_table(REF, got)
    assert rows is None and "all-zero row (1) before a detection (row 2)" in why


def test_a_row_not_all_zero_is_a_detection_so_the_counts_differ():
    got = np.array([[[1, .9, .1, .1, .5, .5], [2, .8, .2, .2, .6, .6], [0, 0, 0, 0, 0, 1e-3]]], np.float32)
    rows, how = read_table(REF, got)
    assert rows.shape == (1, 1, 3, 7) and "3 detection(s), 0 padding row(s)" in how


def test_no_detection_on_either_side_reads_as_caffes_rows_of_minus_one():
    none = np.array([[[[0, -1, -1, -1, -1, -1, -1]]]], np.float32)
    rows, how = read_table(none, np.zeros((1, 4, 6), np.float32))
    assert rows.tolist() == none.tolist() and "no detection on either side" in how
    rows, _ = read_table(none, np.array([[[1, .9, .1, .1, .5, .5]]], np.float32))
    assert rows[0, 0, 0, 1] == 1  # a TF detection where Caffe has none: compared, and it fails

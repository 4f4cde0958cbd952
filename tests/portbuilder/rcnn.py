"""The port of a Faster R-CNN net (fixtures/zoo/faster_rcnn.prototxt): its RPN Reshapes and its two
Python layers, py-faster-rcnn's proposal layer and Caffe's ROIPooling (fixtures/zoo/pylayers).

What a careful engineer writes:

- a Caffe ``Reshape`` of a 4-D blob to 4-D (the RPN's 2A x H x W scores to 2 x (A*H) x W and back)
  acts on NCHW memory order: ``Permute`` to NCHW (``<layer>_nchw``), ``Reshape`` (named after the
  Caffe layer: its value is Caffe's blob, NCHW), ``Permute`` back to NHWC (``<layer>_nhwc``);
- the proposal layer as :class:`RPNProposal`, TF ops computing what rpn_proposal.py computes:
  the same anchors (py-faster-rcnn's ``generate_anchors``, computed here again in NumPy), the
  deltas applied in float32 in the same order, boxes clipped, the min-size filter as a score of -1
  that the NMS' score threshold drops, ``top_k`` (ties: lower index first, like the layer's stable
  sort), ``tf.image.non_max_suppression`` on boxes one pixel larger (Caffe's IoU counts pixels),
  the kept boxes padded with zero rows to post_nms_topn (the layer's static top);
- ROIPooling as :class:`ROIPooling`: corners scaled and rounded half away from zero, float32 bin
  sizes, bins ``[floor(i * bin), ceil((i + 1) * bin))`` clipped to the map, a masked max, 0 for
  an empty bin.

Both are named after the Caffe layer, so alignment pairs them with the Python layers by name.
"""

from __future__ import annotations

import ast

import keras
import numpy as np
import tensorflow as tf

#: (python_param.module, python_param.layer) -> the port of that Python layer.
PYTHON_LAYERS = {("rpn_proposal", "ProposalLayer"): "proposal", ("roi_pooling", "ROIPoolingLayer"): "roi_pooling"}


def param_dict(lp) -> dict:
    """A Python layer's param_str, a Python dict body as the fixtures' layers read it."""
    return ast.literal_eval("{" + (lp.python_param.param_str or "") + "}")


def generate_anchors(base_size: int = 16, ratios=(0.5, 1, 2), scales=(8, 16, 32)) -> np.ndarray:
    """py-faster-rcnn's ``generate_anchors`` (A x 4, ratio-major, then scale), as float32."""
    base = np.array([0, 0, base_size - 1, base_size - 1], np.float64)

    def whctrs(a):
        w, h = a[2] - a[0] + 1, a[3] - a[1] + 1
        return w, h, a[0] + 0.5 * (w - 1), a[1] + 0.5 * (h - 1)

    def mk(ws, hs, cx, cy):
        ws, hs = np.asarray(ws)[:, None], np.asarray(hs)[:, None]
        return np.hstack((cx - 0.5 * (ws - 1), cy - 0.5 * (hs - 1), cx + 0.5 * (ws - 1), cy + 0.5 * (hs - 1)))

    w, h, cx, cy = whctrs(base)
    r = np.asarray(ratios, np.float64)
    ws = np.round(np.sqrt(w * h / r))
    out = []
    for anchor in mk(ws, np.round(ws * r), cx, cy):
        w, h, cx, cy = whctrs(anchor)
        s = np.asarray(scales, np.float64)
        out.append(mk(w * s, h * s, cx, cy))
    return np.vstack(out).astype(np.float32)


@keras.saving.register_keras_serializable(package="portbuilder")
class RPNProposal(keras.layers.Layer):
    """py-faster-rcnn's proposal layer (fixtures/zoo/pylayers/rpn_proposal.py) in TF ops.

    Inputs (NHWC, batch 1): the foreground/background scores (1, H, W, 2A), the deltas
    (1, H, W, 4A), the image (its H and W are the image size). Output: post_nms_topn x 5 rois.
    """

    def __init__(self, feat_stride: int, scales, ratios=(0.5, 1, 2), pre_nms_topn: int = 6000,
                 post_nms_topn: int = 300, nms_thresh: float = 0.7, min_size: float = 16,
                 pixel_boxes: bool = True, **kw):
        super().__init__(**kw)
        #: False: TF's box convention (width x2 - x1, IoU on the boxes as they are) where Caffe's
        #: counts pixels (x2 - x1 + 1), in the deltas' decoding and the NMS: a porting bug
        self.pixel_boxes = bool(pixel_boxes)
        self.feat_stride, self.scales, self.ratios = int(feat_stride), [float(s) for s in scales], [float(r) for r in ratios]
        self.pre_nms_topn, self.post_nms_topn = int(pre_nms_topn), int(post_nms_topn)
        self.nms_thresh, self.min_size = float(nms_thresh), float(min_size)

    def call(self, inputs):
        cls, deltas, image = inputs
        anchors = generate_anchors(ratios=self.ratios, scales=self.scales)
        a = len(anchors)
        fh, fw = int(cls.shape[1]), int(cls.shape[2])  # the port's own sizes
        ih, iw = int(image.shape[1]), int(image.shape[2])
        sx, sy = np.meshgrid(np.arange(fw) * self.feat_stride, np.arange(fh) * self.feat_stride)
        shifts = np.stack([sx.ravel(), sy.ravel(), sx.ravel(), sy.ravel()], 1).astype(np.float32)
        box = tf.constant((anchors[None] + shifts[:, None]).reshape(-1, 4))  # (h, w, anchor) order
        scores = tf.reshape(cls[0, :, :, a:], [-1])
        d = tf.reshape(deltas[0], [-1, 4])
        one, half = tf.constant(1.0), tf.constant(0.5)
        grow = one if self.pixel_boxes else tf.constant(0.0)
        w, h = box[:, 2] - box[:, 0] + grow, box[:, 3] - box[:, 1] + grow
        cx, cy = box[:, 0] + half * w, box[:, 1] + half * h
        pcx, pcy = d[:, 0] * w + cx, d[:, 1] * h + cy
        pw, ph = tf.exp(d[:, 2]) * w, tf.exp(d[:, 3]) * h
        x1, x2 = (tf.clip_by_value(v, 0.0, float(iw - 1)) for v in (pcx - half * pw, pcx + half * pw))
        y1, y2 = (tf.clip_by_value(v, 0.0, float(ih - 1)) for v in (pcy - half * ph, pcy + half * ph))
        big = (x2 - x1 + one >= self.min_size) & (y2 - y1 + one >= self.min_size)
        top, idx = tf.math.top_k(tf.where(big, scores, -1.0), min(self.pre_nms_topn, fh * fw * a))
        boxes = tf.gather(tf.stack([x1, y1, x2, y2], 1), idx)
        # Caffe's IoU counts pixels (x2 - x1 + 1): TF's on boxes one pixel larger; the filtered
        # boxes (score -1) fall under the score threshold
        yx = tf.stack([boxes[:, 1], boxes[:, 0], boxes[:, 3] + grow, boxes[:, 2] + grow], 1)
        keep = tf.image.non_max_suppression(yx, top, self.post_nms_topn, iou_threshold=self.nms_thresh,
                                            score_threshold=-0.5)
        kept = tf.gather(boxes, keep)
        kept = tf.reshape(tf.pad(kept, [[0, self.post_nms_topn - tf.shape(kept)[0]], [0, 0]]), (self.post_nms_topn, 4))
        return tf.concat([tf.zeros((self.post_nms_topn, 1)), kept], 1)

    def compute_output_shape(self, input_shapes):
        return (self.post_nms_topn, 5)

    def get_config(self):
        return {**super().get_config(), "feat_stride": self.feat_stride, "scales": self.scales, "ratios": self.ratios,
                "pre_nms_topn": self.pre_nms_topn, "post_nms_topn": self.post_nms_topn,
                "nms_thresh": self.nms_thresh, "min_size": self.min_size, "pixel_boxes": self.pixel_boxes}


@keras.saving.register_keras_serializable(package="portbuilder")
class ROIPooling(keras.layers.Layer):
    """Caffe's ROIPooling (fixtures/zoo/pylayers/roi_pooling.py) in TF ops: inputs the feature map
    (N, H, W, C) and the rois (R, 5); output (R, pooled_h, pooled_w, C)."""

    def __init__(self, pooled_h: int, pooled_w: int, spatial_scale: float, **kw):
        super().__init__(**kw)
        self.pooled_h, self.pooled_w, self.spatial_scale = int(pooled_h), int(pooled_w), float(spatial_scale)

    def call(self, inputs):
        feat, rois = inputs
        height, width = int(feat.shape[1]), int(feat.shape[2])
        scale = tf.constant(self.spatial_scale, tf.float32)

        def c_round(v):  # C's round() of the float32 product: half away from zero
            p = tf.cast(v * scale, tf.float64)
            return tf.cast(tf.sign(p) * tf.floor(tf.abs(p) + 0.5), tf.int32)

        x1, y1, x2, y2 = (c_round(rois[:, k]) for k in range(1, 5))

        def bins(start, end, pooled, size):
            n = tf.cast(tf.maximum(end - start + 1, 1), tf.float32) / tf.constant(float(pooled))
            i = tf.range(pooled, dtype=tf.float32)
            lo = tf.cast(tf.floor(i[None] * n[:, None]), tf.int32) + start[:, None]
            hi = tf.cast(tf.math.ceil((i + 1.0)[None] * n[:, None]), tf.int32) + start[:, None]
            lo, hi = tf.clip_by_value(lo, 0, size), tf.clip_by_value(hi, 0, size)
            at = tf.range(size)[None, None]
            return (at >= lo[:, :, None]) & (at < hi[:, :, None]), hi <= lo  # (R, pooled, size), (R, pooled)

        mh, eh = bins(y1, y2, self.pooled_h, height)
        mw, ew = bins(x1, x2, self.pooled_w, width)
        mask = mh[:, :, None, :, None] & mw[:, None, :, None, :]  # (R, ph, pw, H, W)
        fb = tf.gather(feat, tf.cast(rois[:, 0], tf.int32))  # each roi's image: (R, H, W, C)
        vals = tf.where(mask[..., None], fb[:, None, None], tf.constant(-np.inf, tf.float32))
        out = tf.reduce_max(vals, axis=[3, 4])
        empty = eh[:, :, None] | ew[:, None, :]
        return tf.where(empty[..., None], tf.zeros_like(out), out)

    def compute_output_shape(self, input_shapes):
        fs, rs = input_shapes
        return (rs[0], self.pooled_h, self.pooled_w, fs[-1])

    def get_config(self):
        return {**super().get_config(), "pooled_h": self.pooled_h, "pooled_w": self.pooled_w,
                "spatial_scale": self.spatial_scale}


def python_layer(lp, name: str, xs: list):
    """The Keras port of a Python layer the zoo knows (:data:`PYTHON_LAYERS`), applied to ``xs``."""
    pp = lp.python_param
    which = PYTHON_LAYERS.get((pp.module, pp.layer))
    if which is None:
        raise NotImplementedError(f"{lp.name}: Python layer {pp.module}.{pp.layer} has no port")
    p = param_dict(lp)
    if which == "proposal":
        layer = RPNProposal(p["feat_stride"], p.get("scales", (8, 16, 32)), p.get("ratios", (0.5, 1, 2)),
                            p.get("pre_nms_topn", 6000), p.get("post_nms_topn", 300), p.get("nms_thresh", 0.7),
                            p.get("min_size", 16), name=name)
    else:
        layer = ROIPooling(p["pooled_h"], p["pooled_w"], p["spatial_scale"], name=name)
    return layer(xs)


def nchw_reshape(lp, name: str, x):
    """A Caffe Reshape of a 4-D NCHW blob to 4-D, on the port's NHWC tensor: to NCHW, Reshape
    (named after the Caffe layer), back to NHWC. 0 copies the port's own size, -1 is inferred."""
    dims = list(lp.reshape_param.shape.dim)
    if len(dims) != 4 or dims[0] not in (0, 1) or lp.reshape_param.axis != 0 or lp.reshape_param.num_axes != -1:
        raise NotImplementedError(f"{lp.name}: Reshape of an NHWC blob other than to 4-D over every axis")
    chw = (int(x.shape[3]), int(x.shape[1]), int(x.shape[2]))
    target = tuple(chw[i] if d == 0 else int(d) for i, d in enumerate(dims[1:]))
    y = keras.layers.Permute((3, 1, 2), name=name + "_nchw")(x)
    y = keras.layers.Reshape(target, name=name)(y)
    return keras.layers.Permute((2, 3, 1), name=name + "_nhwc")(y)

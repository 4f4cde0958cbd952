"""Sequence and detection layers (LSTM, RNN, LSTMUnit, PriorBox, Proposal, DetectionOutput,
Python): each Caffe type of COVERED is captured and aligned by layerparity, proven against
real Caffe and real TF.

For each covered type, a tiny real Caffe net holding the layer and a Keras port of it
(a Keras layer, or a ``Lambda``/custom layer named like the Caffe layer where Keras has
none) are compared with the real engine: the correct port passes with the layer in a
compared row's chain, and a port with the classic bug of that type fails at that layer.

Caffe's recurrent layers are time-major (x: T x N x C, ``cont``: T x N, output T x N x H)
where a Keras port is batch-major (N x T x C): the port is fed its own inputs
(``tf_inputs=``, the Caffe ones transposed) and the engine reconciles the outputs by the
layouts both backends declare (Caffe's recurrent tops ``TNC``, Keras recurrent layers'
outputs ``NTC``). A DetectionOutput's rows are a set: the engine matches the TF rows to
Caffe's (by image, label and IoU) before comparing them (layerparity.detections).
"""

from __future__ import annotations

import numpy as np
import pytest

from diagnose_cases import (
    assert_clean,
    caffe_net,
    compare,
    conv_w,
    f32,
    hwio,
    keras,
    keras_input,
    prototxt,
    rng,
)

ops = keras.ops  # TF ops through Keras: caffe (imported by diagnose_cases) must load before TF

#: Caffe type -> the TF/Keras counterpart its correct port in this file uses.
COVERED = {
    "LSTM": "keras LSTMCell in keras RNN(return_sequences=True) resetting its state where cont is 0, "
            "gates reordered i,f,o,g -> i,f,c,o, T x N x C <-> N x T x C",
    "RNN": "keras RNN(return_sequences=True) over a custom cell: h = tanh(W_xh x + b_h + W_hh (cont h)), "
           "o = tanh(W_ho h + b_o), T x N x C <-> N x T x C",
    "LSTMUnit": "keras Lambda of TF ops returning [c, h] (top i pairs with output i), gates i,f,o,g, "
                "f zeroed where cont is 0, 1 x N x C <-> N x C",
    "PriorBox": "keras Lambda returning the priors as a constant 1 x 2 x (H*W*num_priors*4) (boxes, then variances)",
    "Python": "keras Lambda computing the Python layer's forward (module on the worker's path: caffe_pythonpath=)",
    "Proposal": "keras Lambda of TF ops: this Caffe's anchors, box transform and clip (+1 widths), top_k, "
                "tf.image.non_max_suppression on boxes one pixel larger (Caffe's IoU); R x 5 rois compared "
                "row by row (both score-descending)",
    "DetectionOutput": "keras Lambda of TF ops: CENTER_SIZE decoding with the prior variances, per-class "
                       "tf.image.non_max_suppression, rows listed by score over all labels where Caffe lists "
                       "them by label: 1 x 1 x K x 7 compared as a set (TF rows matched by image, label, IoU)",
    "PSROIPooling": "keras Lambda of TF ops: the bins' rounded bounds as masks over H and W, the average of "
                    "channel (c * G + i) * G + j per bin (tf.einsum); Caffe's R x D x G x G <-> R x G x G x D. "
                    "This Caffe's CPU forward is the fork's CUDA kernel as a loop, added by scripts/build-caffe.sh",
}

#: Caffe types of this family not covered, and why (honest: what fails or is missing).
NOT_YET: dict[str, str] = {}


# -- recurrent layers: T x N x C in Caffe, N x T x C in Keras ------------------------------

T, N, C, H = 5, 2, 3, 4


def _cont(restart: bool) -> np.ndarray:
    """Sequence-start flags (T x N): 0 at t=0, and for sequence 1 a new sequence at t=3."""
    cont = np.ones((T, N), np.float32)
    cont[0] = 0
    if restart:
        cont[3, 1] = 0
    return cont


def _ifog_to_ifco(w: np.ndarray) -> np.ndarray:
    """Caffe's gate blocks i, f, o, g (along axis 0) in Keras' order i, f, c(=g), o."""
    i, f, o, g = np.split(w, 4, axis=0)
    return np.concatenate([i, f, g, o], 0)


class ContLSTMCell(keras.layers.Layer):
    """A Keras LSTMCell that reads Caffe's ``cont`` flag as the last feature of its input
    and multiplies the previous state by it (0: a new sequence starts), as Caffe does."""

    def __init__(self, units: int, honour_cont: bool = True, **kw):
        super().__init__(**kw)
        self.cell = keras.layers.LSTMCell(units)
        self.honour_cont = honour_cont
        self.state_size = [units, units]
        self.output_size = units

    def build(self, input_shape):
        self.cell.build((input_shape[0], input_shape[-1] - 1))
        self.built = True

    def call(self, inputs, states):
        x, cont = inputs[:, :-1], inputs[:, -1:]
        if self.honour_cont:
            states = [s * cont for s in states]
        return self.cell(x, states)


class ContRNNCell(keras.layers.Layer):
    """Caffe's RNN step: h = tanh(W_xh x + b_h + W_hh (cont h)), o = tanh(W_ho h + b_o)."""

    def __init__(self, hidden: int, out: int, output_tanh: bool = True, **kw):
        super().__init__(**kw)
        self.hidden, self.out, self.output_tanh = hidden, out, output_tanh
        self.state_size = hidden
        self.output_size = out

    def build(self, input_shape):
        c = input_shape[-1] - 1
        self.w_xh = self.add_weight(shape=(c, self.hidden), name="w_xh")
        self.b_h = self.add_weight(shape=(self.hidden,), name="b_h")
        self.w_hh = self.add_weight(shape=(self.hidden, self.hidden), name="w_hh")
        self.w_ho = self.add_weight(shape=(self.hidden, self.out), name="w_ho")
        self.b_o = self.add_weight(shape=(self.out,), name="b_o")
        self.built = True

    def call(self, inputs, states):
        x, cont = inputs[:, :-1], inputs[:, -1:]
        h = ops.tanh(x @ self.w_xh + self.b_h + (states[0] * cont) @ self.w_hh)
        o = h @ self.w_ho + self.b_o
        return (ops.tanh(o) if self.output_tanh else o), [h]


def _recurrent_net(tmp_path, kind: str, params: list[np.ndarray], num_output: int):
    body = (f'layer {{ name: "{kind.lower()}1" type: "{kind}" bottom: "data" bottom: "cont" '
            f'top: "{kind.lower()}1"\n  recurrent_param {{ num_output: {num_output} }} }}\n')
    return caffe_net(tmp_path, prototxt({"data": (T, N, C), "cont": (T, N)}, body), {f"{kind.lower()}1": params})


def _batch_major(x: np.ndarray, cont: np.ndarray) -> dict[str, np.ndarray]:
    """The Caffe inputs as the Keras port takes them: N x T x C and N x T x 1."""
    return {"data": np.ascontiguousarray(x.transpose(1, 0, 2)),
            "cont": np.ascontiguousarray(cont.T[:, :, None])}


def _with_cont(cell, name: str):
    xin = keras.Input((T, C), batch_size=N, name="data")
    cin = keras.Input((T, 1), batch_size=N, name="cont")
    seq = keras.layers.Concatenate(name="x_and_cont")([xin, cin])
    rnn = keras.layers.RNN(cell, return_sequences=True, name=name)
    return keras.Model([xin, cin], rnn(seq)), rnn


def lstm_case(tmp_path, bug: str | None = None, restart: bool = True):
    """bug: None, "gate_order" (Caffe's i,f,o,g copied as is), "cont_ignored"."""
    r = rng(11)
    wx, b, wh = (f32(r.standard_normal(s) * k) for s, k in (((4 * H, C), 0.6), ((4 * H,), 0.3), ((4 * H, H), 0.6)))
    net = _recurrent_net(tmp_path, "LSTM", [wx, b, wh], H)
    order = (lambda w: w) if bug == "gate_order" else _ifog_to_ifco
    cell = ContLSTMCell(H, honour_cont=bug != "cont_ignored")
    model, _ = _with_cont(cell, "lstm1")
    cell.cell.set_weights([order(wx).T.copy(), order(wh).T.copy(), order(b)])
    x, cont = f32(r.standard_normal((T, N, C))), _cont(restart)
    return net, model, {"data": x, "cont": cont}, {"tf_inputs": _batch_major(x, cont)}, "lstm1"


def rnn_case(tmp_path, bug: str | None = None):
    """bug: "output_tanh" (o = W_ho h + b_o, the output nonlinearity Caffe applies left out)."""
    r = rng(12)
    o_dim = H  # Caffe's RNN: hidden and output both num_output wide
    shapes = [(H, C), (H,), (H, H), (o_dim, H), (o_dim,)]
    w_xh, b_h, w_hh, w_ho, b_o = (f32(r.standard_normal(s) * 0.6) for s in shapes)
    net = _recurrent_net(tmp_path, "RNN", [w_xh, b_h, w_hh, w_ho, b_o], o_dim)
    cell = ContRNNCell(H, o_dim, output_tanh=bug != "output_tanh")
    model, _ = _with_cont(cell, "rnn1")
    cell.set_weights([w_xh.T.copy(), b_h, w_hh.T.copy(), w_ho.T.copy(), b_o])
    x, cont = f32(r.standard_normal((T, N, C))), _cont(True)
    return net, model, {"data": x, "cont": cont}, {"tf_inputs": _batch_major(x, cont)}, "rnn1"


def lstm_unit_case(tmp_path, bug: str | None = None):
    """One LSTM step on its gate pre-activations; bug "gate_order": Keras' i,f,c,o read."""
    r = rng(13)
    body = ('layer { name: "lstmu" type: "LSTMUnit" bottom: "c_prev" bottom: "gates" bottom: "cont"\n'
            '  top: "c" top: "h" }\n')
    net = caffe_net(tmp_path, prototxt({"c_prev": (1, N, H), "gates": (1, N, 4 * H), "cont": (1, N)}, body))
    order = (0, 1, 3, 2) if bug == "gate_order" else (0, 1, 2, 3)  # the bug reads Keras' i, f, c, o

    def gate(gates, k):
        return ops.split(gates, 4, axis=-1)[order[k]]  # Caffe: i, f, o, g

    def cell(ts):
        c_prev, gates, cont = ts
        return cont * ops.sigmoid(gate(gates, 1)) * c_prev + ops.sigmoid(gate(gates, 0)) * ops.tanh(gate(gates, 3))

    ins = [keras.Input((H,), batch_size=N, name="c_prev"), keras.Input((4 * H,), batch_size=N, name="gates"),
           keras.Input((1,), batch_size=N, name="cont")]
    def unit(ts):
        c = cell(ts)
        return [c, ops.sigmoid(gate(ts[1], 2)) * ops.tanh(c)]

    model = keras.Model(ins, keras.layers.Lambda(unit, name="lstmu")(ins))  # outputs c, h: tops c, h
    c_prev, gates = f32(r.standard_normal((1, N, H))), f32(r.standard_normal((1, N, 4 * H)) * 1.5)
    cont = np.array([[1, 0]], np.float32)  # the second item starts a new sequence: its f is 0
    feed = {"c_prev": c_prev, "gates": gates, "cont": cont}
    tf_feed = {"c_prev": c_prev[0], "gates": gates[0], "cont": cont.T.copy()}
    return net, model, feed, {"tf_inputs": tf_feed}, "lstmu"


# -- PriorBox: a constant of the shapes -----------------------------------------------------

IMG, FEAT = 16, 4  # data 1 x 3 x 16 x 16; conv1 stride 4 -> 4 x 4
MIN_SIZE, MAX_SIZE, RATIOS, VARIANCE = 8.0, 16.0, (1.0, 2.0, 0.5), (0.1, 0.1, 0.2, 0.2)


def prior_boxes(fh: int, fw: int, ih: int, iw: int, *, clip=True, offset=0.5, variance=VARIANCE) -> np.ndarray:
    """SSD's priors as Caffe's PriorBox lays them out: 1 x 2 x (fh*fw*num_priors*4)."""
    sh, sw = ih / fh, iw / fw
    sizes = [(MIN_SIZE, MIN_SIZE), (np.sqrt(MIN_SIZE * MAX_SIZE),) * 2]
    sizes += [(MIN_SIZE * np.sqrt(a), MIN_SIZE / np.sqrt(a)) for a in RATIOS if a != 1.0]
    boxes = []
    for h in range(fh):
        for w in range(fw):
            cx, cy = (w + offset) * sw, (h + offset) * sh
            for bw, bh in sizes:
                boxes += [(cx - bw / 2) / iw, (cy - bh / 2) / ih, (cx + bw / 2) / iw, (cy + bh / 2) / ih]
    boxes = np.array(boxes, np.float32)
    if clip:
        boxes = np.clip(boxes, 0.0, 1.0)
    var = np.tile(np.asarray(variance, np.float32), len(boxes) // 4)
    return np.stack([boxes, var])[None]


def prior_box_case(tmp_path, bug: str | None = None):
    """bug: "no_clip" (Caffe clips the priors to [0, 1]), "offset" (0 instead of 0.5),
    "variance" (the variance row left at 1)."""
    w, b = conv_w(4, 3, 4, seed=5)
    body = ('layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"\n'
            '  convolution_param { num_output: 4 kernel_size: 4 stride: 4 } }\n'
            'layer { name: "priors" type: "PriorBox" bottom: "conv1" bottom: "data" top: "priors"\n'
            f'  prior_box_param {{ min_size: {MIN_SIZE} max_size: {MAX_SIZE} aspect_ratio: 2 flip: true clip: true\n'
            '    variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 } }\n')
    shape = (1, 3, IMG, IMG)
    net = caffe_net(tmp_path, prototxt({"data": shape}, body), {"conv1": [w, b]})
    kw = {"clip": bug != "no_clip", "offset": 0.0 if bug == "offset" else 0.5,
          "variance": (1.0,) * 4 if bug == "variance" else VARIANCE}
    priors = ops.convert_to_tensor(prior_boxes(FEAT, FEAT, IMG, IMG, **kw))
    inp = keras_input(shape)
    conv = keras.layers.Conv2D(4, 4, strides=4, name="conv1")
    y = conv(inp)
    model = keras.Model(inp, [y, keras.layers.Lambda(lambda t: priors, name="priors")(y)])
    conv.set_weights([hwio(w), b])
    return net, model, f32(rng(4).standard_normal(shape)), {}, "priors"


# -- Proposal: Faster R-CNN's RPN boxes, NMS'ed -------------------------------------------

A_RATIOS, A_SCALES, STRIDE, BASE = (0.5, 1.0, 2.0), (32.0,), 16, 16
PRE_NMS, POST_NMS, NMS_THRESH, MIN_BOX = 30, 10, 0.7, 4


def caffe_anchors() -> np.ndarray:
    """This Caffe's ``generate_anchors`` (proposal_layer.cpp), (A, 4) x1, y1, x2, y2: the
    widths are ``2 * 0.5 * ROUND(ratio_w * scale / base_size - 1)``, not py-faster-rcnn's."""
    center = 0.5 * (BASE - 1)
    out = []
    for r in A_RATIOS:
        rw = float(np.sqrt(np.float32(BASE * BASE) / np.float32(r)))
        rh = rw * r
        for s in A_SCALES:
            sw, sh = 0.5 * int(rw * s / BASE - 1 + 0.5), 0.5 * int(rh * s / BASE - 1 + 0.5)
            out.append([center - sw, center - sh, center + sw, center + sh])
    return np.array(out, np.float32)


def proposal_case(tmp_path, bug: str | None = None):
    """bug "nms_thresh": the port's NMS at 0.3 where the prototxt says 0.7."""
    na, fh, img = len(A_RATIOS) * len(A_SCALES), 4, 64
    ratios = "".join(f" ratio: {r}" for r in A_RATIOS)
    scales = "".join(f" scale: {s}" for s in A_SCALES)
    body = ('layer { name: "proposal" type: "Proposal" bottom: "rpn_cls_prob" bottom: "rpn_bbox_pred" '
            'bottom: "im_info" top: "rois"\n'
            f'  proposal_param {{ feat_stride: {STRIDE} base_size: {BASE} min_size: {MIN_BOX}{ratios}{scales}\n'
            f'    pre_nms_topn: {PRE_NMS} post_nms_topn: {POST_NMS} nms_thresh: {NMS_THRESH} }} }}\n')
    shapes = {"rpn_cls_prob": (1, 2 * na, fh, fh), "rpn_bbox_pred": (1, 4 * na, fh, fh), "im_info": (1, 3)}
    net = caffe_net(tmp_path, prototxt(shapes, body))
    thresh = 0.3 if bug == "nms_thresh" else NMS_THRESH
    anchors = caffe_anchors()

    def proposal(ts):
        cls, deltas, info = ts  # NHWC: (1, H, W, 2A), (1, H, W, 4A); (1, 3)
        scores = ops.reshape(cls[0, :, :, na:], (-1,))  # foreground, in (h, w, anchor) order
        d = ops.reshape(deltas[0], (-1, 4))
        ys, xs = np.meshgrid(np.arange(fh) * STRIDE, np.arange(fh) * STRIDE, indexing="ij")
        shift = np.stack([xs, ys, xs, ys], -1).reshape(-1, 1, 4).astype(np.float32)
        box = ops.convert_to_tensor((shift + anchors[None]).reshape(-1, 4))
        w, h = box[:, 2] - box[:, 0] + 1, box[:, 3] - box[:, 1] + 1
        cx, cy = d[:, 0] * w + box[:, 0] + 0.5 * w, d[:, 1] * h + box[:, 1] + 0.5 * h
        pw, ph = ops.exp(d[:, 2]) * w, ops.exp(d[:, 3]) * h
        x1, x2 = (ops.clip(v, 0.0, info[0, 1] - 1) for v in (cx - 0.5 * pw, cx + 0.5 * pw))
        y1, y2 = (ops.clip(v, 0.0, info[0, 0] - 1) for v in (cy - 0.5 * ph, cy + 0.5 * ph))
        big = ops.cast((x2 - x1 + 1 >= MIN_BOX) & (y2 - y1 + 1 >= MIN_BOX), "float32")
        top, idx = ops.top_k(scores * big, PRE_NMS)
        boxes = ops.take(ops.stack([x1, y1, x2, y2], -1), idx, axis=0)
        # Caffe's IoU counts pixels (x2 - x1 + 1): TF's on boxes one pixel larger
        yx = ops.stack([boxes[:, 1], boxes[:, 0], boxes[:, 3] + 1, boxes[:, 2] + 1], -1)
        keep = tf_image().non_max_suppression(yx, top, POST_NMS, iou_threshold=thresh)
        kept = ops.take(boxes, keep, axis=0)
        return ops.concatenate([ops.zeros_like(kept[:, :1]), kept], -1)  # (R, 5): item 0, x1, y1, x2, y2

    ins = [keras.Input((fh, fh, 2 * na), batch_size=1, name="rpn_cls_prob"),
           keras.Input((fh, fh, 4 * na), batch_size=1, name="rpn_bbox_pred"),
           keras.Input((3,), batch_size=1, name="im_info")]
    model = keras.Model(ins, keras.layers.Lambda(proposal, name="proposal")(ins))
    r = rng(21)
    x = {"rpn_cls_prob": f32(r.uniform(0, 1, shapes["rpn_cls_prob"])),
         "rpn_bbox_pred": f32(r.standard_normal(shapes["rpn_bbox_pred"]) * 0.2),
         "im_info": np.array([[img, img, 1.0]], np.float32)}
    return net, model, x, {}, "proposal"


def tf_image():
    import tensorflow as tf  # after caffe (diagnose_cases imported it)

    return tf.image


# -- DetectionOutput: SSD's decoded, per-class NMS'ed detections ----------------------------

#: Caffe's parameters of the DetectionOutput case: 3 classes (0 the background), 40 priors in 5
#: clusters (overlapping boxes, so that NMS, top_k and keep_top_k all cut something)
DET_CAFFE = {"nms": 0.45, "top_k": 10, "keep_top_k": 12, "conf": 0.2}
DET_PRIORS, DET_CLASSES = 40, 3


def detection_output_case(tmp_path, *, variance: bool = True, prior_shift: float = 0.0, yx_rows: bool = False,
                          **tf_params):
    """A Caffe DetectionOutput (shared CENTER_SIZE locations, ``DET_CAFFE``) fed loc, conf and
    priors as inputs, against a Keras port with ``tf_params`` changed (``nms``, ``top_k``,
    ``keep_top_k``, ``conf``), ``variance=False`` (offsets not scaled by the prior variances) or
    its priors shifted by ``prior_shift``, or ``yx_rows`` (its boxes written in TF's y, x order:
    ymin, xmin, ymax, xmax). The port per class: top_k best scores, tf.image.non_max_suppression,
    then the keep_top_k best over all classes, listed by score (TF's usual order) where Caffe lists
    them by label, then score."""
    import tensorflow as tf

    c = DET_CAFFE
    body = ('layer { name: "detection_out" type: "DetectionOutput" bottom: "loc" bottom: "conf" '
            'bottom: "priors" top: "detection_out"\n'
            f'  detection_output_param {{ num_classes: {DET_CLASSES} share_location: true background_label_id: 0\n'
            f'    nms_param {{ nms_threshold: {c["nms"]} top_k: {c["top_k"]} }} code_type: CENTER_SIZE\n'
            f'    keep_top_k: {c["keep_top_k"]} confidence_threshold: {c["conf"]} }} }}\n')
    shapes = {"loc": (1, DET_PRIORS * 4), "conf": (1, DET_PRIORS * DET_CLASSES), "priors": (1, 2, DET_PRIORS * 4)}
    net = caffe_net(tmp_path, prototxt(shapes, body))
    p = {**c, **tf_params}

    def detect(ts):
        loc, conf, priors = ts
        pb, var = tf.reshape(priors[0, 0], (-1, 4)) + prior_shift, tf.reshape(priors[0, 1], (-1, 4))
        d = tf.reshape(loc[0], (-1, 4)) * (var if variance else 1.0)
        pw, ph = pb[:, 2] - pb[:, 0], pb[:, 3] - pb[:, 1]
        cx, cy = d[:, 0] * pw + (pb[:, 0] + pb[:, 2]) / 2, d[:, 1] * ph + (pb[:, 1] + pb[:, 3]) / 2
        w, h = tf.exp(d[:, 2]) * pw, tf.exp(d[:, 3]) * ph
        boxes = tf.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
        yx = tf.stack([boxes[:, 1], boxes[:, 0], boxes[:, 3], boxes[:, 2]], -1)
        scores = tf.reshape(conf[0], (-1, DET_CLASSES))
        rows = []
        for k in range(1, DET_CLASSES):
            best = tf.math.top_k(scores[:, k], k=p["top_k"]).indices
            keep = tf.image.non_max_suppression(tf.gather(yx, best), tf.gather(scores[:, k], best), p["top_k"],
                                                iou_threshold=p["nms"], score_threshold=p["conf"])
            idx = tf.gather(best, keep)
            s = tf.gather(scores[:, k], idx)
            rows.append(tf.concat([tf.zeros_like(s)[:, None], tf.fill(tf.shape(s[:, None]), float(k)), s[:, None],
                                   tf.gather(yx if yx_rows else boxes, idx)], -1))
        rows = tf.concat(rows, 0)
        rows = tf.gather(rows, tf.argsort(-rows[:, 2], stable=True)[: p["keep_top_k"]])
        return tf.reshape(rows, (1, 1, -1, 7))

    ins = [keras.Input((DET_PRIORS * 4,), batch_size=1, name="loc"),
           keras.Input((DET_PRIORS * DET_CLASSES,), batch_size=1, name="conf"),
           keras.Input((2, DET_PRIORS * 4), batch_size=1, name="priors")]
    model = keras.Model(ins, keras.layers.Lambda(detect, name="detection_out")(ins))
    r = rng(41)
    centers = np.repeat(r.uniform(0.25, 0.75, (5, 2)), DET_PRIORS // 5, 0) + r.normal(0, 0.03, (DET_PRIORS, 2))
    sizes = r.uniform(0.15, 0.3, (DET_PRIORS, 2))
    pri = np.concatenate([centers - sizes / 2, centers + sizes / 2], 1).reshape(-1)
    logits = r.standard_normal((DET_PRIORS, DET_CLASSES)) * 2
    conf = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    x = {"loc": f32(r.standard_normal(shapes["loc"]) * 0.3), "conf": f32(conf.reshape(1, -1)),
         "priors": f32(np.stack([pri, np.tile([0.1, 0.1, 0.2, 0.2], DET_PRIORS)])[None])}
    return net, model, x, {}, "detection_out"


def detection_case(tmp_path, bug: str | None = None):
    """The DetectionOutput port of :func:`detection_output_case`; bug "yx": the boxes written in
    TF's y, x order; "variance": the prior variances left out of the box decoding."""
    return detection_output_case(tmp_path, variance=bug != "variance", yx_rows=bug == "yx")


# -- Python layers: the module reaches the Caffe worker through caffe_pythonpath -------------

SCALE_LAYER = '''
import caffe


class Scaled(caffe.Layer):
    """top = bottom * float(param_str)."""

    def setup(self, bottom, top):
        self.scale = float(self.param_str)

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = bottom[0].data * self.scale

    def backward(self, top, propagate_down, bottom):
        pass
'''


def python_case(tmp_path, bug: str | None = None):
    """conv1 -> a Python layer scaling its input by param_str, as tests/test_caffe_python_layer.py
    builds them (prototxt + caffemodel, the module on the worker's path only); bug "param_str":
    the port ignores the layer's param_str (scale 1)."""
    (tmp_path / "scaled_layer.py").write_text(SCALE_LAYER)
    w, b = conv_w(4, 3, 3, seed=9)
    conv = ('layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"\n'
            '  convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }\n')
    python = ('layer { name: "py1" type: "Python" bottom: "conv1" top: "py1"\n'
              '  python_param { module: "scaled_layer" layer: "Scaled" param_str: "2.5" } }\n')
    shape = (1, 3, 6, 6)
    proto = tmp_path / "py.prototxt"
    proto.write_text(prototxt({"data": shape}, conv + python))
    # the weights from the net without the Python layer (this process never imports its module)
    net = caffe_net(tmp_path, prototxt({"data": shape}, conv), {"conv1": [w, b]}, name="conv_only.prototxt")
    weights = tmp_path / "conv.caffemodel"
    net.save(str(weights))
    scale = 1.0 if bug == "param_str" else 2.5
    inp = keras_input(shape)
    conv2d = keras.layers.Conv2D(4, 3, padding="same", name="conv1")
    model = keras.Model(inp, keras.layers.Lambda(lambda t: t * scale, name="py1")(conv2d(inp)))
    conv2d.set_weights([hwio(w), b])
    kw = {"caffe_weights": str(weights), "caffe_pythonpath": [str(tmp_path)]}
    return str(proto), model, f32(rng(6).standard_normal(shape)), kw, "py1"


# -- PSROIPooling: R-FCN's position-sensitive average pooling -------------------------------

PS_D, PS_G, PS_SCALE = 2, 3, 0.25  # output_dim, group_size, spatial_scale


def psroi_case(tmp_path, bug: str | None = None):
    """R rois pooled from a D * G * G channel map: bin (i, j) of output channel c averages input
    channel (c * G + i) * G + j over the bin's pixels, bounds rounded as Caffe's kernel does.
    bug "group_order": the port reads the channels as (i, j, c), G x G x D (bins outermost), as a
    port that reshapes an NHWC score map the TF way does."""
    ch, hw = PS_D * PS_G * PS_G, 12
    body = ('layer { name: "ps" type: "PSROIPooling" bottom: "data" bottom: "rois" top: "ps"\n'
            f'  psroi_pooling_param {{ spatial_scale: {PS_SCALE} output_dim: {PS_D} group_size: {PS_G} }} }}\n')
    rois = np.array([[0, 0, 0, 47, 47], [0, 4.4, 8.6, 30.2, 41.5], [0, 20, 4, 27, 13], [0, 33, 30, 46, 46]],
                    np.float32)
    shapes = {"data": (1, ch, hw, hw), "rois": rois.shape}
    net = caffe_net(tmp_path, prototxt(shapes, body))
    g, d = PS_G, PS_D

    def psroi(ts):
        x, r = ts  # (1, H, W, D*G*G) NHWC; (R, 5)
        rnd = lambda v: ops.floor(v + 0.5)  # noqa: E731  C's round() (coordinates are >= 0)
        x1, y1 = rnd(r[:, 1]) * PS_SCALE, rnd(r[:, 2]) * PS_SCALE
        x2, y2 = (rnd(r[:, 3]) + 1) * PS_SCALE, (rnd(r[:, 4]) + 1) * PS_SCALE
        bw, bh = ops.maximum(x2 - x1, 0.1) / g, ops.maximum(y2 - y1, 0.1) / g
        k = ops.arange(g, dtype="float32")[None]

        def bins(start, size):  # (R, G) pixel bounds [lo, hi) of each bin, clipped to the map
            lo = ops.clip(ops.floor(k * size[:, None] + start[:, None]), 0, hw)
            hi = ops.clip(ops.ceil((k + 1) * size[:, None] + start[:, None]), 0, hw)
            pix = ops.arange(hw, dtype="float32")[None, None]
            return ops.cast((pix >= lo[..., None]) & (pix < hi[..., None]), "float32"), ops.maximum(hi - lo, 0)

        hm, hn = bins(y1, bh)
        wm, wn = bins(x1, bw)
        grouped = ops.reshape(x[0], (hw, hw, g, g, d) if bug == "group_order" else (hw, hw, d, g, g))
        if bug == "group_order":
            grouped = ops.transpose(grouped, (0, 1, 4, 2, 3))
        total = ops.einsum("rih,rjw,hwcij->rijc", hm, wm, grouped)
        area = hn[:, :, None] * wn[:, None, :]
        return ops.where(area[..., None] > 0, total / ops.maximum(area[..., None], 1.0), 0.0)

    ins = [keras.Input((hw, hw, ch), batch_size=1, name="data"), keras.Input((5,), batch_size=len(rois), name="rois")]
    model = keras.Model(ins, keras.layers.Lambda(psroi, name="ps")(ins))
    x = {"data": f32(rng(31).standard_normal(shapes["data"])), "rois": rois}
    return net, model, x, {}, "ps"


CASES = {
    "PSROIPooling": (psroi_case, "group_order"),
    "LSTM": (lstm_case, "gate_order"),
    "RNN": (rnn_case, "output_tanh"),
    "LSTMUnit": (lstm_unit_case, "gate_order"),
    "PriorBox": (prior_box_case, "no_clip"),
    "Python": (python_case, "param_str"),
    "Proposal": (proposal_case, "nms_thresh"),
    "DetectionOutput": (detection_case, "yx"),
}


def _holds(chain: list[str], layer: str) -> bool:
    """``layer`` is in ``chain``, itself or one of its tops (a layer of several tops has a
    probe ``layer/top`` per top)."""
    return any(c == layer or c.startswith(layer + "/") for c in chain)


def _rows_with(report, layer: str):
    return [r for r in report.rows if _holds(r.caffe_chain or [r.caffe_layer], layer)]


@pytest.mark.parametrize("kind", sorted(COVERED))
def test_a_correct_port_passes_with_the_layer_captured_and_aligned(tmp_path, kind):
    build, _ = CASES[kind]
    net, model, x, kw, layer = build(tmp_path)
    report = compare(net, model, x, **kw)
    assert_clean(report)
    assert bool(report), report.summary()
    rows = _rows_with(report, layer)
    assert rows, f"{layer!r} is in no compared row: {[r.caffe_chain for r in report.rows]}"
    assert any(r.caffe_kind == kind for r in rows)
    assert all(r.metrics is not None for r in rows)
    assert not _holds(report.unmapped_caffe, layer) and not _holds(report.coverage.uncovered, layer), report.summary()


@pytest.mark.parametrize("kind", sorted(COVERED))
def test_a_port_with_the_classic_bug_fails_at_the_layer(tmp_path, kind):
    build, bug = CASES[kind]
    net, model, x, kw, layer = build(tmp_path, bug=bug)
    report = compare(net, model, x, **kw)
    fd = report.first_divergence
    assert not report and fd is not None, report.summary()
    assert _holds(fd.caffe_chain, layer), (fd.caffe_chain, report.summary())


def test_an_lstm_port_that_ignores_cont_fails_at_the_lstm_only_when_a_sequence_restarts(tmp_path):
    """A plain Keras LSTM starts each row from a zero state and never resets it: right while
    every sequence starts at t = 0, wrong once ``cont`` starts a new one mid-blob."""
    net, model, x, kw, _ = lstm_case(tmp_path, bug="cont_ignored", restart=False)
    report = compare(net, model, x, **kw)
    assert report, report.summary()
    net, model, x, kw, layer = lstm_case(tmp_path, bug="cont_ignored")
    report = compare(net, model, x, **kw)
    fd = report.first_divergence
    assert not report and fd is not None and fd.caffe_chain == [layer], report.summary()
    err = np.abs(net.blobs[layer].data - model.predict(kw["tf_inputs"], verbose=0).transpose(1, 0, 2))
    assert err[:3].max() < 1e-5 and err[3:, 1].max() > 1e-2  # only the restarted sequence, from t = 3


@pytest.mark.parametrize(("case", "bug"), [(prior_box_case, "offset"), (prior_box_case, "variance"),
                                           (detection_case, "variance")])
def test_other_box_encoding_bugs_fail_at_the_layer(tmp_path, case, bug):
    net, model, x, kw, layer = case(tmp_path, bug=bug)
    report = compare(net, model, x, **kw)
    fd = report.first_divergence
    assert not report and fd is not None and fd.caffe_chain == [layer], report.summary()


# -- the layout rule the recurrent rows rest on ----------------------------------------------


def test_recurrent_blobs_are_declared_time_major_in_caffe_and_batch_major_in_keras():
    from layerparity.backends._caffe_net import layout_for
    from layerparity.backends.tfcommon import probe_layout
    from layerparity.layout import relayout

    for kind in ("LSTM", "RNN", "LSTMUnit"):
        assert layout_for(kind, {}, (T, N, H), [("", None, (T, N, C))]) == ("TNC", None)
    assert layout_for("Reshape", {}, (T, N, H), [("", None, (T, N * H))]) == ("", None)  # other 3-D blobs: as is
    assert layout_for("InnerProduct", {}, (T, N, 6), [("TNC", None, (T, N, H))]) == ("TNC", None)  # axis 2
    assert layout_for("Reshape", {}, (N, T, H), [("TNC", None, (T, N, H))]) == ("", None)  # T, N not kept
    assert probe_layout((N, T, 6), in_layouts=["NTC"], in_shape=(N, T, H), default="NHWC") == ("NTC", None)
    assert probe_layout((N, T * H), op="reshape", in_layouts=["NTC"], in_shape=(N, T, H), default="NHWC")[0] == "NC"
    assert probe_layout((N, T, H), op="sequence", default="NHWC") == ("NTC", None)
    assert probe_layout((N, H), op="sequence", default="NHWC") == ("NC", None)  # return_sequences=False
    y = np.arange(N * T * H).reshape(N, T, H)
    np.testing.assert_array_equal(relayout(y, "NTC", None, "TNC"), y.transpose(1, 0, 2))
    assert relayout(np.zeros((N, H)), "NC", None, "TNC").shape == (1, N, H)  # an LSTMUnit step


def test_psroi_pooling_bins_read_their_own_channel_and_average_it(tmp_path):
    """What position-sensitive pooling means (R-FCN), held against this Caffe's CPU forward
    (scripts/caffe-cpu/psroi_pooling_forward_cpu.inc): with channel k constant k, bin (i, j) of
    output channel c is (c * G + i) * G + j; over a ramp along W, a bin is the mean of its columns."""
    net, _, x, _, layer = psroi_case(tmp_path)
    ch = PS_D * PS_G * PS_G
    rois = x["rois"]
    net.blobs["rois"].data[...] = rois
    net.blobs["data"].data[...] = np.arange(ch, dtype=np.float32)[None, :, None, None]
    got = net.forward()[layer]
    want = np.arange(ch, dtype=np.float32).reshape(PS_D, PS_G, PS_G)
    np.testing.assert_array_equal(got, np.broadcast_to(want, got.shape))
    net.blobs["data"].data[...] = np.arange(12, dtype=np.float32)[None, None, None, :]
    got = net.forward()[layer]
    # roi 0 covers the 12 x 12 map (48 px at scale 1/4): bins of 4 columns, means 1.5, 5.5, 9.5
    np.testing.assert_allclose(got[0, :, :, :], np.broadcast_to([1.5, 5.5, 9.5], (PS_D, PS_G, PS_G)))


def test_a_probe_kind_is_the_type_the_prototxt_names(tmp_path):
    """This Caffe's Proposal layer says "ProposalLayer" from its C++ type(): the probe keeps
    the registered type the prototxt uses, live net and worker alike."""
    from layerparity.backends.caffe import CaffeBackend, capture_caffe

    net, _, x, _, _ = proposal_case(tmp_path)
    assert net.layers[list(net._layer_names).index("proposal")].type == "ProposalLayer"
    assert CaffeBackend.from_net(net).capture(x)["proposal"].kind == "Proposal"
    trace = capture_caffe(str(tmp_path / "net.prototxt"), None, x)
    assert trace["proposal"].kind == "Proposal" and trace["proposal"].params["nms_thresh"] == NMS_THRESH


def test_detections_are_compared_as_a_set_not_row_by_row(tmp_path):
    """The correct DetectionOutput port lists its rows in another order than Caffe: it passes
    because the rows are matched (by image, label, IoU) before the metrics; its 'yx' bug keeps
    the same detections and count, and fails on their values."""
    net, model, x, kw, layer = detection_case(tmp_path)
    for name, v in x.items():
        net.blobs[name].data[...] = v
    caffe_rows = net.forward()[layer][0, 0]
    tf_rows = np.asarray(model([x["loc"], x["conf"], x["priors"]]))[0, 0]
    assert caffe_rows.shape == tf_rows.shape and not np.allclose(caffe_rows, tf_rows)
    assert sorted(map(tuple, caffe_rows.round(4))) == sorted(map(tuple, tf_rows.round(4)))
    assert compare(net, model, x).row(layer).max_abs_error < 1e-5
    report = compare(net, detection_case(tmp_path, bug="yx")[1], x)
    assert not report and report.row(layer).metrics is not None and report.row(layer).max_abs_error > 0.01


def _lstm_classifier(tmp_path, softmax_axis: int = -1):
    """LSTM -> Dropout (in place) -> InnerProduct (axis 2) -> Softmax (axis 2), as captioning
    and action nets stack them; the port: Keras LSTM -> Dropout -> Dense -> Softmax."""
    r = rng(14)
    o_dim = 6
    wx, b, wh = f32(r.standard_normal((4 * H, C))), f32(r.standard_normal(4 * H)), f32(r.standard_normal((4 * H, H)))
    wo, bo = f32(r.standard_normal((o_dim, H))), f32(r.standard_normal(o_dim))
    body = ('layer { name: "lstm1" type: "LSTM" bottom: "data" bottom: "cont" top: "lstm1"\n'
            f'  recurrent_param {{ num_output: {H} }} }}\n'
            'layer { name: "drop" type: "Dropout" bottom: "lstm1" top: "lstm1" }\n'
            'layer { name: "fc" type: "InnerProduct" bottom: "lstm1" top: "fc"\n'
            f'  inner_product_param {{ num_output: {o_dim} axis: 2 }} }}\n'
            'layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" softmax_param { axis: 2 } }\n')
    net = caffe_net(tmp_path, prototxt({"data": (T, N, C), "cont": (T, N)}, body), {"lstm1": [wx, b, wh], "fc": [wo, bo]})
    xin = keras.Input((T, C), batch_size=N, name="data")
    lstm, fc = keras.layers.LSTM(H, return_sequences=True, name="lstm1"), keras.layers.Dense(o_dim, name="fc")
    y = fc(keras.layers.Dropout(0.5, name="drop")(lstm(xin)))
    model = keras.Model(xin, keras.layers.Softmax(axis=softmax_axis, name="prob")(y))
    lstm.set_weights([_ifog_to_ifco(wx).T.copy(), _ifog_to_ifco(wh).T.copy(), _ifog_to_ifco(b)])
    fc.set_weights([wo.T.copy(), bo])
    x, cont = f32(r.standard_normal((T, N, C))), _cont(restart=False)  # a plain LSTM: one sequence per row
    return net, model, {"data": x, "cont": cont}, {"tf_inputs": {"data": _batch_major(x, cont)["data"]}}


def test_layers_after_an_lstm_stay_sequences_and_a_softmax_over_time_is_named(tmp_path):
    """The tops after the LSTM that keep its T and N axes are sequences too (Caffe TNC, Keras
    NTC): every row is compared, own error measured past the LSTM; a Keras Softmax over the
    time axis (axis=1) where Caffe's axis 2 is the features fails at 'prob'."""
    net, model, x, kw = _lstm_classifier(tmp_path)
    report = compare(net, model, x, **kw)
    assert_clean(report)
    assert bool(report) and [r.caffe_layer for r in report.rows] == ["lstm1", "drop", "fc", "prob"], report.summary()
    assert report.row("fc").own is not None and report.row("fc").own.passed
    report = compare(net, _lstm_classifier(tmp_path, softmax_axis=1)[1], x, **kw)
    assert not report and report.first_divergence.caffe_chain == ["prob"], report.summary()


def test_recurrent_weights_are_equal_under_keras_layout_and_the_gate_order_bug_is_named(tmp_path):
    """Weight parity: an LSTM's blobs (W_xc, b_c, W_hc) are expected transposed with their gate
    blocks reordered i,f,o,g -> i,f,c,o, an RNN's matrices transposed; blocks copied in Caffe's
    order are 'equal_under:lstm_gate_order', which the diverged row's diagnosis names."""
    from layerparity.weights import weight_parity

    for case in (lstm_case, rnn_case):
        net, model, *_ = case(tmp_path)
        net.save(str(tmp_path / "w.caffemodel"))
        report = weight_parity(str(tmp_path / "net.prototxt"), str(tmp_path / "w.caffemodel"), model)
        assert report and [r.status for r in report.rows] == ["equal"], report.to_text()
    net, model, x, kw, layer = lstm_case(tmp_path, bug="gate_order")
    net.save(str(tmp_path / "w.caffemodel"))
    report = weight_parity(str(tmp_path / "net.prototxt"), str(tmp_path / "w.caffemodel"), model)
    assert not report and report.row(layer).status == "equal_under:lstm_gate_order", report.to_text()
    assert "lstm_weight_caffe_to_keras" in report.row(layer).fix
    fd = compare(net, model, x, **kw).first_divergence
    assert [w.status for w in fd.weights] == ["equal_under:lstm_gate_order"]
    assert fd.diagnoses[0].kind == "lstm_gate_order" and fd.diagnoses[0].layer == layer, fd.diagnoses

"""The few Keras layers a Caffe port needs that Keras does not ship.

Each computes exactly what the Caffe layer of the same name computes (formulas
in /work/shared/notes/caffe-vs-tensorflow.md); their class names are the Caffe
type names so that ``layerparity.kinds`` maps both sides to the same kind.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


class Scale(keras.layers.Layer):
    """Caffe ``Scale`` over the last (channel) axis: ``y = x * gamma (+ beta)``."""

    def __init__(self, bias_term: bool = True, **kw):
        super().__init__(**kw)
        self.bias_term = bias_term

    def build(self, input_shape):
        c = input_shape[-1]
        self.gamma = self.add_weight(name="gamma", shape=(c,), initializer="ones")
        self.beta = self.add_weight(name="beta", shape=(c,), initializer="zeros") if self.bias_term else None

    def call(self, x):
        y = x * self.gamma
        return y + self.beta if self.beta is not None else y

    def get_config(self):
        return {**super().get_config(), "bias_term": self.bias_term}


class LRN(keras.layers.Layer):
    """Caffe ``LRN`` ACROSS_CHANNELS through ``tf.nn.local_response_normalization``.

    The constructor takes TF's arguments: ``depth_radius = local_size // 2``,
    ``bias = k``, ``alpha = alpha / local_size``, ``beta``.
    """

    def __init__(self, depth_radius: int, bias: float, alpha: float, beta: float, **kw):
        super().__init__(**kw)
        self.depth_radius, self.bias, self.alpha, self.beta = int(depth_radius), float(bias), float(alpha), float(beta)

    def call(self, x):
        return tf.nn.local_response_normalization(
            x, depth_radius=self.depth_radius, bias=self.bias, alpha=self.alpha, beta=self.beta
        )

    def get_config(self):
        return {**super().get_config(), "depth_radius": self.depth_radius, "bias": self.bias,
                "alpha": self.alpha, "beta": self.beta}


class Pad(keras.layers.Layer):
    """Constant padding of H and W (MAX pooling pads with the lowest float, like Caffe's -inf)."""

    def __init__(self, padding, value: float = 0.0, **kw):
        super().__init__(**kw)
        self.padding = tuple(tuple(int(v) for v in p) for p in padding)
        self.value = float(value)

    def call(self, x):
        return tf.pad(x, [[0, 0], list(self.padding[0]), list(self.padding[1]), [0, 0]], constant_values=self.value)

    def compute_output_shape(self, s):
        (top, bottom), (left, right) = self.padding
        return (s[0], None if s[1] is None else s[1] + top + bottom,
                None if s[2] is None else s[2] + left + right, s[3])

    def get_config(self):
        return {**super().get_config(), "padding": self.padding, "value": self.value}


class Normalize(keras.layers.Layer):
    """SSD's ``Normalize``: ``x / sqrt(sum x^2 + eps) * scale`` (sum over C, or C*H*W)."""

    def __init__(self, across_spatial: bool, channel_shared: bool, eps: float, **kw):
        super().__init__(**kw)
        self.across_spatial, self.channel_shared, self.eps = bool(across_spatial), bool(channel_shared), float(eps)

    def build(self, input_shape):
        self.scale = self.add_weight(name="scale", shape=(1 if self.channel_shared else input_shape[-1],),
                                     initializer="ones")

    def call(self, x):
        axes = [1, 2, 3] if self.across_spatial else [-1]
        norm = tf.sqrt(tf.reduce_sum(tf.square(x), axis=axes, keepdims=True) + self.eps)
        return x / norm * self.scale

    def get_config(self):
        return {**super().get_config(), "across_spatial": self.across_spatial,
                "channel_shared": self.channel_shared, "eps": self.eps}


class Eltwise(keras.layers.Layer):
    """Caffe ``Eltwise`` SUM with per-input coefficients (``coeff``)."""

    def __init__(self, coeff, **kw):
        super().__init__(**kw)
        self.coeff = [float(c) for c in coeff]

    def call(self, xs):
        out = xs[0] * self.coeff[0]
        for c, x in zip(self.coeff[1:], xs[1:], strict=True):
            out = out + x * c
        return out

    def get_config(self):
        return {**super().get_config(), "coeff": self.coeff, "operation": "SUM"}


class Interp(keras.layers.Layer):
    """The Interp layer of the PSPNet/DeepLab forks: bilinear with ``align_corners``."""

    def __init__(self, size, align_corners: bool = True, **kw):
        super().__init__(**kw)
        self.size = tuple(int(s) for s in size)
        self.align_corners = bool(align_corners)

    def call(self, x):
        if self.align_corners:
            return tf.compat.v1.image.resize_bilinear(x, self.size, align_corners=True)
        return tf.image.resize(x, self.size, method="bilinear")

    def compute_output_shape(self, s):
        return (s[0], *self.size, s[3])

    def get_config(self):
        return {**super().get_config(), "size": self.size, "align_corners": self.align_corners}




class Const(keras.layers.Layer):
    """A constant of the deploy net (Caffe ``Parameter``: a blob output as is), in Caffe's
    own shape; it takes the model input only to sit in the graph."""

    def __init__(self, value, **kw):
        super().__init__(**kw)
        self.value = np.asarray(value, np.float32)

    def call(self, x):
        return tf.constant(self.value)

    def compute_output_shape(self, s):
        return tuple(self.value.shape)

    def get_config(self):
        return {**super().get_config(), "value": self.value.tolist()}


class ContLSTMCell(keras.layers.Layer):
    """Caffe's LSTM step: a Keras ``LSTMCell`` (gates i, f, c, o) whose input carries Caffe's
    ``cont`` flag as its last feature; the previous state is multiplied by it (0: a new
    sequence starts), as Caffe does."""

    def __init__(self, units: int, **kw):
        super().__init__(**kw)
        self.units = int(units)
        self.cell = keras.layers.LSTMCell(self.units)
        self.state_size = [self.units, self.units]
        self.output_size = self.units

    def build(self, input_shape):
        self.cell.build((input_shape[0], input_shape[-1] - 1))
        self.built = True

    def call(self, inputs, states):
        x, cont = inputs[:, :-1], inputs[:, -1:]
        return self.cell(x, [s * cont for s in states])

    def get_config(self):
        return {**super().get_config(), "units": self.units}


class PriorBox(Const):
    """SSD's ``PriorBox``: a constant of the shapes (boxes, then variances: 1 x 2 x (H*W*P*4)),
    computed by :func:`portbuilder.keras_port.prior_boxes`."""


class DetectionOutput(keras.layers.Layer):
    """SSD's ``DetectionOutput`` (shared locations, CENTER_SIZE, variances not in the target):
    priors decoded with their variances, per class the ``top_k`` best scores above the
    threshold NMS'ed (``tf.image.non_max_suppression``), the best ``keep_top_k`` over all
    classes kept; rows [image, label, score, xmin, ymin, xmax, ymax] listed by score (Caffe
    lists them by label: the engine compares the rows as a set)."""

    def __init__(self, num_classes: int, background: int, conf: float, nms: float, top_k: int,
                 keep_top_k: int, **kw):
        super().__init__(**kw)
        self.num_classes, self.background = int(num_classes), int(background)
        self.conf, self.nms, self.top_k, self.keep_top_k = float(conf), float(nms), int(top_k), int(keep_top_k)

    def call(self, ts):
        loc, conf, priors = ts
        pb, var = tf.reshape(priors[0, 0], (-1, 4)), tf.reshape(priors[0, 1], (-1, 4))
        d = tf.reshape(loc[0], (-1, 4)) * var
        pw, ph = pb[:, 2] - pb[:, 0], pb[:, 3] - pb[:, 1]
        cx, cy = d[:, 0] * pw + (pb[:, 0] + pb[:, 2]) / 2, d[:, 1] * ph + (pb[:, 1] + pb[:, 3]) / 2
        w, h = tf.exp(d[:, 2]) * pw, tf.exp(d[:, 3]) * ph
        boxes = tf.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
        yx = tf.stack([boxes[:, 1], boxes[:, 0], boxes[:, 3], boxes[:, 2]], -1)
        scores = tf.reshape(conf[0], (-1, self.num_classes))
        rows = []
        for c in range(self.num_classes):
            if c == self.background:
                continue
            sc = scores[:, c]
            k = tf.minimum(self.top_k, tf.shape(sc)[0])
            best = tf.math.top_k(sc, k=k, sorted=True).indices  # Caffe's top_k before its NMS
            keep = tf.image.non_max_suppression(tf.gather(yx, best), tf.gather(sc, best), self.top_k,
                                                iou_threshold=self.nms, score_threshold=self.conf)
            idx = tf.gather(best, keep)
            s = tf.gather(sc, idx)
            rows.append(tf.concat([tf.zeros_like(s)[:, None], tf.fill(tf.shape(s[:, None]), float(c)),
                                   s[:, None], tf.gather(boxes, idx)], -1))
        rows = tf.concat(rows, 0)
        order = tf.argsort(-rows[:, 2], stable=True)[: self.keep_top_k]
        return tf.reshape(tf.gather(rows, order), (1, 1, -1, 7))

    def compute_output_shape(self, s):
        return (1, 1, None, 7)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "background": self.background,
                "conf": self.conf, "nms": self.nms, "top_k": self.top_k, "keep_top_k": self.keep_top_k}


CUSTOM_OBJECTS = {c.__name__: c for c in (Scale, LRN, Pad, Normalize, Eltwise, Interp, Const, ContLSTMCell, PriorBox,
                                                DetectionOutput)}

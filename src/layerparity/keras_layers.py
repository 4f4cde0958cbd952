"""Keras layers for Caffe layers that Keras lacks, registered for Keras serialization.

``LRN`` (``layerparity>LRN`` in a saved ``.keras`` file): Caffe's ACROSS_CHANNELS
local response normalization. layerparity's loader (``load_tf``, and everything
built on it) always passes it to Keras as a custom object, the mechanism a
user's own layers go through (``custom_objects=``, ``--keras-module``), so ports
that use it (the demo's does) load as they are. To load one with
``keras.saving.load_model`` yourself, call :func:`register_keras_objects` first.

Keras and TensorFlow are imported on the first call, never at import.

>>> from layerparity.keras_layers import lrn_layer_class    # doctest: +SKIP
>>> LRN = lrn_layer_class()                                  # doctest: +SKIP
>>> y = LRN(depth_radius=2, bias=1.0, alpha=1e-4 / 5, beta=0.75, name="norm1")(x)   # doctest: +SKIP
"""

from __future__ import annotations

import threading
from typing import Any

__all__ = ["lrn_layer_class", "register_keras_objects"]

_LRN: Any = None
_LOCK = threading.Lock()


def lrn_layer_class() -> Any:
    """A Keras layer computing Caffe's ACROSS_CHANNELS LRN via ``tf.nn.local_response_normalization``.

    Caffe ``local_size n, alpha, beta, k`` is ``LRN(depth_radius=n // 2, bias=k,
    alpha=alpha / n, beta=beta)`` (TF's alpha is NOT divided by n).
    """
    global _LRN
    with _LOCK:
        if _LRN is not None:
            return _LRN
        import keras
        import tensorflow as tf

        @keras.saving.register_keras_serializable(package="layerparity", name="LRN")
        class LRN(keras.layers.Layer):
            def __init__(self, depth_radius: int = 2, bias: float = 1.0, alpha: float = 1e-4, beta: float = 0.75,
                         **kw: Any) -> None:
                super().__init__(**kw)
                self.depth_radius, self.bias = int(depth_radius), float(bias)
                self.alpha, self.beta = float(alpha), float(beta)

            def call(self, x: Any) -> Any:
                return tf.nn.local_response_normalization(x, self.depth_radius, self.bias, self.alpha, self.beta)

            def compute_output_shape(self, input_shape: Any) -> Any:
                return input_shape

            def get_config(self) -> dict[str, Any]:
                return {**super().get_config(), "depth_radius": self.depth_radius, "bias": self.bias,
                        "alpha": self.alpha, "beta": self.beta}

        _LRN = LRN
        return LRN


def register_keras_objects() -> None:
    """Make layerparity's Keras layers (``layerparity>LRN``) known to ``keras.saving.load_model``."""
    lrn_layer_class()

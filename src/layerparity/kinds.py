"""Canonical layer kinds shared by Caffe, Keras, TF graph ops and TFLite.

>>> canonical_kind("Convolution")
'conv'
>>> canonical_kind("FusedBatchNormV3"), canonical_kind("CONV_2D"), canonical_kind("Dense")
('bn', 'conv', 'fc')
>>> canonical_kind("Pooling", {"pool": "AVE", "global_pooling": True})
'global_pool'
>>> canonical_kind("AddV2", n_inputs=1)     # x + constant vector: a bias
'bias'
>>> canonical_kind("Reduction", {"operation": "MEAN"}), canonical_kind("Reduction", {"operation": "SUMSQ"})
('mean', 'sum')
>>> compatible("conv", "depthwise_conv"), compatible("relu", "conv")
(True, False)
>>> compatible("python", "lambda"), compatible("python", "conv")   # a Caffe Python layer
(True, False)

An unknown kind becomes its lower-cased name (``"MyLayer"`` -> ``"mylayer"``),
so two sides with the same custom type still match.
"""

from __future__ import annotations

import re
from typing import Any

#: Every canonical kind this module produces (besides lower-cased unknown names).
KINDS = frozenset(
    """input const conv deconv depthwise_conv pool_max pool_avg global_pool lrn relu relu6
    leaky_relu prelu elu selu sigmoid tanh softmax log_softmax swish hard_swish gelu fc flatten
    reshape concat slice split add sub mul div max min eltwise bn scale bias dropout identity pad
    crop resize permute normalize power exp log abs sqrt rsqrt square argmax mean sum reduce_max
    squeeze expand_dims cast clip tile gather shape quantize dequantize silence""".split()
)

_CAFFE = {
    "Input": "input", "Data": "input", "DummyData": "input", "MemoryData": "input",
    "ImageData": "input", "HDF5Data": "input", "WindowData": "input", "Python": "python",
    "Convolution": "conv", "CuDNNConvolution": "conv", "ConvolutionDepthwise": "depthwise_conv",
    "DepthwiseConvolution": "depthwise_conv", "Deconvolution": "deconv",
    "LRN": "lrn", "ReLU": "relu", "ReLU6": "relu6", "PReLU": "prelu", "ELU": "elu",
    "Sigmoid": "sigmoid", "TanH": "tanh", "Softmax": "softmax", "InnerProduct": "fc",
    "Flatten": "flatten", "Reshape": "reshape", "Concat": "concat", "Slice": "slice",
    "Split": "split", "BatchNorm": "bn", "Scale": "scale", "Bias": "bias", "Dropout": "dropout",
    "Silence": "silence", "Power": "power", "Exp": "exp", "Log": "log", "AbsVal": "abs",
    "Crop": "crop", "Interp": "resize", "Upsample": "resize", "Permute": "permute",
    "Normalize": "normalize", "ArgMax": "argmax", "Reduction": "sum", "Tile": "tile",
    "HardSwish": "hard_swish", "Swish": "swish", "Clip": "clip", "Pad": "pad",
    "Parameter": "const",  # a learned blob output as is: a constant at inference
    "BatchNormKyle": "bn",
    "BNLL": "softplus", "Unsqueeze": "expand_dims",
}

_KERAS = {
    "InputLayer": "input", "Conv2D": "conv", "Conv1D": "conv", "Conv3D": "conv",
    "SeparableConv2D": "conv", "Conv2DTranspose": "deconv", "Conv3DTranspose": "deconv",
    "DepthwiseConv2D": "depthwise_conv", "MaxPooling2D": "pool_max", "MaxPool2D": "pool_max",
    "AveragePooling2D": "pool_avg", "AvgPool2D": "pool_avg", "GlobalAveragePooling2D": "global_pool",
    "GlobalMaxPooling2D": "global_pool", "GlobalAvgPool2D": "global_pool", "GlobalMaxPool2D": "global_pool",
    "Dense": "fc", "Flatten": "flatten", "Reshape": "reshape", "Permute": "permute",
    "Concatenate": "concat", "Add": "add", "Subtract": "sub", "Multiply": "mul", "Maximum": "max",
    "Minimum": "min", "Average": "eltwise", "BatchNormalization": "bn", "ReLU": "relu",
    "LeakyReLU": "leaky_relu", "PReLU": "prelu", "ELU": "elu", "Softmax": "softmax",
    "Dropout": "dropout", "SpatialDropout2D": "dropout", "GaussianDropout": "dropout",
    "ZeroPadding2D": "pad", "Cropping2D": "crop", "UpSampling2D": "resize", "Resizing": "resize",
    "Identity": "identity", "Rescaling": "scale", "UnitNormalization": "normalize",
}

_TF_OPS = {
    "Placeholder": "input", "PlaceholderWithDefault": "input", "Const": "const",
    "Conv2D": "conv", "Conv3D": "conv", "DepthwiseConv2dNative": "depthwise_conv",
    "Conv2DBackpropInput": "deconv", "Conv3DBackpropInputV2": "deconv", "BiasAdd": "bias",
    "Relu": "relu", "Relu6": "relu6", "LeakyRelu": "leaky_relu", "Elu": "elu", "Selu": "selu",
    "Sigmoid": "sigmoid", "Tanh": "tanh", "Softmax": "softmax", "LogSoftmax": "log_softmax",
    "MaxPool": "pool_max", "MaxPoolV2": "pool_max", "AvgPool": "pool_avg", "LRN": "lrn",
    "ConcatV2": "concat", "Concat": "concat", "AddV2": "add", "Add": "add", "AddN": "add",
    "Sub": "sub", "Mul": "mul", "RealDiv": "div", "Maximum": "max", "Minimum": "min",
    "MatMul": "fc", "BatchMatMulV2": "fc", "FusedBatchNorm": "bn", "FusedBatchNormV2": "bn",
    "FusedBatchNormV3": "bn", "Reshape": "reshape", "Squeeze": "squeeze", "ExpandDims": "expand_dims",
    "Pad": "pad", "PadV2": "pad", "MirrorPad": "pad", "Transpose": "permute", "Identity": "identity",
    "IdentityN": "identity", "StopGradient": "identity", "Snapshot": "identity",
    "ResizeBilinear": "resize", "ResizeNearestNeighbor": "resize", "ResizeBicubic": "resize",
    "ResizeArea": "resize", "StridedSlice": "slice", "Slice": "slice", "Split": "split",
    "SplitV": "split", "Mean": "mean", "Sum": "sum", "Max": "reduce_max", "ArgMax": "argmax",
    "Exp": "exp", "Log": "log", "Abs": "abs", "Sqrt": "sqrt", "Rsqrt": "rsqrt", "Square": "square",
    "Pow": "power", "Cast": "cast", "ClipByValue": "clip", "Tile": "tile", "GatherV2": "gather",
    "Shape": "shape", "Softplus": "softplus", "Erf": "erf", "Neg": "neg",
}

_TFLITE = {
    "CONV_2D": "conv", "DEPTHWISE_CONV_2D": "depthwise_conv", "TRANSPOSE_CONV": "deconv",
    "MAX_POOL_2D": "pool_max", "AVERAGE_POOL_2D": "pool_avg", "L2_POOL_2D": "pool_l2",
    "FULLY_CONNECTED": "fc", "SOFTMAX": "softmax", "LOG_SOFTMAX": "log_softmax", "RESHAPE": "reshape",
    "SQUEEZE": "squeeze", "EXPAND_DIMS": "expand_dims", "CONCATENATION": "concat", "ADD": "add",
    "ADD_N": "add", "SUB": "sub", "MUL": "mul", "DIV": "div", "MAXIMUM": "max", "MINIMUM": "min",
    "RELU": "relu", "RELU6": "relu6", "RELU_N1_TO_1": "clip", "LEAKY_RELU": "leaky_relu",
    "PRELU": "prelu", "ELU": "elu", "LOGISTIC": "sigmoid", "TANH": "tanh", "HARD_SWISH": "hard_swish",
    "GELU": "gelu", "PAD": "pad", "PADV2": "pad", "MIRROR_PAD": "pad", "MEAN": "mean", "SUM": "sum",
    "REDUCE_MAX": "reduce_max", "LOCAL_RESPONSE_NORMALIZATION": "lrn", "RESIZE_BILINEAR": "resize",
    "RESIZE_NEAREST_NEIGHBOR": "resize", "TRANSPOSE": "permute", "L2_NORMALIZATION": "normalize",
    "STRIDED_SLICE": "slice", "SLICE": "slice", "SPLIT": "split", "SPLIT_V": "split",
    "QUANTIZE": "quantize", "DEQUANTIZE": "dequantize", "CAST": "cast", "EXP": "exp", "LOG": "log",
    "ABS": "abs", "SQRT": "sqrt", "RSQRT": "rsqrt", "SQUARE": "square", "POW": "power",
    "ARG_MAX": "argmax", "TILE": "tile", "GATHER": "gather", "BATCH_MATMUL": "fc",
}

_ACTIVATIONS = {
    "relu": "relu", "relu6": "relu6", "leaky_relu": "leaky_relu", "elu": "elu", "selu": "selu",
    "sigmoid": "sigmoid", "tanh": "tanh", "softmax": "softmax", "swish": "swish", "silu": "swish",
    "hard_swish": "hard_swish", "gelu": "gelu", "linear": "identity", "log_softmax": "log_softmax",
}

#: Kinds with no computation at inference (Caffe Dropout at TEST, auto-inserted Split...).
TRIVIAL = frozenset({"dropout", "identity", "split", "silence", "cast", "quantize", "dequantize", "const"})

#: Kinds a TF port commonly folds into the preceding layer (Caffe in-place chains).
ABSORBABLE = frozenset(
    {"relu", "relu6", "leaky_relu", "prelu", "elu", "selu", "sigmoid", "tanh", "swish", "hard_swish",
     "gelu", "clip", "bn", "scale", "bias", "power", "dropout", "identity", "softmax", "log_softmax", "softplus"}
)

#: Kinds a TF op/layer of the key kind computes on top of its main job.
INCLUDES: dict[str, frozenset[str]] = {
    "conv": frozenset({"bias"}),
    "deconv": frozenset({"bias", "crop"}),  # Caffe's pad: Conv2DTranspose(padding="valid") then Cropping2D
    "depthwise_conv": frozenset({"bias"}),
    "fc": frozenset({"scale", "bias"}),  # a converter's Gemm: MatMul -> Mul (alpha) -> AddV2 (bias)
    "bn": frozenset({"scale", "bias"}),
    "scale": frozenset({"bias"}),
    "prelu": frozenset(),
    "argmax": frozenset({"expand_dims", "cast"}),  # Caffe keeps the reduced axis, as a float
}

#: Kinds a TF graph may insert where Caffe has nothing (skipped when walking edges).
PASS_THROUGH = frozenset({"pad", "identity", "dropout", "reshape", "flatten", "squeeze", "expand_dims", "cast",
                          "permute", "quantize", "dequantize"})

_EQUIV = [
    {"conv", "depthwise_conv"},
    {"add", "eltwise", "bias"},
    {"mul", "scale", "eltwise"},
    {"max", "eltwise"},
    {"global_pool", "pool_avg", "pool_max", "mean", "reduce_max"},
    {"flatten", "reshape", "squeeze"},
    {"dropout", "identity", "split"},
    {"bn", "scale", "mul"},
    {"resize"},
    {"normalize"},
    {"slice", "split", "crop"},
    {"relu", "leaky_relu", "relu6", "clip"},
    {"fc", "conv"},
    {"lstm", "rnn"},  # a Keras RNN(cell) running Caffe's LSTM step
    {"batch_reindex", "gather", "flip", "reverse", "reverse_v2"},  # a reordering along one axis (CRNN's time reversal)
]

#: Recurrent kinds (Caffe LSTM/RNN, Keras LSTM/GRU/SimpleRNN/RNN): a TF one with
#: ``go_backwards`` runs over its sequence reversed in time (alignment.py).
RECURRENT = frozenset({"lstm", "rnn", "gru", "simple_rnn"})

#: Caffe kinds that reorder a blob along one axis by a constant index (``BatchReindex``:
#: CRNN's time reversals). Their TF counterpart is often a custom ``Lambda`` (a gather, a
#: flip), so like :data:`OPAQUE` they also pair with a TF layer of a kind no table knows;
#: the values compared after them say whether the order is right.
REORDER = frozenset({"batch_reindex"})


#: Caffe kinds that run the user's own code (a ``Python`` layer): a computing layer like
#: any other (never trivial, never dropped from coverage) whose TF counterpart is usually
#: as custom (a Keras ``Lambda`` or custom layer). Structurally, such a layer pairs only
#: with a TF layer of a kind no table here knows; a port that spells it out in standard
#: ops needs an explicit mapping (docs/python-layers.md).
OPAQUE = frozenset({"python"})


def _camel_to_snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def canonical_kind(kind: str, params: dict[str, Any] | None = None, n_inputs: int | None = None) -> str:
    """The canonical kind of a Caffe type, Keras class, TF op type or TFLite builtin name.

    ``params`` refine it where the type alone is not enough (Caffe ``Pooling``'s
    ``pool``/``global_pooling``, ``ReLU``'s ``negative_slope``, ``Eltwise``'s
    ``operation``, a Keras ``Activation``'s ``activation``); ``n_inputs`` tells a
    ``x + constant`` (bias) from a two-tensor add.
    """
    params = params or {}
    k = (kind or "").strip()
    if k.startswith("tf.") or k.startswith("keras.layers."):  # "tf.nn.relu", TFOpLambda names
        k = k.rsplit(".", 1)[-1]
    if k == "Pooling":
        if params.get("global_pooling"):
            return "global_pool"
        pool = params.get("pool", "MAX")
        return "pool_avg" if str(pool).upper() in {"AVE", "AVG", "1"} else "pool_max" if str(pool).upper() in {"MAX", "0"} else "pool_other"
    if k == "ReLU" and params.get("negative_slope"):
        return "leaky_relu"
    if k == "ReLU" and params.get("max_value") == 6:
        return "relu6"
    if k == "Reduction" and str(params.get("operation", "SUM")).upper() in {"MEAN", "4"}:
        return "mean"
    if k == "Eltwise":
        op = str(params.get("operation", "SUM")).upper()
        return {"SUM": "add", "1": "add", "PROD": "mul", "0": "mul", "MAX": "max", "2": "max"}.get(op, "eltwise")
    if k == "Activation":
        act = str(params.get("activation", "")).lower()
        return _ACTIVATIONS.get(act, act or "activation")
    if k in ("Scale", "Mul", "MUL", "Multiply") and n_inputs == 1:
        return "scale"
    if k in ("AddV2", "Add", "ADD", "Bias") and n_inputs == 1:
        return "bias"
    for table in (_CAFFE, _KERAS, _TF_OPS, _TFLITE):
        if k in table:
            return table[k]
    low = k.lower()
    if low in KINDS or low in _ACTIVATIONS:
        return _ACTIVATIONS.get(low, low)
    return _camel_to_snake(k) if k else ""


def probe_kind(probe: Any) -> str:
    """:func:`canonical_kind` of a :class:`~layerparity.trace.Probe`."""
    return canonical_kind(probe.kind, probe.params, len(probe.inputs))


def compatible(a: str, b: str) -> bool:
    """Can a Caffe layer of kind ``a`` be the counterpart of a TF layer/op of kind ``b``?"""
    if a == b:
        return True
    if a in OPAQUE or b in OPAQUE:
        other = b if a in OPAQUE else a
        return bool(other) and other not in _KNOWN
    if a in REORDER and b and b not in _KNOWN:
        return True
    return any(a in s and b in s for s in _EQUIV)


#: Every kind the tables produce: a TF kind outside it is a custom layer (``"lambda"``).
_KNOWN = KINDS | OPAQUE | frozenset().union(*(t.values() for t in (_CAFFE, _KERAS, _TF_OPS, _TFLITE, _ACTIVATIONS))) | {
    "pool_other", "activation"} | RECURRENT | REORDER | {"bidirectional", "flip", "reverse", "reverse_v2"}


def fused_kinds(fused: list[str]) -> set[str]:
    """Canonical kinds of a TF probe's fused activations (``["relu"]``)."""
    return {_ACTIVATIONS.get(str(f).lower(), canonical_kind(str(f))) for f in fused if f}

"""Layer names made comparable across Caffe and TensorFlow: one folding rule for every matcher.

:func:`canon` folds every run of non-alphanumerics to ``_`` (case kept): the
alignment matches Caffe names against :func:`tf_name_keys` of TF layer/op names
with it. The weight-parity check matches case-insensitively (:func:`fold`) and
also tries :func:`normalize_name`, which drops the variable/op tails of a TF
weight name (``/kernel``, ``/BiasAdd:0``).

>>> canon("inception_3a/1x1"), fold("Conv1/7x7-s2")
('inception_3a_1x1', 'conv1_7x7_s2')
>>> tf_name_keys("StatefulPartitionedCall/model/conv1/BiasAdd:0")[-2:]
['conv1', 'BiasAdd']
>>> normalize_name("conv1/7x7_s2"), normalize_name("model/Conv1/BiasAdd:0")
('conv1_7x7_s2', 'model_conv1')
"""

from __future__ import annotations

import re

__all__ = ["canon", "fold", "tf_name_keys", "normalize_name", "WRAPPER", "CALL_WRAPPER", "COPY_SUFFIX", "OP_TAILS",
           "WEIGHT_TAILS"]

_SEPARATORS = re.compile(r"[^0-9A-Za-z]+")
_PORT = re.compile(r":\d+$")
#: The ``_N`` suffix TF gives a scope it uniquifies (a layer traced twice: ``conv1_1``).
COPY_SUFFIX = re.compile(r"_\d+$")
_COPY = COPY_SUFFIX

#: The call wrappers a graph op's scope carries (``StatefulPartitionedCall/...``), dropped by
#: the TF graph backends before they read a layer's scope (``backends.tfcommon.scope_layers``).
#: Narrower than :data:`WRAPPER`: there the model's own scope (``model/``, ``functional_1/``)
#: is not dropped by name but as the prefix common to every op, so a layer a port calls
#: ``model`` keeps its name.
CALL_WRAPPER = re.compile(r"^(StatefulPartitionedCall|PartitionedCall|Func)(_\d+)?$")

#: Scope components that wrap a model without naming a layer (dropped from TF names).
WRAPPER = re.compile(
    r"^(StatefulPartitionedCall|PartitionedCall|functional|model|sequential|import|"
    r"__inference_.*|inference_.*|serving_default)(_\d+)?$"
)
#: Op types that end a graph op name under its layer's scope (``conv1/BiasAdd``).
OP_TAILS = {
    "Conv2D", "BiasAdd", "Relu", "Relu6", "LeakyRelu", "MatMul", "MaxPool", "AvgPool", "LRN", "ConcatV2",
    "AddV2", "Add", "Mul", "Sub", "FusedBatchNormV3", "FusedBatchNorm", "Softmax", "Reshape", "Pad",
    "Identity", "Sigmoid", "Tanh", "Mean", "Squeeze", "Transpose", "DepthwiseConv2dNative",
    "Conv2DBackpropInput", "ResizeBilinear", "convolution", "conv2d", "BiasAdd_1", "batchnorm",
    "add", "mul", "truediv", "Maximum", "concat", "Elu", "Selu", "StridedSlice", "Rsqrt",
}
#: Last components of a TF weight's name that say which weight, not which layer (lower case).
WEIGHT_TAILS = {
    "kernel", "bias", "biasadd", "conv2d", "convolution", "matmul", "weights", "w", "b",
    "gamma", "beta", "moving_mean", "moving_variance", "depthwise_kernel", "read", "readvariableop",
    "fusedbatchnormv3", "fusedbatchnorm", "relu", "alpha",
}


def canon(name: str) -> str:
    """Comparable form of a layer name: separators folded to ``_``, case kept."""
    return _SEPARATORS.sub("_", name).strip("_")


def fold(name: str) -> str:
    """:func:`canon`, lower-cased: for matchers that ignore case."""
    return canon(name).lower()


def tf_name_keys(name: str, kind: str = "") -> list[str]:
    """Candidate Caffe names (in :func:`canon` form) for a TF layer/op name, most specific first.

    >>> tf_name_keys("inception_3a/1x1")[0]
    'inception_3a_1x1'
    """
    base = _PORT.sub("", name)
    comps = [c for c in base.split("/") if c]
    comps = [c for c in comps if not WRAPPER.match(c)] or comps
    tail_is_op = len(comps) > 1 and (comps[-1] == kind or _COPY.sub("", comps[-1]) in OP_TAILS)
    keys: list[str] = []
    for n in range(len(comps), 0, -1):
        if tail_is_op and n <= len(comps) - 1:
            keys.append(canon("_".join(comps[-1 - n:-1])))
        keys.append(canon("_".join(comps[-n:])))
    seen: set[str] = set()
    return [k for k in keys if k and not (k in seen or seen.add(k))]


def normalize_name(name: str) -> str:
    """A TF weight or op name without its output port and weight/op tails, :func:`fold` ed."""
    parts = [p for p in _PORT.sub("", str(name)).split("/") if p]
    while len(parts) > 1 and parts[-1].lower() in WEIGHT_TAILS:
        parts.pop()
    return fold("/".join(parts))

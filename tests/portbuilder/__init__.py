"""Test-only helpers: write a Keras port of a Caffe net, correct or with a named porting bug.

>>> from portbuilder import build_keras, make_caffemodel, net_info   # doctest: +SKIP
>>> model = build_keras("fixtures/zoo/lenet.prototxt", "lenet.caffemodel", (1, 1, 28, 28),
...                     bugs=["flatten_order"])                         # doctest: +SKIP

See keras_port.BUG_DOC for what each bug does.
"""

import caffe  # noqa: F401  - before TensorFlow: the other order segfaults in caffe.Net

from .keras_port import BUG_DOC, BUGS, applicable_layers, build_keras, kname, plan_bugs
from .netspec import (
    BN_SCALE_FACTOR,
    NetInfo,
    caffe_forward,
    caffe_layer_outputs,
    make_caffemodel,
    net_info,
    parse,
    random_input,
    read_params,
    with_input_shape,
)

__all__ = [
    "BUGS", "BUG_DOC", "BN_SCALE_FACTOR", "NetInfo", "applicable_layers", "build_keras", "caffe_forward",
    "caffe_layer_outputs",
    "kname", "make_caffemodel", "net_info", "parse", "plan_bugs", "random_input", "read_params",
    "with_input_shape",
]

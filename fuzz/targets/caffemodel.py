"""The caffemodel reader: ``_caffe_net.scan_caffemodel`` (walks the protobuf wire format
without loading weights: empty, truncated, random, text files; which layers it holds).

The Caffe worker runs it before ``Net.copy_from`` so that a bad file becomes a
``CaffeError`` instead of a glog abort. Rejected = ``UserError``; anything else
is a crash. (Bytes the scanner accepts may still be refused by protobuf inside
Caffe's ``copy_from``; that abort is the worker's to catch, see the hostile suite.)
"""

from __future__ import annotations

import os
import random

import numpy as np

from fuzz import mutators
from fuzz.targets import _caffe_common as cc

_DIR = ""
_PATH = ""


def setup(workdir: str) -> None:
    global _DIR, _PATH
    cc.caffe_bits()
    _DIR = cc.scratch(workdir, "caffemodel")
    _PATH = os.path.join(_DIR, "case.caffemodel")


def _small_model(prototxt: str, seed: int) -> bytes:
    import caffe

    net = caffe.Net(prototxt, caffe.TEST)
    rng = np.random.default_rng(seed)
    for name in net.params:
        for blob in net.params[name]:
            blob.data[...] = rng.standard_normal(blob.data.shape).astype(np.float32) * 0.01
    out = os.path.join(_DIR, "seed.caffemodel")
    net.save(out)
    with open(out, "rb") as f:
        data = f.read()
    os.remove(out)
    return data


def seeds() -> list[bytes]:
    pb, _, _ = cc.caffe_bits()
    out = []
    tiny = os.path.join(_DIR, "tiny.prototxt")
    with open(tiny, "w") as f:
        f.write('name: "tiny"\nlayer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 dim: 5 dim: 5 } } }\n'
                'layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 3 kernel_size: 3 } }\n'
                'layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }\n'
                'layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc" inner_product_param { num_output: 4 } }\n')
    out.append(_small_model(tiny, 0))
    lenet = os.path.join(cc.ROOT, "fixtures", "zoo", "lenet.prototxt")
    if os.path.exists(lenet):
        data = _small_model(lenet, 1)
        if len(data) <= 1 << 17:
            out.append(data)
    # a V1 (``layers``) model
    net = pb.NetParameter()
    net.name = "v1"
    l1 = net.layers.add()
    l1.name = "conv"
    l1.type = l1.CONVOLUTION
    b = l1.blobs.add()
    b.num, b.channels, b.height, b.width = 2, 1, 3, 3
    b.data.extend([0.5] * 18)
    out.append(net.SerializeToString())
    return out


def one_input(data: bytes) -> None:
    from layerparity.backends._caffe_net import UserError, scan_caffemodel
    from layerparity.errors import CaffeError

    with open(_PATH, "wb") as f:
        f.write(data)
    try:
        layers = scan_caffemodel(_PATH)
    except UserError as e:
        msg = str(e)
        assert _PATH in msg, f"rejection does not name the file: {msg[:200]}"
        raise CaffeError(msg) from None
    assert isinstance(layers, dict) and layers, "accepted a model with no layers"
    assert all(isinstance(k, str) and isinstance(v, int) and v >= 0 for k, v in layers.items())


def mutate(data: bytes, rng: random.Random) -> bytes:
    return mutators.mutate_protobuf(data, rng)


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    import atheris

    def mut(d: bytes, rng: random.Random) -> bytes:
        return atheris.Mutate(d, max_size) if rng.random() < 0.5 else mutators.mutate_protobuf(d, rng)

    return mutators.guarded(mut, lambda d: atheris.Mutate(d, max_size))(data, max_size, seed)

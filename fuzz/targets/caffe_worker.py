"""The whole Caffe path through the public API: ``CaffeBackend(prototxt)`` in its worker
process, then one capture of a zero input. Slow (a worker per case: a few cases a
second at best) but it is the real thing: Caffe builds whatever the checker let
through, glog aborts and segfaults happen in the worker, and the caller must turn
every one of them into a ``CaffeError``.

Rejected = any ``InputError`` (``CaffeError`` for the net, ``InputDataError``
for the input). Crash = anything else, including ``InternalError`` (the worker
reported a bug, or died in a way the backend did not explain) and a hang
(libFuzzer ``-timeout``).
"""

from __future__ import annotations

import os
import random

import numpy as np

from fuzz import mutators
from fuzz.targets import _caffe_common as cc

_PATH = ""
SMALL = ("lenet", "mtcnn_onet", "fcn_head", "caffenet")


def setup(workdir: str) -> None:
    global _PATH
    _PATH = os.path.join(cc.scratch(workdir, "caffe-worker"), "case.prototxt")


def seeds() -> list[bytes]:
    out = []
    for p in cc.zoo_prototxts():
        if os.path.splitext(os.path.basename(p))[0] in SMALL:
            with open(p, "rb") as f:
                out.append(f.read())
    out.append(b'name: "tiny"\nlayer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'
               b'layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 4 kernel_size: 3 } }\n'
               b'layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }\n'
               b'layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n'
               b'layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" inner_product_param { num_output: 5 } }\n'
               b'layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }\n')
    return out


def one_input(data: bytes) -> None:
    from layerparity.backends.caffe import CaffeBackend

    with open(_PATH, "wb") as f:
        f.write(data)
    with CaffeBackend(_PATH, timeout=60) as cb:
        specs = cb.input_specs()
        feed = {}
        for s in specs:
            shape = tuple(d if d is not None else 1 for d in s.shape)
            if not shape or int(np.prod(shape)) > 4_000_000:
                return
            feed[s.name] = np.zeros(shape, np.float32)
        if feed:
            for _ in cb.iter_capture(feed):
                pass


def mutate(data: bytes, rng: random.Random) -> bytes:
    return mutators.mutate_prototxt(data, rng)


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    import atheris

    def mut(d: bytes, rng: random.Random) -> bytes:
        return mutators.mutate_prototxt(d, rng) if rng.random() < 0.85 else atheris.Mutate(d, max_size)

    return mutators.guarded(mut, lambda d: atheris.Mutate(d, max_size))(data, max_size, seed)

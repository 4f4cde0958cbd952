"""The prototxt reader: ``_caffe_net.parse_prototxt`` (text_format parse, V1/legacy-input
upgrade, phase filtering, validation: types, bottoms, cycles, duplicate tops).

This is the function the Caffe worker runs before Caffe ever sees the file; its
``UserError`` becomes the caller's ``CaffeError``. Rejected = ``UserError``;
anything else escaping it is a crash (the worker would report an internal error).
Invariant on acceptance: every layer has a name and a type Caffe knows, and every
bottom is produced by an earlier layer.
"""

from __future__ import annotations

import os
import random

from fuzz import mutators
from fuzz.targets import _caffe_common as cc

_PATH = ""


def setup(workdir: str) -> None:
    global _PATH
    cc.caffe_bits()
    _PATH = os.path.join(cc.scratch(workdir, "prototxt"), "case.prototxt")


def seeds() -> list[bytes]:
    out = []
    for p in cc.zoo_prototxts():
        with open(p, "rb") as f:
            out.append(f.read())
    # V1 and legacy-input forms reach the upgrade paths
    out.append(b'name: "v1"\ninput: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 8\ninput_dim: 8\n'
               b'layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv"\n'
               b'  convolution_param { num_output: 2 kernel_size: 3 } }\n'
               b'layers { name: "relu" type: RELU bottom: "conv" top: "conv" }\n')
    out.append(b'input: "data"\ninput_shape { dim: 1 dim: 3 dim: 4 dim: 4 }\n'
               b'layer { name: "p" type: "Pooling" bottom: "data" top: "p" pooling_param { pool: AVE global_pooling: true } }\n')
    return out


def one_input(data: bytes) -> None:
    from layerparity.backends._caffe_net import UserError, parse_prototxt
    from layerparity.errors import CaffeError

    pb, test, known = cc.caffe_bits()
    with open(_PATH, "wb") as f:
        f.write(data)
    try:
        parsed = parse_prototxt(_PATH, pb, test, known)
    except UserError as e:
        msg = str(e)
        assert _PATH in msg, f"rejection does not name the file: {msg[:200]}"
        raise CaffeError(msg) from None
    if parsed.upgradable_only_by_caffe:
        return
    produced: set[str] = set()
    for lp in parsed.layers:
        assert lp.type in known, f"accepted unknown type {lp.type!r}"
        for b in lp.bottom:
            assert b in produced, f"accepted layer {lp.name!r} reading unproduced blob {b!r}"
        produced.update(lp.top)


def mutate(data: bytes, rng: random.Random) -> bytes:
    return mutators.mutate_prototxt(data, rng)


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    import atheris

    def mut(d: bytes, rng: random.Random) -> bytes:
        return atheris.Mutate(d, max_size) if rng.random() < 0.3 else mutators.mutate_prototxt(d, rng)

    return mutators.guarded(mut, lambda d: atheris.Mutate(d, max_size))(data, max_size, seed)

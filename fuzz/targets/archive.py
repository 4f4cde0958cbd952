"""The trace archive reader (``Trace.load`` / ``ArchiveReader``) on mutated archives.

Invariants checked on every accepted archive (a violation is a crash):

- every probe value has the shape the manifest declares;
- the lazy reader (``ArchiveReader.probe_metas`` / ``iter_probes``) agrees with ``Trace.load``;
- the loaded trace saves and reloads to the same names and arrays;
- reading writes nothing (the scratch directory holds only our own files).
"""

from __future__ import annotations

import os
import random

import numpy as np

from fuzz import mutators

_DIR = ""
_CASE = ""
_COPY = ""


def setup(workdir: str) -> None:
    global _DIR, _CASE, _COPY
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else workdir
    _DIR = os.path.join(base, f"lp-fuzz-archive-{os.getpid()}")
    os.makedirs(_DIR, exist_ok=True)
    _CASE = os.path.join(_DIR, "case.npz")
    _COPY = os.path.join(_DIR, "copy.npz")


def _trace(kind: int):
    from layerparity.trace import Probe, Trace

    rng = np.random.default_rng(kind)
    t = Trace("caffe" if kind % 2 == 0 else "tensorflow", source=f"seed{kind}.prototxt", meta={"batch": 1, "phase": "TEST"})
    x = rng.standard_normal((1, 3, 4, 4)).astype(np.float32)
    t.inputs["data"] = x
    t.add(Probe("data", kind="Input", layout="NCHW", value=x))
    t.add(Probe("conv1", kind="Convolution", layout="NCHW" if kind % 2 == 0 else "NHWC", inputs=["data"],
                params={"kernel_size": [3, 3], "stride": [1, 1], "pad": [1, 1], "num_output": 2},
                value=rng.standard_normal((1, 2, 4, 4)).astype(np.float32)))
    if kind >= 1:
        t.add(Probe("relu1", kind="ReLU", blob="conv1", inputs=["conv1"], layout="NCHW",
                    value=np.zeros((1, 2, 4, 4), np.float32)))
        t.add(Probe("flat", kind="Flatten", layout="flat:NCHW", flat_shape=(2, 4, 4), inputs=["relu1"],
                    value=np.zeros((1, 32), np.float16)))
    if kind >= 2:
        t.add(Probe("fc/out:1", kind="InnerProduct", layout="NC", inputs=["flat"], fused=["relu"],
                    value=np.arange(10, dtype=np.float64).reshape(1, 10)))
        t.add(Probe("meta-only", kind="Softmax", shape=(1, 10), dtype="float32"))
        t.add(Probe("ünï/中文/\U0001f600", kind="Scale", value=np.ones((2,), np.int32)))
    return t


def seeds() -> list[bytes]:
    out = []
    tmp = os.path.join(_DIR, "seed.npz")
    for k in range(3):
        _trace(k).save(tmp)
        with open(tmp, "rb") as f:
            out.append(f.read())
        os.remove(tmp)
    return out


def one_input(data: bytes) -> None:
    from layerparity.errors import ArchiveError
    from layerparity.trace import ArchiveReader, Trace, is_archive

    with open(_CASE, "wb") as f:
        f.write(data)
    is_archive(_CASE)  # must never raise
    try:
        t = Trace.load(_CASE)
    finally:
        left = sorted(os.listdir(_DIR))
        assert set(left) <= {"case.npz", "copy.npz", "copy.npz.partial"}, f"reader wrote files: {left}"
    for p in t:
        if p.value is not None:
            assert tuple(p.value.shape) == tuple(p.shape), f"probe {p.name!r}: value shape {p.value.shape} != {p.shape}"
    with ArchiveReader(_CASE) as r:
        metas = r.probe_metas()
        assert [m.name for m in metas] == t.names
        for a, b in zip(r.iter_probes(), t, strict=True):
            assert a.name == b.name
    try:
        t.save(_COPY)
    except ArchiveError:
        return
    t2 = Trace.load(_COPY)
    assert t2.names == t.names, "names changed on save/load"
    for a, b in zip(t, t2, strict=True):
        if a.value is not None:
            assert a.value.dtype == b.value.dtype and np.array_equal(a.value, b.value, equal_nan=True), a.name


def mutate(data: bytes, rng: random.Random) -> bytes:
    return mutators.mutate_archive(data, rng)


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    import atheris

    def mut(d: bytes, rng: random.Random) -> bytes:
        return mutators.mutate_archive(d, rng, byte_mutator=lambda b: atheris.Mutate(b, max(len(b) * 2, 64)))

    return mutators.guarded(mut, lambda d: atheris.Mutate(d, max_size))(data, max_size, seed)

"""``compare_traces`` on a hostile archive: the archive reader and then the engine
(alignment, relayout, metrics, diagnosis) and the three renderers on whatever a
tampered archive can make it through the reader with.

The input is one archive. If its manifest says ``framework: "caffe"`` it is
compared against a fixed valid TF archive, otherwise it is the TF side against a
fixed valid Caffe archive. Accepted = a report was produced and renders as JSON,
text and HTML. Rejected = an ``InputError`` (``ArchiveError``, ``MappingError``,
``InputDataError``...). Anything else is a crash.
"""

from __future__ import annotations

import os
import random

import numpy as np

from fuzz import mutators

_DIR = ""
_CASE = ""
_CAFFE = ""
_TF = ""


def _pair():
    """A small Caffe trace and a matching TF trace (NCHW vs NHWC, flatten, fused ReLU)."""
    from layerparity.trace import Probe, Trace

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 6, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.2
    conv = np.zeros((1, 4, 4, 4), np.float32)
    for o in range(4):
        for i in range(4):
            for j in range(4):
                conv[0, o, i, j] = np.sum(x[0, :, i:i + 3, j:j + 3] * w[o])
    relu = np.maximum(conv, 0)
    pool = relu.reshape(1, 4, 2, 2, 2, 2).max(axis=(3, 5))
    flat = pool.reshape(1, -1)
    fc_w = rng.standard_normal((5, 16)).astype(np.float32) * 0.3
    fc = flat @ fc_w.T
    prob = np.exp(fc) / np.exp(fc).sum(axis=1, keepdims=True)
    nhwc = lambda a: np.ascontiguousarray(a.transpose(0, 2, 3, 1))  # noqa: E731

    c = Trace("caffe", "net.prototxt", meta={"batch": 1})
    c.inputs["data"] = x
    c.add(Probe("data", kind="Input", layout="NCHW", value=x))
    c.add(Probe("conv1", kind="Convolution", layout="NCHW", inputs=["data"], value=conv,
                params={"num_output": 4, "kernel_size": [3, 3], "stride": [1, 1], "pad": [0, 0], "group": 1}))
    c.add(Probe("relu1", kind="ReLU", layout="NCHW", blob="conv1", inputs=["conv1"], value=relu))
    c.add(Probe("pool1", kind="Pooling", layout="NCHW", inputs=["relu1"], value=pool,
                params={"pool": "MAX", "kernel_size": [2, 2], "stride": [2, 2], "pad": [0, 0], "round_mode": "CEIL"}))
    c.add(Probe("fc", kind="InnerProduct", layout="NC", inputs=["pool1"], value=fc, params={"num_output": 5}))
    c.add(Probe("prob", kind="Softmax", layout="NC", inputs=["fc"], value=prob, params={"axis": 1}))

    t = Trace("tensorflow", "port.keras", meta={"format": "keras"})
    t.inputs["data"] = nhwc(x)
    t.add(Probe("data", kind="InputLayer", layout="NHWC", value=nhwc(x)))
    t.add(Probe("conv1", kind="Conv2D", layout="NHWC", inputs=["data"], fused=["relu"], value=nhwc(relu),
                params={"padding": "VALID", "strides": [1, 1], "kernel_size": [3, 3], "dilation_rate": [1, 1]}))
    t.add(Probe("pool1", kind="MaxPooling2D", layout="NHWC", inputs=["conv1"], value=nhwc(pool),
                params={"padding": "VALID", "strides": [2, 2], "pool_size": [2, 2]}))
    t.add(Probe("flatten", kind="Flatten", layout="flat:NHWC", flat_shape=(2, 2, 4), inputs=["pool1"],
                value=nhwc(pool).reshape(1, -1)))
    t.add(Probe("fc", kind="Dense", layout="NC", inputs=["flatten"], value=fc))
    t.add(Probe("prob", kind="Softmax", layout="NC", inputs=["fc"], value=prob))
    return c, t


def setup(workdir: str) -> None:
    global _DIR, _CASE, _CAFFE, _TF
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else workdir
    _DIR = os.path.join(base, f"lp-fuzz-diff-{os.getpid()}")
    os.makedirs(_DIR, exist_ok=True)
    _CASE = os.path.join(_DIR, "case.npz")
    _CAFFE = os.path.join(_DIR, "caffe.npz")
    _TF = os.path.join(_DIR, "tf.npz")
    c, t = _pair()
    c.save(_CAFFE)
    t.save(_TF)


def seeds() -> list[bytes]:
    out = []
    for p in (_CAFFE, _TF):
        with open(p, "rb") as f:
            out.append(f.read())
    return out


def one_input(data: bytes) -> None:
    from layerparity.compare import compare_traces
    from layerparity.report import format_report, render_html
    from layerparity.trace import ArchiveReader

    with open(_CASE, "wb") as f:
        f.write(data)
    with ArchiveReader(_CASE) as r:
        fw = r.framework
    if fw == "caffe":
        rep = compare_traces(_CASE, _TF)
    else:
        rep = compare_traces(_CAFFE, _CASE)
    rep.to_json()
    format_report(rep)
    render_html(rep)


def mutate(data: bytes, rng: random.Random) -> bytes:
    return mutators.mutate_archive(data, rng)


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    import atheris

    def mut(d: bytes, rng: random.Random) -> bytes:
        return mutators.mutate_archive(d, rng, byte_mutator=lambda b: atheris.Mutate(b, max(len(b) * 2, 64)))

    return mutators.guarded(mut, lambda d: atheris.Mutate(d, max_size))(data, max_size, seed)

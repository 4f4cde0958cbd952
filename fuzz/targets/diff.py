"""``compare_traces`` on a hostile archive: the archive reader and then the engine
(alignment, relayout, metrics, diagnosis) and the three renderers on whatever a
tampered archive can make it through the reader with.

The input is one archive. If its manifest says ``framework: "caffe"`` it is
compared against a fixed valid TF archive, otherwise it is the TF side against a
fixed valid Caffe archive. Accepted = a report was produced and renders as JSON,
text and HTML. A "(a layerparity bug; please report it)" warning (the engine's
way of surviving a crash inside diagnosis) counts as a crash. Rejected = an ``InputError`` (``ArchiveError``, ``MappingError``,
``InputDataError``...). Anything else is a crash.
"""

from __future__ import annotations

import os
import random
import warnings

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
    with warnings.catch_warnings():
        # the engine downgrades a crash inside diagnosis to this warning: for the fuzzer it is a crash
        warnings.filterwarnings("error", message=r".*layerparity bug.*")
        if fw == "caffe":
            rep = compare_traces(_CASE, _TF)
        else:
            rep = compare_traces(_CAFFE, _CASE)
        rep.to_json()
        format_report(rep)
        render_html(rep)


LAYOUTS = ["NCHW", "NHWC", "NC", "", "flat:NCHW", "flat:NHWC", "NCW", "bogus"]
KINDS = ["Convolution", "Conv2D", "ReLU", "Pooling", "MaxPooling2D", "InnerProduct", "Dense", "Softmax",
         "Flatten", "Concat", "Eltwise", "BatchNorm", "Scale", "LRN", "Input", "InputLayer", "Deconvolution",
         "Permute", "Reshape", "Dropout", "weird"]


def _hostile_value(v: np.ndarray, rng: random.Random) -> np.ndarray:
    op = rng.randrange(9)
    if op == 0 and v.size:
        v = v.astype(np.float32).copy()
        v.flat[rng.randrange(v.size)] = rng.choice([np.nan, np.inf, -np.inf, 3e38])
        return v
    if op == 1:
        return v.astype(rng.choice([np.float16, np.float64, np.int8, np.uint8, np.int64, np.bool_, np.complex64]))
    if op == 2:
        return np.zeros((0,) + v.shape[1:], v.dtype)
    if op == 3:
        return np.asarray(v.reshape(-1)[0] if v.size else 0.0)
    if op == 4:
        return v.reshape((1,) * 3 + v.shape)
    if op == 5 and v.ndim >= 2:
        return np.ascontiguousarray(np.swapaxes(v, 0, -1))
    if op == 6:
        return np.concatenate([v, v], axis=0) if v.ndim else v
    if op == 7:
        return np.zeros_like(v)
    return v * rng.choice([0.0, -1.0, 1e30, 1e-30, 1.0001])


def mutate_trace(data: bytes, rng: random.Random) -> bytes:
    """Edits a valid trace the way a wrong backend (or a crafted file) would, keeping it well-formed
    for the reader so the engine has to cope: layouts, flat shapes, kinds, edges, params, values."""

    from layerparity.trace import Probe, Trace

    tmp = os.path.join(_DIR, "mut.npz")
    with open(tmp, "wb") as f:
        f.write(data)
    t = Trace.load(tmp)
    probes = t.probes
    if not probes:
        return data
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(probes))
        p = probes[i]
        kw = {k: getattr(p, k) for k in ("name", "kind", "value", "layer", "blob", "inputs", "params", "fused",
                                         "layout", "flat_shape")}
        op = rng.randrange(8)
        if op == 0:
            kw["layout"] = rng.choice(LAYOUTS)
        elif op == 1:
            kw["flat_shape"] = rng.choice([None, (2, 2, 4), (4, 2, 2), (16,), (0, 4), (3, 3, 3), (-1, 4, 4)])
        elif op == 2:
            kw["kind"] = rng.choice(KINDS)
        elif op == 3:
            names = [q.name for q in probes]
            kw["inputs"] = rng.sample(names + ["ghost"], k=rng.randint(0, min(3, len(names))))
        elif op == 4:
            kw["params"] = mutators.mutate_json(dict(p.params), rng) if p.params else {"axis": rng.choice([1, -1, 7])}
            if not isinstance(kw["params"], dict):
                kw["params"] = {}
        elif op == 5 and p.value is not None:
            kw["value"] = _hostile_value(p.value, rng)
        elif op == 6:
            kw["fused"] = rng.choice([[], ["relu"], ["relu6"], ["softmax"], ["bogus"], ["relu", "relu"]])
        else:  # swap two probes' values (shapes follow)
            j = rng.randrange(len(probes))
            kw["value"] = probes[j].value
        try:
            probes[i] = Probe(**kw)
        except (TypeError, ValueError):
            continue
    out = Trace(t.framework, t.source, probes, inputs=t.inputs, meta=t.meta)
    out.save(tmp)
    with open(tmp, "rb") as f:
        return f.read()


def _engine_mutation(data: bytes, rng: random.Random) -> bytes:
    """mutate_trace from ``data`` if it still loads, else from a valid seed: this target is
    about the engine (fuzz/targets/archive.py covers the reader on broken files)."""
    try:
        return mutate_trace(data, rng)
    except Exception:  # noqa: BLE001
        return mutate_trace(rng.choice(seeds()), rng)


def mutate(data: bytes, rng: random.Random) -> bytes:
    if rng.random() < 0.85:
        return _engine_mutation(data, rng)
    return mutators.mutate_archive(data, rng)


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    import atheris

    def mut(d: bytes, rng: random.Random) -> bytes:
        if rng.random() < 0.85:
            return _engine_mutation(d, rng)
        return mutators.mutate_archive(d, rng, byte_mutator=lambda b: atheris.Mutate(b, max(len(b) * 2, 64)))

    return mutators.guarded(mut, lambda d: atheris.Mutate(d, max_size))(data, max_size, seed)

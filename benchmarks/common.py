"""Shared by benchmarks/run.py and its child processes: the nets, their seeded weights,
their Keras ports, the inputs, and small measuring helpers.

Everything expensive is prepared once into ``~/.cache/layerparity/bench/<net>/``
(keyed by a hash of the prototxt and of this preparation code's version):

- ``deploy_b{N}.prototxt``: the net with its input batch set to N;
- ``weights.caffemodel``: seeded weights written through pycaffe by the zoo
  engineer's ``tests/portbuilder.make_caffemodel`` (He-scaled kernels, BatchNorm
  calibrated on a seeded input);
- ``port.keras``: the Keras port built by ``tests/portbuilder.build_keras`` from
  that prototxt and caffemodel (batch-agnostic);
- ``x_b{N}_{seed}.npy``: seeded NCHW inputs.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import os
import resource
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
for _p in (os.path.join(ROOT, "src"), os.path.join(ROOT, "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CACHE = os.path.join(os.path.expanduser("~"), ".cache", "layerparity", "bench")
PREP_VERSION = "1"
WEIGHT_SEED = 20240
INPUT_SCALE = 50.0  # roughly the spread of a mean-subtracted 0..255 image


def googlenet_prototxt() -> str:
    hits = sorted(glob.glob(os.path.join(os.path.expanduser("~"), ".cache", "layerparity", "caffe-*", "models",
                                         "bvlc_googlenet", "deploy.prototxt")))
    if hits:
        return hits[0]
    return os.path.join(ROOT, "fixtures", "zoo", "googlenet.prototxt")


def resnet50_prototxt() -> str:
    zoo = os.path.join(ROOT, "fixtures", "zoo", "resnet50.prototxt")
    if os.path.exists(zoo):
        return zoo
    raise FileNotFoundError(f"{zoo} is missing (the zoo engineer's ResNet-50 deploy prototxt)")


NETS = {"googlenet": googlenet_prototxt, "resnet50": resnet50_prototxt}


def _digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha1(f.read() + PREP_VERSION.encode()).hexdigest()[:12]


def net_dir(net: str) -> str:
    proto = NETS[net]()
    return os.path.join(CACHE, f"{net}-{_digest(proto)}")


def paths(net: str, batch: int) -> dict[str, str]:
    d = net_dir(net)
    return {
        "dir": d,
        "source_prototxt": NETS[net](),
        "prototxt": os.path.join(d, f"deploy_b{batch}.prototxt"),
        "weights": os.path.join(d, "weights.caffemodel"),
        "keras": os.path.join(d, "port.keras"),
        "info": os.path.join(d, "info.json"),
    }


def input_array(net: str, batch: int, seed: int) -> np.ndarray:
    """A seeded NCHW input for ``net`` at ``batch`` (cached as .npy)."""
    d = net_dir(net)
    path = os.path.join(d, f"x_b{batch}_{seed}.npy")
    if os.path.exists(path):
        return np.load(path)
    with open(os.path.join(d, "info.json")) as f:
        c, h, w = json.load(f)["input_chw"]
    x = (np.random.default_rng(seed).standard_normal((batch, c, h, w)) * INPUT_SCALE).astype(np.float32)
    np.save(path, x)
    return x


def prepare(net: str, batches: list[int]) -> dict:
    """Create (once) the prototxt per batch, the seeded caffemodel and the Keras port."""
    import caffe  # noqa: F401  - before TensorFlow (portbuilder's note: the other order crashes caffe.Net)

    from portbuilder import build_keras, make_caffemodel, net_info, with_input_shape

    p = paths(net, 1)
    os.makedirs(p["dir"], exist_ok=True)
    info = net_info(p["source_prototxt"])
    n, c, h, w = info.shapes[info.input_blob]
    meta = {"net": net, "source": p["source_prototxt"], "input_blob": info.input_blob, "input_chw": [c, h, w]}
    with open(p["info"], "w") as f:
        json.dump(meta, f)
    for b in batches:
        pb = paths(net, b)
        if not os.path.exists(pb["prototxt"]):
            with_input_shape(p["source_prototxt"], (b, c, h, w), pb["prototxt"])
    if not os.path.exists(p["weights"]):
        calib = input_array(net, 1, 0)
        tmp = p["weights"] + ".partial"
        make_caffemodel(paths(net, 1)["prototxt"], tmp, calib, seed=WEIGHT_SEED)
        os.replace(tmp, p["weights"])
    if not os.path.exists(p["keras"]):
        model = build_keras(paths(net, 1)["prototxt"], p["weights"], (1, c, h, w))
        tmp = p["keras"] + ".partial.keras"
        model.save(tmp)
        os.replace(tmp, p["keras"])
    return meta


def port_layers_module():
    """tests/portbuilder/layers.py loaded on its own (its package __init__ imports Caffe)."""
    name = "layerparity_bench_port_layers"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "tests", "portbuilder", "layers.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def load_port(net: str):
    """The saved Keras port, without importing Caffe into this process."""
    import keras

    L = port_layers_module()
    custom = {k: getattr(L, k) for k in dir(L) if isinstance(getattr(L, k), type) and issubclass(getattr(L, k), keras.layers.Layer)}
    return keras.saving.load_model(paths(net, 1)["keras"], custom_objects=custom, compile=False, safe_mode=False)


# -- measuring -----------------------------------------------------------------------


def now() -> float:
    return time.perf_counter()


def vm_status(pid: int | str = "self") -> dict[str, int]:
    """VmRSS / VmHWM of a process in KiB (0 if unreadable)."""
    out = {"VmRSS": 0, "VmHWM": 0}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k = line.split(":", 1)[0]
                if k in out:
                    out[k] = int(line.split()[1])
    except OSError:
        pass
    return out


def maxrss_mib(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0


def machine_facts() -> dict:
    facts = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    facts["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            facts["mem_gib"] = round(int(f.readline().split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    facts["loadavg"] = os.getloadavg()
    try:
        import importlib.metadata as md

        for pkg in ("numpy", "tensorflow", "tensorflow-cpu", "keras", "protobuf"):
            try:
                facts[pkg] = md.version(pkg)
            except md.PackageNotFoundError:
                pass
    except Exception:  # noqa: BLE001
        pass
    return facts


def set_numpy_blas_threads(n: int) -> bool:
    """Limit the OpenBLAS bundled with NumPy (not Caffe's system OpenBLAS) to ``n`` threads.

    A what-if for benchmarks/run.py --whatif: the same effect as metrics.py not
    calling the threaded BLAS ``ddot`` (np.dot) on large vectors.
    """
    import ctypes

    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), os.pardir, "numpy.libs", "libscipy_openblas*.so"))
    for lib in libs:
        try:
            h = ctypes.CDLL(lib)
        except OSError:
            continue
        for sym in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads_64_", "openblas_set_num_threads"):
            fn = getattr(h, sym, None)
            if fn is not None:
                fn(ctypes.c_int(n))
                return True
    return False

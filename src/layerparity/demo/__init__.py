"""The bundled example: a small Caffe net and a TensorFlow port of it with ONE classic bug.

Files (packaged with layerparity, next to this module):

================  =========================================================
deploy.prototxt   the Caffe net: conv/relu/pool/LRN/conv/relu/pool/ip/softmax
weights.caffemodel  its weights (seeded NumPy draws, see :func:`build`)
port.keras        the Keras port, same layer names, same weights
input.npy         one input, NCHW ``(1, 3, 32, 32)`` float32
================  =========================================================

The bug: ``conv2`` (kernel 3, stride 2, pad 1 in Caffe) is ported as
``Conv2D(strides=2, padding="same")``. On the even 16x16 input TF's 'SAME' puts
the one padding row/column at the bottom/right only, so the sampling grid is
shifted by one pixel against Caffe's symmetric pad: same output shape, every
element wrong. The right port is ``ZeroPadding2D(1)`` then ``padding="valid"``.
Everything before ``conv2`` matches; everything after it inherits the error
(its own error, measured by feeding each TF layer the Caffe input, is tiny).

``layerparity demo`` (``make demo``) compares the two and prints the table.
The binaries are regenerated deterministically by ``python -m layerparity.demo
--regenerate`` (needs Caffe and TensorFlow); when they are missing, :func:`files`
builds them once into ``$LAYERPARITY_CACHE/demo`` (default ``~/.cache/layerparity``).

Keras has no LRN layer, so the port uses :func:`layerparity.keras_layers.lrn_layer_class`
(``LRN``, stored as ``layerparity>LRN``). layerparity always knows it (``load_tf``
and everything built on it load ``port.keras`` as is); call
:func:`register_keras_objects` only to load ``port.keras`` with
``keras.saving.load_model`` yourself (both are re-exported here).

``layerparity demo --write DIR`` (:func:`write_files`) copies the files under the
README's placeholder names (``deploy.prototxt``, ``weights.caffemodel``,
``model.keras`` (also as ``port.keras``, the docs' name), ``input.npy``, and
``inputs.npy``: 8 inputs for ``sweep``), so the README's snippets run as written in ``DIR``.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..keras_layers import lrn_layer_class, register_keras_objects

__all__ = [
    "DemoFiles", "files", "build", "build_keras_port", "demo_weights", "demo_input", "demo_inputs",
    "register_keras_objects", "lrn_layer_class", "write_files", "README_NAMES", "BUG_LAYER",
]

HERE = Path(__file__).resolve().parent
SEED = 20261123
#: The Caffe layer the demo port gets wrong.
BUG_LAYER = "conv2"
_NAMES = ("deploy.prototxt", "weights.caffemodel", "port.keras", "input.npy")


@dataclass(frozen=True)
class DemoFiles:
    prototxt: str
    caffemodel: str
    keras: str
    input: str
    directory: str


def _complete(d: Path) -> bool:
    return all((d / n).is_file() for n in _NAMES)


def files(directory: str | os.PathLike[str] | None = None) -> DemoFiles:
    """Paths of the demo files: the packaged ones, else built once into the cache."""
    d = Path(directory) if directory is not None else HERE
    if not _complete(d):
        cache = Path(os.environ.get("LAYERPARITY_CACHE", Path.home() / ".cache" / "layerparity")) / "demo"
        if not _complete(cache):
            build(cache)
        d = cache
    return DemoFiles(*(str(d / n) for n in _NAMES), directory=str(d))


#: The placeholder names of the README and the docs: the name :func:`write_files` writes
#: -> the demo file (a :class:`DemoFiles` field) it is a copy of.
README_NAMES = {"deploy.prototxt": "prototxt", "weights.caffemodel": "caffemodel", "model.keras": "keras",
                "port.keras": "keras", "input.npy": "input"}
#: :func:`write_files` also writes this many inputs, stacked, as ``inputs.npy`` (for ``sweep``).
SWEEP_INPUTS = 8


def write_files(directory: str | os.PathLike[str], *, overwrite: bool = False) -> dict[str, str]:
    """Copy the demo into ``directory`` under the README's placeholder names (see
    :data:`README_NAMES`) plus ``inputs.npy`` (:func:`demo_inputs`), so every README
    snippet runs as written there. Returns ``name -> path``. Files already there are
    not replaced (an :class:`~layerparity.errors.UsageError` names them) unless
    ``overwrite``."""
    import numpy as np

    from ..errors import UsageError

    d = Path(directory)
    if d.exists() and not d.is_dir():
        raise UsageError(f"{d}: exists and is not a folder")
    targets = {**{n: d / n for n in README_NAMES}, "inputs.npy": d / "inputs.npy"}
    there = [str(p) for p in targets.values() if p.exists()]
    if there and not overwrite:
        raise UsageError(f"{d}: would replace {', '.join(os.path.basename(p) for p in there)}; "
                         "choose an empty folder (nothing was written)")
    src = files()
    d.mkdir(parents=True, exist_ok=True)
    for name, field_name in README_NAMES.items():
        shutil.copyfile(getattr(src, field_name), d / name)
    np.save(d / "inputs.npy", demo_inputs())
    return {name: str(p) for name, p in targets.items()}


def demo_inputs(n: int = SWEEP_INPUTS) -> Any:
    """``n`` inputs stacked ``(n, 3, 32, 32)``: the demo's input first, then seeded draws."""
    import numpy as np

    rng = np.random.RandomState(SEED + 2)
    more = rng.uniform(-1.0, 1.0, size=(n - 1, 3, 32, 32)).astype(np.float32)
    return np.concatenate([demo_input(), more])


# -- building the files ----------------------------------------------------------------


def demo_weights() -> dict[str, list[Any]]:
    """The demo's Caffe parameters, in Caffe layouts, from one seeded generator."""
    import numpy as np

    rng = np.random.RandomState(SEED)

    def he(shape: tuple[int, ...], fan_in: int) -> Any:
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    return {
        "conv1": [he((16, 3, 5, 5), 75), (rng.standard_normal(16) * 0.1).astype(np.float32)],
        "conv2": [he((32, 16, 3, 3), 144), (rng.standard_normal(32) * 0.1).astype(np.float32)],
        "ip1": [he((10, 512), 512), (rng.standard_normal(10) * 0.1).astype(np.float32)],
    }


def demo_input() -> Any:
    import numpy as np

    rng = np.random.RandomState(SEED + 1)
    return rng.uniform(-1.0, 1.0, size=(1, 3, 32, 32)).astype(np.float32)


def build_keras_port(weights: dict[str, list[Any]], *, buggy: bool = True) -> Any:
    """The Keras port of deploy.prototxt, with the conv2 padding bug unless ``buggy=False``."""
    import keras

    from ..layout import conv_weight_caffe_to_tf, inner_product_weight_caffe_to_tf

    LRN = lrn_layer_class()
    L = keras.layers
    x = keras.Input((32, 32, 3), name="data")
    y = L.Conv2D(16, 5, padding="same", name="conv1")(x)  # stride 1, odd kernel: SAME == pad 2
    y = L.ReLU(name="relu1")(y)
    y = L.MaxPooling2D(3, 2, padding="same", name="pool1")(y)  # Caffe rounds up: 32 -> 16
    y = LRN(depth_radius=2, bias=1.0, alpha=1e-4 / 5, beta=0.75, name="norm1")(y)
    if buggy:
        y = L.Conv2D(32, 3, strides=2, padding="same", name="conv2")(y)  # THE BUG: asymmetric SAME padding
    else:
        y = L.ZeroPadding2D(1, name="conv2_pad")(y)
        y = L.Conv2D(32, 3, strides=2, padding="valid", name="conv2")(y)
    y = L.ReLU(name="relu2")(y)
    y = L.MaxPooling2D(2, 2, name="pool2")(y)
    y = L.Flatten(name="flatten")(y)
    y = L.Dense(10, name="ip1")(y)
    y = L.Softmax(name="prob")(y)
    model = keras.Model(x, y, name="layerparity_demo_port")
    for name in ("conv1", "conv2"):
        w, b = weights[name]
        model.get_layer(name).set_weights([conv_weight_caffe_to_tf(w), b])
    w, b = weights["ip1"]
    model.get_layer("ip1").set_weights([inner_product_weight_caffe_to_tf(w, (32, 4, 4)), b])
    return model


def build(directory: str | os.PathLike[str]) -> DemoFiles:
    """Write the four demo files into ``directory`` (needs real Caffe and TensorFlow).

    Deterministic: the same seed gives the same weights and input every time.
    The files appear all at once (built in a scratch folder, then moved).
    """
    import numpy as np

    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=d))
    try:
        weights = demo_weights()
        proto = tmp / "deploy.prototxt"
        shutil.copyfile(HERE / "deploy.prototxt", proto)
        _write_caffemodel(str(proto), weights, str(tmp / "weights.caffemodel"))
        build_keras_port(weights).save(str(tmp / "port.keras"))
        np.save(tmp / "input.npy", demo_input())
        for n in _NAMES[1:]:
            os.replace(tmp / n, d / n)
        if d.resolve() != HERE:
            os.replace(proto, d / "deploy.prototxt")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return DemoFiles(*(str(d / n) for n in _NAMES), directory=str(d))


def _write_caffemodel(prototxt: str, weights: dict[str, list[Any]], out: str) -> None:
    """Set the parameters of a real ``caffe.Net`` and save it (in a child process, so a
    glog abort cannot take the caller down)."""
    import subprocess

    import numpy as np

    with tempfile.TemporaryDirectory() as td:
        npz = os.path.join(td, "w.npz")
        np.savez(npz, **{f"{k}__{i}": v for k, vs in weights.items() for i, v in enumerate(vs)})
        code = (
            "import sys, numpy as np, caffe\n"
            "caffe.set_mode_cpu()\n"
            "net = caffe.Net(sys.argv[1], caffe.TEST)\n"
            "w = np.load(sys.argv[2])\n"
            "for k in w.files:\n"
            "    name, i = k.rsplit('__', 1)\n"
            "    net.params[name][int(i)].data[...] = w[k]\n"
            "net.save(sys.argv[3])\n"
        )
        env = {**os.environ, "GLOG_minloglevel": "2"}
        r = subprocess.run([sys.executable, "-c", code, prototxt, npz, out], capture_output=True, text=True, env=env)
        if r.returncode != 0:
            from ..errors import CaffeError

            raise CaffeError(f"{prototxt}: building the demo caffemodel failed: {(r.stderr or r.stdout).strip()[-800:]}")

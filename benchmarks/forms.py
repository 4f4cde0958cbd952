"""The port forms `make bench` times besides the project's Keras ports.

- ``pb`` / ``tflite``: the project's Keras GoogLeNet port exported as a frozen GraphDef
  (``convert_variables_to_constants_v2``, batch 1) and as a float32 TFLite model; cached in
  ``$LAYERPARITY_CACHE/bench-exports-<hash>/`` (hash of the .keras file and of this file).
- ``converter``: a caffe2onnx -> onnx2tf SavedModel from ``make converter-ports``
  (scripts/make_converter_ports.py, its manifest.json): ``resnet50_quarter`` (ResNet-50 with
  BatchNorm+Scale), and ``googlenet``.

Each form gives the Caffe side (prototxt, caffemodel, NCHW input) and a plain TF forward.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import common

HERE = Path(__file__).resolve().parent


def cache_root() -> Path:
    return Path(os.environ.get("LAYERPARITY_CACHE") or Path.home() / ".cache" / "layerparity")


def converter_dir() -> Path | None:
    """The converter ports folder of the current generator version, if built."""
    r = subprocess.run([sys.executable, os.path.join(common.ROOT, "scripts", "make_converter_ports.py"), "--print-dir"],
                       capture_output=True, text=True)
    if r.returncode != 0 or not r.stdout.strip():
        return None
    return Path(r.stdout.strip().splitlines()[-1])


def converter_manifest(net: str) -> dict | None:
    """The net's manifest from the current generator's folder, else from the newest other
    ``converter-ports-*`` folder that has it (a build of an edited generator may be under way)."""
    d = converter_dir()
    found = d / net / "manifest.json" if d is not None else None
    if found is None or not found.exists():
        others = sorted(cache_root().glob(f"converter-ports-*/{net}/manifest.json"), key=lambda q: q.stat().st_mtime)
        if not others:
            return None
        found = others[-1]
    m = json.loads(found.read_text())
    m["dir"] = str(found.parent)
    m["current_key"] = d is not None and found.parent.parent == d
    return m


def export_dir() -> Path:
    p = common.paths("googlenet", 1)
    h = hashlib.sha256()
    with open(p["keras"], "rb") as f:
        h.update(f.read())
    h.update(Path(__file__).read_bytes())
    return cache_root() / f"bench-exports-{h.hexdigest()[:16]}"


def export_googlenet() -> dict:
    """Frozen .pb and float32 .tflite of the Keras GoogLeNet port (once; cached)."""
    d = export_dir()
    meta_path = d / "meta.json"
    if meta_path.exists():
        return json.loads(meta_path.read_text())
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    d.mkdir(parents=True, exist_ok=True)
    model = common.load_port("googlenet")
    with open(common.paths("googlenet", 1)["info"]) as f:
        c, h, w = json.load(f)["input_chw"]
    fn = tf.function(lambda v: model(v, training=False)).get_concrete_function(
        tf.TensorSpec((1, h, w, c), tf.float32, name="data"))
    frozen = convert_variables_to_constants_v2(fn)
    tmp = d / "googlenet.pb.partial"
    tmp.write_bytes(frozen.graph.as_graph_def().SerializeToString())
    os.replace(tmp, d / "googlenet.pb")
    conv = tf.lite.TFLiteConverter.from_keras_model(model)  # float32; variables folded into constants
    tmp = d / "googlenet.tflite.partial"
    tmp.write_bytes(conv.convert())
    os.replace(tmp, d / "googlenet.tflite")
    meta = {"pb": str(d / "googlenet.pb"), "tflite": str(d / "googlenet.tflite"),
            "pb_input": frozen.inputs[0].name, "pb_output": frozen.outputs[0].name}
    meta_path.write_text(json.dumps(meta))
    return meta


def spec(form: str, net: str) -> dict:
    """Caffe files, the TF model path and the NCHW input of one form (batch 1)."""
    if form == "converter":
        m = converter_manifest(net)
        if m is None:
            raise FileNotFoundError(f"converter port {net} not built (make converter-ports)")
        d = m["dir"]
        return {"prototxt": os.path.join(d, m["prototxt"]), "weights": os.path.join(d, m["caffemodel"]),
                "tf_model": os.path.join(d, m["correct"]["savedmodel"]), "input": os.path.join(d, m["input"])}
    p = common.paths(net, 1)
    common.input_array(net, 1, 1)
    x = os.path.join(p["dir"], "x_b1_1.npy")
    meta = export_googlenet()
    return {"prototxt": p["prototxt"], "weights": p["weights"], "tf_model": meta[form], "input": x, "meta": meta}


def tf_forward(form: str, s: dict):
    """A plain TF forward ``f(x_nhwc)`` of the form's model, loaded and ready."""
    import numpy as np
    import tensorflow as tf

    path = s["tf_model"]
    if form == "converter":
        loaded = tf.saved_model.load(path)
        sig = loaded.signatures["serving_default"]
        name = list(sig.structured_input_signature[1].keys())[0]

        def run(x):
            out = sig(**{name: tf.constant(x)})
            return [v.numpy() for v in out.values()]

        run.keep = loaded
        return run
    if form == "pb":
        gd = tf.compat.v1.GraphDef()
        gd.ParseFromString(Path(path).read_bytes())
        w = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(gd, name=""), [])
        f = w.prune(w.graph.get_tensor_by_name(s["meta"]["pb_input"]), w.graph.get_tensor_by_name(s["meta"]["pb_output"]))
        return lambda x: f(tf.constant(x)).numpy()
    if form == "tflite":
        it = tf.lite.Interpreter(model_path=path)
        it.allocate_tensors()
        i0, o0 = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]

        def run(x):
            it.set_tensor(i0, np.ascontiguousarray(x, np.float32))
            it.invoke()
            return it.get_tensor(o0)

        return run
    raise ValueError(form)

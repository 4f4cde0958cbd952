"""The converter venv's half of scripts/make_converter_ports.py: caffe2onnx, ONNX edits, onnx2tf, a check.

Runs only under the converter venv's Python (built by scripts/build-converter-venv.sh), never
under the project's .venv: it imports onnx, caffe2onnx (whose top-level package is named
``src``) and TensorFlow, and must never import pycaffe (Caffe in a process that imported
TensorFlow segfaults).

    PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python python converter_tool.py caffe2onnx JOB.json  # -> correct.onnx
    python converter_tool.py inject JOB.json    # each bug: correct.onnx edited -> bug_<name>.onnx
    python converter_tool.py convert IN.onnx OUT_DIR CALIBRATION.npy   # onnx2tf -osd
    python converter_tool.py verify JOB.json    # run every SavedModel, compare its output with Caffe's

caffe-onnx's generated caffe_pb2 predates protoc 3.19, so it loads only under protobuf's
pure-Python implementation; the venv has protobuf 5 (fast upb) for onnx and TensorFlow, and
only the caffe2onnx step runs with PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python.

A bug is an edit of the ONNX model that caffe2onnx wrote, made before onnx2tf, the way a
converter would get it wrong (see EDITS). Nothing here downloads anything: onnx2tf's
calibration sample is the file the venv build wrote, linked into the working folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CALIBRATION_NAME = "calibration_image_sample_data_20x128x128x3_float32.npy"


def _caffe2onnx(prototxt: str, caffemodel: str, name: str, out: Path) -> Path:
    from src.caffe2onnx import Caffe2Onnx
    from src.load_save_model import loadcaffemodel, saveonnxmodel

    path = out / f"{name}.onnx"
    log = io.StringIO()
    with contextlib.redirect_stdout(log):  # caffe2onnx prints a line per layer
        graph, params = loadcaffemodel(prototxt, caffemodel)
        model = Caffe2Onnx(graph, params, name).createOnnxModel()
        saveonnxmodel(model, os.fspath(path))
    (out / f"{name}.caffe2onnx.log").write_text(log.getvalue())
    if not path.exists():  # saveonnxmodel prints the checker's complaint and returns
        raise SystemExit(f"caffe2onnx did not write {path}:\n{log.getvalue()[-2000:]}")
    return path


# -- bug edits ----------------------------------------------------------------------------


def _node(model, name: str):
    for node in model.graph.node:
        if node.name == name:
            return node
    raise SystemExit(f"no ONNX node named {name!r} (nodes: {[n.name for n in model.graph.node][:40]}...)")


def _initializer(model, node, index: int):
    wanted = node.input[index]
    for init in model.graph.initializer:
        if init.name == wanted:
            return init
    raise SystemExit(f"node {node.name!r} input {index} ({wanted!r}) is not an initializer")


def _set_attr(node, name: str, value) -> None:
    from onnx import helper

    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


def _get_attr(node, name: str):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None


def _transform(w, how: str, arg):
    import numpy as np

    if how == "hw_swap":  # conv kernel (O, I, kH, kW) with kH and kW exchanged
        return np.ascontiguousarray(w.transpose(0, 1, 3, 2))
    if how == "flip":  # conv kernel rotated 180 degrees
        return np.ascontiguousarray(w[:, :, ::-1, ::-1])
    if how == "transpose":  # a square Gemm weight transposed
        return np.ascontiguousarray(w.T)
    if how == "flatten_hwc":  # Gemm weight columns in H*W*C order where the data is flattened C*H*W
        c, h, ww = arg
        return np.ascontiguousarray(w.reshape(w.shape[0], c, h, ww).transpose(0, 2, 3, 1).reshape(w.shape[0], -1))
    if how == "scale":
        return (w * np.float32(arg)).astype(w.dtype)
    if how == "fill":
        return np.full_like(w, arg)
    raise SystemExit(f"unknown weight transform {how!r}")


def apply_edit(model, edit: dict) -> str:
    """Apply one bug edit in place; returns a one-line description of what changed."""
    from onnx import numpy_helper

    node = _node(model, edit["node"])
    if "attr" in edit:
        old = _get_attr(node, edit["attr"])
        new = edit["value"] if "value" in edit else old * edit["times"]
        _set_attr(node, edit["attr"], new)
        return f"{node.op_type} {node.name}: {edit['attr']} {old} -> {new}"
    changes = []
    for k, index in enumerate(edit["inputs"]):
        init = _initializer(model, node, index)
        w = numpy_helper.to_array(init)
        arg = edit.get("arg")
        if edit["transform"] == "fill":  # one value per input
            arg = arg[k]
        w2 = _transform(w, edit["transform"], arg)
        init.CopyFrom(numpy_helper.from_array(w2, init.name))
        changes.append(f"{init.name} {list(w.shape)}")
    return f"{node.op_type} {node.name}: {edit['transform']}({edit.get('arg')}) of {', '.join(changes)}"


def run_caffe2onnx(job: dict) -> dict:
    t0 = time.perf_counter()
    _caffe2onnx(job["onnx_prototxt"], job["caffemodel"], "correct", Path(job["dir"]))
    return {"seconds": time.perf_counter() - t0}


def inject(job: dict) -> dict:
    import onnx

    out = Path(job["dir"])
    correct = out / "correct.onnx"
    t0 = time.perf_counter()
    edits = {}
    for bug in job["bugs"]:
        model = onnx.load(os.fspath(correct))
        edits[bug["name"]] = apply_edit(model, bug["edit"])
        # The edit can change a tensor's shape (pads): drop the stale shape annotations and
        # let ONNX infer them again, as a converter writing this model would have.
        del model.graph.value_info[:]
        model = onnx.shape_inference.infer_shapes(model)
        onnx.checker.check_model(model)
        onnx.save(model, os.fspath(out / f"bug_{bug['name']}.onnx"))
    return {"edits": edits, "seconds": time.perf_counter() - t0}


# -- onnx2tf ------------------------------------------------------------------------------


def convert(onnx_path: str, out_dir: str, calibration: str) -> float:
    """``onnx2tf -i ONNX -o OUT -osd``, in a scratch cwd holding the calibration sample."""
    work = Path(out_dir + ".work")
    work.mkdir(parents=True, exist_ok=True)
    link = work / CALIBRATION_NAME
    if not link.exists():
        link.symlink_to(calibration)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="-1")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "onnx2tf", "-i", os.path.abspath(onnx_path), "-o",
                        os.path.abspath(out_dir), "-osd", "-n"], cwd=work, env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    took = time.perf_counter() - t0
    (Path(out_dir + ".log")).write_text(r.stdout)
    if r.returncode != 0 or not (Path(out_dir) / "saved_model.pb").exists():
        raise SystemExit(f"onnx2tf failed on {onnx_path} (exit {r.returncode}):\n{r.stdout[-3000:]}")
    for f in Path(out_dir).glob("*.tflite"):  # by-products of every onnx2tf run; not used here
        f.unlink()
    for f in work.iterdir():
        f.unlink()
    work.rmdir()
    return took


# -- check --------------------------------------------------------------------------------


def verify(job: dict) -> dict:
    """Run each SavedModel on the input; its output against Caffe's final output (max |diff|)."""
    import numpy as np
    import tensorflow as tf

    d = Path(job["dir"])
    x = np.load(d / "input.npy").transpose(0, 2, 3, 1)
    ref = np.load(d / "caffe_output.npy")
    out = {}
    for port in ["correct"] + [f"bug_{b['name']}" for b in job["bugs"]]:
        m = tf.saved_model.load(os.fspath(d / port))
        f = m.signatures["serving_default"]
        (y,) = f(tf.constant(x)).values()
        y = y.numpy()
        if y.ndim == 4:
            y = y.transpose(0, 3, 1, 2)
        y = y.reshape(ref.shape) if y.size == ref.size else y
        out[port] = {
            "output_shape": list(y.shape),
            "max_abs_diff_vs_caffe": float(np.max(np.abs(y - ref))) if y.shape == ref.shape else None,
            "max_abs_caffe": float(np.max(np.abs(ref))),
        }
    return out


def main(argv: list[str]) -> int:
    cmd = argv[0]
    if cmd == "caffe2onnx":
        if os.environ.get("PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION") != "python":
            raise SystemExit("caffe2onnx's generated caffe_pb2 needs PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python")
        print(json.dumps(run_caffe2onnx(json.loads(Path(argv[1]).read_text()))))
    elif cmd == "inject":
        print(json.dumps(inject(json.loads(Path(argv[1]).read_text()))))
    elif cmd == "convert":
        print(json.dumps({"seconds": convert(argv[1], argv[2], argv[3])}))
    elif cmd == "verify":
        print(json.dumps(verify(json.loads(Path(argv[1]).read_text()))))
    else:
        raise SystemExit(f"unknown command {cmd!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

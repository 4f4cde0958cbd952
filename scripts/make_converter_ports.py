#!/usr/bin/env python3
"""Build the third-party matrix: Caffe nets ported by tools nobody here wrote (caffe2onnx -> onnx2tf).

    .venv/bin/python scripts/make_converter_ports.py --converter-python CONVERTER_VENV/bin/python
    .venv/bin/python scripts/make_converter_ports.py --print-dir     # where the ports are (or will be)

Run it through ``make converter-ports`` (scripts/make-converter-ports.sh builds the converter
venv first). Per net, in ``<cache>/converter-ports-<key>/<net>/`` (cache:
``${LAYERPARITY_CACHE:-~/.cache/layerparity}``; key: a hash of this script, the converter tool,
the pinned converter requirements and the source prototxts):

- ``deploy.prototxt``: the net as Caffe runs it (batch 1, the input size below; Dropout kept);
  ``deploy_nodropout.prototxt``: the same without Dropout layers, given to caffe2onnx;
- ``weights.caffemodel``: seeded random weights written by real pycaffe (``net.save``):
  He-normal kernels, BatchNorm statistics calibrated on the input, Scale gamma/beta, the
  classifier scaled to logits of std ~3;
- ``input.npy`` (NCHW, batch 1) and ``caffe_output.npy`` (Caffe's final blob);
- ``correct.onnx`` (caffe2onnx) and ``correct/`` (``onnx2tf -osd`` SavedModel);
- per injected bug ``bug_<name>.onnx`` (the ONNX model edited before onnx2tf) and ``bug_<name>/``;
- ``manifest.json``: the files, each bug's edit, the Caffe layer where it must first diverge,
  the diagnosis kinds that would be right, and each port's output against Caffe's.

Each net is built in a scratch folder and moved into place only when every port converted and
the correct port's output matched Caffe's: an interrupted run never leaves a half net. This
process runs pycaffe and never imports TensorFlow; everything ONNX/TF runs in the converter
venv (scripts/converter_tool.py) as separate processes. Nothing is downloaded here.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TOOL = HERE / "converter_tool.py"
REQUIREMENTS = HERE / "converter-requirements.txt"
CALIBRATION_NAME = "calibration_image_sample_data_20x128x128x3_float32.npy"
BN_MOVING_AVERAGE_FACTOR = 999.982  # the third BatchNorm blob S in real trained models

# name -> source (a BVLC model folder copied by scripts/build-caffe.sh, else a fixtures/zoo file),
# input shape (NCHW, batch 1), input scale, bugs. Sizes: AlexNet/CaffeNet at 103 (as in the zoo)
# so that Caffe's ceil pooling differs from floor at pool1, pool2 and pool5 (at 227 every window
# fits exactly) and fc6 is smaller; GoogLeNet and ResNet-50 at their published 224. ResNet-50 with
# quarter widths (1.6M instead of 25.6M parameters): caffe2onnx handles weights in pure-Python
# protobuf, about 3 s per million parameters here, and every layer, branch and shape is kept.
# ResNet at 197, not 224: caffe2onnx gives an unpadded strided conv whose size is fractional the
# ceil size (res3a_branch1 1x1/2 on 56: 29, Caffe 28) in its shapes, and its fc1000 Reshape to
# 2048 then fails in onnx2tf; at 197 every stride-2 1x1 conv fits exactly (99 -> 49 -> 25 -> 13
# -> 7). No floor-rounding pool bug: in every net here it changes a size that a later fixed-size
# step (fc6's reshape, pool5's 7x7 window) needs, and onnx2tf crashes (SIGFPE) on such a model;
# the pool-rounding bug is instead the ceil padding on the wrong side (caffenet pool2).
NETS: dict[str, dict] = {
    "alexnet": {
        "what": "AlexNet (BVLC, shipped deploy)",
        "bvlc": "bvlc_alexnet", "fixture": "alexnet.prototxt", "shape": [1, 3, 103, 103],
        "bugs": [
            {"name": "conv1_kernel_hw_swapped", "edit": {"node": "conv1", "inputs": [1], "transform": "hw_swap"},
             "layer": "conv1", "kinds": ["kernel_hw_swapped"],
             "what": "Conv conv1's weight initializer with kH and kW exchanged"},
            {"name": "norm1_lrn_alpha", "edit": {"node": "norm1", "attr": "alpha", "times": 5},
             "layer": "norm1", "kinds": ["lrn_alpha_scaling", "lrn_parameters"],
             "what": "LRN norm1's alpha multiplied by size (ONNX divides alpha by size, as Caffe does)"},
            {"name": "fc7_weight_transposed", "edit": {"node": "fc7_Gemm", "inputs": [1], "transform": "transpose"},
             "layer": "fc7", "kinds": ["reshape_not_transpose"],
             "what": "Gemm fc7's (square) weight transposed: the Dense kernel is W, not W.T"},
        ],
    },
    "caffenet": {
        "what": "CaffeNet (BVLC reference, shipped deploy)",
        "bvlc": "bvlc_reference_caffenet", "fixture": "caffenet.prototxt", "shape": [1, 3, 103, 103],
        "bugs": [
            {"name": "conv1_kernel_flipped", "edit": {"node": "conv1", "inputs": [1], "transform": "flip"},
             "layer": "conv1", "kinds": ["kernel_flipped"],
             "what": "Conv conv1's weight initializer rotated 180 degrees"},
            {"name": "norm2_lrn_alpha", "edit": {"node": "norm2", "attr": "alpha", "times": 5},
             "layer": "norm2", "kinds": ["lrn_alpha_scaling", "lrn_parameters"],
             "what": "LRN norm2 (after pool2) with alpha multiplied by size"},
            {"name": "pool2_ceil_pads_top_left", "edit": {"node": "pool2", "attr": "pads", "value": [1, 1, 0, 0]},
             "layer": "pool2", "kinds": ["pool_rounding"],
             "what": "MaxPool pool2's ceil-rounding pads put at the top/left ([1, 1, 0, 0]) instead of the "
                     "bottom/right ([0, 0, 1, 1]): the same size, every window shifted"},
            {"name": "fc6_flatten_order", "edit": {"node": "fc6_Gemm", "inputs": [1], "transform": "flatten_hwc",
                                                  "arg": [256, 3, 3]},
             "layer": "fc6", "kinds": ["flatten_order"],
             "what": "Gemm fc6's weight columns in H*W*C order where the data is flattened C*H*W"},
        ],
    },
    "googlenet": {
        "what": "GoogLeNet (BVLC, shipped deploy)",
        "bvlc": "bvlc_googlenet", "fixture": "googlenet.prototxt", "shape": [1, 3, 224, 224],
        "bugs": [
            {"name": "conv1_same_pads", "edit": {"node": "conv1/7x7_s2", "attr": "pads", "value": [2, 2, 3, 3]},
             "layer": "conv1/7x7_s2", "kinds": ["padding_asymmetry"],
             "what": "Conv conv1/7x7_s2 padded (2, 3) top/bottom and left/right ('SAME') instead of Caffe's 3 all round"},
            {"name": "norm1_lrn_alpha", "edit": {"node": "pool1/norm1", "attr": "alpha", "times": 5},
             "layer": "pool1/norm1", "kinds": ["lrn_alpha_scaling", "lrn_parameters"],
             "what": "LRN pool1/norm1's alpha multiplied by size"},
            {"name": "inception_3a_3x3_kernel_hw_swapped",
             "edit": {"node": "inception_3a/3x3", "inputs": [1], "transform": "hw_swap"},
             "layer": "inception_3a/3x3", "kinds": ["kernel_hw_swapped"],
             "what": "Conv inception_3a/3x3's weight initializer with kH and kW exchanged (inside an inception branch)"},
        ],
    },
    "resnet50_quarter": {
        "what": "ResNet-50 (KaimingHe deploy) with every conv a quarter as wide; BatchNorm + Scale",
        "fixture": "resnet50.prototxt", "width_divisor": 4, "shape": [1, 3, 197, 197],
        "bugs": [
            {"name": "bn_conv1_scale_factor",
             "edit": {"node": "bn_conv1", "inputs": [3, 4], "transform": "scale", "arg": BN_MOVING_AVERAGE_FACTOR},
             "layer": "bn_conv1", "kinds": ["batchnorm_scale_factor"],
             "what": "BatchNormalization bn_conv1's mean and var not divided by the scale factor blob S"},
            {"name": "bn2a_branch2a_epsilon", "edit": {"node": "bn2a_branch2a", "attr": "epsilon", "value": 1e-3},
             "layer": "bn2a_branch2a", "kinds": ["batchnorm_epsilon"],
             "what": "BatchNormalization bn2a_branch2a with epsilon 1e-3 (Keras' default) instead of Caffe's 1e-5"},
            {"name": "scale2a_branch2b_missing",
             "edit": {"node": "bn2a_branch2b", "inputs": [1, 2], "transform": "fill", "arg": [1.0, 0.0]},
             "layer": "scale2a_branch2b", "kinds": ["missing_scale"],
             "what": "BatchNormalization bn2a_branch2b with gamma 1 and beta 0: the Scale layer's blobs left out"},
        ],
    },
}


def cache_root() -> Path:
    return Path(os.environ.get("LAYERPARITY_CACHE") or Path.home() / ".cache" / "layerparity")


def _caffe_models_dir() -> Path | None:
    """The BVLC model folders that scripts/build-caffe.sh keeps beside the built caffe package.

    Found without importing caffe (a test process may have imported TensorFlow).
    """
    spec = importlib.util.find_spec("caffe")
    if spec is None or not spec.origin:
        return None
    d = Path(spec.origin).resolve().parent.parent / "models"
    return d if d.is_dir() else None


def source_prototxt(name: str) -> Path:
    net = NETS[name]
    models = _caffe_models_dir()
    if "bvlc" in net and models is not None and (models / net["bvlc"] / "deploy.prototxt").exists():
        return models / net["bvlc"] / "deploy.prototxt"
    return ROOT / "fixtures" / "zoo" / net["fixture"]  # byte-for-byte the shipped deploy files


def key() -> str:
    h = hashlib.sha256()
    for f in (Path(__file__).resolve(), TOOL, REQUIREMENTS):
        h.update(f.read_bytes())
    for name in NETS:
        h.update(name.encode() + source_prototxt(name).read_bytes())
    return h.hexdigest()[:16]


def ports_dir() -> Path:
    """Where the ports of this version of the generator live (whether built or not)."""
    return cache_root() / f"converter-ports-{key()}"


# -- Caffe side (pycaffe in this process) -------------------------------------------------


def without_dropout(net) -> None:
    """What caffe2onnx gets: the net without Dropout (identity at test time), a non-in-place
    Dropout's consumers reading its bottom instead."""
    rename: dict[str, str] = {}
    kept = []
    for lay in net.layer:
        lay.bottom[:] = [rename.get(b, b) for b in lay.bottom]
        if lay.type == "Dropout":
            rename[lay.top[0]] = lay.bottom[0]
            continue
        kept.append(lay)
    del net.layer[:]
    net.layer.extend(kept)


def _write_prototxts(name: str, d: Path) -> tuple[Path, Path]:
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format

    net = caffe_pb2.NetParameter()
    text_format.Merge(source_prototxt(name).read_text(), net)
    shape = NETS[name]["shape"]
    inputs = [lay for lay in net.layer if lay.type == "Input"]
    if len(inputs) != 1:
        raise SystemExit(f"{name}: expected one Input layer, found {len(inputs)}")
    del inputs[0].input_param.shape[:]
    inputs[0].input_param.shape.add().dim.extend(shape)
    divisor = NETS[name].get("width_divisor")
    if divisor:
        net.name = f"{net.name}-width-1/{divisor}"
        for lay in net.layer:
            if lay.type == "Convolution":
                lay.convolution_param.num_output //= divisor
    deploy = d / "deploy.prototxt"
    deploy.write_text(text_format.MessageToString(net))
    without_dropout(net)
    stripped = d / "deploy_nodropout.prototxt"
    stripped.write_text(text_format.MessageToString(net))
    return deploy, stripped


def _make_caffe_side(name: str, d: Path, seed: int) -> dict:
    """Weights through pycaffe, stepping the net once so BatchNorm sees its real input."""
    import caffe
    import numpy as np

    caffe.set_mode_cpu()
    deploy, stripped = _write_prototxts(name, d)
    rng = np.random.default_rng(seed)
    shape = NETS[name]["shape"]
    # A mean-subtracted image's range: smooth-ish noise in [-128, 128]
    x = rng.uniform(-1, 1, size=shape).astype(np.float32)
    x = (0.5 * x + 0.5 * np.roll(x, 1, axis=2)) * 128
    np.save(d / "input.npy", x)

    net = caffe.Net(os.fspath(deploy), caffe.TEST)
    net.blobs[net.inputs[0]].data[...] = x
    names = list(net._layer_names)
    types = [layer.type for layer in net.layers]
    # the InnerProduct/Convolution that feeds the final Softmax: scaled to logits of std ~3
    classifier = None
    for i, t in enumerate(types):
        if t == "Softmax":
            src = net.bottom_names[names[i]][0]
            for j in range(i - 1, -1, -1):
                if src in net.top_names[names[j]] and types[j] in ("InnerProduct", "Convolution"):
                    classifier = names[j]
                    break
    ranges = {}
    for i, (lname, t) in enumerate(zip(names, types, strict=True)):
        params = net.params[lname] if lname in net.params else []
        if t in ("Convolution", "InnerProduct"):
            w = params[0].data
            fan_in = int(np.prod(w.shape[1:]))
            params[0].data[...] = rng.normal(0.0, np.sqrt(2.0 / fan_in), size=w.shape)
            if len(params) > 1:
                params[1].data[...] = rng.normal(0.0, 0.1, size=params[1].data.shape)
        elif t == "BatchNorm":
            b = net.blobs[net.bottom_names[lname][0]].data  # the layer's input: it has not run yet
            axes = (0, 2, 3) if b.ndim == 4 else (0,)
            mean = b.mean(axis=axes)
            var = b.var(axis=axes)
            var = np.maximum(var, 0.1 * var.mean()) * rng.uniform(0.5, 1.5, size=var.shape)
            mean = mean + rng.normal(0.0, 0.1, size=mean.shape) * np.sqrt(var)
            s = BN_MOVING_AVERAGE_FACTOR
            params[0].data[...] = mean * s
            params[1].data[...] = var * s
            params[2].data[...] = s
        elif t == "Scale":
            params[0].data[...] = rng.uniform(0.5, 1.5, size=params[0].data.shape)
            if len(params) > 1:
                params[1].data[...] = rng.normal(0.0, 0.2, size=params[1].data.shape)
        elif params:
            raise SystemExit(f"{name}: no weight recipe for {t} layer {lname}")
        net._forward(i, i)
        if lname == classifier:
            top = net.blobs[net.top_names[lname][0]].data
            k = 3.0 / max(float(top.std()), 1e-6)
            params[0].data[...] *= k
            if len(params) > 1:
                params[1].data[...] *= k
            net._forward(i, i)
        top = net.blobs[net.top_names[lname][0]].data
        ranges[lname] = float(np.abs(top).max())
    model = d / "weights.caffemodel"
    net.save(os.fspath(model))
    out = net.blobs[net.outputs[0]].data.copy()
    # the saved file, read back, must give the same output
    again = caffe.Net(os.fspath(deploy), os.fspath(model), caffe.TEST)
    again.blobs[again.inputs[0]].data[...] = x
    out2 = again.forward()[again.outputs[0]]
    if not np.array_equal(out, out2):
        raise SystemExit(f"{name}: the saved caffemodel does not reproduce the forward pass")
    np.save(d / "caffe_output.npy", out)
    return {"max_abs_activation": ranges, "output_blob": net.outputs[0]}


# -- orchestration ------------------------------------------------------------------------


def _tool(converter_python: str, *args: str, **extra_env: str) -> dict:
    """Run converter_tool.py in the converter venv; its JSON answer, plus ``cpu_seconds``
    (user + system time of the process and everything it ran: what a quiet machine's wall
    time would be on one core)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="-1", **extra_env)
    env.pop("PYTHONPATH", None)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen([converter_python, os.fspath(TOOL), *args], stdout=out, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if p.returncode != 0:
        raise SystemExit(f"converter_tool {args[0]} failed (exit {p.returncode}):\n{stderr[-4000:]}{stdout[-2000:]}")
    answer = json.loads(stdout.strip().splitlines()[-1])
    answer["cpu_seconds"] = usage.ru_utime + usage.ru_stime
    return answer


def build(names: list[str], converter_python: str, jobs: int) -> dict:
    root = ports_dir()
    root.mkdir(parents=True, exist_ok=True)
    calibration = Path(converter_python).absolute().parent.parent / CALIBRATION_NAME
    if not calibration.exists():
        raise SystemExit(f"{calibration} is missing: rebuild the converter venv (scripts/build-converter-venv.sh)")
    todo = [n for n in names if not (root / n / "manifest.json").exists()]
    timings: dict[str, dict] = {n: {} for n in todo}
    if not todo:
        return {}
    scratch = Path(tempfile.mkdtemp(prefix="build-", dir=root))
    slots = threading.Semaphore(jobs)  # CPU-heavy converter processes at once

    def tool(*args: str, **env: str) -> dict:
        with slots:
            return _tool(converter_python, *args, **env)

    try:
        jobfiles = {}
        for name in todo:  # pycaffe, in this process: a few seconds per net
            d = scratch / name
            d.mkdir()
            t0 = time.perf_counter()
            caffe_info = _make_caffe_side(name, d, seed=1000 + 17 * list(NETS).index(name))
            timings[name]["caffe_weights"] = {"wall": time.perf_counter() - t0}
            job = {"dir": os.fspath(d), "onnx_prototxt": os.fspath(d / "deploy_nodropout.prototxt"),
                   "caffemodel": os.fspath(d / "weights.caffemodel"), "bugs": NETS[name]["bugs"],
                   "caffe": caffe_info}
            jobfiles[name] = d / "job.json"
            jobfiles[name].write_text(json.dumps(job))
            print(f"converter ports: {name}: Caffe weights {timings[name]['caffe_weights']['wall']:.1f} s", flush=True)

        converter_pool = cf.ThreadPoolExecutor(max_workers=jobs)

        def convert(name: str, port: str) -> float:
            d = scratch / name
            r = tool("convert", os.fspath(d / f"{port}.onnx"), os.fspath(d / port), os.fspath(calibration))
            print(f"converter ports: {name}: onnx2tf {port} {r['seconds']:.1f} s ({r['cpu_seconds']:.1f} s CPU)",
                  flush=True)
            return {"wall": r["seconds"], "cpu": r["cpu_seconds"]}

        def pipeline(name: str) -> None:
            d = scratch / name
            job = os.fspath(jobfiles[name])
            t = timings[name]
            r = tool("caffe2onnx", job, PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION="python")
            t["caffe2onnx"] = {"wall": r["seconds"], "cpu": r["cpu_seconds"]}
            print(f"converter ports: {name}: caffe2onnx {r['seconds']:.1f} s ({r['cpu_seconds']:.1f} s CPU)", flush=True)
            injected = tool("inject", job)
            t["inject"] = {"wall": injected["seconds"], "cpu": injected["cpu_seconds"]}
            ports = ["correct"] + [f"bug_{b['name']}" for b in NETS[name]["bugs"]]
            futures = {p: converter_pool.submit(convert, name, p) for p in ports}
            t["onnx2tf"] = {p: f.result() for p, f in futures.items()}
            t0 = time.perf_counter()
            check = tool("verify", job)
            t["verify"] = {"wall": time.perf_counter() - t0, "cpu": check.pop("cpu_seconds")}
            ok = check["correct"]["max_abs_diff_vs_caffe"]
            scale = check["correct"]["max_abs_caffe"]
            if ok is None or ok > 1e-4 * max(scale, 1.0):
                raise SystemExit(f"{name}: the correct converter port's output differs from Caffe's: {check['correct']}")
            caffe_info = json.loads(jobfiles[name].read_text())["caffe"]
            manifest = {
                "net": name,
                "what": NETS[name]["what"],
                "source_prototxt": os.fspath(source_prototxt(name)),
                "prototxt": "deploy.prototxt",
                "onnx_prototxt": "deploy_nodropout.prototxt",
                "caffemodel": "weights.caffemodel",
                "input": "input.npy",
                "input_shape": NETS[name]["shape"],
                "caffe_output": "caffe_output.npy",
                "caffe_output_blob": caffe_info["output_blob"],
                "correct": {"onnx": "correct.onnx", "savedmodel": "correct", "output_check": check["correct"]},
                "bugs": [
                    {**bug, "onnx": f"bug_{bug['name']}.onnx", "savedmodel": f"bug_{bug['name']}",
                     "edit_applied": injected["edits"][bug["name"]],
                     "output_check": check[f"bug_{bug['name']}"]}
                    for bug in NETS[name]["bugs"]
                ],
                "max_abs_activation": caffe_info["max_abs_activation"],
                "seconds": t,
                "tools": _tool_versions(),
            }
            (d / "manifest.json").write_text(json.dumps(manifest, indent=1))
            jobfiles[name].unlink()
            dest = root / name
            if dest.exists():
                shutil.rmtree(dest)
            d.rename(dest)
            print(f"converter ports: {name}: ready in {dest} (correct port's output vs Caffe's: max |diff| "
                  f"{ok:.2g})", flush=True)

        # every net's pipeline at once; the slots keep `jobs` converter processes running
        with cf.ThreadPoolExecutor(max_workers=len(todo)) as nets_pool:
            for f in [nets_pool.submit(pipeline, n) for n in todo]:
                f.result()
        converter_pool.shutdown()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return timings


def _leaves(t: dict):
    for v in t.values():
        if isinstance(v, dict) and "cpu" in v:
            yield v
        elif isinstance(v, dict):
            yield from _leaves(v)


def _tool_versions() -> dict:
    pins = {}
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            k, v = line.split("==", 1)
            if k.lower() in ("caffe-onnx", "onnx", "onnx2tf", "tensorflow-cpu", "tf-keras", "onnxruntime"):
                pins[k] = v
    return pins


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--converter-python", help="the converter venv's python (scripts/build-converter-venv.sh)")
    ap.add_argument("--nets", default=",".join(NETS), help="comma-separated subset (default: all)")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("LAYERPARITY_CONVERT_JOBS", "2")),
                    help="onnx2tf conversions at once (default 2, LAYERPARITY_CONVERT_JOBS)")
    ap.add_argument("--print-dir", action="store_true", help="print the ports folder and exit")
    args = ap.parse_args(argv)
    if args.print_dir:
        print(ports_dir())
        return 0
    if not args.converter_python:
        ap.error("--converter-python is required")
    names = [n for n in args.nets.split(",") if n]
    unknown = [n for n in names if n not in NETS]
    if unknown:
        ap.error(f"unknown nets {unknown}; known: {list(NETS)}")
    t0 = time.perf_counter()
    timings = build(names, args.converter_python, max(1, args.jobs))
    if timings:
        cpu = sum(v["cpu"] for t in timings.values() for v in _leaves(t))
        print(f"converter ports: built {len(timings)} net(s) in {time.perf_counter() - t0:.0f} s "
              f"({cpu:.0f} s CPU in converter processes) at {ports_dir()}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

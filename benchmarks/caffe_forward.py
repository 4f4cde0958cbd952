"""Caffe plain forward vs capture vs raw pycaffe, as ratios measured in one run.

    .venv/bin/python benchmarks/caffe_forward.py [--reps 15] [--batch 1] [--prototxt PATH]

Three ways to run GoogLeNet (deploy prototxt, filler weights saved to a caffemodel,
CPU), interleaved rep by rep so machine load hits all three alike; medians:

- ``raw``: ``net.forward()`` of an in-process ``caffe.Net`` (this process never
  imports TensorFlow);
- ``forward``: ``CaffeBackend.forward(x, ["prob"])`` through the worker (one
  ``net.forward()`` there, one value back over the pipe);
- ``capture``: draining ``CaffeBackend.iter_capture(x)`` (every layer stepped, every
  probe sent over the pipe).
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))
os.environ.setdefault("GLOG_minloglevel", "2")


def googlenet() -> str:
    found = sorted(glob.glob(os.path.expanduser("~/.cache/layerparity/caffe-*/models/bvlc_googlenet/deploy.prototxt")))
    return found[0] if found else os.path.join(ROOT, "fixtures", "zoo", "googlenet.prototxt")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prototxt", default=None)
    args = ap.parse_args()

    import caffe

    from layerparity.backends.caffe import CaffeBackend

    caffe.set_mode_cpu()
    prototxt = args.prototxt or googlenet()
    tmp = tempfile.mkdtemp(prefix="layerparity-bench-")
    weights = os.path.join(tmp, "weights.caffemodel")
    net = caffe.Net(prototxt, caffe.TEST)
    net.save(weights)
    net = caffe.Net(prototxt, weights, caffe.TEST)
    name = net.inputs[0] if net.inputs else list(net.blobs)[0]
    shape = (args.batch,) + tuple(net.blobs[name].data.shape[1:])
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    net.blobs[name].reshape(*shape)
    net.reshape()
    last = net._layer_names[-1]

    def raw() -> None:
        net.blobs[name].data[...] = x
        net.forward()

    with CaffeBackend(prototxt, weights) as cb:
        def fwd() -> None:
            cb.forward(x, [last])

        def cap() -> None:
            for _ in cb.iter_capture(x):
                pass

        runs = {"raw": raw, "forward": fwd, "capture": cap}
        for f in runs.values():  # warm up (the worker's first forward at a shape is stepped)
            f()
            f()
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(args.reps):
            for k, f in runs.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
        n_probes = sum(1 for _ in cb.iter_capture(x))
    med = {k: statistics.median(v) for k, v in times.items()}
    load = os.getloadavg()[0]
    print(f"{os.path.basename(os.path.dirname(prototxt)) or prototxt}, batch {args.batch}, {n_probes} probes, "
          f"{args.reps} reps interleaved, load {load:.1f}")
    rows = [("raw pycaffe net.forward()", "raw"), (f"CaffeBackend.forward(x, [{last!r}])", "forward"),
            ("CaffeBackend.iter_capture(x)", "capture")]
    for label, k in rows:
        print(f"  {label:<36} {med[k] * 1e3:8.1f} ms   {med[k] / med['raw']:.2f}x raw")


if __name__ == "__main__":
    main()

"""Sweep throughput against plain forward pairs, and the sweep's memory over N inputs, in one run.

    .venv/bin/python benchmarks/sweep.py [--net demo|medium] [--n 400] [--workers 0,1,2]

- **plain pairs**: both models open in this process, one input at a time, Caffe's
  ``Backend.forward`` then TF's, returning only the output blob: what a screened
  input costs at least. Measured as the steady rate over N inputs after a warm-up.
- **sweep**: ``layerparity.sweep`` of a correct port over 2N inputs, outputs first with
  ``sample=1`` (only input 0 compared layer by layer); the steady rate is taken over the
  last three quarters of the inputs (``on_input`` timestamps), so opening the models,
  starting the workers and the first full comparison do not count; the end-to-end rate
  is printed too. The default sample's 7 more full comparisons are a fixed cost, whatever
  N: measured apart (end to end with ``sample=8`` against ``sample=1``). The ratio is sweep steady rate / plain-pair rate,
  the plain pairs measured just before and just after each sweep (the machine is shared).
- **memory**: sweeps over N and 4N inputs given as an iterable (nothing held up front),
  in this process (``workers=0``: the models' own allocations included) and with one
  worker process (this process only reads, dispatches and folds); tracemalloc's peak of
  the Python allocations (NumPy arrays included) of this process.

Nets: ``demo`` is the bundled demo net (32x32, tiny: per-input overhead dominates,
the hardest case for the ratio); ``medium`` a VGG-like stack at 112x112 (a forward of
a few ms). Correct Keras ports of both are written to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "src"))
os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

MEDIUM = """
name: "medium"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 112 dim: 112 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" convolution_param { num_output: 32 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2" convolution_param { num_output: 64 kernel_size: 3 pad: 1 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv3" type: "Convolution" bottom: "pool2" top: "conv3" convolution_param { num_output: 128 kernel_size: 3 pad: 1 } }
layer { name: "relu3" type: "ReLU" bottom: "conv3" top: "conv3" }
layer { name: "pool3" type: "Pooling" bottom: "conv3" top: "pool3" pooling_param { pool: AVE global_pooling: true } }
layer { name: "fc" type: "InnerProduct" bottom: "pool3" top: "fc" inner_product_param { num_output: 100 } }
layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }
"""

_WRITE = r"""
import sys, numpy as np, caffe
proto, out, pfile = sys.argv[1:4]
net = caffe.Net(proto, caffe.TEST)
g = np.random.default_rng(0)
for blobs in net.params.values():
    for b in blobs:
        b.data[...] = g.normal(0, 0.1, b.data.shape)
net.save(out)
np.savez(pfile, **{f"{k}__{i}": b.data for k, v in net.params.items() for i, b in enumerate(v)})
"""


def _medium(d: str) -> tuple[str, str, str, tuple[int, int, int]]:
    proto, weights, pfile = (os.path.join(d, n) for n in ("medium.prototxt", "medium.caffemodel", "p.npz"))
    with open(proto, "w") as f:
        f.write(MEDIUM)
    subprocess.run([sys.executable, "-c", _WRITE, proto, weights, pfile], check=True)
    import keras

    from layerparity.layout import conv_weight_caffe_to_tf

    with np.load(pfile) as z:
        P = {k: z[k] for k in z.files}
    L = keras.layers
    x = inp = keras.Input((112, 112, 3), name="data")
    for i, c in ((1, 32), (2, 64), (3, 128)):
        x = L.Conv2D(c, 3, padding="same", activation="relu", name=f"conv{i}")(x)
        x = L.MaxPooling2D(2, 2, name=f"pool{i}")(x) if i < 3 else L.GlobalAveragePooling2D(name="pool3")(x)
    x = L.Dense(100, name="fc")(x)
    x = L.Softmax(name="prob")(x)
    m = keras.Model(inp, x)
    for i in (1, 2, 3):
        m.get_layer(f"conv{i}").set_weights([conv_weight_caffe_to_tf(P[f"conv{i}__0"]), P[f"conv{i}__1"]])
    m.get_layer("fc").set_weights([P["fc__0"].T, P["fc__1"]])
    path = os.path.join(d, "medium.keras")
    m.save(path)
    return proto, weights, path, (3, 112, 112)


def _demo(d: str) -> tuple[str, str, str, tuple[int, int, int]]:
    from layerparity import demo

    f = demo.files()
    demo.register_keras_objects()
    weights = getattr(demo, "demo_weights", None) or demo._weights
    path = os.path.join(d, "fixed.keras")
    demo.build_keras_port(weights(), buggy=False).save(path)
    return f.prototxt, f.caffemodel, path, (3, 32, 32)


def plain_pairs(proto: str, weights: str, keras_path: str, x: np.ndarray) -> float:
    """Inputs per second of Caffe forward + TF forward, one input at a time, models open."""
    from layerparity import demo
    from layerparity.backends.caffe import CaffeBackend
    from layerparity.backends.tensorflow import load_tf

    demo.register_keras_objects()
    with CaffeBackend(proto, weights) as cb, load_tf(keras_path) as tb:
        for i in range(5):
            cb.forward(x[i:i + 1], ["prob"])
            tb.forward(x[i:i + 1], ["prob"])
        t = time.perf_counter()
        for i in range(len(x)):
            cb.forward(x[i:i + 1], ["prob"])
            tb.forward(x[i:i + 1], ["prob"])
        return len(x) / (time.perf_counter() - t)


def timed_sweep(proto: str, weights: str, keras_path: str, x: np.ndarray, workers: int, sample: int = 1
                ) -> tuple[float, float, object]:
    """(steady inputs/s over the last three quarters of the inputs, end-to-end inputs/s, result).

    ``sample=1``: only input 0 (before the measured part) is compared in full, so the steady
    rate is the outputs-first screen's; the sample's fixed cost is measured apart."""
    import layerparity

    stamps: list[float] = []
    t = time.perf_counter()
    r = layerparity.sweep(proto, keras_path, x, caffe_weights=weights, workers=workers, progress=False,
                          sample=sample, on_input=lambda item: stamps.append(time.perf_counter()))
    dt = time.perf_counter() - t
    assert r, r.summary()
    k1, k2 = len(stamps) // 4, len(stamps) - 1
    return (k2 - k1) / (stamps[k2] - stamps[k1]), len(x) / dt, r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--net", default="demo", choices=["demo", "medium"])
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--reps", type=int, default=3, help="sweeps per worker setting, alternating with plain pairs")
    ap.add_argument("--memory", action="store_true", help="also the in-process memory over N and 4N inputs")
    args = ap.parse_args()
    d = tempfile.mkdtemp(prefix="layerparity-bench-sweep-")
    proto, weights, keras_path, chw = (_demo if args.net == "demo" else _medium)(d)
    n = args.n
    x = np.random.default_rng(1).uniform(-1, 1, size=(2 * n, *chw)).astype(np.float32)
    out: dict = {"net": args.net, "n": n, "cpus": os.cpu_count()}
    plain = plain_pairs(proto, weights, keras_path, x[:n])
    out["plain_pairs_per_s"] = round(plain, 1)
    print(f"plain forward pairs (Backend.forward, Caffe then TF, models open): {plain:.1f} inputs/s", flush=True)
    for w in (int(v) for v in args.workers.split(",")):
        ratios, rows = [], []
        for rep in range(args.reps):  # alternating with plain pairs: the machine's load drifts
            steady, e2e, _ = timed_sweep(proto, weights, keras_path, x, w)
            plain2 = plain_pairs(proto, weights, keras_path, x[:n])
            ref = (plain + plain2) / 2
            ratios.append(steady / ref)
            rows.append({"steady_per_s": round(steady, 1), "end_to_end_per_s": round(e2e, 1),
                         "plain_pairs_per_s": round(ref, 1), "ratio_vs_plain": round(steady / ref, 2)})
            print(f"sweep workers={w} rep {rep + 1}: {len(x)} inputs, steady {steady:.1f} inputs/s (last 3/4 of the "
                  f"inputs) = {steady / ref:.2f}x plain pairs ({ref:.1f}/s around it); end to end {e2e:.1f} inputs/s",
                  flush=True)
            plain = plain2
        # the default sample (8 inputs compared layer by layer): a fixed cost, whatever N
        _, e2e1, _ = timed_sweep(proto, weights, keras_path, x, w, sample=1)
        _, e2e8, _ = timed_sweep(proto, weights, keras_path, x, w, sample=8)
        extra = len(x) / e2e8 - len(x) / e2e1
        out[f"workers={w}_sample_cost_s"] = round(extra, 2)
        print(f"sweep workers={w}: the default sample (7 more inputs compared layer by layer) adds {extra:.2f} s "
              f"({len(x)} inputs: {e2e1:.1f} -> {e2e8:.1f} inputs/s end to end)", flush=True)
        med = sorted(ratios)[len(ratios) // 2]
        out[f"workers={w}"] = {"reps": rows, "median_ratio_vs_plain": round(med, 2)}
        print(f"sweep workers={w}: median {med:.2f}x plain forward pairs over {args.reps} runs", flush=True)
    if args.memory:
        import layerparity

        layerparity.sweep(proto, keras_path, x[:10], caffe_weights=weights, workers=0, progress=False)  # imports
        for w in (0, 1):
            for m in (n, 4 * n):
                xs = (x[i % len(x)][None] for i in range(m))  # an iterable: nothing held up front
                tracemalloc.start()
                r = layerparity.sweep(proto, keras_path, xs, caffe_weights=weights, workers=w, progress=False)
                cur, peak = tracemalloc.get_traced_memory()
                tracemalloc.stop()
                out[f"memory_workers={w}_n={m}"] = {"tracemalloc_peak_mib": round(peak / 2**20, 2), "completed": r.completed}
                print(f"sweep over {m} inputs (an iterable), workers={w}: this process's tracemalloc peak "
                      f"{peak / 2**20:.2f} MiB", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()

"""Where a check's time goes, part by part, in one process (medians of interleaved runs).

    .venv/bin/python benchmarks/parts.py --net googlenet --batch 8 [--reps 5]

Times, with both models open and warm: the plain Caffe forward (pycaffe in this
process) and TF forward (a ``tf.function`` of the Keras port); the Caffe stream
(every blob from the layerparity worker, ``CaffeBackend.capture``); the TF capture
(every layer output, ``KerasBackend.capture``); the comparison of the two captured
traces without and with own-error replay (align, metrics, diagnosis); the three
reports. The parts run one after the other here; in a real check the two captures
overlap (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402
import run as bench  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--net", default="googlenet")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    import caffe  # before TensorFlow (benchmarks/run.py does the same)
    import numpy as np

    from layerparity.compare import compare_traces
    from layerparity.report import format_report, render_html

    plain_run, _ = bench._open_plain(args.net, args.batch)
    cb, tb, cw, tw, _ = bench._open_check(args.net, args.batch)
    x = common.input_array(args.net, args.batch, 1)
    xh = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    caffe.set_mode_cpu()
    p = common.paths(args.net, args.batch)
    cnet = caffe.Net(p["prototxt"], p["weights"], caffe.TEST)
    import tensorflow as tf

    model = common.load_port(args.net)
    fwd = tf.function(lambda t: model(t, training=False))

    def caffe_forward():
        cnet.blobs[cnet.inputs[0]].data[...] = x
        cnet.forward()

    def tf_forward():
        np.asarray(fwd(xh))

    state = {}

    def caffe_stream():
        state["c"] = cb.capture(x)

    def tf_capture():
        state["t"] = tb.capture(x)

    def compare():
        state["r"] = compare_traces(state["c"], state["t"], caffe_weights=cw, tf_weights=tw)

    def compare_replay():
        compare_traces(state["c"], state["t"], replay=tb, caffe_weights=cw, tf_weights=tw)

    def reports():
        format_report(state["r"])
        state["r"].to_json()
        render_html(state["r"])

    parts = {
        "caffe forward": caffe_forward,
        "tf forward": tf_forward,
        "caffe stream (every blob from the worker)": caffe_stream,
        "tf capture (every layer output)": tf_capture,
        "compare, no replay (align, metrics, diagnosis)": compare,
        "compare with own-error replay": compare_replay,
        "reports (text, JSON, HTML)": reports,
    }
    for _ in range(3):  # warm-up: the second capture and replay batch compile their tf.functions
        for f in parts.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in parts}
    for _ in range(args.reps):
        for k, f in parts.items():
            t0 = common.now()
            f()
            times[k].append(common.now() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    plain = med["caffe forward"] + med["tf forward"]
    nbytes = sum(q.value.nbytes for q in state["c"] if q.value is not None)
    print(f"{args.net} batch {args.batch}: Caffe blobs {nbytes / 2**20:.0f} MiB; plain = Caffe + TF forward = {plain:.3f} s")
    for k, v in med.items():
        print(f"  {k:50s} {v:7.3f} s  {v / plain:5.2f}x plain")
    print(json.dumps({"net": args.net, "batch": args.batch, "plain_s": plain, "caffe_bytes": nbytes, "parts_s": med}))
    cb.close()
    tb.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

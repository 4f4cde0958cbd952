"""What a layer-by-layer parity check costs, against just running both nets: ``make bench``.

    .venv/bin/python benchmarks/run.py                 # GoogLeNet + ResNet-50, batch 1 and 8
    .venv/bin/python benchmarks/run.py --nets googlenet --batches 1 --reps 3 --no-sweep
    .venv/bin/python benchmarks/run.py --json bench.json --markdown   # also the docs table

Measured, for each net and batch, in fresh child processes (so nothing is shared
between measurements and Caffe is imported before TensorFlow where both are needed):

time (one child per net/batch; models loaded, one warm-up of each; then ``--reps``
interleaved repetitions in rotating order; medians)
    plain    one pycaffe ``Net.forward`` (in-process) + one TF forward
             (``tf.function`` of the Keras port) of the same input;
    check    the parity check as ``layerparity compare`` runs it per input once
             both models are open (``cli.compare_many``): stream every Caffe blob
             from the Caffe worker and every Keras layer output (the two streams
             drained at the same time), align, convert layouts, compute metrics,
             diagnose, and render the text, JSON and HTML reports; without
             own-error replay;
    replay   the same with own-error replay (each TF layer re-run on the Caffe input);
    in-memory  (diagnostic) the check without replay on two in-memory ``Trace``
             objects (``capture``, one side after the other) instead of the
             streams: no overlap of the two models, nothing spilled.
    The one-off costs (starting the Caffe worker and loading the net, opening the
    TF backend, fetching both models' weights for diagnosis) are reported apart.

peak memory (one fresh child per net/batch/mode, two runs each)
    ``ru_maxrss`` of the child, and of the Caffe worker (its ``VmHWM``, read
    before it exits; also ``RUSAGE_CHILDREN`` once reaped); compared as the sum.

sweep (one child): the check (``--sweep-replay``: with replay) over ``--sweep`` different inputs
(GoogLeNet, batch 1) with both models open once; RSS (this process + the
Caffe worker) after input 8 and after the last one; per-layer error statistics
across inputs (max, mean, p50/p90/p99, the worst input), accumulated streaming
in benchmarks/sweep_stats.py.

Other port forms (benchmarks/forms.py), batch 1, warm, the same plain/check/replay
timing: the Keras GoogLeNet exported as a frozen .pb and a float32 .tflite, and the
caffe2onnx -> onnx2tf SavedModels of ``make converter-ports``. Cold: a fresh process
running ``layerparity compare`` (own error on, JSON and HTML written) against a fresh
process that imports both frameworks, loads both models and runs one forward each.

Physical limit: per port, the metrics pass over every Caffe blob against ``np.copyto``
of the same bytes (both sides), in one process.

Targets (issue 14): check GoogLeNet b1 <= 1.5x, ResNet b1 <= 2x, batch 8 <= 1.5x;
replay <= 2.5x; cold CLI <= 2x the cold plain run; peak memory <= 1.5x plain.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402

TARGET_REPLAY = 2.5
TARGET_MEM = 1.5
TARGET_COLD = 2.0


def target_check(net: str, batch: int) -> float:
    """Issue 14: GoogLeNet b1 <= 1.5x, ResNet-50 b1 <= 2x, batch 8 <= 1.5x."""
    if batch > 1:
        return 1.5
    return 2.0 if net.startswith("resnet") else 1.5
MARK = "BENCH-RESULT "


# ====================================================================================
# children
# ====================================================================================


def _emit(obj: dict) -> None:
    sys.stdout.write(MARK + json.dumps(obj) + "\n")
    sys.stdout.flush()


def _open_plain(net: str, batch: int):
    import caffe

    caffe.set_mode_cpu()
    p = common.paths(net, batch)
    cnet = caffe.Net(p["prototxt"], p["weights"], caffe.TEST)
    in_blob = cnet.inputs[0]
    import tensorflow as tf

    model = common.load_port(net)
    fwd = tf.function(lambda t: model(t, training=False))

    def plain(x_nchw, x_nhwc):
        cnet.blobs[in_blob].data[...] = x_nchw
        cnet.forward()
        out = fwd(x_nhwc)
        _ = [o.numpy() for o in (out if isinstance(out, (list, tuple)) else [out])]

    return plain, model


def _open_check(net: str, batch: int, model=None):
    from layerparity.backends.caffe import CaffeBackend
    from layerparity.backends.tensorflow import load_tf

    p = common.paths(net, batch)
    t0 = common.now()
    cb = CaffeBackend(p["prototxt"], p["weights"])
    t1 = common.now()
    if model is None:
        model = common.load_port(net)
    t2 = common.now()
    tb = load_tf(model)
    t3 = common.now()
    cw = cb.weights()
    tw = tb.weights()
    t4 = common.now()
    opened = {"caffe_open_s": t1 - t0, "keras_load_s": t2 - t1, "tf_open_s": t3 - t2, "weights_s": t4 - t3}
    return cb, tb, cw, tw, opened


class _Stream:
    def __init__(self, it, source):
        self._it, self.source = it, source

    def __iter__(self):
        return iter(self._it)


def _check_once(cb, tb, cw, tw, x, replay: bool, render: bool = True):
    from layerparity.compare import compare_traces
    from layerparity.report import format_report, render_html

    rep = compare_traces(_Stream(cb.iter_capture(x), cb.source), _Stream(tb.iter_capture(x), tb.source),
                         replay=tb if replay else None, caffe_weights=cw, tf_weights=tw)
    if render:
        format_report(rep)
        rep.to_json()
        render_html(rep)
    return rep


def _check_in_memory(cb, tb, cw, tw, x):
    """The same check on two in-memory Traces (``capture``): no spool to a temporary archive."""
    from layerparity.compare import compare_traces
    from layerparity.report import format_report, render_html

    rep = compare_traces(cb.capture(x), tb.capture(x), caffe_weights=cw, tf_weights=tw)
    format_report(rep)
    rep.to_json()
    render_html(rep)
    return rep


def physical_limit(cb, x, reps: int = 3) -> dict:
    """The metrics pass over every Caffe blob of one check against one read of both values.

    ``copy``: ``np.copyto`` of as many bytes as both sides of the check hold (every Caffe
    blob, twice). ``metrics``: ``compute_metrics`` of every blob against a perturbed copy
    (one thread, as one of the check's two metric threads runs), with the numba kernels
    (when installed) and with the NumPy path. Medians of ``reps``.
    """
    import numpy as np

    import layerparity.metrics as M
    from layerparity.result import Tolerance

    vals = [p.value for p in cb.capture(x) if p.value is not None and p.value.size]
    pairs = [(v, (v * np.float32(1.000001)).astype(v.dtype)) for v in vals]
    nbytes = sum(v.nbytes for v in vals)
    src = np.ones(2 * nbytes // 4, np.float32)
    dst = np.empty_like(src)
    tol = Tolerance(1e-4, 3e-5)

    def metrics(numba: bool):
        old = M.USE_NUMBA
        M.USE_NUMBA = numba
        try:
            for r, g in pairs:
                M.compute_metrics(r, g, tol)
        finally:
            M.USE_NUMBA = old

    jobs = {"copy": lambda: np.copyto(dst, src), "metrics": lambda: metrics(True),
            "metrics_numpy": lambda: metrics(False)}
    for f in jobs.values():
        f()
    times = {k: [] for k in jobs}
    for _ in range(reps):
        for k, f in jobs.items():
            t0 = common.now()
            f()
            times[k].append(common.now() - t0)
    out = {k: statistics.median(v) for k, v in times.items()}
    from layerparity._fused import kernels

    out["bytes_per_side"] = nbytes
    out["numba"] = kernels() is not None
    return out


def child_form(args) -> None:
    """Warm timing of one other port form (frozen .pb, .tflite, converter SavedModel), batch 1."""
    import caffe
    import forms
    import numpy as np

    caffe.set_mode_cpu()
    s = forms.spec(args.form, args.net)
    cnet = caffe.Net(s["prototxt"], s["weights"], caffe.TEST)
    x = np.load(s["input"]).astype(np.float32)
    x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    tf_fwd = forms.tf_forward(args.form, s)

    def plain(x, xh):
        cnet.blobs[cnet.inputs[0]].data[...] = x
        cnet.forward()
        tf_fwd(xh)

    from layerparity.backends.caffe import CaffeBackend
    from layerparity.backends.tensorflow import load_tf

    cb = CaffeBackend(s["prototxt"], s["weights"])
    tb = load_tf(s["tf_model"])
    cw, tw = cb.weights(), tb.weights()
    plain(x, x_nhwc)
    rep = _check_once(cb, tb, cw, tw, x, replay=True)
    fd = rep.first_divergence
    verdict = {"passed": bool(rep), "rows": len(rep.rows), "first_divergence": None if fd is None else fd.caffe_layer,
               "own_measured": sum(1 for r in rep.rows if r.own is not None)}
    _check_once(cb, tb, cw, tw, x, replay=False)
    kinds = ["plain", "check", "replay"]
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(args.reps):
        for k in kinds[r % 3:] + kinds[:r % 3]:
            t0 = common.now()
            if k == "plain":
                plain(x, x_nhwc)
            else:
                _check_once(cb, tb, cw, tw, x, replay=(k == "replay"))
            times[k].append(common.now() - t0)
    limit = physical_limit(cb, x)
    cb.close()
    tb.close()
    _emit({"net": args.net, "form": args.form, "batch": 1, "reps": args.reps, "times": times,
           "median": {k: statistics.median(v) for k, v in times.items()}, "verdict": verdict, "limit": limit})


def child_coldplain(args) -> None:
    """A cold plain run: import both frameworks, load both models, one forward each."""
    import caffe
    import forms
    import numpy as np

    caffe.set_mode_cpu()
    s = forms.spec(args.form, args.net)
    cnet = caffe.Net(s["prototxt"], s["weights"], caffe.TEST)
    x = np.load(s["input"]).astype(np.float32)
    cnet.blobs[cnet.inputs[0]].data[...] = x
    cnet.forward()
    forms.tf_forward(args.form, s)(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))
    _emit({"ok": True})


def cold_ratio(form: str, net: str, reps: int) -> dict:
    """Fresh processes: ``layerparity compare`` (own error on) against a cold plain run; medians."""
    import tempfile

    import forms

    s = forms.spec(form, net)
    exe = os.path.join(os.path.dirname(sys.executable), "layerparity")
    env = dict(os.environ, GLOG_minloglevel="2", TF_CPP_MIN_LOG_LEVEL="2")
    out = {"plain": [], "cli": []}
    with tempfile.TemporaryDirectory() as tmp:
        cmds = {
            "plain": [sys.executable, os.path.abspath(__file__), "--child", "coldplain", "--form", form, "--net", net],
            "cli": [exe, "compare", "--caffe-model", s["prototxt"], "--caffe-weights", s["weights"],
                    "--tf-model", s["tf_model"], "--input", s["input"], "--json", os.path.join(tmp, "r.json"),
                    "--html", os.path.join(tmp, "r.html")],
        }
        for r in range(reps):
            for k in (["plain", "cli"] if r % 2 == 0 else ["cli", "plain"]):
                t0 = common.now()
                p = subprocess.run(cmds[k], capture_output=True, text=True, env=env, cwd=common.ROOT, timeout=1800)
                out[k].append(common.now() - t0)
                if p.returncode not in (0, 1):
                    raise RuntimeError(f"cold {k} {form} {net} failed (exit {p.returncode}):\n{p.stderr[-2000:]}")
    return {"form": form, "net": net, "plain_s": statistics.median(out["plain"]), "cli_s": statistics.median(out["cli"]),
            "times": out}


def child_prepare(args) -> None:
    out = {}
    for net in [n for n in args.nets.split(",") if n]:
        out[net] = common.prepare(net, [int(b) for b in args.batches.split(",")])
    if args.forms:
        import forms

        out["exports"] = forms.export_googlenet()
    _emit({"prepared": out})


def child_timing(args) -> None:
    import numpy as np

    net, batch, reps = args.net, args.batch, args.reps
    whatif = bool(args.numpy_blas_threads)
    if whatif and not common.set_numpy_blas_threads(args.numpy_blas_threads):
        raise SystemExit("cannot find NumPy's bundled OpenBLAS to limit its threads")
    plain, model = _open_plain(net, batch)
    cb, tb, cw, tw, opened = _open_check(net, batch, model)
    x = common.input_array(net, batch, 1)
    x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))

    # warm-up (graph tracing, allocator) and the verdict
    plain(x, x_nhwc)
    rep = _check_once(cb, tb, cw, tw, x, replay=True)
    fd = rep.first_divergence
    verdict = {
        "passed": bool(rep),
        "rows": len(rep.rows),
        "first_divergence": None if fd is None else fd.caffe_layer,
        "own_measured": sum(1 for r in rep.rows if r.own is not None),
        "unmapped_caffe": len(rep.unmapped_caffe),
        "unmapped_tf": len(rep.unmapped_tf),
    }
    _check_once(cb, tb, cw, tw, x, replay=False)

    kinds = ["plain", "check", "replay", "inmem"]
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(reps):
        order = kinds[r % len(kinds):] + kinds[:r % len(kinds)]
        for k in order:
            t0 = common.now()
            if k == "plain":
                plain(x, x_nhwc)
            elif k == "inmem":
                _check_in_memory(cb, tb, cw, tw, x)
            else:
                _check_once(cb, tb, cw, tw, x, replay=(k == "replay"))
            times[k].append(common.now() - t0)

    # one-off costs, once each: the check as a single compare_models call vs a cold plain run
    import caffe

    from layerparity.compare import compare_models
    from layerparity.report import format_report, render_html

    p = common.paths(net, batch)
    t0 = common.now()
    cnet = caffe.Net(p["prototxt"], p["weights"], caffe.TEST)
    cnet.blobs[cnet.inputs[0]].data[...] = x
    cnet.forward()
    del cnet
    import tensorflow as tf

    f2 = tf.function(lambda t: model(t, training=False))
    f2(x_nhwc)
    cold_plain = common.now() - t0
    t0 = common.now()
    rep = compare_models(p["prototxt"], model, x, caffe_weights=p["weights"])
    format_report(rep)
    rep.to_json()
    render_html(rep)
    cold_check = common.now() - t0
    limit = physical_limit(cb, x)
    cb.close()
    tb.close()
    _emit({
        "net": net, "batch": batch, "reps": reps, "times": times, "whatif": whatif,
        "median": {k: statistics.median(v) for k, v in times.items()},
        "opened": opened, "cold": {"plain_s": cold_plain, "compare_models_s": cold_check},
        "verdict": verdict, "limit": limit,
    })


def child_mem(args) -> None:
    import resource

    import numpy as np

    net, batch, mode = args.net, args.batch, args.mode
    x = common.input_array(net, batch, 1)
    worker_hwm = 0
    if mode == "plain":
        plain, _ = _open_plain(net, batch)
        x_nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
        for _ in range(2):
            plain(x, x_nhwc)
    else:
        cb, tb, cw, tw, _ = _open_check(net, batch)
        for _ in range(2):
            _check_once(cb, tb, cw, tw, x, replay=(mode == "replay"))
        pid = cb.worker_info().get("pid")
        if pid:
            worker_hwm = common.vm_status(pid)["VmHWM"] / 1024.0
        cb.close()
        tb.close()
    self_mib = common.maxrss_mib(resource.RUSAGE_SELF)
    children_mib = common.maxrss_mib(resource.RUSAGE_CHILDREN)
    worker = max(worker_hwm, children_mib) if mode != "plain" else children_mib
    _emit({"net": net, "batch": batch, "mode": mode, "self_mib": self_mib, "worker_mib": worker,
           "worker_hwm_mib": worker_hwm, "children_maxrss_mib": children_mib, "total_mib": self_mib + worker})


def child_sweep(args) -> None:
    import numpy as np
    from sweep_stats import SweepStats

    net, batch, n = args.net, args.batch, args.inputs
    cb, tb, cw, tw, _ = _open_check(net, batch)
    pid = cb.worker_info().get("pid")
    with open(common.paths(net, batch)["info"]) as f:
        c, h, w = json.load(f)["input_chw"]
    stats = SweepStats()
    rss = {}
    times = []
    for i in range(n):
        x = (np.random.default_rng(1000 + i).standard_normal((batch, c, h, w)) * common.INPUT_SCALE).astype(np.float32)
        t0 = common.now()
        rep = _check_once(cb, tb, cw, tw, x, replay=args.sweep_replay, render=False)
        times.append(common.now() - t0)
        stats.add(rep, label=f"input {i}")
        del rep, x
        k = i + 1
        if k in (1, 8, 16, 32, 48, n):
            rss[k] = {"self_mib": common.vm_status()["VmRSS"] / 1024.0,
                      "worker_mib": common.vm_status(pid)["VmRSS"] / 1024.0 if pid else 0.0}
    cb.close()
    tb.close()
    _emit({"net": net, "batch": batch, "inputs": n, "rss": rss, "median_s": statistics.median(times),
           "replay": bool(args.sweep_replay),
           "stats": stats.summary(), "top": stats.top(8)})


# ====================================================================================
# the driver
# ====================================================================================


def _run_child(argv: list[str], timeout: float) -> dict:
    env = dict(os.environ, GLOG_minloglevel="2", TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    p = subprocess.run([sys.executable, os.path.abspath(__file__), *argv], capture_output=True, text=True,
                       timeout=timeout, env=env, cwd=common.ROOT)
    for line in p.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK):])
    tail = "\n".join((p.stderr or "").strip().splitlines()[-25:])
    raise RuntimeError(f"benchmark child {' '.join(argv)} failed (exit {p.returncode}):\n{tail}")


def _run_script(name: str, argv: list[str], timeout: float = 3600) -> dict:
    """Run benchmarks/NAME, which prints its measurements as JSON on its last line."""
    env = dict(os.environ, GLOG_minloglevel="2", TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    p = subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), name), *argv],
                       capture_output=True, text=True, timeout=timeout, env=env, cwd=common.ROOT)
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines or not lines[-1].startswith("{"):
        tail = "\n".join((p.stdout + p.stderr).strip().splitlines()[-25:])
        raise RuntimeError(f"benchmarks/{name} {' '.join(argv)} failed (exit {p.returncode}):\n{tail}")
    return json.loads(lines[-1])


#: Issue 14's target for the sweep: steady throughput at least this fraction of plain forward pairs.
SWEEP_RATE_TARGET = 0.8


def _fmt_ratio(r: float, target: float | None) -> str:
    if target is None:
        return f"{r:.2f}x"
    return f"{r:.2f}x {'ok' if r <= target else 'MISSED'}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--net", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--inputs", type=int, default=64, help=argparse.SUPPRESS)
    ap.add_argument("--numpy-blas-threads", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--whatif", action="store_true",
                    help="also time each config with NumPy's OpenBLAS limited to 1 thread (the proposed metrics.py fix)")
    ap.add_argument("--nets", default="googlenet,resnet50")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--reps", type=int, default=5, help="interleaved timing repetitions (median reported)")
    ap.add_argument("--sweep", type=int, default=64, help="inputs in the memory/statistics sweep (0: skip)")
    ap.add_argument("--sweep-net", default="googlenet")
    ap.add_argument("--sweep-replay", action="store_true", help="own-error replay in the sweep too (slower)")
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--no-mem", action="store_true", help="skip the peak-memory children")
    ap.add_argument("--form", help=argparse.SUPPRESS)
    ap.add_argument("--forms", default="pb:googlenet,tflite:googlenet,converter:resnet50_quarter,converter:googlenet",
                    help="other port forms, FORM:NET,... (pb, tflite: exports of the Keras GoogLeNet; converter: "
                         "make converter-ports); '' for none")
    ap.add_argument("--cold", default="converter:resnet50_quarter,converter:googlenet",
                    help="cold CLI vs cold plain runs, FORM:NET,... ('' for none)")
    ap.add_argument("--cold-reps", type=int, default=3)
    ap.add_argument("--sweep-rate", type=int, default=200,
                    help="layerparity.sweep's steady throughput against plain forward pairs over 2N inputs of the "
                         "demo port, outputs first (benchmarks/sweep.py; 0: skip)")
    ap.add_argument("--plugin", type=int, default=20,
                    help="a pytest session of N parity.check calls against N single runs "
                         "(benchmarks/plugin_reuse.py; 0: skip)")
    ap.add_argument("--plugin-singles", type=int, default=5,
                    help="single pytest runs actually timed (scaled to --plugin)")
    ap.add_argument("--json", help="write every measurement as JSON here")
    ap.add_argument("--markdown", action="store_true", help="also print the tables as Markdown (docs/benchmarks.md)")
    args = ap.parse_args(argv)

    if args.child:
        {"prepare": child_prepare, "timing": child_timing, "mem": child_mem, "sweep": child_sweep,
         "form": child_form, "coldplain": child_coldplain}[args.child](args)
        return 0

    nets = [n for n in args.nets.split(",") if n]
    batches = [int(b) for b in args.batches.split(",")]
    started = time.time()
    facts = common.machine_facts()
    facts["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"layerparity benchmark  {facts['date']}  {facts.get('cpu', '?')}  {facts['cpus']} CPUs  "
          f"load {facts['loadavg'][0]:.2f}", flush=True)
    print("preparing nets, seeded weights and Keras ports (cached) ...", flush=True)
    _run_child(["--child", "prepare", "--nets", ",".join(sorted(set(nets + ([args.sweep_net] if args.sweep and not args.no_sweep else [])))),
                "--batches", ",".join(str(b) for b in sorted(set(batches + [1]))),
                "--forms", args.forms if any(f.split(":")[0] in ("pb", "tflite") for f in args.forms.split(",") if f) else ""],
               timeout=3600)

    results: dict = {"facts": facts, "timing": [], "mem": [], "sweep": None, "forms": [], "cold": [], "skipped": []}
    import forms as forms_mod

    for item in [f for f in args.forms.split(",") if f]:
        form, net = item.split(":")
        if form == "converter" and forms_mod.converter_manifest(net) is None:
            print(f"skipped {form} {net}: not built (make converter-ports)", flush=True)
            results["skipped"].append(item)
            continue
        print(f"timing {form} {net} batch 1 ({args.reps} interleaved reps) ...", flush=True)
        results["forms"].append(_run_child(["--child", "form", "--form", form, "--net", net, "--reps", str(args.reps)],
                                           timeout=3600))
    for item in [f for f in args.cold.split(",") if f]:
        form, net = item.split(":")
        if form == "converter" and forms_mod.converter_manifest(net) is None:
            print(f"skipped cold {form} {net}: not built (make converter-ports)", flush=True)
            results["skipped"].append("cold " + item)
            continue
        print(f"cold CLI vs cold plain {form} {net} ({args.cold_reps} each) ...", flush=True)
        results["cold"].append(cold_ratio(form, net, args.cold_reps))
    for net in nets:
        for b in batches:
            print(f"timing {net} batch {b} ({args.reps} interleaved reps) ...", flush=True)
            results["timing"].append(_run_child(["--child", "timing", "--net", net, "--batch", str(b),
                                                 "--reps", str(args.reps)], timeout=3600))
            if args.whatif:
                print(f"timing {net} batch {b}, what-if NumPy BLAS 1 thread ...", flush=True)
                results["timing"].append(_run_child(["--child", "timing", "--net", net, "--batch", str(b),
                                                     "--reps", str(args.reps), "--numpy-blas-threads", "1"],
                                                    timeout=3600))
    if not args.no_mem:
        for net in nets:
            for b in batches:
                for mode in ("plain", "check", "replay"):
                    print(f"peak memory {net} batch {b} {mode} ...", flush=True)
                    results["mem"].append(_run_child(["--child", "mem", "--net", net, "--batch", str(b),
                                                      "--mode", mode], timeout=3600))
    if args.sweep and not args.no_sweep:
        print(f"sweep {args.sweep_net} over {args.sweep} inputs ...", flush=True)
        results["sweep"] = _run_child(["--child", "sweep", "--net", args.sweep_net, "--batch", "1",
                                       "--inputs", str(args.sweep)] + (["--sweep-replay"] if args.sweep_replay else []),
                                      timeout=7200)
    if args.sweep_rate:
        print(f"sweep throughput, demo port, {2 * args.sweep_rate} inputs, outputs first ...", flush=True)
        results["sweep_rate"] = _run_script("sweep.py", ["--net", "demo", "--n", str(args.sweep_rate),
                                                         "--workers", "1", "--reps", "1"])
    if args.plugin:
        print(f"pytest session of {args.plugin} checks against single runs ...", flush=True)
        results["plugin"] = _run_script("plugin_reuse.py", ["--checks", str(args.plugin),
                                                            "--singles", str(args.plugin_singles)])
    results["facts"]["loadavg_end"] = os.getloadavg()
    results["wall_s"] = time.time() - started

    tables = render(results)
    print()
    print(tables["text"])
    if args.markdown:
        print()
        print(tables["markdown"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def render(results: dict) -> dict[str, str]:
    mem = {(m["net"], m["batch"], m["mode"]): m for m in results["mem"]}
    head = ["net", "batch", "plain s", "check s", "check/plain", "replay s", "replay/plain", "in-memory check s",
            "peak plain MiB", "peak check MiB", "check/plain", "peak replay MiB", "replay/plain", "parity"]
    rows = []
    for t in results["timing"]:
        net, b = t["net"], t["batch"]
        med = t["median"]
        rc = med["check"] / med["plain"]
        rr = med["replay"] / med["plain"]
        mp, mc, mr = (mem.get((net, b, k)) for k in ("plain", "check", "replay"))
        if t.get("whatif"):
            mp = mc = mr = None
            net = f"{net} (what-if: NumPy BLAS 1 thread)"
        v = t["verdict"]
        parity = "pass" if v["passed"] else f"FAIL at {v['first_divergence']}"
        row = [net, str(b), f"{med['plain']:.3f}", f"{med['check']:.3f}", _fmt_ratio(rc, target_check(t['net'], b)),
               f"{med['replay']:.3f}", _fmt_ratio(rr, TARGET_REPLAY),
               f"{med['inmem']:.3f} ({med['inmem'] / med['plain']:.2f}x)" if "inmem" in med else "-"]
        if mp and mc and mr:
            row += [f"{mp['total_mib']:.0f}",
                    f"{mc['total_mib']:.0f} ({mc['self_mib']:.0f}+{mc['worker_mib']:.0f})",
                    _fmt_ratio(mc["total_mib"] / mp["total_mib"], TARGET_MEM),
                    f"{mr['total_mib']:.0f} ({mr['self_mib']:.0f}+{mr['worker_mib']:.0f})",
                    _fmt_ratio(mr["total_mib"] / mp["total_mib"], TARGET_MEM)]
        else:
            row += ["-"] * 5
        row.append(parity)
        rows.append(row)
    one = ["net", "batch", "Caffe worker start+load s", "TF backend open s", "weights fetch s",
           "cold plain s", "cold compare_models s", "ratio"]
    orows = []
    for t in results["timing"]:
        if t.get("whatif"):
            continue
        o, c = t["opened"], t["cold"]
        orows.append([t["net"], str(t["batch"]), f"{o['caffe_open_s']:.2f}", f"{o['tf_open_s']:.2f}",
                      f"{o['weights_s']:.2f}", f"{c['plain_s']:.2f}", f"{c['compare_models_s']:.2f}",
                      f"{c['compare_models_s'] / c['plain_s']:.2f}x"])

    def text_table(h, rs):
        w = [max(len(h[i]), *(len(r[i]) for r in rs)) for i in range(len(h))] if rs else [len(x) for x in h]
        lines = ["  ".join(h[i].ljust(w[i]) for i in range(len(h)))]
        lines += ["  ".join(r[i].ljust(w[i]) for i in range(len(h))) for r in rs]
        return "\n".join(lines)

    def md_table(h, rs):
        lines = ["| " + " | ".join(h) + " |", "|" + "|".join(" --- " for _ in h) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rs]
        return "\n".join(lines)

    fh = ["form", "net", "plain s", "check s", "check/plain", "replay s", "replay/plain", "own error rows", "parity"]
    frows = []
    for t in results.get("forms", []):
        med, v = t["median"], t["verdict"]
        frows.append([t["form"], t["net"], f"{med['plain']:.3f}", f"{med['check']:.3f}",
                      _fmt_ratio(med["check"] / med["plain"], target_check(t["net"], 1)), f"{med['replay']:.3f}",
                      _fmt_ratio(med["replay"] / med["plain"], TARGET_REPLAY), f"{v['own_measured']}/{v['rows']}",
                      "pass" if v["passed"] else f"FAIL at {v['first_divergence']}"])
    lh = ["port", "batch", "bytes a side MiB", "read both once (copyto) s", "metrics pass s", "x the read",
          "metrics, NumPy path s", "x the read", "metrics/plain"]
    lrows = []
    for t in list(results["timing"]) + list(results.get("forms", [])):
        lim = t.get("limit")
        if not lim or t.get("whatif"):
            continue
        c = lim["copy"]
        lrows.append([f"{t.get('form', 'keras')} {t['net']}", str(t["batch"]), f"{lim['bytes_per_side'] / 2**20:.0f}",
                      f"{c:.4f}", f"{lim['metrics']:.4f}", f"{lim['metrics'] / c:.1f}x",
                      f"{lim['metrics_numpy']:.4f}", f"{lim['metrics_numpy'] / c:.1f}x",
                      f"{lim['metrics'] / t['median']['plain']:.2f}x"])
    ch = ["form", "net", "cold plain s", "cold `layerparity compare` (own error) s", "ratio"]
    crows = [[c["form"], c["net"], f"{c['plain_s']:.2f}", f"{c['cli_s']:.2f}", _fmt_ratio(c["cli_s"] / c["plain_s"], TARGET_COLD)]
             for c in results.get("cold", [])]
    text, md = [], []
    if rows:
        text += [text_table(head, rows), "", "one-off costs (once per run, not per input):", text_table(one, orows)]
        md += [md_table(head, rows), "", md_table(one, orows)]
    if frows:
        text += ["", "other port forms (batch 1, warm):", text_table(fh, frows)]
        md += ["", md_table(fh, frows)]
    if crows:
        text += ["", "cold: fresh processes, medians:", text_table(ch, crows)]
        md += ["", md_table(ch, crows)]
    if lrows:
        text += ["", "physical limit: the metrics pass (one thread) against one read of both sides' values:",
                 text_table(lh, lrows)]
        md += ["", md_table(lh, lrows)]
    if results.get("skipped"):
        text += ["", "skipped (not built): " + ", ".join(results["skipped"])]
        md += ["", "skipped (not built): " + ", ".join(results["skipped"])]
    s = results.get("sweep")
    if s:
        rss = {int(k): v for k, v in s["rss"].items()}
        last = max(rss)
        k8 = 8 if 8 in rss else min(rss)
        a, z = rss[k8], rss[last]
        tot = lambda r: r["self_mib"] + r["worker_mib"]  # noqa: E731
        how = "with" if s.get("replay") else "without"
        line = (f"sweep {s['net']} batch {s['batch']}, {s['inputs']} inputs (check {how} replay, "
                f"median {s['median_s']:.3f} s/input): RSS after input {k8} = {tot(a):.0f} MiB "
                f"({a['self_mib']:.0f}+{a['worker_mib']:.0f}), after input {last} = {tot(z):.0f} MiB "
                f"({z['self_mib']:.0f}+{z['worker_mib']:.0f}); growth {tot(z) - tot(a):+.0f} MiB")
        th = ["caffe layer", "failed inputs", "max abs max", "mean", "p50", "p90", "p99", "worst input"]
        trs = [[r["layer"], str(r["failed"]), f"{r['max']:.3g}", f"{r['mean']:.3g}", f"{r['p50']:.3g}",
                f"{r['p90']:.3g}", f"{r['p99']:.3g}", r["worst"]] for r in s["top"]]
        text += ["", line, "largest per-layer max abs error across inputs:", text_table(th, trs)]
        md += ["", line, "", md_table(th, trs)]
    r = results.get("sweep_rate")
    if r:
        w = r["workers=1"]
        med = w["median_ratio_vs_plain"]
        (rep,) = w["reps"][:1]
        line = (f"sweep throughput, {r['net']} port, {2 * r['n']} inputs, outputs first, 1 worker process: "
                f"steady {rep['steady_per_s']:.1f} inputs/s against {rep['plain_pairs_per_s']:.1f} plain forward "
                f"pairs/s = {med:.2f}x ({'ok' if med >= SWEEP_RATE_TARGET else 'MISSED'}, target >= "
                f"{SWEEP_RATE_TARGET}x); end to end {rep['end_to_end_per_s']:.1f} inputs/s; the default sample of 8 "
                f"full comparisons adds {r['workers=1_sample_cost_s']:.2f} s")
        text += ["", line]
        md += ["", line]
    p = results.get("plugin")
    if p:
        ph = ["run", "wall s", "x the session"]
        prs = [["one pytest session, models reused", f"{p['session_s']:.1f}", "1.00x"],
               ["one session, --parity-no-reuse", f"{p['no_reuse_s']:.1f}", f"{p['no_reuse_s'] / p['session_s']:.2f}x"],
               [f"{p['checks']} single pytest runs (scaled from {p['singles']})", f"{p['singles_total_s']:.1f}",
                f"{p['singles_total_s'] / p['session_s']:.2f}x"]]
        head = f"pytest plugin, demo port, {p['checks']} parity.check calls:"
        text += ["", head, text_table(ph, prs)]
        md += ["", head, "", md_table(ph, prs)]
    return {"text": "\n".join(text), "markdown": "\n".join(md)}


if __name__ == "__main__":
    sys.exit(main())

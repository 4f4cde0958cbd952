"""Bounded fuzzing of layerparity's readers: ``make fuzz`` (or ``.venv/bin/python fuzz/run.py``).

Each target runs in its own process under atheris (coverage-guided libFuzzer) for
``--seconds`` (default 60), starting from valid seed inputs and a structure-aware
mutator (fuzz/mutators.py). Without atheris a seeded random-mutation loop runs
instead (same targets, same mutators, no coverage feedback).

A *crash* is anything but the documented outcome: an exception outside the
``layerparity.errors.InputError`` family, a failed invariant, a process death
(signal), a hang (``--timeout`` seconds on one input) or memory exhaustion
(``--rss-limit-mb``). Deaths and hangs end the fuzzing process; the driver
counts them and restarts the target with the time left. Inputs that crashed are
kept under the work directory (``--workdir``, default
``~/.cache/layerparity/fuzz``), with ``crashes.jsonl`` describing each signature.

Exit status: 0 when no target crashed, 1 otherwise.

    .venv/bin/python fuzz/run.py                       # every target, 60 s each
    .venv/bin/python fuzz/run.py --seconds 10 archive  # one target, 10 s
    .venv/bin/python fuzz/run.py --json out.json       # also write the counts as JSON
    LAYERPARITY_FUZZ_SRC=/tmp/patched/src .venv/bin/python fuzz/run.py   # fuzz another tree
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TARGETS = ["archive", "prototxt", "caffemodel", "diff", "report", "caffe_worker"]
DESCRIPTIONS = {
    "archive": "trace archive reader (Trace.load / ArchiveReader) on mutated archives",
    "prototxt": "Caffe prototxt parse + validation (the Caffe backend's in-process checker)",
    "caffemodel": "caffemodel wire-format scanner (the Caffe backend's in-process checker, before copy_from)",
    "diff": "compare_traces on a mutated archive (archive reader + engine + renderers on hostile traces)",
    "report": "JSON report reader (load_report) and the renderers on what it rebuilds",
    "caffe_worker": "CaffeBackend(prototxt) + one capture through the real worker (slow: a worker per case)",
}


def have_atheris() -> bool:
    try:
        import atheris  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


def _read_status(workdir: str) -> dict:
    try:
        with open(os.path.join(workdir, "status.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def run_target(name: str, seconds: float, workdir: str, engine: str, timeout: float, rss_limit_mb: int,
               max_len: int, verbose: bool) -> dict:
    """Fuzz one target for ``seconds`` of wall time; restart it after each process death."""
    wd = os.path.join(workdir, name)
    os.makedirs(wd, exist_ok=True)
    for f in ("crashes.jsonl", "status.json"):
        try:
            os.remove(os.path.join(wd, f))
        except FileNotFoundError:
            pass
    shutil.rmtree(os.path.join(wd, "crashes"), ignore_errors=True)
    shutil.rmtree(os.path.join(wd, "artifacts"), ignore_errors=True)
    os.makedirs(os.path.join(wd, "artifacts"), exist_ok=True)
    env = dict(os.environ)
    env.setdefault("GLOG_minloglevel", "2")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    src = env.get("LAYERPARITY_FUZZ_SRC") or os.path.join(ROOT, "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in [src, ROOT, env.get("PYTHONPATH", "")] if p)

    totals = {"cases": 0, "accepted": 0, "rejected": 0, "crashes": 0, "signatures": {}, "rejection_kinds": {},
              "rejection_messages": {},
              "deaths": [], "slowest_case_s": 0.0}
    start = time.monotonic()
    runs = 0
    while True:
        left = seconds - (time.monotonic() - start)
        if left < 1 or runs >= 50:
            break
        runs += 1
        cmd = [sys.executable, os.path.join(HERE, "harness.py"), name, "--workdir", wd, "--engine", engine,
               "--seconds", f"{left:.1f}", "--seed", str(runs)]
        if engine == "atheris":
            cmd += ["--", f"-max_total_time={max(1, int(left))}", f"-timeout={int(timeout)}",
                    f"-rss_limit_mb={rss_limit_mb}", f"-max_len={max_len}", "-len_control=0", "-cross_over=0", "-print_final_stats=1",
                    f"-artifact_prefix={os.path.join(wd, 'artifacts')}/", "-close_fd_mask=0"]
        log_path = os.path.join(wd, f"run{runs}.log")
        with open(log_path, "wb") as log:
            try:
                p = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                   timeout=left + timeout + 60)
                rc = p.returncode
            except subprocess.TimeoutExpired:
                rc = "driver-timeout"
        st = _read_status(wd)
        for k in ("cases", "accepted", "rejected", "crashes"):
            totals[k] += int(st.get(k, 0))
        for k in ("signatures", "rejection_kinds", "rejection_messages"):
            for sig, n in st.get(k, {}).items():
                totals[k][sig] = totals[k].get(sig, 0) + n
        totals["slowest_case_s"] = max(totals["slowest_case_s"], float(st.get("slowest_case_s", 0)))
        try:
            os.remove(os.path.join(wd, "status.json"))
        except FileNotFoundError:
            pass
        with open(log_path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
        if rc == 0:
            break
        # the process died: why?
        kind = f"exit {rc}"
        if "Uncaught Python exception" in text:
            kind = "uncaught exception in the harness or mutator (a fuzz/ bug; see the log)"
        elif "libFuzzer: timeout" in text or "ALARM: working on the last Unit" in text:
            kind = f"hang (> {int(timeout)}s on one input)"
        elif "out-of-memory" in text:
            kind = f"out of memory (> {rss_limit_mb} MB)"
        elif "deadly signal" in text:
            kind = "deadly signal"
        elif rc == "driver-timeout":
            kind = "hang (driver timeout)"
        arts = re.findall(r"Test unit written to (\S+)", text)
        totals["deaths"].append({"kind": kind, "returncode": rc, "artifact": arts[-1] if arts else None, "log": log_path,
                                 "tail": text.strip().splitlines()[-3:] if text.strip() else []})
        totals["crashes"] += 1
        if verbose:
            print(f"  {name}: process ended ({kind}); restarting with {seconds - (time.monotonic() - start):.0f}s left",
                  file=sys.stderr)
    totals["seconds"] = round(time.monotonic() - start, 1)
    totals["runs"] = runs
    totals["engine"] = engine
    totals["crash_details"] = []
    cj = os.path.join(wd, "crashes.jsonl")
    if os.path.exists(cj):
        with open(cj) as f:
            totals["crash_details"] = [json.loads(line) for line in f if line.strip()]
    totals["crash_inputs"] = sorted(glob.glob(os.path.join(wd, "crashes", "*.bin")))
    return totals


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="*", default=[], help=f"targets to run (default: all of {', '.join(TARGETS)})")
    ap.add_argument("--seconds", type=float, default=60.0, help="time budget per target (default 60)")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds one input may take before it counts as a hang")
    ap.add_argument("--rss-limit-mb", type=int, default=3072)
    ap.add_argument("--max-len", type=int, default=1 << 17, help="largest input the fuzzer generates (bytes)")
    ap.add_argument("--engine", choices=["auto", "atheris", "random"], default="auto")
    ap.add_argument("--workdir", default=os.path.join(os.path.expanduser("~"), ".cache", "layerparity", "fuzz"))
    ap.add_argument("--json", help="also write the results as JSON to this file")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    targets = args.targets or TARGETS
    for t in targets:
        if t not in TARGETS:
            ap.error(f"unknown target {t!r}; choose from {', '.join(TARGETS)}")
    engine = args.engine
    if engine == "auto":
        engine = "atheris" if have_atheris() else "random"
        if engine == "random" and not args.quiet:
            print("atheris is not installed (pip install atheris): using the random-mutation engine", file=sys.stderr)
    results = {}
    for t in targets:
        if not args.quiet:
            print(f"fuzzing {t}: {DESCRIPTIONS[t]} ({engine}, {args.seconds:.0f}s)", file=sys.stderr, flush=True)
        results[t] = run_target(t, args.seconds, args.workdir, engine, args.timeout, args.rss_limit_mb, args.max_len,
                                not args.quiet)
    print(f"{'target':<11} {'engine':<8} {'cases':>9} {'accepted':>9} {'rejected':>9} {'crashes':>8} {'time s':>7}")
    for t, r in results.items():
        print(f"{t:<11} {r['engine']:<8} {r['cases']:>9} {r['accepted']:>9} {r['rejected']:>9} {r['crashes']:>8} "
              f"{r['seconds']:>7.1f}")
    any_crash = False
    for t, r in results.items():
        for sig, n in sorted(r["signatures"].items(), key=lambda kv: -kv[1]):
            any_crash = True
            detail = next((d for d in r["crash_details"] if d["signature"] == sig), None)
            msg = detail["message"].splitlines()[0][:160] if detail and detail["message"] else ""
            print(f"  CRASH {t}: {sig} x{n}: {msg}")
        for d in r["deaths"]:
            any_crash = True
            print(f"  CRASH {t}: {d['kind']}; input: {d['artifact']}; log: {d['log']}")
    if any_crash:
        print(f"crashing inputs are under {args.workdir}/<target>/crashes and /artifacts")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, default=str)
    return 1 if any_crash else 0


if __name__ == "__main__":
    sys.exit(main())

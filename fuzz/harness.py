"""Run one fuzz target under atheris (coverage-guided libFuzzer) or, without atheris,
under a seeded random mutation loop. Started by fuzz/run.py, one process per target:

    python fuzz/harness.py TARGET --workdir DIR [--engine atheris|random] -- [libFuzzer flags]

Outcome of each case:

- the target returns: *accepted* (the input was read without complaint, and the
  target's invariants held);
- it raises an ``InputError`` (the documented family): *rejected* (correct);
- anything else (another exception, ``SystemExit``, an invariant failing): a *crash*.
  It is recorded (type, message, raising frame) in DIR/crashes.jsonl and the input
  saved as DIR/crashes/<signature>-<sha1>.bin; fuzzing continues.

Process death (a signal in native code), a hang (libFuzzer ``-timeout``) or memory
exhaustion (``-rss_limit_mb``) end this process; libFuzzer saves the input as an
artifact and fuzz/run.py counts it and restarts the target with the time left.

Counters are written to DIR/status.json at least once a second and at exit.
"""

from __future__ import annotations

import atexit
import hashlib
import importlib
import json
import os
import random
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# LAYERPARITY_FUZZ_SRC=/path/to/src fuzzes another tree (e.g. one with a proposed patch)
SRC = os.environ.get("LAYERPARITY_FUZZ_SRC") or os.path.join(ROOT, "src")
for p in (ROOT, SRC):
    if p in sys.path:
        sys.path.remove(p)
sys.path[:0] = [SRC, ROOT]

os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


class Stats:
    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        os.makedirs(os.path.join(workdir, "crashes"), exist_ok=True)
        self.path = os.path.join(workdir, "status.json")
        self.cases = 0
        self.accepted = 0
        self.rejected = 0
        self.crashes = 0
        self.signatures: dict[str, int] = {}
        self.rejection_kinds: dict[str, int] = {}
        self.rejection_messages: dict[str, int] = {}  # normalized message -> count (top few kept)
        self.slowest = 0.0
        self.started = time.time()
        self._last_flush = 0.0
        atexit.register(self.flush)

    def flush(self) -> None:
        data = {
            "pid": os.getpid(),
            "cases": self.cases,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "crashes": self.crashes,
            "signatures": self.signatures,
            "rejection_kinds": self.rejection_kinds,
            "rejection_messages": dict(sorted(self.rejection_messages.items(), key=lambda kv: -kv[1])[:25]),
            "slowest_case_s": round(self.slowest, 3),
            "elapsed_s": round(time.time() - self.started, 2),
        }
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, self.path)

    def maybe_flush(self) -> None:
        now = time.monotonic()
        if now - self._last_flush > 1.0:
            self._last_flush = now
            self.flush()


def _normalize(msg: str) -> str:
    """A rejection message without its variable parts (paths, quoted names, numbers)."""
    import re

    msg = re.sub(r"(/[^\s:'\"]+)+", "<path>", msg)
    msg = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", msg)
    msg = re.sub(r"\d+", "N", msg)
    return msg[:110]


def signature(e: BaseException) -> str:
    """Where the exception was raised (innermost frame in our code if any) and its type."""
    tb = traceback.extract_tb(e.__traceback__)
    frame = None
    for fr in reversed(tb):
        if "layerparity" in fr.filename or "/fuzz/" in fr.filename:
            frame = fr
            break
    if frame is None and tb:
        frame = tb[-1]
    where = f"{os.path.basename(frame.filename)}:{frame.lineno}:{frame.name}" if frame else "?"
    return f"{type(e).__name__}@{where}"


def make_test_one_input(target, stats: Stats):
    from layerparity.errors import InputError

    def test_one_input(data: bytes) -> None:
        stats.cases += 1
        t0 = time.monotonic()
        try:
            target.one_input(data)
            stats.accepted += 1
        except InputError as e:
            stats.rejected += 1
            k = type(e).__name__
            stats.rejection_kinds[k] = stats.rejection_kinds.get(k, 0) + 1
            msg = _normalize(str(e))
            if msg in stats.rejection_messages or len(stats.rejection_messages) < 500:
                stats.rejection_messages[msg] = stats.rejection_messages.get(msg, 0) + 1
        except (Exception, SystemExit) as e:  # noqa: BLE001 - that is the point
            stats.crashes += 1
            sig = signature(e)
            first = sig not in stats.signatures
            stats.signatures[sig] = stats.signatures.get(sig, 0) + 1
            sha = hashlib.sha1(data).hexdigest()[:12]
            if first:
                safe = "".join(c if c.isalnum() or c in "@._-" else "_" for c in sig)[:120]
                with open(os.path.join(stats.workdir, "crashes", f"{safe}-{sha}.bin"), "wb") as f:
                    f.write(data)
                with open(os.path.join(stats.workdir, "crashes.jsonl"), "a") as f:
                    f.write(
                        json.dumps(
                            {
                                "signature": sig,
                                "type": type(e).__name__,
                                "message": str(e)[:500],
                                "input_sha1": sha,
                                "traceback": traceback.format_exception(e)[-6:],
                            }
                        )
                        + "\n"
                    )
                stats.flush()
        finally:
            stats.slowest = max(stats.slowest, time.monotonic() - t0)
            stats.maybe_flush()

    return test_one_input


def main() -> None:
    argv = sys.argv[1:]
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("target")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--engine", choices=["atheris", "random"], default="atheris")
    ap.add_argument("--seconds", type=float, default=60.0, help="random engine only (atheris: -max_total_time)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    stats = Stats(args.workdir)

    if args.engine == "atheris":
        import atheris

        with atheris.instrument_imports(include=["layerparity", "fuzz"]):
            target = importlib.import_module(f"fuzz.targets.{args.target}")
            target.setup(args.workdir)
        corpus = os.path.join(args.workdir, "corpus")
        os.makedirs(corpus, exist_ok=True)
        if not os.listdir(corpus):
            for i, s in enumerate(target.seeds()):
                with open(os.path.join(corpus, f"seed{i:03d}"), "wb") as f:
                    f.write(s)
        mutator = getattr(target, "custom_mutator", None)
        test = make_test_one_input(target, stats)
        flags = [sys.argv[0], *extra, corpus]
        if mutator is not None:
            atheris.Setup(flags, test, custom_mutator=mutator)
        else:
            atheris.Setup(flags, test)
        atheris.Fuzz()
    else:
        target = importlib.import_module(f"fuzz.targets.{args.target}")
        target.setup(args.workdir)
        rng = random.Random(args.seed)
        corpus = list(target.seeds())
        test = make_test_one_input(target, stats)
        deadline = time.monotonic() + args.seconds
        for s in corpus:
            test(s)
        while time.monotonic() < deadline:
            data = rng.choice(corpus)
            for _ in range(rng.randint(1, 3)):
                data = target.mutate(data, rng)
            test(data)
        stats.flush()


if __name__ == "__main__":
    main()

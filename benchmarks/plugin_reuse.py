"""A 20-check pytest session against 20 single runs: what reusing open models saves.

    .venv/bin/python benchmarks/plugin_reuse.py [--checks 20] [--singles 20]

Writes a test module with ``--checks`` parametrized ``parity.check`` calls of one
port (the bundled demo's Caffe net, its corrected Keras port saved as a ``.keras``
file, one input), then times, in one run:

- ``session``: one ``pytest`` session running all checks (each model opened once);
- ``no reuse``: the same session with ``--parity-no-reuse`` (each check opens both models);
- ``singles``: ``--singles`` separate ``pytest`` runs of one check each (scaled to
  ``--checks`` when fewer are run).

Wall times include starting Python and importing TensorFlow, as a user sees them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable

TESTS = """
import numpy as np
import pytest
from layerparity import demo

F = demo.files()
X = np.load(F.input)
PORT = {port!r}


@pytest.mark.parametrize("i", range({checks}))
def test_check(parity, i):
    parity.check(F.prototxt, PORT, X, caffe_weights=F.caffemodel)
"""


def pytest_run(d: str, *args: str) -> float:
    env = dict(os.environ, GLOG_minloglevel="2", TF_CPP_MIN_LOG_LEVEL="2")
    t0 = time.perf_counter()
    r = subprocess.run([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "-n", "0",
                        "--rootdir", d, *args], cwd=d, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"pytest failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checks", type=int, default=20)
    ap.add_argument("--singles", type=int, default=20, help="single runs actually timed (scaled to --checks)")
    args = ap.parse_args()

    d = tempfile.mkdtemp(prefix="layerparity-plugin-bench-")
    port = os.path.join(d, "port.keras")
    subprocess.run([PY, "-c", textwrap.dedent(f"""
        from layerparity import demo
        demo.build_keras_port(demo.demo_weights(), buggy=False).save({port!r})
    """)], check=True, capture_output=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    with open(os.path.join(d, "test_reuse.py"), "w") as f:
        f.write(TESTS.format(port=port, checks=args.checks))

    pytest_run(d, "test_reuse.py::test_check[0]")  # warm the file cache and the bytecode
    session = pytest_run(d, "test_reuse.py")
    no_reuse = pytest_run(d, "test_reuse.py", "--parity-no-reuse")
    singles = [pytest_run(d, f"test_reuse.py::test_check[{i % args.checks}]") for i in range(args.singles)]
    single_total = sum(singles) / len(singles) * args.checks

    print(f"demo port (Caffe worker + .keras file), {args.checks} checks, load {os.getloadavg()[0]:.1f}")
    print(f"  one session, models reused     {session:7.1f} s   1.00x")
    print(f"  one session, --parity-no-reuse {no_reuse:7.1f} s   {no_reuse / session:.2f}x")
    print(f"  {args.checks} single runs{' (scaled from ' + str(args.singles) + ')' if args.singles != args.checks else ''}"
          f"{'':<11} {single_total:7.1f} s   {single_total / session:.2f}x   (one: {min(singles):.1f} s)")
    print(f"  per extra check in the session: {(session - min(singles)) / max(args.checks - 1, 1):.2f} s "
          f"reused, {(no_reuse - min(singles)) / max(args.checks - 1, 1):.2f} s without reuse")
    print(json.dumps({"checks": args.checks, "singles": args.singles, "session_s": round(session, 2),
                      "no_reuse_s": round(no_reuse, 2), "singles_total_s": round(single_total, 2),
                      "single_min_s": round(min(singles), 2)}))


if __name__ == "__main__":
    main()

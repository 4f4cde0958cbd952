"""Profile one warm parity check (cProfile) to find where its time goes.

    .venv/bin/python benchmarks/profile_check.py --net googlenet --batch 1 [--replay] [--top 40]

Opens both models as benchmarks/run.py does, warms up once, then profiles
``--runs`` checks and prints the top functions by cumulative and by own time.
The Caffe worker is another process: its time shows up here as waiting in
``_caffe_protocol.Channel.recv`` (``select``/``readv``); the split between
"waiting for Caffe" and "our own Python" is printed at the end.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import common  # noqa: E402
import run as bench  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--net", default="googlenet")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--replay", action="store_true")
    ap.add_argument("--no-render", action="store_true")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--top", type=int, default=35)
    ap.add_argument("--out", help="also dump the raw profile here (for snakeviz etc.)")
    args = ap.parse_args()
    import caffe  # noqa: F401  - the order benchmarks/run.py uses

    cb, tb, cw, tw, _ = bench._open_check(args.net, args.batch)
    x = common.input_array(args.net, args.batch, 1)
    for _ in range(2):  # the second capture traces the TF probe model (keras.CAPTURE_COMPILE_AT)
        bench._check_once(cb, tb, cw, tw, x, replay=args.replay, render=not args.no_render)
    prof = cProfile.Profile()
    t0 = common.now()
    prof.enable()
    for _ in range(args.runs):
        bench._check_once(cb, tb, cw, tw, x, replay=args.replay, render=not args.no_render)
    prof.disable()
    wall = (common.now() - t0) / args.runs
    cb.close()
    tb.close()
    if args.out:
        prof.dump_stats(args.out)
    for key in ("cumulative", "tottime"):
        s = io.StringIO()
        pstats.Stats(prof, stream=s).strip_dirs().sort_stats(key).print_stats(args.top)
        print(f"==== by {key} ====")
        print(s.getvalue())
    st = pstats.Stats(prof)
    wait = sum(v[3] for k, v in st.stats.items() if k[2] in ("select", "readv", "<built-in method posix.readv>",
                                                               "<built-in method select.select>"))
    print(f"per check: {wall:.3f} s wall; waiting on the Caffe worker pipe ~{wait / args.runs:.3f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

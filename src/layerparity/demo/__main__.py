"""``python -m layerparity.demo [--regenerate] [DIR]``: (re)build the demo files.

Without ``--regenerate`` it only prints where the files are (building them into
the cache if they are missing). ``--regenerate`` rewrites them in DIR (default:
the packaged folder); the result is deterministic (seeded).
"""

from __future__ import annotations

import argparse

from . import HERE, build, files


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m layerparity.demo", description=__doc__.splitlines()[0])
    ap.add_argument("--regenerate", action="store_true", help="rebuild the demo files (needs Caffe and TensorFlow)")
    ap.add_argument("directory", nargs="?", default=str(HERE), help="where to write them (default: the package folder)")
    a = ap.parse_args(argv)
    f = build(a.directory) if a.regenerate else files(a.directory)
    print(f.directory)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

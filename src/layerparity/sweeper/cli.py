"""``layerparity sweep``: the command line of :func:`layerparity.sweep` (registered by cli.py).

Exit status: 0 every input passed; 1 an input failed or could not be checked;
2 bad usage or input; 3 a layerparity bug; 130 interrupted (Ctrl-C), after the
partial reports were written.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["add_parser", "cmd_sweep"]


def add_parser(sub: Any, add_tolerance: Callable[[Any], None], add_preprocess: Callable[[Any], None]
               ) -> argparse.ArgumentParser:
    """Add the ``sweep`` subcommand to ``layerparity``'s subparsers, with the command's
    tolerance and image-preprocessing options (``add_tolerance``/``add_preprocess`` of cli.py)."""
    s = sub.add_parser("sweep", help="many inputs through both models: outputs first, one verdict grouped by first divergent layer")
    s.add_argument("--caffe-model", required=True, metavar="PROTOTXT", help="the Caffe net definition (deploy prototxt)")
    s.add_argument("--caffe-weights", metavar="CAFFEMODEL", help="its trained weights (.caffemodel)")
    s.add_argument("--tf-model", required=True, metavar="PATH", help=".keras/.h5 file, SavedModel dir, frozen .pb or .tflite")
    s.add_argument("--inputs", required=True, metavar="PATH",
                   help="a folder of images, an .npy/.npz stack (N, C, H, W) in NCHW, or one image")
    s.add_argument("--mapping", metavar="FILE", help="YAML/JSON {caffe_layer: tf_layer} for layers names don't pair")
    g = s.add_argument_group("sweep")
    g.add_argument("--every-layer", action="store_true", help="compare every layer of every input (default: outputs first)")
    g.add_argument("--sample", type=int, default=8, metavar="N",
                   help="inputs compared layer by layer even when their outputs pass (default 8, seeded)")
    g.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    g.add_argument("--batch", type=int, metavar="N", help="inputs per plain forward (default: the models' batch)")
    g.add_argument("--workers", type=int, metavar="N",
                   help="local worker processes, each holding both models (default: one per two cores; 0: in this process)")
    g.add_argument("--dask-scheduler", metavar="ADDRESS", help="run on a dask.distributed cluster (tcp://host:8786)")
    g.add_argument("--no-own-error", action="store_true", help="skip own error in the full comparisons (faster)")
    g.add_argument("--partial", nargs="?", const=True, default=False, metavar="LAYER[,LAYER]",
                   help="a deliberate partial check, as in `compare --partial`: pass even if Caffe layers are "
                        "left out (alone), or stop at these Caffe layers")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    add_tolerance(s)
    r = s.add_argument_group("reports")
    r.add_argument("--json", metavar="OUT", help="write the sweep JSON here (docs/report-format.md#sweep)")
    r.add_argument("--html", metavar="OUT", help="write a self-contained HTML report here")
    add_preprocess(s)
    return s


def cmd_sweep(args: argparse.Namespace, preprocess: Any = None) -> int:
    """Run ``layerparity sweep`` (cli.py checked the tolerance and built ``preprocess``)."""
    from ..errors import UsageError
    from .runner import sweep

    if args.mapping:
        from ..alignment import load_mapping

        load_mapping(args.mapping)  # fail fast, before any model runs
    if args.workers is not None and args.workers < 0:
        raise UsageError("--workers must be >= 0")
    if args.dask_scheduler and args.workers is not None:
        raise UsageError("--workers and --dask-scheduler exclude each other (the cluster has its workers)")
    for flag, v in (("--sample", args.sample), ("--batch", args.batch)):
        if v is not None and v < (1 if flag == "--batch" else 0):
            raise UsageError(f"{flag} must be {'>= 1' if flag == '--batch' else '>= 0'}")
    executor, client = None, None
    if args.dask_scheduler:
        try:
            from distributed import Client
        except ImportError:
            raise UsageError("--dask-scheduler needs dask.distributed: pip install 'layerparity[dask]'") from None
        try:
            client = Client(args.dask_scheduler, timeout=30)
        except OSError as e:
            raise UsageError(f"--dask-scheduler {args.dask_scheduler}: cannot connect ({e})") from None
        executor = client.get_executor(pure=False)
    interrupted = False
    try:
        result = sweep(
            args.caffe_model, args.tf_model, args.inputs, caffe_weights=args.caffe_weights, mapping=args.mapping,
            rtol=args.rtol, atol=args.atol, own_error=not args.no_own_error, every_layer=args.every_layer,
            sample=args.sample, seed=args.seed, batch=args.batch, preprocess=preprocess,
            executor=executor, workers=args.workers, progress=not args.quiet and _tty(),
            partial=[n.strip() for n in args.partial.split(",") if n.strip()]
            if isinstance(args.partial, str) else args.partial,
            keras_modules=getattr(args, "keras_module", None) or (),
            caffe_pythonpath=getattr(args, "caffe_pythonpath", None) or None,
        )
    except KeyboardInterrupt as stop:
        result = getattr(stop, "sweep_result", None)
        if result is None:
            raise
        interrupted = True
    finally:
        if client is not None:
            client.close()
    print(result.summary())
    if args.json:
        result.write_json(args.json)
        print(f"JSON report: {args.json}")
    if args.html:
        result.write_html(args.html)
        print(f"HTML report: {args.html}")
    if interrupted:
        print(f"layerparity sweep: interrupted; the reports hold the {result.completed} inputs checked", file=sys.stderr)
        return 130
    return 0 if result else 1


def _tty() -> bool:
    try:
        return os.isatty(sys.stderr.fileno())
    except (AttributeError, ValueError, OSError):
        return False

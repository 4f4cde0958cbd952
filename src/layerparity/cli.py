"""The ``layerparity`` command: compare, capture, diff, weights, demo.

Exit status (every subcommand):

====  ==========================================================================
0     every mapped layer within tolerance (``weights``: every weight equal;
      ``capture``: archive written; ``demo``: it ran and found the planted bug)
1     a divergence was found
2     bad usage, or an input that cannot be used (one line on stderr, no traceback)
3     a bug in layerparity ("layerparity bug: ..." on stderr)
====  ==========================================================================

Frameworks are imported only when a subcommand needs them, so ``layerparity
--help`` and ``layerparity diff`` never import Caffe or TensorFlow. Run it as
``layerparity ...`` or ``python -m layerparity.cli ...``. See docs/cli.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from .errors import FrameworkMissingError, InputDataError, InputError, InternalError, UsageError

__all__ = ["main", "build_parser", "EXIT_OK", "EXIT_DIVERGED", "EXIT_USAGE", "EXIT_BUG"]

EXIT_OK, EXIT_DIVERGED, EXIT_USAGE, EXIT_BUG = 0, 1, 2, 3
PROG = "layerparity"


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is ONE line on stderr (exit 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _one_line(msg: str, limit: int = 2000) -> str:
    s = " | ".join(part.strip() for part in str(msg).splitlines() if part.strip())
    return s if len(s) <= limit else s[: limit - 3] + "..."


# -- parser ------------------------------------------------------------------------------


def _add_tolerance(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tolerance (given together or not at all; default per dtype)")
    g.add_argument("--rtol", type=float, metavar="R", help="relative tolerance, e.g. 1e-4")
    g.add_argument("--atol", type=float, metavar="A", help="absolute tolerance, times max|caffe| of each layer, e.g. 1e-5")


def _add_outputs(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("reports")
    g.add_argument("--json", metavar="OUT", help="write the JSON report here (docs/report-format.md)")
    g.add_argument("--html", metavar="OUT", help="write a self-contained HTML report here")
    g.add_argument("--max-rows", type=int, default=40, metavar="N", help="rows of the terminal table (default 40; 0: all)")


def _add_preprocess(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("image inputs (Caffe Transformer order: resize, CHW, swap, raw scale, mean, input scale)")
    g.add_argument("--resize", nargs=2, type=int, metavar=("H", "W"), help="resize the image to H x W")
    g.add_argument("--mean", nargs="+", type=float, metavar="V", help="per-channel mean to subtract, after the swap: B G R")
    g.add_argument("--raw-scale", type=float, metavar="S", help="multiply the [0, 1] image by S (e.g. 255) before the mean")
    g.add_argument("--input-scale", type=float, metavar="S", help="multiply by S after the mean")
    g.add_argument("--swap-channels", type=_swap, metavar="2,1,0", help="channel order after loading RGB (2,1,0: to BGR)")


def _swap(s: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in s.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated channel indices like 2,1,0, got {s!r}") from None


def _add_keras_module(p: argparse.ArgumentParser) -> None:
    p.add_argument("--keras-module", action="append", default=[], metavar="FILE.py",
                   help="a Python file (or module name) defining the custom Keras layers a .keras/.h5 port "
                        "uses; it is imported first (it registers them with "
                        "keras.saving.register_keras_serializable, or offers a dict custom_objects); repeatable")


def _add_caffe_pythonpath(p: argparse.ArgumentParser) -> None:
    p.add_argument("--caffe-pythonpath", action="append", default=[], metavar="DIR",
                   help="a folder holding the modules of the Caffe net's Python layers (type: \"Python\"); "
                        "put on the Caffe worker's path; repeatable")


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(
        prog=PROG,
        description="Layer-by-layer parity between a Caffe net and its TensorFlow port.",
        epilog="exit status: 0 within tolerance, 1 divergence found, 2 bad usage or input, 3 layerparity bug",
    )
    from . import __version__

    ap.add_argument("--version", action="version", version=f"layerparity {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    c = sub.add_parser("compare", help="run both models on the same input(s) and compare every layer")
    c.add_argument("--caffe-model", required=True, metavar="PROTOTXT", help="the Caffe net definition (deploy prototxt)")
    c.add_argument("--caffe-weights", metavar="CAFFEMODEL", help="its trained weights (.caffemodel)")
    c.add_argument("--tf-model", required=True, metavar="PATH", help=".keras/.h5 file, SavedModel dir, frozen .pb or .tflite")
    c.add_argument("--input", required=True, action="append", metavar="FILE",
                   help=".npy/.npz in NCHW, or an image; repeat for several inputs (each batch item is one input)")
    c.add_argument("--mapping", metavar="FILE", help="YAML/JSON {caffe_layer: tf_layer} for layers names don't pair")
    c.add_argument("--no-own-error", action="store_true", help="skip re-running each TF layer on the Caffe input")
    c.add_argument("--partial", nargs="?", const=True, default=False, metavar="LAYER[,LAYER]",
                   help="a deliberate partial check: pass even if Caffe layers are left out (alone), or "
                        "stop at these Caffe layers (everything they depend on must match)")
    c.add_argument("--tf-layout", metavar="LAYOUT",
                   help="the TF model's 4-D layout relative to Caffe's NCHW, e.g. NWHC for a port that takes "
                        "spatially transposed input (default NHWC, or NCHW for channels_first models)")
    c.add_argument("--tf-input", action="append", metavar="FILE",
                   help="feed the TF model this input instead (one per --input, NCHW .npy/.npz or an image "
                        "loaded without the preprocessing options): for ports that preprocess inside the model")
    _add_keras_module(c)
    _add_caffe_pythonpath(c)
    _add_tolerance(c)
    _add_outputs(c)
    _add_preprocess(c)

    k = sub.add_parser("capture", help="run ONE side on an input and write its trace archive (.npz)")
    side = k.add_mutually_exclusive_group(required=True)
    side.add_argument("--caffe-model", metavar="PROTOTXT")
    side.add_argument("--tf-model", metavar="PATH")
    k.add_argument("--caffe-weights", metavar="CAFFEMODEL")
    k.add_argument("--input", required=True, metavar="FILE", help=".npy/.npz in NCHW, or an image")
    k.add_argument("-o", "--output", required=True, metavar="OUT.npz", help="the trace archive to write")
    _add_keras_module(k)
    _add_caffe_pythonpath(k)
    _add_preprocess(k)

    d = sub.add_parser("diff", help="compare two trace archives (one Caffe, one TF) written by capture")
    d.add_argument("archives", nargs=2, metavar="ARCHIVE.npz")
    d.add_argument("--mapping", metavar="FILE")
    d.add_argument("--caffe-weights", metavar="CAFFEMODEL",
                   help="the Caffe weights, for the diagnosis to confirm what it finds (default: the caffemodel "
                        "the Caffe capture recorded, when it is still there unchanged)")
    _add_tolerance(d)
    _add_outputs(d)

    w = sub.add_parser("weights", help="weight parity only: is every Caffe blob in the TF model, in the right layout?")
    w.add_argument("--caffe-model", required=True, metavar="PROTOTXT")
    w.add_argument("--caffe-weights", required=True, metavar="CAFFEMODEL")
    w.add_argument("--tf-model", required=True, metavar="PATH")
    w.add_argument("--mapping", metavar="FILE")
    w.add_argument("--json", metavar="OUT", help="write the weight report as JSON")
    w.add_argument("--by-value", metavar="INPUT",
                   help="run both nets once on this input (.npy/.npz NCHW or image) to pair layers by value "
                        "where the graph's structure alone cannot tell them apart")

    m = sub.add_parser("demo", help="run the bundled example (a port with one classic bug) and print the table")
    m.add_argument("--fixed", action="store_true", help="compare against the corrected port instead (passes)")
    m.add_argument("--write", metavar="DIR",
                   help="write the demo's files into DIR under the README's names (deploy.prototxt, "
                        "weights.caffemodel, model.keras (and port.keras), input.npy, inputs.npy) instead "
                        "of running it")
    _add_outputs(m)

    from .sweeper.cli import (
        add_parser as add_sweep_parser,  # `layerparity sweep` lives in sweeper/cli.py
    )

    sw = add_sweep_parser(sub, _add_tolerance, _add_preprocess)
    _add_keras_module(sw)  # as on compare: custom Keras layers, Caffe Python layers
    _add_caffe_pythonpath(sw)
    return ap


# -- helpers ---------------------------------------------------------------------------


class _PlainConsole:
    """What the CLI prints through when Rich is not installed."""

    def __init__(self, stream: Any) -> None:
        self.file = stream

    def print(self, *objects: Any, **_: Any) -> None:
        print(*objects, file=self.file)


def _console(stderr: bool = False) -> Any:
    stream = sys.stderr if stderr else sys.stdout
    try:
        from rich.console import Console
    except ImportError:
        return _PlainConsole(stream)
    term = stream.isatty()
    try:
        width = None if term else int(os.environ.get("COLUMNS", "160"))
    except ValueError:
        width = 160
    return Console(file=stream, highlight=False, width=width)


@contextlib.contextmanager
def _quiet_fd2() -> Iterator[None]:
    """Hide what native code writes to fd 2 while a framework is imported; show it if the import fails."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        ok = False
        try:
            yield
            ok = True
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if not ok:
                tmp.seek(0)
                sys.stderr.write(tmp.read().decode("utf-8", "replace")[-4000:])


def _import_tf() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules:
        return
    with _quiet_fd2():
        try:
            import tensorflow  # noqa: F401
        except Exception as e:  # noqa: BLE001
            raise FrameworkMissingError(f"TensorFlow is needed and is not importable ({type(e).__name__}: {e}); "
                                        "install it with: pip install 'layerparity[tf]'") from None


def _prepare_tf_model(path: str, keras_modules: Sequence[str] = ()) -> dict[str, Any] | None:
    """Import TF quietly, then each ``--keras-module``; the custom objects they offer
    (``None`` when no module is given). layerparity's own layers (LRN) are always known."""
    _import_tf()
    if not keras_modules:
        return None
    from .backends.keras import import_keras_module

    objects: dict[str, Any] = {}
    for spec in keras_modules:
        if spec.endswith(".py") and not os.path.isfile(spec):
            raise UsageError(f"--keras-module {spec}: no such file")
        objects.update(import_keras_module(spec))
    return objects


def _tolerance(args: argparse.Namespace) -> None:
    from .metrics import check_tolerance_pair

    check_tolerance_pair(args.rtol, args.atol, names=("--rtol", "--atol"))


def _preprocess(args: argparse.Namespace) -> Any:
    from .inputs import Preprocess

    return Preprocess(
        resize=tuple(args.resize) if args.resize else None,
        mean=tuple(args.mean) if args.mean else None,
        raw_scale=args.raw_scale,
        input_scale=args.input_scale,
        channel_swap=args.swap_channels,
    )


def _preprocess_resize_only(args: argparse.Namespace) -> Any:
    from .inputs import Preprocess

    return Preprocess(resize=tuple(args.resize) if args.resize else None)


def _load_inputs(paths: Sequence[str], pre: Any) -> list[tuple[Any, str]]:
    """Each file's input (a whole batch) with its path."""
    from .inputs import load_input

    return [(load_input(p, pre), p) for p in paths]


def _batches(files: list[tuple[Any, str]], batch: int | None) -> tuple[list[Any], list[str]]:
    """The inputs to compare on, with labels: one per batch item when the model's batch is
    free; batches of exactly ``batch`` items when the model fixes it (never split)."""
    from .inputs import batch_size, concat_batches, split_batch

    items, labels = [], []
    for x, p in files:
        n = batch_size(x)
        if batch is not None:
            items.append(x)
            labels.append(p)
        elif n == 1:
            items.append(x)
            labels.append(p)
        else:
            items += split_batch(x)
            labels += [f"{p}[{i}]" for i in range(n)]
    if batch is None:
        return items, labels
    total = sum(batch_size(x) for x in items)
    if total % batch:
        raise UsageError(f"the TF model fixes its batch at {batch}; the --input files hold {total} item(s) "
                         f"in all, which is not a multiple of {batch}")
    merged = concat_batches(items)
    groups = split_batch(merged, batch)
    if len(groups) == len(items):
        return items, labels
    return groups, [f"items {i * batch}-{i * batch + batch - 1}" for i in range(len(groups))]


def _check_path(path: str | None, what: str, flag: str) -> None:
    if path is not None and not os.path.exists(path):
        raise UsageError(f"{flag} {path}: no such {what}")


def _emit(report: Any, args: argparse.Namespace, title: str | None = None) -> None:
    from .report import print_report, write_html, write_json

    if not report.rows:
        raise UsageError(
            "no Caffe layer could be paired with a TF layer (names and structure differ); pass --mapping FILE"
        )
    max_rows = None if args.max_rows == 0 else args.max_rows
    console = _console()
    if isinstance(console, _PlainConsole):
        print_report(report, max_rows=max_rows, file=sys.stdout)
    else:
        print_report(report, max_rows=max_rows, console=console, title=title)
    if getattr(args, "json", None):
        write_json(report, args.json)
        print(f"JSON report: {args.json}")
    if getattr(args, "html", None):
        write_html(report, args.html)
        print(f"HTML report: {args.html}")


def compare_many(
    caffe_model: str,
    caffe_weights: str | None,
    tf_model: Any,
    files: Sequence[tuple[Any, str]],
    *,
    tf_files: Sequence[tuple[Any, str]] | None = None,
    progress: bool = True,
    **options: Any,
) -> Any:
    """Open both models once and run :func:`~layerparity.compare.compare_models` on every
    input (a Rich progress bar when more than one); one report over all of them
    (:func:`~layerparity.report.aggregate_reports`). ``files``: (input, label) per file;
    batches are split into single items unless the TF model fixes its batch size, and
    then kept together. ``options`` go to ``compare_models``, but ``caffe_pythonpath``
    (folders of the Python layers' modules) to the Caffe backend opened here."""
    from .compare import compare_models, open_caffe_model, open_tf_model
    from .report import aggregate_reports

    pythonpath = options.pop("caffe_pythonpath", None)
    tf_opts = {"tf_layout": options.pop("tf_layout")} if options.get("tf_layout") else {}
    options.pop("tf_layout", None)
    if options.get("custom_objects") is not None:
        tf_opts["custom_objects"] = options["custom_objects"]
    options.pop("custom_objects", None)
    reports = []
    opened: list[Any] = []  # opened as compare_models opens them (a swap is refused there), closed here
    try:
        cb = open_caffe_model(caffe_model, caffe_weights, {"pythonpath": pythonpath} if pythonpath else {}, opened)
        tb = open_tf_model(tf_model, tf_opts, opened)
        specs = tb.input_specs()
        fixed = specs[0].shape[0] if specs and specs[0].shape else None
        items, labels = _batches(list(files), fixed)
        tf_items: list[Any] = [None] * len(items)
        if tf_files is not None:
            tf_items, tf_labels = _batches(list(tf_files), fixed)
            if len(tf_items) != len(items):
                raise UsageError(f"--tf-input gives {len(tf_items)} input(s) where --input gives {len(items)}; "
                                 "give one --tf-input per --input, with the same batch sizes")
        bar = _progress(len(items), enabled=progress)
        with bar as (advance, note):
            for x, tx, label in zip(items, tf_items, labels, strict=True):
                short = os.path.basename(label)
                note(f"comparing on {short}")

                def on_row(row: Any, short: str = short) -> None:
                    note(f"{short}: {row.caffe_layer}")

                try:
                    reports.append(compare_models(cb, tb, x, tf_inputs=tx, on_row=on_row, **options))
                except InputDataError as e:
                    raise _image_size_hint(e, label, x, cb) from None
                advance()
    finally:
        for b in reversed(opened):
            b.close()
    return aggregate_reports(reports, labels)


_ARRAY_SUFFIXES = (".npy", ".npz")


def _image_size_hint(e: Exception, label: str, x: Any, cb: Any) -> Exception:
    """An input-shape error for an input loaded from an image: name the image, not the
    prototxt, and say which ``--resize H W`` makes it fit. Any other error is returned as is."""
    from .errors import InputDataError

    path = label.rsplit("[", 1)[0] if label.endswith("]") else label
    if not os.path.isfile(path) or path.lower().endswith(_ARRAY_SUFFIXES) or "has shape" not in str(e):
        return e
    got = tuple(int(d) for d in getattr(x, "shape", ()))
    try:
        shapes = list(cb.input_shapes().values())
    except Exception:  # noqa: BLE001 - the hint is optional
        shapes = []
    want = shapes[0] if len(shapes) == 1 and len(shapes[0]) == 4 else None
    if len(got) != 4 or want is None or got[2:] == want[2:]:
        return e
    return InputDataError(
        f"{path}: this image is {got[2]} x {got[3]} (H x W) after loading, but the net is built for "
        f"{want[2]} x {want[3]}: pass --resize {want[2]} {want[3]} to resize it as Caffe's Transformer would "
        f"(the models said: {_one_line(str(e), 600)})"
    )


@contextlib.contextmanager
def _progress(total: int, enabled: bool = True) -> Iterator[tuple[Any, Any]]:
    """A Rich progress bar on stderr over ``total`` inputs (a spinner for one input)."""
    if not enabled:
        yield (lambda: None), (lambda s: None)
        return
    try:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )
    except ImportError:
        yield (lambda: None), (lambda s: None)
        return
    cols = [SpinnerColumn(), TextColumn("{task.description}")]
    if total > 1:
        cols += [BarColumn(), MofNCompleteColumn()]
    cols.append(TimeElapsedColumn())
    with Progress(*cols, console=_console(stderr=True), transient=True) as prog:
        task = prog.add_task("starting", total=total)
        yield (lambda: prog.advance(task)), (lambda s: prog.update(task, description=s))


# -- subcommands ----------------------------------------------------------------------


def cmd_compare(args: argparse.Namespace) -> int:
    _tolerance(args)
    _check_path(args.caffe_model, "prototxt file", "--caffe-model")
    _check_path(args.caffe_weights, "caffemodel file", "--caffe-weights")
    _check_path(args.tf_model, "TF model", "--tf-model")
    _check_path(args.mapping, "mapping file", "--mapping")
    if args.mapping:
        from .alignment import load_mapping

        load_mapping(args.mapping)  # fail fast, before any model runs
    files = _load_inputs(args.input, _preprocess(args))
    tf_files = None
    if args.tf_input:
        if len(args.tf_input) != len(args.input):
            raise UsageError(f"--tf-input is given {len(args.tf_input)} time(s) and --input {len(args.input)}; "
                             "give one --tf-input per --input")
        for p in args.tf_input:
            _check_path(p, "input file", "--tf-input")
        tf_files = _load_inputs(args.tf_input, _preprocess_resize_only(args))
    partial: Any = args.partial
    if isinstance(partial, str):
        partial = [n.strip() for n in partial.split(",") if n.strip()]
    objects = _prepare_tf_model(args.tf_model, args.keras_module)
    report = compare_many(
        args.caffe_model, args.caffe_weights, args.tf_model, files, tf_files=tf_files,
        mapping=args.mapping, rtol=args.rtol, atol=args.atol, own_error=not args.no_own_error,
        partial=partial, tf_layout=args.tf_layout, custom_objects=objects,
        caffe_pythonpath=_caffe_pythonpath(args),
    )
    _emit(report, args)
    return EXIT_OK if report else EXIT_DIVERGED


def _caffe_pythonpath(args: argparse.Namespace) -> list[str] | None:
    """``--caffe-pythonpath`` folders, each checked to exist (a usage error otherwise)."""
    dirs = list(getattr(args, "caffe_pythonpath", None) or [])
    for d in dirs:
        if not os.path.isdir(d):
            raise UsageError(f"--caffe-pythonpath {d}: no such folder")
    return dirs or None


def cmd_capture(args: argparse.Namespace) -> int:
    from .inputs import load_input
    from .trace import save_archive

    if args.caffe_weights and not args.caffe_model:
        raise UsageError("--caffe-weights goes with --caffe-model")
    model = args.caffe_model or args.tf_model
    flag = "--caffe-model" if args.caffe_model else "--tf-model"
    _check_path(model, "model", flag)
    _check_path(args.caffe_weights, "caffemodel file", "--caffe-weights")
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
        raise UsageError(f"-o {args.output}: folder {out_dir} does not exist")
    x = load_input(args.input, _preprocess(args))
    if args.caffe_model:
        from .backends.caffe import CaffeBackend

        backend: Any = CaffeBackend(args.caffe_model, args.caffe_weights, pythonpath=_caffe_pythonpath(args))
    else:
        from .backends.tensorflow import load_tf

        objects = _prepare_tf_model(args.tf_model, args.keras_module)
        backend = load_tf(args.tf_model, custom_objects=objects)
    count = [0]
    with backend, _progress(1) as (advance, note):
        feed = backend.normalize_inputs(x)

        def tick(p: Any) -> None:
            count[0] += 1
            note(f"captured {count[0]} probes ({p.name})")

        def probes() -> Iterator[Any]:
            for p in backend.iter_capture(feed):
                tick(p)
                yield p

        meta = backend.meta()
        if args.caffe_weights:  # diff reads these weights (without Caffe) to confirm a diagnosis
            meta = {**meta, "weights": os.path.abspath(args.caffe_weights),
                    "weights_sha256": _sha256(args.caffe_weights)}
        save_archive(args.output, backend.framework, backend.source, meta, feed, probes())
        advance()
    print(f"wrote {args.output}: {count[0]} {backend.framework} probes")
    return EXIT_OK


def cmd_diff(args: argparse.Namespace) -> int:
    from .compare import compare_traces
    from .trace import ArchiveReader

    _tolerance(args)
    _check_path(args.mapping, "mapping file", "--mapping")
    sides: dict[str, str] = {}
    for path in args.archives:
        with ArchiveReader(path) as r:
            fw = r.framework
        if fw not in ("caffe", "tensorflow"):
            raise UsageError(f"{path}: a trace of framework {fw!r}; diff needs one Caffe and one TensorFlow archive")
        if fw in sides:
            raise UsageError(f"{path} and {sides[fw]} are both {fw} traces; diff needs one Caffe and one TensorFlow archive")
        sides[fw] = path
    weights = _recorded_caffemodel(sides["caffe"], getattr(args, "caffe_weights", None))
    with _progress(1) as (advance, note):
        report = compare_traces(
            sides["caffe"], sides["tensorflow"], mapping=args.mapping, rtol=args.rtol, atol=args.atol,
            on_row=lambda row: note(f"compared {row.caffe_layer}"), caffe_weights=weights,
        )
        advance()
    _emit(report, args)
    return EXIT_OK if report else EXIT_DIVERGED


def _sha256(path: str) -> str:
    from .model_cache import content_digest  # the one file digest (memoised by size and mtime)

    return content_digest(path)


def _recorded_caffemodel(archive: str, given: str | None) -> Any:
    """The Caffe weights a ``diff`` diagnosis confirms with (read without Caffe): the
    ``--caffe-weights`` given, else the caffemodel ``capture`` recorded, if it is still
    there unchanged (same SHA-256). ``None`` when there is none."""
    from .caffemodel import CaffemodelWeights
    from .compare import LazyWeights
    from .trace import ArchiveReader

    if given is not None:
        _check_path(given, "caffemodel file", "--caffe-weights")
        return LazyWeights(CaffemodelWeights(given))
    with ArchiveReader(archive) as r:
        meta = r.meta
    path, digest = meta.get("weights"), meta.get("weights_sha256")
    if not isinstance(path, str) or not os.path.isfile(path):
        return None
    if isinstance(digest, str) and _sha256(path) != digest:
        return None  # rewritten since the capture: its weights are not the recorded run's
    return LazyWeights(CaffemodelWeights(path))


def cmd_weights(args: argparse.Namespace) -> int:
    import json

    from .weights import weight_parity

    _check_path(args.caffe_model, "prototxt file", "--caffe-model")
    _check_path(args.caffe_weights, "caffemodel file", "--caffe-weights")
    _check_path(args.tf_model, "TF model", "--tf-model")
    mapping = None
    if args.mapping:
        _check_path(args.mapping, "mapping file", "--mapping")
        from .alignment import load_mapping

        mapping = load_mapping(args.mapping)
    _prepare_tf_model(args.tf_model)
    by_value = None
    if getattr(args, "by_value", None):
        _check_path(args.by_value, "input file", "--by-value")
        from .inputs import load_input

        by_value = load_input(args.by_value)
    rep = weight_parity(args.caffe_model, args.caffe_weights, args.tf_model, mapping, by_value=by_value)
    print(rep.to_text())
    if args.json:
        from .atomic_write import write_text

        write_text(args.json, json.dumps(rep.to_dict(), indent=2, ensure_ascii=False) + "\n")
        print(f"JSON report: {args.json}")
    return EXIT_OK if rep else EXIT_DIVERGED


def cmd_demo(args: argparse.Namespace) -> int:
    import numpy as np

    from . import demo

    if args.write:
        written = demo.write_files(args.write)
        for path in written.values():
            print(f"wrote {path}")
        print(f"\nThe README's examples run as written in {args.write}, e.g.\n  cd {args.write} && "
              "layerparity compare --caffe-model deploy.prototxt --caffe-weights weights.caffemodel "
              "--tf-model model.keras --input input.npy")
        return EXIT_OK
    files = demo.files()
    _prepare_tf_model(files.keras)
    if args.fixed:
        tf_model: Any = demo.build_keras_port(demo.demo_weights(), buggy=False)
        what = "the corrected port (built in memory)"
    else:
        tf_model = files.keras
        what = files.keras
    console = _console()
    console.print(f"Caffe:      {files.prototxt}\n            {files.caffemodel}\nTensorFlow: {what}\nInput:      {files.input}\n")
    x = np.load(files.input)
    report = compare_many(files.prototxt, files.caffemodel, tf_model, [(x, files.input)])
    _emit(report, args, title="layerparity demo: Caffe vs its TensorFlow port")
    fd = report.first_divergence
    if args.fixed:
        console.print("\nThe corrected port matches Caffe layer by layer." if report else "\nUnexpected: the corrected port diverges.")
        return EXIT_OK if report else EXIT_DIVERGED
    if fd is not None and fd.divergent_layer == demo.BUG_LAYER:
        console.print(
            f"\nThe demo port has one deliberate bug, in {demo.BUG_LAYER}: Conv2D(strides=2, padding='same') "
            "pads bottom/right only, Caffe pads 1 on every side.\nlayerparity found it. "
            "`layerparity demo --fixed` runs the corrected port (ZeroPadding2D(1) + padding='valid')."
        )
        return EXIT_OK
    console.print(f"\nUnexpected: the planted bug is in {demo.BUG_LAYER}, but the first divergence is "
                  f"{fd.caffe_layer if fd else 'nowhere'}.")
    return EXIT_DIVERGED


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweeper.cli import cmd_sweep as run

    _tolerance(args)
    _caffe_pythonpath(args)  # a usage error before anything runs
    for spec in args.keras_module:
        if spec.endswith(".py") and not os.path.isfile(spec):
            raise UsageError(f"--keras-module {spec}: no such file")
    return run(args, _preprocess(args))


_COMMANDS = {"compare": cmd_compare, "capture": cmd_capture, "diff": cmd_diff, "weights": cmd_weights, "demo": cmd_demo,
             "sweep": cmd_sweep}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0, 1, 2 or 3)."""
    os.environ.setdefault("GLOG_minloglevel", "2")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors exit 2 here, one line
    try:
        return _COMMANDS[args.command](args)
    except (InputError, FrameworkMissingError) as e:
        print(f"{PROG} {args.command}: error: {_one_line(str(e))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return EXIT_OK
    except InternalError as e:
        _bug(args.command, e)
        return EXIT_BUG
    except Exception as e:  # noqa: BLE001 - anything else is our bug, said briefly
        _bug(args.command, e)
        return EXIT_BUG


def _bug(command: str, e: BaseException) -> None:
    print(
        f"{PROG} {command}: layerparity bug: {type(e).__name__}: {_one_line(str(e), 500)} "
        "(please report it; set LAYERPARITY_DEBUG=1 for the traceback)",
        file=sys.stderr,
    )
    if os.environ.get("LAYERPARITY_DEBUG"):
        import traceback

        traceback.print_exception(type(e), e, e.__traceback__, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())

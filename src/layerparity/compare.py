"""The comparison engine: align two traces, stream their values, one row per aligned pair.

>>> import numpy as np
>>> from layerparity.trace import Probe, Trace
>>> x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
>>> c = Trace("caffe", probes=[Probe("conv1", "Convolution", layout="NCHW", value=x)])
>>> t = Trace("tensorflow", probes=[Probe("conv1", "Conv2D", layout="NHWC", value=x.transpose(0, 2, 3, 1))])
>>> r = compare_traces(c, t)
>>> bool(r), r.rows[0].max_abs_error
(True, 0.0)

Layouts are declared by the probes, never guessed: the TF value is transposed
into the Caffe probe's layout (``NHWC -> NCHW``; ``flat:NHWC -> flat:NCHW``
through ``flat_shape``; size-1 axes that only one side has, such as Caffe's
``(N, C, 1, 1)`` against Keras' ``(N, C)``, are dropped or added). A pair whose
shapes cannot be reconciled is a failing row with a note. A pair that would
agree under some other permutation still fails: finding that permutation is the
diagnosis' job, not a way to pass.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .alignment import Alignment, Pair, align
from .backends.base import Backend, Replayer, as_replayer
from .errors import InputError
from .metrics import ToleranceTable, compute_metrics, default_tolerance
from .own_error import OwnRequest, own_request, replay_all, to_caffe_layout
from .result import LayerResult, Report
from .sources import Side, Stream, drain_both
from .trace import Probe, Trace, is_archive
from .verdict import chain_head, contaminate, coverage, diverges, first_divergence
from .window import ValueWindow

__all__ = ["compare_traces", "compare_models", "LazyWeights"]

#: Rows in flight without replay, at most this many or this many Caffe bytes (their
#: metrics run in two threads while the next are read; 8 rows measured 2-15% faster
#: than 3, and 15% faster than no threads at GoogLeNet batch 8).
_WINDOW = 8
_WINDOW_BYTES = 8 << 20
#: Threads computing metrics.
_THREADS = 2
#: With own-error replay, rows are replayed in batches of at most this many rows or Caffe
#: bytes: one backend call per batch, memory bounded by the batch.
_REPLAY_ROWS = 64
_REPLAY_BYTES = 16 << 20


_POOL: tuple[int, ThreadPoolExecutor] | None = None
_POOL_LOCK = threading.Lock()


def _metrics_pool() -> ThreadPoolExecutor:
    """One pool for every comparison in the process: the same threads (and their metric
    buffers and malloc arenas) are reused, so a sweep over many inputs stays flat."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None or _POOL[0] != _THREADS:
            if _POOL is not None:
                _POOL[1].shutdown(wait=False)
            _POOL = (_THREADS, ThreadPoolExecutor(max_workers=_THREADS, thread_name_prefix="layerparity-metrics"))
        return _POOL[1]


class _Inline:
    """An executor that runs each job at once, in the caller's thread."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        f: Future = Future()
        try:
            f.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - delivered by result(), like a pool's
            f.set_exception(e)
        return f


@dataclass(eq=False)
class _Pending:
    """One row between reading its values and deciding it."""

    k: int
    pair: Pair
    cp: Probe | None
    tp: Probe | None
    cin: list[np.ndarray] | None
    cm: Probe
    tm: Probe | None
    row: LayerResult
    notes: list[str] = field(default_factory=list)
    metrics: Any = None  # the Future of its total error
    own_out: Any = None  # the replayed output, or the InputError that stopped it


def compare_traces(
    caffe: Trace | str | os.PathLike[str] | Iterable[Probe],
    tf: Trace | str | os.PathLike[str] | Iterable[Probe],
    *,
    mapping: Mapping[str, str] | str | os.PathLike[str] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    tolerances: Mapping[str, Any] | None = None,
    replay: Any = None,
    diagnose: bool = True,
    caffe_weights: Mapping[str, list[np.ndarray]] | None = None,
    tf_weights: Mapping[str, list[np.ndarray]] | None = None,
    on_row: Callable[[LayerResult], None] | None = None,
    partial: bool | Sequence[str] = False,
    separate_inputs: bool = False,
) -> Report:
    """Compare a Caffe trace with a TF trace layer by layer.

    ``caffe``/``tf``: :class:`Trace` objects, trace archive paths (streamed with
    :class:`ArchiveReader`) or iterables of probes (live streams). ``mapping``:
    explicit ``{caffe_layer: tf_name}`` or a YAML/JSON file (see
    :func:`layerparity.alignment.load_mapping`). ``rtol``/``atol``: together or not at
    all; default per dtype (:data:`layerparity.metrics.DEFAULT_TOLERANCES`); ``atol``
    is relative to the layer's magnitude (``atol * max|caffe|`` is allowed).
    ``tolerances``: per-layer overrides ``{"conv5*": (rtol, atol)}``.
    ``replay``: a :class:`~layerparity.backends.base.Replayer` (a TF backend) able to
    run one TF layer on the Caffe input (own error).
    ``on_row`` is called with each row as soon as it is computed.
    ``partial``: False (default: the report passes only if every Caffe output blob is
    compared and every computing Caffe layer is compared or absorbed), True (a
    deliberate partial check), or the Caffe layers to stop at.
    ``separate_inputs``: the TF side was fed its own inputs (``tf_inputs=`` of
    :func:`compare_models`): each Caffe input is compared after the TF layers that
    preprocess it, or not at all.

    Rows come in Caffe graph order. ``Report.first_divergence`` is the first row
    whose own error (where measured, else total error) breaks tolerance; failing
    rows downstream of it in the Caffe graph get ``contaminated_by``.
    """
    table = ToleranceTable(rtol, atol, tolerances)
    if isinstance(replay, Backend) and replay.framework != "tensorflow":
        raise InputError(f"replay: got a {replay.framework or type(replay).__name__} backend ({replay.source!r}); "
                         "own error re-runs the TF layers: pass the TF backend")
    replayer = as_replayer(replay) if replay is not None else None
    tmp: list[str] = []

    def tmpdir() -> str:
        if not tmp:
            tmp.append(tempfile.mkdtemp(prefix="layerparity-"))
        return tmp[0]

    sides: list[Side] = []
    try:
        cs = Side(caffe, "caffe", tmpdir)
        sides.append(cs)
        ts = Side(tf, "tensorflow", tmpdir)
        sides.append(ts)
        _check_sides(cs, ts)
        drain_both(cs, ts)
        alignment = align(cs.metas, ts.metas, mapping, caffe_value=cs.value, tf_value=ts.value,
                          separate_inputs=separate_inputs)
        engine = _Engine(cs, ts, alignment, table, replayer, diagnose, caffe_weights, tf_weights, on_row)
        report = engine.run()
        compared = {n for r in report.rows for n in r.caffe_chain}
        report.coverage = coverage(cs.metas, compared, partial)
        if diagnose:
            report.conventions = _conventions_hook()(report.rows)
        return report
    finally:
        for s in sides:
            s.close()
        if tmp:
            shutil.rmtree(tmp[0], ignore_errors=True)


def _check_sides(cs: Side, ts: Side) -> None:
    """A recorded trace given on the wrong side is a caller mistake, not an alignment to attempt."""
    for side, want in ((cs, "caffe"), (ts, "tensorflow")):
        got = side.recorded_framework()
        if got and got != want:
            raise InputError(f"{want} side: {side.source!r} is a {got} trace; did you swap the caffe and tf arguments?")


class _Engine:
    """The row loop: rows decided in Caffe order, computed a few at a time."""

    def __init__(self, cs: Side, ts: Side, alignment: Alignment, table: ToleranceTable, replay: Replayer | None,
                 diagnose: bool, caffe_weights: Any, tf_weights: Any, on_row: Any) -> None:
        self.cs, self.ts, self.al, self.table = cs, ts, alignment, table
        self.replay = replay
        self.diag_fn = _diagnose_hook() if diagnose else None
        self.cw = caffe_weights if caffe_weights is not None else {}
        self.tw = tf_weights if tf_weights is not None else {}
        self.weight_sides = caffe_weights is not None and tf_weights is not None
        self.on_row = on_row
        self.pairs = alignment.pairs
        self.window = ValueWindow(cs, ts, self.pairs, keep_inputs=replay is not None or self.diag_fn is not None)
        self.pair_of_c = {n: p for p in self.pairs for n in p.caffe_chain}
        self.tf_compared = set(self.window.tf_need)

    def run(self) -> Report:
        self.rows: list[LayerResult] = []
        self.first: LayerResult | None = None
        self.fallback: tuple[LayerResult, Pair, Probe, Probe | None, list[np.ndarray] | None] | None = None
        rows_per_batch, bytes_per_batch = (
            (_REPLAY_ROWS, _REPLAY_BYTES) if self.replay is not None else (_WINDOW, _WINDOW_BYTES)
        )
        batch: list[_Pending] = []
        held = 0
        pool = _metrics_pool() if _THREADS else _Inline()
        for k, pair in enumerate(self.pairs):
            cp = self.window.caffe(pair.caffe, k)
            tp = self.window.tf(pair.tf, k)
            item = self._start_row(k, pair, cp, tp, pool)
            batch.append(item)
            held += cp.value.nbytes if cp is not None and cp.value is not None else 0
            if len(batch) >= rows_per_batch or (bytes_per_batch and held >= bytes_per_batch):
                self._finish_batch(batch, pool)
                batch, held = [], 0
        if batch:
            self._finish_batch(batch, pool)
        rows = self.rows
        first, first_by = first_divergence(rows)  # the verdict's choice, from the finished rows
        if first is not None and self.fallback is not None and first is self.fallback[0]:
            # every failing row passed its own error: the divergence comes from something
            # the alignment could not see (an unmapped TF-only layer). Its values were held.
            _, pair, cp, tp, cin = self.fallback
            self._diagnose(first, pair, cp, tp, cin)
        if first is not None:
            contaminate(rows, first, self.cs.metas)
        tol = self.table.global_tol or default_tolerance(np.float32)
        meta = {
            "alignment": self.al.counts(),
            "absorbed": dict(self.al.absorbed),
            **({"not_compared": dict(self.al.skipped)} if self.al.skipped else {}),
            "mapping": self.al.mapping_source,
            "streaming": self.window.stats(),
        }
        if first is not None:
            meta["first_divergence_by"] = first_by
        unused = self.table.unused_patterns([n for p in self.pairs for n in [*p.caffe_chain, p.tf]])
        if unused:
            meta["unused_tolerance_patterns"] = unused
        return Report(
            rows=rows,
            unmapped_caffe=list(self.al.unmapped_caffe),
            unmapped_tf=list(self.al.unmapped_tf),
            tolerance=tol,
            first_divergence=first,
            caffe_source=self.cs.source,
            tf_source=self.ts.source,
            meta=meta,
        )

    def _start_row(self, k: int, pair: Pair, cp: Probe | None, tp: Probe | None, pool: Any) -> _Pending:
        cm = self.cs.by_name[pair.caffe]
        tm = self.ts.by_name.get(pair.tf)
        row = LayerResult(
            caffe_layer=pair.caffe,
            caffe_blob=cm.blob,
            tf_layer=pair.tf,
            caffe_kind=cm.kind,
            tf_kind=tm.kind if tm else "",
            caffe_chain=list(pair.caffe_chain),
            caffe_shape=tuple(cm.shape),
            tf_shape=tuple(tm.shape) if tm else (),
            chain_head=chain_head(pair.caffe_chain, self.cs.by_name),
        )
        dtypes = [d for d in (cm.dtype, tm.dtype if tm else "") if d]
        row.tolerance = self.table.for_layer([*reversed(pair.caffe_chain), pair.tf], *(dtypes or ["float32"]))
        item = _Pending(k, pair, cp, tp, self.window.caffe_inputs(pair), cm, tm or tp, row)
        if pair.note:
            item.notes.append(pair.note)
        if len(pair.caffe_chain) > 1:
            item.notes.append("chain " + "+".join(pair.caffe_chain))
        if cp is None or cp.value is None:
            item.notes.append(f"no Caffe value for {pair.caffe!r}")
        elif tp is None or tp.value is None:
            item.notes.append(f"no TF value for {pair.tf!r}")
        else:
            got, note = to_caffe_layout(tp.value, item.tm, cm, cp.value)
            if note:  # why not compared, or how it was read (ssd_keras's table of detections)
                item.notes.append(note)
            if got is not None:
                item.metrics = pool.submit(compute_metrics, cp.value, got, row.tolerance)
        return item

    def _finish_batch(self, batch: list[_Pending], pool: Any) -> None:
        for item in batch:
            if item.metrics is not None:
                item.row.metrics = item.metrics.result()
        if self.replay is not None:
            self._own_errors([item for item in batch if item.row.metrics is not None], pool)
        for item in batch:
            row, pair, cp, tp, cin = item.row, item.pair, item.cp, item.tp, item.cin
            row.note = "; ".join(n for n in item.notes if n)
            self.rows.append(row)
            bad = diverges(row)
            if bad and (self.first is None or row.own is not None):
                if self.first is None:
                    self.first = row
                self._diagnose(row, pair, cp, tp, cin)
            elif self.first is None and self.fallback is None and not row.passed and cp is not None:
                self.fallback = (row, pair, cp, tp, cin)
            elif bad and self.diag_fn is not None:
                # downstream of the first divergence, own error not measured (the TF layer's input
                # cannot be fed Caffe's: another shape): its values cannot say whether the layer
                # itself is wrong, its weights can. Only a transform the weight check proves is kept.
                self._weights_only(row, pair)
            if self.on_row is not None:
                self.on_row(row)
        self.window.release(batch[-1].k)

    def _own_errors(self, items: list[_Pending], pool: Any) -> None:
        """Own error of each row: its TF layer (or group) fed the Caffe input, the batch in one replay call per kind."""
        assert self.replay is not None
        asked: list[tuple[_Pending, OwnRequest]] = []
        for item in items:
            req = own_request(item.pair, item.cin, self.cs.by_name, self.ts.by_name, self.pair_of_c,
                              self.replay, self.tf_compared)
            if isinstance(req, str):  # not measured, and why ("" when the layer is not replayable)
                item.notes.append(req)
            else:
                asked.append((item, req))
        outs = replay_all(self.replay, [req for _, req in asked]) if asked else []
        jobs = []
        for (item, _), out in zip(asked, outs, strict=True):
            if isinstance(out, InputError):
                item.notes.append(f"own error not measured ({out})")
                continue
            if isinstance(out, BaseException):
                raise out
            got, note = to_caffe_layout(np.asarray(out), item.tm, item.cm, item.cp.value if item.cp is not None else None)
            if got is None:
                item.notes.append("own error: " + note)
                continue
            jobs.append((item, pool.submit(compute_metrics, item.cp.value, got, item.row.tolerance)))
        for item, fut in jobs:
            item.row.own = fut.result()

    def _diagnose(self, row: LayerResult, pair: Pair, cp: Probe | None, tp: Probe | None,
                  cin: list[np.ndarray] | None) -> None:
        """Diagnose a diverged row, then check its chain's weights (as ``layerparity weights``
        does) and make the diagnosis agree with that check (diagnosis/weight_check.py)."""
        if self.diag_fn is None:
            return
        self._diagnose_values(row, pair, cp, tp, cin)
        checks = self._weight_check(row, pair)
        if checks:
            _weight_check_hook()(row, checks)

    def _weights_only(self, row: LayerResult, pair: Pair) -> None:
        checks = self._weight_check(row, pair)
        if any(w.transform for w in checks):
            _weight_check_hook()(row, checks)

    def _weight_check(self, row: LayerResult, pair: Pair) -> list[Any]:
        """The weight check of the row's chain, paired by this comparison's own alignment; []
        when one side has no weights (a recorded trace) or no layer of the chain has params."""
        if not self.weight_sides:
            return []
        try:
            cmetas = [self.cs.by_name[n] for n in pair.caffe_chain if n in self.cs.by_name]
            if not cmetas or not len(self.cw) or not len(self.tw):
                return []
            from .weight_pairing import pairing_of
            from .weights import check_pair

            layer_of = {p.name: p.layer or p.name for p in cmetas}
            params = [c for c in dict.fromkeys(layer_of.values()) if c in self.cw]
            if not params:
                return []
            scalars = self.tw.scalars() if isinstance(self.tw, LazyWeights) else None
            wp = pairing_of(pair, layer_of, self.ts.by_name, self.tw, params, tf_scalars=scalars, by_value=True)
            if wp is None:
                return []
            return check_pair({c: self.cw[c] for c in params}, self.tw, self.cs.metas, wp, by_value=True)
        except InputError as e:
            row.note = "; ".join(x for x in (row.note, f"weight check skipped ({e})") if x)
            return []
        except Exception as e:  # noqa: BLE001 - a weight-check bug must not lose the comparison
            if _strict_diagnosis():
                raise
            msg = (f"weight check of {row.caffe_layer!r} failed: {type(e).__name__}: {e} "
                   "(a layerparity bug; please report it)")
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            row.note = "; ".join(x for x in (row.note, msg) if x)
            return []

    def _diagnose_values(self, row: LayerResult, pair: Pair, cp: Probe | None, tp: Probe | None,
                         cin: list[np.ndarray] | None) -> None:
        if self.diag_fn is None or cp is None or tp is None or cp.value is None or tp.value is None:
            return
        fn, ctx_cls = self.diag_fn
        c0 = pair.caffe_chain[0]
        cmeta0 = self.cs.by_name[c0]
        cw: Any = self.cw.get(cmeta0.layer, self.cw.get(c0))
        if len(pair.caffe_chain) > 1:  # a fused chain: {layer: params} of every member that has some
            layers = [self.cs.by_name[n].layer for n in pair.caffe_chain]
            cw = {n: self.cw[n] for n in layers if n in self.cw} or None
        tm = self.ts.by_name.get(pair.tf)
        tw = None
        if tm is not None:
            tw = self.tw.get(tm.layer, self.tw.get(pair.tf))
        # the chain and the probes it reads (e.g. a Flatten's flat_shape before an InnerProduct)
        names = [*self.cs.by_name[c0].inputs, *pair.caffe_chain]
        probes = {n: self.window.c_held.get(n) or self.cs.by_name[n] for n in names if n in self.cs.by_name}
        upto = next((i for i, r in enumerate(self.rows) if r is row), len(self.rows) - 1)
        ctx = ctx_cls(
            rows=self.rows[: upto + 1],  # the rows up to and including this one, as the context promises
            caffe_probes=probes,
            caffe_weights={n: self.cw[self.cs.by_name[n].layer] for n in pair.caffe_chain
                           if self.cs.by_name[n].layer in self.cw},
            tolerance=row.tolerance,
        )
        try:
            out = fn(row, cp, tp, cin, cw, tw, ctx)
        except InputError as e:
            row.note = "; ".join(x for x in (row.note, f"diagnosis skipped ({e})") if x)
            return
        except Exception as e:  # noqa: BLE001 - a diagnosis bug must not lose the comparison
            if _strict_diagnosis():
                raise
            msg = f"diagnosis of {row.caffe_layer!r} failed: {type(e).__name__}: {e} (a layerparity bug; please report it)"
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            row.note = "; ".join(x for x in (row.note, msg) if x)
            return
        row.diagnoses = list(out or [])


def _diagnose_hook() -> tuple[Callable[..., Any], Any]:
    """The diagnosis entry point and its context type (pure NumPy; imported when first needed)."""
    from .diagnosis import DiagnosisContext, diagnose

    return diagnose, DiagnosisContext


def _strict_diagnosis() -> bool:
    from .diagnosis import strict_mode

    return strict_mode()


def _weight_check_hook() -> Callable[[LayerResult, list[Any]], None]:
    from .diagnosis import attach_weight_check

    return attach_weight_check


def _conventions_hook() -> Callable[[list[LayerResult]], list[Any]]:
    from .diagnosis import conventions

    return conventions


# -- models -------------------------------------------------------------------------


def open_caffe_model(caffe_model: Any, caffe_weights: Any, options: Mapping[str, Any], opened: list[Backend]) -> Backend:
    """The Caffe side as a backend (a TF backend here is the caller's swap, an input error); one we
    open is appended to ``opened`` (ours to close). Shared by compare_models, the model cache and
    the sweep's workers, so every entry point refuses the same mistakes."""
    if isinstance(caffe_model, Backend):
        if caffe_model.framework != "caffe":
            raise InputError(f"caffe_model: got a {caffe_model.framework or type(caffe_model).__name__} backend "
                             f"({caffe_model.source!r}); did you swap the caffe and tf arguments?")
        return caffe_model  # the caller's: not ours to close
    from .backends.caffe import CaffeBackend

    if isinstance(caffe_model, (str, os.PathLike)):
        cb = CaffeBackend(caffe_model, caffe_weights, **options)
    elif type(caffe_model).__name__ == "Net":  # a live caffe.Net
        cb = CaffeBackend.from_net(caffe_model, **options)
    else:
        raise InputError(
            f"caffe_model: expected a prototxt path, a caffe.Net, a Caffe backend, a Trace or a trace archive, "
            f"got {type(caffe_model).__name__}"
        )
    opened.append(cb)
    return cb


def open_tf_model(tf_model: Any, options: Mapping[str, Any], opened: list[Backend]) -> Backend:
    """The TF side as a backend (a Caffe backend or prototxt here is the caller's swap, an input error)."""
    if isinstance(tf_model, Backend):
        if tf_model.framework != "tensorflow":
            raise InputError(f"tf_model: got a {tf_model.framework or type(tf_model).__name__} backend "
                             f"({tf_model.source!r}); did you swap the caffe and tf arguments?")
        return tf_model
    if isinstance(tf_model, (str, os.PathLike)) and os.fspath(tf_model).lower().endswith(".prototxt"):
        raise InputError(f"tf_model: {os.fspath(tf_model)!r} is a Caffe prototxt; did you swap the caffe and tf arguments?")
    from .backends.tensorflow import load_tf

    tb = load_tf(tf_model, **options)
    opened.append(tb)
    return tb


def compare_models(
    caffe_model: Any,
    tf_model: Any,
    inputs: Mapping[str, np.ndarray] | np.ndarray,
    *,
    caffe_weights: Any = None,
    mapping: Mapping[str, str] | str | os.PathLike[str] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    tolerances: Mapping[str, Any] | None = None,
    own_error: bool = True,
    diagnose: bool = True,
    partial: bool | Sequence[str] = False,
    tf_inputs: Mapping[str, np.ndarray] | np.ndarray | None = None,
    tf_layout: str | None = None,
    tf_options: Mapping[str, Any] | None = None,
    caffe_options: Mapping[str, Any] | None = None,
    on_row: Callable[[LayerResult], None] | None = None,
    custom_objects: Any = None,
    caffe_pythonpath: Any = None,
) -> Report:
    """Run both models on ``inputs`` (NCHW, Caffe's layout), capture and compare.

    ``caffe_model``: a prototxt path (with ``caffe_weights``: a .caffemodel), a live
    ``caffe.Net``, a Caffe backend, or a recorded Caffe ``Trace`` / trace archive (then
    ``caffe_weights``, a .caffemodel path or a dict, gives the diagnosis Caffe's weights,
    read without Caffe, so it confirms what it finds as a live run does).
    ``tf_model``: anything :func:`layerparity.backends.tensorflow.load_tf` accepts
    (Keras model, ``.keras``/``.h5``, SavedModel dir, frozen GraphDef, TFLite...), a
    TF backend, or a recorded TF ``Trace`` / trace archive. Live models are streamed
    and run at the same time; a recorded side is used as it is.

    ``rtol``/``atol``: together or not at all (default per dtype); ``atol`` is relative:
    ``atol * max|caffe|`` of each layer is allowed, plus ``rtol * |caffe|`` per element.
    ``tolerances``: per-layer overrides. ``mapping``: see :func:`compare_traces`.
    ``own_error`` (default): each TF layer that the TF backend can re-run alone is also
    fed the Caffe input of its counterpart. ``partial``: see :func:`compare_traces`.
    ``tf_inputs``: what to feed the TF model instead of ``inputs`` (a port that does its
    own preprocessing takes other inputs than Caffe: RGB in [0, 255] where Caffe takes
    BGR minus the mean), given in Caffe's NCHW terms like ``inputs``; the input rows are
    then compared after the TF preprocessing layers (their first common point) or not
    at all, with a note. ``tf_layout``: the TF model's layout of 4-D tensors relative
    to Caffe's NCHW, any permutation of the letters N, C, H, W (``"NWHC"`` for a port
    of a MATLAB-trained model that takes spatially transposed input); default NHWC,
    or NCHW for ``channels_first`` models. ``tf_options`` / ``caffe_options``: keyword
    arguments for the backend constructors (``{"safe_mode": False}``). ``on_row`` is
    called with each row as soon as it is computed. ``custom_objects``: the custom Keras
    classes a ``.keras``/``.h5`` port uses (a dict ``name -> class`` or a list of
    classes; short for ``tf_options={"custom_objects": ...}``, see ``load_tf``).
    ``caffe_pythonpath``: the folder(s) holding the modules of the Caffe net's Python
    layers, put on the Caffe worker's path (short for ``caffe_options={"pythonpath": ...}``,
    see ``CaffeBackend``; docs/python-layers.md). It takes effect where a prototxt is
    opened here, not on a Caffe backend the caller opened.
    """
    ToleranceTable(rtol, atol, tolerances)  # fail fast on bad tolerances, before running anything
    tf_opts = dict(tf_options or {})
    if custom_objects is not None:
        tf_opts["custom_objects"] = custom_objects
    if tf_layout is not None:
        tf_opts["tf_layout"] = tf_layout
    opened: list[Backend] = []
    try:
        if isinstance(caffe_model, Trace) or is_archive(caffe_model):
            c_side: Any = caffe_model if isinstance(caffe_model, Trace) else os.fspath(caffe_model)
            cw = _recorded_side_weights(caffe_weights) if diagnose else None
        else:
            c_opts = dict(caffe_options or {})
            if caffe_pythonpath is not None:
                c_opts["pythonpath"] = caffe_pythonpath
            cb = open_caffe_model(caffe_model, caffe_weights, c_opts, opened)
            c_side = Stream(cb.iter_capture(inputs), cb.source)
            cw = LazyWeights(cb) if diagnose else None
        replay = None
        if isinstance(tf_model, Trace) or is_archive(tf_model):
            t_side: Any = tf_model if isinstance(tf_model, Trace) else os.fspath(tf_model)
            tw = None
        else:
            tb = open_tf_model(tf_model, tf_opts, opened)
            t_side = Stream(tb.iter_capture(inputs if tf_inputs is None else tf_inputs), tb.source)
            tw = LazyWeights(tb) if diagnose else None
            replay = tb if own_error else None
        return compare_traces(
            c_side, t_side, mapping=mapping, rtol=rtol, atol=atol, tolerances=tolerances, replay=replay,
            diagnose=diagnose, caffe_weights=cw, tf_weights=tw, on_row=on_row, partial=partial,
            separate_inputs=tf_inputs is not None,
        )
    finally:
        for b in reversed(opened):
            try:
                b.close()
            except Exception:  # noqa: BLE001 - closing must not hide the real error
                print(f"layerparity: closing {type(b).__name__} failed: {sys.exc_info()[1]}", file=sys.stderr)


def _recorded_side_weights(caffe_weights: Any) -> Mapping[str, list[np.ndarray]] | None:
    """The Caffe weights for a recorded Caffe side: a caffemodel path is read without Caffe
    (on first use, :mod:`.caffemodel`), so a diagnosis is confirmed as in a live run."""
    if caffe_weights is None:
        return None
    if isinstance(caffe_weights, Mapping):
        return caffe_weights
    if isinstance(caffe_weights, (str, os.PathLike)):
        from .caffemodel import CaffemodelWeights

        return LazyWeights(CaffemodelWeights(caffe_weights))
    raise InputError(f"caffe_weights: expected a .caffemodel path or a dict layer -> arrays, "
                     f"got a {type(caffe_weights).__name__}")


class LazyWeights(Mapping[str, list[np.ndarray]]):
    """A backend's weights, fetched on first use: only a diagnosis reads them, and most checks have none."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self._w: dict[str, list[np.ndarray]] | None = None

    def _all(self) -> dict[str, list[np.ndarray]]:
        if self._w is None:
            try:
                self._w = dict(self._backend.weights())
            except NotImplementedError:
                self._w = {}
        return self._w

    def __getitem__(self, name: str) -> list[np.ndarray]:
        return self._all()[name]

    def scalars(self) -> dict[str, list[float]]:
        """Constant scalar operands of the backend's ops (a Gemm's alpha; graph backends only)."""
        return dict(getattr(self._backend, "weight_scalars", None) or {})

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())



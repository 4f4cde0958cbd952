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
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .align import Alignment, Pair, align
from .backends.base import replay_each
from .errors import ArchiveError, InputError
from .layout import LayoutMismatch, relayout
from .metrics import ToleranceTable, compute_metrics, default_tolerance
from .result import LayerResult, Report
from .trace import ArchiveReader, Probe, Trace, is_archive

__all__ = ["compare_traces", "compare_models", "LazyWeights"]


# -- sources ------------------------------------------------------------------------


#: Bytes of streamed values a side keeps in memory while both models run; the rest goes
#: to a raw spill file in a temporary folder. None: ``LAYERPARITY_STREAM_MEMORY_MB`` (both
#: sides; 0 sends everything to the file), else :data:`STREAM_MEMORY_DEFAULTS`.
STREAM_MEMORY_BYTES: int | None = None

#: Caffe values arrive one at a time from the worker, so each one held adds to the peak:
#: 16 MiB keeps ResNet-50 at batch 8 within 1.5x a plain run's peak (64 MiB measured
#: 1.49-1.51x, 256 MiB 1.56x); what spills is written by the Caffe thread while TF runs.
#: A Keras capture returns every layer's output from one graph call, so its values are
#: resident anyway: spilling them cannot lower the peak and costs a write and a read on
#: the critical path (0.35 s at GoogLeNet batch 8).
STREAM_MEMORY_DEFAULTS = {"caffe": 16 << 20, "tensorflow": 1 << 30}


def _stream_budget(framework: str) -> int:
    if STREAM_MEMORY_BYTES is not None:
        return STREAM_MEMORY_BYTES
    raw = os.environ.get("LAYERPARITY_STREAM_MEMORY_MB")
    if raw is None:
        return STREAM_MEMORY_DEFAULTS[framework]
    try:
        mb = float(raw)
    except ValueError:
        mb = -1.0
    if not (0 <= mb < float("inf")):
        raise InputError(f"LAYERPARITY_STREAM_MEMORY_MB={raw!r}: expected a number of MiB >= 0")
    return int(mb * (1 << 20))


class _Spool:
    """The values of one live stream, in arrival order: in memory up to a budget, then in a raw file.

    Raw bytes, no zip, no CRC and no pickle: the file only lives for one comparison
    and is read back by offset, dtype and shape recorded here.
    """

    def __init__(self, framework: str, source: str, tmpdir: Callable[[], str], budget: int) -> None:
        self.framework, self.source = framework, source
        self.metas: list[Probe] = []
        self._tmpdir = tmpdir
        self._budget = budget
        self._mem: dict[str, np.ndarray] = {}
        self._spilled: dict[str, tuple[int, np.dtype, tuple[int, ...]]] = {}
        self._file: Any = None
        self._path = ""
        self.held_bytes = 0
        self.spilled_bytes = 0

    def fill(self, it: Iterable[Any]) -> None:
        seen: set[str] = set()
        for p in _checked_probes(it, self.framework):
            if p.name in seen:
                raise InputError(f"{self.framework} stream {self.source!r}: probe name {p.name!r} appears twice")
            seen.add(p.name)
            self.metas.append(p.without_value())
            if p.value is not None:
                self._keep(p.name, np.asarray(p.value))
        if self._file is not None:
            self._file.close()
            self._file = None

    def _keep(self, name: str, v: np.ndarray) -> None:
        if v.dtype.hasobject:
            raise InputError(f"{self.framework} stream {self.source!r}: probe {name!r} holds an object array")
        if self.held_bytes + v.nbytes <= self._budget:
            self._mem[name] = v
            self.held_bytes += v.nbytes
            return
        if self._file is None:
            self._path = os.path.join(self._tmpdir(), f"{self.framework}.raw")
            self._file = open(self._path, "wb", buffering=0)  # noqa: SIM115 - closed in fill()/close()
        offset = self.spilled_bytes
        data = np.ascontiguousarray(v)
        if data.nbytes:
            self._file.write(data.reshape(-1).view(np.uint8).data)
        self._spilled[name] = (offset, v.dtype, tuple(v.shape))
        self.spilled_bytes += data.nbytes

    def value(self, name: str) -> np.ndarray | None:
        v = self._mem.get(name)
        if v is not None:
            return v
        where = self._spilled.get(name)
        if where is None:
            return None
        offset, dtype, shape = where
        count = int(np.prod(shape, dtype=np.int64))
        if count == 0:
            return np.empty(shape, dtype)
        with open(self._path, "rb") as f:
            return np.fromfile(f, dtype=dtype, count=count, offset=offset).reshape(shape)

    def iter_probes(self) -> Iterator[Probe]:
        """Each probe with its value, once; a value leaves memory as it is handed out."""
        for m in self.metas:
            v = self.value(m.name)
            self._mem.pop(m.name, None)
            yield Probe(**{**m.__dict__, "value": v}) if v is not None else m

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._mem.clear()


class _Side:
    """One trace being compared: metadata up front, values streamed in order."""

    def __init__(self, obj: Any, framework: str, tmpdir: Callable[[], str]) -> None:
        self.framework = framework
        self.reader: ArchiveReader | None = None
        self.trace: Trace | None = None
        self.spool: _Spool | None = None
        if isinstance(obj, Trace):
            self.trace = obj
            self.source = obj.source
            self.metas = [p.without_value() for p in obj]
        elif isinstance(obj, (str, os.PathLike)):
            path = os.fspath(obj)
            if not os.path.exists(path):
                raise ArchiveError(f"{path}: no such trace archive")
            self.reader = ArchiveReader(path)
            self.source = self.reader.source or path
            self.metas = self.reader.probe_metas()
        elif isinstance(obj, Iterable) and not isinstance(obj, (bytes, Mapping, np.ndarray)):
            # A live stream: structural alignment needs both graphs before the first
            # comparison, so it is drained into a spool first (see :func:`_drain_both`).
            self.source = getattr(obj, "source", "") or f"<{framework} stream>"
            self.spool = _Spool(framework, self.source, tmpdir, _stream_budget(framework))
            self.stream: Iterable[Any] = obj
            self.metas = []
        else:
            raise InputError(
                f"{framework} side: expected a Trace, a trace archive path or an iterable of Probes, "
                f"got {type(obj).__name__}"
            )
        self.by_name = {p.name: p for p in self.metas}

    def drain(self) -> None:
        """Run a live stream to its end (the model runs here); no-op for traces and archives."""
        if self.spool is not None and not self.metas:
            self.spool.fill(self.stream)
            self.metas = self.spool.metas
            self.by_name = {p.name: p for p in self.metas}

    def values(self) -> Iterator[Probe]:
        if self.trace is not None:
            return iter(self.trace)
        if self.spool is not None:
            return self.spool.iter_probes()
        assert self.reader is not None
        return self.reader.iter_probes()

    def value(self, name: str) -> np.ndarray | None:
        if self.trace is not None:
            return self.trace[name].value if name in self.trace else None
        if self.spool is not None:
            return self.spool.value(name)
        assert self.reader is not None
        try:
            return self.reader.probe(name).value
        except KeyError:
            return None

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
        if self.spool is not None:
            self.spool.close()


def _drain_both(cs: _Side, ts: _Side) -> None:
    """Drain both live streams; the Caffe one in a thread, so both models run at once.

    The Caffe worker is another process and TensorFlow releases the GIL while it
    runs, so Caffe's forward overlaps TF's instead of following it.
    """
    if cs.spool is None or ts.spool is None:
        cs.drain()
        ts.drain()
        return
    failure: list[BaseException] = []

    def caffe_side() -> None:
        try:
            cs.drain()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            failure.append(e)

    th = threading.Thread(target=caffe_side, name="layerparity-caffe-stream", daemon=True)
    th.start()
    try:
        ts.drain()
    except BaseException:
        th.join()
        if failure:  # both failed: Caffe's error first, as when the streams ran one after the other
            raise failure[0] from None
        raise
    th.join()
    if failure:
        raise failure[0]


def _checked_probes(it: Iterable[Any], framework: str) -> Iterator[Probe]:
    for p in it:
        if not isinstance(p, Probe):
            raise InputError(f"{framework} stream: expected Probe objects, got {type(p).__name__}")
        yield p


# -- the engine ---------------------------------------------------------------------

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
) -> Report:
    """Compare a Caffe trace with a TF trace layer by layer.

    ``caffe``/``tf``: :class:`Trace` objects, trace archive paths (streamed with
    :class:`ArchiveReader`) or iterables of probes (live streams). ``mapping``:
    explicit ``{caffe_layer: tf_name}`` or a YAML/JSON file (see
    :func:`layerparity.align.load_mapping`). ``rtol``/``atol``: together or not at
    all; default per dtype (:data:`layerparity.metrics.DEFAULT_TOLERANCES`).
    ``tolerances``: per-layer overrides ``{"conv5*": (rtol, atol)}``.
    ``replay``: a backend able to run one TF layer on the Caffe input (own error).
    ``on_row`` is called with each row as soon as it is computed.

    Rows come in Caffe graph order. ``Report.first_divergence`` is the first row
    whose own error (where measured, else total error) breaks tolerance; failing
    rows downstream of it in the Caffe graph get ``contaminated_by``.
    """
    table = ToleranceTable(rtol, atol, tolerances)
    tmp: list[str] = []

    def tmpdir() -> str:
        if not tmp:
            tmp.append(tempfile.mkdtemp(prefix="layerparity-"))
        return tmp[0]

    sides: list[_Side] = []
    try:
        cs = _Side(caffe, "caffe", tmpdir)
        sides.append(cs)
        ts = _Side(tf, "tensorflow", tmpdir)
        sides.append(ts)
        _drain_both(cs, ts)
        alignment = align(cs.metas, ts.metas, mapping, caffe_value=cs.value, tf_value=ts.value)
        engine = _Engine(cs, ts, alignment, table, replay, diagnose, caffe_weights, tf_weights, on_row)
        return engine.run()
    finally:
        for s in sides:
            s.close()
        if tmp:
            shutil.rmtree(tmp[0], ignore_errors=True)


class _Engine:
    def __init__(self, cs: _Side, ts: _Side, alignment: Alignment, table: ToleranceTable, replay: Any,
                 diagnose: bool, caffe_weights: Any, tf_weights: Any, on_row: Any) -> None:
        self.cs, self.ts, self.al, self.table = cs, ts, alignment, table
        self.replay = replay
        self.diag_fn = _diagnose_hook() if diagnose else None
        self.cw = caffe_weights if caffe_weights is not None else {}
        self.tw = tf_weights if tf_weights is not None else {}
        self.on_row = on_row
        self.pairs = alignment.pairs
        # who needs which value, and until when
        self.tf_need: dict[str, list[int]] = {}
        self.c_until: dict[str, int] = {}
        keep_inputs = replay is not None or self.diag_fn is not None
        for k, p in enumerate(self.pairs):
            self.tf_need.setdefault(p.tf, []).append(k)
            self.c_until[p.caffe] = max(self.c_until.get(p.caffe, -1), k)
            if keep_inputs:
                for i in cs.by_name[p.caffe_chain[0]].inputs:
                    if i in cs.by_name:
                        self.c_until[i] = max(self.c_until.get(i, -1), k)
        self.pair_of_c = {n: p for p in self.pairs for n in p.caffe_chain}
        self.c_held: dict[str, Probe] = {}
        self.t_held: dict[str, Probe] = {}
        self.max_held = 0
        self.max_held_bytes = 0

    # streaming bookkeeping ----------------------------------------------------------
    def _account(self) -> None:
        held = list(self.c_held.values()) + list(self.t_held.values())
        self.max_held = max(self.max_held, len(held))
        nbytes = sum(p.value.nbytes for p in held if p.value is not None)
        self.max_held_bytes = max(self.max_held_bytes, nbytes)

    def _pull_caffe(self, it: Iterator[Probe], name: str, k: int) -> Probe | None:
        while name not in self.c_held:
            p = next(it, None)
            if p is None:
                return None
            if self.c_until.get(p.name, -1) >= k:
                self.c_held[p.name] = p
                self._account()
        return self.c_held[name]

    def _pull_tf(self, it: Iterator[Probe], name: str, k: int) -> Probe | None:
        while name not in self.t_held:
            p = next(it, None)
            if p is None:
                return None
            if any(j >= k for j in self.tf_need.get(p.name, [])):
                self.t_held[p.name] = p
                self._account()
        return self.t_held[name]

    def _release(self, k: int) -> None:
        for n in [n for n in self.c_held if self.c_until.get(n, -1) <= k]:
            del self.c_held[n]
        for n in [n for n in self.t_held if all(j <= k for j in self.tf_need.get(n, []))]:
            del self.t_held[n]

    # main loop -------------------------------------------------------------------
    def run(self) -> Report:
        c_it, t_it = self.cs.values(), self.ts.values()
        self.rows: list[LayerResult] = []
        self.first: LayerResult | None = None
        self.fallback: tuple[LayerResult, Probe, Probe | None, list[np.ndarray] | None] | None = None
        # Rows are computed a few at a time: their metrics in two threads (NumPy releases
        # the GIL), their own errors in one batched replay; decisions stay in Caffe order.
        rows_per_batch, bytes_per_batch = (
            (_REPLAY_ROWS, _REPLAY_BYTES) if self.replay is not None else (_WINDOW, _WINDOW_BYTES)
        )
        batch: list[_Pending] = []
        held = 0
        pool = _metrics_pool() if _THREADS else _Inline()
        for k, pair in enumerate(self.pairs):
            cp = self._pull_caffe(c_it, pair.caffe, k)
            tp = self._pull_tf(t_it, pair.tf, k)
            item = self._start_row(k, pair, cp, tp, pool)
            batch.append(item)
            held += cp.value.nbytes if cp is not None and cp.value is not None else 0
            if len(batch) >= rows_per_batch or (bytes_per_batch and held >= bytes_per_batch):
                self._finish_batch(batch, pool)
                batch, held = [], 0
        if batch:
            self._finish_batch(batch, pool)
        rows, first, fallback = self.rows, self.first, self.fallback
        first_by = "own" if first is not None and first.own is not None else "total"
        if first is None and fallback is not None:
            # every failing row passed its own error: the divergence comes from something
            # the alignment could not see (an unmapped TF-only layer). Name the first failure.
            first = fallback[0]
            first_by = "total (own error passed everywhere)"
            self._diagnose(first, self.pairs[rows.index(first)], fallback[1], fallback[2], fallback[3], rows)
        if first is not None:
            self._contaminate(rows, first)
        tol = self.table.global_tol or default_tolerance(np.float32)
        meta = {
            "alignment": self.al.counts(),
            "absorbed": dict(self.al.absorbed),
            "mapping": self.al.mapping_source,
            "streaming": {"max_held_values": self.max_held, "max_held_bytes": self.max_held_bytes,
                          **self._spool_stats()},
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

    def _spool_stats(self) -> dict[str, int]:
        out = {}
        for side in (self.cs, self.ts):
            if side.spool is not None:
                out[f"{side.framework}_spooled_in_memory_bytes"] = side.spool.held_bytes
                out[f"{side.framework}_spilled_bytes"] = side.spool.spilled_bytes
        return out

    def _caffe_inputs(self, pair: Pair) -> list[np.ndarray] | None:
        names = [i for i in self.cs.by_name[pair.caffe_chain[0]].inputs if i in self.cs.by_name]
        vals = []
        for n in names:
            p = self.c_held.get(n)
            if p is None or p.value is None:
                return None
            vals.append(p.value)
        return vals

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
        )
        dtypes = [d for d in (cm.dtype, tm.dtype if tm else "") if d]
        row.tolerance = self.table.for_layer([*reversed(pair.caffe_chain), pair.tf], *(dtypes or ["float32"]))
        item = _Pending(k, pair, cp, tp, self._caffe_inputs(pair), cm, tm or tp, row)
        if pair.note:
            item.notes.append(pair.note)
        if len(pair.caffe_chain) > 1:
            item.notes.append("chain " + "+".join(pair.caffe_chain))
        if cp is None or cp.value is None:
            item.notes.append(f"no Caffe value for {pair.caffe!r}")
        elif tp is None or tp.value is None:
            item.notes.append(f"no TF value for {pair.tf!r}")
        else:
            got, note = self._to_caffe(tp.value, item.tm, cm)
            if got is None:
                item.notes.append(note)
            else:
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
            own_bad = row.own is not None and not row.own.passed
            total_bad = not row.passed
            if self.first is None and (own_bad or (row.own is None and total_bad)):
                self.first = row
                self._diagnose(row, pair, cp, tp, cin, self.rows)
            elif own_bad:
                self._diagnose(row, pair, cp, tp, cin, self.rows)
            elif self.first is None and self.fallback is None and total_bad and cp is not None:
                self.fallback = (row, cp, tp, cin)
            if self.on_row is not None:
                self.on_row(row)
        self._release(batch[-1].k)

    def _own_errors(self, items: list[_Pending], pool: Any) -> None:
        """Own error of each row: its TF layer fed the Caffe input, all single layers in one replay call."""
        singles: list[tuple[_Pending, str, list[np.ndarray]]] = []
        for item in items:
            req = self._own_request(item)
            if isinstance(req, str):  # not measured, and why ("" when the layer is not replayable)
                item.notes.append(req)
            elif req[0] == "group":
                _, name, tnames, feed = req
                try:
                    item.own_out = self.replay.replay_group(name, tnames, feed)
                except InputError as e:
                    item.own_out = e
            else:
                singles.append((item, req[1], req[2]))
        if singles:
            requests = [(name, feed) for _, name, feed in singles]
            many = getattr(self.replay, "replay_many", None)  # a duck-typed replayer may lack it
            outs = many(requests) if many is not None else replay_each(self.replay, requests)
            for (item, _, _), out in zip(singles, outs, strict=True):
                item.own_out = out
        jobs = []
        for item in items:
            if item.own_out is None:
                continue
            out, item.own_out = item.own_out, None
            if isinstance(out, InputError):
                item.notes.append(f"own error not measured ({out})")
                continue
            if isinstance(out, BaseException):
                raise out
            got, note = self._to_caffe(np.asarray(out), item.tm, item.cm)
            if got is None:
                item.notes.append("own error: " + note)
                continue
            jobs.append((item, pool.submit(compute_metrics, item.cp.value, got, item.row.tolerance)))
        for item, fut in jobs:
            item.row.own = fut.result()

    def _to_caffe(self, value: np.ndarray, tm: Probe, cm: Probe) -> tuple[np.ndarray | None, str]:
        try:
            got = relayout(value, tm.layout, tm.flat_shape, cm.layout, cm.flat_shape)
        except LayoutMismatch as e:
            return None, (f"layout mismatch: caffe {tuple(cm.shape)} in {cm.layout or 'as is'} vs "
                          f"tf {tuple(np.shape(value))} in {tm.layout or 'as is'}: {e}")
        if tuple(got.shape) != tuple(cm.shape):
            how = f" (as {cm.layout} {tuple(got.shape)})" if tm.layout != cm.layout and cm.layout and tm.layout else ""
            return None, (f"shape mismatch: caffe {tuple(cm.shape)}{' in ' + cm.layout if cm.layout else ''} vs "
                          f"tf {tuple(np.shape(value))}{' in ' + tm.layout if tm.layout else ''}{how}")
        return got, ""

    def _own_request(self, item: _Pending) -> str | tuple[Any, ...]:
        """What to replay for the row's own error: ``("one", name, feed)``,
        ``("group", name, tnames, feed)``, or a note saying why it is not measured."""
        pair, tm, cin = item.pair, item.tm, item.cin
        if pair.how == "identity":
            return ""
        group = len(pair.tf_group) > 1
        if group:  # several TF ops (Conv2D -> BiasAdd -> Relu): feed the group's external inputs
            members = set(pair.tf_group)
            tnames = []
            for m in pair.tf_group:
                for i in self.ts.by_name[m].inputs if m in self.ts.by_name else []:
                    if i not in members and i not in tnames:
                        tnames.append(i)
        else:
            tnames = list(tm.inputs)
        try:
            if group:
                can = self.replay.can_replay_group(pair.tf, tnames)
            else:
                can = self.replay.can_replay(pair.tf)
            if not can:
                return ""
        except Exception as e:  # noqa: BLE001 - a backend question must not sink the comparison
            return f"own error not measured ({type(e).__name__}: {e})"
        c0 = self.cs.by_name[pair.caffe_chain[0]]
        cnames = [i for i in c0.inputs if i in self.cs.by_name]
        if cin is None or len(cnames) != len(tnames) or not cnames:
            return f"own error not measured: {len(cnames)} Caffe input(s) vs {len(tnames)} TF input(s)"
        feed = []
        try:
            for cn, tn, v in zip(cnames, tnames, cin, strict=True):
                x, why = self._feed(cn, tn, v)
                if x is None:
                    return f"own error not measured: {why}"
                feed.append(x)
        except InputError as e:
            return f"own error not measured ({e})"
        return ("group", pair.tf, tnames, feed) if group else ("one", pair.tf, feed)

    def _feed(self, cn: str, tn: str, v: np.ndarray) -> tuple[np.ndarray | None, str]:
        """The Caffe value ``v`` of ``cn`` as the TF layer's input ``tn``.

        ``tn`` is usually the TF counterpart of ``cn``; when TF-only layers sit in
        between (a ``ZeroPadding2D`` before a VALID conv, a ``Flatten`` before a
        ``Dense``), the Caffe value is fed to the counterpart's layout and those
        layers are replayed on it first.
        """
        cpair = self.pair_of_c.get(cn)
        start = tn
        path: list[str] = []
        if cpair is not None and cpair.caffe == cn:
            cur = tn
            while cur != cpair.tf and len(path) < 16:
                meta = self.ts.by_name.get(cur)
                if meta is None or len(meta.inputs) != 1 or cur in self.tf_need:
                    path = []
                    cur = tn
                    break
                path.append(cur)
                cur = meta.inputs[0]
            if cur == cpair.tf:
                start = cur
            else:
                path = []
        smeta = self.ts.by_name.get(start)
        if smeta is None:
            return None, f"TF input {start!r} is not in the TF trace"
        cmeta = self.cs.by_name[cn]
        try:
            x = relayout(v, cmeta.layout, cmeta.flat_shape, smeta.layout, smeta.flat_shape)
        except LayoutMismatch as e:
            return None, f"Caffe input {cn!r} does not fit TF input {start!r} ({e})"
        if smeta.shape and tuple(x.shape) != tuple(smeta.shape):
            return None, (f"Caffe input {cn!r} is {tuple(x.shape)} in {smeta.layout}, "
                          f"TF input {start!r} is {tuple(smeta.shape)}")
        # a view (NCHW -> NHWC) of the held Caffe value: the backend copies it into a tensor
        # once, so a contiguous copy here would only double the copying and the memory
        for q in reversed(path):
            if not self.replay.can_replay(q):
                return None, f"TF-only layer {q!r} between {start!r} and the layer cannot be replayed"
            x = np.asarray(self.replay.replay(q, [x]))
        return x, ""

    def _diagnose(self, row: LayerResult, pair: Pair, cp: Probe | None, tp: Probe | None,
                  cin: list[np.ndarray] | None, rows: list[LayerResult]) -> None:
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
        ctx = None
        if ctx_cls is not None:
            # the chain and the probes it reads (e.g. a Flatten's flat_shape before an InnerProduct)
            names = [*self.cs.by_name[c0].inputs, *pair.caffe_chain]
            probes = {n: self.c_held.get(n) or self.cs.by_name[n] for n in names if n in self.cs.by_name}
            ctx = ctx_cls(
                rows=list(rows),
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
            msg = f"diagnosis of {row.caffe_layer!r} failed: {type(e).__name__}: {e} (a layerparity bug; please report it)"
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            row.note = "; ".join(x for x in (row.note, msg) if x)
            return
        row.diagnoses = list(out or [])

    def _contaminate(self, rows: list[LayerResult], first: LayerResult) -> None:
        down: set[str] = set(first.caffe_chain)
        for p in self.cs.metas:  # Caffe order is topological: one forward sweep finds descendants
            if any(i in down for i in p.inputs):
                down.add(p.name)
        start = rows.index(first)
        for r in rows[start + 1:]:
            if (r.metrics is None or not r.metrics.passed) and r.caffe_chain and r.caffe_chain[0] in down:
                r.contaminated_by = first.caffe_layer


def _diagnose_hook() -> tuple[Callable[..., Any], Any]:
    """The diagnosis entry point and its context type (pure NumPy; imported when first needed)."""
    from .diagnosis import DiagnosisContext, diagnose

    return diagnose, DiagnosisContext


# -- models -------------------------------------------------------------------------


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
    **kw: Any,
) -> Report:
    """Run both models on ``inputs`` (NCHW, Caffe's layout), capture and compare.

    ``caffe_model``: a prototxt path (with ``caffe_weights``: a .caffemodel), a live
    ``caffe.Net``, a Caffe backend, or a recorded Caffe ``Trace`` / trace archive.
    ``tf_model``: anything :func:`layerparity.backends.tensorflow.load_tf` accepts
    (Keras model, ``.keras``/``.h5``, SavedModel dir, frozen GraphDef, TFLite...), a
    TF backend, or a recorded TF ``Trace`` / trace archive. Live models are streamed
    and run at the same time; a recorded side is used as it is. With ``own_error`` (default) each TF layer that the TF backend can
    re-run alone is also fed the Caffe input of its counterpart. Extra keywords
    go to :func:`compare_traces` (``on_row``) or, prefixed ``tf_``/``caffe_``
    (``tf_safe_mode=...``), to the backend constructors.
    """
    engine_kw = {k: kw.pop(k) for k in ("on_row",) if k in kw}
    tf_kw = {k[3:]: kw.pop(k) for k in list(kw) if k.startswith("tf_")}
    caffe_kw = {k[6:]: kw.pop(k) for k in list(kw) if k.startswith("caffe_")}
    if kw:
        raise TypeError(f"compare_models() got unexpected keyword argument(s) {sorted(kw)}")
    check = ToleranceTable(rtol, atol, tolerances)  # fail fast on bad tolerances, before running anything
    del check
    opened: list[Any] = []
    try:
        if isinstance(caffe_model, Trace) or _is_archive_path(caffe_model):
            c_side: Any = caffe_model if isinstance(caffe_model, Trace) else os.fspath(caffe_model)
            cw = None
        else:
            from .backends.base import Backend

            if isinstance(caffe_model, Backend):
                cb = caffe_model  # the caller's: not ours to close
            elif isinstance(caffe_model, (str, os.PathLike)):
                from .backends.caffe import CaffeBackend

                cb = CaffeBackend(caffe_model, caffe_weights, **caffe_kw)
                opened.append(cb)
            elif type(caffe_model).__name__ == "Net":  # a live caffe.Net
                from .backends.caffe import CaffeBackend

                cb = CaffeBackend.from_net(caffe_model, **caffe_kw)
                opened.append(cb)
            else:
                raise InputError(
                    f"caffe_model: expected a prototxt path, a caffe.Net, a Caffe backend, a Trace or a trace archive, "
                    f"got {type(caffe_model).__name__}"
                )
            c_side = _Stream(cb.iter_capture(inputs), cb.source)
            cw = LazyWeights(cb) if diagnose else None
        replay = None
        if isinstance(tf_model, Trace) or _is_archive_path(tf_model):
            t_side: Any = tf_model if isinstance(tf_model, Trace) else os.fspath(tf_model)
            tw = None
        else:
            from .backends.base import Backend

            if isinstance(tf_model, Backend):
                tb = tf_model
            else:
                from .backends.tensorflow import load_tf

                tb = load_tf(tf_model, **tf_kw)
                opened.append(tb)
            t_side = _Stream(tb.iter_capture(inputs), tb.source)
            tw = LazyWeights(tb) if diagnose else None
            replay = tb if own_error else None
        return compare_traces(
            c_side, t_side, mapping=mapping, rtol=rtol, atol=atol, tolerances=tolerances, replay=replay,
            diagnose=diagnose, caffe_weights=cw, tf_weights=tw, **engine_kw,
        )
    finally:
        for b in reversed(opened):
            try:
                b.close()
            except Exception:  # noqa: BLE001 - closing must not hide the real error
                print(f"layerparity: closing {type(b).__name__} failed: {sys.exc_info()[1]}", file=sys.stderr)


class _Stream:
    """An iterable of probes with a ``source`` (so the spooled archive keeps it)."""

    def __init__(self, it: Iterator[Probe], source: str) -> None:
        self._it, self.source = it, source

    def __iter__(self) -> Iterator[Probe]:
        return iter(self._it)


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

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


def _is_archive_path(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike)) and os.path.isfile(x) and str(x).endswith(".npz") and is_archive(x)


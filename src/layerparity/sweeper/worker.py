"""What runs in a sweep worker: both models opened once per process, and the tasks.

A task is a few inputs. Each is either *screened* (both models run plainly with
:meth:`Backend.forward`, only the Caffe output blobs are compared with their TF
counterparts) or *fully compared* (the engine, :func:`layerparity.compare.compare_traces`,
on live captures of both models, own error and diagnosis included). A screened
input whose outputs fail is fully compared at once, in the same task.

The models are opened on first use and kept in :data:`_SESSIONS` for the life of
the process (a Dask worker keeps them across tasks and sweeps), keyed by what
was opened (paths with their modification times, options). Nothing here is
imported by the parent process unless the sweep runs in-process.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import CaffeError, InputError
from .stats import ItemResult, Measured

__all__ = ["ModelSpec", "OutPair", "Task", "TaskResult", "run_task", "init_worker"]


@dataclass(frozen=True)
class ModelSpec:
    """Everything a worker needs to open both models and compare like the caller asked."""

    caffe_model: Any
    tf_model: Any
    caffe_weights: Any = None
    mapping: Any = None
    rtol: float | None = None
    atol: float | None = None
    tolerances: Any = None
    own_error: bool = True
    diagnose: bool = True
    caffe_options: tuple[tuple[str, Any], ...] = ()
    tf_options: tuple[tuple[str, Any], ...] = ()
    partial: bool | tuple[str, ...] = False
    keras_modules: tuple[str, ...] = ()  # imported before the TF model is loaded (``--keras-module``)

    def key(self) -> str:
        """What identifies the opened models: paths with their modification times, and the options."""
        def ident(x: Any) -> Any:
            if isinstance(x, (str, os.PathLike)):
                p = os.fspath(x)
                try:
                    st = os.stat(p)
                    return (os.path.abspath(p), st.st_mtime_ns, st.st_size)
                except OSError:
                    return p
            return ("object", id(x))
        return repr((ident(self.caffe_model), ident(self.caffe_weights), ident(self.tf_model),
                     self.caffe_options, self.tf_options, tuple(ident(m) for m in self.keras_modules)))

    @property
    def in_memory(self) -> bool:
        """A model given as an object (not a path): it cannot be opened by another process."""
        return not all(isinstance(x, (str, os.PathLike)) for x in (self.caffe_model, self.tf_model))


@dataclass(frozen=True)
class OutPair:
    """A Caffe output blob and its TF counterpart, learned from one full comparison."""

    caffe: str
    tf: str
    caffe_layout: str
    caffe_flat: tuple[int, ...] | None
    tf_layout: str
    tf_flat: tuple[int, ...] | None
    tolerance: Any  # the row's Tolerance


@dataclass
class Task:
    """Inputs for one worker call: ``(index, label, sample, full)``; ``sample`` has a batch axis of 1."""

    items: list[tuple[int, str, Any, bool]]
    pairs: list[OutPair] | None = None  # None: learn them from the first item (fully compared)
    batch: int = 1  # screen this many inputs per forward (padded with copies of the last)


@dataclass
class TaskResult:
    items: list[ItemResult]
    # from a learning task: the output pairs (empty when the outputs cannot be screened),
    # the reason why not, the layers in graph order, the models' batch sizes and sources
    learned: dict[str, Any] | None = None
    pid: int = field(default_factory=os.getpid)
    # the models could not be opened (a bad file, a framework missing): no input can be checked
    fatal: BaseException | None = None


# -- sessions --------------------------------------------------------------------------

_SESSIONS: dict[str, _Session] = {}
_LOCK = threading.Lock()
_MAX_SESSIONS = 2


def init_worker(spec: ModelSpec | None = None) -> None:
    """ProcessPoolExecutor initializer: Ctrl-C is the parent's to handle; open the models now."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GLOG_minloglevel", "2")
    if spec is not None:
        try:
            _session(spec)
        except Exception:  # noqa: BLE001 - reported by the first task, which tries again
            pass


def _session(spec: ModelSpec) -> _Session:
    key = spec.key()
    with _LOCK:
        s = _SESSIONS.get(key)
        if s is None:
            while len(_SESSIONS) >= _MAX_SESSIONS:
                old = _SESSIONS.pop(next(iter(_SESSIONS)))
                old.close()
            s = _SESSIONS[key] = _Session(spec)
        return s


def close_sessions() -> None:
    with _LOCK:
        while _SESSIONS:
            _SESSIONS.popitem()[1].close()


class _Tap:
    """An iterable of probes that records each probe's metadata as it passes."""

    def __init__(self, it: Any, source: str, metas: list[Any]) -> None:
        self._it, self.source, self._metas = it, source, metas

    def __iter__(self) -> Any:
        for p in self._it:
            self._metas.append(p.without_value())
            yield p


class _Session:
    """Both models, opened once; one task at a time (a lock), Caffe's forward in a thread."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.lock = threading.Lock()
        self.cb: Any = None
        self.tb: Any = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="layerparity-sweep-caffe")
        self._open_tf()
        self._open_caffe()

    # opening --------------------------------------------------------------------------
    def _open_tf(self) -> None:
        from ..compare import LazyWeights, open_tf_model

        options = dict(self.spec.tf_options)
        if self.spec.keras_modules:  # the user's custom layers, in this process too
            from ..backends.keras import import_keras_module

            offered: dict[str, Any] = {}
            for m in self.spec.keras_modules:
                offered.update(import_keras_module(m))
            if offered:
                given = options.get("custom_objects")
                options["custom_objects"] = ({**offered, **given} if isinstance(given, Mapping)
                                             else offered if given is None else [*offered.values(), *given])
        # compare_models' own opening: a Caffe backend or prototxt here is refused as a swap
        opened: list[Any] = []
        self.tb = open_tf_model(self.spec.tf_model, options, opened)
        self._own_tb = bool(opened)  # a backend the caller gave is theirs to close
        self.tw = LazyWeights(self.tb)
        specs = self.tb.input_specs()
        self.tf_batch = specs[0].shape[0] if specs and specs[0].shape else None

    def _open_caffe(self) -> None:
        from ..compare import LazyWeights, open_caffe_model

        opened: list[Any] = []
        self.cb = open_caffe_model(self.spec.caffe_model, self.spec.caffe_weights, dict(self.spec.caffe_options), opened)
        self._own_cb = bool(opened)
        self.cw = LazyWeights(self.cb)
        specs = self.cb.input_specs()
        self.caffe_batch = specs[0].shape[0] if specs and specs[0].shape else 1
        self.input_names = [s.name for s in specs]

    def caffe(self) -> Any:
        if self.cb is None:
            self._open_caffe()
        return self.cb

    def caffe_failed(self) -> None:
        """After a CaffeError: the worker may be gone; open a fresh one for the next input."""
        if self._own_cb and self.cb is not None:
            try:
                self.cb.close()
            except Exception:  # noqa: BLE001
                pass
            self.cb = None

    def close(self) -> None:
        for b, own in ((self.cb, getattr(self, "_own_cb", False)), (self.tb, getattr(self, "_own_tb", False))):
            if b is not None and own:
                try:
                    b.close()
                except Exception:  # noqa: BLE001
                    pass
        self._thread.shutdown(wait=False)

    # running ---------------------------------------------------------------------------
    def _feed(self, samples: Sequence[Any], n: int) -> Any:
        """``samples`` (batch 1 each) as one batch of ``n`` (the last repeated to fill it)."""
        rows = list(samples) + [samples[-1]] * (n - len(samples))
        if isinstance(rows[0], Mapping):
            return {k: np.concatenate([np.asarray(r[k]) for r in rows]) for k in rows[0]}
        return np.concatenate([np.asarray(r) for r in rows])

    def full(self, sample: Any) -> tuple[Any, list[Any], list[Any]]:
        """The engine on one input: (Report, caffe probe metas, tf probe metas)."""
        from ..compare import compare_traces

        x = self._feed([sample], self.tf_batch or 1)
        cb = self.caffe()
        cmetas: list[Any] = []
        tmetas: list[Any] = []
        s = self.spec
        report = compare_traces(
            _Tap(cb.iter_capture(x), cb.source, cmetas), _Tap(self.tb.iter_capture(x), self.tb.source, tmetas),
            mapping=s.mapping, rtol=s.rtol, atol=s.atol, tolerances=s.tolerances,
            replay=self.tb if s.own_error else None, diagnose=s.diagnose,
            caffe_weights=self.cw if s.diagnose else None, tf_weights=self.tw if s.diagnose else None,
            partial=list(s.partial) if isinstance(s.partial, tuple) else s.partial,
        )
        return report, cmetas, tmetas

    def screen(self, samples: Sequence[Any], pairs: list[OutPair], batch: int) -> list[list[Measured]]:
        """Plain forward of both models on ``samples`` (batch 1 each), outputs compared per input."""
        from ..layout import relayout
        from ..metrics import compute_metrics
        from ..report.chart import error_ratio

        x = self._feed(samples, max(batch, len(samples)))
        cb = self.caffe()
        fut = self._thread.submit(cb.forward, x, [p.caffe for p in pairs])  # Caffe's worker runs while TF does
        try:
            tv = self.tb.forward(x, [p.tf for p in pairs])
        finally:
            cv = fut.result()
        out: list[list[Measured]] = [[] for _ in samples]
        for p in pairs:
            c, t = np.asarray(cv[p.caffe]), np.asarray(tv[p.tf])
            try:
                got = relayout(t, p.tf_layout, p.tf_flat, p.caffe_layout, p.caffe_flat)
            except InputError:
                got = None
            if got is None or tuple(got.shape) != tuple(c.shape):
                for res in out:
                    res.append((p.caffe, p.tf, float("inf"), float("inf"), float("inf"), False))
                continue
            for i, res in enumerate(out):
                m = compute_metrics(c[i:i + 1], got[i:i + 1], p.tolerance)
                res.append((p.caffe, p.tf, float(m.max_abs_error), float(m.max_rel_error),
                            error_ratio(m, p.tolerance), bool(m.passed)))
        return out


# -- tasks ----------------------------------------------------------------------------


def _measured(report: Any) -> list[Measured]:
    from ..report.chart import error_ratio

    out = []
    for r in report.rows:
        tol = r.tolerance or report.tolerance
        ratio = error_ratio(r.metrics, tol) if r.metrics is not None else None
        out.append((r.caffe_layer, r.tf_layer, float(r.max_abs_error), float(r.max_rel_error), ratio, bool(r.passed)))
    return out


def _full_item(sess: _Session, index: int, label: str, sample: Any, screen: list[Measured] | None = None
               ) -> tuple[ItemResult, Any, list[Any], list[Any]]:
    report, cm, tm = sess.full(sample)
    fd = report.first_divergence
    # the input's own verdict is its numbers (rows in scope); what the port leaves out of the
    # net is the same for every input and decides the sweep's verdict once (``coverage`` below)
    cov = report.coverage
    rows_ok = all(r.passed for r in report.rows if cov is None or cov.in_scope(r))
    item = ItemResult(index, label, "pass" if rows_ok else "fail", full=True, rows=_measured(report),
                      outputs=screen or [], screen_failed=screen is not None)
    if fd is not None and not rows_ok:
        item.first_divergence, item.first_divergence_tf = fd.caffe_layer, fd.tf_layer
        d = report.to_dict()
        item.example = {"first_divergence": d["first_divergence"],
                        "first_divergence_by": report.meta.get("first_divergence_by", "")}
    return item, report, cm, tm


def _error(index: int, label: str, e: BaseException) -> ItemResult:
    msg = str(e).strip().splitlines()
    text = msg[0] if msg else ""
    return ItemResult(index, label, "error", error=f"{type(e).__name__}: {text}"[:2000])


def _learn(report: Any, cmetas: list[Any], tmetas: list[Any], sess: _Session) -> dict[str, Any]:
    """The output pairs of the screen: Caffe tops no layer consumes, and their rows' TF probes."""
    consumed = {i for p in cmetas for i in p.inputs}
    outputs = [p for p in cmetas if p.kind != "Input" and p.name not in consumed]
    rows = {r.caffe_layer: r for r in report.rows}
    tby = {p.name: p for p in tmetas}
    cby = {p.name: p for p in cmetas}
    pairs, why = [], ""
    for o in outputs:
        r = rows.get(o.name)
        if r is None:
            why = f"Caffe output {o.name!r} has no TF counterpart"
            break
        if r.metrics is None or r.tf_layer not in tby:
            why = f"Caffe output {o.name!r} cannot be compared with {r.tf_layer!r} ({r.note or 'no value'})"
            break
        cm, tm = cby[o.name], tby[r.tf_layer]
        pairs.append(OutPair(o.name, r.tf_layer, cm.layout, tuple(cm.flat_shape) if cm.flat_shape else None,
                             tm.layout, tuple(tm.flat_shape) if tm.flat_shape else None, r.tolerance or report.tolerance))
    if not outputs:
        why = "the Caffe net has no output blob"
    cov = report.coverage
    return {
        "coverage": "" if cov is None or cov.partial is True or cov.passes else cov.problem(),
        "pairs": [] if why else pairs,
        "why": why,
        "rows": [(r.caffe_layer, r.tf_layer) for r in report.rows],
        "outputs": [o.name for o in outputs],
        "tf_batch": sess.tf_batch,
        "caffe_batch": sess.caffe_batch,
        "caffe_source": report.caffe_source,
        "tf_source": report.tf_source,
        "tolerance": report.tolerance,
    }


def run_task(spec: ModelSpec, task: Task) -> TaskResult:
    """Run one task in this process (the models are opened once per process)."""
    try:
        sess = _session(spec)
    except Exception as e:  # noqa: BLE001 - the caller stops the sweep with it
        return TaskResult([], fatal=e)
    with sess.lock:
        return _run(sess, task)


def _run(sess: _Session, task: Task) -> TaskResult:
    results: dict[int, ItemResult] = {}
    learned = None
    if task.pairs is None:  # learn from the first item that can be compared
        index, label, sample, _ = task.items[0]
        try:
            item, report, cm, tm = _full_item(sess, index, label, sample)
            learned = _learn(report, cm, tm, sess)
        except Exception as e:  # noqa: BLE001 - one input's failure is that input's error row
            _after_error(sess, e)
            item = _error(index, label, e)
        return TaskResult([item], learned)
    pairs = task.pairs
    screen = [(i, lab, s) for i, lab, s, full in task.items if not full and pairs]
    for index, label, sample, full in task.items:
        if full or not pairs:
            results[index] = _safe_full(sess, index, label, sample)
    for k in range(0, len(screen), max(task.batch, 1)):
        chunk = screen[k:k + max(task.batch, 1)]
        try:
            measured = sess.screen([s for _, _, s in chunk], pairs, task.batch)
        except Exception as e:  # noqa: BLE001
            _after_error(sess, e)
            if len(chunk) == 1:
                results[chunk[0][0]] = _error(chunk[0][0], chunk[0][1], e)
                continue
            # one input of the batch may be the culprit: each alone, so only that one is lost
            for i, lab, s in chunk:
                try:
                    m1 = sess.screen([s], pairs, task.batch)[0]
                except Exception as e1:  # noqa: BLE001
                    _after_error(sess, e1)
                    results[i] = _error(i, lab, e1)
                    continue
                results[i] = _screened(sess, i, lab, s, m1)
            continue
        for (i, lab, s), m in zip(chunk, measured, strict=True):
            results[i] = _screened(sess, i, lab, s, m)
    return TaskResult([results[i] for i, *_ in task.items])


def _screened(sess: _Session, index: int, label: str, sample: Any, measured: list[Measured]) -> ItemResult:
    if all(m[5] for m in measured):
        return ItemResult(index, label, "pass", outputs=measured)
    try:  # the outputs failed: the full comparison says where it starts (and decides the verdict)
        item, *_ = _full_item(sess, index, label, sample, screen=measured)
        return item
    except Exception as e:  # noqa: BLE001
        _after_error(sess, e)
        return _error(index, label, e)


def _safe_full(sess: _Session, index: int, label: str, sample: Any) -> ItemResult:
    try:
        return _full_item(sess, index, label, sample)[0]
    except Exception as e:  # noqa: BLE001
        _after_error(sess, e)
        return _error(index, label, e)


def _after_error(sess: _Session, e: BaseException) -> None:
    if isinstance(e, CaffeError):
        sess.caffe_failed()


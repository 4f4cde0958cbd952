"""``layerparity.sweep``: many inputs through both models, one verdict.

The parent process reads the inputs, cuts them into tasks, hands the tasks to a
:class:`concurrent.futures.Executor` (local worker processes by default, a Dask
cluster through ``client.get_executor()``) and folds the results, in input
order, into :class:`~layerparity.sweeper.stats.SweepStats`. It never imports
Caffe or TensorFlow itself unless the sweep runs in-process (``workers=0``).
See docs/sweep.md.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from concurrent.futures.process import BrokenProcessPool, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ..errors import InputDataError, InputError
from ..inputs import Preprocess
from ..result import Tolerance
from .feed import open_source
from .stats import RELATIVE_ACCURACY, ErrorRow, FailureGroup, ItemResult, LayerStats, SweepStats
from .worker import ModelSpec, OutPair, Task, TaskResult, init_worker, run_task

__all__ = ["sweep", "SweepResult", "default_workers"]

SWEEP_FORMAT_VERSION = 1
#: Screened inputs per task, in forward batches (a task's inputs cross the process
#: boundary together; a worker that dies takes them all down, then each is retried alone).
TASK_INPUTS = 8


@dataclass
class SweepResult:
    """The verdict of a sweep: truthy when every input passed (none failed, none errored, not interrupted)."""

    caffe_source: str
    tf_source: str
    mode: str  # "outputs-first" | "every-layer"
    tolerance: Tolerance | None
    total: int | None  # inputs in the source, when known up front
    counts: dict[str, int]
    outputs: list[tuple[str, str]]
    layers: list[LayerStats]
    failures: list[FailureGroup]
    errors: list[ErrorRow]
    worst_inputs: list[dict[str, Any]]
    sample: list[int]
    interrupted: bool = False
    seconds: float = 0.0
    executor: str = ""
    workers: int | None = None
    batch: int = 1
    notes: list[str] = field(default_factory=list)
    relative_accuracy: float = RELATIVE_ACCURACY  # of the p50/p99 sketches
    #: What the port leaves out of the Caffe net (missing outputs, uncovered computing
    #: layers), the same for every input: a sweep with it does not pass, whatever the
    #: inputs' numbers ("" when the comparison covers the net or ``partial`` was declared).
    coverage_problem: str = ""

    def __bool__(self) -> bool:
        return self.passed

    @property
    def passed(self) -> bool:
        return (not self.interrupted and self.counts["failed"] == 0 and self.counts["errors"] == 0
                and not self.coverage_problem)

    @property
    def completed(self) -> int:
        return self.counts["completed"]

    @property
    def failed_inputs(self) -> dict[str, list[int]]:
        """First divergent Caffe layer -> indices of the failing inputs (the first ``max_listed`` of each)."""
        return {g.caffe_layer: [i for i, _ in g.inputs] for g in self.failures}

    def layer(self, caffe_layer: str) -> LayerStats:
        for lay in self.layers:
            if lay.caffe_layer == caffe_layer:
                return lay
        raise KeyError(f"no statistics for Caffe layer {caffe_layer!r}")

    def to_dict(self) -> dict[str, Any]:
        from ..report.sweep import sweep_to_dict

        return sweep_to_dict(self)

    def write_json(self, path: str | os.PathLike[str]) -> None:
        from ..report.sweep import write_sweep_json

        write_sweep_json(self, path)

    def write_html(self, path: str | os.PathLike[str]) -> None:
        from ..report.sweep import write_sweep_html

        write_sweep_html(self, path)

    def summary(self) -> str:
        from ..report.sweep import format_sweep_summary

        return format_sweep_summary(self)


def default_workers() -> int:
    """One worker per two cores: each runs TensorFlow and drives a Caffe process."""
    return max(1, (os.cpu_count() or 2) // 2)


class _InlineExecutor(Executor):
    """Runs each task at once in this process (``workers=0``)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kw: Any) -> Future:
        f: Future = Future()
        try:
            f.set_result(fn(*args, **kw))
        except Exception as e:  # noqa: BLE001 - delivered by result(), like a pool's
            f.set_exception(e)
        return f


def sweep(
    caffe_model: Any,
    tf_model: Any,
    inputs: Any,
    *,
    caffe_weights: Any = None,
    mapping: Mapping[str, str] | str | os.PathLike[str] | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    tolerances: Mapping[str, Any] | None = None,
    own_error: bool = True,
    diagnose: bool = True,
    every_layer: bool = False,
    sample: int = 8,
    seed: int = 0,
    batch: int | None = None,
    preprocess: Preprocess | None = None,
    executor: Executor | None = None,
    workers: int | None = None,
    progress: bool | None = None,
    max_listed: int = 1000,
    worst: int = 10,
    caffe_options: Mapping[str, Any] | None = None,
    tf_options: Mapping[str, Any] | None = None,
    on_input: Callable[[ItemResult], None] | None = None,
    partial: bool | list[str] | tuple[str, ...] = False,
    custom_objects: Mapping[str, Any] | None = None,
    keras_modules: Sequence[str | os.PathLike[str]] = (),
    caffe_pythonpath: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
) -> SweepResult:
    """Check a Caffe net against its TF port on many inputs; statistics in constant memory.

    ``inputs``: a folder of images (preprocessed by ``preprocess``), an ``.npy``/``.npz``
    stack, an image file, an array (a stack along axis 0) or any iterable of arrays;
    NCHW, one input per batch item (see :mod:`layerparity.sweeper.feed`).

    Outputs first: every input runs both models plainly and only the Caffe output blobs
    are compared with their TF counterparts; inputs whose outputs fail, and a seeded
    sample of ``sample`` inputs (input 0 among them: its full comparison teaches the
    output pairing), get the full per-layer comparison of :func:`compare_models`.
    ``every_layer=True`` compares every layer of every input.

    ``executor``: any :class:`concurrent.futures.Executor` (``client.get_executor()`` of
    dask.distributed); default: ``workers`` local processes (default
    :func:`default_workers`), each opening both models once; ``workers=0`` runs in this
    process (the default for models given as objects rather than paths). ``batch``:
    inputs per plain forward (default: the TF model's fixed batch, else the Caffe
    prototxt's). ``progress``: a Rich progress bar on stderr (default: when stderr is a
    terminal). ``on_input(item)`` is called with each input's
    :class:`~layerparity.sweeper.stats.ItemResult`, in input order, as it is counted. Ctrl-C stops the workers and re-raises the KeyboardInterrupt with the partial
    result (``interrupted=True``) as its ``sweep_result`` attribute. The other keywords are
    :func:`compare_models`' (``atol`` is relative, as there: times each layer's max|caffe|,
    so ``atol=1e-5`` allows 3e-05 on a layer whose largest value is 3); as there, the sweep passes only if the comparison covers the
    whole Caffe net (``coverage_problem`` says what it leaves out) unless ``partial`` declares
    a partial check.

    Custom layers, as for :func:`compare_models`: ``custom_objects`` (the Keras classes a
    ``.keras``/``.h5`` port uses; short for ``tf_options={"custom_objects": ...}``; in
    worker processes they must be importable by module name), ``keras_modules`` (``.py``
    files or module names that register them, imported by every worker before it loads
    the port: the CLI's ``--keras-module``) and ``caffe_pythonpath`` (the folder(s) of the
    Caffe net's Python layer modules; short for ``caffe_options={"pythonpath": ...}``).
    """
    from ..metrics import ToleranceTable

    ToleranceTable(rtol, atol, tolerances)  # fail fast on bad tolerances
    if isinstance(mapping, (str, os.PathLike)):
        from ..alignment import load_mapping

        mapping = load_mapping(mapping)  # checked here; the workers get the mapping, not the file
    if sample < 0 or max_listed < 0 or worst < 0:
        raise InputError("sweep: sample, max_listed and worst must be >= 0")
    if batch is not None and (not isinstance(batch, int) or batch < 1):
        raise InputError(f"sweep: batch must be a positive integer, got {batch!r}")
    tf_opts = dict(tf_options or {})
    if custom_objects is not None:
        tf_opts["custom_objects"] = custom_objects
    c_opts = dict(caffe_options or {})
    if caffe_pythonpath is not None:
        dirs = [caffe_pythonpath] if isinstance(caffe_pythonpath, (str, os.PathLike)) else list(caffe_pythonpath)
        c_opts["pythonpath"] = tuple(os.fspath(d) for d in dirs)
    modules = tuple(os.fspath(m) for m in ([keras_modules] if isinstance(keras_modules, (str, os.PathLike))
                                           else keras_modules))
    if modules:  # a bad module fails here, once, not in every worker
        from ..backends.keras import import_keras_module

        for m in modules:
            import_keras_module(m)
    spec = ModelSpec(
        caffe_model=caffe_model if not isinstance(caffe_model, os.PathLike) else os.fspath(caffe_model),
        tf_model=tf_model if not isinstance(tf_model, os.PathLike) else os.fspath(tf_model),
        caffe_weights=os.fspath(caffe_weights) if isinstance(caffe_weights, os.PathLike) else caffe_weights,
        mapping=mapping,
        rtol=rtol, atol=atol, tolerances=tolerances, own_error=own_error, diagnose=diagnose,
        caffe_options=tuple(sorted(c_opts.items())),
        tf_options=tuple(sorted(tf_opts.items())),
        keras_modules=modules,
        partial=partial if isinstance(partial, bool) else tuple(str(x) for x in partial),
    )
    for what, p in (("caffe_model", spec.caffe_model), ("caffe_weights", spec.caffe_weights), ("tf_model", spec.tf_model)):
        if isinstance(p, str) and not os.path.exists(p):
            raise InputError(f"{what} {p}: no such file or folder")
    source = open_source(inputs, preprocess)
    notes: list[str] = []
    owned = executor is None
    if owned:
        if workers is None:
            workers = 0 if spec.in_memory else default_workers()
        if workers > 0 and _importing_main_in_a_worker():
            raise InputError("sweep: called while a spawned worker process imports the main script; call it under "
                             "`if __name__ == '__main__':` (worker processes import the main module again)")
        if workers > 0 and spec.in_memory:
            raise InputError("sweep: a model given as an object can only run in this process (workers=0); "
                             "give paths to run in worker processes")
    run = _Run(spec, source, executor, workers, every_layer=every_layer, sample=sample, seed=seed, batch=batch,
               progress=_want_progress(progress), max_listed=max_listed, worst=worst, notes=notes, on_input=on_input)
    return run.go()


def _importing_main_in_a_worker() -> bool:
    main = sys.modules.get("__main__")
    return multiprocessing.parent_process() is not None and getattr(main, "__name__", "") == "__mp_main__"


def _want_progress(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


class _Run:
    """One sweep: the executor, the window of tasks in flight, the reorder buffer, the stats."""

    def __init__(self, spec: ModelSpec, source: Any, executor: Executor | None, workers: int | None, *,
                 every_layer: bool, sample: int, seed: int, batch: int | None, progress: bool,
                 max_listed: int, worst: int, notes: list[str], on_input: Callable[[ItemResult], None] | None = None
                 ) -> None:
        self.spec, self.source = spec, source
        self.user_executor = executor
        self.workers = workers
        self.every_layer = every_layer
        self.sample_n, self.seed = sample, seed
        self.batch_arg = batch
        self.progress = progress
        self.notes = notes
        self.stats = SweepStats(max_listed=max_listed, worst=worst)
        self.pool: Executor | None = None
        self.pending: dict[Future, Task] = {}
        self.buffer: dict[int, ItemResult] = {}
        self.next_fold = 0
        self.learned: dict[str, Any] | None = None
        self.pairs: list[OutPair] = []
        self.batch = 1
        self.sampled: set[int] = set()
        self.t0 = time.perf_counter()
        self._advance: Callable[[ItemResult], None] = lambda item: None
        self.on_input = on_input

    # executors ---------------------------------------------------------------------------
    def _executor_name(self) -> str:
        if self.user_executor is not None:
            return type(self.user_executor).__module__.split(".")[0] + "." + type(self.user_executor).__name__
        return "in-process" if not self.workers else "processes"

    def _new_pool(self) -> Executor:
        if self.user_executor is not None:
            return self.user_executor
        if not self.workers:
            return _InlineExecutor()
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=init_worker, initargs=(self.spec,))

    def _kill_pool(self) -> None:
        """Stop our worker processes now (Ctrl-C, a broken pool): their Caffe workers exit on EOF."""
        pool, self.pool = self.pool, None
        if pool is None or self.user_executor is not None:
            return
        if isinstance(pool, ProcessPoolExecutor):
            procs = list(getattr(pool, "_processes", {}).values())
            queue = getattr(pool, "_call_queue", None)
            if queue is not None:  # a task half-written to a killed worker must not hold up our exit
                queue.cancel_join_thread()
            pool.shutdown(wait=False, cancel_futures=True)
            for p in procs:
                try:
                    p.kill()
                except Exception:  # noqa: BLE001
                    pass
            for p in procs:
                try:
                    p.join(5)
                except Exception:  # noqa: BLE001
                    pass

    def _close_pool(self) -> None:
        if self.pool is not None and self.user_executor is None:
            if isinstance(self.pool, ProcessPoolExecutor):
                self.pool.shutdown(wait=True)
            self.pool = None
        elif self.workers == 0 and self.user_executor is None:
            from .worker import close_sessions

            close_sessions()

    # the run ---------------------------------------------------------------------------
    def go(self) -> SweepResult:
        from .progress import progress_bar

        self.pool = self._new_pool()
        interrupted: KeyboardInterrupt | None = None
        try:
            with progress_bar(self.source.length, self.progress) as advance:
                self._advance = advance
                try:
                    self._loop()
                except KeyboardInterrupt as stop:
                    interrupted = stop
        finally:
            if interrupted is not None:
                for fut in self.pending:  # a user's executor (a Dask cluster) keeps running otherwise
                    fut.cancel()
                self._kill_pool()
            else:
                self._close_pool()
            if self.workers == 0 and self.user_executor is None:
                from .worker import close_sessions

                close_sessions()
        for i in sorted(self.buffer):  # results that arrived before an earlier one: keep them
            self.stats.add(self.buffer.pop(i))
        result = self._result(interrupted)
        if interrupted is not None:
            interrupted.sweep_result = result  # type: ignore[attr-defined]
            raise interrupted
        return result

    def _items(self) -> Iterator[tuple[int, str, Any]]:
        for index, (label, sample) in enumerate(self.source):
            yield index, label, sample

    def _choose_sample(self) -> None:
        n, k = self.source.length, self.sample_n
        if n is None:
            self.sampled = set(range(max(k, 1)))
            return
        rest = min(max(k - 1, 0), max(n - 1, 0))
        self.sampled = {0, *random.Random(self.seed).sample(range(1, n), rest)} if n else set()

    def _loop(self) -> None:
        self._choose_sample()
        items = self._items()
        # learn the output pairing from the first input that can be compared in full
        for index, label, sample in items:
            if isinstance(sample, InputDataError):
                self._fold([ItemResult(index, label, "error", error=f"{type(sample).__name__}: {sample}")])
                continue
            res = self._run_alone(Task([(index, label, sample, True)], pairs=None))
            if res.learned is not None:
                self._learn(res.learned)  # first: the layers' order and which are outputs
            self._fold(res.items)
            if res.learned is not None:
                break
        else:
            return
        window = max(2, 2 * (self.workers or 1)) if self.user_executor is None else 4
        if self.user_executor is not None:
            window = max(window, 2 * _executor_width(self.user_executor))
        pending_screen: list[tuple[int, str, Any, bool]] = []
        per_task = max(self.batch, TASK_INPUTS // self.batch * self.batch)
        for index, label, sample in items:
            if isinstance(sample, InputDataError):
                self._fold([ItemResult(index, label, "error", error=f"{type(sample).__name__}: {sample}")])
                continue
            full = self.every_layer or index in self.sampled
            if full:
                self._submit(Task([(index, label, sample, True)], self.pairs, self.batch), window)
                continue
            pending_screen.append((index, label, sample, False))
            if len(pending_screen) >= per_task:
                self._submit(Task(pending_screen, self.pairs, self.batch), window)
                pending_screen = []
        if pending_screen:
            self._submit(Task(pending_screen, self.pairs, self.batch), window)
        while self.pending:
            self._collect(wait(list(self.pending), return_when=FIRST_COMPLETED).done)

    def _learn(self, learned: dict[str, Any]) -> None:
        if not learned["rows"]:
            raise InputError("sweep: no Caffe layer could be paired with a TF layer (names and structure differ); "
                             "pass a mapping (--mapping FILE)")
        self.learned = learned
        self.pairs = list(learned["pairs"])
        self.stats.set_layers(learned["rows"], [p.caffe for p in self.pairs] or learned["outputs"])
        if not self.pairs and not self.every_layer:
            self.every_layer = True
            self.notes.append(f"outputs-first screening is off: {learned['why']}; every input is compared in full")
        tf_batch = learned.get("tf_batch")
        if self.batch_arg is not None:
            if tf_batch and self.batch_arg != tf_batch:
                raise InputError(f"sweep: batch={self.batch_arg}, but the TF model takes a fixed batch of {tf_batch}")
            self.batch = self.batch_arg
        else:
            self.batch = int(tf_batch or learned.get("caffe_batch") or 1)

    def _submit(self, task: Task, window: int) -> None:
        while len(self.pending) >= window:
            self._collect(wait(list(self.pending), return_when=FIRST_COMPLETED).done)
        assert self.pool is not None
        try:
            fut = self.pool.submit(run_task, self.spec, task)
        except BrokenProcessPool:
            self._recover([task, *self._drain_broken()])
            return
        self.pending[fut] = task

    def _collect(self, done: Any) -> None:
        broken: list[Task] = []
        for fut in done:
            task = self.pending.pop(fut)
            try:
                res: TaskResult = fut.result()
            except BrokenProcessPool:
                broken.append(task)
                continue
            except Exception as e:  # noqa: BLE001 - a task lost to the executor (Dask KilledWorker, ...)
                self._fold([_lost(i, lab, e) for i, lab, _, _ in task.items])
                continue
            self._check(res)
            self._fold(res.items)
        if broken:
            self._recover(broken + self._drain_broken())

    @staticmethod
    def _check(res: TaskResult) -> TaskResult:
        """The models could not be opened where the task ran: no input can be checked, stop."""
        if res.fatal is not None:
            raise res.fatal
        return res

    def _drain_broken(self) -> list[Task]:
        """The pool broke: fold what finished before, return the tasks in flight (lost with it)."""
        lost = []
        for fut, task in list(self.pending.items()):
            del self.pending[fut]
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._fold(self._check(fut.result()).items)
            else:
                lost.append(task)
        return lost

    def _recover(self, tasks: list[Task]) -> None:
        """A worker died: every task in flight is lost. Retry each alone in a fresh pool, so only
        the input that kills a worker is lost; a task that was alone in flight holds the culprit."""
        self._restart_pool()
        tasks = sorted(tasks, key=lambda t: t.items[0][0])
        if len(tasks) == 1:
            self._fold(self._split(tasks[0]).items)
            return
        for task in tasks:
            self._fold(self._run_alone(task).items)

    def _restart_pool(self) -> None:
        self._kill_pool()
        self.pool = self._new_pool()

    def _run_alone(self, task: Task) -> TaskResult:
        """Run one task with nothing else in flight; if it kills its worker, split it."""
        assert self.pool is not None
        try:
            res = self.pool.submit(run_task, self.spec, task).result()
        except BrokenProcessPool:
            self._restart_pool()
            return self._split(task)
        except Exception as e:  # noqa: BLE001 - lost to the executor: that input's error row
            return TaskResult([_lost(i, lab, e) for i, lab, _, _ in task.items])
        return self._check(res)

    def _split(self, task: Task) -> TaskResult:
        """A task that killed its worker: one input is that input's error row; several are each run alone."""
        if len(task.items) == 1:
            i, lab, _, _ = task.items[0]
            return TaskResult([ItemResult(i, lab, "error", error=(
                "WorkerDied: the worker process died while checking this input "
                "(killed, out of memory, or a crash in a framework)"))])
        items: list[ItemResult] = []
        for it in task.items:
            items += self._run_alone(Task([it], task.pairs, task.batch)).items
        return TaskResult(items)

    def _fold(self, items: list[ItemResult]) -> None:
        for item in items:
            self.buffer[item.index] = item
        while self.next_fold in self.buffer:
            item = self.buffer.pop(self.next_fold)
            self.stats.add(item)
            self._advance(item)
            if self.on_input is not None:
                self.on_input(item)
            self.next_fold += 1

    def _result(self, interrupted: KeyboardInterrupt | None) -> SweepResult:
        st, learned = self.stats, self.learned or {}
        mode = "every-layer" if self.every_layer else "outputs-first"
        return SweepResult(
            caffe_source=learned.get("caffe_source", str(self.spec.caffe_model)),
            tf_source=learned.get("tf_source", str(self.spec.tf_model)),
            mode=mode,
            tolerance=learned.get("tolerance"),
            total=self.source.length,
            counts=dict(st.counts),
            outputs=[(p.caffe, p.tf) for p in self.pairs],
            layers=st.layer_list(),
            failures=st.failure_groups(),
            errors=list(st.errors),
            worst_inputs=st.worst_inputs(),
            sample=sorted(i for i in self.sampled if i < self.next_fold),  # of the inputs checked
            interrupted=interrupted is not None,
            seconds=time.perf_counter() - self.t0,
            executor=self._executor_name(),
            workers=self.workers if self.user_executor is None else None,
            batch=self.batch,
            notes=list(self.notes),
            coverage_problem=learned.get("coverage", ""),
        )


def _lost(index: int, label: str, e: BaseException) -> ItemResult:
    msg = str(e).strip().splitlines()
    return ItemResult(index, label, "error", error=f"{type(e).__name__}: {msg[0] if msg else ''}"[:2000])


def _executor_width(ex: Executor) -> int:
    """How many tasks the executor runs at once, where it says (a pool's workers, a Dask cluster's threads)."""
    n = getattr(ex, "_max_workers", None)
    if isinstance(n, int) and n > 0:
        return n
    client = getattr(ex, "_client", None)
    if client is not None:
        try:
            return max(1, sum(client.nthreads().values()))
        except Exception:  # noqa: BLE001
            return 2
    return 2


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None

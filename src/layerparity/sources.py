"""Where the compared values come from: trace objects, archives, or two live streams.

A live stream (a backend's ``iter_capture``) is drained into a :class:`Spool`:
values in memory up to a budget, the rest in a raw spill file. Two live streams
are drained at the same time (:func:`drain_both`), Caffe in a thread, so both
models run at once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from .errors import ArchiveError, InputError
from .trace import ArchiveReader, Probe, Trace

__all__ = ["Spool", "Side", "Stream", "drain_both", "stream_budget", "write_all"]


class Stream:
    """An iterable of probes with a ``source`` (so a spool keeps where they came from)."""

    def __init__(self, it: Iterable[Probe], source: str) -> None:
        self._it, self.source = it, source

    def __iter__(self) -> Iterator[Probe]:
        return iter(self._it)


def write_all(f: Any, data: memoryview, path: str) -> None:
    """Write every byte of ``data`` to the unbuffered file ``f``.

    An unbuffered ``write`` may write fewer bytes than asked (a full disk, a signal);
    the spill file is read back by offset, so a short write would corrupt every
    later value. It is retried until done, and a write that makes no progress is an error.
    """
    view = memoryview(data).cast("B")
    while view:
        n = f.write(view)
        if not n:
            raise OSError(f"{path}: could not write the spilled values (disk full?)")
        view = view[n:]


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


def stream_budget(framework: str) -> int:
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


class Spool:
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
        for p in checked_probes(it, self.framework):
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
            write_all(self._file, data.reshape(-1).view(np.uint8).data, self._path)
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


class Side:
    """One trace being compared: metadata up front, values streamed in order."""

    def __init__(self, obj: Any, framework: str, tmpdir: Callable[[], str]) -> None:
        self.framework = framework
        self.reader: ArchiveReader | None = None
        self.trace: Trace | None = None
        self.spool: Spool | None = None
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
            # comparison, so it is drained into a spool first (see :func:`drain_both`).
            self.source = getattr(obj, "source", "") or f"<{framework} stream>"
            self.spool = Spool(framework, self.source, tmpdir, stream_budget(framework))
            self.stream: Iterable[Any] = obj
            self.metas = []
        else:
            raise InputError(
                f"{framework} side: expected a Trace, a trace archive path or an iterable of Probes, "
                f"got {type(obj).__name__}"
            )
        self.by_name = {p.name: p for p in self.metas}

    def recorded_framework(self) -> str:
        """The framework a recorded trace says it came from ("" for a live stream)."""
        if self.trace is not None:
            return self.trace.framework or ""
        if self.reader is not None:
            return self.reader.framework or ""
        return ""

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


def drain_both(cs: Side, ts: Side) -> None:
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


def checked_probes(it: Iterable[Any], framework: str) -> Iterator[Probe]:
    for p in it:
        if not isinstance(p, Probe):
            raise InputError(f"{framework} stream: expected Probe objects, got {type(p).__name__}")
        yield p

"""Open models kept across checks: one backend per (model, weights, options).

A Caffe backend starts a worker process and loads the net; a TF backend loads
(and, for graphs, freezes) the model. A test suite that checks one port fifty
times should pay that once. :class:`ModelCache` hands out open backends keyed by
what they were opened from:

- a model given as a path (prototxt, caffemodel, ``.keras``/``.h5``/``.pb``/
  ``.tflite`` file, SavedModel directory) by its absolute path **and the SHA-256 of
  its contents** (a directory: of every file in it). A file changed on disk gets a
  new backend, and the old one is closed. Hashes are remembered per file
  ``stat`` (size, mtime, inode, ctime), so an unchanged file is not read again;
- a live object (``keras.Model``, ``caffe.Net``, ``tf.compat.v1.Session``...) by
  identity (the cache keeps it alive while it holds its backend);
- the constructor options (``caffe_options`` / ``tf_options``), by value.

A backend whose Caffe worker died (a Caffe abort on some input) is replaced on its
next use. At most ``max_open`` backends stay open (more only while all are in
use); the least recently used idle one is closed first. Each lease holds the backend's lock, so two threads never drive
one backend at once. The cache is per process (pytest-xdist workers each have one).

>>> from layerparity.model_cache import ModelCache                     # doctest: +SKIP
>>> with ModelCache() as models:
...     for x in inputs:
...         with models.caffe("deploy.prototxt", "w.caffemodel") as cb, models.tf("port.keras") as tb:
...             report = layerparity.compare_models(cb, tb, x)   # loads each model once
...     models.opened                                            # {'caffe': 1, 'tf': 1}
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any

from .errors import InputError

__all__ = ["ModelCache", "content_digest"]

_KINDS = ("caffe", "tf")


def _stat_key(path: str) -> tuple:
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


class _Digests:
    """SHA-256 of files and directories, remembered per path while its ``stat`` is unchanged."""

    def __init__(self) -> None:
        self._memo: dict[str, tuple[tuple, str]] = {}
        self._lock = threading.Lock()

    def file(self, path: str) -> str:
        key = _stat_key(path)
        with self._lock:
            hit = self._memo.get(path)
        if hit is not None and hit[0] == key:
            return hit[1]
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        digest = h.hexdigest()
        if _stat_key(path) == key:  # not rewritten while we read it
            with self._lock:
                self._memo[path] = (key, digest)
        return digest

    def path(self, path: str) -> str:
        if os.path.isdir(path):
            h = hashlib.sha256()
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    full = os.path.join(root, name)
                    h.update(os.path.relpath(full, path).encode("utf-8", "surrogateescape") + b"\0")
                    h.update(self.file(full).encode() + b"\n")
            return h.hexdigest()
        return self.file(path)


_DIGESTS = _Digests()


def content_digest(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, or of a directory's files (relative names and contents)."""
    return _DIGESTS.path(os.path.abspath(os.fspath(path)))


def _freeze(value: Any, keep: list[Any]) -> Any:
    """A hashable stand-in for an option value (unhashable objects by identity, kept alive)."""
    if isinstance(value, Mapping):
        return ("map", tuple(sorted((str(k), _freeze(v, keep)) for k, v in value.items())))
    if isinstance(value, (list, tuple)):
        return ("seq", tuple(_freeze(v, keep) for v in value))
    if isinstance(value, (set, frozenset)):
        return ("set", frozenset(_freeze(v, keep) for v in value))
    if isinstance(value, os.PathLike):
        return ("path", os.fspath(value))
    try:
        hash(value)
    except TypeError:
        keep.append(value)
        return ("id", id(value))
    return value


class _Entry:
    def __init__(self, backend: Any, digests: tuple, keep: list[Any]) -> None:
        self.backend = backend
        self.digests = digests
        self.keep = keep  # live models / option objects keyed by identity
        self.lock = threading.RLock()
        self.leases = 0  # leases handed out and not yet ended (entries in use are never evicted)


class ModelCache:
    """Open backends, one per (model, weights, options); see the module docstring."""

    def __init__(self, max_open: int = 8) -> None:
        if not isinstance(max_open, int) or max_open < 1:
            raise InputError(f"ModelCache: max_open must be a positive integer, got {max_open!r}")
        self.max_open = max_open
        self.opened: dict[str, int] = {k: 0 for k in _KINDS}  # backends opened so far, per kind
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self._lock = threading.Lock()  # guards _entries and opened
        self._opening = threading.Lock()  # held while a backend is being opened or replaced

    # -- leases ----------------------------------------------------------------------
    def caffe(self, model: Any, weights: Any = None, options: Mapping[str, Any] | None = None) -> Any:
        """Context manager: the open Caffe backend of ``model`` (prototxt path or live ``caffe.Net``)
        with ``weights`` (caffemodel path) and ``options`` (``CaffeBackend`` keywords)."""
        return self._lease("caffe", model, weights, options)

    def tf(self, model: Any, options: Mapping[str, Any] | None = None) -> Any:
        """Context manager: the open TF backend of ``model`` (anything ``load_tf`` takes but a
        backend) with ``options`` (``load_tf`` keywords)."""
        return self._lease("tf", model, None, options)

    @contextmanager
    def _lease(self, kind: str, model: Any, weights: Any, options: Mapping[str, Any] | None) -> Iterator[Any]:
        entry = self._get(kind, model, weights, dict(options or {}))
        try:
            with entry.lock:
                yield entry.backend
        finally:
            with self._lock:
                entry.leases -= 1

    def open_sides(self, stack: ExitStack, caffe_model: Any, caffe_weights: Any, tf_model: Any,
                   kw: dict[str, Any]) -> tuple[Any, Any, Any, dict[str, Any]]:
        """For one check: replace each side that can be reused by its leased open backend.

        Takes and returns ``compare_models``' arguments (``caffe_model, caffe_weights,
        tf_model`` and its other keywords): a side given as a path or a live model
        becomes an open backend held in ``stack`` for the check, and its
        ``caffe_options`` / ``tf_options`` (plus ``tf_layout``, which ``compare_models``
        hands to ``load_tf``) become part of its key. Backends, traces, archives and
        anything this cannot open are passed on unchanged, for ``compare_models`` to use
        or to report.
        """
        kw = dict(kw)
        if _reusable_caffe(caffe_model):
            options = dict(kw.pop("caffe_options", None) or {})
            caffe_model = stack.enter_context(self.caffe(caffe_model, caffe_weights, options))
            caffe_weights = None
        if _reusable_tf(tf_model):
            options = dict(kw.pop("tf_options", None) or {})
            if kw.get("tf_layout") is not None:
                options["tf_layout"] = kw["tf_layout"]
            tf_model = stack.enter_context(self.tf(tf_model, options))
        return caffe_model, caffe_weights, tf_model, kw

    def backends(self, kind: str | None = None) -> list[Any]:
        """The open backends (``kind``: ``"caffe"`` or ``"tf"``), least recently used first."""
        with self._lock:
            return [e.backend for k, e in self._entries.items() if kind is None or k[0] == kind]

    def close(self) -> None:
        """Close every backend; the cache can be used again afterwards (it reopens on demand)."""
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        errors = []
        for e in reversed(entries):
            with e.lock:
                try:
                    e.backend.close()
                except Exception as exc:  # noqa: BLE001 - close the others, then report
                    errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> ModelCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"ModelCache({len(self._entries)} open, opened={self.opened})"

    # -- keys ------------------------------------------------------------------------
    def _ident(self, obj: Any, keep: list[Any]) -> tuple[Any, str | None]:
        """(slot part, content digest) of a model or weights argument."""
        if obj is None:
            return None, None
        if isinstance(obj, (str, os.PathLike)):
            path = os.path.abspath(os.fspath(obj))
            if os.path.exists(path):
                return ("path", path), _DIGESTS.path(path)
            return ("path", path), None  # opening it gives the error
        keep.append(obj)
        return ("id", id(obj)), None

    def _get(self, kind: str, model: Any, weights: Any, options: dict[str, Any]) -> _Entry:
        keep: list[Any] = []
        m_slot, m_digest = self._ident(model, keep)
        w_slot, w_digest = self._ident(weights, keep)
        slot = (kind, m_slot, w_slot, _freeze(options, keep))
        digests = (m_digest, w_digest)
        entry = self._lookup(slot, digests)
        if entry is not None:
            return entry
        with self._opening:  # one opener at a time: two threads never open the same model twice
            entry = self._lookup(slot, digests)
            if entry is not None:
                return entry
            with self._lock:
                stale = self._entries.pop(slot, None)  # its file changed on disk, or its worker died
            retired = [stale] if stale is not None else []
            try:
                entry = _Entry(_open(kind, model, weights, options), digests, keep)
            except BaseException:
                self._retire(retired)
                raise
            with self._lock:
                self.opened[kind] += 1
                entry.leases += 1
                self._entries[slot] = entry
                idle = [k for k, e in self._entries.items() if e.leases == 0]  # least recent first
                for k in idle[:max(0, len(self._entries) - self.max_open)]:
                    retired.append(self._entries.pop(k))
        self._retire(retired)  # outside _opening: a lease in use elsewhere may need it to finish
        return entry

    @staticmethod
    def _retire(entries: list[_Entry]) -> None:
        for e in entries:
            with e.lock:  # waits for a lease in use to end
                _close_quietly(e.backend)

    def _lookup(self, slot: tuple, digests: tuple) -> _Entry | None:
        """The entry of ``slot`` if it is current (same contents, backend alive), as most recent."""
        with self._lock:
            entry = self._entries.get(slot)
            if entry is not None and entry.digests == digests and getattr(entry.backend, "alive", True):
                self._entries.move_to_end(slot)
                entry.leases += 1
                return entry
        return None


def _reusable_caffe(model: Any) -> bool:
    from .trace import is_archive

    if isinstance(model, (str, os.PathLike)):
        return os.path.isfile(model) and not is_archive(model)
    return type(model).__name__ == "Net" and hasattr(model, "_forward")  # a live caffe.Net


def _reusable_tf(model: Any) -> bool:
    from .backends.base import Backend
    from .trace import Trace, is_archive

    if model is None or isinstance(model, (Backend, Trace)):
        return False
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        return os.path.exists(path) and not path.lower().endswith(".prototxt") and not is_archive(path)
    return True


def _open(kind: str, model: Any, weights: Any, options: dict[str, Any]) -> Any:
    from . import compare

    if kind == "caffe":
        return compare.open_caffe_model(model, weights, options, [])
    if isinstance(model, (str, os.PathLike)) and os.fspath(model).lower().endswith((".keras", ".h5", ".hdf5")):
        from .demo import register_keras_objects  # the demo's LRN layer, used by Keras files

        register_keras_objects()
    return compare.open_tf_model(model, options, [])


def _close_quietly(backend: Any) -> None:
    try:
        backend.close()
    except Exception:  # noqa: BLE001 - a dead worker may fail to close; it is being replaced
        pass

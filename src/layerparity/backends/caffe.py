"""Caffe capture backend: every intermediate blob of a real ``caffe.Net``.

>>> from layerparity.backends.caffe import CaffeBackend            # doctest: +SKIP
>>> with CaffeBackend("deploy.prototxt", "weights.caffemodel") as cb:
...     trace = cb.capture(x)           # x: NCHW float array
...     trace["conv1"].value.shape, trace["relu1"].blob
((1, 96, 55, 55), 'conv1')

By default every pycaffe call runs in a persistent worker process
(``python -m layerparity.backends._caffe_worker``), so glog aborts on a malformed
prototxt or a caffemodel that does not fit the net become a :class:`CaffeError`
instead of killing the caller. The worker streams one probe at a time over a pipe
(JSON header + raw ``.npy`` bytes, never pickle) and never imports TensorFlow.
``python=`` runs the worker under another interpreter (a legacy Caffe install);
:meth:`CaffeBackend.from_net` wraps a live ``caffe.Net`` in this process instead.

:meth:`CaffeBackend.forward` runs one plain ``net.forward()`` in the worker and returns
only the probes asked for.

Probes: one per layer run (``layer/top`` for layers with several tops), read right
after that layer ran, so in-place chains (``conv1`` then ``relu1`` on blob
``conv1``) give both values. Split layers that Caffe inserts on its own are not
probes: their consumers' ``inputs`` name the original producer.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import warnings
import weakref
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from ..errors import CaffeError, FrameworkMissingError, InputDataError, InputError, InternalError
from ..trace import Probe, Trace
from ._caffe_protocol import Channel, PeerClosed, PeerTimeout, ProtocolError, widen_pipe
from .base import Backend, InputSpec

WORKER_MODULE = "layerparity.backends._caffe_worker"
_PKG_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_PHASES = ("TEST", "TRAIN")

__all__ = ["CaffeBackend", "capture_caffe"]


def capture_caffe(prototxt: str | os.PathLike[str], weights: str | os.PathLike[str] | None = None,
                  inputs: Mapping[str, np.ndarray] | np.ndarray | None = None, **kw: Any) -> Trace:
    """Load a Caffe net in a worker, run it once on ``inputs`` (NCHW) and return the whole trace.

    ``kw`` goes to :class:`CaffeBackend` (``batch``, ``phase``, ``python``, ``timeout``, ``env``).
    """
    if inputs is None:
        raise InputError(f"{os.fspath(prototxt)}: capture_caffe needs inputs= (an NCHW array or a dict name -> array)")
    with CaffeBackend(prototxt, weights, **kw) as backend:
        return backend.capture(inputs)


def python_layer_path(pythonpath: Any, source: str) -> list[str]:
    """``pythonpath=`` as absolute folders: one path or a list of them, each an existing folder."""
    if pythonpath is None:
        return []
    items = [pythonpath] if isinstance(pythonpath, (str, os.PathLike)) else pythonpath
    try:
        items = list(items)
    except TypeError:
        raise InputError(f"{source}: pythonpath must be a folder or a list of folders, "
                         f"got {type(pythonpath).__name__}") from None
    out = []
    for p in items:
        if not isinstance(p, (str, os.PathLike)):
            raise InputError(f"{source}: pythonpath entries must be folder paths, got {type(p).__name__} {p!r}")
        d = os.path.abspath(os.fspath(p))
        if not os.path.isdir(d):
            raise InputError(f"{source}: pythonpath folder {os.fspath(p)} does not exist (or is not a folder); "
                             f"it should hold the modules of the net's Python layers")
        if d not in out:
            out.append(d)
    return out


#: What a missing-Caffe message tells the user to do.
CAFFE_INSTALL_HINT = ("Caffe is not on PyPI (there is no layerparity[caffe] extra): `make setup` builds it "
                      "into .venv (docs/install.md), or pass python= an interpreter whose pycaffe works")

class CaffeBackend(Backend):
    """A Caffe net (prototxt + optional caffemodel), isolated in a worker process.

    prototxt, weights
        The net definition and (optionally) its trained weights. Without weights
        the layers keep their fillers.
    batch
        Reshape the inputs to this batch size at load (the prototxt's otherwise).
        ``capture`` and ``forward`` reshape the net to the batch and spatial size of
        the arrays they are given, as ``blob.reshape`` + ``net.reshape()`` do;
        ``input_specs()`` gives ``None`` for the H and W that no layer fixes, and a
        size a layer fixes (an InnerProduct's weights) is refused naming that layer.
    phase
        ``"TEST"`` (default) or ``"TRAIN"``.
    python
        Interpreter that runs the worker (default: this one). Point it at the
        Python of a legacy Caffe install; it needs NumPy and pycaffe, and finds
        layerparity's worker through ``PYTHONPATH``.
    timeout
        Seconds to wait for any answer from the worker before killing it.
    env
        Extra environment variables for the worker (``PYTHONPATH`` of a legacy
        pycaffe, ``LD_LIBRARY_PATH``...).
    pythonpath
        Folders (one path or a list) holding the modules of the net's Python layers
        (``type: "Python"``, ``python_param { module: ... }``): put on the worker's
        ``PYTHONPATH``, in front of any it already has. Each module is imported
        before Caffe builds the net; a missing module, an import that fails, or an
        exception in a layer's ``setup``/``reshape``/``forward`` is a
        :class:`CaffeError` naming the layer and the module (docs/python-layers.md).
    """

    framework = "caffe"

    def __init__(self, prototxt: str | os.PathLike[str], weights: str | os.PathLike[str] | None = None, *,
                 batch: int | None = None, phase: str = "TEST", python: str | os.PathLike[str] | None = None,
                 timeout: float = 600, env: Mapping[str, str] | None = None,
                 pythonpath: str | os.PathLike[str] | list[str | os.PathLike[str]] | tuple | None = None) -> None:
        prototxt = os.path.abspath(os.fspath(prototxt))
        weights = os.path.abspath(os.fspath(weights)) if weights is not None else None
        super().__init__(source=prototxt)
        self._engine: _WorkerEngine | _InProcessEngine | None = None
        phase = str(phase).upper()
        if phase not in _PHASES:
            raise InputError(f"{prototxt}: phase must be 'TEST' or 'TRAIN', got {phase!r}")
        if batch is not None and (not isinstance(batch, (int, np.integer)) or isinstance(batch, bool) or batch < 1):
            raise InputError(f"{prototxt}: batch must be a positive integer, got {batch!r}")
        if not os.path.isfile(prototxt):
            raise CaffeError(f"{prototxt}: no such prototxt file")
        if weights is not None and not os.path.isfile(weights):
            raise CaffeError(f"{weights}: no such weights file (given with {prototxt})")
        if timeout is None or timeout <= 0:
            raise InputError(f"{prototxt}: timeout must be a positive number of seconds, got {timeout!r}")
        self.prototxt = prototxt
        self.weights_path = weights
        self.pythonpath = python_layer_path(pythonpath, prototxt)
        wenv = dict(env or {})
        if self.pythonpath:
            given = wenv.get("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
            wenv["PYTHONPATH"] = os.pathsep.join([*self.pythonpath, *([given] if given else [])])
        self._engine = _WorkerEngine(prototxt, weights, phase, None if batch is None else int(batch),
                                     os.fspath(python) if python else sys.executable, float(timeout), wenv)
        missing = self._engine.desc.get("weights_missing") or []
        if missing:
            warnings.warn(
                f"{weights}: {len(missing)} layer(s) of {prototxt} with parameters are not in the caffemodel "
                f"and keep their fillers: {', '.join(missing[:8])}{'...' if len(missing) > 8 else ''}",
                UserWarning, stacklevel=2,
            )

    @classmethod
    def from_net(cls, net: Any, source: str = "<live net>", *, prototxt: str | os.PathLike[str] | None = None,
                 phase: str | None = None, pythonpath: Any = None) -> CaffeBackend:
        """Wrap a live ``caffe.Net`` (runs in this process: no isolation from glog aborts).

        Layer parameters come from ``prototxt`` when given, else from the net itself
        (``net.save`` to a temporary file, which also writes its weights once).
        ``pythonpath`` is checked and otherwise unused: a live net's Python layers are
        already loaded (their modules were importable when the net was built).
        """
        self = cls.__new__(cls)
        Backend.__init__(self, source=str(source))
        self._engine = None
        self.prototxt = os.path.abspath(os.fspath(prototxt)) if prototxt is not None else None
        self.weights_path = None
        self.pythonpath = python_layer_path(pythonpath, str(source))
        self._engine = _InProcessEngine(net, self.prototxt, phase, str(source))
        return self

    # -- Backend hooks ---------------------------------------------------------------
    def _input_specs_impl(self) -> list[InputSpec]:
        out = []
        for i in self._live().desc["inputs"]:
            free = set(i.get("free", ()))
            shape = tuple(None if a in free else int(d) for a, d in enumerate(i["shape"]))
            out.append(InputSpec(i["name"], shape, "NCHW" if len(shape) == 4 else "NC" if len(shape) == 2 else ""))
        return out

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """The input blobs' current shapes (the prototxt's until a run reshapes them), batch first."""
        return {i["name"]: tuple(int(d) for d in i["shape"]) for i in self._live().desc["inputs"]}

    def normalize_inputs(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        """The base checks, after naming the layer that fixes a spatial size the inputs change."""
        desc = {i["name"]: i for i in self._live().desc["inputs"]}
        given = inputs if isinstance(inputs, Mapping) else ({next(iter(desc)): inputs} if len(desc) == 1 else {})
        for name, arr in given.items():
            d = desc.get(name)
            try:
                shape = np.shape(arr)
            except Exception:  # noqa: BLE001 - not array-like: the base checks say so
                continue
            if d is None or not d.get("pinned") or len(shape) != len(d["shape"]):
                continue
            for axis, why in sorted(d["pinned"].items(), key=lambda kv: int(kv[0])):
                if int(shape[int(axis)]) != int(d["shape"][int(axis)]):
                    raise InputDataError(self._pinned_message(name, tuple(int(x) for x in shape), d, why))
        return super().normalize_inputs(inputs)

    def _pinned_message(self, name: str, shape: tuple[int, ...], d: dict, why: dict) -> str:
        e = self._live()
        where = e._where(why["layer"]) if isinstance(e, _WorkerEngine) else self.source
        fixed = [int(a) for a in d["pinned"]]
        letters = "NCHW" if len(d["shape"]) == 4 else ""
        axes = " x ".join(letters[a] if letters else f"axis {a}" for a in fixed)
        sizes = " x ".join(str(d["shape"][a]) for a in fixed)
        return (f"{where}: input {name!r} has shape {shape}, but layer '{why['layer']}' ({why['type']}) fixes "
                f"its {axes} at {sizes} (the prototxt's size): it {why['why']}; only a net without such "
                f"a layer (fully convolutional) takes other sizes")

    def _forward_impl(self, inputs: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        """One plain ``net.forward()`` in the worker, returning only the probes ``names``.

        A probe whose blob a later in-place layer overwrites (``conv1`` under ``relu1``)
        is read when its layer has run: the net is run in pieces up to it, only then.
        """
        return self._live().forward(inputs, list(names))

    def _iter_capture_impl(self, inputs: dict[str, np.ndarray]) -> Iterator[Probe]:
        engine = self._live()
        for meta, value in engine.iter_probes(inputs):
            yield Probe(
                name=meta["name"], kind=meta["kind"], value=value, layer=meta["layer"], blob=meta["blob"],
                inputs=list(meta["inputs"]), params=meta["params"], layout=meta["layout"],
                flat_shape=tuple(meta["flat_shape"]) if meta.get("flat_shape") else None,
            )

    def capture(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> Trace:
        trace = super().capture(inputs)
        trace.meta = self.meta()  # after the run: the batch may have changed
        return trace

    def _weights_impl(self) -> dict[str, list[np.ndarray]]:
        return dict(self.iter_weights())

    def iter_weights(self) -> Iterator[tuple[str, list[np.ndarray]]]:
        """``(layer, [param arrays])`` in execution order, Caffe layout, one layer at a time."""
        return self._live().iter_weights()

    def meta(self) -> dict:
        e = self._live()
        d = e.desc
        out = {
            "batch": d.get("batch"),
            "phase": d.get("phase"),
            "caffe_version": d.get("caffe_version"),
            "prototxt": self.prototxt,
            "weights": self.weights_path,
            "isolated": e.isolated,
        }
        if e.isolated:
            out["python"] = e.python
        if self.pythonpath:
            out["pythonpath"] = list(self.pythonpath)
        if d.get("weights_missing"):
            out["weights_missing"] = list(d["weights_missing"])
        return out

    # -- extras ------------------------------------------------------------------------
    @property
    def layers(self) -> list[dict]:
        """Every layer Caffe runs, in order (``name``, ``type``, ``bottoms``, ``tops``), inserted Splits included."""
        return [dict(layer) for layer in self._live().desc["layers"]]

    def worker_info(self) -> dict:
        """What the worker runs: pid, interpreter, Caffe path and version, whether TensorFlow got imported."""
        e = self._live()
        if not e.isolated:
            raise InputError(f"{self.source}: this backend runs in-process (from_net); it has no worker")
        return e.debug()

    @property
    def alive(self) -> bool:
        """True while this backend can work: not closed, and its worker has not crashed or timed out."""
        e = self._engine
        return e is not None and not e.closed and getattr(e, "dead", None) is None

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()

    def __del__(self) -> None:  # the worker's finalizer also covers interpreter exit
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass

    def __repr__(self) -> str:
        e = self._engine
        how = "closed" if e is None or e.closed else "worker" if e.isolated else "in-process"
        return f"CaffeBackend({self.source!r}, {how})"

    def _live(self) -> _WorkerEngine | _InProcessEngine:
        if self._engine is None or self._engine.closed:
            raise InputError(f"{self.source}: this CaffeBackend is closed")
        return self._engine


# -- in-process ---------------------------------------------------------------------------


class _InProcessEngine:
    isolated = False

    def __init__(self, net: Any, prototxt: str | None, phase: str | None, source: str) -> None:
        try:
            import caffe  # noqa: PLC0415
        except Exception as e:  # noqa: BLE001
            raise FrameworkMissingError(
                f"{source}: pycaffe is not importable: {type(e).__name__}: {e}; {CAFFE_INSTALL_HINT}") from None
        from ._caffe_net import NetSession, UserError, parse_prototxt

        if not hasattr(net, "_layer_names") or not hasattr(net, "_forward"):
            raise InputError(f"{source}: from_net needs a caffe.Net, got {type(net).__name__}")
        pb = caffe.proto.caffe_pb2
        legacy = None
        if prototxt is not None:
            phase = (phase or "TEST").upper()
            known = list(caffe.layer_type_list()) if hasattr(caffe, "layer_type_list") else None
            try:
                parsed = parse_prototxt(prototxt, pb, caffe.TEST if phase == "TEST" else caffe.TRAIN, known)
            except UserError as e:
                raise CaffeError(str(e)) from None
            lps = {lp.name: lp for lp in parsed.layers}
            legacy = parsed.legacy_input
        else:
            netp = pb.NetParameter()
            with tempfile.TemporaryDirectory(prefix="layerparity-") as tmp:
                path = os.path.join(tmp, "net.caffemodel")
                net.save(path)
                with open(path, "rb") as f:
                    netp.ParseFromString(f.read())
            for lp in netp.layer:
                del lp.blobs[:]
            lps = {lp.name: lp for lp in netp.layer}
            if phase is None:
                phase = "TRAIN" if len(netp.layer) and netp.layer[0].HasField("phase") and netp.layer[0].phase == caffe.TRAIN else "TEST"
            first = netp.layer[0] if len(netp.layer) else None
            if first is not None and first.type == "Input" and first.name == "input" and "input" not in first.top:
                legacy = "input"  # Caffe's upgrade of legacy input: fields
        phase = phase.upper()
        if phase not in _PHASES:
            raise InputError(f"{source}: phase must be 'TEST' or 'TRAIN', got {phase!r}")
        self.session = NetSession(caffe, net, lps, phase, legacy)
        self.desc = self.session.describe()
        self.closed = False

    def iter_probes(self, feed: dict[str, np.ndarray]) -> Iterator[tuple[dict, np.ndarray]]:
        from ._caffe_net import UserError

        try:
            self.session.feed(feed)
            yield from self.session.iter_probes(copy=True)
        except UserError as e:  # a Python layer that raised, a bad input name
            raise CaffeError(str(e)) from None
        self.desc = self.session.describe()

    def forward(self, feed: dict[str, np.ndarray], names: list[str]) -> dict[str, np.ndarray]:
        from ._caffe_net import UserError

        self.session.feed(feed)
        try:
            out = self.session.forward(names)
        except UserError as e:
            raise CaffeError(str(e)) from None
        self.desc = self.session.describe()
        return {n: np.array(v) for n, v in out.items()}

    def iter_weights(self) -> Iterator[tuple[str, list[np.ndarray]]]:
        return self.session.iter_weights(copy=True)

    def close(self) -> None:
        self.closed = True
        self.session = None  # type: ignore[assignment]


# -- the worker ---------------------------------------------------------------------------


_PACKAGE_LINK: list[str] = []


def _package_path() -> str:
    """A folder holding only a link to this layerparity package, for the worker's ``PYTHONPATH``.

    Putting the package's parent folder there instead would, for an installed
    layerparity, expose this environment's whole site-packages (its NumPy...) to a
    foreign interpreter given with ``python=``.
    """
    if _PACKAGE_LINK and os.path.isdir(_PACKAGE_LINK[0]):
        return _PACKAGE_LINK[0]
    pkg = os.path.join(_PKG_PARENT, "layerparity")
    try:
        d = tempfile.mkdtemp(prefix="layerparity-path-")
        os.symlink(pkg, os.path.join(d, "layerparity"))
    except OSError:
        return _PKG_PARENT
    atexit.register(shutil.rmtree, d, True)
    _PACKAGE_LINK[:] = [d]
    return d


def _kill_worker(proc: subprocess.Popen, rfd: int, wfd: int, log: Any) -> None:
    for fd in (wfd,):
        try:
            os.close(fd)  # EOF on its stdin: the worker exits by itself
        except OSError:
            pass
    try:
        proc.wait(timeout=3)
    except Exception:  # noqa: BLE001
        try:
            proc.kill()
            proc.wait(timeout=3)
        except Exception:  # noqa: BLE001
            pass
    try:
        os.close(rfd)
    except OSError:
        pass
    try:
        log.close()
    except Exception:  # noqa: BLE001
        pass


class _WorkerProcess:
    """One worker subprocess: pipes, a temporary stderr log, send/recv with a timeout."""

    def __init__(self, python: str, timeout: float, env: dict[str, str], label: str) -> None:
        self.python = python
        self.timeout = timeout
        self.label = label
        self.log = tempfile.TemporaryFile(prefix="layerparity-caffe-", suffix=".log")
        wenv = dict(os.environ)
        wenv.update(env)
        wenv["GLOG_minloglevel"] = "0"  # keep every glog line: they explain aborts
        wenv["GLOG_logtostderr"] = "1"
        wenv["PYTHONPATH"] = os.pathsep.join(p for p in (_package_path(), wenv.get("PYTHONPATH", "")) if p)
        r_req, w_req = os.pipe()
        r_resp, w_resp = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [python, "-m", WORKER_MODULE], stdin=r_req, stdout=w_resp, stderr=self.log,
                env=wenv, close_fds=True,
            )
        except OSError as e:
            for fd in (w_req, r_resp):
                os.close(fd)
            self.log.close()
            raise FrameworkMissingError(f"{label}: cannot start the Caffe worker with python={python!r}: {e}") from None
        finally:
            os.close(r_req)
            os.close(w_resp)
        widen_pipe(w_req)
        widen_pipe(r_resp)
        self.chan = Channel(r_resp, w_req)
        self.mark = 0
        self._finalizer = weakref.finalize(self, _kill_worker, self.proc, r_resp, w_req, self.log)

    def send(self, header: dict, arrays: list[np.ndarray] = ()) -> None:
        self.mark = os.fstat(self.log.fileno()).st_size
        self.chan.send(header, arrays)

    def recv(self) -> tuple[dict, list[np.ndarray]]:
        return self.chan.recv(timeout=self.timeout)

    def read_log(self, start: int = 0, limit: int = 4 << 20) -> str:
        size = os.fstat(self.log.fileno()).st_size
        start = max(start, size - limit)
        data = os.pread(self.log.fileno(), size - start, start)
        return data.decode("utf-8", "replace")

    def wait_dead(self) -> int | None:
        try:
            return self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=5)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except Exception:  # noqa: BLE001
            pass

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.chan.send({"op": "exit"})
            except OSError:
                pass
        self._finalizer()


class _WorkerEngine:
    isolated = True

    def __init__(self, prototxt: str, weights: str | None, phase: str, batch: int | None,
                 python: str, timeout: float, env: dict[str, str]) -> None:
        self.prototxt = prototxt
        self.weights = weights
        self.phase = phase
        self.python = python
        self.timeout = timeout
        self.env = env
        self.closed = False
        self.dead: str | None = None
        self.lines: dict[str, int] = {}
        self.types: dict[str, str] = {}
        self.order: list[str] = []
        self._stream: object | None = None
        self._op = "start"
        self._last_index: int | None = None
        self._batch = batch
        self.proc = _WorkerProcess(python, timeout, env, prototxt)
        try:
            self.desc = self._load()
        except BaseException:
            self.close()
            raise

    # -- requests ------------------------------------------------------------------
    def _load(self) -> dict:
        self._op = "load"
        self._send({"op": "load", "prototxt": self.prototxt, "weights": self.weights,
                    "phase": self.phase, "batch": self._batch})
        while True:
            h, _ = self._recv()
            if h["op"] == "parsed":
                self.lines = {str(k): int(v) for k, v in h.get("lines", {}).items()}
                self.types = {n: t for n, t in h.get("layers", [])}
                self.order = [n for n, _ in h.get("layers", [])]
            elif h["op"] == "loaded":
                desc = h["desc"]
                self.types.update({layer["name"]: layer["type"] for layer in desc["layers"]})
                return desc
            else:
                raise self._fail(InternalError(f"unexpected worker message {h['op']!r} while loading"))

    def iter_probes(self, feed: dict[str, np.ndarray]) -> Iterator[tuple[dict, np.ndarray]]:
        self._settle()
        names = list(feed)
        self._last_index = None
        for h, arrays in self._stream_request("capture", {"op": "capture", "names": names},
                                              [feed[n] for n in names], "probe"):
            meta = h["probe"]
            self._last_index = meta.get("index")
            yield meta, arrays[0]

    def iter_weights(self) -> Iterator[tuple[str, list[np.ndarray]]]:
        self._settle()
        for h, arrays in self._stream_request("weights", {"op": "weights"}, [], "weights"):
            yield h["layer"], arrays

    def forward(self, feed: dict[str, np.ndarray], probes: list[str]) -> dict[str, np.ndarray]:
        self._settle()
        self._op = "forward"
        names = list(feed)
        self._send({"op": "forward", "names": names, "probes": probes}, [feed[n] for n in names])
        h, arrays = self._recv()
        if h["op"] != "values":
            raise self._fail(InternalError(f"unexpected worker message {h['op']!r} during forward"))
        if h.get("desc"):
            self.desc = h["desc"]
        return dict(zip(h["names"], arrays, strict=True))

    def _stream_request(self, op: str, header: dict, arrays: list[np.ndarray], item: str
                        ) -> Iterator[tuple[dict, list[np.ndarray]]]:
        """Send one request and yield its ``item`` messages as they arrive, until ``done``.

        Only one stream is open at a time: a new request first drains an abandoned
        one, which then refuses to resume.
        """
        self._op = op
        self._send(header, arrays)
        del arrays
        token = object()
        self._stream = token
        try:
            while True:
                try:
                    h, got = self._recv()
                except BaseException:
                    self._stream = None
                    raise
                if h["op"] == item:
                    yield h, got
                    del got
                    if self._stream is not token:
                        raise InputError(f"{self.prototxt}: this {op} stream was abandoned: another request "
                                         f"was made on the same CaffeBackend before it was consumed")
                elif h["op"] == "done":
                    if "desc" in h:
                        self.desc = h["desc"]
                    self._stream = None
                    return
                else:
                    self._stream = None
                    raise self._fail(InternalError(f"unexpected worker message {h['op']!r} during {op}"))
        finally:
            if self._stream is token and self.dead is None:
                self._drain()

    def debug(self) -> dict:
        self._settle()
        self._op = "debug"
        self._send({"op": "debug"})
        h, _ = self._recv()
        h.pop("arrays", None)
        h.pop("op", None)
        return h

    def _sleep(self, seconds: float) -> None:
        """Test hook: make the worker busy for ``seconds``."""
        self._settle()
        self._op = "sleep"
        self._send({"op": "sleep", "seconds": seconds})
        self._recv()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.proc.close()

    # -- plumbing ------------------------------------------------------------------
    def _settle(self) -> None:
        if self.closed:
            raise InputError(f"{self.prototxt}: this CaffeBackend is closed")
        if self.dead is not None:
            raise CaffeError(f"{self.dead} (the worker is gone; create a new CaffeBackend)")
        if self._stream is not None:
            self._drain()

    def _drain(self) -> None:
        """Read and drop the rest of an abandoned capture stream."""
        self._stream = None
        try:
            while True:
                h, _ = self._recv()
                if h["op"] == "done":
                    if "desc" in h:
                        self.desc = h["desc"]
                    return
        except Exception:  # noqa: BLE001 - recorded in self.dead; the next request reports it
            return

    def _send(self, header: dict, arrays: list[np.ndarray] = ()) -> None:
        if self.dead is not None:
            raise CaffeError(f"{self.dead} (the worker is gone; create a new CaffeBackend)")
        try:
            self.proc.send(header, arrays)
        except OSError:  # broken pipe: it died before reading
            raise self._died() from None
        except BaseException:  # KeyboardInterrupt mid-message: the pipe is out of step
            self._desync()
            raise

    def _recv(self) -> tuple[dict, list[np.ndarray]]:
        try:
            h, arrays = self.proc.recv()
        except PeerTimeout:
            self.proc.kill()
            msg = (f"{self.prototxt}: the Caffe worker did not answer within {self.timeout:g} s "
                   f"{_DOING.get(self._op, 'working')}; it was killed (raise timeout= for slow nets)")
            raise self._fail(CaffeError(msg)) from None
        except PeerClosed:
            raise self._died() from None
        except ProtocolError as e:
            self.proc.kill()
            raise self._fail(InternalError(f"{self.prototxt}: garbled answer from the Caffe worker: {e}")) from None
        except BaseException:  # KeyboardInterrupt mid-message: the pipe is out of step
            self._desync()
            raise
        if h.get("op") == "error":
            kind = h.get("kind")
            if kind == "input":
                raise CaffeError(h["message"])
            if kind == "missing":
                self.proc.kill()
                raise self._fail(FrameworkMissingError(f"{self.prototxt}: {h['message']}; {CAFFE_INSTALL_HINT}"))
            raise InternalError(f"{self.prototxt}: the Caffe worker failed: {h.get('message')}\n{h.get('traceback', '')}")
        return h, arrays

    def _desync(self) -> None:
        self.proc.kill()
        self._stream = None
        self.dead = f"{self.prototxt}: a request to the Caffe worker was interrupted {_DOING.get(self._op, '')}"

    def _fail(self, exc: Exception) -> Exception:
        self.dead = str(exc)
        return exc

    def _died(self) -> CaffeError:
        rc = self.proc.wait_dead()
        log = self.proc.read_log(self.proc.mark)
        return self._fail(CaffeError(self._explain(log, rc)))  # type: ignore[return-value]

    # -- explaining a dead worker ------------------------------------------------------
    def _where(self, layer: str | None) -> str:
        if not layer:
            return self.prototxt
        line = self.lines.get(layer)
        return f"{self.prototxt}:{line}" if line else self.prototxt

    def _layer_desc(self, layer: str) -> str:
        t = self.types.get(layer)
        return f"layer '{layer}'" + (f" ({t})" if t else "")

    def _explain(self, log: str, rc: int | None) -> str:
        how = _how(rc)
        fatal, src = _fatal(log)
        stage = _last_stage(log)
        if self._op == "load" and stage in ("build", None, "parse"):
            if stage in (None, "parse"):
                return f"{self.prototxt}: the Caffe worker died while starting or reading the files ({how}): {fatal or _tail(log)}"
            layer = _glog_layer(log) or _layer_in(fatal)
            if not layer:
                layer, fatal2, src2 = self._locate()
                if layer and fatal2:
                    fatal, src = fatal2, src2
            detail = f"{_shorten(fatal) or 'no message'}"
            if layer:
                return (f"{self._where(layer)}: {self._layer_desc(layer)}: Caffe refused the layer: {detail} "
                        f"[Caffe {how}{_at(src)}]")
            return f"{self.prototxt}: Caffe refused the net: {detail} [Caffe {how}{_at(src)}]"
        if self._op == "load" and stage == "python":
            return (f"{self.prototxt}: the Caffe worker died while importing the modules of the net's Python "
                    f"layers ({how}): {_shorten(fatal) or _tail(log)}")
        if self._op == "load" and stage == "weights":
            layer = _layer_in(fatal)
            problem = _weights_problem(fatal)
            if layer:
                return (f"{self.weights}: does not fit {self._where(layer)}: {self._layer_desc(layer)}: "
                        f"{problem} [Caffe {how}{_at(src)}]")
            hint = ""
            if "Failed to parse NetParameter" in (fatal or "") and self.weights and os.path.getsize(self.weights) > 536870912:
                hint = " (this Caffe's protobuf reader stops at 512 MiB)"
            return f"{self.weights}: Caffe could not load these weights for {self.prototxt}: {problem}{hint} [Caffe {how}{_at(src)}]"
        if self._op == "load" and stage == "batch":
            layer = _layer_in(fatal) or self._layer_from_source(src)
            if layer:
                return (f"{self._where(layer)}: {self._layer_desc(layer)}: Caffe could not reshape it for batch "
                        f"{self._batch}: {_shorten(fatal) or _tail(log)} [Caffe {how}{_at(src)}]")
            return (f"{self.prototxt}: Caffe could not reshape the net to batch {self._batch}: "
                    f"{_shorten(fatal) or _tail(log)} [Caffe {how}{_at(src)}]")
        if self._op == "forward":
            if stage == "feed":
                return (f"{self.prototxt}: Caffe could not reshape the net to the given input shapes: "
                        f"{_shorten(fatal) or _tail(log)} [Caffe {how}{_at(src)}]")
            steps = re.findall(r"^layerparity-layer: (\d+)$", log, re.M)
            layers = self.desc["layers"] if hasattr(self, "desc") else []
            if steps and int(steps[-1]) < len(layers):
                layer = layers[int(steps[-1])]["name"]
                return (f"{self._where(layer)}: {self._layer_desc(layer)}: Caffe aborted while running it: "
                        f"{_shorten(fatal) or _tail(log)} [Caffe {how}{_at(src)}]")
        if self._op == "capture":
            if stage == "feed":
                return (f"{self.prototxt}: Caffe could not reshape the net to the given input shapes: "
                        f"{_shorten(fatal) or _tail(log)} [Caffe {how}{_at(src)}]")
            layer = self._next_layer()
            if layer:
                return (f"{self._where(layer)}: {self._layer_desc(layer)}: Caffe aborted while running it: "
                        f"{_shorten(fatal) or _tail(log)} [Caffe {how}{_at(src)}]")
        return f"{self.prototxt}: the Caffe worker died ({how}) {_DOING.get(self._op, '')}: {_shorten(fatal) or _tail(log)}"

    def _layer_from_source(self, src: str | None) -> str | None:
        """``reshape_layer.cpp:87`` -> the net's only Reshape layer, if there is exactly one."""
        m = re.match(r"(\w+?)_layer\.(?:cpp|cu|hpp)", os.path.basename((src or "").split(":")[0]))
        if not m:
            return None
        stem = m.group(1).replace("_", "").lower()
        found = [n for n, t in self.types.items() if t.lower() == stem]
        return found[0] if len(found) == 1 else None

    def _next_layer(self) -> str | None:
        layers = self.desc["layers"] if hasattr(self, "desc") else []
        start = -1 if self._last_index is None else self._last_index
        for i in range(start + 1, len(layers)):
            if layers[i]["type"] != "Input":
                return layers[i]["name"]
        return None

    def _locate(self) -> tuple[str | None, str | None, str | None]:
        """Build each layer alone in a fresh worker to find the one Caffe refuses."""
        try:
            probe = _WorkerProcess(self.python, self.timeout, self.env, self.prototxt)
        except Exception:  # noqa: BLE001
            return None, None, None
        try:
            probe.send({"op": "locate", "prototxt": self.prototxt, "phase": self.phase})
            try:
                probe.recv()
                return None, None, None  # every layer builds alone: not a single-layer problem
            except (PeerClosed, PeerTimeout, ProtocolError):
                probe.kill()
                probe.wait_dead()
            log = probe.read_log(0)
            marks = re.findall(r"^layerparity-locate: (\d+) (.*)$", log, re.M)
            if not marks:
                return None, None, None
            last = log.rfind("layerparity-locate: ")
            fatal, src = _fatal(log[last:])
            return marks[-1][1], fatal, src
        finally:
            probe.close()


_DOING = {
    "load": "while loading the net",
    "capture": "while running the net",
    "forward": "while running the net",
    "weights": "while reading the weights",
    "debug": "while answering a debug request",
    "sleep": "while sleeping (test hook)",
}

_GLOG = re.compile(r"^([IWEF])\d{4,8} +\d\d:\d\d:\d\d\.\d+ +\d+ +([^\]\s]+)\] ?(.*)$")


def _fatal(log: str) -> tuple[str | None, str | None]:
    """Caffe's last words: the glog ``F`` line (message, source location), else a protobuf or Python error."""
    for line in log.splitlines():
        m = _GLOG.match(line)
        if m and m.group(1) == "F":
            return m.group(3).strip(), m.group(2)
    for line in log.splitlines():
        if "Check failed" in line:
            return line.strip(), None
    pb = [line for line in log.splitlines() if line.startswith("[libprotobuf ERROR") or line.startswith("[libprotobuf FATAL")]
    if pb:
        return pb[-1].split("] ", 1)[-1], None
    errs = [line for line in log.splitlines() if re.match(r"^[A-Za-z_.]*(Error|Exception)\b.*:", line)]
    if errs:
        return errs[-1], None
    return None, None


def _shorten(msg: str | None) -> str | None:
    if msg is None:
        return None
    msg = re.sub(r"\(known types: ([^)]{0,200})[^)]*\)", lambda m: f"(known types: {m.group(1)}...)", msg)
    return msg if len(msg) < 800 else msg[:800] + "..."


def _at(src: str | None) -> str:
    return f" in {src}" if src else ""


def _how(rc: int | None) -> str:
    if rc is None:
        return "worker vanished"
    if rc < 0:
        try:
            return f"aborted the worker with {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed the worker with signal {-rc}"
    return f"worker exited with code {rc}"


def _last_stage(log: str) -> str | None:
    stages = re.findall(r"^layerparity-stage: (\w+)$", log, re.M)
    return stages[-1] if stages else None


def _glog_layer(log: str) -> str | None:
    """Upstream Caffe logs ``Creating layer X`` / ``Setting up X`` at INFO (this fork does not)."""
    found = None
    for line in log.splitlines():
        m = _GLOG.match(line)
        if m and m.group(1) == "I":
            mm = re.match(r"(?:Creating layer|Setting up) (\S+)$", m.group(3).strip())
            if mm:
                found = mm.group(1)
    return found


def _layer_in(msg: str | None) -> str | None:
    if not msg:
        return None
    for pat in (r"layer '([^']+)'", r"for layer (\S+)", r"[Ll]ayer (\S+?)[:,]? "):
        m = re.search(pat, msg)
        if m:
            return m.group(1)
    return None


def _weights_problem(fatal: str | None) -> str:
    if not fatal:
        return "no message from Caffe"
    m = re.search(r"Cannot copy param (\d+) weights from layer '[^']+'; shape mismatch\.\s+Source param shape is "
                  r"([\d ]+?) \((\d+)\); target param shape is ([\d ]+?) \((\d+)\)", fatal)
    if m:
        j, src, ns, tgt, nt = m.groups()
        return (f"shape mismatch for param {j}: the caffemodel holds ({', '.join(src.split())}) [{ns} values], "
                f"the prototxt's layer needs ({', '.join(tgt.split())}) [{nt} values]")
    m = re.search(r"\((\d+) vs\. (\d+)\) Incompatible number of blobs for layer (\S+)", fatal)
    if m:
        tgt, src, _ = m.groups()
        return (f"the caffemodel holds {src} parameter blob(s) for this layer, the prototxt's layer has {tgt} "
                f"(bias_term differs?)")
    return _shorten(fatal) or ""


def _tail(log: str, n: int = 3) -> str:
    lines = [line for line in log.splitlines() if line.strip() and not line.startswith("layerparity-")]
    return " | ".join(lines[-n:]) if lines else "no output"

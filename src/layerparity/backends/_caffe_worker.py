"""The Caffe worker: ``python -m layerparity.backends._caffe_worker``.

Runs every pycaffe call for :class:`layerparity.backends.caffe.CaffeBackend` in a
process of its own, so that glog's ``LOG(FATAL)``/``CHECK`` aborts (and the odd
segfault) on a bad prototxt or caffemodel cannot kill the caller. It reads
requests on stdin and answers on stdout with the framing of
:mod:`._caffe_protocol` (JSON header + raw ``.npy`` bytes; never pickle).
Anything else that would go to stdout is sent to stderr, which the parent keeps in
a temporary file and reads after a crash to explain it.

Requests (``op``): ``load``, ``capture``, ``forward``, ``weights``, ``locate``, ``debug``,
``sleep``, ``exit``. Progress markers written to stderr (``layerparity-stage: X``,
``layerparity-layer: i``, ``layerparity-locate: i name``) tell the parent how far the worker got.

This module imports only the standard library, NumPy and (lazily) Caffe. It never
imports TensorFlow.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback


def _mark(text: str) -> None:
    os.write(2, ("\nlayerparity-" + text + "\n").encode("utf-8", "replace"))


def main() -> int:
    # The protocol owns the original stdin/stdout; fd 1 becomes stderr so that a
    # stray print (ours, Caffe's or a Python layer's) cannot corrupt it.
    in_fd = os.dup(0)
    out_fd = os.dup(1)
    os.dup2(2, 1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    sys.stdout = sys.stderr

    from ._caffe_protocol import Channel, PeerClosed, widen_pipe

    widen_pipe(out_fd)
    widen_pipe(in_fd)
    chan = Channel(in_fd, out_fd)
    state = {"caffe": None, "session": None, "parsed": None}

    while True:
        try:
            header, arrays = chan.recv()
        except PeerClosed:
            return 0
        op = header.get("op")
        try:
            if op == "exit":
                chan.send({"op": "bye"})
                return 0
            handler = _HANDLERS.get(op)
            if handler is None:
                chan.send({"op": "error", "kind": "internal", "message": f"unknown request {op!r}"})
                continue
            handler(chan, state, header, arrays)
        except BrokenPipeError:
            return 0
        except Exception as e:  # noqa: BLE001 - every failure goes back to the parent
            from ._caffe_net import UserError

            if isinstance(e, UserError):
                chan.send({"op": "error", "kind": "input", "message": str(e)})
            elif isinstance(e, (IOError, OSError)) and op == "load":
                chan.send({"op": "error", "kind": "input", "message": f"{type(e).__name__}: {e}"})
            else:
                chan.send({"op": "error", "kind": "internal", "message": f"{type(e).__name__}: {e}",
                           "traceback": traceback.format_exc()})


def _import_caffe(state):
    if state["caffe"] is None:
        import caffe  # noqa: PLC0415 - lazily, and only here

        caffe.set_mode_cpu()
        state["caffe"] = caffe
    return state["caffe"]


def _op_load(chan, state, header, arrays):
    from ._caffe_net import load_session

    try:
        caffe = _import_caffe(state)
    except Exception as e:  # noqa: BLE001
        chan.send({"op": "error", "kind": "missing",
                   "message": f"pycaffe is not importable by {sys.executable}: {type(e).__name__}: {e}"})
        return

    def on_parsed(parsed):
        state["parsed"] = parsed
        chan.send({"op": "parsed", "lines": parsed.lines,
                   "layers": [[lp.name, lp.type] for lp in parsed.layers]})

    session = load_session(caffe, header["prototxt"], header.get("weights"), header.get("phase", "TEST"),
                           header.get("batch"), stage=lambda s: _mark("stage: " + s), on_parsed=on_parsed)
    state["session"] = session
    chan.send({"op": "loaded", "desc": session.describe()})


def _op_capture(chan, state, header, arrays):
    session = state["session"]
    if session is None:
        chan.send({"op": "error", "kind": "internal", "message": "capture before load"})
        return
    feed = dict(zip(header["names"], arrays))  # noqa: B905 - worker runs on Python < 3.10 too
    _mark("stage: feed")
    session.feed(feed)
    del arrays, feed
    _mark("stage: forward")
    shapes = {n: list(session.net.blobs[n].data.shape) for n in header["names"]}
    for meta, value in session.iter_probes(copy=False):
        chan.send({"op": "probe", "probe": meta}, [value])
    session.ran_shapes = shapes
    chan.send({"op": "done", "desc": session.describe()})


def _op_forward(chan, state, header, arrays):
    """One plain forward; answers the values of the probes ``header["probes"]``.

    When the input shapes differ from the last run's, the layers run one at a time
    after a ``layerparity-layer: i`` marker, so a layer that cannot take the new
    shape is named if Caffe aborts; otherwise the whole net runs in one call.
    """
    session = state["session"]
    if session is None:
        chan.send({"op": "error", "kind": "internal", "message": "forward before load"})
        return
    feed = dict(zip(header["names"], arrays))  # noqa: B905 - worker runs on Python < 3.10 too
    _mark("stage: feed")
    session.feed(feed)
    shapes = {n: list(a.shape) for n, a in feed.items()}
    del arrays, feed
    _mark("stage: forward")
    stepped = bool(header.get("step")) or session.ran_shapes != shapes
    out = session.forward(list(header["probes"]), (lambda i: _mark(f"layer: {i}")) if stepped else None)
    session.ran_shapes = shapes
    names = list(out)
    chan.send({"op": "values", "names": names, "desc": session.describe() if stepped else None},
              [out[n] for n in names])


def _op_weights(chan, state, header, arrays):
    session = state["session"]
    for name, blobs in session.iter_weights(copy=False):
        chan.send({"op": "weights", "layer": name}, blobs)
    chan.send({"op": "done"})


def _op_locate(chan, state, header, arrays):
    from ._caffe_net import locate_failure, parse_prototxt

    caffe = _import_caffe(state)
    phase = header.get("phase", "TEST")
    phase_id = caffe.TEST if phase == "TEST" else caffe.TRAIN
    known = list(caffe.layer_type_list()) if hasattr(caffe, "layer_type_list") else None
    parsed = parse_prototxt(header["prototxt"], caffe.proto.caffe_pb2, phase_id, known)
    with tempfile.TemporaryDirectory(prefix="layerparity-locate-") as tmp:
        locate_failure(caffe, parsed, phase, tmp, lambda i, name: _mark(f"locate: {i} {name}"))
    chan.send({"op": "located", "layer": None})


def _op_debug(chan, state, header, arrays):
    from ._caffe_net import tensorflow_loaded

    caffe = state["caffe"]
    chan.send({
        "op": "debug",
        "pid": os.getpid(),
        "python": sys.executable,
        "python_version": sys.version.split()[0],
        "tensorflow_imported": tensorflow_loaded(),
        "caffe_imported": "caffe" in sys.modules,
        "caffe_file": getattr(caffe, "__file__", None),
        "caffe_version": getattr(caffe, "__version__", None),
        "modules": len(sys.modules),
        "layerparity_file": getattr(sys.modules.get("layerparity"), "__file__", None),
    })


def _op_sleep(chan, state, header, arrays):
    time.sleep(float(header.get("seconds", 0)))
    chan.send({"op": "slept"})


_HANDLERS = {
    "load": _op_load,
    "capture": _op_capture,
    "forward": _op_forward,
    "weights": _op_weights,
    "locate": _op_locate,
    "debug": _op_debug,
    "sleep": _op_sleep,
}


if __name__ == "__main__":
    sys.exit(main())

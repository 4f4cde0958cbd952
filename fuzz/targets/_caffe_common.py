"""Shared by the prototxt and caffemodel targets: the Caffe backend's in-process checker."""

from __future__ import annotations

import glob
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_STATE: dict = {}


def caffe_bits():
    """(caffe_pb2, TEST phase id, known layer types) from the real pycaffe, imported once."""
    if not _STATE:
        import caffe

        _STATE["pb"] = caffe.proto.caffe_pb2
        _STATE["test"] = caffe.TEST
        _STATE["known"] = list(caffe.layer_type_list())
    return _STATE["pb"], _STATE["test"], _STATE["known"]


def zoo_prototxts(max_bytes: int = 1 << 17) -> list[str]:
    paths = sorted(glob.glob(os.path.join(ROOT, "fixtures", "zoo", "*.prototxt")))
    return [p for p in paths if os.path.getsize(p) <= max_bytes]


def scratch(workdir: str, tag: str) -> str:
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else workdir
    d = os.path.join(base, f"lp-fuzz-{tag}-{os.getpid()}")
    os.makedirs(d, exist_ok=True)
    return d

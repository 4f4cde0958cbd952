"""The pipe protocol between :mod:`layerparity.backends.caffe` and its Caffe worker.

One message is::

    b"LPC1" | uint32 big-endian header length | UTF-8 JSON header | array 0 | array 1 | ...

The header's ``"arrays"`` entry lists the byte length of each array that follows.
Each array is a complete ``.npy`` file (magic, header, raw C-order data). Arrays
are written straight from the source buffer and read straight into a freshly
allocated ``numpy.empty``: one copy on each side of the pipe, no base64, no
pickle (object dtypes are refused on both sides).

Both ends use plain file descriptors (``os.read``/``os.write``), never Python's
buffered streams, so ``select`` timeouts are exact. This module needs only the
standard library and NumPy: the worker may run under another Python (a legacy
Caffe install) that has nothing else.
"""

from __future__ import annotations

import io
import json
import os
import select
import struct
import time

import numpy as np

MAGIC = b"LPC1"
_PREFIX = struct.Struct(">4sI")
_MAX_HEADER = 256 * 1024 * 1024


class ProtocolError(Exception):
    """The other side sent something that is not a message (a bug, or a corrupted pipe)."""


class PeerClosed(EOFError):
    """The other side closed the pipe (the worker exited or was killed)."""


class PeerTimeout(TimeoutError):
    """Nothing arrived within the timeout."""


def npy_preamble(arr: np.ndarray) -> bytes:
    """The ``.npy`` magic and header for a C-contiguous array."""
    buf = io.BytesIO()
    d = np.lib.format.header_data_from_array_1_0(arr)
    try:
        np.lib.format.write_array_header_1_0(buf, d)
    except ValueError:  # header longer than 65535 bytes: format 2.0
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, d)
    return buf.getvalue()


class Channel:
    """A message channel over two file descriptors (read end, write end)."""

    def __init__(self, rfd: int, wfd: int) -> None:
        self.rfd = rfd
        self.wfd = wfd
        self.received = 0  # messages read so far (tests use it to check laziness)

    # -- writing -------------------------------------------------------------
    def _write_all(self, data) -> None:
        mv = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
        while len(mv):
            n = os.write(self.wfd, mv)
            mv = mv[n:]

    def send(self, header: dict, arrays=()) -> None:
        """Write one message. ``arrays`` are sent as raw ``.npy`` bytes (no pickle)."""
        prepared = []
        for a in arrays:
            a = np.asarray(a)
            if a.dtype.hasobject:
                raise ProtocolError("refusing to send an object array")
            if not a.flags.c_contiguous:
                a = np.ascontiguousarray(a)
            pre = npy_preamble(a)
            prepared.append((pre, a))
        header = dict(header)
        header["arrays"] = [len(pre) + a.nbytes for pre, a in prepared]
        body = json.dumps(header, ensure_ascii=False, allow_nan=True).encode("utf-8")
        self._write_all(_PREFIX.pack(MAGIC, len(body)) + body)
        for pre, a in prepared:
            self._write_all(pre)
            if a.nbytes:
                self._write_all(memoryview(a.reshape(-1).view(np.uint8)))

    # -- reading -------------------------------------------------------------
    def _readinto(self, mv: memoryview, deadline: float | None) -> None:
        while len(mv):
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PeerTimeout()
                r, _, _ = select.select([self.rfd], [], [], remaining)
                if not r:
                    raise PeerTimeout()
            n = os.readv(self.rfd, [mv])
            if n == 0:
                raise PeerClosed()
            mv = mv[n:]

    def _read(self, n: int, deadline: float | None) -> bytearray:
        buf = bytearray(n)
        self._readinto(memoryview(buf), deadline)
        return buf

    def recv(self, timeout: float | None = None) -> tuple[dict, list[np.ndarray]]:
        """Read one message: ``(header, arrays)``. ``timeout`` bounds each wait for data."""
        deadline = None if timeout is None else time.monotonic() + timeout
        magic, hlen = _PREFIX.unpack(bytes(self._read(_PREFIX.size, deadline)))
        if magic != MAGIC:
            raise ProtocolError(f"bad message magic {magic!r} (something wrote to the protocol pipe)")
        if hlen > _MAX_HEADER:
            raise ProtocolError(f"message header of {hlen} bytes is implausible")
        header = json.loads(bytes(self._read(hlen, deadline)).decode("utf-8"))
        arrays = []
        for nbytes in header.get("arrays", []):
            if timeout is not None:
                deadline = time.monotonic() + timeout
            arrays.append(self._read_npy(int(nbytes), deadline))
        self.received += 1
        return header, arrays

    def _read_npy(self, nbytes: int, deadline: float | None) -> np.ndarray:
        head = bytes(self._read(8, deadline))
        if head[:6] != b"\x93NUMPY":
            raise ProtocolError("array payload is not .npy data")
        major = head[6]
        lsize = 2 if major == 1 else 4
        raw_len = bytes(self._read(lsize, deadline))
        hlen = int.from_bytes(raw_len, "little")
        hdr = bytes(self._read(hlen, deadline))
        fp = io.BytesIO(head + raw_len + hdr)
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        if dtype.hasobject:
            raise ProtocolError("refusing an object array (it would need pickle)")
        arr = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
        data_len = nbytes - (8 + lsize + hlen)
        if data_len != arr.nbytes:
            raise ProtocolError(f"array of shape {shape} {dtype} announced {data_len} data bytes, needs {arr.nbytes}")
        if arr.nbytes:
            flat = arr.reshape(-1, order="F" if fortran else "C").view(np.uint8)
            self._readinto(memoryview(flat), deadline)
        return arr


def widen_pipe(fd: int, size: int = 1 << 20) -> None:
    """Ask Linux for a larger pipe buffer (fewer context switches); best effort."""
    try:
        import fcntl

        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), size)
    except Exception:  # noqa: BLE001 - not Linux, or above /proc/sys/fs/pipe-max-size
        pass

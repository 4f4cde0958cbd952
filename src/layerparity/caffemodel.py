"""Read a ``.caffemodel``'s parameters without Caffe: a small protobuf wire-format reader.

Golden-trace checks and ``layerparity diff`` compare against a recorded Caffe trace,
where Caffe may not even be installed; their diagnoses still need Caffe's weights to
confirm a hypothesis by recomputing the layer (as a live run does). The caffemodel is
at hand (golden traces hash it; ``capture`` records its path), so its blobs are read
here, straight from the protobuf bytes: ``NetParameter.layer`` (field 100) or the
legacy ``layers`` (field 2), each layer's ``name`` and ``blobs``, each blob's
``shape`` (or legacy ``num/channels/height/width``) and ``data``/``double_data``.

>>> from layerparity.caffemodel import read_caffemodel       # doctest: +SKIP
>>> read_caffemodel("weights.caffemodel")["conv1"][0].shape  # doctest: +SKIP
(16, 3, 5, 5)

Only NumPy is needed. A file that is not a caffemodel raises :class:`~layerparity.errors.ModelLoadError`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from .errors import ModelLoadError

__all__ = ["read_caffemodel", "CaffemodelWeights"]

# NetParameter
_NET_LAYER, _NET_LAYERS_V1 = 100, 2
# LayerParameter / V1LayerParameter
_LAYER_NAME, _LAYER_TYPE, _LAYER_BLOBS = 1, 2, 7
_V1_NAME, _V1_TYPE, _V1_BLOBS = 4, 5, 6
# BlobProto
_B_NUM, _B_CHANNELS, _B_HEIGHT, _B_WIDTH, _B_DATA, _B_SHAPE, _B_DOUBLE = 1, 2, 3, 4, 5, 7, 8
# BlobShape
_S_DIM = 1


def _Bad(what: str) -> ModelLoadError:  # noqa: N802 - reads like the exception it makes
    """A malformed-file error; :func:`read_caffemodel` prefixes the path."""
    return ModelLoadError(what)


def _varint(buf: Any, i: int, end: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        if i >= end or shift > 63:
            raise _Bad("truncated varint")
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _fields(buf: Any, start: int, end: int) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) of one message: an int for varint/fixed fields,
    a (start, end) pair for length-delimited ones."""
    i = start
    while i < end:
        key, i = _varint(buf, i, end)
        field, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(buf, i, end)
            yield field, wt, v
        elif wt == 2:
            n, i = _varint(buf, i, end)
            if i + n > end:
                raise _Bad("truncated field")
            yield field, wt, (i, i + n)
            i += n
        elif wt == 5:
            if i + 4 > end:
                raise _Bad("truncated fixed32")
            yield field, wt, (i, i + 4)
            i += 4
        elif wt == 1:
            if i + 8 > end:
                raise _Bad("truncated fixed64")
            yield field, wt, (i, i + 8)
            i += 8
        else:
            raise _Bad(f"unsupported wire type {wt}")


def _packed_ints(buf: Any, span: tuple[int, int]) -> list[int]:
    out, i = [], span[0]
    while i < span[1]:
        v, i = _varint(buf, i, span[1])
        out.append(v)
    return out


def _blob(buf: Any, span: tuple[int, int]) -> np.ndarray:
    shape: list[int] | None = None
    legacy = {}
    chunks: list[np.ndarray] = []
    single: list[bytes] = []
    dtype = np.dtype("<f4")
    for field, wt, v in _fields(buf, *span):
        if field == _B_SHAPE and wt == 2:
            dims: list[int] = []
            for f2, wt2, v2 in _fields(buf, *v):
                if f2 == _S_DIM:
                    dims += _packed_ints(buf, v2) if wt2 == 2 else [v2]
            shape = dims
        elif field in (_B_NUM, _B_CHANNELS, _B_HEIGHT, _B_WIDTH) and wt == 0:
            legacy[field] = v
        elif field == _B_DATA:
            if wt == 2:
                chunks.append(np.frombuffer(buf[v[0]:v[1]], dtype="<f4"))
            else:  # not packed: one float per field
                single.append(bytes(buf[v[0]:v[1]]))
        elif field == _B_DOUBLE:
            dtype = np.dtype("<f8")
            if wt == 2:
                chunks.append(np.frombuffer(buf[v[0]:v[1]], dtype="<f8"))
            else:
                single.append(bytes(buf[v[0]:v[1]]))
    if single:
        chunks.append(np.frombuffer(b"".join(single), dtype=dtype))
    data = np.concatenate(chunks) if chunks else np.zeros(0, dtype)
    if shape is None:
        shape = [legacy.get(f, 1) for f in (_B_NUM, _B_CHANNELS, _B_HEIGHT, _B_WIDTH)] if legacy else [data.size]
    if int(np.prod(shape, dtype=np.int64)) != data.size:
        raise _Bad(f"a blob of shape {tuple(shape)} holds {data.size} values")
    return data.astype(np.float32, copy=False).reshape(shape)


def _legacy_squeeze(layer_type: str, i: int, a: np.ndarray, had_shape: bool) -> np.ndarray:
    """Legacy 4-D blobs ``(1, 1, N, K)`` as the net holds them (InnerProduct ``(N, K)``, biases ``(N,)``)."""
    if had_shape or a.ndim != 4 or layer_type in ("Convolution", "Deconvolution", "CONVOLUTION", "DECONVOLUTION"):
        if layer_type in ("Convolution", "Deconvolution", "CONVOLUTION", "DECONVOLUTION") and i > 0 and a.ndim == 4:
            return a.reshape(-1)
        return a
    keep = 2 if layer_type in ("InnerProduct", "INNER_PRODUCT") and i == 0 else 1
    while a.ndim > keep and a.shape[0] == 1:
        a = a.reshape(a.shape[1:])
    return a


def _layers(buf: Any, end: int) -> dict[str, list[np.ndarray]]:
    out: dict[str, list[np.ndarray]] = {}
    for field, wt, v in _fields(buf, 0, end):
        if wt != 2 or field not in (_NET_LAYER, _NET_LAYERS_V1):
            continue
        v1 = field == _NET_LAYERS_V1
        name_f, type_f, blobs_f = (_V1_NAME, _V1_TYPE, _V1_BLOBS) if v1 else (_LAYER_NAME, _LAYER_TYPE, _LAYER_BLOBS)
        name, ltype, blobs = None, "", []
        for f2, wt2, v2 in _fields(buf, *v):
            if f2 == name_f and wt2 == 2:
                name = bytes(buf[v2[0]:v2[1]]).decode("utf-8", "replace")
            elif f2 == type_f:
                ltype = bytes(buf[v2[0]:v2[1]]).decode("utf-8", "replace") if wt2 == 2 else str(v2)
            elif f2 == blobs_f and wt2 == 2:
                has_shape = any(f3 == _B_SHAPE for f3, _, _ in _fields(buf, *v2))
                blobs.append((_blob(buf, v2), has_shape))
        if name is not None and blobs:
            out[name] = [_legacy_squeeze(ltype, i, a, hs) for i, (a, hs) in enumerate(blobs)]
    return out


def read_caffemodel(path: str | os.PathLike[str]) -> dict[str, list[np.ndarray]]:
    """Every layer's parameter blobs, ``layer name -> [arrays]`` in Caffe's layouts (float32),
    as ``CaffeBackend.weights()`` gives them for a net loaded with this file."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            buf = f.read()
    except OSError as e:
        raise ModelLoadError(f"{path}: cannot read the caffemodel ({e.strerror or e})") from None
    if not buf:
        raise ModelLoadError(f"{path}: empty file, not a caffemodel")
    try:
        layers = _layers(buf, len(buf))
    except (ModelLoadError, ValueError) as e:
        raise ModelLoadError(f"{path}: not a readable caffemodel ({e})") from None
    return {k: [np.array(a, dtype=np.float32, copy=True) for a in v] for k, v in layers.items()}


class CaffemodelWeights:
    """A caffemodel as a weights source (``.weights()``, read on first call), for a
    comparison whose Caffe side is a recorded trace."""

    framework = "caffe"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._w: dict[str, list[np.ndarray]] | None = None

    def weights(self) -> dict[str, list[np.ndarray]]:
        if self._w is None:
            self._w = read_caffemodel(self.path)
        return self._w

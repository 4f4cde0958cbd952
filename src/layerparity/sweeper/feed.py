"""Where a sweep's inputs come from: a folder of images, an .npy/.npz stack, or any iterable.

Every source yields ``(label, sample)`` one input at a time, ``sample`` in Caffe's
NCHW layout with a batch axis of 1 (a dict ``name -> array`` for a model with
several inputs), or an :class:`InputDataError` in place of a sample that cannot
be read (an unreadable image): that input becomes an error row, the sweep goes on.

- a folder: its image files (``IMAGE_SUFFIXES``), sorted by name, not recursive,
  each preprocessed like ``layerparity compare`` does (:class:`~layerparity.inputs.Preprocess`);
- an ``.npy`` file: a stack ``(N, C, H, W)``, read through a memory map (a row at a
  time, however large the file); an ``.npz``: one stack per model input, same N;
- an image file: one input;
- a NumPy array: a stack along its first axis;
- any other iterable: each item an array (or dict of arrays) of one or more inputs
  along its batch axis; a 3-D ``(C, H, W)`` item is one input.

>>> import numpy as np
>>> src = open_source(np.zeros((3, 2, 4, 4), np.float32))
>>> src.length, [(label, x.shape) for label, x in src][:2]
(3, [('input[0]', (1, 2, 4, 4)), ('input[1]', (1, 2, 4, 4))])
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputDataError
from ..inputs import IMAGE_SUFFIXES, Preprocess, load_image, load_input

__all__ = ["Source", "open_source"]


@dataclass
class Source:
    """An input source: iterate for ``(label, sample)``; ``length`` when known up front."""

    items: Iterable[tuple[str, Any]]
    length: int | None
    description: str

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return iter(self.items)


def open_source(inputs: Any, preprocess: Preprocess | None = None) -> Source:
    """The sweep input source for ``inputs`` (see the module docstring)."""
    pre = preprocess or Preprocess()
    if isinstance(inputs, (str, os.PathLike)):
        p = os.fspath(inputs)
        if os.path.isdir(p):
            return _folder(p, pre)
        if not os.path.exists(p):
            raise InputDataError(f"{p}: no such input file or folder")
        low = p.lower()
        if low.endswith((".npy", ".npz")) and pre.any():
            raise InputDataError(f"{p}: image preprocessing ({', '.join(pre.given())}) applies to images only; "
                                 "a .npy/.npz stack is used as it is (NCHW)")
        if low.endswith(".npy"):
            return _npy(p)
        if low.endswith(".npz"):
            return _npz(p)
        x = load_input(p, pre)
        return _stack(x, p)
    if pre.any():
        raise InputDataError("image preprocessing applies to a folder of images or an image file only")
    if isinstance(inputs, np.ndarray):
        return _stack(inputs, "input")
    if isinstance(inputs, Mapping):
        return _stack(dict(inputs), "input")
    if isinstance(inputs, Iterable) and not isinstance(inputs, (bytes, bytearray)):
        length = len(inputs) if hasattr(inputs, "__len__") else None  # type: ignore[arg-type]
        return Source(_iterable(inputs), length, f"{type(inputs).__name__} of inputs")
    raise InputDataError(f"sweep inputs: expected a folder, an .npy/.npz/image file, an array or an iterable "
                         f"of arrays; got {type(inputs).__name__}")


def _folder(d: str, pre: Preprocess) -> Source:
    names = sorted(n for n in os.listdir(d) if n.lower().endswith(IMAGE_SUFFIXES) and os.path.isfile(os.path.join(d, n)))
    if not names:
        raise InputDataError(f"{d}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")

    def gen() -> Iterator[tuple[str, Any]]:
        for n in names:
            p = os.path.join(d, n)
            try:
                yield p, load_image(p, pre)
            except InputDataError as e:
                yield p, e

    return Source(gen(), len(names), f"{d} ({len(names)} images)")


def _npy(p: str) -> Source:
    with open(p, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise InputDataError(f"{p}: not a .npy file (no NumPy header)")
    try:
        a = np.load(p, mmap_mode="r", allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise InputDataError(f"{p}: unreadable .npy file ({type(e).__name__}: {e})") from None
    return _stack(a, p)


def _npz(p: str) -> Source:
    try:
        with np.load(p, allow_pickle=False) as z:
            keys = list(z.files)
    except (ValueError, zipfile.BadZipFile, OSError, EOFError) as e:
        raise InputDataError(f"{p}: not a readable .npz file ({e})") from None
    if not keys:
        raise InputDataError(f"{p}: the .npz file holds no arrays")
    # one array at a time: an .npz member is read whole, so a multi-input stack is read
    # member by member (each as large as the stack of that input)
    x = load_input(p)
    return _stack(x, p)


def _check(label: str, a: Any) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise InputDataError(f"{label}: dtype {a.dtype}; expected numbers")
    if a.ndim == 0:
        raise InputDataError(f"{label}: a scalar; expected an NCHW array")
    return a


def _stack(x: Any, name: str) -> Source:
    if isinstance(x, Mapping):
        arrays = {k: _check(f"{name}[{k!r}]", v) for k, v in x.items()}
        sizes = {v.shape[0] for v in arrays.values()}
        if len(sizes) != 1:
            raise InputDataError(f"{name}: the arrays have different batch sizes {sorted(sizes)}")
        n = sizes.pop()
        items = ((f"{name}[{i}]", {k: _row(v, i) for k, v in arrays.items()}) for i in range(n))
        return Source(items, n, f"{name} ({n} inputs)")
    a = _check(name, x)
    if a.ndim == 3:
        a = a[None]
    n = a.shape[0]
    return Source(((f"{name}[{i}]", _row(a, i)) for i in range(n)), n, f"{name} ({n} inputs)")


def _row(a: np.ndarray, i: int) -> np.ndarray:
    return np.ascontiguousarray(a[i:i + 1], dtype=np.float32)  # a memory-mapped row is read here


def _iterable(it: Iterable[Any]) -> Iterator[tuple[str, Any]]:
    k = 0
    for item in it:
        try:
            if isinstance(item, Mapping):
                arrays = {key: _check(f"input {k}[{key!r}]", v) for key, v in item.items()}
                arrays = {key: v[None] if v.ndim == 3 else v for key, v in arrays.items()}
                n = next(iter(arrays.values())).shape[0]
                for i in range(n):
                    yield (f"input[{k}]", {key: _row(v, i) for key, v in arrays.items()})
                    k += 1
                continue
            a = _check(f"input {k}", item)
            if a.ndim == 3:
                a = a[None]
        except InputDataError as e:
            yield f"input[{k}]", e
            k += 1
            continue
        for i in range(a.shape[0]):
            yield f"input[{k}]", _row(a, i)
            k += 1

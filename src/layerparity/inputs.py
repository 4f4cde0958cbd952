"""Loading model inputs from files, in Caffe's NCHW layout.

- ``.npy``: one array, NCHW (``(N, C, H, W)``); a 3-D ``(C, H, W)`` array gets a
  batch axis. Other ranks (``(N, D)`` for an MLP) are passed through.
- ``.npz``: one array per model input, keyed by input name (a single-key file is
  just that array); or a layerparity trace archive, whose recorded Caffe inputs
  are used.
- an image (anything Pillow opens: ``.png``, ``.jpg``, ...): preprocessed the
  way ``caffe.io.load_image`` + ``caffe.io.Transformer`` do it, in this order:
  RGB floats in [0, 1] -> ``resize`` to (H, W) (bilinear) -> HWC to CHW ->
  ``channel_swap`` (``(2, 1, 0)``: RGB to BGR) -> ``* raw_scale`` (e.g. 255) ->
  ``- mean`` (per channel, in the order after the swap: BGR for Caffe models) ->
  ``* input_scale``; then a batch axis: ``(1, 3, H, W)``.

Every problem raises :class:`~layerparity.errors.InputDataError` naming the
file and what is wrong.

>>> import numpy as np, tempfile, os
>>> p = os.path.join(tempfile.mkdtemp(), "x.npy")
>>> np.save(p, np.zeros((3, 8, 8), np.float32))
>>> load_input(p).shape
(1, 3, 8, 8)
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputDataError

__all__ = ["Preprocess", "load_input", "load_image", "split_batch", "batch_size", "IMAGE_SUFFIXES"]

Inputs = np.ndarray | dict[str, np.ndarray]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class Preprocess:
    """Image preprocessing, Caffe-style (see the module docstring for the order)."""

    resize: tuple[int, int] | None = None  # (H, W)
    mean: tuple[float, ...] | None = None  # per channel, after channel_swap (BGR for Caffe)
    raw_scale: float | None = None
    input_scale: float | None = None
    channel_swap: tuple[int, ...] | None = None

    def any(self) -> bool:
        return any(v is not None for v in (self.resize, self.mean, self.raw_scale, self.input_scale, self.channel_swap))

    def given(self) -> list[str]:
        return [k for k in ("resize", "mean", "raw_scale", "input_scale", "channel_swap") if getattr(self, k) is not None]


def load_input(path: str | os.PathLike[str], preprocess: Preprocess | None = None, **kw: Any) -> Inputs:
    """Load one input file (``.npy``, ``.npz`` or an image) as NCHW float32.

    Image options may be given as a :class:`Preprocess` or as keywords
    (``resize=(227, 227), mean=(104, 117, 123), raw_scale=255, channel_swap=(2, 1, 0)``).
    They are refused for ``.npy``/``.npz`` files, which are taken as they are.
    """
    pre = preprocess or Preprocess(**kw)
    p = os.fspath(path)
    if not os.path.exists(p):
        raise InputDataError(f"{p}: no such input file")
    if os.path.isdir(p):
        raise InputDataError(f"{p}: is a directory; expected a .npy, .npz or image file")
    low = p.lower()
    if low.endswith(".npy") or low.endswith(".npz"):
        if pre.any():
            raise InputDataError(
                f"{p}: image preprocessing ({', '.join(pre.given())}) applies to image files only; "
                "a .npy/.npz input is used as it is (NCHW)"
            )
        return _load_npy(p) if low.endswith(".npy") else _load_npz(p)
    return load_image(p, pre)


def _check_array(p: str, a: Any, what: str = "array") -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise InputDataError(f"{p}: {what} has dtype {a.dtype}; expected numbers")
    if np.issubdtype(a.dtype, np.complexfloating):
        raise InputDataError(f"{p}: {what} is complex; expected real numbers")
    if a.size == 0:
        raise InputDataError(f"{p}: {what} is empty (shape {a.shape})")
    if a.ndim == 0:
        raise InputDataError(f"{p}: {what} is a scalar; expected an NCHW array")
    a = a.astype(np.float32, copy=False)
    if not np.all(np.isfinite(a)):
        bad = int(a.size - np.count_nonzero(np.isfinite(a)))
        raise InputDataError(f"{p}: {what} holds {bad} NaN/Inf values")
    if a.ndim == 3:
        a = a[None]
    return a


def _load_npy(p: str) -> np.ndarray:
    with open(p, "rb") as f:
        if f.read(6) != b"\x93NUMPY":
            raise InputDataError(f"{p}: not a .npy file (no NumPy header)")
    try:
        a = np.load(p, allow_pickle=False)
    except ValueError as e:
        raise InputDataError(f"{p}: not a plain numeric .npy file ({e})") from None
    except Exception as e:  # noqa: BLE001 - any reader failure is a bad file
        raise InputDataError(f"{p}: unreadable .npy file ({type(e).__name__}: {e})") from None
    if not isinstance(a, np.ndarray):
        raise InputDataError(f"{p}: holds several arrays; use the .npz suffix for that")
    return _check_array(p, a)


def _load_npz(p: str) -> Inputs:
    from .trace import ArchiveReader, is_archive

    if is_archive(p):
        with ArchiveReader(p) as r:
            if r.framework != "caffe":
                raise InputDataError(
                    f"{p}: a {r.framework} trace archive; only a Caffe trace's inputs are in NCHW (use that one)"
                )
            arrays = r.inputs()
        if not arrays:
            raise InputDataError(f"{p}: the trace archive stores no inputs")
    else:
        try:
            with np.load(p, allow_pickle=False) as z:
                if not hasattr(z, "files"):
                    raise InputDataError(f"{p}: a single .npy array; use the .npy suffix")
                arrays = {k: z[k] for k in z.files}
        except InputDataError:
            raise
        except (ValueError, zipfile.BadZipFile, OSError, EOFError) as e:
            raise InputDataError(f"{p}: not a readable .npz file ({e})") from None
        if not arrays:
            raise InputDataError(f"{p}: the .npz file holds no arrays")
    checked = {k: _check_array(p, v, f"array {k!r}") for k, v in arrays.items()}
    if len(checked) == 1:
        return next(iter(checked.values()))
    sizes = {k: v.shape[0] for k, v in checked.items()}
    if len(set(sizes.values())) > 1:
        raise InputDataError(f"{p}: the arrays have different batch sizes {sizes}")
    return checked


def load_image(path: str | os.PathLike[str], preprocess: Preprocess | None = None) -> np.ndarray:
    """An image as a ``(1, 3, H, W)`` float32 array, preprocessed like ``caffe.io.Transformer``."""
    pre = preprocess or Preprocess()
    p = os.fspath(path)
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise InputDataError(f"{p}: reading images needs Pillow (pip install pillow); or give a .npy in NCHW") from None
    try:
        with Image.open(p) as im:
            im.load()
            rgb = im.convert("RGB")
    except UnidentifiedImageError:
        raise InputDataError(f"{p}: not a .npy, .npz or image file Pillow can read") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise InputDataError(f"{p}: unreadable image ({e})") from None
    if pre.resize is not None:
        h, w = _pair(p, pre.resize)
        rgb = rgb.resize((w, h), resample=Image.BILINEAR)
    x = np.asarray(rgb, dtype=np.float32) / 255.0  # caffe.io.load_image: RGB in [0, 1], HWC
    x = x.transpose(2, 0, 1)  # CHW
    if pre.channel_swap is not None:
        order = tuple(int(i) for i in pre.channel_swap)
        if sorted(order) != list(range(x.shape[0])):
            raise InputDataError(f"{p}: channel swap {order} is not a permutation of the {x.shape[0]} channels (0..{x.shape[0] - 1})")
        x = x[list(order)]
    if pre.raw_scale is not None:
        x = x * _finite(p, pre.raw_scale, "raw scale")
    if pre.mean is not None:
        mean = np.asarray([_finite(p, m, "mean") for m in pre.mean], dtype=np.float32)
        if mean.size == 1:
            mean = np.repeat(mean, x.shape[0])
        if mean.size != x.shape[0]:
            raise InputDataError(f"{p}: mean has {mean.size} values; the image has {x.shape[0]} channels (give B G R)")
        x = x - mean[:, None, None]
    if pre.input_scale is not None:
        x = x * _finite(p, pre.input_scale, "input scale")
    return np.ascontiguousarray(x[None], dtype=np.float32)


def _pair(p: str, hw: Sequence[Any]) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in hw)
    except (TypeError, ValueError):
        raise InputDataError(f"{p}: resize needs two integers H W, got {hw!r}") from None
    if h <= 0 or w <= 0:
        raise InputDataError(f"{p}: resize needs positive H W, got {h} {w}")
    return h, w


def _finite(p: str, v: Any, what: str) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise InputDataError(f"{p}: {what} must be a number, got {v!r}") from None
    if not np.isfinite(f):
        raise InputDataError(f"{p}: {what} must be finite, got {v!r}")
    return f


def batch_size(x: Inputs) -> int:
    if isinstance(x, Mapping):
        return int(next(iter(x.values())).shape[0])
    return int(np.asarray(x).shape[0])


def split_batch(x: Inputs, size: int = 1) -> list[Inputs]:
    """Inputs of ``size`` samples each along the batch axis (a dict is split input by input)."""
    n = batch_size(x)
    if isinstance(x, Mapping):
        return [{k: v[i : i + size] for k, v in x.items()} for i in range(0, n, size)]
    return [x[i : i + size] for i in range(0, n, size)]


def concat_batches(xs: list[Inputs]) -> Inputs:
    """Several inputs joined along the batch axis (dicts input by input)."""
    if xs and isinstance(xs[0], Mapping):
        return {k: np.concatenate([x[k] for x in xs]) for k in xs[0]}
    return np.concatenate([np.asarray(x) for x in xs])

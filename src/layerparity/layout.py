"""Layouts: moving tensors and weights between Caffe's and TensorFlow's axis orders.

Every conversion here is a transpose (or a transpose inside a flatten), never a
reshape: a reshape across NCHW/NHWC is the classic porting bug this library hunts.

Layouts are declared by strings of axis labels (see :mod:`layerparity.trace`):

>>> import numpy as np
>>> x = np.arange(24).reshape(1, 2, 3, 4)          # NCHW
>>> convert(x, "NCHW", "NHWC").shape
(1, 3, 4, 2)
>>> np.array_equal(convert(convert(x, "NCHW", "NHWC"), "NHWC", "NCHW"), x)
True
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import InputDataError, InputError, LayoutMismatch

NCHW_TO_NHWC = (0, 2, 3, 1)
NHWC_TO_NCHW = (0, 3, 1, 2)

#: Caffe's layouts, and the TF layout each corresponds to.
CAFFE_TO_TF = {"NCHW": "NHWC", "NCDHW": "NDHWC", "NCW": "NWC", "NC": "NC", "": ""}


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
    return np.transpose(x, NCHW_TO_NHWC)


def nhwc_to_nchw(x: np.ndarray) -> np.ndarray:
    return np.transpose(x, NHWC_TO_NCHW)


def is_flat(layout: str) -> bool:
    return _label(layout).startswith("flat:")


def _label(layout: Any, what: str = "layout") -> str:
    """``layout`` if it is a layout string; anything else is the caller's mistake, said so."""
    if not isinstance(layout, str):
        raise LayoutMismatch(f"{what} must be a string of axis labels like 'NCHW' or 'NHWC', got {layout!r:.80}")
    return layout


def _weight(w: Any, ndim: int, what: str) -> np.ndarray:
    w = np.asarray(w)
    if w.ndim != ndim:
        raise InputDataError(f"{what}: expected a {ndim}-D weight, got shape {w.shape}")
    return w


def axes_permutation(src: str, dst: str) -> tuple[int, ...]:
    """The ``np.transpose`` axes that turn a ``src``-labelled array into ``dst``.

    >>> axes_permutation("NHWC", "NCHW")
    (0, 3, 1, 2)
    """
    if sorted(_label(src)) != sorted(_label(dst)) or len(set(src)) != len(src):
        raise LayoutMismatch(f"layouts {src!r} and {dst!r} do not name the same axes")
    return tuple(src.index(a) for a in dst)


def convert(x: np.ndarray, src: str, dst: str, flat_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Re-express ``x`` (declared ``src``) in layout ``dst``.

    Plain layouts are transposed by label. ``flat:XYZ`` layouts are unflattened
    with ``flat_shape`` (the per-item shape in ``XYZ`` order, without N), transposed
    and flattened again, so a Keras ``Flatten`` on NHWC (H*W*C order) can be held
    against a Caffe ``Flatten`` (C*H*W order). An empty layout on either side means
    "compare as is".
    """
    _label(src, "source layout")
    _label(dst, "target layout")
    if not src or not dst or src == dst:
        return x
    if is_flat(src) != is_flat(dst):
        raise LayoutMismatch(f"cannot convert between {src!r} and {dst!r}: only one is flattened")
    if not is_flat(src):
        if x.ndim != len(src):
            raise InputDataError(f"a {x.ndim}-D array cannot be in layout {src!r}")
        return np.transpose(x, axes_permutation(src, dst))
    s, d = src[5:], dst[5:]
    if flat_shape is None:
        raise LayoutMismatch(f"converting {src!r} needs flat_shape")
    flat_shape = _shape(flat_shape, "flat_shape")
    inner = s.replace("N", "")
    if len(flat_shape) != len(inner) or sorted(inner) != sorted(d.replace("N", "")):
        raise InputDataError(f"flat_shape {tuple(flat_shape)} does not fit layouts {src!r} -> {dst!r}")
    per_item = int(np.prod(flat_shape))
    if x.ndim != 2 or x.shape[1] != per_item:
        raise InputDataError(f"array of shape {x.shape} is not a flattening of {flat_shape}")
    unflat = x.reshape((x.shape[0], *flat_shape))
    moved = np.transpose(unflat, (0, *(1 + a for a in axes_permutation(inner, d.replace("N", "")))))
    return moved.reshape(x.shape[0], per_item)


def flatten_permutation(c: int, h: int, w: int) -> np.ndarray:
    """``perm`` such that ``nhwc_flat[:, perm] == nchw_flat``.

    The i-th element of Caffe's C*H*W flattening sits at ``perm[i]`` in the
    Keras H*W*C flattening of the same tensor.

    >>> flatten_permutation(2, 1, 2).tolist()
    [0, 2, 1, 3]
    """
    c, h, w = _shape((c, h, w), "flatten_permutation (c, h, w)")
    return np.arange(h * w * c).reshape(h, w, c).transpose(2, 0, 1).reshape(-1)


def _shape(dims: Any, what: str) -> tuple[int, ...]:
    """A shape given by the caller: integers >= 0."""
    try:
        out = tuple(dims)
        if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 0 for d in out):
            raise TypeError
    except TypeError:
        raise InputDataError(f"{what} must be a sequence of integers >= 0, got {dims!r:.80}") from None
    return tuple(int(d) for d in out)


# -- reconciling two declared layouts --------------------------------------------


def relayout(x: np.ndarray, src: str, src_flat: tuple[int, ...] | None, dst: str,
             dst_flat: tuple[int, ...] | None = None) -> np.ndarray:
    """Re-express ``x`` (declared ``src``) in the declared layout ``dst``.

    Only transposes (via :func:`layerparity.layout.convert`) and insertion or
    removal of size-1 axes that one layout names and the other does not. Raises
    :class:`LayoutMismatch` when that is not enough.

    >>> relayout(np.zeros((2, 7)), "NC", None, "NCHW").shape
    (2, 7, 1, 1)
    >>> relayout(np.zeros((2, 1, 1, 7)), "NHWC", None, "NC").shape
    (2, 7)
    """
    x = np.asarray(x)
    _label(src, "source layout")
    _label(dst, "target layout")
    if not src or not dst or src == dst:
        if src == dst and is_flat(src) and src_flat and dst_flat and tuple(src_flat) != tuple(dst_flat):
            raise LayoutMismatch(f"flattened from {tuple(src_flat)} vs {tuple(dst_flat)} (both {src})")
        return x
    if is_flat(src) and is_flat(dst):
        if src_flat is None:
            raise LayoutMismatch(f"layout {src!r} without flat_shape cannot be converted to {dst!r}")
        s_in, d_in = src[5:].replace("N", ""), dst[5:].replace("N", "")
        if sorted(s_in) != sorted(d_in) or len(src_flat) != len(s_in):
            raise LayoutMismatch(f"cannot convert {src!r} (flat_shape {tuple(src_flat)}) to {dst!r}")
        moved = tuple(src_flat[i] for i in axes_permutation(s_in, d_in))
        if dst_flat is not None and tuple(dst_flat) != moved:
            raise LayoutMismatch(
                f"flattened shapes differ: {src} {tuple(src_flat)} is {moved} in {dst[5:]}, "
                f"the reference flattened {tuple(dst_flat)}"
            )
        try:
            return convert(x, src, dst, tuple(src_flat))
        except (ValueError, InputError) as e:
            raise LayoutMismatch(str(e)) from None
    if is_flat(src) or is_flat(dst):
        flat, flat_shape, other = (src, src_flat, dst) if is_flat(src) else (dst, dst_flat, src)
        inner = flat[5:].replace("N", "")
        if other == "NC" and flat_shape is not None and "C" in inner and all(
            d == 1 for a, d in zip(inner, flat_shape, strict=False) if a != "C"
        ):
            return x  # (N, C) either way: nothing spatial to reorder
        raise LayoutMismatch(f"cannot reconcile {src!r} with {dst!r} (flat_shape {tuple(flat_shape) if flat_shape else None})")
    if x.ndim != len(src):
        raise LayoutMismatch(f"a {x.ndim}-D array {x.shape} cannot be in layout {src!r}")
    if len(set(src)) != len(src) or len(set(dst)) != len(dst):
        raise LayoutMismatch(f"layouts {src!r} / {dst!r} repeat an axis label")
    labels = src
    extra = [a for a in src if a not in dst]
    if extra:
        axes = tuple(src.index(a) for a in extra)
        if any(x.shape[i] != 1 for i in axes):
            raise LayoutMismatch(
                f"shape {x.shape} in {src!r} has non-unit axes {''.join(extra)} that {dst!r} does not have"
            )
        x = np.squeeze(x, axis=axes)
        labels = "".join(a for a in src if a not in extra)
    missing = [a for a in dst if a not in labels]
    if missing:
        x = x.reshape(x.shape + (1,) * len(missing))  # appending unit axes moves no data
        labels = labels + "".join(missing)
    return np.transpose(x, axes_permutation(labels, dst)) if labels != dst else x


def relayout_shape(shape: tuple[int, ...], src: str, src_flat: tuple[int, ...] | None, dst: str,
                   dst_flat: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """The shape :func:`relayout` would return, without any data."""
    shape = _shape(shape, "shape")
    dummy = np.broadcast_to(np.zeros((), np.float32), tuple(shape))
    if is_flat(src) and is_flat(dst):
        relayout(np.zeros((1, int(np.prod(src_flat or (0,)))), np.float32), src, src_flat, dst, dst_flat)
        return tuple(shape)
    return tuple(relayout(dummy, src, src_flat, dst, dst_flat).shape)


# -- weight layouts -----------------------------------------------------------


def conv_weight_caffe_to_tf(w: np.ndarray) -> np.ndarray:
    """Caffe Convolution (O, I/g, kH, kW) -> TF/Keras Conv2D (kH, kW, I/g, O)."""
    return np.transpose(_weight(w, 4, "Caffe convolution weight (O, I, kH, kW)"), (2, 3, 1, 0))


def conv_weight_tf_to_caffe(w: np.ndarray) -> np.ndarray:
    """TF/Keras Conv2D (kH, kW, I/g, O) -> Caffe Convolution (O, I/g, kH, kW)."""
    return np.transpose(_weight(w, 4, "TF Conv2D kernel (kH, kW, I, O)"), (3, 2, 0, 1))


#: TFLite builtin ops whose first constant operand is a kernel in TFLite's own layout.
TFLITE_KERNEL_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "FULLY_CONNECTED"})


def tflite_kernel_to_tf(op_type: str, k: np.ndarray, depth_multiplier: int = 1) -> np.ndarray:
    """A TFLite kernel in the layout TF itself holds it.

    TFLite stores a ``CONV_2D`` filter as ``(O, kH, kW, I)`` (TF: ``(kH, kW, I, O)``), a
    ``DEPTHWISE_CONV_2D`` filter as ``(1, kH, kW, C*M)`` (TF: ``(kH, kW, C, M)``), a
    ``TRANSPOSE_CONV`` filter as ``(O, kH, kW, I)`` (TF: ``(kH, kW, O, I)``) and a
    ``FULLY_CONNECTED`` weight as ``(O, I)`` (a Dense kernel: ``(I, O)``). Another op or
    rank is returned as is.

    >>> tflite_kernel_to_tf("CONV_2D", np.zeros((8, 3, 3, 4))).shape
    (3, 3, 4, 8)
    >>> tflite_kernel_to_tf("DEPTHWISE_CONV_2D", np.zeros((1, 3, 3, 8)), depth_multiplier=2).shape
    (3, 3, 4, 2)
    """
    k = np.asarray(k)
    if op_type == "CONV_2D" and k.ndim == 4:
        return k.transpose(1, 2, 3, 0)
    if op_type == "TRANSPOSE_CONV" and k.ndim == 4:
        return k.transpose(1, 2, 0, 3)
    if op_type == "DEPTHWISE_CONV_2D" and k.ndim == 4 and k.shape[0] == 1:
        m = int(depth_multiplier or 1)
        if m < 1 or k.shape[3] % m:
            m = 1
        return k.reshape(k.shape[1], k.shape[2], k.shape[3] // m, m)
    if op_type == "FULLY_CONNECTED" and k.ndim == 2:
        return k.T
    return k


def depthwise_weight(w: np.ndarray, channels: int) -> np.ndarray:
    """Caffe (C*M, 1, kH, kW), group=C -> TF DepthwiseConv2D (kH, kW, C, M)."""
    w = _weight(w, 4, "Caffe depthwise weight (C*M, 1, kH, kW)")
    if not isinstance(channels, (int, np.integer)) or channels <= 0:
        raise InputDataError(f"depthwise weight: channels must be a positive integer, got {channels!r}")
    cm, one, kh, kw = w.shape
    if one != 1 or cm % channels:
        raise InputDataError(f"weights {w.shape} are not depthwise for {channels} channels")
    m = cm // channels
    return w.reshape(channels, m, kh, kw).transpose(2, 3, 0, 1)


def deconv_weight_caffe_to_tf(w: np.ndarray) -> np.ndarray:
    """Caffe Deconvolution (C_in, C_out/g, kH, kW) -> tf.nn.conv2d_transpose (kH, kW, C_out, C_in)."""
    return np.transpose(_weight(w, 4, "Caffe deconvolution weight (C_in, C_out, kH, kW)"), (2, 3, 1, 0))


def inner_product_weight_caffe_to_tf(w: np.ndarray, chw: tuple[int, int, int] | None = None) -> np.ndarray:
    """Caffe InnerProduct (N_out, K) -> Keras Dense kernel (K, N_out).

    If the InnerProduct reads a spatial blob of per-item shape ``chw = (C, H, W)``,
    the rows are permuted from Caffe's C*H*W order to Keras' H*W*C flatten order.
    """
    w = _weight(w, 2, "Caffe InnerProduct weight (N_out, K)")
    n = w.shape[0]
    if chw is None:
        return w.T
    chw = _shape(chw, "chw")
    if len(chw) != 3 or chw[0] * chw[1] * chw[2] != w.shape[1]:
        raise InputDataError(f"InnerProduct weight {w.shape}: its input of per-item shape {chw} "
                             f"does not hold {w.shape[1]} values")
    if chw[1] == 1 and chw[2] == 1:
        return w.T
    c, h, ww = chw
    return w.reshape(n, c, h, ww).transpose(2, 3, 1, 0).reshape(-1, n)


def lstm_weight_caffe_to_keras(w: np.ndarray) -> np.ndarray:
    """A Caffe LSTM blob in Keras' LSTM layout: ``W_xc`` (4H, C) -> kernel (C, 4H), ``W_hc``
    (4H, H) -> recurrent kernel (H, 4H), ``b_c`` (4H,) -> bias (4H,), the gate blocks
    reordered from Caffe's i, f, o, g to Keras' i, f, c, o (c is Caffe's g).

    >>> lstm_weight_caffe_to_keras(np.arange(8.0)).tolist()   # H = 2: i i f f o o g g
    [0.0, 1.0, 2.0, 3.0, 6.0, 7.0, 4.0, 5.0]
    >>> lstm_weight_caffe_to_keras(np.zeros((8, 3))).shape
    (3, 8)
    """
    w = np.asarray(w)
    if w.ndim not in (1, 2) or w.shape[0] % 4:
        raise InputDataError(f"Caffe LSTM blob: expected (4H,) or (4H, K), got shape {w.shape}")
    i, f, o, g = np.split(w, 4, axis=0)
    e = np.concatenate([i, f, g, o], 0)
    return e.T if e.ndim == 2 else e

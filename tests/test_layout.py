"""layout.py: every conversion checked against the computation it stands for (pure NumPy)."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import layerparity.layout as layout
from layerparity.errors import InputDataError
from layerparity.layout import (
    axes_permutation,
    conv_weight_caffe_to_tf,
    conv_weight_tf_to_caffe,
    convert,
    deconv_weight_caffe_to_tf,
    depthwise_weight,
    flatten_permutation,
    inner_product_weight_caffe_to_tf,
    nchw_to_nhwc,
    nhwc_to_nchw,
    relayout_shape,
)

rng = np.random.default_rng(7)


def test_doctests():
    assert doctest.testmod(layout).failed == 0


def test_nchw_nhwc_round_trip_moves_labels_not_memory():
    x = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    y = convert(x, "NCHW", "NHWC")
    assert y.shape == (2, 4, 5, 3)
    assert y[1, 2, 3, 0] == x[1, 0, 2, 3]  # same element, new coordinates
    assert np.array_equal(nchw_to_nhwc(x), y)
    assert np.array_equal(nhwc_to_nchw(y), x)
    assert np.array_equal(convert(y, "NHWC", "NCHW"), x)
    assert convert(x, "NCHW", "NCHW") is x
    assert convert(x, "", "NHWC") is x  # undeclared: compared as is


def test_convert_is_not_a_reshape():
    x = np.arange(2 * 3 * 4 * 5).reshape(2, 3, 4, 5)
    assert not np.array_equal(convert(x, "NCHW", "NHWC"), x.reshape(2, 4, 5, 3))


def test_axes_permutation_and_shapes():
    assert axes_permutation("NHWC", "NCHW") == (0, 3, 1, 2)
    assert axes_permutation("NCDHW", "NDHWC") == (0, 2, 3, 4, 1)
    assert relayout_shape((1, 64, 56, 57), "NCHW", None, "NHWC") == (1, 56, 57, 64)
    assert relayout_shape((1, 10), "NC", None, "NC") == (1, 10)
    assert relayout_shape((1, 3, 4, 5), "NCHW", None, "NWHC") == (1, 5, 4, 3)
    with pytest.raises(ValueError, match="do not name the same axes"):
        axes_permutation("NCHW", "NC")
    with pytest.raises(InputDataError, match="3-D array cannot be in layout 'NCHW'"):
        convert(np.zeros((1, 2, 3)), "NCHW", "NHWC")


def test_flatten_order_keras_vs_caffe():
    c, h, w = 3, 2, 4
    x = rng.normal(size=(2, c, h, w))
    caffe_flat = x.reshape(2, -1)  # Caffe Flatten: C*H*W
    keras_flat = x.transpose(0, 2, 3, 1).reshape(2, -1)  # Keras Flatten on NHWC: H*W*C
    assert not np.array_equal(caffe_flat, keras_flat)
    assert np.array_equal(convert(keras_flat, "flat:NHWC", "flat:NCHW", (h, w, c)), caffe_flat)
    assert np.array_equal(convert(caffe_flat, "flat:NCHW", "flat:NHWC", (c, h, w)), keras_flat)
    perm = flatten_permutation(c, h, w)
    assert np.array_equal(keras_flat[:, perm], caffe_flat)


def test_flat_conversion_errors():
    with pytest.raises(ValueError, match="only one is flattened"):
        convert(np.zeros((1, 6)), "flat:NHWC", "NCHW", (1, 2, 3))
    with pytest.raises(ValueError, match="needs flat_shape"):
        convert(np.zeros((1, 6)), "flat:NHWC", "flat:NCHW")
    with pytest.raises(InputDataError, match="not a flattening of"):
        convert(np.zeros((1, 7)), "flat:NHWC", "flat:NCHW", (1, 2, 3))
    with pytest.raises(InputDataError, match="does not fit layouts"):
        convert(np.zeros((1, 6)), "flat:NHWC", "flat:NCHW", (2, 3))


def _conv_nchw(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Caffe convolution, stride 1, no pad: x (N,C,H,W), w (O,C,kh,kw)."""
    n, c, h, ww = x.shape
    o, _, kh, kw = w.shape
    out = np.zeros((n, o, h - kh + 1, ww - kw + 1))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nchw,oc->nohw", x[:, :, i:i + out.shape[2], j:j + out.shape[3]], w[:, :, i, j])
    return out


def _conv_nhwc(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """TF conv2d VALID: x (N,H,W,C), k (kh,kw,C,O)."""
    kh, kw = k.shape[:2]
    oh, ow = x.shape[1] - kh + 1, x.shape[2] - kw + 1
    out = np.zeros((x.shape[0], oh, ow, k.shape[3]))
    for i in range(kh):
        for j in range(kw):
            out += np.einsum("nhwc,co->nhwo", x[:, i:i + oh, j:j + ow, :], k[i, j])
    return out


def test_conv_weights_compute_the_same_convolution():
    x = rng.normal(size=(2, 3, 6, 7))
    w = rng.normal(size=(5, 3, 3, 2))  # non-square kernel catches an H/W swap
    k = conv_weight_caffe_to_tf(w)
    assert k.shape == (3, 2, 3, 5)
    ref = _conv_nchw(x, w)
    got = _conv_nhwc(x.transpose(0, 2, 3, 1), k).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    assert np.array_equal(conv_weight_tf_to_caffe(k), w)


def test_depthwise_weights_match_caffe_grouped_conv():
    c, m = 3, 2
    x = rng.normal(size=(1, c, 5, 5))
    w = rng.normal(size=(c * m, 1, 3, 3))  # Caffe group=c
    ref = np.concatenate([_conv_nchw(x[:, g:g + 1], w[g * m:(g + 1) * m]) for g in range(c)], axis=1)
    k = depthwise_weight(w, c)  # (kh, kw, C, M)
    assert k.shape == (3, 3, c, m)
    xt = x.transpose(0, 2, 3, 1)
    outs = []
    for ch in range(c):  # TF depthwise: output channel ch*M + m
        for mm in range(m):
            outs.append(_conv_nhwc(xt[..., ch:ch + 1], k[:, :, ch:ch + 1, mm:mm + 1]))
    got = np.concatenate(outs, axis=3).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="not depthwise"):
        depthwise_weight(np.zeros((5, 1, 3, 3)), 3)


def test_deconv_weight_axes():
    w = rng.normal(size=(4, 6, 3, 2))  # (C_in, C_out, kh, kw)
    k = deconv_weight_caffe_to_tf(w)
    assert k.shape == (3, 2, 6, 4)  # (kh, kw, C_out, C_in)
    assert k[2, 1, 5, 3] == w[3, 5, 2, 1]


def test_inner_product_after_a_spatial_blob():
    c, h, w, n_out = 4, 3, 2, 5
    x = rng.normal(size=(2, c, h, w))
    W = rng.normal(size=(n_out, c * h * w))
    ref = x.reshape(2, -1) @ W.T  # Caffe InnerProduct on the C*H*W flattening
    kernel = inner_product_weight_caffe_to_tf(W, (c, h, w))
    got = x.transpose(0, 2, 3, 1).reshape(2, -1) @ kernel  # Keras Flatten + Dense on NHWC
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
    naive = x.transpose(0, 2, 3, 1).reshape(2, -1) @ W.T
    assert np.abs(naive - ref).max() > 0.1  # the classic bug really is a bug
    # H = W = 1: plain transpose
    assert np.array_equal(inner_product_weight_caffe_to_tf(W[:, :c], (c, 1, 1)), W[:, :c].T)
    assert np.array_equal(inner_product_weight_caffe_to_tf(W), W.T)

"""Spatial and structural Caffe layer types (convolution, pooling, resampling, cropping,
padding, permutation, embedding...) are captured and aligned by layerparity: for each type
of :data:`COVERED`, a tiny real Caffe net holding the layer (with non-default params) and
the Keras port a porter would write (a Keras layer, or a ``Lambda`` named like the Caffe
layer wrapping TF ops when Keras has none) pass with the layer in a compared row; and a
classic porting bug of that layer fails with the first divergence at it. Real Caffe, real TF.

:data:`COVERED` and :data:`NOT_YET` are read by the docs/layers.md generator (by AST: plain
dict literals of str -> str)."""

from __future__ import annotations

import caffe  # noqa: F401  (Caffe before TensorFlow: the other order segfaults)
import numpy as np
import pytest
import tensorflow as tf

from diagnose_cases import (
    assert_clean,
    caffe_net,
    compare,
    conv_w,
    f32,
    hwio,
    keras,
    keras_input,
    prototxt,
    rng,
)

#: Caffe type -> the TF/Keras counterpart its correct port in this file uses.
COVERED = {
    "Convolution": "keras.layers.ZeroPadding2D (Caffe's symmetric pad) + Conv2D(strides=2, groups=2, padding='valid'); Conv2D(dilation_rate=2, padding='same') for pad 2 dilation 2",
    "Deconvolution": "keras.layers.Conv2DTranspose(strides=2, padding='valid') + Cropping2D(pad) (kernel (in, out, kh, kw) -> (kh, kw, out, in)); group as a block-diagonal kernel (Conv2DTranspose has no groups)",
    "Pooling": "keras.layers.MaxPooling2D(padding='same') where it equals Caffe's ceil rounding; ZeroPadding2D + AveragePooling2D('valid') for AVE with pad (Caffe counts the pad in the divisor)",
    "InnerProduct": "keras.layers.Flatten + Dense with the kernel's rows reordered from C,H,W to H,W,C",
    "Crop": "keras.layers.Cropping2D with Caffe's offsets (axis 2)",
    "Pad": "tf.pad(mode='REFLECT') in a Lambda",
    "Permute": "keras.layers.Permute on the NHWC tensor (Caffe order (0,3,2,1)); nothing for SSD's (0,2,3,1) before a Flatten (the NHWC tensor already is in that order)",
    "Upsample": "keras.layers.UpSampling2D(interpolation='nearest')",
    "PixelShuffle": "tf.nn.depth_to_space in a Lambda, channels first reordered from Caffe's (c, r*r) grouping to TF's (r*r, c)",
    "BilinearInterpolate": "tf.compat.v1.image.resize_bilinear(align_corners=True) in a Lambda",
    "SPP": "a Lambda: per level tf.pad(-inf) + tf.nn.max_pool2d with Caffe's kernel/stride/pad, flattened C,H,W, concatenated",
    "Im2col": "tf.image.extract_patches in a Lambda (after tf.pad), channels reordered from (i*k + j)*C + c to c*k*k + i*k + j",
    "Embed": "keras.layers.Embedding (Caffe's (input_dim, num_output) table as is)",
    "MaxUnPool": "a Lambda: tf.scatter_nd of the pooled values at Caffe's mask (y*W + x per plane; the mask a Lambda named like the Pooling's mask top: tf.nn.max_pool_with_argmax // C)",
    "Resize": "a Lambda applying Caffe's interpolation matrices (tf.einsum): src = dst * in/out, neighbours past the border dropped",
}

#: Caffe types of this family not covered, and why (honest: what fails or is missing).
NOT_YET = {}


# -- the cases: each builds (net, model, x, layer) for a correct port or a classic bug ----------


def _model(inp, out):
    return keras.Model(inp, out)


def _lambda(fn, name, **kw):
    return keras.layers.Lambda(fn, name=name, **kw)


def case_convolution(tmp_path, bug):
    shape = (1, 4, 10, 12)
    w, b = conv_w(6, 2, 3, seed=1)
    w2, b2 = conv_w(5, 6, 3, seed=2)
    body = ('layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"\n'
            "  convolution_param { num_output: 6 kernel_size: 3 stride: 2 pad: 1 group: 2 } }\n"
            'layer { name: "conv_d" type: "Convolution" bottom: "conv" top: "conv_d"\n'
            "  convolution_param { num_output: 5 kernel_size: 3 pad: 2 dilation: 2 } }\n")
    net = caffe_net(tmp_path, prototxt({"data": shape}, body), {"conv": [w, b], "conv_d": [w2, b2]})
    inp = keras_input(shape)
    if bug:  # TF 'SAME' at stride 2: pads 0 before, 1 after
        conv = keras.layers.Conv2D(6, 3, strides=2, groups=2, padding="same", name="conv")
        out = conv(inp)
    else:
        conv = keras.layers.Conv2D(6, 3, strides=2, groups=2, padding="valid", name="conv")
        out = conv(keras.layers.ZeroPadding2D(1, name="conv_pad")(inp))
    conv_d = keras.layers.Conv2D(5, 3, dilation_rate=2, padding="same", name="conv_d")  # pad 2 each side
    model = _model(inp, conv_d(out))
    conv.set_weights([hwio(w), b])
    conv_d.set_weights([hwio(w2), b2])
    return net, model, f32(rng(2).standard_normal(shape)), "conv", "padding_asymmetry"


def case_deconvolution(tmp_path, bug):
    shape = (1, 3, 5, 6)
    r = rng(3)
    w, b = f32(r.standard_normal((3, 4, 3, 3)) * 0.3), f32(r.standard_normal(4) * 0.1)  # (in, out, kh, kw)
    wg = f32(r.standard_normal((4, 1, 4, 4)) * 0.3)  # group 4 (FCN's upsampling): (in, out / group, kh, kw)
    body = ('layer { name: "deconv" type: "Deconvolution" bottom: "data" top: "deconv"\n'
            "  convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 } }\n"  # 2H - 1
            'layer { name: "up" type: "Deconvolution" bottom: "deconv" top: "up"\n'
            "  convolution_param { num_output: 4 kernel_size: 4 stride: 2 pad: 1 group: 4 bias_term: false } }\n")
    net = caffe_net(tmp_path, prototxt({"data": shape}, body), {"deconv": [w, b], "up": [wg]})
    inp = keras_input(shape)
    if bug:  # 'same' gives s*H = 2H, one pixel more than Caffe's s(H-1) + k - 2p
        deconv = keras.layers.Conv2DTranspose(4, 3, strides=2, padding="same", name="deconv")
        out = deconv(inp)
    else:
        deconv = keras.layers.Conv2DTranspose(4, 3, strides=2, padding="valid", name="deconv")
        out = keras.layers.Cropping2D(1, name="deconv_crop")(deconv(inp))
    # Conv2DTranspose has no groups: the grouped kernel as a block-diagonal one
    up = keras.layers.Conv2DTranspose(4, 4, strides=2, padding="valid", use_bias=False, name="up")
    model = _model(inp, keras.layers.Cropping2D(1, name="up_crop")(up(out)))
    deconv.set_weights([np.ascontiguousarray(w.transpose(2, 3, 1, 0)), b])
    block = np.zeros((4, 4, 4, 4), np.float32)  # kh, kw, out, in
    for g in range(4):
        block[:, :, g, g] = wg[g, 0]
    up.set_weights([block])
    return net, model, f32(r.standard_normal(shape)), "deconv", "deconv_same_padding"


def case_pooling(tmp_path, bug):
    shape = (1, 3, 8, 10)
    body = ('layer { name: "pool" type: "Pooling" bottom: "data" top: "pool"\n'
            "  pooling_param { pool: MAX kernel_size: 3 stride: 2 } }\n"  # Caffe rounds up: 4 x 5
            'layer { name: "ave" type: "Pooling" bottom: "pool" top: "ave"\n'
            "  pooling_param { pool: AVE kernel_size: 3 stride: 1 pad: 1 } }\n")  # divides by 9, pad included
    net = caffe_net(tmp_path, prototxt({"data": shape}, body))
    inp = keras_input(shape)
    pool = keras.layers.MaxPooling2D(3, 2, padding="valid" if bug else "same", name="pool")
    ave = keras.layers.AveragePooling2D(3, 1, padding="valid", name="ave")
    model = _model(inp, ave(keras.layers.ZeroPadding2D(1, name="ave_pad")(pool(inp))))
    return net, model, f32(rng(4).standard_normal(shape)), "pool", "pool_rounding"


def case_innerproduct(tmp_path, bug):
    shape = (2, 3, 4, 5)
    r = rng(5)
    w, b = f32(r.standard_normal((7, 60)) * 0.2), f32(r.standard_normal(7) * 0.1)
    body = ('layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"\n'
            "  inner_product_param { num_output: 7 } }\n")
    net = caffe_net(tmp_path, prototxt({"data": shape}, body), {"fc": [w, b]})
    inp = keras_input(shape)
    dense = keras.layers.Dense(7, name="fc")
    model = _model(inp, dense(keras.layers.Flatten(name="flatten")(inp)))
    # Caffe's rows are in C,H,W order; Keras flattens H,W,C
    kernel = w.T if bug else w.reshape(7, 3, 4, 5).transpose(2, 3, 1, 0).reshape(60, 7)
    dense.set_weights([np.ascontiguousarray(kernel), b])
    return net, model, f32(r.standard_normal(shape)), "fc", "flatten_order"


def case_crop(tmp_path, bug):
    shape = (1, 3, 11, 12)
    w, b = conv_w(2, 3, 5, seed=6)
    body = ('layer { name: "ref" type: "Convolution" bottom: "data" top: "ref"\n'
            "  convolution_param { num_output: 2 kernel_size: 5 } }\n"
            'layer { name: "crop" type: "Crop" bottom: "data" bottom: "ref" top: "crop"\n'
            "  crop_param { axis: 2 offset: 1 offset: 3 } }\n")  # (7, 8) window at (1, 3)
    net = caffe_net(tmp_path, prototxt({"data": shape}, body), {"ref": [w, b]})
    inp = keras_input(shape)
    conv = keras.layers.Conv2D(2, 5, name="ref")
    ref = conv(inp)
    offsets = ((3, 1), (1, 3)) if bug else ((1, 3), (3, 1))  # the bug: offsets of H and W swapped
    crop = keras.layers.Cropping2D(offsets, name="crop")(inp)
    model = keras.Model(inp, [crop, ref])
    conv.set_weights([hwio(w), b])
    return net, model, f32(rng(7).standard_normal(shape)), "crop", "spatial_shift"


def case_pad(tmp_path, bug):
    shape = (1, 2, 6, 7)
    body = ('layer { name: "pad" type: "Pad" bottom: "data" top: "pad"\n'
            "  pad_param { pad_type: REFLECT pad_u: 1 pad_d: 2 pad_l: 3 pad_r: 0 } }\n")
    net = caffe_net(tmp_path, prototxt({"data": shape}, body))
    inp = keras_input(shape)
    pads = [[0, 0], [2, 1], [3, 0], [0, 0]] if bug else [[0, 0], [1, 2], [3, 0], [0, 0]]  # bug: up/down swapped
    out = _lambda(lambda t: tf.pad(t, pads, mode="REFLECT"), "pad")(inp)
    return net, _model(inp, out), f32(rng(8).standard_normal(shape)), "pad", "spatial_shift"


def case_permute(tmp_path, bug):
    shape = (1, 2, 3, 4)
    body = ('layer { name: "perm" type: "Permute" bottom: "data" top: "perm"\n'
            "  permute_param { order: 0 order: 3 order: 2 order: 1 } }\n")  # N, W, H, C
    net = caffe_net(tmp_path, prototxt({"data": shape}, body))
    inp = keras_input(shape)  # (H, W, C)
    # Caffe's (N, W, H, C) is Keras' (W, H, C): Permute((2, 1, 3)); the bug reshapes to that shape
    # instead of transposing. (A Permute with another order is not a divergence at the layer:
    # layerparity's labels follow the data on both sides, so it shows at the Flatten after it.)
    if bug:
        out = keras.layers.Reshape((shape[3], shape[2], shape[1]), name="perm")(inp)
    else:
        out = keras.layers.Permute((2, 1, 3), name="perm")(inp)
    return net, _model(inp, out), f32(rng(9).standard_normal(shape)), "perm", "reshape_not_transpose"


def case_upsample(tmp_path, bug):
    shape = (1, 3, 4, 5)
    body = ('layer { name: "up" type: "Upsample" bottom: "data" top: "up"\n'
            "  upsample_param { scale: 3 } }\n")
    net = caffe_net(tmp_path, prototxt({"data": shape}, body))
    inp = keras_input(shape)
    out = keras.layers.UpSampling2D(3, interpolation="bilinear" if bug else "nearest", name="up")(inp)
    return net, _model(inp, out), f32(rng(10).standard_normal(shape)), "up", None


def case_pixelshuffle(tmp_path, bug):
    shape = (1, 8, 3, 4)
    r = 2
    body = ('layer { name: "ps" type: "PixelShuffle" bottom: "data" top: "ps"\n'
            f"  pixelshuffle_param {{ upscale_factor: {r} }} }}\n")
    net = caffe_net(tmp_path, prototxt({"data": shape}, body))
    inp = keras_input(shape)

    def shuffle(t):
        if not bug:  # Caffe's channel q = c*r*r + (i*r + j); depth_to_space reads (i*r + j)*C + c
            n, h, w, ch = t.shape
            t = tf.reshape(tf.transpose(tf.reshape(t, (-1, h, w, ch // (r * r), r * r)), (0, 1, 2, 4, 3)),
                           (-1, h, w, ch))
        return tf.nn.depth_to_space(t, r)

    out = _lambda(shuffle, "ps")(inp)
    return net, _model(inp, out), f32(rng(11).standard_normal(shape)), "ps", "pixel_shuffle_order"


def case_bilinearinterpolate(tmp_path, bug):
    shape = (1, 3, 5, 6)
    body = ('layer { name: "interp" type: "BilinearInterpolate" bottom: "data" top: "interp"\n'
            "  bilinear_interpolate_param { dst_h: 9 dst_w: 13 align_corners: true } }\n")
    net = caffe_net(tmp_path, prototxt({"data": shape}, body))
    inp = keras_input(shape)
    if bug:  # TF2's resize: half-pixel centres
        fn = lambda t: tf.image.resize(t, (9, 13), method="bilinear")  # noqa: E731
    else:
        fn = lambda t: tf.compat.v1.image.resize_bilinear(t, (9, 13), align_corners=True)  # noqa: E731
    out = _lambda(fn, "interp")(inp)
    return net, _model(inp, out), f32(rng(12).standard_normal(shape)), "interp", "interp_align_corners"


def _caffe_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """Caffe Resize's (util_img BiLinearResizeMat_cpu) weights: out[o] = sum_i m[o, i] in[i]."""
    m = np.zeros((n_out, n_in), np.float32)
    scale = np.float32(n_in) / np.float32(n_out)
    for o in range(n_out):
        f = np.float32(o) * scale
        i = int(np.floor(f))
        f -= i
        m[o, i] += 1 - f
        if i + 1 < n_in:  # past the border: dropped, not clamped
            m[o, i + 1] += f
    return m


def case_resize(tmp_path, bug):
    shape = (1, 2, 4, 5)
    oh, ow = 7, 9
    body = ('layer { name: "resize" type: "Resize" bottom: "data" top: "resize"\n'
            f"  resize_param {{ height: {oh} width: {ow} }} }}\n")
    net = caffe_net(tmp_path, prototxt({"data": shape}, body))
    inp = keras_input(shape)
    mh, mw = _caffe_resize_matrix(shape[2], oh), _caffe_resize_matrix(shape[3], ow)
    if bug:  # TF's asymmetric bilinear clamps at the border where Caffe's drops the neighbour
        fn = lambda t: tf.compat.v1.image.resize_bilinear(t, (oh, ow))  # noqa: E731
    else:
        fn = lambda t: tf.einsum("ph,nhwc,qw->npqc", mh, t, mw)  # noqa: E731
    out = _lambda(fn, "resize")(inp)
    return net, _model(inp, out), f32(rng(13).standard_normal(shape)), "resize", None


def case_spp(tmp_path, bug):
    shape = (1, 3, 9, 7)
    body = ('layer { name: "spp" type: "SPP" bottom: "data" top: "spp"\n'
            "  spp_param { pyramid_height: 3 pool: MAX } }\n")  # bins 1, 2, 4 per side: (1, 3 * 21)
    net = caffe_net(tmp_path, prototxt({"data": shape}, body))
    inp = keras_input(shape)
    n, c, h, w = shape

    def level(t, bins):
        if bug:  # adaptive pooling's bins (floor(i*H/b), ceil((i+1)*H/b)): not Caffe's windows
            rows = [[tf.reduce_max(t[:, (i * h) // bins:-(-(i + 1) * h // bins), (j * w) // bins:-(-(j + 1) * w // bins)],
                                   axis=(1, 2)) for j in range(bins)] for i in range(bins)]
            p = tf.stack([tf.stack(r, axis=1) for r in rows], axis=1)  # N, b, b, C
        else:  # Caffe's SPP: kernel ceil(H/b), stride = kernel, pad (kernel*b - H + 1) // 2 before
            kh, kw = -(-h // bins), -(-w // bins)
            ph, pw = (kh * bins - h + 1) // 2, (kw * bins - w + 1) // 2
            t = tf.pad(t, [[0, 0], [ph, kh * bins - h - ph], [pw, kw * bins - w - pw], [0, 0]],
                       constant_values=-3.0e38)
            p = tf.nn.max_pool2d(t, (kh, kw), (kh, kw), "VALID")
        return tf.reshape(tf.transpose(p, (0, 3, 1, 2)), (n, -1))  # Caffe flattens each level C, H, W

    out = _lambda(lambda t: tf.concat([level(t, 2**i) for i in range(3)], axis=1), "spp")(inp)
    return net, _model(inp, out), f32(rng(14).standard_normal(shape)), "spp", "spp_pyramid"


def case_im2col(tmp_path, bug):
    shape = (1, 2, 7, 8)
    k, s, p = 3, 2, 1
    body = ('layer { name: "cols" type: "Im2col" bottom: "data" top: "cols"\n'
            f"  convolution_param {{ kernel_size: {k} stride: {s} pad: {p} }} }}\n")  # (1, 2*9, 4, 4)
    net = caffe_net(tmp_path, prototxt({"data": shape}, body))
    inp = keras_input(shape)
    c = shape[1]

    def im2col(t):
        t = tf.pad(t, [[0, 0], [p, p], [p, p], [0, 0]])
        cols = tf.image.extract_patches(t, [1, k, k, 1], [1, s, s, 1], [1, 1, 1, 1], "VALID")
        if bug:  # TF's patch channels are (i*k + j)*C + c; Caffe's are c*k*k + i*k + j
            return cols
        _, oh, ow, _ = cols.shape
        return tf.reshape(tf.transpose(tf.reshape(cols, (-1, oh, ow, k * k, c)), (0, 1, 2, 4, 3)),
                          (-1, oh, ow, c * k * k))

    out = _lambda(im2col, "cols")(inp)
    return net, _model(inp, out), f32(rng(15).standard_normal(shape)), "cols", "channel_order"


def case_embed(tmp_path, bug):
    shape = (2, 5)
    vocab = dim = 6  # square, so the bug's transposed table loads too
    body = ('layer { name: "embed" type: "Embed" bottom: "data" top: "embed"\n'
            f"  embed_param {{ num_output: {dim} input_dim: {vocab} bias_term: false }} }}\n")
    table = f32(rng(16).standard_normal((vocab, dim)))  # Caffe's blob: (input_dim, num_output), as Keras'
    net = caffe_net(tmp_path, prototxt({"data": shape}, body), {"embed": [table]})
    inp = keras.Input(shape[1:], batch_size=shape[0], name="data")
    emb = keras.layers.Embedding(vocab, dim, name="embed")
    model = _model(inp, emb(inp))
    emb.set_weights([np.ascontiguousarray(table.T if bug else table)])  # the bug: transposed like an InnerProduct's
    x = f32(rng(17).integers(0, vocab, shape))
    return net, model, x, "embed", None


def case_maxunpool(tmp_path, bug):
    shape = (2, 3, 6, 8)
    n, c, h, w = shape
    body = ('layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "mask"\n'
            "  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }\n"  # mask: h*W + w in each plane
            'layer { name: "unpool" type: "MaxUnPool" bottom: "pool" bottom: "mask" top: "unpool"\n'
            f"  max_unpool_param {{ dst_h: {h} dst_w: {w} }} }}\n")
    net = caffe_net(tmp_path, prototxt({"data": shape}, body))
    inp = keras_input(shape)
    pooled = keras.layers.MaxPooling2D(2, name="pool")(inp)

    def mask(x):  # TF's argmax per image is (y*W + x)*C + c: Caffe's mask is y*W + x
        _, am = tf.nn.max_pool_with_argmax(x, 2, 2, "VALID", include_batch_in_index=False)
        return tf.cast(am // c, tf.float32)

    def unpool(args):
        p, m = args
        m = tf.cast(m, tf.int32)
        b = tf.reshape(tf.range(n), (n, 1, 1, 1))
        if bug:  # Caffe's mask used as TF's argmax (channel stride forgotten)
            idx = b * (h * w * c) + m
        else:
            idx = (b * (h * w) + m) * c + tf.reshape(tf.range(c), (1, 1, 1, c))
        flat = tf.scatter_nd(tf.reshape(idx, (-1, 1)), tf.reshape(p, (-1,)), [n * h * w * c])
        return tf.reshape(flat, (n, h, w, c))

    out = _lambda(unpool, "unpool")([pooled, _lambda(mask, "pool_mask")(inp)])
    return net, _model(inp, out), f32(rng(18).standard_normal(shape)), "unpool", None


CASES = {
    "Convolution": case_convolution,
    "Deconvolution": case_deconvolution,
    "Pooling": case_pooling,
    "InnerProduct": case_innerproduct,
    "Crop": case_crop,
    "Pad": case_pad,
    "Permute": case_permute,
    "Upsample": case_upsample,
    "PixelShuffle": case_pixelshuffle,
    "BilinearInterpolate": case_bilinearinterpolate,
    "Resize": case_resize,
    "SPP": case_spp,
    "Im2col": case_im2col,
    "Embed": case_embed,
    "MaxUnPool": case_maxunpool,
}


def test_every_type_of_the_family_is_covered_or_said_not_yet():
    family = {"Convolution", "Deconvolution", "Pooling", "SPP", "Im2col", "InnerProduct", "Crop", "Pad",
              "Permute", "Resize", "BilinearInterpolate", "Upsample", "PixelShuffle", "MaxUnPool", "Embed"}
    assert set(COVERED) | set(NOT_YET) == family and not set(COVERED) & set(NOT_YET)
    assert set(CASES) == set(COVERED)


@pytest.mark.parametrize("caffe_type", sorted(COVERED))
def test_a_correct_port_passes_with_the_layer_aligned(tmp_path, caffe_type):
    net, model, x, layer, _ = CASES[caffe_type](tmp_path, bug=False)
    assert layer in net._layer_names and net.layers[list(net._layer_names).index(layer)].type == caffe_type
    report = compare(net, model, x)
    assert_clean(report)
    assert bool(report), report.summary()
    assert any(layer in r.caffe_chain for r in report.rows), report.summary()
    assert layer not in report.unmapped_caffe, report.summary()
    assert report.coverage is not None and layer not in report.coverage.uncovered, report.summary()


@pytest.mark.parametrize("caffe_type", sorted(COVERED))
def test_a_classic_porting_bug_fails_at_the_layer(tmp_path, caffe_type):
    net, model, x, layer, kind = CASES[caffe_type](tmp_path, bug=True)
    report = compare(net, model, x)
    fd = report.first_divergence
    assert not report and fd is not None, report.summary()
    assert layer in fd.caffe_chain, report.summary()
    if kind is not None:
        assert fd.diagnoses and fd.diagnoses[0].kind == kind, [d.kind for d in fd.diagnoses]


def _ssd_head(tmp_path, bug):
    """SSD's head: Permute(0,2,3,1) -> Flatten -> InnerProduct. An NHWC port has no Permute
    (its tensor already is N,H,W,C): Flatten + Dense with Caffe's rows as they are. The bug
    reorders the rows from C,H,W as for an InnerProduct on an unpermuted blob."""
    shape = (1, 4, 3, 5)
    r = rng(19)
    w, b = f32(r.standard_normal((6, 60)) * 0.2), f32(r.standard_normal(6) * 0.1)
    body = ('layer { name: "perm" type: "Permute" bottom: "data" top: "perm"\n'
            "  permute_param { order: 0 order: 2 order: 3 order: 1 } }\n"
            'layer { name: "flat" type: "Flatten" bottom: "perm" top: "flat" }\n'
            'layer { name: "fc" type: "InnerProduct" bottom: "flat" top: "fc"\n'
            "  inner_product_param { num_output: 6 } }\n")
    net = caffe_net(tmp_path, prototxt({"data": shape}, body), {"fc": [w, b]})
    inp = keras_input(shape)
    dense = keras.layers.Dense(6, name="fc")
    model = _model(inp, dense(keras.layers.Flatten(name="flat")(inp)))
    kernel = w.reshape(6, 4, 3, 5).transpose(2, 3, 1, 0).reshape(60, 6) if bug else w.T
    dense.set_weights([np.ascontiguousarray(kernel), b])
    return net, model, f32(r.standard_normal(shape)), "perm"


def test_a_permute_the_nhwc_port_does_not_need_is_not_a_coverage_failure(tmp_path):
    net, model, x, _ = _ssd_head(tmp_path, bug=False)
    report = compare(net, model, x)
    assert_clean(report)
    assert bool(report) and "perm" not in report.coverage.uncovered, report.summary()
    assert report.row("fc").passed


def test_a_permute_s_effect_is_seen_downstream(tmp_path):
    net, model, x, _ = _ssd_head(tmp_path, bug=True)
    report = compare(net, model, x)
    fd = report.first_divergence
    assert not report and fd is not None and "fc" in fd.caffe_chain, report.summary()
    assert fd.diagnoses and fd.diagnoses[0].kind == "flatten_order", [d.kind for d in fd.diagnoses]


@pytest.mark.parametrize("caffe_type", ["Resize", "Upsample"])
def test_a_resize_that_is_not_caffe_s_bilinear_interp_is_not_told_to_align_corners(tmp_path, caffe_type):
    """Upsample is nearest and this fork's Resize samples dst * in/out: a TF port interpolating
    otherwise fails, but aligning corners is not the fix (the interp rule used to say so)."""
    net, model, x, layer, _ = CASES[caffe_type](tmp_path, bug=True)
    fd = compare(net, model, x).first_divergence
    assert fd is not None and layer in fd.caffe_chain
    assert "interp_align_corners" not in [d.kind for d in fd.diagnoses], [d.summary for d in fd.diagnoses]

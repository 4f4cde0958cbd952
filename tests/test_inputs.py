"""Input files: .npy / .npz in NCHW, trace archives, images with Caffe-style preprocessing."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from layerparity.errors import InputDataError
from layerparity.inputs import Preprocess, batch_size, load_input, split_batch
from layerparity.trace import Probe, Trace


def test_npy_chw_gets_a_batch_axis_and_nchw_is_kept(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.float64).reshape(2, 3, 4)
    np.save(tmp_path / "chw.npy", a)
    x = load_input(tmp_path / "chw.npy")
    assert x.shape == (1, 2, 3, 4) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0], a)
    np.save(tmp_path / "nchw.npy", np.zeros((5, 3, 2, 2), np.float32))
    assert load_input(tmp_path / "nchw.npy").shape == (5, 3, 2, 2)


def test_npz_one_array_per_input_and_a_single_key(tmp_path):
    np.savez(tmp_path / "two.npz", data=np.zeros((2, 3, 4, 4)), im_info=np.ones((2, 3)))
    d = load_input(tmp_path / "two.npz")
    assert set(d) == {"data", "im_info"} and d["data"].shape == (2, 3, 4, 4)
    assert batch_size(d) == 2
    parts = split_batch(d)
    assert len(parts) == 2 and parts[1]["im_info"].shape == (1, 3)
    np.savez(tmp_path / "one.npz", whatever=np.ones((1, 3, 2, 2)))
    assert load_input(tmp_path / "one.npz").shape == (1, 3, 2, 2)


def test_npz_trace_archive_gives_its_caffe_inputs(tmp_path):
    x = np.random.RandomState(0).rand(1, 3, 2, 2).astype(np.float32)
    t = Trace("caffe", "net.prototxt", [Probe("data", "Input", value=x)], inputs={"data": x})
    t.save(tmp_path / "c.npz")
    np.testing.assert_array_equal(load_input(tmp_path / "c.npz"), x)
    Trace("tensorflow", "m.keras", [Probe("data", value=x)], inputs={"data": x}).save(tmp_path / "t.npz")
    with pytest.raises(InputDataError, match=re.escape("a tensorflow trace archive; only a Caffe trace's inputs are in NCHW")):
        load_input(tmp_path / "t.npz")


def _png(path, pixels):
    Image.fromarray(np.asarray(pixels, dtype=np.uint8), "RGB").save(path)


def test_image_preprocessing_follows_caffe_transformer_order(tmp_path):
    px = [[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 255, 255]]]  # 2x2 RGB
    _png(tmp_path / "im.png", px)
    pre = Preprocess(mean=(10.0, 20.0, 30.0), raw_scale=255.0, input_scale=0.5, channel_swap=(2, 1, 0))
    x = load_input(tmp_path / "im.png", pre)
    assert x.shape == (1, 3, 2, 2) and x.dtype == np.float32
    rgb = np.asarray(px, np.float32) / 255.0          # caffe.io.load_image: RGB in [0, 1], HWC
    bgr = rgb.transpose(2, 0, 1)[[2, 1, 0]]           # CHW, then channel swap
    expected = (bgr * 255.0 - np.array([10.0, 20.0, 30.0])[:, None, None]) * 0.5
    np.testing.assert_allclose(x[0], expected, rtol=0, atol=1e-5)
    assert x[0, 0, 1, 0] == pytest.approx((255 - 10) * 0.5)  # blue pixel, channel 0 after the swap = B


def test_image_resize_and_keyword_form(tmp_path):
    _png(tmp_path / "im.png", np.full((4, 6, 3), 128))
    x = load_input(tmp_path / "im.png", resize=(8, 5), raw_scale=255)
    assert x.shape == (1, 3, 8, 5)
    np.testing.assert_allclose(x, 128.0, atol=1e-4)


@pytest.mark.parametrize(
    "make, kw, message",
    [
        (lambda p: None, {}, "{p}: no such input file"),
        (lambda p: np.save(p, np.array([1.0, np.nan])), {}, "{p}: array holds 1 NaN/Inf values"),
        (lambda p: np.save(p, np.array(["a", "b"])), {}, "{p}: array has dtype <U1; expected numbers"),
        (lambda p: np.save(p, np.array([{}], dtype=object), allow_pickle=True), {}, "{p}: not a plain numeric .npy file"),
        (lambda p: p.write_bytes(b"junk"), {}, "{p}: not a .npy file (no NumPy header)"),
        (lambda p: np.save(p, np.zeros((1, 3, 2, 2))), {"mean": (1.0,)}, "{p}: image preprocessing (mean) applies to image files only"),
    ],
)
def test_bad_array_files_name_the_file(tmp_path, make, kw, message):
    p = tmp_path / "x.npy"
    make(p)
    with pytest.raises(InputDataError, match="^" + re.escape(message.format(p=p))):
        load_input(p, **kw)


def test_bad_images_name_the_file_and_problem(tmp_path):
    p = tmp_path / "fake.png"
    p.write_text("not an image")
    with pytest.raises(InputDataError, match=re.escape(f"{p}: not a .npy, .npz or image file Pillow can read")):
        load_input(p)
    good = tmp_path / "ok.png"
    _png(good, np.zeros((2, 2, 3)))
    with pytest.raises(InputDataError, match=re.escape(f"{good}: channel swap (0, 1) is not a permutation of the 3 channels")):
        load_input(good, channel_swap=(0, 1))
    with pytest.raises(InputDataError, match=re.escape(f"{good}: mean has 2 values; the image has 3 channels (give B G R)")):
        load_input(good, mean=(1.0, 2.0))
    with pytest.raises(InputDataError, match=re.escape(f"{good}: resize needs positive H W, got 0 3")):
        load_input(good, resize=(0, 3))
    with pytest.raises(InputDataError, match=re.escape(f"{tmp_path}: is a directory")):
        load_input(tmp_path)


def test_npz_with_mismatched_batches_is_refused(tmp_path):
    p = tmp_path / "x.npz"
    np.savez(p, a=np.zeros((2, 3, 2, 2)), b=np.zeros((3, 4)))
    with pytest.raises(InputDataError, match=re.escape(f"{p}: the arrays have different batch sizes")):
        load_input(p)

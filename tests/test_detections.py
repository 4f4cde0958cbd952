"""layerparity.detections: a DetectionOutput's TF rows put in Caffe's order before the metrics
(pure NumPy; the end-to-end case against real Caffe is in
tests/layer_types/test_sequence_detection_layers.py)."""

from __future__ import annotations

import numpy as np

from layerparity.detections import SET_KINDS, in_reference_order, iou


def _dets(rng: np.random.Generator, k: int = 12, labels: int = 3) -> np.ndarray:
    """k detections of image 0 in Caffe's order: by label, then score."""
    lo = rng.uniform(0, 0.6, (k, 2))
    box = np.concatenate([lo, lo + rng.uniform(0.1, 0.4, (k, 2))], 1)
    rows = np.column_stack([np.zeros(k), rng.integers(1, labels, k), rng.uniform(0.3, 1, k), box])
    rows = rows[np.lexsort((-rows[:, 2], rows[:, 1]))]
    return rows.astype(np.float32).reshape(1, 1, k, 7)


def test_the_same_detections_in_another_order_come_back_in_caffes():
    ref = _dets(np.random.default_rng(0))
    rows = ref[0, 0]
    by_score = rows[np.argsort(-rows[:, 2])].reshape(ref.shape)  # TF's usual order
    assert not np.array_equal(by_score, ref)
    got = in_reference_order(ref, by_score)
    assert got.shape == ref.shape and got.dtype == ref.dtype
    np.testing.assert_array_equal(got, ref)


def test_float_noise_does_not_stop_the_match_and_a_wrong_value_still_shows():
    rng = np.random.default_rng(1)
    ref = _dets(rng)
    noisy = ref + rng.normal(0, 1e-6, ref.shape).astype(np.float32) * (np.arange(7) >= 2)
    shuffled = noisy[:, :, rng.permutation(ref.shape[2])]
    np.testing.assert_allclose(in_reference_order(ref, shuffled), ref, atol=1e-5)
    wrong = shuffled.copy()
    wrong[0, 0, 0, 3:] += 0.05  # one box moved: it still pairs, and still differs
    assert np.abs(in_reference_order(ref, wrong) - ref).max() > 0.04


def test_rows_pair_only_within_their_image_and_label_best_overlap_first():
    ref = np.array([[0, 1, .9, 0, 0, .5, .5], [0, 1, .8, .5, .5, 1, 1], [0, 2, .7, 0, 0, .5, .5]], np.float32)
    got = np.array([[0, 2, .7, 0, 0, .5, .5], [0, 1, .8, .52, .5, 1, 1], [0, 1, .9, 0, 0, .49, .5]], np.float32)
    np.testing.assert_array_equal(in_reference_order(ref, got), got[[2, 1, 0]])
    other_label = got.copy()
    other_label[0, 1] = 3  # label 2 is now nowhere in TF's rows: that Caffe row takes the row left over
    out = in_reference_order(ref, other_label)
    np.testing.assert_array_equal(out[2], other_label[0])


def test_anything_that_is_not_two_equal_tables_of_detections_is_returned_as_is():
    ref = _dets(np.random.default_rng(2))
    shorter = ref[:, :, :-1]
    assert in_reference_order(ref, shorter) is shorter  # another count: a shape mismatch, unmatched
    x = np.arange(24.0).reshape(1, 2, 3, 4)
    assert in_reference_order(x, x[..., ::-1]) is not None
    np.testing.assert_array_equal(in_reference_order(x, x[..., ::-1]), x[..., ::-1])
    empty = np.zeros((1, 1, 0, 7), np.float32)
    assert in_reference_order(empty, empty).shape == (1, 1, 0, 7)


def test_nan_rows_are_matched_without_warnings():
    ref = _dets(np.random.default_rng(3), k=4)
    got = ref[:, :, ::-1].copy()
    got[0, 0, 0, 2:] = np.nan
    with np.errstate(all="raise"):
        out = in_reference_order(ref, got)
    assert out.shape == ref.shape and np.isnan(out).any()


def test_iou_is_caffes_normalized_jaccard_overlap():
    assert iou(np.array([[0, 0, 1, 1]]), np.array([[0, 0, 1, 1]]))[0, 0] == 1.0
    assert iou(np.array([[0, 0, 1, 1]]), np.array([[.5, 0, 1.5, 1]]))[0, 0] == 1 / 3
    assert iou(np.array([[0, 0, 0, 0]]), np.array([[0, 0, 0, 0]]))[0, 0] == 0.0  # empty: no division by zero
    assert SET_KINDS == {"DetectionOutput"}

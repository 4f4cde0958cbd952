"""Detections compared as a set: a ``DetectionOutput``'s TF rows put in Caffe's row order.

Caffe's ``DetectionOutput`` lists its detections, rows ``[image, label, score, xmin, ymin,
xmax, ymax]`` of a 1 x 1 x K x 7 blob, by image, then label, then score. A correct TF port
may list the same detections in another order (by score over every label, as TF's
combined NMS does), so comparing row i with row i would fail it. Before the metrics the
TF rows are matched to Caffe's: each Caffe row takes the TF row of the same image and
label that overlaps it most (IoU, scores closest on a tie), the best-overlapping pairs
first; rows left without a partner keep their order. The values are then compared as
any others: a wrong box, score or label still fails, and a different number of
detections is still a shape mismatch (nothing is matched then).

>>> ref = np.array([[0, 1, .9, 0, 0, 1, 1], [0, 2, .8, 0, 0, .5, .5]], np.float32)
>>> in_reference_order(ref, ref[::-1])[:, 1].tolist()
[1.0, 2.0]
"""

from __future__ import annotations

import numpy as np

__all__ = ["SET_KINDS", "in_reference_order", "iou"]

#: Caffe layer types whose output rows are a set of detections (width 7), in no order a
#: port must share.
SET_KINDS = frozenset({"DetectionOutput"})

_WIDTH = 7


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes ``a`` (n, 4) and ``b`` (m, 4), ``xmin, ymin, xmax, ymax`` in
    normalized coordinates (no ``+ 1`` pixel), as Caffe's ``JaccardOverlap``: (n, m).

    >>> iou(np.array([[0, 0, 2, 2]]), np.array([[1, 1, 3, 3], [5, 5, 6, 6]])).round(3).tolist()
    [[0.143, 0.0]]
    """
    a = np.asarray(a, np.float64)[:, None, :]
    b = np.asarray(b, np.float64)[None, :, :]
    w = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    h = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = w * h

    def area(x: np.ndarray) -> np.ndarray:
        return np.clip(x[..., 2] - x[..., 0], 0, None) * np.clip(x[..., 3] - x[..., 1], 0, None)

    union = area(a) + area(b) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
    return np.nan_to_num(out, nan=0.0)


def in_reference_order(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """``got``'s detection rows reordered to match ``ref``'s (same shape as ``got``).

    Both hold rows of 7 values ``[image, label, score, xmin, ymin, xmax, ymax]``; ``got``
    is returned as is when the shapes differ or the rows are not 7 wide.
    """
    ref, got = np.asarray(ref), np.asarray(got)
    if ref.shape != got.shape or ref.ndim == 0 or ref.shape[-1] != _WIDTH or got.size == 0:
        return got
    r = ref.reshape(-1, _WIDTH).astype(np.float64)
    g = got.reshape(-1, _WIDTH)
    g64 = g.astype(np.float64)
    same = (r[:, None, 0] == g64[None, :, 0]) & (r[:, None, 1] == g64[None, :, 1])
    ri, gi = np.nonzero(same)
    overlap = iou(r[:, 3:], g64[:, 3:])[ri, gi]
    gap = np.nan_to_num(np.abs(r[ri, 2] - g64[gi, 2]), nan=np.inf)
    order = np.lexsort((gi, ri, gap, -overlap))  # the best overlap first, then the closest score
    partner = np.full(len(r), -1)
    taken = np.zeros(len(g), bool)
    for k in order:
        i, j = ri[k], gi[k]
        if partner[i] < 0 and not taken[j]:
            partner[i], taken[j] = j, True
    rest = iter(np.flatnonzero(~taken))
    perm = np.array([p if p >= 0 else next(rest) for p in partner])
    return g[perm].reshape(got.shape)

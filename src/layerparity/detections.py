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

A Keras SSD port in ssd_keras's convention (its ``DecodeDetections``) returns another table:
N x top_k x 6, rows ``[class, score, xmin, ymin, xmax, ymax]`` per image, best score first,
padded with all-zero rows to top_k. :func:`read_table` reads such a table as Caffe's rows
(the image is the batch index) when the shapes leave no other reading: TF 3-D with 6
columns against Caffe's 4-D blob of 7. Only all-zero rows after the last detection are
padding; what is left must then be as many detections as Caffe's, or it is a shape mismatch
saying so. Boxes are never rescaled: pixel boxes against Caffe's normalized ones fail on
their values, and the row's note says which scale TF's boxes look like.

>>> ref = np.array([[0, 1, .9, 0, 0, 1, 1], [0, 2, .8, 0, 0, .5, .5]], np.float32)
>>> in_reference_order(ref, ref[::-1])[:, 1].tolist()
[1.0, 2.0]
"""

from __future__ import annotations

import numpy as np

__all__ = ["SET_KINDS", "detection_count", "in_reference_order", "iou", "read_table"]

#: Caffe layer types whose output rows are a set of detections (width 7), in no order a
#: port must share.
SET_KINDS = frozenset({"DetectionOutput"})

_WIDTH = 7
#: ssd_keras's DecodeDetections rows: class, score, xmin, ymin, xmax, ymax (no image column)
_TABLE_WIDTH = 6


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


def detection_count(ref: np.ndarray) -> int:
    """How many detections Caffe's DetectionOutput blob lists: its rows, or 0 when it holds only
    the rows Caffe writes when nothing is kept (``[image, -1, -1, ...]``).

    >>> detection_count(np.array([[[[0, -1, -1, -1, -1, -1, -1]]]], np.float32))
    0
    """
    r = np.asarray(ref).reshape(-1, _WIDTH)
    return 0 if len(r) and np.all(r[:, 1:] == -1) else len(r)


def read_table(ref: np.ndarray, got: np.ndarray) -> tuple[np.ndarray | None, str]:
    """TF's ``got`` read as Caffe's detection rows when it is ssd_keras's table, and how.

    ``ref`` is Caffe's 1 x 1 x K x 7 blob; ``got`` is read only when it is N x top_k x 6
    (``[class, score, xmin, ymin, xmax, ymax]`` per image, all-zero rows padding the end):
    the rows become ``[n, class, score, box]``, 1 x 1 x M x 7 where M counts the detections,
    which may differ from K (a shape mismatch for the caller). ``(None, "")`` when ``got``
    is not such a table (another shape), ``(None, why)`` when it is 6 wide but cannot be
    read unambiguously (a zero row before a detection). Caffe's "no detection" rows (label
    -1) stand for an empty set: TF's all-padding table then reads as those rows.

    >>> ref = np.array([[[[0, 1, .9, .1, .1, .5, .5]]]], np.float32)
    >>> rows, how = read_table(ref, np.array([[[1, .9, .1, .1, .5, .5], [0] * 6]], np.float32))
    >>> rows.tolist() == ref.tolist(), how.split(": ")[1]
    (True, '1 detection(s), 1 padding row(s)')
    """
    ref, got = np.asarray(ref), np.asarray(got)
    if ref.ndim != 4 or ref.shape[:2] != (1, 1) or ref.shape[-1] != _WIDTH or got.ndim != 3 \
            or got.shape[-1] != _TABLE_WIDTH:
        return None, ""
    conv = (f"tf {tuple(got.shape)} read as ssd_keras's DecodeDetections table [class, score, xmin, ymin, "
            "xmax, ymax] per image, all-zero rows after the last detection taken as padding")
    rows, padding = [], 0
    for n, table in enumerate(got):
        zero = np.all(table == 0, axis=1)
        used = len(zero) - int(np.argmin(zero[::-1])) if not zero.all() else 0  # rows up to the last detection
        if zero[:used].any():
            k = int(np.flatnonzero(zero[:used])[0])
            return None, (f"tf {tuple(got.shape)} not read as ssd_keras's DecodeDetections table: image {n} has an "
                          f"all-zero row ({k}) before a detection (row {used - 1}), so zero rows are not only padding")
        padding += len(zero) - used
        rows += [np.concatenate([[n], r]) for r in table[:used].astype(np.float64)]
    r = ref.reshape(-1, _WIDTH)
    none = len(r) > 0 and detection_count(r) == 0
    how = f"{conv}: {len(rows)} detection(s), {padding} padding row(s)"
    if not rows and none and len(r) == len(got):
        return np.array([[n] + [-1] * (_WIDTH - 1) for n in range(len(got))], got.dtype)[None, None], \
            how + "; no detection on either side (Caffe's rows of -1)"
    out = np.array(rows, np.float64).reshape(1, 1, len(rows), _WIDTH).astype(got.dtype)
    boxes, cboxes = out[..., 3:], r[:, 3:] if not none else r[:0, 3:]
    tb, cb = float(np.max(np.abs(boxes), initial=0.0)), float(np.max(np.abs(cboxes), initial=0.0))
    if boxes.size and cboxes.size and tb > 2.0 and cb <= 2.0:
        how += (f"; TF's boxes reach {tb:.4g}, pixel coordinates where Caffe's are normalized (up to {cb:.4g}): "
                "not rescaled (ssd_keras's normalize_coords=True multiplies them by img_width/img_height)")
    return out, how

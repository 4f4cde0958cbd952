"""SSD's PriorBox and DetectionOutput, recomputed as this Caffe computes them.

PriorBox: the priors depend only on shapes and parameters; recompute Caffe's priors with
one switch changed (clip, offset, variance) and say which one TF's constant has.
DetectionOutput: recompute Caffe's detections from the layer's three bottoms with one
parameter changed (nms_threshold, top_k, keep_top_k, confidence_threshold,
variance_encoded_in_target) and say which one gives TF's rows, compared as a set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..result import Diagnosis
from . import reference as ref
from ._core import CONF_RECOMPUTED, CONFIRM_GAIN, CONFIRM_RTOL, Case, flag, fnum, rnd


def _floats(v: Any) -> list[float]:
    if v is None:
        return []
    vals = v if isinstance(v, (list, tuple)) else [v]
    return [float(a) for a in vals]


def prior_box_rules(case: Case) -> list[Diagnosis]:
    out: list[Diagnosis] = []
    t = case.t
    if t is None or case.y.ndim != 3 or case.y.shape[:2] != (1, 2) or len(case.x) < 2:
        return out
    fshape, ishape = case.x[0].shape, case.x[1].shape
    if len(fshape) != 4 or len(ishape) != 4:
        return out
    p = case.cparams
    mins = _floats(p.get("min_size"))
    if not mins:
        return out
    img_h = int(fnum(p.get("img_h"), 0) or fnum(p.get("img_size"), 0) or 0)
    img_w = int(fnum(p.get("img_w"), 0) or fnum(p.get("img_size"), 0) or 0)
    img = (img_h, img_w) if img_h and img_w else (int(ishape[2]), int(ishape[3]))
    sh = fnum(p.get("step_h"), 0.0) or fnum(p.get("step"), 0.0) or 0.0
    sw = fnum(p.get("step_w"), 0.0) or fnum(p.get("step"), 0.0) or 0.0
    caffe = {"clip": flag(p.get("clip"), False), "offset": fnum(p.get("offset"), 0.5),
             "variance": _floats(p.get("variance")) or [0.1]}
    caffe["offset"] = 0.5 if caffe["offset"] is None else caffe["offset"]

    def priors(**change: Any) -> np.ndarray:
        kw = {**caffe, **change}
        return ref.prior_box((int(fshape[2]), int(fshape[3])), img, mins, _floats(p.get("max_size")),
                             _floats(p.get("aspect_ratio")), flag(p.get("flip"), True), kw["clip"],
                             kw["variance"], kw["offset"], (sh, sw))

    case.set_reference(priors())
    if case.reference is None:
        return out
    # the variance row TF holds, when it is one 4-vector repeated (the value a port wrote)
    tv = t[0, 1].reshape(-1, 4)
    tf_var = [rnd(v) for v in tv[0]] if tv.size and np.allclose(tv, tv[0], rtol=0, atol=1e-6) else None
    hyps: list[tuple[str, Any, str, str]] = [
        ("clip", not caffe["clip"],
         "TF's priors are not clipped to [0, 1]; Caffe's PriorBox clips them (clip: true)." if caffe["clip"] else
         "TF's priors are clipped to [0, 1]; Caffe's PriorBox does not clip them (clip: false).",
         f"Compute the priors with clip={caffe['clip']} (`np.clip(boxes, 0, 1)` {'after' if caffe['clip'] else 'left out'}), "
         "before the variances are appended."),
        ("offset", 0.0 if caffe["offset"] != 0.0 else 0.5,
         f"TF centres the priors at (w + {0.0 if caffe['offset'] != 0.0 else 0.5:g}) * step; Caffe's PriorBox at "
         f"(w + offset) * step with offset {caffe['offset']:g}.",
         f"Centre each prior at `((w + {caffe['offset']:g}) * step_w, (h + {caffe['offset']:g}) * step_h)`, Caffe's offset."),
    ]
    if tf_var is not None and not np.allclose(tf_var, np.resize(caffe["variance"], 4), rtol=1e-6, atol=1e-7):
        hyps.append(("variance", tf_var,
                     f"TF's variance row is {tf_var}; Caffe's PriorBox writes variance {caffe['variance']}.",
                     f"Fill the second row with Caffe's variances {caffe['variance']} repeated per prior (the "
                     "DetectionOutput decoding reads them)."))
    for param, tf_value, what, fix in hyps:
        if case.attempt(out, "priorbox_parameters",
                        what + " Recomputing Caffe's priors with that one change reproduces the TF output.", fix,
                        lambda param=param, tf_value=tf_value: priors(**{param: tf_value}),
                        parameter=param, caffe_value=caffe[param], tf_value=tf_value,
                        feature_hw=[int(fshape[2]), int(fshape[3])], image_hw=list(img)):
            return out
    return out


# -- DetectionOutput: Caffe's detections recomputed from its three bottoms -----------------------
#
# detection_output_layer.cpp + bbox_util.cpp of this Caffe, in float32 as Caffe computes them:
# locations decoded against the priors (DecodeBBox), per class the scores above
# confidence_threshold (strictly) sorted descending (stable), the first top_k kept, greedy NMS
# (ApplyNMSFast: a box is kept when its IoU with every kept box is <= the threshold, the
# threshold times eta after each keep while above 0.5), then the best keep_top_k over all
# classes; rows [image, label, score, xmin, ymin, xmax, ymax] by label, then score. Without an
# nms_param this Caffe keeps every prior of every class (no threshold, no top_k).
#
# Greedy NMS decides each box on the boxes before it only, and the threshold and top_k cut the
# sorted list to a prefix: one NMS pass over a class's candidates gives the kept set for every
# confidence_threshold at or above the pass's and every top_k (the kept boxes of the prefix).

_F32 = np.float32


def decode_boxes(loc: np.ndarray, priors: np.ndarray, code_type: str = "CENTER_SIZE",
                 variance_encoded_in_target: bool = False) -> np.ndarray:
    """DecodeBBox: locations ``(..., P, 4)`` against the priors (a PriorBox blob, boxes then
    variances, ``P*4`` each), float32 like Caffe: boxes ``(..., P, 4)`` xmin, ymin, xmax, ymax."""
    pr = np.asarray(priors, _F32).reshape(2, -1, 4)
    pb, var = pr[0].astype(np.float64), pr[1]
    b = np.asarray(loc, _F32)
    if b.shape[-2:] != pb.shape:
        raise ValueError(f"{b.shape[-2]} location predictions for {pb.shape[0]} priors")
    if variance_encoded_in_target:
        var = np.ones_like(var)
    if code_type == "CENTER_SIZE":
        pw = (pb[:, 2] - pb[:, 0]).astype(_F32)
        ph = (pb[:, 3] - pb[:, 1]).astype(_F32)
        if np.any(pw <= 0) or np.any(ph <= 0):
            raise ValueError("a prior of zero width or height (Caffe's CHECK_GT fails)")
        pcx, pcy = ((pb[:, 0] + pb[:, 2]) / 2).astype(_F32), ((pb[:, 1] + pb[:, 3]) / 2).astype(_F32)
        if variance_encoded_in_target:
            cx, cy = b[..., 0] * pw + pcx, b[..., 1] * ph + pcy
            w = np.exp(b[..., 2].astype(np.float64)).astype(_F32) * pw
            h = np.exp(b[..., 3].astype(np.float64)).astype(_F32) * ph
        else:
            cx, cy = var[:, 0] * b[..., 0] * pw + pcx, var[:, 1] * b[..., 1] * ph + pcy
            w = np.exp((var[:, 2] * b[..., 2]).astype(np.float64)).astype(_F32) * pw
            h = np.exp((var[:, 3] * b[..., 3]).astype(np.float64)).astype(_F32) * ph
        cx, cy, w, h = (a.astype(np.float64) for a in (cx, cy, w, h))
        out = np.stack([cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0], -1)
    elif code_type == "CORNER":
        out = pb + var * b
    elif code_type == "CORNER_SIZE":
        size = np.stack([pb[:, 2] - pb[:, 0], pb[:, 3] - pb[:, 1]] * 2, -1).astype(_F32)
        out = pb + (var * b * size).astype(np.float64)
    else:
        raise ValueError(f"code_type {code_type!r}")
    return out.astype(_F32)


def jaccard(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """JaccardOverlap (normalized, float32) of boxes ``a`` (n, 4) against ``b`` (m, 4): (n, m)."""
    a, b = np.asarray(a, _F32)[:, None, :], np.asarray(b, _F32)[None, :, :]
    apart = (b[..., 0] > a[..., 2]) | (b[..., 2] < a[..., 0]) | (b[..., 1] > a[..., 3]) | (b[..., 3] < a[..., 1])
    w = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    h = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    inter = w * h

    def size(x: np.ndarray) -> np.ndarray:
        ok = (x[..., 2] >= x[..., 0]) & (x[..., 3] >= x[..., 1])
        return np.where(ok, (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1]), _F32(0))

    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / (size(a) + size(b) - inter)
    return np.where(~apart & (w > 0) & (h > 0), iou, _F32(0)).astype(_F32)


def greedy_nms(boxes: np.ndarray, threshold: float, eta: float = 1.0) -> np.ndarray:
    """ApplyNMSFast's loop over boxes already in score order: which are kept (bool mask)."""
    n = len(boxes)
    keep = np.zeros(n, bool)
    if n == 0:
        return keep
    boxes = np.asarray(boxes, _F32)
    thr = _F32(threshold)
    kept = np.empty((n, 4), _F32)  # the kept boxes so far (memory linear in n, not n x n)
    m = 0
    for i in range(n):
        if m == 0 or bool(np.all(jaccard(boxes[i:i + 1], kept[:m])[0] <= thr)):
            keep[i] = True
            kept[m] = boxes[i]
            m += 1
            if eta < 1 and thr > 0.5:
                thr = _F32(thr * _F32(eta))
    return keep


@dataclass
class DetectionSetting:
    """The parameters of one DetectionOutput computation (Caffe's field names)."""

    num_classes: int
    share_location: bool = True
    background_label_id: int = 0
    code_type: str = "CORNER"
    variance_encoded_in_target: bool = False
    nms: bool = True  # an nms_param is given (without one this Caffe keeps every prior)
    nms_threshold: float = 0.3
    eta: float = 1.0
    top_k: int = -1
    keep_top_k: int = -1
    confidence_threshold: float = float(-np.finfo(np.float32).max)


class DetectionCandidates:
    """Decoded boxes and, per image and class, the candidates in score order with the kept mask
    of one greedy NMS pass (above ``floor`` and within the first ``max_len``): Caffe's rows for
    any confidence_threshold >= ``floor`` and top_k <= ``max_len`` follow without another pass."""

    def __init__(self, loc: np.ndarray, conf: np.ndarray, priors: np.ndarray, s: DetectionSetting,
                 floor: float | None = None, max_len: int | None = None) -> None:
        self.s = s
        n = int(np.asarray(loc).shape[0])
        n_priors = int(np.asarray(priors).size // 8)
        n_loc = 1 if s.share_location else s.num_classes
        self.scores = np.asarray(conf, _F32).reshape(n, n_priors, s.num_classes)
        locs = np.asarray(loc, _F32).reshape(n, n_priors, n_loc, 4).transpose(0, 2, 1, 3)
        self.boxes = decode_boxes(locs, priors, s.code_type, s.variance_encoded_in_target)  # n, n_loc, P, 4
        floor = s.confidence_threshold if floor is None else floor
        self.floor = _F32(floor)
        self.per_image: list[dict[int, tuple[np.ndarray, np.ndarray]]] = []
        for i in range(n):
            classes: dict[int, tuple[np.ndarray, np.ndarray]] = {}
            for c in range(s.num_classes):
                if c == s.background_label_id:
                    continue
                sc = self.scores[i, :, c]
                if not s.nms:
                    classes[c] = (np.arange(n_priors), np.ones(n_priors, bool))
                    continue
                idx = np.flatnonzero(sc > self.floor)
                idx = idx[np.argsort(-sc[idx], kind="stable")]
                if max_len is not None and max_len > -1:
                    idx = idx[:max_len]
                classes[c] = (idx, greedy_nms(self.class_boxes(i, c)[idx], s.nms_threshold, s.eta))
            self.per_image.append(classes)

    def class_boxes(self, i: int, c: int) -> np.ndarray:
        return self.boxes[i, 0 if self.s.share_location else c]

    def rows(self, confidence_threshold: float | None = None, top_k: int | None = None,
             keep_top_k: int | None = None) -> np.ndarray:
        """Caffe's top: ``1 x 1 x K x 7`` float32 (as float64), with the given switches changed."""
        s = self.s
        thr = _F32(s.confidence_threshold if confidence_threshold is None else confidence_threshold)
        if s.nms and thr < self.floor:
            raise ValueError("threshold below the candidates' floor")
        k = s.top_k if top_k is None else top_k
        keep_k = s.keep_top_k if keep_top_k is None else keep_top_k
        out: list[np.ndarray] = []
        for i, classes in enumerate(self.per_image):
            chosen: dict[int, np.ndarray] = {}
            for c, (idx, kept) in classes.items():
                if s.nms:
                    m = int(np.sum(self.scores[i, idx, c] > thr))
                    if k > -1:
                        m = min(m, k)
                    chosen[c] = idx[:m][kept[:m]]
                else:
                    chosen[c] = idx
            if keep_k > -1 and sum(len(v) for v in chosen.values()) > keep_k:
                labels = np.concatenate([np.full(len(v), c) for c, v in chosen.items()])
                idxs = np.concatenate(list(chosen.values()))
                sc = self.scores[i, idxs, labels]
                best = np.argsort(-sc, kind="stable")[:keep_k]
                chosen = {c: idxs[best][labels[best] == c] for c in chosen}
            for c in sorted(chosen):
                idx = chosen[c]
                if len(idx):
                    r = np.empty((len(idx), 7), _F32)
                    r[:, 0], r[:, 1], r[:, 2] = i, c, self.scores[i, idx, c]
                    r[:, 3:] = self.class_boxes(i, c)[idx]
                    out.append(r)
        if not out:
            empty = np.full((len(self.per_image), 7), -1, _F32)
            empty[:, 0] = np.arange(len(self.per_image))
            return empty[None, None].astype(np.float64)
        return np.concatenate(out)[None, None].astype(np.float64)


_CODE_TYPES = {1: "CORNER", 2: "CENTER_SIZE", 3: "CORNER_SIZE"}
#: IoU thresholds ports use: TF's non_max_suppression default (0.5), the TF Object Detection
#: API's SSD configs (0.6), Caffe's nms_param default (0.3), and their neighbours
_NMS_VALUES = (0.5, 0.6, 0.3, 0.4, 0.45, 0.35, 0.55, 0.65, 0.7, 0.75, 0.8, 0.9, 0.25, 0.2, 0.1)
_NAMED_NMS = {0.5: "0.5 (tf.image.non_max_suppression's default)",
              0.6: "0.6 (the TF Object Detection API's SSD configs)", 0.3: "0.3 (Caffe's nms_param default)"}
#: thresholds and counts a port writes by hand
_ROUND_SCORES = (0.5, 0.3, 0.1, 0.05, 0.01, 0.2, 0.25, 0.4, 0.6, 0.7, 0.8, 0.9, 0.001, 0.0)
_ROUND_COUNTS = (100, 200, 50, 10, 20, 300, 400, 500, 1000)
#: the top_k values tried reach this far (or Caffe's own top_k when larger)
_TOP_K_SCAN = 1000
#: which explanation to name when several one-parameter changes give TF's rows (it happens: a
#: keep_top_k cut is also a score threshold between two kept scores): a value a port writes
#: (a round one) first, in this order; a count that is exactly a round number rarely is one by
#: chance, while a score interval often holds a round score
_PREFERENCE = ("nms_threshold", "variance_encoded_in_target", "keep_top_k", "top_k", "confidence_threshold")


def _setting(p: dict[str, Any]) -> DetectionSetting | None:
    n = int(fnum(p.get("num_classes"), 0) or 0)
    if n < 1:
        return None
    code = p.get("code_type", "CORNER")
    code = _CODE_TYPES.get(code, "") if isinstance(code, int) else str(code)
    nms = p.get("nms_param")
    nms = nms if isinstance(nms, dict) else None
    top_k = int(fnum(nms.get("top_k"), 0) or 0) if nms else -1
    return DetectionSetting(
        num_classes=n, share_location=flag(p.get("share_location"), True),
        background_label_id=int(fnum(p.get("background_label_id"), 0) or 0), code_type=code,
        variance_encoded_in_target=flag(p.get("variance_encoded_in_target"), False), nms=nms is not None,
        nms_threshold=float(fnum(nms.get("nms_threshold"), 0.3) if nms else 0.3),
        eta=float(fnum(nms.get("eta"), 1.0) if nms else 1.0),
        top_k=top_k if top_k > 0 else -1,  # unset (0 in the captured params): Caffe's -1
        keep_top_k=int(fnum(p.get("keep_top_k"), -1) if p.get("keep_top_k") is not None else -1),
        confidence_threshold=float(fnum(p.get("confidence_threshold"), 0.0) or 0.0))


def _in_range(values: tuple[float, ...], lo: float, hi: float) -> float | None:
    """The first of ``values`` in [lo, hi)."""
    return next((v for v in values if lo <= v < hi), None)


def _kept_scores(cands: DetectionCandidates, top_k: int) -> np.ndarray:
    """The scores of every box the NMS pass keeps within a class's first ``top_k`` candidates."""
    out = [cands.scores[i, idx, c][:top_k if top_k > -1 else None][kept[:top_k if top_k > -1 else None]]
           for i, im in enumerate(cands.per_image) for c, (idx, kept) in im.items()]
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def _nms_range(cands: DetectionCandidates, v: float) -> list[float]:
    """[lo, hi): the IoU thresholds that make every NMS decision ``v`` makes (the overlaps of the
    candidates' pairs around ``v``), so that any of them gives the same rows."""
    lo, hi = 0.0, 1.0
    for i, im in enumerate(cands.per_image):
        for c, (idx, _) in im.items():
            iou = jaccard(cands.class_boxes(i, c)[idx], cands.class_boxes(i, c)[idx])[np.triu_indices(len(idx), 1)]
            lo = max(lo, float(np.max(iou[iou <= v], initial=0.0)))
            hi = min(hi, float(np.min(iou[iou > v], initial=1.0)))
    return [rnd(lo, 4), rnd(hi, 4)]


def detection_output_rules(case: Case) -> list[Diagnosis]:
    """DetectionOutput: recompute Caffe's detections from the layer's three bottoms (see above)
    with one parameter changed at a time (nms_threshold, top_k, keep_top_k,
    confidence_threshold, variance_encoded_in_target) and name the one whose rows are TF's,
    compared as a set (:mod:`layerparity.detections`)."""
    from ..detections import in_reference_order

    out: list[Diagnosis] = []
    t = case.tf_relayout()
    s = _setting(case.cparams)
    if s is None or t is None or len(case.x) < 3 or t.ndim != 4 or t.shape[-1] != 7 or case.y.shape[-1] != 7:
        return out
    loc, conf, priors = case.x[:3]
    y = case.y
    scale = max(1.0, float(np.max(np.abs(y[..., 2:]), initial=0.0)))

    def resid(cand: np.ndarray, target: np.ndarray) -> float:
        """Max difference over the rows' scale once matched as a set; inf unless the images and
        labels of matched rows agree."""
        if cand.shape != target.shape:
            return float("inf")
        got = in_reference_order(cand, target)
        if not np.array_equal(got[..., :2], cand[..., :2]):
            return float("inf")
        return float(np.max(np.abs(got - cand), initial=0.0)) / scale

    def with_(**change: Any) -> DetectionCandidates:
        kw = {**s.__dict__, **change}
        return DetectionCandidates(loc, conf, priors, DetectionSetting(**kw), max_len=kw["top_k"] if s.nms else None)

    base = with_()
    ok = resid(base.rows(), y) <= 1e-5
    case.evidence_extra["reference_reproduces_caffe"] = bool(ok)
    if not ok:
        return out
    r0 = resid(y, t)
    trows = t.reshape(-1, 7)
    real = trows[trows[:, 1] >= 0]
    found: list[dict[str, Any]] = []  # every one-parameter change that gives TF's rows

    def check(rows: np.ndarray, parameter: str, tf_value: Any, named: bool, **more: Any) -> bool:
        r = resid(rows, t)
        if r <= CONFIRM_RTOL and r <= CONFIRM_GAIN * r0:
            found.append({"parameter": parameter, "tf_value": tf_value, "named": named, "residual": r, **more})
            return True
        return False

    if s.nms:
        for v in _NMS_VALUES:
            if abs(v - s.nms_threshold) > 1e-6 and check(with_(nms_threshold=v).rows(), "nms_threshold", v,
                                                         v in _NAMED_NMS, tf_range=_nms_range(base, v)):
                break
    try:
        flipped = not s.variance_encoded_in_target
        check(with_(variance_encoded_in_target=flipped).rows(), "variance_encoded_in_target", flipped, True)
    except ValueError:
        pass
    if s.nms:
        # the candidates above the threshold, as many as a port's top_k plausibly keeps: the rows of any top_k
        full = with_(top_k=max(s.top_k, _TOP_K_SCAN))
        longest = max((len(idx) for im in full.per_image for idx, _ in im.values()), default=0)
        ks = [k for k in range(1, longest + 1) if k != s.top_k and resid(full.rows(top_k=k), t) <= CONFIRM_RTOL]
        run = ks[-1:]
        for k in reversed(ks[:-1]):  # the last run of consecutive top_k values
            if k != run[0] - 1:
                break
            run.insert(0, k)
        ks = run
        if ks:
            lo, hi = ks[0], ks[-1]
            every = hi == longest < max(s.top_k, _TOP_K_SCAN)  # no class has more candidates: any larger top_k too
            top = float("inf") if every else hi + 1.0
            named = _in_range(tuple(float(c) for c in _ROUND_COUNTS), lo, top)
            check(full.rows(top_k=lo), "top_k", int(named) if named is not None else lo, named is not None,
                  tf_range=[lo, None if every else hi])
    n_tf = len(real)
    if s.nms and n_tf:  # a threshold just below TF's lowest score
        s_min = np.float32(np.min(real[:, 2]))
        thr = float(np.nextafter(s_min, np.float32(-np.inf)))
        if thr != s.confidence_threshold:
            cands = base if thr >= s.confidence_threshold else DetectionCandidates(
                loc, conf, priors, s, floor=thr, max_len=s.top_k)
            # the boxes TF leaves out bound its threshold from below; a threshold below Caffe's has
            # no such bound here (the candidates below it were never scored)
            kept = _kept_scores(cands, s.top_k)
            lo = float(np.max(kept[kept < s_min], initial=float(cands.floor))) if thr > s.confidence_threshold else None
            named = _in_range(_ROUND_SCORES, lo, float(s_min)) if lo is not None else None
            check(cands.rows(confidence_threshold=thr), "confidence_threshold",
                  named if named is not None else rnd(thr), named is not None,
                  tf_range=[rnd(lo) if lo is not None else None, rnd(float(s_min))])
    for k in dict.fromkeys((n_tf, -1)):
        if k != s.keep_top_k and (k > 0 or k == -1) and check(base.rows(keep_top_k=k), "keep_top_k", k,
                                                               k == -1 or k in _ROUND_COUNTS):
            break
    if not found:
        return out
    found.sort(key=lambda f: (not f["named"], _PREFERENCE.index(f["parameter"])))
    best = found[0]
    others = [f["parameter"] for f in found if f is not best]
    summary, fix = _detection_texts(s, best)
    if others:
        summary += (" Changing " + " or ".join(others) + " alone gives the same rows on this input: check "
                    "those too.")
    ev: dict[str, Any] = {"parameter": best["parameter"], "caffe_value": getattr(s, best["parameter"]),
                          "tf_value": best["tf_value"], "caffe_rows": int(y.reshape(-1, 7).shape[0]),
                          "tf_rows": int(trows.shape[0])}
    if "tf_range" in best:
        ev["tf_range"] = best["tf_range"]
    if others:
        ev["also_explained_by"] = others
    out.append(case.diag("detection_output_parameters", summary, fix, CONF_RECOMPUTED,
                         confirmed_by="recomputation", residual=rnd(best["residual"]), **ev))
    case.proven = True
    return out


def _detection_texts(s: DetectionSetting, f: dict[str, Any]) -> tuple[str, str]:
    """The summary and the fix of one explained parameter."""
    param, v = f["parameter"], f["tf_value"]
    rng = f.get("tf_range")
    tail = " Recomputing Caffe's DetectionOutput with that one change reproduces TF's detections (as a set)."
    if param == "nms_threshold":
        what = _NAMED_NMS.get(v, f"{v:g}")
        span = f" (any threshold in [{rng[0]:g}, {rng[1]:g}) gives these rows)" if rng else ""
        return (f"TF's per-class NMS suppresses boxes as IoU threshold {what} does{span}, where Caffe's nms_param "
                f"has nms_threshold {s.nms_threshold:g}." + tail,
                f"Pass Caffe's threshold: `tf.image.non_max_suppression(boxes, scores, max_output_size, "
                f"iou_threshold={s.nms_threshold:g})` per class (Caffe keeps a box whose IoU with every kept box "
                "of its class is <= nms_threshold).")
    if param == "variance_encoded_in_target":
        if v:
            return ("TF decodes the locations without the prior variances (as if variance_encoded_in_target "
                    "were true); Caffe multiplies the offsets by the PriorBox variances." + tail,
                    "Multiply the location offsets by the variances (the PriorBox blob's second row) before "
                    "decoding: centre `var[0] * dx * prior_w + prior_cx`, size `exp(var[2] * dw) * prior_w`.")
        return ("TF multiplies the location offsets by the prior variances; Caffe's "
                "variance_encoded_in_target is true, so it does not." + tail,
                "Decode without the variances: centre `dx * prior_w + prior_cx`, size `exp(dw) * prior_w`.")
    if param == "top_k":
        span = (f" (any top_k in {rng[0]}..{rng[1] if rng[1] is not None else 'all'} gives these rows)"
                if rng and rng[0] != rng[1] else "")
        caffe = s.top_k if s.top_k > -1 else "every candidate"
        return (f"TF keeps the best {v} boxes per class before NMS{span}; Caffe's nms_param.top_k is {caffe}." + tail,
                f"Take the best {caffe} scores of each class above confidence_threshold, then NMS them "
                f"(`tf.math.top_k(scores, {s.top_k})` before `non_max_suppression`, not its max_output_size)."
                if s.top_k > -1 else "Run NMS over every candidate above confidence_threshold (no per-class cut).")
    if param == "keep_top_k":
        tfv = "every detection" if v == -1 else f"the best {v} detections"
        caffe = "every detection" if s.keep_top_k == -1 else f"the best {s.keep_top_k}"
        return (f"TF keeps {tfv} over all classes after NMS; Caffe's keep_top_k keeps {caffe}." + tail,
                (f"Keep the best {s.keep_top_k} detections by score over all classes after the per-class NMS "
                 f"(Caffe's keep_top_k; e.g. `max_total_size={s.keep_top_k}`)." if s.keep_top_k > -1 else
                 "Keep every detection the per-class NMS keeps (Caffe's keep_top_k is -1: no cut)."))
    lo, hi = rng if rng else (v, v)
    if lo is None:
        what = f"below {hi:g} (TF keeps detections down to score {hi:g}, which Caffe drops)"
    else:
        what = (f"{v:g} (any threshold in [{lo:g}, {hi:g}) gives these rows: TF drops detections scored {lo:g} "
                "that Caffe keeps)" if f["named"] else f"in [{lo:g}, {hi:g}) (TF drops detections scored {lo:g} "
                "that Caffe keeps)")
    return (f"TF's confidence threshold is {what}; Caffe's confidence_threshold is {s.confidence_threshold:g}."
            + tail,
            f"Keep the boxes whose score is > {s.confidence_threshold:g} (Caffe's confidence_threshold, strictly "
            f"greater) before NMS: `score_threshold={s.confidence_threshold:g}`.")

"""PriorBox: SSD's priors depend only on shapes and parameters; recompute Caffe's priors
with one switch changed (clip, offset, variance) and say which one TF's constant has."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..result import Diagnosis
from . import reference as ref
from ._core import Case, flag, fnum, rnd


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

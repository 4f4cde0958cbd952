"""The weight check of a diverged row, carried by its diagnosis.

``compare`` checks the weights of every diagnosed row's chain the way ``layerparity
weights`` does (:func:`layerparity.weights.check_pair` on the pair of ``compare``'s own
alignment) and hands the result here. :func:`attach_weight_check` puts it on the row
(``LayerResult.weights``, the JSON key ``layers[].weights``) and makes the diagnosis
agree with it:

- every diagnosis of the row gets ``evidence["weight_check"]``: ``{caffe_layer: status}``
  (``equal``, ``folded``, ``equal_under:<transform>``, ``different``, ``missing``);
- a transform the check finds (``equal_under:kernel_hw_swapped``...) is a diagnosis of
  that kind, proven by the weights themselves (``confirmed_by: "weights"``), ranked
  first; a rule that found the same kind is confirmed (``weight_check_agrees``);
- weights ``different`` under every known transform are said in the top summary.

Pure: reads the weight rows' ``caffe_layer``, ``caffe_kind``, ``status``, ``transform``,
``tf_layer`` and ``blobs``, nothing else.

>>> from layerparity.result import LayerResult
>>> from layerparity.weights import WeightRow
>>> row = LayerResult("conv1", "conv1", "conv1", caffe_kind="Convolution")
>>> attach_weight_check(row, [WeightRow("conv1", "Convolution", "conv1", "equal_under:kernel_hw_swapped")])
>>> d = row.diagnoses[0]
>>> d.kind, d.layer, d.evidence["confirmed_by"], d.evidence["weight_check"]
('kernel_hw_swapped', 'conv1', 'weights', {'conv1': 'equal_under:kernel_hw_swapped'})
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..result import Diagnosis, LayerResult
from ..weights import GOOD, TRANSFORM_FIXES
from ._core import CONF_WEIGHTS, DIAGNOSIS_KINDS

__all__ = ["attach_weight_check", "WEIGHT_TRANSFORM_KINDS"]

#: Diagnosis kinds that are a wrong transform of a weight array: the weight check alone
#: decides them (weights equal under the expected layout contradict such a diagnosis).
WEIGHT_TRANSFORM_KINDS = frozenset({
    "reshape_not_transpose", "kernel_flipped", "kernel_hw_swapped", "flatten_order", "deconv_in_out_swapped",
    "batchnorm_scale_factor", "prelu_shared_axes", "missing_scale", "lstm_gate_order",
})

#: What each transform did to the weights, for the summary of a diagnosis made from the check.
_WHAT = {
    "kernel_flipped": "the kernel rotated by 180 degrees",
    "kernel_hw_swapped": "the kernel with its height and width swapped",
    "reshape_not_transpose": "the array reshaped to the TF shape instead of transposed",
    "channel_order": "the kernel with its input channels reversed (BGR vs RGB)",
    "deconv_in_out_swapped": "the transpose-conv kernel with input and output channels swapped",
    "flatten_order": "the InnerProduct weight with its rows in the wrong flatten order",
    "batchnorm_scale_factor": "the BatchNorm mean/var not divided by the scale factor",
    "prelu_shared_axes": "one PReLU slope shared where Caffe has one per channel",
    "batchnorm_epsilon": "the BatchNorm folded with another epsilon",
    "missing_scale": "the BatchNorm without the Scale layer's gamma/beta",
    "lstm_gate_order": "the LSTM's gate blocks copied in Caffe's order i, f, o, g where Keras expects i, f, c, o",
}


def attach_weight_check(row: LayerResult, checks: Sequence[Any]) -> None:
    """Put the weight check ``checks`` (:class:`~layerparity.weights.WeightRow` of the row's
    chain) on ``row`` and make the row's diagnoses agree with it (see the module doc)."""
    checks = list(checks)
    row.weights = checks
    if not checks:
        return
    status = {str(w.caffe_layer): str(w.status) for w in checks}
    diags = list(row.diagnoses)
    for w in checks:
        t = w.transform
        if not t or t not in DIAGNOSIS_KINDS:
            continue
        have = next((d for d in diags if d.kind == t), None)
        if have is not None:
            have.evidence["weight_check_agrees"] = True
            have.evidence.setdefault("confirmed_by", "weights")
            have.confidence = max(have.confidence, CONF_WEIGHTS)
            if not have.layer:
                have.layer = str(w.caffe_layer)
            continue
        diags.append(Diagnosis(
            kind=t,
            layer=str(w.caffe_layer),
            summary=(f"The weight check finds the TF weights of {w.caffe_layer!r} ({w.tf_layer or '?'}) equal to "
                     f"Caffe's under `{t}`: {_WHAT.get(t, t)}. That transform is the bug."),
            fix=TRANSFORM_FIXES.get(t, "Use the expected weight transform (see docs/weights.md)."),
            confidence=CONF_WEIGHTS,
            evidence={"confirmed_by": "weights", "caffe_kind": str(w.caffe_kind), "weight_check_agrees": True,
                      "weight_blobs": [b.to_dict() for b in w.blobs if b.status != "equal"]},
        ))
    named = [d for d in diags if d.kind != "unknown"]
    if named:
        diags = named  # something explains it: the fallback goes
    diags.sort(key=lambda d: -d.confidence)  # stable: equal confidences keep the rules' order
    found = {w.transform for w in checks if w.transform}
    good = all(w.status in GOOD for w in checks)
    for d in diags:
        d.evidence["weight_check"] = dict(status)
        if d.kind in WEIGHT_TRANSFORM_KINDS and "weight_check_agrees" not in d.evidence and (good or found):
            d.evidence["weight_check_agrees"] = False
    different = [w for w in checks if w.status == "different"]
    if different and diags:
        top = diags[0]
        names = ", ".join(repr(w.caffe_layer) for w in different)
        top.evidence["weights_different"] = [str(w.caffe_layer) for w in different]
        top.summary += (f" Weight check: the TF weights of {names} differ from Caffe's under the expected layout "
                        "and under every known wrong transform (other weights loaded, or the layers mismatched).")
    row.diagnoses = diags

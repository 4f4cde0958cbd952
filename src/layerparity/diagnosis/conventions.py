"""Port-wide conventions, read from the finished rows' diagnoses.

A port can differ from Caffe on purpose, everywhere in the same way. Layer by layer
that looks like the same bug over and over; over the whole report it is a
convention with a one-line fix:

- ``spatially_transposed_port``: every diagnosed convolution is ``kernel_hw_swapped``
  (at least two, none diagnosed otherwise). The port takes its input with H and W
  swapped and keeps its kernels swapped to match (MATLAB-trained Caffe models
  ported this way). Declare it: ``tf_layout="NWHC"`` / ``--tf-layout NWHC``.
- ``input_channel_order``: the first computing layer sees its input channels in
  another order (``channel_order``) and no later layer does. The port takes RGB
  where Caffe takes BGR (or the reverse). Feed TF its own input (``tf_inputs=`` /
  ``--tf-input FILE``), or swap the first conv's input channels once.

Pure: reads ``LayerResult.diagnoses`` (as :func:`~layerparity.diagnosis.diagnose`
leaves them) and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import DiagnosisInputError
from ..kinds import canonical_kind
from ..result import Diagnosis, LayerResult

#: At least this many convolutions must agree before a convention is named.
MIN_CONVS = 2
CONF_CONVENTION = 0.85

_CONV_KINDS = ("conv", "depthwise_conv")
#: Layers before the first computing layer: the inputs themselves.
_INPUT_KINDS = ("input", "")


def _primary_kind(row: LayerResult) -> str:
    """Canonical kind of the layer the row's top diagnosis studied (the conv of conv+relu)."""
    top = row.diagnoses[0] if row.diagnoses else None
    raw = ""
    if top is not None:
        raw = str(top.evidence.get("caffe_kind") or "")
    return canonical_kind(raw or row.caffe_kind or "")


def _blamed(row: LayerResult) -> str:
    top = row.diagnoses[0]
    return top.layer or (row.caffe_chain[0] if row.caffe_chain else row.caffe_layer)


def conventions(rows: Sequence[LayerResult]) -> list[Diagnosis]:
    """Conventions the whole port follows, as diagnoses (``[]`` when none is recognised).

    ``rows`` are a finished report's rows in Caffe order, with their diagnoses (the
    engine diagnoses the first divergence and every row whose own error fails, so
    own-error replay must be on for a convention over several layers to show).
    Returns at most one ``spatially_transposed_port`` and one ``input_channel_order``;
    their ``layer`` is "" (the port, not a layer), ``evidence["layers"]`` names the rows
    that show it.
    """
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Sequence):
        raise DiagnosisInputError(f"conventions: rows must be a list of LayerResult, got {type(rows).__name__}")
    for r in rows:
        if not isinstance(r, LayerResult):
            raise DiagnosisInputError(f"conventions: rows must be LayerResult objects, got {type(r).__name__}")
    out: list[Diagnosis] = []
    d = _spatially_transposed(rows)
    if d is not None:
        out.append(d)
    d = _input_channel_order(rows)
    if d is not None:
        out.append(d)
    return out


def _spatially_transposed(rows: Sequence[LayerResult]) -> Diagnosis | None:
    convs = [r for r in rows if r.diagnoses and _primary_kind(r) in _CONV_KINDS]
    swapped = [r for r in convs if r.diagnoses[0].kind == "kernel_hw_swapped"]
    others = [r for r in convs if r.diagnoses[0].kind != "kernel_hw_swapped"]
    if len(swapped) < MIN_CONVS or others:
        return None
    names = [_blamed(r) for r in swapped]
    ev: dict[str, Any] = {
        "layers": names,
        "convs_kernel_hw_swapped": len(swapped),
        "convs_diagnosed_otherwise": 0,
        "suggested_tf_layout": "NWHC",
    }
    return Diagnosis(
        kind="spatially_transposed_port",
        summary=(f"Every diagnosed convolution ({len(swapped)}: {', '.join(names[:6])}"
                 f"{', ...' if len(names) > 6 else ''}) has its kernel's height and width swapped, and none "
                 "shows another bug: the port probably takes spatially transposed input (N, W, H, C; the "
                 "MATLAB Caffe convention) and is right under that convention."),
        fix=("Declare the port's layout instead of changing it: `compare_models(..., tf_layout=\"NWHC\")` "
             "(`layerparity compare ... --tf-layout NWHC`). If the port should take NHWC input, transpose "
             "every conv kernel back: `kernel.transpose(1, 0, 2, 3)`."),
        confidence=CONF_CONVENTION,
        evidence=ev,
        layer="",
    )


def _input_channel_order(rows: Sequence[LayerResult]) -> Diagnosis | None:
    diagnosed = [(i, r) for i, r in enumerate(rows) if r.diagnoses]
    if not diagnosed:
        return None
    orders = [(i, r) for i, r in diagnosed if r.diagnoses[0].kind == "channel_order"]
    if len(orders) != 1 or orders[0][0] != diagnosed[0][0]:
        return None  # not the first diagnosed row, or channel order differs further down too
    i, row = orders[0]
    # "the first layer": nothing but inputs computed before it
    if any(canonical_kind(r.caffe_kind or "") not in _INPUT_KINDS for r in rows[:i]):
        return None
    top = row.diagnoses[0]
    # the order the layer *reads* its input in: the input blob itself, or a layer whose
    # reversed-input-channel hypothesis is confirmed (by its weights or a recomputation).
    # A permutation of a layer's *output* channels (filters, a Concat's order) is a port bug.
    is_input = _primary_kind(row) in _INPUT_KINDS and row.caffe_kind
    if not is_input and top.evidence.get("confirmed_by") not in ("weights", "recomputation"):
        return None
    perm = top.evidence.get("permutation")
    reversed_3 = perm == [2, 1, 0] or bool(top.evidence.get("bgr_rgb")) or "permutation" not in top.evidence
    ev: dict[str, Any] = {"layers": [_blamed(row)], "first_layer_diagnosis": "channel_order"}
    if perm is not None:
        ev["permutation"] = perm
    what = "RGB where Caffe takes BGR (or the reverse)" if reversed_3 else "its input channels in another order"
    return Diagnosis(
        kind="input_channel_order",
        summary=(f"Only the first layer ({_blamed(row)!r}) sees its input channels in another order, and no "
                 f"later layer does: the port takes {what}. This is an input convention, not a bug inside "
                 "the port."),
        fix=("Feed TF its own input: `compare_models(..., tf_inputs=x_tf)` (`layerparity compare ... "
             "--tf-input FILE`) with the channels in the port's order (for BGR/RGB: `x[:, ::-1]`); or, to make "
             "the port take Caffe's order, reverse the first conv kernel's input-channel axis once "
             "(`kernel[:, :, ::-1, :]`)."),
        confidence=CONF_CONVENTION - 0.05,
        evidence=ev,
        layer="",
    )

"""Weight parity: does every TF layer hold exactly the Caffe weights, in the right layout?

Checked before anything runs: each Caffe param blob is held against the
matching TF array under the *expected* transform (see :mod:`layerparity.layout`):

===================  ==========================================  ============================
Caffe layer          Caffe blobs                                 TF / Keras arrays
===================  ==========================================  ============================
Convolution          W (O, I/g, kH, kW), b (O,)                  kernel (kH, kW, I/g, O), bias
  depthwise          W (C*M, 1, kH, kW), group = C               DepthwiseConv2D (kH, kW, C, M)
Deconvolution        W (C_in, C_out/g, kH, kW), b                Conv2DTranspose (kH, kW, C_out, C_in)
InnerProduct         W (N, K), b                                 Dense (K, N), rows permuted
                                                                 C*H*W -> H*W*C after a spatial blob
BatchNorm            mean*S, var*S, S                            moving_mean, moving_var (divided by S)
  + Scale            gamma, beta                                 BatchNormalization gamma, beta
Scale                gamma, beta                                 gamma, beta
PReLU                slopes (C,) or (1,)                         alpha broadcast (.., C) / shared
===================  ==========================================  ============================

When an array is not equal under the expected transform, the classic wrong
transforms are tried; a match is reported as ``"equal_under:<transform>"`` and
the transform's name **is the bug** (``reshape_not_transpose``,
``kernel_flipped``, ``kernel_hw_swapped``, ``flatten_order``,
``deconv_in_out_swapped``, ``channel_order``, ``batchnorm_scale_factor``,
``prelu_shared_axes``). Nothing is ever passed by trying permutations: a match
under an undeclared transform is a finding.

>>> import numpy as np
>>> w = np.arange(2 * 3 * 3 * 3, dtype=np.float32).reshape(2, 3, 3, 3)
>>> rep = check_weights({"conv1": [w]}, {"conv1": [w.reshape(3, 3, 3, 2)]})
>>> bool(rep), rep.rows[0].status
(False, 'equal_under:reshape_not_transpose')
>>> bool(check_weights({"conv1": [w]}, {"conv1": [w.transpose(2, 3, 1, 0)]}))
True

Given the TF side's probes too (``tf_probes``; :func:`weight_parity` always passes them),
layers are paired by the alignment ``compare`` uses (:mod:`layerparity.weight_pairing`:
explicit, name, then structure from the graph alone; ``by_value`` breaks ties by value)
and weights a converter folded or decomposed are checked against their formula, status
``"folded"`` (BatchNorm + Scale into Mul/Add or into the kernel, a bias in an Add, a
Gemm's MatMul/Mul/Add): :func:`compare_folded`. Without them, names only:

Name matching uses the alignment's name keys (:mod:`layerparity.names`:
``canon`` for Caffe names, ``tf_name_keys`` for TF layer/op names), lower-cased,
plus ``names.normalize_name`` (every run of non-alphanumerics -> ``_``, TF weight
tails like ``/kernel`` or ``/BiasAdd:0`` dropped).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import WeightParityError
from .kinds import RECURRENT
from .layout import (
    conv_weight_caffe_to_tf,
    deconv_weight_caffe_to_tf,
    depthwise_weight,
    inner_product_weight_caffe_to_tf,
    lstm_weight_caffe_to_keras,
)
from .names import fold, normalize_name, tf_name_keys

#: Elementwise criterion for "equal": weights are copied, so only float rounding of
#: derived values (mean / S) is allowed.
WEIGHT_RTOL = 1e-5
WEIGHT_ATOL = 1e-6  # times max |expected|

#: Folded values (a BatchNorm folded into a Mul/Add or a kernel) are computed in float32 by the
#: converter from several blobs: a looser bound, still far below any injected or real bug.
FOLD_RTOL = 1e-4
FOLD_ATOL = 1e-5  # times the largest term of the formula

STATUS_ORDER = {"equal": 0, "folded": 1, "equal_under": 2, "different": 3, "missing": 4}
#: statuses of a Caffe layer whose weights are right
GOOD = ("equal", "folded")

#: What to write instead, per wrong transform (shared with the diagnosis).
TRANSFORM_FIXES = {
    "kernel_flipped": "Copy the kernel as `w.transpose(2, 3, 1, 0)` without flipping: both Caffe and TF "
                      "compute cross-correlation (the 180-degree flip is a Theano-era habit).",
    "kernel_hw_swapped": "Use `w.transpose(2, 3, 1, 0)` (kH, kW, I, O), not `(3, 2, 1, 0)`: the kernel's "
                         "height and width are swapped.",
    "reshape_not_transpose": "Convert Caffe weights with a transpose: conv `w.transpose(2, 3, 1, 0)`, "
                             "InnerProduct `w.T` (plus the flatten permutation), never `w.reshape(...)`.",
    "channel_order": "Caffe models take BGR: feed BGR to the TF model (`x[..., ::-1]`), or reverse the "
                     "first conv's input channels once (`kernel[:, :, ::-1, :]`).",
    "deconv_in_out_swapped": "Caffe Deconvolution weights are (C_in, C_out, kH, kW); Conv2DTranspose wants "
                             "(kH, kW, C_out, C_in): `w.transpose(2, 3, 1, 0)`.",
    "flatten_order": "Caffe flattens C*H*W, Keras Flatten on NHWC flattens H*W*C: permute the Dense kernel rows, "
                     "`W.reshape(N, C, H, W).transpose(2, 3, 1, 0).reshape(-1, N)` "
                     "(layerparity.layout.inner_product_weight_caffe_to_tf(W, (C, H, W))), or Permute((3, 1, 2)) "
                     "before Flatten.",
    "batchnorm_scale_factor": "Divide Caffe's BatchNorm blobs by the scale factor (third blob): moving_mean = "
                              "b0 / b2, moving_variance = b1 / b2 (0 if b2 == 0).",
    "prelu_shared_axes": "Use `PReLU(shared_axes=[1, 2])` with alpha = slopes.reshape(1, 1, C).",
    "batchnorm_epsilon": "Use Caffe's eps (batch_norm_param.eps, default 1e-5) when folding or porting the "
                         "BatchNorm, not Keras' 1e-3: mul = gamma / sqrt(var / S + eps).",
    "missing_scale": "The Scale layer after the BatchNorm was left out: fold its gamma/beta in "
                     "(mul = gamma / sqrt(var / S + eps), add = beta - mean / S * mul) or port it as its own Mul/Add.",
    "lstm_gate_order": "Caffe's LSTM gates are i, f, o, g, Keras' i, f, c, o (c is Caffe's g): reorder the "
                       "blocks of W_xc, W_hc and b_c before copying them "
                       "(layerparity.layout.lstm_weight_caffe_to_keras).",
}


@dataclass
class BlobParity:
    """One Caffe param blob against its TF array."""

    index: int
    role: str  # "weight", "bias", "mean", "var", "scale_factor", "gamma", "beta", "slope"
    caffe_shape: tuple[int, ...]
    tf_shape: tuple[int, ...] | None
    status: str  # "equal" | "equal_under:<transform>" | "different" | "missing"
    max_abs_error: float | None = None  # under the expected transform, when shapes allow
    note: str = ""
    tf_name: str | None = None  # the TF op / layer holding the array (when several hold the layer's weights)
    formula: str = ""  # for "folded": what the TF array was checked against
    #: for a mismatch: the worst element, ``{"index": [...], "expected": x, "got": y}`` (TF layout)
    worst: dict[str, Any] | None = None

    @property
    def transform(self) -> str | None:
        return self.status.split(":", 1)[1] if self.status.startswith("equal_under:") else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "role": self.role,
            "caffe_shape": list(self.caffe_shape),
            "tf_shape": list(self.tf_shape) if self.tf_shape is not None else None,
            "status": self.status,
            "transform": self.transform,
            "max_abs_error": self.max_abs_error,
            "note": self.note,
            "tf_name": self.tf_name,
            "formula": self.formula,
            "worst": self.worst,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BlobParity:
        """The inverse of :meth:`to_dict` (a JSON report's ``layers[].weights[].blobs[]``)."""
        ts = d.get("tf_shape")
        return cls(int(d["index"]), str(d["role"]), tuple(int(x) for x in d["caffe_shape"]),
                   None if ts is None else tuple(int(x) for x in ts), str(d["status"]), d.get("max_abs_error"),
                   str(d.get("note", "")), d.get("tf_name"), str(d.get("formula", "")), d.get("worst"))


@dataclass
class WeightRow:
    """One Caffe layer's params against one TF layer's weights."""

    caffe_layer: str
    caffe_kind: str
    tf_layer: str | None
    status: str
    blobs: list[BlobParity] = field(default_factory=list)
    note: str = ""
    how: str = ""  # how it was paired: "explicit" | "name" | "structural" | "value" | "" (names only)
    tf_ops: list[str] = field(default_factory=list)  # every TF op / layer whose arrays were checked

    @property
    def transform(self) -> str | None:
        return self.status.split(":", 1)[1] if self.status.startswith("equal_under:") else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "caffe_layer": self.caffe_layer,
            "caffe_kind": self.caffe_kind,
            "tf_layer": self.tf_layer,
            "status": self.status,
            "transform": self.transform,
            "note": self.note,
            "fix": self.fix,
            "how": self.how,
            "tf_ops": list(self.tf_ops),
            "blobs": [b.to_dict() for b in self.blobs],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> WeightRow:
        """The inverse of :meth:`to_dict` (a JSON report's ``layers[].weights[]``)."""
        return cls(str(d["caffe_layer"]), str(d["caffe_kind"]), d.get("tf_layer"), str(d["status"]),
                   [BlobParity.from_dict(b) for b in d.get("blobs", [])], str(d.get("note", "")),
                   str(d.get("how", "")), [str(x) for x in d.get("tf_ops", [])])

    @property
    def fix(self) -> str | None:
        return TRANSFORM_FIXES.get(self.transform or "")


@dataclass
class WeightReport:
    """Truthy when every Caffe layer with params has TF weights equal under the expected transform
    (or folded into TF ops by the checked formula)."""

    rows: list[WeightRow]
    unmatched_tf: list[str] = field(default_factory=list)
    #: what the pairing could not settle from the graph alone (and how to settle it)
    pairing_notes: list[str] = field(default_factory=list)
    #: Caffe layers whose rows are not a verdict on their weights: paired by a structural guess
    #: between look-alike TF ops that their weights did not confirm, or not paired at all from
    #: the graph alone. A report with such rows is not a pass, and not "differ" either: it says
    #: "not judged" and asks to pair by value.
    undecided: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return all(r.status in GOOD for r in self.rows)

    @property
    def judged(self) -> bool:
        """Every problem row is a verdict on weights (none comes from an undecided pairing)."""
        return not self._undecided_problems()

    def _undecided_problems(self) -> list[str]:
        pending = set(self.undecided)
        return [r.caffe_layer for r in self.problems if r.caffe_layer in pending]

    @property
    def passed(self) -> bool:
        return bool(self)

    @property
    def problems(self) -> list[WeightRow]:
        return [r for r in self.rows if r.status not in GOOD]

    def counts(self) -> dict[str, int]:
        """Rows per status kind (``equal``, ``folded``, ``equal_under``, ``different``, ``missing``)."""
        out: dict[str, int] = {}
        for r in self.rows:
            k = r.status.split(":", 1)[0]
            out[k] = out.get(k, 0) + 1
        return out

    def row(self, caffe_layer: str) -> WeightRow:
        for r in self.rows:
            if r.caffe_layer == caffe_layer:
                return r
        raise KeyError(f"no weight row for Caffe layer {caffe_layer!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": "layerparity-weights",
            "version": 1,
            "passed": self.passed,
            "counts": self.counts(),
            "layers": [r.to_dict() for r in self.rows],
            "unmatched_tf": list(self.unmatched_tf),
            "pairing_notes": list(self.pairing_notes),
            "undecided": list(self.undecided),
        }

    def to_text(self, max_rows: int = 50) -> str:
        n_ok = sum(r.status == "equal" for r in self.rows)
        n_fold = sum(r.status == "folded" for r in self.rows)
        problems = self.problems
        undecided = self._undecided_problems()
        head = "Weights match." if self else "Weights not judged:" if len(undecided) == len(problems) \
            else "Weights differ!"
        folded = f" ({n_fold} more folded into TF ops, formula checked)" if n_fold else ""
        lines = [f"{head} {n_ok} / {len(self.rows)} Caffe layers with params equal under the expected layout{folded}."]
        consts = [c for c in undecided if self.row(c).note == CONSTANT_NOTE]
        unpaired = [c for c in undecided if c not in consts]
        if unpaired:
            lines.append(f"  {len(unpaired)} Caffe layer(s) could not be paired from the graph alone "
                         f"({', '.join(unpaired[:4])}{', ...' if len(unpaired) > 4 else ''}): their rows below are no "
                         "verdict on their weights; pair by value (weight_parity(..., by_value=input) / "
                         "layerparity weights --by-value INPUT)")
        if consts:
            lines.append(f"  {len(consts)} Parameter layer(s) ({', '.join(consts[:4])}{', ...' if len(consts) > 4 else ''}) "
                         "hold constants of the net, not weights: not judged here")
        for r in problems[:max_rows]:
            tf = r.tf_layer or "-"
            lines.append(f"  {r.caffe_layer} ({r.caffe_kind}) -> {tf}: {r.status}" + (f"  [{r.note}]" if r.note else ""))
            if r.fix:
                lines.append(f"    fix: {r.fix}")
            for b in r.blobs:
                if b.status != "equal":
                    err = f", max abs error {b.max_abs_error:.3g} under the expected layout" if b.max_abs_error is not None else ""
                    where = f" in {b.tf_name}" if b.tf_name else ""
                    lines.append(
                        f"    blob {b.index} ({b.role}) caffe {b.caffe_shape} tf {b.tf_shape}{where}: {b.status}{err}"
                        + (f"; {b.note}" if b.note else "")
                    )
                    if b.worst is not None and not b.status.startswith("equal_under"):
                        w = b.worst
                        lines.append(f"      worst element {tuple(w['index'])}: expected {w['expected']:.6g}, "
                                     f"got {w['got']:.6g}")
                    if b.formula:
                        lines.append(f"      checked: {b.formula}")
        if len(problems) > max_rows:
            lines.append(f"  ... {len(problems) - max_rows} more layers not shown (output capped)")
        if self.unmatched_tf:
            shown = ", ".join(self.unmatched_tf[:20])
            more = f" and {len(self.unmatched_tf) - 20} more" if len(self.unmatched_tf) > 20 else ""
            lines.append(f"  TF layers with weights and no Caffe layer: {shown}{more}")
        for n in self.pairing_notes:
            lines.append(f"  pairing: {n}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_text()


# -- names ------------------------------------------------------------------------


def _name_keys():
    """(caffe_key, tf_keys): the alignment's name keys (:mod:`layerparity.names`), case-insensitive."""

    def caffe_key(name: str) -> str:
        return fold(name)

    def tf_keys(name: str) -> list[str]:
        keys = [k.lower() for k in tf_name_keys(name)]
        return keys + [normalize_name(name), normalize_name(name.split("/")[-1])]

    return caffe_key, tf_keys


# -- comparing ----------------------------------------------------------------------


def _close(expected: np.ndarray, got: np.ndarray) -> tuple[bool, float | None]:
    if tuple(expected.shape) != tuple(got.shape):
        return False, None
    if np.asarray(expected).dtype == np.asarray(got).dtype and np.array_equal(expected, got):
        return True, 0.0  # the usual case, a correct port's weights: the float64 pass gives the same
    e = np.asarray(expected, np.float64)
    g = np.asarray(got, np.float64)
    d = np.abs(e - g)
    scale = float(np.max(np.abs(e), initial=0.0)) or 1.0
    ok = bool(np.all(d <= WEIGHT_ATOL * scale + WEIGHT_RTOL * np.abs(e)))
    return ok, float(np.max(d, initial=0.0))


def _squeezed_equal(expected: np.ndarray, got: np.ndarray) -> tuple[bool, float | None]:
    ok, err = _close(expected, got)
    if err is None and expected.size == got.size:
        return _close(expected.reshape(-1), got.reshape(-1))
    return ok, err


def _variants(kind: str, role: str, w: np.ndarray, chw: tuple[int, int, int] | None, group: int,
              tf_shape: tuple[int, ...], caffe_chw: tuple[int, int, int] | None = None) -> list[tuple[str, np.ndarray]]:
    """The classic wrong transforms of a Caffe blob, as TF would hold them.

    ``caffe_chw``: the (C, H, W) an InnerProduct reads when the TF side flattens in Caffe's
    own C*H*W order (a converter's transpose back to NCHW before the reshape), so the expected
    kernel is plain ``W.T`` and the Keras-style row permutation is the wrong one."""
    out: list[tuple[str, np.ndarray]] = []
    if kind == "lstm" and w.ndim in (1, 2) and w.shape[0] % 4 == 0:
        out.append(("lstm_gate_order", w.T if w.ndim == 2 else w))  # Caffe's i, f, o, g copied as is
        return out
    if role != "weight":
        return out
    if kind in ("conv", "depthwise_conv") and w.ndim == 4:
        e = _expected(kind, w, role, chw, group, tf_shape)
        out.append(("kernel_flipped", e[::-1, ::-1]))
        if e.shape[0] > 1 or e.shape[1] > 1:  # square or not (a 3x5 kernel held as 5x3)
            out.append(("kernel_hw_swapped", e.transpose(1, 0, 2, 3)))
        if e.shape[2] > 1:
            out.append(("channel_order", e[:, :, ::-1, :]))
        if w.size == int(np.prod(tf_shape)):
            out.append(("reshape_not_transpose", w.reshape(tf_shape)))
    elif kind == "deconv" and w.ndim == 4:
        e = deconv_weight_caffe_to_tf(w)
        out.append(("deconv_in_out_swapped", w.transpose(2, 3, 0, 1)))
        out.append(("kernel_flipped", e[::-1, ::-1]))
        if e.shape[0] > 1 or e.shape[1] > 1:
            out.append(("kernel_hw_swapped", e.transpose(1, 0, 2, 3)))
        if w.size == int(np.prod(tf_shape)):
            out.append(("reshape_not_transpose", w.reshape(tf_shape)))
    elif kind == "fc" and w.ndim == 2:
        if chw is not None and chw[1] * chw[2] > 1:
            out.append(("flatten_order", w.T))
        elif chw is None and caffe_chw is not None and caffe_chw[1] * caffe_chw[2] > 1:
            out.append(("flatten_order", inner_product_weight_caffe_to_tf(w, caffe_chw)))
        if w.size == int(np.prod(tf_shape)):
            out.append(("reshape_not_transpose", w.reshape(tf_shape)))
    return out


def _expected(kind: str, w: np.ndarray, role: str, chw: tuple[int, int, int] | None, group: int,
              tf_shape: tuple[int, ...] | None) -> np.ndarray:
    if kind == "lstm" and w.ndim in (1, 2) and w.shape[0] % 4 == 0:
        return lstm_weight_caffe_to_keras(w)  # every blob: W_xc, b_c, W_hc
    if kind == "rnn" and w.ndim == 2:
        return w.T  # W_xh, W_hh, W_ho as Keras kernels (in, out)
    if role != "weight":
        return w
    if kind in ("conv", "depthwise_conv") and w.ndim == 4:
        e = conv_weight_caffe_to_tf(w)
        if tf_shape is not None and tuple(tf_shape) != e.shape and w.shape[1] == 1:
            # depthwise: Caffe (C*M, 1, k, k), group = C  ->  (k, k, C, M)
            c = group if group > 1 else (tf_shape[2] if len(tf_shape) == 4 else 0)
            if c and w.shape[0] % c == 0:
                return depthwise_weight(w, c)
        return e
    if kind == "deconv" and w.ndim == 4:
        return deconv_weight_caffe_to_tf(w)
    if kind == "fc" and w.ndim == 2:
        return inner_product_weight_caffe_to_tf(w, chw)
    return w


def compare_layer(
    kind: str,
    caffe_blobs: Sequence[np.ndarray],
    tf_arrays: Sequence[np.ndarray] | None,
    chw: tuple[int, int, int] | None = None,
    group: int = 1,
    scale_blobs: Sequence[np.ndarray] | None = None,
    caffe_chw: tuple[int, int, int] | None = None,
) -> tuple[str, list[BlobParity], str]:
    """Compare one Caffe layer's blobs (canonical ``kind``) with one TF layer's arrays.

    Returns (status, per-blob results, note). ``scale_blobs`` are the params of
    the Scale layer fused into the same TF BatchNormalization. ``caffe_chw``: see
    :func:`_variants` (an fc whose TF input is flattened in C*H*W order, ``chw`` None).
    """
    caffe_blobs = [np.asarray(b) for b in caffe_blobs]
    if tf_arrays is None:
        blobs = [BlobParity(i, _role(kind, i), tuple(b.shape), None, "missing") for i, b in enumerate(caffe_blobs)]
        return "missing", blobs, "no TF layer with weights matches this Caffe layer"
    tf_arrays = [np.asarray(a) for a in tf_arrays]
    if kind == "bn":
        return _compare_bn(caffe_blobs, tf_arrays, scale_blobs)
    if kind == "prelu":
        return _compare_prelu(caffe_blobs, tf_arrays)
    results = []
    used: set[int] = set()
    for i, b in enumerate(caffe_blobs):
        role = _role(kind, i)
        # the TF array for blob i: same position if its size fits, else the first unused of that size
        cand = [j for j in range(len(tf_arrays)) if j not in used and tf_arrays[j].size == b.size]
        j = i if i in cand else (cand[0] if cand else None)
        if j is None:
            results.append(BlobParity(i, role, tuple(b.shape), None, "missing",
                                      note=f"no TF array with {b.size} elements"))
            continue
        used.add(j)
        a = tf_arrays[j]
        exp = _expected(kind, b, role, chw, group, tuple(a.shape))
        if exp.ndim == 4 and a.ndim == 4 and exp.shape != a.shape:
            # a kernel of another shape is another kernel, even when its memory reads the same
            # (a 1x3 kernel held as 3x1): never "equal" by flattening
            ok, err = False, None
        else:
            ok, err = _squeezed_equal(exp, a)
        if ok:
            results.append(BlobParity(i, role, tuple(b.shape), tuple(a.shape), "equal", err))
            continue
        status = "different"
        for name, v in _variants(kind, role, b, chw, group, tuple(a.shape), caffe_chw):
            vok, _ = _close(v, a)
            if vok:
                status = f"equal_under:{name}"
                break
        note = ""
        if status == "equal_under:reshape_not_transpose" and b.ndim == 2 and b.shape[0] == b.shape[1]:
            note = "W is square: the TF kernel holds W itself, not W.T (the weight is transposed)"
        elif status == "equal_under:flatten_order" and chw is None and caffe_chw is not None:
            note = ("the TF side flattens in Caffe's own C*H*W order (transposed back to NCHW first), so the "
                    "kernel must be plain W.T; it holds the rows permuted to H*W*C")
        worst = _worst_element(exp, a) if status == "different" else None
        results.append(BlobParity(i, role, tuple(b.shape), tuple(a.shape), status, err, note, worst=worst))
    return _worst(results), results, ""


def _role(kind: str, i: int) -> str:
    if kind == "bn":
        return ("mean", "var", "scale_factor")[i] if i < 3 else f"blob{i}"
    if kind == "scale":
        return ("gamma", "beta")[i] if i < 2 else f"blob{i}"
    if kind == "prelu":
        return "slope"
    return ("weight", "bias")[i] if i < 2 else f"blob{i}"


def _worst(results: list[BlobParity]) -> str:
    worst = "equal"
    for r in results:
        key = r.status.split(":", 1)[0]
        if STATUS_ORDER[key] > STATUS_ORDER[worst.split(":", 1)[0]]:
            worst = r.status
    return worst


def _compare_bn(blobs: list[np.ndarray], tf: list[np.ndarray], scale_blobs: Sequence[np.ndarray] | None
                ) -> tuple[str, list[BlobParity], str]:
    if len(blobs) < 2:
        raise WeightParityError(f"a BatchNorm layer needs [mean*S, var*S, S] blobs, got {len(blobs)}")
    s = float(np.asarray(blobs[2]).reshape(-1)[0]) if len(blobs) > 2 else 1.0
    f = 0.0 if s == 0 else 1.0 / s
    mean, var = blobs[0].astype(np.float64) * f, blobs[1].astype(np.float64) * f
    # Keras BatchNormalization order: [gamma], [beta], moving_mean, moving_var
    if len(tf) < 2:
        return "missing", [BlobParity(0, "mean", tuple(blobs[0].shape), None, "missing")], "TF layer has fewer than 2 arrays"
    t_mean, t_var = tf[-2], tf[-1]
    results = []
    note = ""
    for i, (exp, raw, got, role) in enumerate(((mean, blobs[0], t_mean, "mean"), (var, blobs[1], t_var, "var"))):
        ok, err = _squeezed_equal(exp, got)
        status = "equal"
        if not ok:
            status = "different"
            if s != 1.0 and _squeezed_equal(raw.astype(np.float64), got)[0]:
                status = "equal_under:batchnorm_scale_factor"
        results.append(BlobParity(i, role, tuple(blobs[i].shape), tuple(got.shape), status, err))
    if len(blobs) > 2:
        results.append(BlobParity(2, "scale_factor", tuple(blobs[2].shape), None, "equal",
                                  note=f"S = {s:g}: TF holds mean/S and var/S"))
    extra = tf[:-2]
    scale_note = "from the Scale layer fused into this BatchNormalization"
    if scale_blobs is None and len(blobs) == 5:  # BatchNormKyle with use_alpha_beta: its own gamma, beta
        scale_blobs, scale_note = blobs[3:5], "the layer's own alpha/beta blobs"
    if scale_blobs is not None:
        gamma = np.asarray(scale_blobs[0], np.float64)
        beta = np.asarray(scale_blobs[1], np.float64) if len(scale_blobs) > 1 else None
        if len(extra) == 2:
            pairs = [("gamma", gamma, extra[0]), ("beta", beta, extra[1])]
        elif len(extra) == 1:
            pairs = [("gamma", gamma, extra[0])] if beta is None or not _squeezed_equal(beta, extra[0])[0] else [("beta", beta, extra[0])]
        else:
            pairs = []
        for k, (role, exp, got) in enumerate(pairs):
            if exp is None:
                continue
            ok, err = _squeezed_equal(exp, got)
            results.append(BlobParity(3 + k, role, tuple(exp.shape), tuple(got.shape), "equal" if ok else "different", err,
                                      note=scale_note))
        if not pairs:
            note = "the TF BatchNormalization has no gamma/beta: the following Scale layer is missing (missing_scale)"
            results.append(BlobParity(3, "gamma", tuple(gamma.shape), None, "missing", note="missing_scale"))
    return _worst(results), results, note


def _compare_prelu(blobs: list[np.ndarray], tf: list[np.ndarray]) -> tuple[str, list[BlobParity], str]:
    slopes = np.asarray(blobs[0], np.float64).reshape(-1)
    a = np.asarray(tf[0], np.float64) if tf else None
    if a is None:
        return "missing", [BlobParity(0, "slope", tuple(blobs[0].shape), None, "missing")], ""
    shape = tuple(a.shape)
    if slopes.size == 1:
        ok = bool(np.allclose(a, slopes[0], rtol=WEIGHT_RTOL, atol=WEIGHT_ATOL * (abs(slopes[0]) or 1)))
        err = float(np.max(np.abs(a - slopes[0]), initial=0.0))
        return ("equal" if ok else "different"), [BlobParity(0, "slope", tuple(blobs[0].shape), shape,
                                                              "equal" if ok else "different", err)], ""
    if a.ndim >= 1 and a.shape[-1] == slopes.size:
        exp = np.broadcast_to(slopes, a.shape)
        ok, err = _close(exp, a)
        status = "equal" if ok else "different"
        note = ""
        if ok and a.ndim > 1 and any(d > 1 for d in a.shape[:-1]):
            note = "alpha is stored per position; shared_axes=[1, 2] would make it work at any input size"
        return status, [BlobParity(0, "slope", tuple(blobs[0].shape), shape, status, err, note)], note
    # a shared (or wrongly shared) alpha for per-channel Caffe slopes
    status = "equal_under:prelu_shared_axes" if a.size == 1 or np.all(a == a.reshape(-1)[0]) else "different"
    return status, [BlobParity(0, "slope", tuple(blobs[0].shape), shape, status, None,
                               f"Caffe has {slopes.size} per-channel slopes")], ""


# -- the public check -------------------------------------------------------------------


def _probe_index(caffe_probes: Any) -> dict[str, Any]:
    if caffe_probes is None:
        return {}
    if isinstance(caffe_probes, Mapping):
        return {str(k): v for k, v in caffe_probes.items()}
    out = {}
    for p in caffe_probes:
        out[p.layer or p.name] = p
        out.setdefault(p.name, p)
    return out


def _kind_and_meta(name: str, blobs: list[np.ndarray], probes: dict[str, Any]) -> tuple[str, int, tuple[int, int, int] | None, str]:
    from .kinds import canonical_kind

    p = probes.get(name)
    raw = getattr(p, "kind", "") if p is not None else ""
    params = dict(getattr(p, "params", {}) or {}) if p is not None else {}
    kind = canonical_kind(raw, params) if raw else ""
    if not kind:
        if len(blobs) == 3 and blobs[2].size == 1:
            kind = "bn"
        elif blobs and blobs[0].ndim == 4:
            kind = "conv"
        elif blobs and blobs[0].ndim == 2:
            kind = "fc"
        elif len(blobs) == 2 and blobs[0].ndim == 1:
            kind = "scale"
        else:
            kind = "other"
    group = int(params.get("group", 1) or 1)
    chw = None
    if kind == "fc" and p is not None:
        src = None
        for inp in getattr(p, "inputs", []) or []:
            src = probes.get(inp)
            if src is not None:
                break
        shape = tuple(getattr(src, "shape", ()) or ()) if src is not None else ()
        flat = getattr(src, "flat_shape", None) if src is not None else None
        if len(shape) == 4:
            chw = (shape[1], shape[2], shape[3])
        elif flat is not None and len(flat) == 3 and str(getattr(src, "layout", "")).startswith("flat:NCHW"):
            chw = (int(flat[0]), int(flat[1]), int(flat[2]))  # an explicit Caffe Flatten in between
    return kind, group, chw, raw


def _arrays(v: Any, what: str) -> list[np.ndarray]:
    if isinstance(v, np.ndarray) or isinstance(v, (str, bytes)) or not isinstance(v, Iterable):
        raise WeightParityError(f"{what}: expected a list of arrays, got {type(v).__name__}")
    out = []
    for i, a in enumerate(v):
        try:
            arr = np.asarray(a)
        except Exception as e:  # noqa: BLE001 - anything numpy cannot read is bad input
            raise WeightParityError(f"{what}: array {i} is unreadable ({e})") from None
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise WeightParityError(f"{what}: array {i} is not numeric (dtype {arr.dtype})")
        out.append(arr)
    return out


def _group_graph_weights(tw: dict[str, list[np.ndarray]]) -> dict[str, list[np.ndarray]]:
    """Graph backends key weights by op (``.../conv1/Conv2D`` kernel, ``.../conv1/BiasAdd`` bias):
    merge the ops of one layer scope into one entry named after the scope, kernel first."""
    graphish = [k for k in tw if "/" in k]
    if len(graphish) < 2:
        return tw
    try:
        # pure Python: importing it leaves TensorFlow unimported
        from .backends.tfcommon import scope_layers
    except ImportError:  # pragma: no cover
        return tw
    scopes = scope_layers(graphish)
    groups: dict[str, list[str]] = {}
    for k in graphish:
        groups.setdefault(scopes[k], []).append(k)
    out: dict[str, list[np.ndarray]] = {}
    merged = {k for g in groups.values() if len(g) > 1 for k in g}
    for k, v in tw.items():
        if k not in merged:
            out[k] = v
            continue
        layer = scopes[k]
        if layer in out or layer in tw and layer not in merged:
            continue
        arrays = [a for kk in groups[layer] for a in tw[kk]]
        out[layer] = sorted(arrays, key=lambda a: -min(a.ndim, 2))  # kernels before biases (stable)
    return out


def check_weights(
    caffe_weights: Mapping[str, Sequence[np.ndarray]],
    tf_weights: Mapping[str, Sequence[np.ndarray]],
    caffe_probes: Any = None,
    mapping: Mapping[str, str] | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    *,
    tf_probes: Any = None,
    tf_scalars: Mapping[str, Sequence[float]] | None = None,
    caffe_value: Any = None,
    tf_value: Any = None,
) -> WeightReport:
    """Weight parity of every Caffe layer with params.

    caffe_weights
        ``layer -> [blobs]`` in Caffe's layout (``CaffeBackend.weights()``).
    tf_weights
        ``name -> [arrays]`` in TF's layout (``load_tf(model).weights()``).
    caffe_probes
        A Caffe :class:`~layerparity.trace.Trace`, list of probes or dict name -> probe
        (values not needed): gives each layer's kind, ``group``, and an InnerProduct's
        input shape (for the flatten permutation), and links Scale to its BatchNorm.
    mapping
        Explicit ``caffe_layer -> tf_name`` (or a YAML/JSON mapping file, see
        :func:`layerparity.alignment.load_mapping`); the rest is matched by normalized
        name. Entries for layers without params are ignored; a target holding no
        weights leaves the row ``missing`` with a note.
    input_shapes
        ``caffe_layer -> NCHW shape of its input`` (overrides the probes), for
        InnerProduct layers reading a spatial blob.
    tf_probes
        The TF side's probes (a :class:`~layerparity.trace.Trace` or list; values not
        needed): with them (and ``caffe_probes``), layers are paired by the alignment
        ``compare`` uses (explicit, name, structural; :mod:`layerparity.weight_pairing`)
        and weights a converter folded or decomposed (BatchNorm + Scale into Mul/Add or
        the kernel, a bias in an Add, a Gemm's MatMul/Mul/Add) are checked against their
        formula (status ``folded``). ``tf_weights`` must then be keyed by probe name.
        Without them, layers are paired by name only.
    tf_scalars
        ``op -> [scalar constant operands]`` (a Gemm's alpha in a ``Mul``;
        ``GraphBackend.weight_scalars``).
    caffe_value, tf_value
        ``probe name -> value`` of one run of each net on the same input: structural
        ties are then broken by value (as ``compare`` does).
    """
    if not isinstance(caffe_weights, Mapping) or not isinstance(tf_weights, Mapping):
        raise WeightParityError("check_weights needs two dicts: layer name -> list of arrays")
    if mapping is not None:
        from .alignment import (
            as_mapping,  # validates (MappingError is an InputError); a path is read
        )

        mapping = as_mapping(mapping)
    mapping = dict(mapping or {})
    cw = {str(k): _arrays(v, f"Caffe layer {k!r}") for k, v in caffe_weights.items()}
    if tf_probes is not None:
        if caffe_probes is None:
            raise WeightParityError("check_weights: tf_probes need caffe_probes too (the alignment pairs the two)")
        tw0 = {str(k): _arrays(v, f"TF layer {k!r}") for k, v in tf_weights.items()}
        return _check_aligned(cw, tw0, _probe_index(caffe_probes), caffe_probes, tf_probes,
                              tf_scalars=tf_scalars, mapping=mapping or None, caffe_value=caffe_value,
                              tf_value=tf_value, input_shapes=input_shapes)
    tw = _group_graph_weights({str(k): _arrays(v, f"TF layer {k!r}") for k, v in tf_weights.items()})
    probes = _probe_index(caffe_probes)
    caffe_key, tf_keys = _name_keys()
    tf_by_norm: dict[str, str] = {}
    for t in tw:  # exact names first, then each name's normalized forms, most specific first
        tf_by_norm.setdefault(caffe_key(t), t)
    for t in tw:
        for k in tf_keys(t):
            tf_by_norm.setdefault(k, t)

    def norm(name: str) -> str:
        return caffe_key(name)

    metas = {name: _kind_and_meta(name, blobs, probes) for name, blobs in cw.items()}
    # Scale layers fused into the BatchNormalization of the BatchNorm that feeds them
    scale_of_bn: dict[str, str] = {}
    names = list(cw)
    for i, name in enumerate(names):
        if metas[name][0] != "scale":
            continue
        p = probes.get(name)
        src = [s for s in (getattr(p, "inputs", []) or []) if s in metas] if p is not None else []
        if not src and i > 0:
            src = [names[i - 1]]
        if src and metas[src[0]][0] == "bn":
            scale_of_bn[src[0]] = name

    rows: list[WeightRow] = []
    matched: set[str] = set()
    for name, blobs in cw.items():
        kind, group, chw, raw = metas[name]
        if input_shapes and name in input_shapes:
            s = tuple(int(d) for d in input_shapes[name])
            chw = (s[1], s[2], s[3]) if len(s) == 4 else None
        tf_name = _mapped(mapping.get(name), tw, tf_by_norm, tf_keys) if name in mapping else tf_by_norm.get(norm(name))
        if kind == "scale" and tf_name is None and name in scale_of_bn.values():
            bn = next(b for b, s in scale_of_bn.items() if s == name)
            bn_tf = _mapped(mapping.get(bn), tw, tf_by_norm, tf_keys) if bn in mapping else tf_by_norm.get(norm(bn))
            rows.append(WeightRow(name, raw or kind, bn_tf, "equal" if bn_tf else "missing", [],
                                  f"compared as gamma/beta of {bn_tf or bn!r}"))
            # the status is settled on the BatchNorm row; copied back below
            continue
        arrays = tw.get(tf_name) if tf_name else None
        if tf_name:
            matched.add(tf_name)
        const = _constant_row(name, raw, None) if arrays is None else None
        if const is not None:
            rows.append(const)
            continue
        scale_blobs = cw.get(scale_of_bn[name]) if name in scale_of_bn else None
        status, results, note = compare_layer(kind, blobs, arrays, chw, group, scale_blobs)
        if name in mapping and arrays is None:
            note = f"the mapping sends it to {mapping[name]!r}, which holds no weights"
        rows.append(WeightRow(name, raw or kind, tf_name if arrays is not None else None, status, results, note))
    # a fused Scale row takes the status of its gamma/beta blobs on the BatchNorm row
    by_name = {r.caffe_layer: r for r in rows}
    for bn, sc in scale_of_bn.items():
        srow, brow = by_name.get(sc), by_name.get(bn)
        if srow is None or brow is None or srow.blobs:
            continue
        gb = [b for b in brow.blobs if b.role in ("gamma", "beta")]
        srow.blobs = gb
        if gb and not any(b.status == "missing" for b in gb):
            srow.status = _worst(gb)
        else:
            srow.status = "missing"
            if brow.tf_layer is not None:
                srow.note = f"{brow.tf_layer!r} has no gamma/beta: the Scale is missing (missing_scale)"
    unmatched = [t for t in tw if t not in matched and any(np.asarray(a).size for a in tw[t])]
    return WeightReport(rows, unmatched, undecided=[r.caffe_layer for r in rows if r.note == CONSTANT_NOTE])


#: The note of a Parameter layer's row when the TF side holds its blob in no weights.
CONSTANT_NOTE = ("a Parameter layer's blob is a constant of the net (an LSTM's cont, a BatchReindex's index), "
                 "which a port holds as a tensor or computes, not as weights: the weight check cannot judge it "
                 "(compare checks the layers that read it)")


def _constant_row(name: str, raw: str, tf_layer: str | None, how: str = "") -> WeightRow | None:
    """The row of a Caffe Parameter layer whose TF partner holds no weights: status "missing"
    like any row without TF arrays, but listed in ``undecided`` (a correct port holds no
    weights for it: no verdict either way) by its note. None for any other layer."""
    if raw != "Parameter":
        return None
    return WeightRow(name, raw, tf_layer, "missing", [], CONSTANT_NOTE, how)


def _mapped(t: str | None, tw: Mapping[str, Any], tf_by_norm: dict[str, str], tf_keys: Any) -> str | None:
    """The TF weights key an explicit mapping target refers to (an op name resolves to its layer)."""
    if t is None:
        return None
    if t in tw:
        return t
    for k in tf_keys(t):
        if k in tf_by_norm:
            return tf_by_norm[k]
    return None


def weight_parity(
    caffe_prototxt: str,
    caffe_weights_path: str | None,
    tf_model: Any,
    mapping: Mapping[str, str] | str | None = None,
    *,
    by_value: Any = None,
) -> WeightReport:
    """Load both models through the backends and check their weights.

    ``tf_model`` is anything :func:`layerparity.backends.tensorflow.load_tf` accepts
    (a Keras model, a ``.keras``/``.h5`` path, a SavedModel directory, ...) or an
    open TF backend. Layers are paired by the alignment ``compare`` uses (explicit
    ``mapping``, names, then structure); the probes it aligns come from one run of each
    net on zeros, whose values are never looked at: the structural step uses the
    graph's edges, kinds and shapes only. ``by_value``: an input (NCHW array, or
    ``{input: array}``) both nets are run on once, to break structural ties by value
    (when the report's ``pairing_notes`` say the graph alone is not enough).
    """
    from .backends.base import Backend
    from .backends.caffe import CaffeBackend  # lazy: needs pycaffe (in the worker)

    caffe_trace = None
    with CaffeBackend(caffe_prototxt, caffe_weights_path) as cb:
        cw = cb.weights()
        shapes = cb.input_shapes() if hasattr(cb, "input_shapes") else None
        if by_value is None:
            probes = _caffe_probes_by_shape_inference(cb)
        else:
            caffe_trace = cb.capture(by_value)
            probes = list(caffe_trace)
    if isinstance(tf_model, Backend):
        return _tf_side(tf_model, cw, probes, caffe_trace, shapes, mapping, by_value)
    from .backends.tensorflow import load_tf  # lazy: needs TensorFlow

    with load_tf(tf_model) as tb:
        return _tf_side(tb, cw, probes, caffe_trace, shapes, mapping, by_value)


def _tf_side(tb: Any, cw: Any, probes: Any, caffe_trace: Any, shapes: Any, mapping: Any, by_value: Any) -> WeightReport:
    tw = tb.weights()
    scalars = dict(getattr(tb, "weight_scalars", {}) or {})
    if probes is None:
        rep = check_weights(cw, tw, probes, mapping)
        rep.pairing_notes.append("the Caffe net could not be run for its structure: layers paired by name only")
        return rep
    if by_value is not None:
        tf_trace = tb.capture(by_value)
        return check_weights(cw, tw, probes, mapping, tf_probes=list(tf_trace), tf_scalars=scalars,
                             caffe_value=lambda n: caffe_trace[n].value, tf_value=lambda n: tf_trace[n].value)
    try:
        feed = {name: np.zeros(shape, np.float32) for name, shape in (shapes or {}).items()}
        if not feed:
            feed = {s.name: np.zeros(tuple(d or 1 for d in s.shape), np.float32) for s in tb.input_specs()}
        tf_probes = [p.without_value() for p in tb.iter_capture(next(iter(feed.values())) if len(feed) == 1 else feed)]
    except Exception as e:  # noqa: BLE001 - the structure is then unknown: pair by name, and say so
        rep = check_weights(cw, tw, probes, mapping)
        rep.pairing_notes.append(f"the TF model could not be run on zeros for its structure ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else ''}): layers paired by name only; "
                                 "pass an input to pair by value (by_value= / --by-value INPUT)")
        return rep
    return check_weights(cw, tw, probes, mapping, tf_probes=tf_probes, tf_scalars=scalars)


def _caffe_probes_by_shape_inference(cb: Any) -> Any:
    """Kinds and input shapes from one capture on zeros (only if the backend offers nothing cheaper)."""
    try:
        # the prototxt's own shapes: a free H/W (reshapeable input) keeps its declared size, not 1x1,
        # so the probes' shapes (and the flatten's C, H, W) are the net's real ones
        shapes = cb.input_shapes() if hasattr(cb, "input_shapes") else {
            s.name: tuple(d or 1 for d in s.shape) for s in cb.input_specs()}
        feed = {name: np.zeros(shape, np.float32) for name, shape in shapes.items()}
        return [p.without_value() for p in cb.iter_capture(feed)]
    except Exception:  # noqa: BLE001 - kinds then come from blob shapes
        return None


def iter_transform_names() -> Iterable[str]:
    """Every transform name an ``equal_under:`` status can carry."""
    return ("reshape_not_transpose", "kernel_flipped", "kernel_hw_swapped", "flatten_order",
            "deconv_in_out_swapped", "channel_order", "batchnorm_scale_factor", "prelu_shared_axes",
            "batchnorm_epsilon", "missing_scale", "lstm_gate_order")


# -- pairing by the alignment, folded and decomposed weights ----------------------------------------

#: how a TF op of a decomposed group changes the per-channel affine map after the kernel
_MUL_KINDS = frozenset({"mul", "scale"})
_ADD_KINDS = frozenset({"add", "bias"})


def _worst_element(expected: np.ndarray, got: np.ndarray) -> dict[str, Any] | None:
    if tuple(expected.shape) != tuple(got.shape) or not expected.size:
        return None
    d = np.abs(np.asarray(expected, np.float64) - np.asarray(got, np.float64))
    i = np.unravel_index(int(np.argmax(d)), d.shape)
    return {"index": [int(x) for x in i], "expected": float(expected[i]), "got": float(got[i])}


def _fold_close(expected: np.ndarray, got: np.ndarray, terms: float) -> tuple[bool, float | None]:
    """Equality of a folded value: float32 arithmetic of the converter allowed for."""
    if tuple(expected.shape) != tuple(got.shape):
        return False, None
    if np.asarray(expected).dtype == np.asarray(got).dtype and np.array_equal(expected, got):
        return True, 0.0  # the usual case, a correct port's weights: the float64 pass gives the same
    e = np.asarray(expected, np.float64)
    g = np.asarray(got, np.float64)
    d = np.abs(e - g)
    scale = max(float(np.max(np.abs(e), initial=0.0)), terms) or 1.0
    return bool(np.all(d <= FOLD_ATOL * scale + FOLD_RTOL * np.abs(e))), float(np.max(d, initial=0.0))


def _per_channel(a: np.ndarray, c: int) -> np.ndarray | None:
    """A TF constant as a per-channel vector of length ``c`` (scalars broadcast; (1, C, 1, 1),
    (1, 1, 1, C) and (C,) all read as C values), else None."""
    a = np.asarray(a, np.float64)
    if a.size == 1:
        return np.full(c, float(a.reshape(-1)[0]))
    if a.size == c and sum(d > 1 for d in a.shape) <= 1:
        return a.reshape(-1)
    return None


@dataclass
class _TFAffine:
    """The TF group as ``y = (x * kernel) * u + t`` per output channel."""

    kernel: np.ndarray | None = None
    kernel_op: Any = None
    u: np.ndarray | None = None
    t: np.ndarray | None = None
    mul_ops: list[str] = field(default_factory=list)
    add_ops: list[str] = field(default_factory=list)
    direct_bias: bool = True  # t is one array copied as is (no factor after it)
    problems: list[str] = field(default_factory=list)


def _tf_affine(ops: list[Any], c: int) -> _TFAffine:
    from .weight_pairing import KERNEL_KINDS

    r = _TFAffine(u=np.ones(c), t=np.zeros(c))
    n_add = 0
    for op in ops:
        arrays = list(op.arrays)
        if op.kind in KERNEL_KINDS and r.kernel is None:
            if not arrays:
                r.problems.append(f"{op.name} ({op.op_type}) holds no kernel")
                continue
            r.kernel, r.kernel_op = arrays[0], op
            arrays = arrays[1:]  # a Keras layer's own bias
            if arrays:
                v = _per_channel(arrays[0], c)
                if v is None:
                    r.problems.append(f"{op.name}: bias of shape {arrays[0].shape} is not per-channel ({c})")
                else:
                    r.t = r.t + v
                    r.add_ops.append(op.name)
                    n_add += 1
            continue
        if op.kind == "bn" and len(arrays) == 4:
            gamma, beta, mean, var = (_per_channel(a, c) for a in arrays)
            eps = float(op.params.get("epsilon", 1e-3) or 0.0)
            if any(v is None for v in (gamma, beta, mean, var)):
                r.problems.append(f"{op.name}: BatchNorm arrays are not per-channel ({c})")
                continue
            m = gamma / np.sqrt(var + eps)
            r.u, r.t = r.u * m, r.t * m + beta - mean * m
            r.mul_ops.append(op.name)
            r.add_ops.append(op.name)
            r.direct_bias = False
            n_add += 1
            continue
        vals = [*arrays, *(np.asarray(x) for x in op.scalars)]
        for a in vals:
            v = _per_channel(a, c)
            if v is None:
                r.problems.append(f"{op.name} ({op.op_type}) holds an array of shape {tuple(a.shape)}: "
                                  f"not a per-channel constant of {c} channels")
                continue
            if op.kind in _MUL_KINDS:
                r.u, r.t = r.u * v, r.t * v
                r.mul_ops.append(op.name)
                if n_add:
                    r.direct_bias = False
            elif op.kind in _ADD_KINDS:
                r.t = r.t + v
                r.add_ops.append(op.name)
                n_add += 1
            elif op.kind == "sub":
                r.t = r.t - v
                r.add_ops.append(op.name)
                r.direct_bias = False
                n_add += 1
            else:
                r.problems.append(f"{op.name} ({op.op_type}) holds weights of a kind weight parity does not fold")
    if n_add > 1:
        r.direct_bias = False
    return r


@dataclass
class _Chain:
    """The Caffe side of one paired chain: a main layer (conv/fc/...) and/or BatchNorm and Scale."""

    main: str | None = None
    main_kind: str = ""
    bn: str | None = None
    scale: str | None = None
    eps: float = 1e-5


def _caffe_affine(cw: Mapping[str, list[np.ndarray]], ch: _Chain, c: int, variant: str | None,
                  eps: float | None = None) -> tuple[np.ndarray, np.ndarray, float, str]:
    """Caffe's BatchNorm + Scale after the main layer as ``y = x * u + t`` (per channel), the
    largest term (for the tolerance) and the formula, optionally under a wrong ``variant``."""
    u, t = np.ones(c), np.zeros(c)
    terms = 0.0
    parts: list[str] = []
    if ch.bn is not None:
        b = cw[ch.bn]
        s = float(np.asarray(b[2]).reshape(-1)[0]) if len(b) > 2 else 1.0
        f = 0.0 if s == 0 else 1.0 / s
        if variant == "batchnorm_scale_factor":
            f = 1.0
        e = ch.eps if eps is None else eps
        mean = np.asarray(b[0], np.float64).reshape(-1) * f
        var = np.asarray(b[1], np.float64).reshape(-1) * f
        m = 1.0 / np.sqrt(var + e)
        u, t = m, -mean * m
        terms = max(terms, float(np.max(np.abs(mean * m), initial=0.0)))
        d = "" if variant == "batchnorm_scale_factor" or len(b) < 3 else " / S"
        g = "gamma" if ch.scale is not None and variant != "missing_scale" else "1"
        parts.append(f"factor = {g} / sqrt(var{d} + eps), offset = "
                     + ("beta - " if g == "gamma" else "-") + f"mean{d} * factor")
        parts.append(f"mean, var of {ch.bn!r}, eps = {e:.6g}" + (f", S = {s:g}" if len(b) > 2 else "")
                     + (f", gamma, beta of {ch.scale!r}" if g == "gamma" else ""))
    if ch.scale is not None and variant != "missing_scale":
        sb = cw[ch.scale]
        gamma = np.asarray(sb[0], np.float64).reshape(-1)
        beta = np.asarray(sb[1], np.float64).reshape(-1) if len(sb) > 1 else np.zeros(c)
        if gamma.size == 1:
            gamma = np.full(c, float(gamma[0]))
        terms = max(terms, float(np.max(np.abs(t * gamma), initial=0.0)), float(np.max(np.abs(beta), initial=0.0)))
        u, t = u * gamma, t * gamma + beta
        if ch.bn is None:
            parts.append(f"factor = gamma, offset = beta of {ch.scale!r}")
    elif ch.scale is not None:
        parts.append(f"Scale {ch.scale!r} left out (gamma 1, beta 0)")
    return u, t, terms, "; ".join(parts)


def _out_axis_scale(kind: str, k: np.ndarray, u: np.ndarray, transpose_b: bool) -> np.ndarray | None:
    """A TF kernel with each output channel multiplied by ``u``; None if the shapes do not fit."""
    k = np.asarray(k, np.float64)
    if kind in ("conv", "depthwise_conv") and k.ndim == 4:
        if k.shape[3] == u.size:
            return k * u
        if k.shape[2] * k.shape[3] == u.size:
            return k * u.reshape(k.shape[2], k.shape[3])
        return None
    if kind == "deconv" and k.ndim == 4 and k.shape[2] == u.size:
        return k * u[None, None, :, None]
    if kind == "fc" and k.ndim == 2:
        if transpose_b and k.shape[0] == u.size:
            return k * u[:, None]
        if not transpose_b and k.shape[1] == u.size:
            return k * u[None, :]
    return None


def _channels(cw: Mapping[str, list[np.ndarray]], ch: _Chain, group: int) -> int:
    if ch.main is not None:
        w = cw[ch.main][0]
        if ch.main_kind == "deconv" and w.ndim == 4:
            return int(w.shape[1]) * max(group, 1)
        return int(w.shape[0])
    if ch.bn is not None:
        return int(np.asarray(cw[ch.bn][0]).size)
    return int(np.asarray(cw[ch.scale][0]).size) if ch.scale is not None else 0


def compare_folded(
    cw: Mapping[str, list[np.ndarray]],
    chain: _Chain,
    ops: list[Any],
    *,
    chw: tuple[int, int, int] | None = None,
    caffe_chw: tuple[int, int, int] | None = None,
    group: int = 1,
) -> dict[str, tuple[str, list[BlobParity], str]]:
    """A Caffe chain (conv/fc, BatchNorm, Scale) against a TF group of ops holding its weights
    decomposed or folded (kernel op, Mul/Add constants, a Gemm's scalar alpha, a FusedBatchNorm).

    Returns ``{caffe_layer: (status, blobs, note)}``. Both sides become ``y = (x * K) * u + t``
    per output channel; the effective kernels ``K * u`` and offsets ``t`` are compared. When
    they differ, the classic wrong transforms of the kernel and the wrong BatchNorm formulas
    (S not applied, another eps, the Scale left out) are tried: the one that explains the TF
    values is the finding.
    """
    c = _channels(cw, chain, group)
    tfa = _tf_affine(ops, c)
    kind = chain.main_kind
    out: dict[str, tuple[str, list[BlobParity], str]] = {}
    main_blobs = cw[chain.main] if chain.main is not None else []
    bias_c = (np.asarray(main_blobs[1], np.float64).reshape(-1) if len(main_blobs) > 1 else np.zeros(c))
    transpose_b = bool(tfa.kernel_op is not None and tfa.kernel_op.params.get("transpose_b"))
    problems = "; ".join(tfa.problems)

    # the candidate explanations: the right formula first, then the wrong BatchNorm formulas
    variants: list[tuple[str | None, float | None]] = [(None, None)]
    if chain.bn is not None:
        b = cw[chain.bn]
        if len(b) > 2 and float(np.asarray(b[2]).reshape(-1)[0]) not in (0.0, 1.0):
            variants.append(("batchnorm_scale_factor", None))
    if chain.scale is not None:
        variants.append(("missing_scale", None))
    kernel_tf = None
    if tfa.kernel is not None:
        kernel_tf = _out_axis_scale(kind, tfa.kernel, tfa.u, transpose_b)

    eps_guess = None
    if chain.bn is not None:
        u_tf = tfa.u
        if tfa.kernel is not None:
            # the factor is inside the kernel (a BatchNorm folded into a conv): read it back per
            # output channel against the Caffe kernel in TF layout (None when they do not line up)
            u_tf = None
            if chain.main is not None and kernel_tf is not None:
                u_tf = _kernel_factor(kind, main_blobs[0], kernel_tf, transpose_b, chw, group, c)
        eps_guess = _solve_eps(cw, chain, c, u_tf)
    if eps_guess is not None:
        variants.append(("batchnorm_epsilon", eps_guess))

    def expected_kernels() -> list[tuple[str | None, np.ndarray]]:
        w = main_blobs[0]
        tf_shape = tuple(tfa.kernel.shape)
        if transpose_b:
            tf_shape = tf_shape[::-1]
        exp = _expected(kind, w, "weight", chw, group, tf_shape)
        cands: list[tuple[str | None, np.ndarray]] = [(None, exp)]
        cands += list(_variants(kind, "weight", w, chw, group, tf_shape, caffe_chw))
        return [(n, (k.T if transpose_b else k)) for n, k in cands]

    results: list[tuple[str | None, float | None, bool, bool, Any]] = []
    for variant, eps in variants:
        u_c, t_c, terms, formula = _caffe_affine(cw, chain, c, variant, eps)
        t_exp = bias_c * u_c + t_c
        bias_terms = max(terms, float(np.max(np.abs(bias_c * u_c), initial=0.0)))
        t_ok, t_err = _fold_close(t_exp, tfa.t, bias_terms)
        k_name, k_ok, k_err, k_exp = None, None, None, None
        if chain.main is not None and kernel_tf is not None:
            k_ok = False
            for name, k in expected_kernels():
                ke = _out_axis_scale(kind, k, u_c, transpose_b)
                if ke is None:
                    continue
                ok, err = _fold_close(ke, kernel_tf, 0.0)
                if name is None:
                    k_err, k_exp = err, ke
                if ok:
                    k_name, k_ok = name, True
                    break
        else:
            u_ok, u_err = _fold_close(u_c, tfa.u, 0.0)
            k_ok, k_err, k_exp = u_ok, u_err, u_c
        results.append((variant, eps, bool(k_ok), t_ok, (k_name, k_err, k_exp, t_err, t_exp, formula)))
        if k_ok and t_ok:
            break

    # the first variant explaining both parts wins; else the right formula's numbers are reported
    hit = next((r for r in results if r[2] and r[3]), None)
    # a kernel transform with the right BatchNorm formula, bias right too
    chosen = hit or results[0]
    variant, eps, k_ok, t_ok, (k_name, k_err, k_exp, t_err, t_exp, formula) = chosen
    if hit is None:
        variant = None
    elif hit is not results[0]:
        # a wrong formula explains the TF values: the errors reported are those under the right one
        _, _, _, _, (_, k_err, k_exp0, t_err, t_exp0, _) = results[0]
        k_exp = k_exp0 if k_exp0 is not None else k_exp
    any_fold = (chain.bn is not None or chain.scale is not None or not np.allclose(tfa.u, 1.0)
                or not tfa.direct_bias)
    mul_where = ", ".join(tfa.mul_ops) or None
    add_where = ", ".join(tfa.add_ops) or None
    kname = tfa.kernel_op.name if tfa.kernel_op is not None else None

    def status(ok: bool, fold: bool, transform: str | None = None) -> str:
        if not ok:
            return "different"
        if transform:
            return f"equal_under:{transform}"
        return "folded" if fold else "equal"

    # the main layer: kernel and bias
    if chain.main is not None:
        blobs: list[BlobParity] = []
        w = main_blobs[0]
        if tfa.kernel is None:
            blobs.append(BlobParity(0, "weight", tuple(w.shape), None, "missing",
                                    note="no TF op of the group holds a kernel"))
        else:
            fold_k = any_fold and not (chain.bn is None and chain.scale is None and np.allclose(tfa.u, 1.0))
            st = status(k_ok, fold_k, k_name)
            f = ""
            if fold_k:
                held = f"{kname} kernel" + (f" * {mul_where}" if mul_where else "")
                f = f"{held} = W (TF layout)" + (" * factor; " + formula if formula else "")
            note = "MatMul with transpose_b: the kernel is held as W (N, K)" if transpose_b else ""
            worst = _worst_element(k_exp, kernel_tf) if (st == "different" and k_exp is not None
                                                           and kernel_tf is not None) else None
            blobs.append(BlobParity(0, "weight", tuple(w.shape), tuple(tfa.kernel.shape), st,
                                    k_err, note, kname, f, worst))
        if len(main_blobs) > 1:
            b = main_blobs[1]
            if not tfa.add_ops:
                blobs.append(BlobParity(1, "bias", tuple(b.shape), None, "missing" if not any_fold else "different",
                                        note="no TF op of the group adds a bias", worst=None))
            else:
                fold_b = any_fold
                st = status(t_ok, fold_b)
                f = (f"{add_where} = b * factor + offset; {formula}" if formula
                     else f"{add_where} = b (after the factor {mul_where})")
                blobs.append(BlobParity(1, "bias", tuple(b.shape), tuple(tfa.t.shape), st, t_err,
                                        "" if fold_b else f"held by {add_where}", add_where, f if fold_b else "",
                                        _worst_element(t_exp, tfa.t) if not t_ok else None))
        out[chain.main] = (_worst(blobs), blobs, problems)

    # BatchNorm and Scale: the per-channel factor (in the kernel or a Mul) and the offset (an Add)
    if chain.bn is not None or chain.scale is not None:
        fac_where = mul_where or (f"{kname} (folded into the kernel)" if kname else None)
        fac_shape = tuple(tfa.kernel.shape) if (kname and not tfa.mul_ops) else (c,)
        fac = BlobParity(0, "factor", (c,), fac_shape, "folded" if k_ok else "different", k_err,
                         "", fac_where, formula,
                         None if k_ok or k_exp is None else _worst_element(
                             k_exp, kernel_tf if (chain.main is not None and kernel_tf is not None) else tfa.u))
        off = BlobParity(1, "offset", (c,), (c,) if add_where else None, "folded" if t_ok else "different", t_err,
                         "" if add_where else "no TF op of the group adds an offset", add_where,
                         ("bias = b * factor + offset; " if len(main_blobs) > 1 else "") + formula,
                         None if t_ok else _worst_element(t_exp, tfa.t))
        ok = bool(k_ok and t_ok)
        for layer, own in ((chain.bn, ("batchnorm_scale_factor", "batchnorm_epsilon")), (chain.scale, ("missing_scale",))):
            if layer is None:
                continue
            tr = variant if variant in own else None
            st = status(ok, True, tr)
            note = problems
            if tr == "batchnorm_epsilon":
                note = f"the TF values use eps {eps:.3g}, Caffe's is {chain.eps:g}"
            elif tr == "batchnorm_scale_factor":
                note = "the TF values use mean and var not divided by the scale factor S"
            elif tr == "missing_scale":
                note = "the TF values are the BatchNorm alone: gamma 1, beta 0 (missing_scale)"
            blobs = [BlobParity(fac.index, fac.role, fac.caffe_shape, fac.tf_shape, st if ok else fac.status,
                                fac.max_abs_error, fac.note, fac.tf_name, fac.formula, fac.worst),
                     BlobParity(off.index, off.role, off.caffe_shape, off.tf_shape, st if ok else off.status,
                                off.max_abs_error, off.note, off.tf_name, off.formula, off.worst)]
            out[layer] = (st, blobs, note)
        if variant is not None and chain.main is not None and out[chain.main][0] in GOOD:
            # the kernel is right under the (wrong) BatchNorm formula: the main layer itself is fine
            st, blobs, note = out[chain.main]
            out[chain.main] = (st, blobs, note)
    return out


def _kernel_factor(kind: str, w: np.ndarray, kernel_tf: np.ndarray, transpose_b: bool,
                   chw: tuple[int, int, int] | None, group: int, c: int) -> np.ndarray | None:
    """The per-output-channel factor a TF kernel holds over the Caffe kernel ``w`` (least
    squares per channel: ``kernel_tf ~ W (TF layout) * u``); None when the shapes do not line
    up or the output axis is not the last (a deconv)."""
    if kind not in ("conv", "depthwise_conv", "fc"):
        return None
    k = np.asarray(kernel_tf, np.float64)
    if transpose_b:
        k = k.T
    exp = np.asarray(_expected(kind, w, "weight", chw, group, tuple(k.shape)), np.float64)
    out_last = exp.shape[-1] == c or (kind == "depthwise_conv" and exp.ndim == 4 and exp.shape[-2] * exp.shape[-1] == c)
    if exp.shape != k.shape or not c or not out_last:
        return None
    a, b = exp.reshape(-1, c), k.reshape(-1, c)
    den = np.sum(a * a, axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, np.sum(a * b, axis=0) / den, np.nan)


def _solve_eps(cw: Mapping[str, list[np.ndarray]], ch: _Chain, c: int, u: np.ndarray | None) -> float | None:
    """The eps the TF factor ``u`` (per channel, from a Mul or read back from a folded kernel)
    was computed with (from ``u = gamma / sqrt(var / S + eps)``), when it is one value for
    every channel and not Caffe's; else None."""
    b = cw[ch.bn]
    s = float(np.asarray(b[2]).reshape(-1)[0]) if len(b) > 2 else 1.0
    f = 0.0 if s == 0 else 1.0 / s
    var = np.asarray(b[1], np.float64).reshape(-1) * f
    gamma = np.ones(c)
    if ch.scale is not None:
        gamma = np.asarray(cw[ch.scale][0], np.float64).reshape(-1)
    if u is None or u.size != c:
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        e = (gamma / u) ** 2 - var
    e = e[np.isfinite(e)]
    if not e.size:
        return None
    guess = float(np.median(e))
    if guess <= 0 or abs(guess - ch.eps) <= 1e-3 * max(ch.eps, 1e-12) or np.ptp(e) > 0.05 * abs(guess) + 1e-6:
        return None
    return guess


def _per_layer_arrays(layers: Sequence[str], cw: Mapping[str, list[np.ndarray]], kinds: Mapping[str, str],
                      ops: Sequence[Any]) -> dict[str, list[np.ndarray]] | None:
    """Several recurrent Caffe layers of one chain held by one TF layer (a Keras
    ``Bidirectional``: the forward layer's arrays, then the backward one's): each Caffe
    layer's share of the arrays, in chain order, when the counts and sizes fit; else None."""
    with_params = [c for c in layers if cw.get(c)]
    if len(ops) != 1 or len(with_params) < 2 or any(kinds[c] not in RECURRENT for c in with_params):
        return None
    arrays = list(ops[0].arrays)
    if sum(len(cw[c]) for c in with_params) != len(arrays):
        return None
    out: dict[str, list[np.ndarray]] = {}
    at = 0
    for c in with_params:
        part = arrays[at: at + len(cw[c])]
        at += len(cw[c])
        if sorted(np.asarray(b).size for b in cw[c]) != sorted(np.asarray(a).size for a in part):
            return None
        out[c] = part
    return out


def _check_aligned(
    cw: dict[str, list[np.ndarray]],
    tw: dict[str, list[np.ndarray]],
    probes: dict[str, Any],
    caffe_probes: Any,
    tf_probes: Any,
    *,
    tf_scalars: Mapping[str, Sequence[float]] | None,
    mapping: Any,
    caffe_value: Any,
    tf_value: Any,
    input_shapes: Mapping[str, Sequence[int]] | None,
    pairings: Mapping[str, Any] | None = None,
) -> WeightReport:
    """check_weights with the pairing of :mod:`layerparity.weight_pairing` (the alignment of compare).

    ``pairings`` (``{caffe_layer: WeightPairing}``): already made (``compare`` pairs one
    diverged row from its own alignment); else made here from the probes."""
    from .weight_pairing import KERNEL_KINDS, pair_weights

    if pairings is None:
        for side, ps in (("Caffe", caffe_probes), ("TF", tf_probes)):
            items = list(ps.values()) if isinstance(ps, Mapping) else list(getattr(ps, "probes", ps))
            for i, q in enumerate(items):
                if not all(hasattr(q, a) for a in ("name", "kind", "inputs", "params", "layer")):
                    raise WeightParityError(f"check_weights: {side} probe {i} is a {type(q).__name__}, not a Probe "
                                            "(give a Trace, a list of Probes or a dict name -> Probe)")
        pairings, unmatched = pair_weights(caffe_probes, tf_probes, tw, list(cw), tf_scalars=tf_scalars,
                                           mapping=mapping, caffe_value=caffe_value, tf_value=tf_value)
    else:
        unmatched = []
    metas = {name: _kind_and_meta(name, blobs, probes) for name, blobs in cw.items()}
    by_value = caffe_value is not None and tf_value is not None
    rows: dict[str, WeightRow] = {}
    notes: list[str] = []
    done: set[int] = set()
    for name in cw:
        wp = pairings.get(name)
        if wp is None and metas[name][3] == "Parameter":
            rows[name] = _constant_row(name, "Parameter", None)
            continue
        if wp is None:
            rows[name] = WeightRow(
                name, metas[name][3] or metas[name][0], None, "missing", [],
                "the alignment paired no TF op with it" + (
                    "" if by_value else "; from the graph alone it cannot be paired: pair by value "
                    "(weight_parity(..., by_value=input) / layerparity weights --by-value INPUT)"), "")
            continue
        if id(wp) in done:
            continue
        done.add(id(wp))
        layers = wp.caffe_layers
        kinds = {c: metas[c][0] for c in layers}
        ops = wp.ops
        tf_ops = [o.name for o in ops]
        amb = ""
        if wp.ambiguous:
            amb = (f"paired by structure, but {', '.join(wp.ambiguous)} fit(s) as well (same kind, inputs and "
                   "kernel shape): pair by value to be sure")
        if not ops:
            note = wp.note or (f"paired with TF {wp.tf!r} ({wp.how}), whose group holds no weights")
            for c in layers:
                rows[c] = _constant_row(c, metas[c][3], wp.tf, wp.how) or WeightRow(
                    c, metas[c][3] or kinds[c], wp.tf, "missing", [], note, wp.how, [])
            continue
        main = next((c for c in layers if kinds[c] in KERNEL_KINDS), None)
        bn = next((c for c in layers if kinds[c] == "bn"), None)
        sc = next((c for c in layers if kinds[c] == "scale"), None)
        others = [c for c in layers if c not in (main, bn, sc)]
        chw = caffe_chw = None
        group = 1
        if main is not None:
            _, group, caffe_chw, _ = metas[main]
            if input_shapes and main in input_shapes:
                s = tuple(int(d) for d in input_shapes[main])
                caffe_chw = (s[1], s[2], s[3]) if len(s) == 4 else None
            chw = caffe_chw if wp.fc_flatten != "NCHW" else None
        simple = len(ops) == 1 and not ops[0].scalars and (
            (len(layers) == 1 and (kinds[layers[0]] not in ("bn", "scale") or ops[0].kind in ("bn", "scale"))
             and (main is None or ops[0].kind in KERNEL_KINDS))
            or (set(layers) == {bn, sc} and ops[0].kind == "bn"))
        if others or simple:
            split = _per_layer_arrays(layers, cw, kinds, ops)
            for c in layers:
                k, g, cchw, raw = metas[c]
                if c == sc and bn is not None and simple:
                    continue
                scale_blobs = cw[sc] if (c == bn and sc is not None and simple) else None
                arrays = ops[0].arrays if len(ops) == 1 else [a for o in ops for a in o.arrays]
                if split is not None:
                    arrays = split[c]
                status, results, note = compare_layer(k, cw[c], arrays, chw if c == main else cchw, g,
                                                      scale_blobs, caffe_chw if c == main else None)
                rows[c] = WeightRow(c, raw or k, wp.tf, status, results, amb or note, wp.how, tf_ops)
            if sc is not None and bn is not None and simple:
                brow = rows[bn]
                gb = [b for b in brow.blobs if b.role in ("gamma", "beta")]
                st = _worst(gb) if gb and not any(b.status == "missing" for b in gb) else "missing"
                note = f"compared as gamma/beta of {wp.tf!r}" if st != "missing" else (
                    f"{wp.tf!r} has no gamma/beta: the Scale is missing (missing_scale)")
                rows[sc] = WeightRow(sc, metas[sc][3] or "scale", wp.tf, st, gb, note, wp.how, tf_ops)
            continue
        eps = 1e-5
        if bn is not None:
            p = probes.get(bn)
            eps = float((getattr(p, "params", {}) or {}).get("eps", 1e-5) or 1e-5) if p is not None else 1e-5
        chain = _Chain(main, kinds[main] if main else "", bn, sc, eps)
        res = compare_folded(cw, chain, ops, chw=chw, caffe_chw=caffe_chw, group=group)
        for c in layers:
            status, results, note = res[c]
            rows[c] = WeightRow(c, metas[c][3] or kinds[c], wp.tf, status, results, "; ".join(x for x in (note, amb) if x),
                                wp.how, tf_ops)
    undecided: set[str] = set()  # rows that are no verdict: a structural guess or no pair at all
    for c, r in rows.items():
        if not r.note or "fit(s) as well" not in r.note:
            continue
        if r.status in GOOD:  # the weights themselves confirm the structural choice
            r.note = r.note.replace("pair by value to be sure", "its weights match, which settles it")
        else:
            undecided.add(c)
            notes.append(f"{c}: {r.note} (weight_parity(..., by_value=input) / layerparity weights --by-value INPUT)")
    undecided.update(c for c, r in rows.items() if r.note == CONSTANT_NOTE)
    missing = [c for c, r in rows.items() if r.status == "missing" and not r.tf_layer and r.note != CONSTANT_NOTE]
    if missing and not by_value:
        undecided.update(missing)
        notes.append(f"{len(missing)} Caffe layer(s) with params ({', '.join(missing[:5])}"
                     f"{', ...' if len(missing) > 5 else ''}) could not be paired from the graph alone: "
                     "run both nets once and pair by value (by_value= / --by-value INPUT)")
    return WeightReport([rows[c] for c in cw if c in rows], unmatched, notes, [c for c in cw if c in undecided])


def check_pair(
    caffe_weights: Mapping[str, Sequence[np.ndarray]],
    tf_weights: Mapping[str, Sequence[np.ndarray]],
    caffe_probes: Any,
    pairing: Any,
    *,
    by_value: bool = False,
) -> list[WeightRow]:
    """The weight check of one paired Caffe chain: the rows :func:`check_weights` gives for
    its layers with params (same statuses, same strings), without aligning anything again.

    ``pairing``: the chain's :class:`~layerparity.weight_pairing.WeightPairing`
    (:func:`~layerparity.weight_pairing.pairing_of` one pair of ``compare``'s alignment);
    ``caffe_weights`` needs the chain's layers only (others are ignored), ``tf_weights`` the
    arrays of the pairing's ops (already in ``pairing.ops``); ``caffe_probes``: the Caffe
    probes (values not needed) for each layer's kind, group, eps and an InnerProduct's input
    shape. ``by_value``: the pairing was settled by value (changes a note only).
    """
    layers = [c for c in pairing.caffe_layers if c in caffe_weights]
    if not layers:
        return []
    cw = {c: _arrays(caffe_weights[c], f"Caffe layer {c!r}") for c in layers}
    pairings = {c: pairing for c in layers}
    probes = _probe_index(caffe_probes)
    rep = _check_aligned(cw, {}, probes, caffe_probes, None, tf_scalars=None, mapping=None,
                         caffe_value=True if by_value else None, tf_value=True if by_value else None,
                         input_shapes=None, pairings=pairings)
    return rep.rows

"""Shared machinery of the diagnosis rules: the case under study and small helpers.

A :class:`Case` holds one divergent layer: the Caffe value ``y`` (the reference,
NCHW), the TF value ``t`` converted to Caffe's layout (``None`` when the shapes
cannot be reconciled), the Caffe bottoms ``x``, both sides' parameters and
weights, and ``r0``: how far ``t`` is from ``y`` (max abs difference over the
layer's scale). A rule proposes a hypothesis ``cand`` (what TF would output if
the port had bug B) and :meth:`Case.explains` says whether ``t`` matches it;
:meth:`Case.attempt` does both and records the diagnosis. The rule modules share
only what this module makes public: :class:`Case` and its methods, the confidence
levels, and small helpers (:func:`hw`, :func:`fnum`, :func:`rnd`, :func:`pad_fix`,
:func:`nice_up`, ...).

Strict mode (:func:`strict_mode`): a rule or hypothesis that raises propagates
instead of being counted as skipped (``evidence["rules_skipped"]``). Turn it on
with ``diagnose(..., strict=True)`` or ``LAYERPARITY_DIAGNOSIS_STRICT=1``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..detections import SET_KINDS, in_reference_order, read_table
from ..errors import InputError
from ..kinds import canonical_kind
from ..layout import relayout
from ..result import Diagnosis, LayerResult, Tolerance
from ..trace import Probe

#: A hypothesis is confirmed when it reproduces the TF output to this fraction of
#: the layer's scale (float32 noise of a small layer is ~1e-6) ...
CONFIRM_RTOL = 1e-4
#: ... and explains at least this much more than "TF == Caffe" does.
CONFIRM_GAIN = 0.1

#: Confidence levels: proof by recomputation or by the weights themselves ranks
#: above an exact data relation, which ranks above a fingerprint.
CONF_WEIGHTS = 0.97
CONF_RECOMPUTED = 0.95
CONF_EXACT = 0.9
CONF_FORMULA = 0.85  # a shape explained by the size formula
CONF_FINGERPRINT = 0.6
CONF_UNKNOWN = 0.1

#: Per-channel relations (offset, affine fit, permutation) need this many values per channel.
MIN_PER_CHANNEL = 4


#: Every stable ``Diagnosis.kind`` this package can return (see docs/diagnosis.md).
#: (Not to be confused with :data:`layerparity.kinds.KINDS`, the canonical *layer* kinds.)
DIAGNOSIS_KINDS = (
    "padding_asymmetry", "padding_mismatch", "pool_rounding", "avg_pool_padding_divisor",
    "reshape_not_transpose", "wrong_transpose", "axis_reversed", "flatten_order", "channel_order",
    "kernel_flipped",
    "kernel_hw_swapped", "deconv_in_out_swapped", "deconv_same_padding", "lrn_alpha_scaling",
    "lrn_depth_radius", "lrn_parameters", "batchnorm_epsilon", "batchnorm_scale_factor", "missing_scale",
    "softmax_axis", "concat_axis", "eltwise_coeff", "eltwise_operation", "leaky_slope", "relu_capped", "prelu_shared_axes",
    "constant_scale", "constant_offset", "spatial_shift", "interp_align_corners", "layout_declaration", "shape_mismatch",
    "precision_drift", "spatially_transposed_port", "input_channel_order", "lstm_gate_order",
    "pixel_shuffle_order", "mvn_parameters", "spp_pyramid", "priorbox_parameters", "lstm_sequence_start",
    "detection_output_parameters",
    "unknown",
)

#: Caffe activation layers a chain can end with (``conv1`` + ``relu1`` held against one
#: Keras ``Conv2D(activation='relu')``): recomputed candidates get them applied.
ACTIVATIONS = ("ReLU", "ReLU6", "Sigmoid", "TanH", "ELU", "PReLU", "Softmax")

#: The environment switch of strict mode (any of 1/true/yes/on).
STRICT_ENV = "LAYERPARITY_DIAGNOSIS_STRICT"


def strict_mode(strict: bool | None = None) -> bool:
    """Whether a rule that raises propagates: ``strict`` when given, else ``LAYERPARITY_DIAGNOSIS_STRICT``."""
    if strict is not None:
        return bool(strict)
    return os.environ.get(STRICT_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def nice_up(x: float) -> float:
    """Round up to 1, 2 or 5 times a power of ten."""
    if x <= 0 or not math.isfinite(x):
        return x
    e = math.floor(math.log10(x))
    for m in (1, 2, 5, 10):
        if m * 10**e >= x * (1 - 1e-12):
            return float(f"{m * 10**e:.3g}")
    return x


def pad_fix(p: tuple[int, int]) -> str:
    """The fix text for a conv padded unlike Caffe's symmetric ``pad: [ph, pw]``."""
    return (f"Pad explicitly like Caffe and convolve 'VALID': `ZeroPadding2D(({p[0]}, {p[1]}))` (or "
            f"`tf.pad(x, [[0, 0], [{p[0]}, {p[0]}], [{p[1]}, {p[1]}], [0, 0]])`) then `padding='valid'`. "
            "'SAME' only equals Caffe's pad at stride 1 (odd kernel) or for some input sizes.")


@dataclass
class DiagnosisContext:
    """What the engine knows beyond the one row.

    rows
        The report's rows up to and including this one (Caffe graph order), for
        rules that need the whole picture (``precision_drift``). When the list
        holds the row itself, the rows after it are ignored: a divergence named
        after the fact is judged on the rows up to it, never on the rows its bug
        contaminated.
    caffe_probes
        Caffe probes by name: the chain's members and the first member's bottoms,
        for their kinds, params and shapes (``BatchNorm`` + ``Scale`` held against
        one Keras BatchNormalization; a Flatten's ``flat_shape`` before an
        InnerProduct). Their values are not read: the layer's own inputs are
        ``caffe_inputs``.
    caffe_weights
        Caffe params of other layers by name (the chain's members).
    tolerance
        The tolerance the row was judged with.
    """

    rows: list[LayerResult] = field(default_factory=list)
    caffe_probes: dict[str, Probe] = field(default_factory=dict)
    caffe_weights: dict[str, list[np.ndarray]] = field(default_factory=dict)
    tolerance: Tolerance | None = None


def hw(params: dict[str, Any], key: str, default: int) -> tuple[int, int]:
    """A Caffe ``[h, w]`` field (int, list of 1 or 2, or missing) as a pair of ints.

    Params are data (from an archive): a geometry no layer can have (a stride or kernel
    below 1, a negative pad, a value out of range) falls back to the default."""
    v = params.get(key, default)
    if v is None or (isinstance(v, (list, tuple)) and len(v) == 0):
        v = default
    lowest = 0 if key == "pad" else 1
    try:
        if isinstance(v, (list, tuple)):
            v = [_small_int(a) for a in v]
            out = (v[0], v[0]) if len(v) == 1 else (v[-2], v[-1])
        else:
            out = _small_int(v), _small_int(v)
    except (TypeError, ValueError, OverflowError):
        return default, default
    return out if min(out) >= lowest else (default, default)


_MAX_GEOMETRY = 1 << 16


def _small_int(a: Any) -> int:
    f = float(a)
    if not np.isfinite(f) or abs(f) > _MAX_GEOMETRY:
        raise ValueError(f"geometry value {a!r} out of range")
    return int(f)


def fnum(v: Any, default: float | None = None) -> float | None:
    try:
        if isinstance(v, (list, tuple)):
            v = v[0]
        return float(v)
    except (TypeError, ValueError, IndexError):
        return default


def flag(v: Any, default: bool) -> bool:
    """A Caffe bool field (True/False, "true"/"false", 1/0, or missing) as a bool."""
    if v is None:
        return default
    if isinstance(v, str):
        low = v.strip().lower()
        return default if low not in ("true", "false", "1", "0") else low in ("true", "1")
    return bool(v)


def f64(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def rnd(x: float, n: int = 6) -> float:
    x = float(x)
    if not np.isfinite(x) or x == 0:
        return x
    return float(f"{x:.{n}g}")


class Case:
    """One layer under diagnosis (see the module docstring)."""

    def __init__(
        self,
        row: LayerResult,
        cp: Probe,
        tp: Probe,
        caffe_inputs: Sequence[np.ndarray] | None,
        caffe_weights: Any,
        tf_weights: Sequence[np.ndarray] | None,
        ctx: DiagnosisContext,
        strict: bool = False,
    ) -> None:
        self.row, self.cp, self.tp, self.ctx = row, cp, tp, ctx
        #: strict mode: a hypothesis or rule that raises propagates (see :func:`strict_mode`)
        self.strict = bool(strict)
        self.cparams = dict(cp.params or {})
        self.tparams = dict(tp.params or {})
        self.ckind_raw = cp.kind or row.caffe_kind
        self.tkind_raw = tp.kind or row.tf_kind
        self.ckind = canonical_kind(self.ckind_raw, self.cparams) if self.ckind_raw else ""
        self.tkind = canonical_kind(self.tkind_raw, self.tparams) if self.tkind_raw else ""
        self.y = f64(cp.value)
        self.t_raw = f64(tp.value)
        self.x = [f64(a) for a in caffe_inputs] if caffe_inputs is not None else []
        self.chain = list(row.caffe_chain) or [cp.layer]
        # weights: a list for the chain's first layer, or a dict layer -> list
        self.cw_chain: dict[str, list[np.ndarray]] = {
            str(k): [f64(a) for a in v] for k, v in (ctx.caffe_weights or {}).items()
        }
        if isinstance(caffe_weights, dict):
            for k, v in caffe_weights.items():
                self.cw_chain[str(k)] = [f64(a) for a in v]
        elif caffe_weights is not None:
            self.cw_chain.setdefault(self.chain[0], [f64(a) for a in caffe_weights])
        # the params of the chain's primary (first) layer: conv in conv+relu
        self.cw = self.cw_chain.get(self.chain[0]) or (
            (self.cw_chain.get(cp.layer) or self.cw_chain.get(cp.name) or []) if len(self.chain) == 1 else [])
        self.tw = [np.asarray(a) for a in tf_weights] if tf_weights is not None else []
        self.chain_kinds = [self._kind_of(n) for n in self.chain]
        # the chain's primary layer is its first (conv in conv+relu, BatchNorm in BatchNorm+Scale);
        # the rules study it, and candidates get the chain's trailing activations applied
        self.primary = self.chain[0]
        if self.primary not in (cp.layer, cp.name):
            pk = self.chain_kinds[0]
            if pk:
                self.ckind_raw = pk
                self.cparams = self.cparams_of(self.primary)
                self.ckind = canonical_kind(pk, self.cparams)
        # (a PReLU only with its slopes: without them Caffe's chain cannot be recomputed)
        self.tail = [(n, k) for n, k in zip(self.chain[1:], self.chain_kinds[1:], strict=True)
                     if k in ACTIVATIONS and (k != "PReLU" or self.cw_chain.get(n))]
        self.t = self._tf_in_caffe_layout()
        scale = float(np.max(np.abs(self.y[np.isfinite(self.y)]), initial=0.0))
        if self.t is not None:
            tf_ = self.t[np.isfinite(self.t)]
            scale = max(scale, float(np.max(np.abs(tf_), initial=0.0)))
        self.scale = scale if scale > 0 else 1.0
        self.r0 = self.resid(self.y) if self.t is not None else float("inf")
        self.ruled_out: list[str] = []
        self.evidence_extra: dict[str, Any] = {}
        #: set once a hypothesis is proven (weights or recomputation): costly ones are skipped after
        self.proven = False
        #: Caffe's formula recomputed in float64 from the Caffe inputs (with the chain's activations)
        self.reference: np.ndarray | None = None
        #: the same before the chain's trailing activations (the primary layer's own output)
        self.pre_activation: np.ndarray | None = None

    # -- setup ---------------------------------------------------------------------
    def _kind_of(self, name: str) -> str:
        if name == self.cp.layer or name == self.cp.name:
            return self.cp.kind or self.row.caffe_kind
        p = self.ctx.caffe_probes.get(name)
        return p.kind if p is not None else ""

    def tf_relayout(self) -> np.ndarray | None:
        """TF's raw value in the Caffe probe's layout, whatever its shape (None when the
        layouts cannot be reconciled); :attr:`t` is this when the shapes agree. ssd_keras's table
        of detections (N x top_k x 6) is read as Caffe's rows, as the engine compared it."""
        if self.ckind_raw in SET_KINDS:
            table, _ = read_table(self.y, self.t_raw)
            if table is not None:
                return f64(table)
        try:
            return f64(relayout(self.t_raw, self.tp.layout, self.tp.flat_shape, self.cp.layout, self.cp.flat_shape))
        except (ValueError, InputError):
            return None

    def _tf_in_caffe_layout(self) -> np.ndarray | None:
        t = self.tf_relayout()
        if t is None or t.shape != self.y.shape:
            return None
        # a set of detections (DetectionOutput): TF's rows in Caffe's order, as the engine compared them
        return in_reference_order(self.y, t) if self.ckind_raw in SET_KINDS else t

    def kind_of(self, name: str) -> str:
        return self._kind_of(name)

    def chain_has(self, *raw_kinds: str) -> str | None:
        """The first chain member whose Caffe type is one of ``raw_kinds``."""
        for n, k in zip(self.chain, self.chain_kinds, strict=True):
            if k in raw_kinds:
                return n
        return None

    def cparams_of(self, name: str) -> dict[str, Any]:
        if name in (self.cp.layer, self.cp.name):
            return dict(self.cp.params or {})
        p = self.ctx.caffe_probes.get(name)
        return dict(p.params or {}) if p is not None else {}

    def at_rows(self, rows: Sequence[int]) -> Case:
        """This case seen at output rows ``rows`` only (axis 2 of a 4-D value), for
        recomputing a layer too large to recompute whole. The layer's scale stays the
        whole layer's; ``r0`` is measured on those rows, so a hypothesis must explain
        them as well as :meth:`explains` demands of a whole layer. Rulings-out and
        extra evidence are shared with this case; ``proven`` is not (copy it back)."""
        import copy

        sub = copy.copy(self)
        idx = np.asarray(rows, dtype=int)
        sub.y = self.y[:, :, idx]
        sub.t = self.t[:, :, idx] if self.t is not None else None
        sub.r0 = sub.resid(sub.y) if sub.t is not None else float("inf")
        sub.reference = None
        return sub

    # -- measuring -----------------------------------------------------------------
    def resid(self, cand: np.ndarray | None, target: np.ndarray | None = None) -> float:
        """max |cand - target| / scale (target defaults to the TF value)."""
        target = self.t if target is None else target
        if cand is None or target is None or cand.shape != target.shape:
            return float("inf")
        d = np.abs(cand - target)
        if not np.all(np.isfinite(d)):
            both = np.isfinite(cand) == np.isfinite(target)
            if not np.all(both):
                return float("inf")
            d = d[np.isfinite(d)]
        return float(np.max(d, initial=0.0)) / self.scale

    def set_reference(self, base: np.ndarray) -> None:
        ref = self.post(base)
        ok = ref.shape == self.y.shape and self.resid(ref, target=self.y) <= 1e-4
        self.evidence_extra["reference_reproduces_caffe"] = bool(ok)
        if ok:
            self.reference = ref
            self.pre_activation = base

    def post(self, z: np.ndarray) -> np.ndarray:
        """Apply the chain's trailing activations (Caffe conv+relu held against one fused TF op)."""
        for name, kind in self.tail:
            p = self.cparams_of(name)
            if kind == "ReLU":
                ns = fnum(p.get("negative_slope"), 0.0) or 0.0
                z = np.where(z > 0, z, ns * z)
            elif kind == "ReLU6":
                z = np.clip(z, 0, 6)
            elif kind == "Sigmoid":
                z = 1 / (1 + np.exp(-z))
            elif kind == "TanH":
                z = np.tanh(z)
            elif kind == "ELU":
                a = fnum(p.get("alpha"), 1.0)
                z = np.where(z > 0, z, a * np.expm1(np.minimum(z, 0)))
            elif kind == "PReLU":
                a = self.cw_chain[name][0].reshape(-1)
                a = a.reshape((1, -1) + (1,) * (z.ndim - 2)) if a.size > 1 else a.reshape(())
                z = np.where(z > 0, z, a * z)
            elif kind == "Softmax":
                ax = int(fnum(p.get("axis"), 1) or 0) % max(z.ndim, 1)
                e = np.exp(z - np.max(z, axis=ax, keepdims=True))
                z = e / np.sum(e, axis=ax, keepdims=True)
        return z

    def explains(self, cand: np.ndarray | None) -> bool:
        r = self.resid(cand)
        return r <= CONFIRM_RTOL and r <= CONFIRM_GAIN * self.r0

    def attempt(self, out: list[Diagnosis], kind: str, summary: str, fix: str, fn: Callable[[], np.ndarray],
                conf: float = CONF_RECOMPUTED, layer: str | None = None, post: bool = True, **ev: Any) -> bool:
        """Recompute one hypothesis (``fn()``: what TF would output with the bug) and, when it
        :meth:`explains` the TF value, append its diagnosis to ``out`` and mark the case proven.

        Skipped once something is already proven (recomputing is the costly part). ``post``
        applies the chain's trailing activations to the candidate (off when ``fn`` already
        computes the whole chain). A hypothesis that cannot be computed (``ValueError`` /
        ``IndexError``) does not apply, except in strict mode, where it propagates."""
        if self.proven:
            return False
        try:
            cand = fn()
            if post:
                cand = self.post(cand)
        except (ValueError, IndexError):
            if self.strict:
                raise
            return False
        if self.explains(cand):
            out.append(self.diag(kind, summary, fix, conf, layer=layer, confirmed_by="recomputation",
                                 residual=rnd(self.resid(cand)), **ev))
            self.proven = True
            return True
        return False

    def input_shape(self) -> tuple[int, ...] | None:
        """The shape of the layer's first bottom: its value when given, else its probe's shape."""
        if self.x0 is not None:
            return tuple(self.x0.shape)
        for name in self.cp.inputs:
            p = self.ctx.caffe_probes.get(name)
            if p is not None and p.shape:
                return tuple(p.shape)
        return None

    def conv_geom(self) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int], int]:
        """(kernel, stride, pad, dilation, group) of the primary conv layer, kernel from its weights when given."""
        p = self.cparams
        w = self.cw[0] if self.cw else None
        kdef = int(w.shape[2]) if w is not None and w.ndim == 4 else 1
        k = hw(p, "kernel_size", kdef)
        if w is not None and w.ndim == 4:
            k = (int(w.shape[2]), int(w.shape[3]))
        return k, hw(p, "stride", 1), hw(p, "pad", 0), hw(p, "dilation", 1), int(p.get("group", 1) or 1)

    def output_layer(self, kind: str = "", factor: float | None = None) -> str:
        """The chain member a relation between the two *outputs* blames: the layer itself
        when the row is one layer; in a chain, the primary layer when the trailing
        activations cannot have caused the relation (they commute with a permutation or a
        shift of positions, ReLU/PReLU also with a positive factor), else ""."""
        if len(self.chain) == 1:
            return self.chain[0]
        if len(self.tail) != len(self.chain) - 1:
            return ""
        tail_kinds = {k for _, k in self.tail}
        if kind in ("channel_order", "spatial_shift"):
            if kind == "channel_order" and "PReLU" in tail_kinds:
                return ""  # per-channel slopes do not commute with a channel permutation
            return self.primary
        if kind == "constant_scale" and factor is not None and factor > 0 and tail_kinds <= {"ReLU", "PReLU"}:
            return self.primary
        return ""

    @property
    def x0(self) -> np.ndarray | None:
        return self.x[0] if self.x else None

    def tparam(self, *keys: str, default: Any = None) -> Any:
        for k in keys:
            if k in self.tparams and self.tparams[k] is not None:
                return self.tparams[k]
        return default

    def tf_padding(self) -> str:
        p = self.tparam("padding", default="")
        return p.upper() if isinstance(p, str) else "EXPLICIT"

    def diag(self, kind: str, summary: str, fix: str, confidence: float, layer: str | None = None,
             **evidence: Any) -> Diagnosis:
        """A diagnosis of this case. ``layer`` is the chain member it blames (``Diagnosis.layer``);
        by default the primary layer, the one the layer rules study (the conv of conv+relu)."""
        ev: dict[str, Any] = {}
        if np.isfinite(self.r0):
            ev["max_abs_error_now"] = rnd(self.r0 * self.scale)
        ev.update({k: v for k, v in evidence.items()})
        return Diagnosis(kind=kind, summary=summary, fix=fix, confidence=float(confidence), evidence=ev,
                         layer=self.primary if layer is None else layer)


def channel_affine_fit(y: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray, float] | None:
    """Least-squares ``t_c = a_c * y_c + b_c`` per channel (axis 1): slopes, offsets, max residual."""
    if y.ndim < 2 or y.shape != t.shape or not (np.all(np.isfinite(y)) and np.all(np.isfinite(t))):
        return None
    if y.size < MIN_PER_CHANNEL * y.shape[1]:
        return None  # a fit through one or two points per channel proves nothing
    c = y.shape[1]
    yc = np.moveaxis(y, 1, 0).reshape(c, -1)
    tc = np.moveaxis(t, 1, 0).reshape(c, -1)
    my, mt = yc.mean(1, keepdims=True), tc.mean(1, keepdims=True)
    dy, dt = yc - my, tc - mt
    vy = np.sum(dy * dy, 1)
    a = np.where(vy > 0, np.sum(dy * dt, 1) / np.where(vy > 0, vy, 1), 1.0)
    b = (mt - a[:, None] * my)[:, 0]
    res = float(np.max(np.abs(a[:, None] * yc + b[:, None] - tc), initial=0.0))
    return a, b, res


def error_stats(y: np.ndarray, t: np.ndarray) -> dict[str, Any]:
    """The numbers an ``unknown`` diagnosis reports."""
    fin = np.isfinite(y) & np.isfinite(t)
    nonfinite = {"nonfinite_caffe": int(np.sum(~np.isfinite(y))), "nonfinite_tf": int(np.sum(~np.isfinite(t)))}
    if not fin.all():
        y, t = np.where(fin, y, 0.0), np.where(fin, t, 0.0)
    d = t - y
    ry = float(np.sqrt(np.mean(y * y))) or 1.0
    yn, tn = y.ravel(), t.ravel()
    den = float(np.linalg.norm(yn) * np.linalg.norm(tn))
    out: dict[str, Any] = {
        "max_abs_error": rnd(np.max(np.abs(d), initial=0.0)),
        "rel_rms_error": rnd(np.sqrt(np.mean(d * d)) / ry),
        "cosine": rnd(float(yn @ tn) / den) if den > 0 else None,
        "sorted_values_max_diff": rnd(np.max(np.abs(np.sort(yn) - np.sort(tn)), initial=0.0)),
        "mismatched_fraction": rnd(np.mean(np.abs(d) > 1e-4 * (np.max(np.abs(y), initial=0.0) or 1.0))),
    }
    if y.ndim == 4 and y.shape[2] > 2 and y.shape[3] > 2:
        ad = np.abs(d)
        inner = ad[:, :, 1:-1, 1:-1]
        border = ad.copy()
        border[:, :, 1:-1, 1:-1] = 0
        out["interior_max_abs_error"] = rnd(inner.max(initial=0.0))
        out["border_max_abs_error"] = rnd(border.max(initial=0.0))
    if nonfinite["nonfinite_caffe"] or nonfinite["nonfinite_tf"]:
        out.update(nonfinite)
    fit = channel_affine_fit(y, t)
    scale = float(np.max(np.abs(y), initial=0.0)) or 1.0
    if fit is not None and fit[2] <= 1e-4 * max(scale, float(np.max(np.abs(t), initial=0.0))):
        a, b, _ = fit
        out["per_channel_affine"] = {"slope_min": rnd(a.min()), "slope_max": rnd(a.max()),
                                     "offset_min": rnd(b.min()), "offset_max": rnd(b.max())}
    return out

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
from .layout import (
    conv_weight_caffe_to_tf,
    deconv_weight_caffe_to_tf,
    depthwise_weight,
    inner_product_weight_caffe_to_tf,
)
from .names import fold, normalize_name, tf_name_keys

#: Elementwise criterion for "equal": weights are copied, so only float rounding of
#: derived values (mean / S) is allowed.
WEIGHT_RTOL = 1e-5
WEIGHT_ATOL = 1e-6  # times max |expected|

STATUS_ORDER = {"equal": 0, "equal_under": 1, "different": 2, "missing": 3}

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
        }


@dataclass
class WeightRow:
    """One Caffe layer's params against one TF layer's weights."""

    caffe_layer: str
    caffe_kind: str
    tf_layer: str | None
    status: str
    blobs: list[BlobParity] = field(default_factory=list)
    note: str = ""

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
            "blobs": [b.to_dict() for b in self.blobs],
        }

    @property
    def fix(self) -> str | None:
        return TRANSFORM_FIXES.get(self.transform or "")


@dataclass
class WeightReport:
    """Truthy when every Caffe layer with params has TF weights equal under the expected transform."""

    rows: list[WeightRow]
    unmatched_tf: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return all(r.status == "equal" for r in self.rows)

    @property
    def passed(self) -> bool:
        return bool(self)

    @property
    def problems(self) -> list[WeightRow]:
        return [r for r in self.rows if r.status != "equal"]

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
            "layers": [r.to_dict() for r in self.rows],
            "unmatched_tf": list(self.unmatched_tf),
        }

    def to_text(self, max_rows: int = 50) -> str:
        n_ok = sum(r.status == "equal" for r in self.rows)
        head = "Weights match." if self else "Weights differ!"
        lines = [f"{head} {n_ok} / {len(self.rows)} Caffe layers with params equal under the expected layout."]
        problems = self.problems
        for r in problems[:max_rows]:
            tf = r.tf_layer or "-"
            lines.append(f"  {r.caffe_layer} ({r.caffe_kind}) -> {tf}: {r.status}" + (f"  [{r.note}]" if r.note else ""))
            if r.fix:
                lines.append(f"    fix: {r.fix}")
            for b in r.blobs:
                if b.status != "equal":
                    err = f", max abs error {b.max_abs_error:.3g} under the expected layout" if b.max_abs_error is not None else ""
                    lines.append(
                        f"    blob {b.index} ({b.role}) caffe {b.caffe_shape} tf {b.tf_shape}: {b.status}{err}"
                        + (f"; {b.note}" if b.note else "")
                    )
        if len(problems) > max_rows:
            lines.append(f"  ... {len(problems) - max_rows} more layers not shown (output capped)")
        if self.unmatched_tf:
            shown = ", ".join(self.unmatched_tf[:20])
            more = f" and {len(self.unmatched_tf) - 20} more" if len(self.unmatched_tf) > 20 else ""
            lines.append(f"  TF layers with weights and no Caffe layer: {shown}{more}")
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
              tf_shape: tuple[int, ...]) -> list[tuple[str, np.ndarray]]:
    """The classic wrong transforms of a Caffe blob, as TF would hold them."""
    out: list[tuple[str, np.ndarray]] = []
    if role != "weight":
        return out
    if kind in ("conv", "depthwise_conv") and w.ndim == 4:
        e = _expected(kind, w, role, chw, group, tf_shape)
        out.append(("kernel_flipped", e[::-1, ::-1]))
        if e.shape[0] == e.shape[1]:
            out.append(("kernel_hw_swapped", e.transpose(1, 0, 2, 3)))
        if e.shape[2] > 1:
            out.append(("channel_order", e[:, :, ::-1, :]))
        if w.size == int(np.prod(tf_shape)):
            out.append(("reshape_not_transpose", w.reshape(tf_shape)))
    elif kind == "deconv" and w.ndim == 4:
        e = deconv_weight_caffe_to_tf(w)
        out.append(("deconv_in_out_swapped", w.transpose(2, 3, 0, 1)))
        out.append(("kernel_flipped", e[::-1, ::-1]))
        if e.shape[0] == e.shape[1]:
            out.append(("kernel_hw_swapped", e.transpose(1, 0, 2, 3)))
        if w.size == int(np.prod(tf_shape)):
            out.append(("reshape_not_transpose", w.reshape(tf_shape)))
    elif kind == "fc" and w.ndim == 2:
        if chw is not None and chw[1] * chw[2] > 1:
            out.append(("flatten_order", w.T))
        if w.size == int(np.prod(tf_shape)):
            out.append(("reshape_not_transpose", w.reshape(tf_shape)))
    return out


def _expected(kind: str, w: np.ndarray, role: str, chw: tuple[int, int, int] | None, group: int,
              tf_shape: tuple[int, ...] | None) -> np.ndarray:
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
) -> tuple[str, list[BlobParity], str]:
    """Compare one Caffe layer's blobs (canonical ``kind``) with one TF layer's arrays.

    Returns (status, per-blob results, note). ``scale_blobs`` are the params of
    the Scale layer fused into the same TF BatchNormalization.
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
        ok, err = _squeezed_equal(exp, a)
        if ok:
            results.append(BlobParity(i, role, tuple(b.shape), tuple(a.shape), "equal", err))
            continue
        status = "different"
        for name, v in _variants(kind, role, b, chw, group, tuple(a.shape)):
            vok, _ = _close(v, a)
            if vok:
                status = f"equal_under:{name}"
                break
        results.append(BlobParity(i, role, tuple(b.shape), tuple(a.shape), status, err))
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
                                      note="from the Scale layer fused into this BatchNormalization"))
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
    return WeightReport(rows, unmatched)


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
) -> WeightReport:
    """Load both models through the backends and check their weights.

    ``tf_model`` is anything :func:`layerparity.backends.tensorflow.load_tf` accepts
    (a Keras model, a ``.keras``/``.h5`` path, a SavedModel directory, ...) or an
    open TF backend. Layer kinds and InnerProduct input shapes come from one Caffe
    run on zeros (in the Caffe worker).
    """
    from .backends.base import Backend
    from .backends.caffe import CaffeBackend  # lazy: needs pycaffe (in the worker)

    with CaffeBackend(caffe_prototxt, caffe_weights_path) as cb:
        cw = cb.weights()
        probes = _caffe_probes_by_shape_inference(cb)
    if isinstance(tf_model, Backend):
        tw = tf_model.weights()
    else:
        from .backends.tensorflow import load_tf  # lazy: needs TensorFlow

        with load_tf(tf_model) as tb:
            tw = tb.weights()
    return check_weights(cw, tw, probes, mapping)


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
            "deconv_in_out_swapped", "channel_order", "batchnorm_scale_factor", "prelu_shared_axes")

"""LRN, BatchNorm (+Scale): per-channel affine errors and magnitude-dependent ratios
(decision list steps 6 and 7)."""

from __future__ import annotations

import numpy as np

from ..result import Diagnosis
from ..weights import TRANSFORM_FIXES, compare_layer
from . import reference as ref
from ._core import CONF_FINGERPRINT, CONF_WEIGHTS, Case, channel_affine_fit, f64, flag, fnum, rnd

LRN_FIX = ("TF's LRN divides nothing by the window size: use `tf.nn.local_response_normalization(x, "
           "depth_radius=n // 2, bias=k, alpha=alpha / n, beta=beta)` for Caffe's (local_size=n, alpha, beta, k).")


def lrn_rules(case: Case) -> list[Diagnosis]:
    out: list[Diagnosis] = []
    p = case.cparams
    n = int(fnum(p.get("local_size"), 5))
    alpha, beta, k = fnum(p.get("alpha"), 1.0), fnum(p.get("beta"), 0.75), fnum(p.get("k"), 1.0)
    region = str(p.get("norm_region", "ACROSS_CHANNELS")).upper()
    x, t = case.x0, case.t
    if t is None or "WITHIN" in region or region == "1":
        return out
    lo = (n - 1) // 2
    hi = n - 1 - lo
    ta = fnum(case.tparam("alpha"), None)
    if x is None:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = case.y / t
        ratio = ratio[np.isfinite(ratio) & (np.abs(case.y) > 1e-3 * case.scale)]
        if ta is not None and n > 1 and abs(ta - alpha) <= 1e-6 * abs(alpha) and ratio.size:
            out.append(case.diag("lrn_alpha_scaling",
                                 f"TF's LRN alpha is Caffe's alpha {alpha:g}, not alpha/n = {alpha / n:g}; the "
                                 "Caffe/TF ratio is not constant, it grows with local energy.", LRN_FIX,
                                 CONF_FINGERPRINT + 0.1, caffe_alpha=alpha, tf_alpha=ta, local_size=n,
                                 ratio_min=rnd(ratio.min()), ratio_max=rnd(ratio.max())))
        return out
    base = ref.lrn_across(x, lo, hi, alpha / n, beta, k)
    case.set_reference(base)
    with np.errstate(divide="ignore", invalid="ignore"):
        rr = base / ref.lrn_across(x, lo, hi, alpha, beta, k)  # Caffe / TF: grows with local energy
    rr = rr[np.isfinite(rr)]
    case.attempt(out, "lrn_alpha_scaling",
         f"TF's LRN uses alpha = {alpha:g} where Caffe's formula means alpha/n = {alpha / n:g} (n = {n}): "
         "recomputing LRN with the undivided alpha reproduces the TF output.", LRN_FIX,
         lambda: ref.lrn_across(x, lo, hi, alpha, beta, k), caffe_alpha=alpha, expected_tf_alpha=rnd(alpha / n),
         tf_alpha=ta, local_size=n, ratio_min=rnd(rr.min()) if rr.size else None,
         ratio_max=rnd(rr.max()) if rr.size else None)
    if not out:
        case.attempt(out, "lrn_depth_radius",
             f"TF's LRN uses depth_radius = {n} (the window size) where Caffe's local_size {n} means "
             f"depth_radius = {n // 2}: recomputing with that window reproduces the TF output.", LRN_FIX,
             lambda: ref.lrn_across(x, n, n, alpha / n, beta, k), local_size=n)
    if not out and ta is not None:
        r = int(fnum(case.tparam("depth_radius"), lo))
        tb, tk = fnum(case.tparam("beta"), beta), fnum(case.tparam("bias"), k)
        case.attempt(out, "lrn_parameters",
             f"TF's LRN parameters (depth_radius={r}, alpha={ta:g}, beta={tb:g}, bias={tk:g}) reproduce the TF "
             f"output but differ from Caffe's (local_size={n}, alpha={alpha:g}, beta={beta:g}, k={k:g}).",
             LRN_FIX, lambda: ref.lrn_across(x, r, r, ta, tb, tk))
    return out


# -- BatchNorm + Scale ---------------------------------------------------------------

BN_EPS_FIX = "Set `BatchNormalization(epsilon={eps:g})` (Caffe's batch_norm_param.eps; Keras defaults to 1e-3)."
BN_S_FIX = TRANSFORM_FIXES["batchnorm_scale_factor"]
SCALE_FIX = ("Port the Scale layer after the BatchNorm: `BatchNormalization(scale=True, center=True)` with "
             "gamma/beta from the Scale blobs, or a separate per-channel multiply-add.")


def _bn_parts(case: Case):
    bn = case.chain_has("BatchNorm") or (case.cp.layer if case.ckind == "bn" else None)
    sc = case.chain_has("Scale") or (case.cp.layer if case.ckind == "scale" and bn is None else None)
    bn_w = case.cw_chain.get(bn) if bn else None
    sc_w = case.cw_chain.get(sc) if sc else None
    eps = fnum(case.cparams_of(bn).get("eps"), 1e-5) if bn else 1e-5
    return bn, sc, bn_w, sc_w, eps


def _input_of(case: Case, layer: str | None) -> np.ndarray | None:
    """The Caffe input of chain member ``layer``: the chain's input for its first member, else
    the value of the member before it (conv1's output for bn_conv1 in a conv+BN+Scale+ReLU chain
    that TFLite fuses into one op; the in-place blob's value before BatchNorm overwrote it)."""
    i = case.chain.index(layer) if layer in case.chain else 0
    if i == 0:
        return case.x0
    p = case.ctx.caffe_probes.get(case.chain[i - 1])
    return f64(p.value) if p is not None and p.value is not None else None


def bn_rules(case: Case) -> list[Diagnosis]:
    out: list[Diagnosis] = []
    bn, sc, bn_w, sc_w, eps = _bn_parts(case)
    t, x = case.t, _input_of(case, bn or sc)
    # the TF weights are the BatchNorm's only when it leads the chain (a conv+BN chain held
    # against one fused op has the conv's kernel and bias, which say nothing of gamma/beta)
    tf_bn_weights = case.tw if (bn or sc) == case.chain[0] else []
    teps = fnum(case.tparam("epsilon", "variance_epsilon"), None)
    if bn is None and sc is not None and x is not None and t is not None:
        # a lone Scale layer held against a TF layer that skipped it
        case.attempt(out, "missing_scale", "The TF output equals the Scale layer's input: the Scale (gamma, beta) "
             "was not ported.", SCALE_FIX, lambda: x, layer=sc)
        return out
    if bn is None or t is None:
        return out
    # weight evidence first: it is direct
    if bn_w is not None and tf_bn_weights:
        try:
            status, blobs, _ = compare_layer("bn", bn_w, tf_bn_weights, scale_blobs=sc_w)
        except Exception:  # noqa: BLE001 - odd TF arrays: no weight evidence
            if case.strict:
                raise
            status, blobs = "", []
        if status == "equal_under:batchnorm_scale_factor":
            out.append(case.diag("batchnorm_scale_factor",
                                 "The TF moving mean/variance are Caffe's raw BatchNorm blobs, not divided by the "
                                 "scale factor (third blob).", BN_S_FIX, CONF_WEIGHTS, layer=bn, confirmed_by="weights",
                                 scale_factor=rnd(float(bn_w[2].reshape(-1)[0])) if len(bn_w) > 2 else None))
        elif sc is not None and any(b.role == "gamma" and b.status == "missing" for b in blobs):
            out.append(case.diag("missing_scale", "The TF BatchNormalization has no gamma/beta: the Caffe Scale "
                                 "layer after the BatchNorm was not ported.", SCALE_FIX, CONF_WEIGHTS - 0.02,
                                 layer=sc, confirmed_by="weights"))
    if x is None or bn_w is None or len(bn_w) < 2:
        return out + _affine_fingerprints(case, eps, teps, bn, sc)
    mean, var, s = ref.caffe_bn_stats(bn_w)
    gamma = sc_w[0] if sc_w else None
    beta = sc_w[1] if sc_w and len(sc_w) > 1 else None

    def chain(m, v, e, scale=True):
        z = ref.batchnorm(x, m, v, e)
        if scale and gamma is not None:
            z = ref.channel_affine(z, gamma, beta)
        return z

    case.set_reference(chain(mean, var, eps))
    eps_cands = [e for e in ([teps] if teps else []) + [1e-3, 1e-5, 1e-4, 2e-5, 1e-6, 0.0] if e is not None and e != eps]
    eps_cands = list(dict.fromkeys(eps_cands))
    for e in eps_cands:
        if case.attempt(out, "batchnorm_epsilon",
                f"TF's BatchNormalization uses epsilon {e:g}, Caffe's BatchNorm {eps:g}: a per-channel constant "
                f"ratio sqrt((var + {eps:g}) / (var + {e:g})), largest on small-variance channels. Recomputing "
                "with that epsilon reproduces the TF output.",
                BN_EPS_FIX.format(eps=eps), lambda e=e: chain(mean, var, e), layer=bn, caffe_eps=eps, tf_eps=e,
                ratio_per_channel_min=rnd(float(np.min(np.sqrt((var + e) / (var + eps)))), 6),
                ratio_per_channel_max=rnd(float(np.max(np.sqrt((var + e) / (var + eps)))), 6)):
            break
    if s not in (0.0, 1.0):
        for e in [eps] + eps_cands:
            if case.attempt(out, "batchnorm_scale_factor",
                    f"TF normalizes with Caffe's raw BatchNorm blobs (mean*S, var*S with S = {s:g}), not divided by "
                    "the scale factor: recomputing that reproduces the TF output.", BN_S_FIX,
                    lambda e=e: chain(mean * s, var * s, e), layer=bn, scale_factor=rnd(s), tf_eps=e):
                break
    if gamma is not None:
        for e in [eps] + eps_cands:
            if case.attempt(out, "missing_scale",
                    "The TF output is the BatchNorm output without the following Scale layer's gamma/beta: "
                    "recomputing BatchNorm alone reproduces it.", SCALE_FIX,
                    lambda e=e: chain(mean, var, e, scale=False), layer=sc):
                break
    if not out:
        out += _affine_fingerprints(case, eps, teps, bn, sc)
    return out


def _affine_fingerprints(case: Case, eps: float, teps: float | None, bn: str, sc: str | None) -> list[Diagnosis]:
    """Per-channel fit t_c = a_c * y_c + b_c without inputs/weights (a guess)."""
    y, t = case.y, case.t
    if t is None:
        return []
    fit = channel_affine_fit(y, t)
    if fit is None:
        return []
    a, b, res = fit
    if res > 1e-4 * case.scale:
        return []
    ev = dict(slope_min=rnd(a.min()), slope_max=rnd(a.max()), offset_min=rnd(b.min()), offset_max=rnd(b.max()),
              affine_fit_residual=rnd(res), caffe_eps=eps, tf_eps=teps)
    if teps is not None and abs(teps - eps) > 1e-12:
        # slope a_c = sqrt((v_c + eps) / (v_c + teps)): solve for the variance each slope implies
        a2 = a * a
        with np.errstate(divide="ignore", invalid="ignore"):
            v_impl = (eps - a2 * teps) / (a2 - 1)
        side_ok = np.all(a < 1) if teps > eps else np.all(a > 1)
        if side_ok and np.all(np.isfinite(v_impl)) and np.all(v_impl > 0):
            return [case.diag("batchnorm_epsilon", "Per-channel constant ratio "
                              f"[{a.min():.5f} .. {a.max():.5f}] and TF epsilon {teps:g} vs Caffe {eps:g}; every "
                              "channel's ratio is sqrt((var + eps_caffe) / (var + eps_tf)) for a positive variance "
                              "(not confirmed: inputs/weights not given).", BN_EPS_FIX.format(eps=eps),
                              CONF_FINGERPRINT + 0.15, layer=bn, implied_var=[rnd(v, 4) for v in v_impl[:32]], **ev)]
    if np.all(np.abs(a - 1) < 0.05):
        return []
    spread = (a.max() - a.min()) / (abs(a).mean() or 1)
    if spread < 0.05:
        return [case.diag("batchnorm_scale_factor", "Per-channel affine error with nearly the same slope "
                          f"{a.mean():.4g} on every channel (~1/sqrt(S)): mean/var not divided by the scale factor "
                          "(not confirmed).", BN_S_FIX, CONF_FINGERPRINT, layer=bn, **ev)]
    if sc is not None:
        return [case.diag("missing_scale", "Per-channel affine error with slopes that vary per channel "
                          "(1/gamma): the Scale after the BatchNorm looks missing (not confirmed).", SCALE_FIX,
                          CONF_FINGERPRINT, layer=sc, **ev)]
    return []


def mvn_rules(case: Case) -> list[Diagnosis]:
    """MVN: recompute Caffe's ``(x - mean) / (sqrt(var) + eps)`` with one parameter changed
    (across_channels, normalize_variance, eps inside the square root)."""
    out: list[Diagnosis] = []
    x, t = case.x0, case.t
    if t is None or x is None or x.ndim < 3 or x.shape != case.y.shape:
        return out
    p = case.cparams
    across = flag(p.get("across_channels"), False)
    norm_var = flag(p.get("normalize_variance"), True)
    eps = fnum(p.get("eps"), 1e-9)
    eps = 1e-9 if eps is None else eps
    caffe = {"across_channels": across, "normalize_variance": norm_var, "eps_inside_sqrt": False}
    case.set_reference(ref.mvn(x, across, norm_var, eps))
    if case.reference is None:
        return out
    axes = {True: "C, H, W (across channels)", False: "H, W per channel"}
    hyps = [
        ("across_channels", not across,
         f"TF normalizes over {axes[not across]}, Caffe's MVN over {axes[across]} (across_channels: "
         f"{str(across).lower()})."),
        ("normalize_variance", not norm_var,
         "TF only subtracts the mean; Caffe's MVN also divides by the standard deviation (normalize_variance: true)."
         if norm_var else
         "TF divides by the standard deviation; Caffe's MVN only subtracts the mean (normalize_variance: false)."),
    ]
    if norm_var:
        hyps.append(("eps_inside_sqrt", True,
                     f"TF divides by sqrt(var + eps) (as tf.nn.batch_normalization does); Caffe's MVN divides by "
                     f"sqrt(var) + eps, eps = {eps:g} added outside the square root."))
    fixes = {
        "across_channels": (f"Take the mean and variance over {'axes (1, 2, 3)' if across else 'axes (1, 2)'} of the "
                            f"NHWC tensor ({axes[across]}), as Caffe's across_channels: {str(across).lower()} does."),
        "normalize_variance": ("Divide `x - mean` by `sqrt(mean((x - mean)**2)) + eps` (eps outside the square root)."
                               if norm_var else "Return `x - mean` only: Caffe's normalize_variance is false."),
        "eps_inside_sqrt": (f"Divide by `sqrt(var) + {eps:g}`, not `sqrt(var + {eps:g})`: Caffe adds eps after the "
                            "square root (mvn_layer.cpp)."),
    }
    for param, tf_value, what in hyps:
        kw = {**caffe, param: tf_value}
        if case.attempt(out, "mvn_parameters",
                        what + " Recomputing Caffe's MVN with that one change reproduces the TF output.",
                        fixes[param],
                        lambda kw=kw: ref.mvn(x, kw["across_channels"], kw["normalize_variance"], eps,
                                              kw["eps_inside_sqrt"]),
                        parameter=param, caffe_value=caffe[param], tf_value=tf_value, eps=eps,
                        caffe_formula="(x - mean) / (sqrt(var) + eps)" if norm_var else "x - mean"):
            return out
    return out

"""Rules that need only the two values: layout permutations, channel order,
constant scale/offset, spatial shift (decision list steps 2, 3, 5, 9).

Each one tests an exact relation between the TF value and the Caffe value, so a
hit is strong evidence even without the layer's inputs or weights.
"""

from __future__ import annotations

import numpy as np

from ..result import Diagnosis
from ._core import CONF_EXACT, CONF_FINGERPRINT, CONFIRM_RTOL, MIN_PER_CHANNEL, Case, fnum, rnd

#: Constants a preprocessing bug typically leaves, by name.
NAMED_SCALES = {255.0: "255 (raw_scale)", 1 / 255.0: "1/255", 256.0: "256", 1 / 256.0: "1/256",
                127.5: "127.5", 1 / 127.5: "1/127.5", 2.0: "2", 0.5: "1/2", 128.0: "128",
                1 / 128.0: "1/128", 0.017: "0.017 (1/58.8 std)", 58.8: "58.8"}


def name_scale(c: float) -> str:
    for v, n in NAMED_SCALES.items():
        if abs(c - v) <= 1e-3 * abs(v):
            return n
    return f"{c:.6g}"


def output_reshape(case: Case) -> list[Diagnosis]:
    """TF holds Caffe's NCHW memory reinterpreted as NHWC (a reshape instead of a transpose)."""
    y, t_raw = case.y, case.t_raw
    if y.ndim < 3 or t_raw.size != y.size or case.cp.layout == case.tp.layout:
        return []
    cand = t_raw.reshape(y.shape)
    r = case.resid(cand, target=y)
    if r <= CONFIRM_RTOL and r < 0.1 * case.r0:
        return [case.diag(
            "reshape_not_transpose",
            f"The TF tensor holds Caffe's {case.cp.layout} memory reshaped to {tuple(t_raw.shape)} "
            f"({case.tp.layout}) instead of transposed: the values are all there (sorted values agree) "
            "but in the wrong places.",
            "Convert between NCHW and NHWC with a transpose, never a reshape: "
            "`tf.transpose(x, [0, 2, 3, 1])` (NCHW->NHWC) or `[0, 3, 1, 2]` (NHWC->NCHW); for a "
            "Keras Reshape of a Caffe Reshape/Flatten, Permute to (C, H, W) first.",
            CONF_EXACT,
            where="output",
            residual_as_reshape=rnd(r),
            sorted_values_max_diff=rnd(np.max(np.abs(np.sort(y, axis=None) - np.sort(t_raw, axis=None)))),
        )]
    return []


def sorted_values(case: Case) -> list[Diagnosis]:
    """Same multiset of values, elementwise different: some permutation (fingerprint)."""
    t = case.t
    if t is None or t.size < 4:
        return []
    d = np.max(np.abs(np.sort(case.y, axis=None) - np.sort(t, axis=None))) / case.scale
    if d <= CONFIRM_RTOL and case.r0 > 100 * max(d, 1e-7):
        perm = _which_permutation(case)
        if perm is not None:
            return [perm]
        return [case.diag(
            "reshape_not_transpose",
            "The TF output holds exactly Caffe's values, but in other places: a layout bug "
            "(a reshape instead of a transpose, or a wrong transpose) moved them.",
            "Find the reshape/transpose feeding this layer: NCHW->NHWC is `transpose(0, 2, 3, 1)`; "
            "a Reshape or Flatten ported from Caffe needs a Permute to (C, H, W) first.",
            CONF_FINGERPRINT + 0.1,
            sorted_values_max_diff=rnd(d * case.scale),
        )]
    return []


def _which_permutation(case: Case) -> Diagnosis | None:
    y, t = case.y, case.t
    assert t is not None
    if y.ndim == 4 and y.shape[2] == y.shape[3] and y.shape[2] > 1:
        if case.resid(np.swapaxes(y, 2, 3)) <= CONFIRM_RTOL:
            return case.diag(
                "wrong_transpose",
                "The TF output is Caffe's with H and W swapped: a transpose with the wrong axes "
                "(e.g. `transpose(0, 3, 2, 1)` where `(0, 2, 3, 1)` was meant).",
                "Use `tf.transpose(x, [0, 2, 3, 1])` for NCHW->NHWC and `[0, 3, 1, 2]` back.",
                CONF_EXACT, permutation="H<->W",
            )
    return _reversed_axis(case)


def _reversed_axis(case: Case) -> Diagnosis | None:
    """TF holds Caffe's value reversed along one axis: a reversal left out or added (CRNN's
    backward direction reverses its sequence along T before the backward LSTM and the LSTM's
    output after it; a Keras ``go_backwards`` output is in reversed time order)."""
    y, t = case.y, case.t
    assert t is not None
    for a in range(y.ndim):
        if y.shape[a] < 2 or case.resid(np.flip(y, a)) > CONFIRM_RTOL:
            continue
        lay = case.cp.layout if case.cp.layout and len(case.cp.layout) == y.ndim else ""
        label = f" ({lay[a]} of {lay})" if lay else ""
        return case.diag(
            "axis_reversed",
            f"The TF output is Caffe's reversed along axis {a}{label}: TF[..., i, ...] == "
            f"Caffe[..., {y.shape[a] - 1} - i, ...]. A reversal is missing or extra: a sequence not "
            "reversed for (or back after) a backward recurrent layer, a `go_backwards` output used "
            "in reversed time order, or a flipped image.",
            "Reverse where Caffe does: a Caffe BatchReindex/Reverse over T is `keras.ops.flip(x, axis=1)` "
            "(or a gather along T) on a batch-major sequence, and a Keras RNN with `go_backwards=True` "
            "returns its outputs last step first: reverse them back before the Concat.",
            CONF_EXACT, axis=a, axis_label=lay[a] if lay else "",
        )
    return _reversed_concat_input(case)


def _reversed_concat_input(case: Case) -> Diagnosis | None:
    """At a Concat: TF holds Caffe's output with one input's part reversed along one axis (a
    bidirectional layer whose backward output was not reversed back before the join): Caffe's
    Concat recomputed from its bottoms with that one bottom flipped gives TF's value."""
    xs, y = case.x, case.y
    if case.ckind != "concat" or len(xs) < 2 or any(v.ndim != y.ndim for v in xs):
        return None
    ca = int(fnum(case.cparams.get("axis"), 1)) % max(y.ndim, 1)
    names = list(case.cp.inputs or [])
    for i, v in enumerate(xs):
        for a in range(y.ndim):
            if a == ca or v.shape[a] < 2:
                continue
            try:
                cand = np.concatenate([np.flip(u, a) if j == i else u for j, u in enumerate(xs)], axis=ca)
            except ValueError:
                return None
            if cand.shape != y.shape or case.resid(cand) > CONFIRM_RTOL:
                continue
            lay = case.cp.layout if case.cp.layout and len(case.cp.layout) == y.ndim else ""
            label = f" ({lay[a]} of {lay})" if lay else ""
            src = f"input {i} ({names[i]!r})" if i < len(names) else f"input {i}"
            return case.diag(
                "axis_reversed",
                f"The TF Concat output is Caffe's with the part from {src} reversed along axis {a}{label}: "
                "that input reaches the join in reversed order. A reversal is missing or extra: a backward "
                "recurrent layer's output (`go_backwards`, or a reversed sequence) not reversed back before "
                "the Concat.",
                "Reverse that input where Caffe does before the Concat: a Caffe BatchReindex/Reverse over T is "
                "`keras.ops.flip(x, axis=1)` on a batch-major sequence; a Keras RNN with `go_backwards=True` "
                "returns its outputs last step first.",
                CONF_EXACT, axis=a, axis_label=lay[a] if lay else "", concat_input=i,
                concat_input_name=names[i] if i < len(names) else "",
            )
    return None


def channel_permutation(case: Case) -> list[Diagnosis]:
    """TF channel c equals Caffe channel perm[c]: BGR/RGB swap, concat order."""
    y, t = case.y, case.t
    if t is None or y.ndim < 2 or y.shape[1] < 2 or y.shape[1] > 4096 or y.size < MIN_PER_CHANNEL * y.shape[1]:
        return []
    c = y.shape[1]
    yc = np.moveaxis(y, 1, 0).reshape(c, -1)
    tc = np.moveaxis(t, 1, 0).reshape(c, -1)
    # a permutation keeps the multiset of per-channel norms: a cheap test before the C x C search
    ny, nt = np.sort(np.linalg.norm(yc, axis=1)), np.sort(np.linalg.norm(tc, axis=1))
    if np.max(np.abs(ny - nt)) > CONFIRM_RTOL * case.scale * np.sqrt(yc.shape[1]):
        return []
    limit = CONFIRM_RTOL * case.scale
    if float(np.max(np.abs(yc - tc))) <= limit:
        return []  # the channels already match in order: nothing permuted (an O(C*N) test before O(C*C*N))
    norm_y, norm_t = np.linalg.norm(yc, axis=1), np.linalg.norm(tc, axis=1)
    slack = limit * np.sqrt(yc.shape[1])  # |norm(a) - norm(b)| <= norm(a - b) <= sqrt(n) * max|a - b|
    perm = []
    for i in range(c):
        cand = np.flatnonzero(np.abs(norm_y - norm_t[i]) <= slack)
        if cand.size == 0:
            return []
        d = np.max(np.abs(yc[cand] - tc[i]), axis=1)
        k = int(np.argmin(d))
        if d[k] > limit:
            return []
        perm.append(int(cand[k]))
    if sorted(perm) != list(range(c)) or perm == list(range(c)):
        return []
    moved = [i for i in range(c) if perm[i] != i]
    bgr = c == 3 and perm == [2, 1, 0]
    if case.ckind == "concat":
        summary = ("The TF Concat output has Caffe's channels in another order: its inputs are "
                   "concatenated in a different order.")
        fix = "Pass the inputs to `Concatenate` in the order of the Caffe layer's bottoms."
    elif bgr:
        summary = ("The TF tensor is Caffe's with channels 0 and 2 swapped: BGR vs RGB.")
        fix = ("Caffe models take BGR (caffe.io.Transformer swaps RGB->BGR): feed the TF model BGR too "
               "(`x[..., ::-1]`), or reverse the input-channel axis of the first conv kernel "
               "(`kernel[:, :, ::-1, :]`) once.")
    else:
        summary = f"The TF tensor holds Caffe's channels permuted (TF channel i = Caffe channel perm[i]); {len(moved)} of {c} moved."
        fix = "Find where the channel order changes (concat order, split, a channel-axis reshape) and match Caffe's order."
    return [case.diag("channel_order", summary, fix, CONF_EXACT, permutation=perm[:64],
                      channels_moved=len(moved), bgr_rgb=bgr)]


def constant_scale(case: Case) -> list[Diagnosis]:
    y, t = case.y, case.t
    if t is None:
        return []
    yy = float(np.sum(y * y))
    if yy == 0:
        return []
    c = float(np.sum(t * y) / yy)
    if abs(c - 1) < 1e-3 or not np.isfinite(c) or c == 0:
        return []
    if not case.explains(c * y):
        return []
    return [case.diag(
        "constant_scale",
        f"The TF output is Caffe's times a constant {name_scale(c)} everywhere.",
        _scale_fix(c),
        CONF_EXACT,
        factor=rnd(c), named=name_scale(c),
    )]


def _scale_fix(c: float) -> str:
    if abs(c - 255) < 0.3 or abs(c - 1 / 255) < 1e-5:
        return ("Scale the input like Caffe's Transformer: images in [0, 1] times raw_scale 255 "
                "(or not), the same on both sides; check `Rescaling`/`/255.` layers in the port.")
    return ("A constant factor was applied on one side only: check input scaling (raw_scale, input_scale), "
            "Power/Scale layers with a constant, and Eltwise coefficients.")


def channel_offset(case: Case) -> list[Diagnosis]:
    y, t = case.y, case.t
    if t is None or y.ndim < 2:
        return []
    if y.size < MIN_PER_CHANNEL * y.shape[1]:
        # too few values per channel for one offset each (a 1x1 map: a classifier conv, an
        # InnerProduct): one offset for the whole tensor is still well determined
        return _global_offset(case)
    axes = tuple(i for i in range(y.ndim) if i != 1)
    d = np.mean(t - y, axis=axes)
    if np.max(np.abs(d)) < CONFIRM_RTOL * case.scale:
        return []
    cand = y + d.reshape((1, -1) + (1,) * (y.ndim - 2))
    if not case.explains(cand):
        return []
    return [case.diag(
        "constant_offset",
        "The TF tensor is Caffe's plus a constant per channel: a mean (or other offset) was "
        "subtracted on one side only.",
        "Subtract the same per-channel mean on both sides (Caffe's mean is in BGR order, e.g. "
        "[104, 117, 123]); check `Normalization`/mean-subtraction layers in the port.",
        CONF_EXACT,
        offset_per_channel=[rnd(v) for v in d[:64]],
        offset_caffe_minus_tf=[rnd(-v) for v in d[:64]],
    )]


def _global_offset(case: Case) -> list[Diagnosis]:
    """TF = Caffe + one constant everywhere (e.g. a bias shifted by the same amount in every channel)."""
    y, t = case.y, case.t
    assert t is not None
    if y.size < MIN_PER_CHANNEL * MIN_PER_CHANNEL:
        return []
    d = float(np.mean(t - y))
    if abs(d) < CONFIRM_RTOL * case.scale or not case.explains(y + d):
        return []
    return [case.diag(
        "constant_offset",
        f"The TF tensor is Caffe's plus the constant {rnd(d)} everywhere: an offset (a mean, or a bias "
        "shifted by a constant) applied on one side only.",
        "Subtract the same mean on both sides (Caffe's mean is in BGR order, e.g. [104, 117, 123]) and copy "
        "the biases unchanged; check `Normalization`/mean-subtraction layers and bias loading in the port.",
        CONF_EXACT,
        offset=rnd(d), offset_caffe_minus_tf=rnd(-d),
    )]


def spatial_shift(case: Case, max_shift: int = 3) -> list[Diagnosis]:
    y, t = case.y, case.t
    if t is None or y.ndim != 4 or min(y.shape[2:]) < 3:
        return []
    h, w = y.shape[2:]
    best = None
    for dy in range(-max_shift, max_shift + 1):
        for dx in range(-max_shift, max_shift + 1):
            if (dy, dx) == (0, 0) or abs(dy) >= h - 1 or abs(dx) >= w - 1:
                continue
            # t[i, j] == y[i + dy, j + dx] on the overlap; one channel first (cheap), then all
            sy = (slice(max(dy, 0), h + min(dy, 0)), slice(max(dx, 0), w + min(dx, 0)))
            st = (slice(max(-dy, 0), h + min(-dy, 0)), slice(max(-dx, 0), w + min(-dx, 0)))
            if float(np.max(np.abs(y[0, 0][sy] - t[0, 0][st]), initial=0.0)) / case.scale > CONFIRM_RTOL:
                continue
            r = float(np.max(np.abs(y[:, :, sy[0], sy[1]] - t[:, :, st[0], st[1]]), initial=0.0)) / case.scale
            if r <= CONFIRM_RTOL and (best is None or abs(dy) + abs(dx) < abs(best[0]) + abs(best[1])):
                best = (dy, dx)
    if best is None or case.r0 <= 10 * CONFIRM_RTOL:
        return []
    dy, dx = best
    return [case.diag(
        "spatial_shift",
        f"The TF output is Caffe's shifted by {dy} row(s) and {dx} column(s) "
        f"(TF[i, j] == Caffe[i{dy:+d}, j{dx:+d}] wherever both exist): a crop or pad offset differs.",
        "Caffe's Crop takes its offset from the top-left (`crop_param.offset`), not centred: use "
        "`Cropping2D(((off_h, H - off_h - h), (off_w, W - off_w - w)))` or `x[:, off_h:off_h+h, off_w:off_w+w]`; "
        "for a pad, put the padding on the same sides as Caffe.",
        CONF_EXACT - 0.05,
        shift_rows=dy, shift_cols=dx,
    )]


def generic_rules(case: Case) -> list[Diagnosis]:
    out: list[Diagnosis] = []
    if case.t is not None and not (np.all(np.isfinite(case.t)) and np.all(np.isfinite(case.y))):
        return out  # exact relations between values mean nothing across NaN/Inf
    for rule in (output_reshape, channel_permutation, constant_scale, channel_offset, sorted_values, spatial_shift):
        out += rule(case)
        if out and out[-1].confidence >= CONF_EXACT:
            break
    for d in out:  # a relation between the chain's outputs: which member it blames, if any
        d.layer = case.output_layer(d.kind, d.evidence.get("factor"))
    return out

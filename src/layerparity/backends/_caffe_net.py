"""Everything that touches pycaffe, shared by the worker process and the in-process path.

- :func:`parse_prototxt`: read, upgrade (V1 ``layers``, legacy ``input:`` fields)
  and validate a prototxt *before* Caffe sees it, so the usual mistakes (syntax,
  unknown types, missing bottoms, cycles, duplicate tops, bad legacy input
  fields) become messages with ``file:line`` instead of a glog abort or a
  segfault.
- :func:`scan_caffemodel`: walk a ``.caffemodel``'s protobuf wire format without
  loading the weights (empty, truncated, random, text files; which layers it holds).
- :class:`NetSession`: a loaded ``caffe.Net``; steps it layer by layer and yields
  one probe description and value per top, right after its layer ran.
- :func:`locate_failure`: when Caffe aborts while building a net without saying
  which layer, build each layer alone, in order, to find the one Caffe refuses.

Only the standard library, NumPy and pycaffe (imported by the caller and passed
in) are used: this module runs inside the worker, which never imports TensorFlow,
possibly under another Python with a legacy Caffe.
"""

from __future__ import annotations

import difflib
import mmap
import os
import re
import sys

import numpy as np


class UserError(Exception):
    """A problem with the user's files; the message names file, layer and problem."""


# -- prototxt ----------------------------------------------------------------------

_TOKEN = re.compile(
    r"#[^\n]*|\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'|[A-Za-z_][A-Za-z0-9_]*|\n|[{}<>:]|[^\s{}<>:#\"']+"
)


class _Block:
    def __init__(self, kind: str, line: int) -> None:
        self.kind = kind
        self.line = line
        self.end = line
        self.name: str | None = None


def scan_blocks(text: str) -> tuple[list[_Block], int | None]:
    """Top-level ``layer``/``layers`` blocks with their first/last line and name; line of the first ``input``."""
    blocks: list[_Block] = []
    first_input = None
    depth = 0
    line = 1
    pending: str | None = None  # identifier at depth 0 waiting for '{'
    cur: _Block | None = None
    expect_name = 0  # 2: saw 'name' at depth 1, 1: saw ':'
    for m in _TOKEN.finditer(text):
        tok = m.group(0)
        if tok == "\n":
            line += 1
            continue
        if tok.startswith("#"):
            continue
        if tok == "{" or tok == "<":
            if depth == 0 and pending in ("layer", "layers"):
                cur = _Block(pending, line)
                blocks.append(cur)
            depth += 1
            pending = None
            expect_name = 0
            continue
        if tok == "}" or tok == ">":
            depth = max(depth - 1, 0)
            if depth == 0 and cur is not None:
                cur.end = line
                cur = None
            continue
        if depth == 0:
            if tok != ":":
                pending = tok
                if tok == "input" and first_input is None:
                    first_input = line
            continue
        if depth == 1 and cur is not None and cur.name is None:
            if tok == "name":
                expect_name = 2
            elif tok == ":" and expect_name == 2:
                expect_name = 1
            elif expect_name == 1 and tok[:1] in "\"'":
                cur.name = _unquote(tok)
                expect_name = 0
            else:
                expect_name = 0
    return blocks, first_input


def _unquote(tok: str) -> str:
    body = tok[1:-1]
    try:
        return body.encode("latin-1", "backslashreplace").decode("unicode_escape")
    except Exception:  # noqa: BLE001
        return body


_V1_TYPES = {
    "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution", "DATA": "Data", "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise",
    "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice",
    "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}


class ParsedNet:
    """The prototxt as Caffe will see it: upgraded, phase-filtered, with source lines."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.layers: list = []  # caffe_pb2.LayerParameter, execution order
        self.lines: dict[str, int] = {}  # layer name -> first line of its block
        self.legacy_input: str | None = None  # name of the Input layer made from input: fields
        self.upgradable_only_by_caffe = False  # V0 nets: left to Caffe entirely

    def where(self, name: str) -> str:
        line = self.lines.get(name)
        return f"{self.path}:{line}" if line else self.path


def _is_repeated(f) -> bool:
    rep = getattr(f, "is_repeated", None)
    if rep is not None and not callable(rep):
        return bool(rep)
    return f.label == f.LABEL_REPEATED


def _state_meets_rule(rule, phase: int) -> bool:
    if rule.HasField("phase") and rule.phase != phase:
        return False
    if rule.HasField("min_level") and 0 < rule.min_level:
        return False
    if rule.HasField("max_level") and 0 > rule.max_level:
        return False
    if len(rule.stage):  # the net state has no stages
        return False
    return True


def _included(layer, phase: int) -> bool:
    if len(layer.include):
        return any(_state_meets_rule(r, phase) for r in layer.include)
    return not any(_state_meets_rule(r, phase) for r in layer.exclude)


def parse_prototxt(path: str, pb, phase: int, known_types: list[str] | None) -> ParsedNet:
    """Read and check a prototxt; raise :class:`UserError` with ``file:line`` on any problem."""
    from google.protobuf import text_format

    if not os.path.isfile(path):
        raise UserError(f"{path}: no such prototxt file")
    with open(path, "rb") as f:
        raw = f.read()
    if not raw.strip():
        raise UserError(f"{path}: the prototxt is empty")
    if b"\x00" in raw[:4096]:
        raise UserError(f"{path}: this is a binary file, not a text prototxt (a .caffemodel? "
                        f"the prototxt comes first, the weights second)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); a prototxt is protobuf text format") from None
    blocks, input_line = scan_blocks(text)
    net = pb.NetParameter()
    try:
        text_format.Parse(text, net)
    except text_format.ParseError as e:
        line = e.GetLine() if hasattr(e, "GetLine") else None
        col = e.GetColumn() if hasattr(e, "GetColumn") else None
        msg = str(e)
        msg = re.sub(r"^\d+:\d+ ?: ?", "", msg)
        where = path if not line else f"{path}:{line}:{col}" if col else f"{path}:{line}"
        inside = ""
        if line:
            for b in blocks:
                if b.line <= line <= b.end:
                    inside = f" (in layer '{b.name}')" if b.name else f" (in the {b.kind} block starting on line {b.line})"
        raise UserError(f"{where}: syntax error{inside}: {msg}") from None

    parsed = ParsedNet(path)
    v2_blocks = [b for b in blocks if b.kind == "layer"]
    v1_blocks = [b for b in blocks if b.kind == "layers"]
    if len(net.layer) and len(net.layers):
        raise UserError(f"{path}: mixes the old 'layers' and the new 'layer' fields; Caffe refuses that")
    layers = []
    if len(net.layers):
        if any(v1.HasField("layer") for v1 in net.layers):
            parsed.upgradable_only_by_caffe = True  # V0: let Caffe upgrade it, no checks here
            return parsed
        for i, v1 in enumerate(net.layers):
            layers.append((_upgrade_v1(v1, pb), v1_blocks[i].line if i < len(v1_blocks) else None))
    else:
        for i, lp in enumerate(net.layer):
            layers.append((lp, v2_blocks[i].line if i < len(v2_blocks) else None))

    # legacy input fields -> an Input layer named "input" in front, as Caffe does
    if len(net.input):
        n = len(net.input)
        where = f"{path}:{input_line}" if input_line else path
        if len(net.input_shape) and len(net.input_shape) != n:
            raise UserError(f"{where}: {n} legacy 'input' fields but {len(net.input_shape)} 'input_shape' "
                            f"blocks; give one input_shape per input (Caffe would crash on this)")
        if not len(net.input_shape):
            if not len(net.input_dim):
                raise UserError(f"{where}: input {net.input[0]!r} has no input_shape or input_dim; "
                                f"Caffe cannot know its shape")
            if len(net.input_dim) != 4 * n:
                raise UserError(f"{where}: {n} legacy 'input' fields need {4 * n} 'input_dim' values "
                                f"(4 per input, N C H W), found {len(net.input_dim)}")
        lp = pb.LayerParameter()
        lp.name = "input"
        lp.type = "Input"
        for i, name in enumerate(net.input):
            lp.top.append(name)
            shape = lp.input_param.shape.add()
            if len(net.input_shape):
                shape.CopyFrom(net.input_shape[i])
            else:
                shape.dim.extend(net.input_dim[4 * i:4 * i + 4])
        layers.insert(0, (lp, input_line))
        parsed.legacy_input = "input"

    seen_names: dict[str, int | None] = {}
    for lp, line in layers:
        if not _included(lp, phase):
            continue
        if lp.name in seen_names:
            first = seen_names[lp.name]
            raise UserError(f"{path}:{line or '?'}: layer name '{lp.name}' is used twice "
                            f"(first on line {first or '?'}); layer names must be unique")
        seen_names[lp.name] = line
        parsed.layers.append(lp)
        if line:
            parsed.lines[lp.name] = line
    _validate(parsed, known_types)
    return parsed


def _upgrade_v1(v1, pb):
    lp = pb.LayerParameter()
    lp.name = v1.name
    tname = v1.DESCRIPTOR.fields_by_name["type"].enum_type.values_by_number[v1.type].name
    lp.type = _V1_TYPES.get(tname, tname)
    lp.bottom.extend(v1.bottom)
    lp.top.extend(v1.top)
    for r in v1.include:
        lp.include.add().CopyFrom(r)
    for r in v1.exclude:
        lp.exclude.add().CopyFrom(r)
    for f in v1.DESCRIPTOR.fields:
        if f.name.endswith("_param") and f.name in lp.DESCRIPTOR.fields_by_name and v1.HasField(f.name):
            target = getattr(lp, f.name)
            if target.DESCRIPTOR.full_name == f.message_type.full_name:
                target.CopyFrom(getattr(v1, f.name))
    return lp


def _validate(parsed: ParsedNet, known_types: list[str] | None) -> None:
    path = parsed.path
    if not parsed.layers:
        raise UserError(f"{path}: the net has no layers (for this phase)")
    producers: dict[str, str] = {}
    later: dict[str, str] = {}
    for lp in parsed.layers:
        for t in lp.top:
            later.setdefault(t, lp.name)
    known = set(known_types or [])
    for lp in parsed.layers:
        here = f"{parsed.where(lp.name)}: layer '{lp.name}'"
        if not lp.type:
            raise UserError(f"{here}: has no type")
        if known and lp.type == "Python" and "Python" not in known:
            raise UserError(f"{here}: is a Python layer, and this Caffe was built without Python layers "
                            f"(CMake BUILD_python_layer / WITH_PYTHON_LAYER off); `make setup` builds one with them")
        if known and lp.type not in known:
            lower = {k.lower(): k for k in known}
            close = [lower[c] for c in difflib.get_close_matches(lp.type.lower(), sorted(lower), n=3)]
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise UserError(f"{here}: unknown layer type '{lp.type}' (this Caffe build does not have it{hint})")
        for b in lp.bottom:
            if b not in producers:
                if b in later and later[b] != lp.name:
                    raise UserError(
                        f"{here}: reads blob '{b}', which is only produced later by layer '{later[b]}' "
                        f"({parsed.where(later[b])}); Caffe runs layers in file order, so this is a cycle "
                        f"or the layers are out of order"
                    )
                raise UserError(f"{here}: reads blob '{b}', which no earlier layer produces "
                                f"(missing bottom; known blobs: {', '.join(sorted(producers)[:12]) or 'none'})")
        for k, t in enumerate(lp.top):
            in_place = k < len(lp.bottom) and lp.bottom[k] == t
            if t in producers and not in_place:
                raise UserError(
                    f"{here}: top blob '{t}' is already produced by layer '{producers[t]}' "
                    f"({parsed.where(producers[t])}); a blob can only be overwritten in place "
                    f"(top == bottom at the same position)"
                )
        for t in lp.top:
            producers[t] = lp.name


# -- caffemodel --------------------------------------------------------------------

_NET_FIELDS = {1: 2, 2: 2, 3: 2, 4: 0, 5: 0, 6: 2, 7: 0, 8: 2, 100: 2}  # field -> wire type


class _Corrupt(Exception):
    pass


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise _Corrupt(f"a number at byte {pos} runs past the end")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise _Corrupt(f"an over-long number at byte {pos}")


def _fields(buf, pos: int, end: int):
    """Yield (field, wire type, value or (start, stop)) over one message's bytes."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wt = key >> 3, key & 7
        if field == 0:
            raise _Corrupt(f"field number 0 at byte {pos}")
        if wt == 0:
            val, pos = _varint(buf, pos, end)
            yield field, wt, val
        elif wt == 1:
            if pos + 8 > end:
                raise _Corrupt(f"an 8-byte value at byte {pos} runs past the end")
            yield field, wt, None
            pos += 8
        elif wt == 5:
            if pos + 4 > end:
                raise _Corrupt(f"a 4-byte value at byte {pos} runs past the end")
            yield field, wt, None
            pos += 4
        elif wt == 2:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise _Corrupt(f"a field at byte {pos} needs {n} bytes but only {end - pos} remain")
            yield field, wt, (pos, pos + n)
            pos += n
        else:
            raise _Corrupt(f"invalid protobuf wire type {wt} at byte {pos}")


def _layer_summary(buf, start: int, stop: int, v1: bool) -> tuple[str, int]:
    name, blobs = "", 0
    name_field, blobs_field = (4, 6) if v1 else (1, 7)
    for field, wt, val in _fields(buf, start, stop):
        if field == name_field and wt == 2:
            name = bytes(buf[val[0]:val[1]]).decode("utf-8", "replace")
        elif field == blobs_field and wt == 2:
            blobs += 1
        elif v1 and field == 1 and wt == 2:  # V0 layer inside a V1 one
            for f0, wt0, v0 in _fields(buf, val[0], val[1]):
                if f0 == 1 and wt0 == 2:
                    name = bytes(buf[v0[0]:v0[1]]).decode("utf-8", "replace")
                elif f0 == 50 and wt0 == 2:
                    blobs += 1
    return name, blobs


def scan_caffemodel(path: str) -> dict[str, int]:
    """Layer name -> number of blobs held by a binary ``.caffemodel``, without loading it.

    Raises :class:`UserError` for a missing, empty, truncated, random or text file.
    """
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such weights file")
    size = os.path.getsize(path)
    if size == 0:
        raise UserError(f"{path}: the weights file is empty (0 bytes); is the download incomplete?")
    with open(path, "rb") as f:
        head = f.read(512)
        stripped = head.lstrip()
        if stripped[:1] in (b"#",) or re.match(rb"^(name|layers?|input)\s*[:{]", stripped):
            raise UserError(f"{path}: this is a text prototxt, not a binary .caffemodel "
                            f"(the prototxt comes first, the weights second)")
        if head and all(32 <= c < 127 or c in (9, 10, 13) for c in head):
            raise UserError(f"{path}: this is a text file, not a binary .caffemodel "
                            f"(starts with {head[:40].decode('ascii')!r})")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    layers: dict[str, int] = {}
    last = None
    try:
        for field, wt, val in _fields(mm, 0, size):
            expected = _NET_FIELDS.get(field)
            if expected is None or (expected != wt and not (field in (3, 4, 8) and wt == 2)):
                raise _Corrupt(f"unexpected field {field} (wire type {wt}) at top level")
            if field in (100, 2):
                name, nblobs = _layer_summary(mm, val[0], val[1], v1=(field == 2))
                layers[name] = layers.get(name, 0) + nblobs
                last = name
    except _Corrupt as e:
        after = f" (after layer '{last}')" if last else ""
        msg = f"{path}: truncated or not a Caffe model: {e}{after}; file size {size} bytes"
    else:
        msg = None
    finally:
        mm.close()
    if msg:
        raise UserError(msg)
    if not layers:
        raise UserError(f"{path}: holds no layers; it is not a trained Caffe net")
    return layers


# -- parameters and layouts -----------------------------------------------------------

_PARAM_FIELD = {
    "Convolution": "convolution_param", "Deconvolution": "convolution_param",
    "Pooling": "pooling_param", "LRN": "lrn_param", "BatchNorm": "batch_norm_param",
    "Eltwise": "eltwise_param", "Concat": "concat_param", "Slice": "slice_param",
    "Softmax": "softmax_param", "SoftmaxWithLoss": "softmax_param", "ReLU": "relu_param",
    "PReLU": "prelu_param", "InnerProduct": "inner_product_param", "Crop": "crop_param",
    "Permute": "permute_param", "Normalize": "norm_param", "Interp": "interp_param",
    "Power": "power_param", "Scale": "scale_param", "Bias": "bias_param",
    "Flatten": "flatten_param", "Reshape": "reshape_param", "Dropout": "dropout_param",
    "ELU": "elu_param", "TanH": "tanh_param", "Sigmoid": "sigmoid_param",
    "Threshold": "threshold_param", "Exp": "exp_param", "Log": "log_param", "MVN": "mvn_param",
    "ArgMax": "argmax_param", "Tile": "tile_param", "Reduction": "reduction_param",
    "SPP": "spp_param", "Embed": "embed_param", "PriorBox": "prior_box_param",
    "DetectionOutput": "detection_output_param", "ReLU6": "relu6_param",
    "HardSigmoid": "hardsigmoid_param", "BilinearInterpolate": "bilinear_interpolate_param",
    "Upsample": "upsample_param", "Resize": "resize_param", "Pad": "pad_param",
    "PixelShuffle": "pixelshuffle_param", "MaxUnPool": "max_unpool_param",
    "PSROIPooling": "psroi_pooling_param", "Unsqueeze": "unsqueeze_param",
    "Proposal": "proposal_param", "Input": "input_param", "Python": "python_param",
}
_SKIP_FIELDS = {"engine", "weight_filler", "bias_filler", "filler", "scale_filler", "slope_filler"}


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def _clean_float(x: float) -> float:
    return float(str(np.float32(x)))


def _scalar(f, v):
    if f.type == f.TYPE_ENUM:
        ev = f.enum_type.values_by_number.get(v)
        return ev.name if ev is not None else int(v)
    if f.type == f.TYPE_FLOAT:
        return _clean_float(v)
    if f.type == f.TYPE_BYTES:
        return v.decode("utf-8", "replace")
    return v


def message_to_dict(msg) -> dict:
    """Every field of a parameter message, defaults filled in, enums by name."""
    out = {}
    for f in msg.DESCRIPTOR.fields:
        if f.name in _SKIP_FIELDS:
            continue
        rep = _is_repeated(f)
        if f.type == f.TYPE_MESSAGE:
            if f.message_type.full_name.endswith("BlobShape"):
                if rep:
                    out[f.name] = [list(m.dim) for m in getattr(msg, f.name)]
                elif msg.HasField(f.name):
                    out[f.name] = list(getattr(msg, f.name).dim)
            elif rep:
                out[f.name] = [message_to_dict(m) for m in getattr(msg, f.name)]
            elif msg.HasField(f.name):
                out[f.name] = message_to_dict(getattr(msg, f.name))
            continue
        val = getattr(msg, f.name)
        out[f.name] = [_scalar(f, v) for v in val] if rep else _scalar(f, val)
    return out


def _param_message(lp):
    field = _PARAM_FIELD.get(lp.type) or _snake(lp.type) + "_param"
    if field in lp.DESCRIPTOR.fields_by_name:
        return getattr(lp, field)
    return None


def _hw(p, rep_name: str, h: str | None, w: str | None, default: int, n: int) -> list[int]:
    if h and w and h in p.DESCRIPTOR.fields_by_name and (p.HasField(h) or p.HasField(w)):
        return [int(getattr(p, h)), int(getattr(p, w))]
    f = p.DESCRIPTOR.fields_by_name.get(rep_name)
    if f is None:
        vals = []
    elif _is_repeated(f):
        vals = [int(v) for v in getattr(p, rep_name)]
    else:
        vals = [int(getattr(p, rep_name))] if p.HasField(rep_name) else []
    if not vals:
        return [default] * n
    if len(vals) == 1:
        return vals * n
    return vals


def layer_params(lp, bottom_shapes: list[tuple[int, ...]], phase_name: str) -> dict:
    """The probe's ``params``: Caffe field names, defaults filled, spatial values as [h, w]."""
    if lp is None:
        return {}
    p = _param_message(lp)
    if p is None:
        return {}
    d = message_to_dict(p)
    t = lp.type
    b0 = bottom_shapes[0] if bottom_shapes else ()
    if t in ("Convolution", "Deconvolution"):
        axis = d.get("axis", 1)
        n = (len(b0) - (axis % len(b0) if b0 else 1) - 1) if b0 else 2
        n = n if n > 0 else 2
        out = {k: d[k] for k in ("num_output", "bias_term", "group", "axis") if k in d}
        out["kernel_size"] = _hw(p, "kernel_size", "kernel_h", "kernel_w", 0, n)
        out["stride"] = _hw(p, "stride", "stride_h", "stride_w", 1, n)
        out["pad"] = _hw(p, "pad", "pad_h", "pad_w", 0, n)
        out["dilation"] = _hw(p, "dilation", None, None, 1, n)
        for k, v in d.items():  # fork extras (e.g. width_group) stay, minus the folded ones
            if k not in out and k not in ("kernel_h", "kernel_w", "stride_h", "stride_w", "pad_h", "pad_w", "force_nd_im2col"):
                out[k] = v
        return out
    if t == "Pooling":
        out = {"pool": d.get("pool", "MAX"), "global_pooling": bool(d.get("global_pooling", False))}
        if out["global_pooling"] and len(b0) >= 4:
            out["kernel_size"] = [int(b0[2]), int(b0[3])]
            out["stride"] = [1, 1]
            out["pad"] = [0, 0]
        else:
            out["kernel_size"] = _hw(p, "kernel_size", "kernel_h", "kernel_w", 0, 2)
            out["stride"] = _hw(p, "stride", "stride_h", "stride_w", 1, 2)
            out["pad"] = _hw(p, "pad", "pad_h", "pad_w", 0, 2)
        if "round_mode" in d:
            out["round_mode"] = d["round_mode"] if isinstance(d["round_mode"], str) else ("CEIL" if d["round_mode"] == 0 else "FLOOR")
        elif "ceil_mode" in d:
            out["ceil_mode"] = bool(d["ceil_mode"])
            out["round_mode"] = "CEIL" if d["ceil_mode"] else "FLOOR"
        else:
            out["round_mode"] = "CEIL"  # Caffe before round_mode always rounded up
        return out
    if t == "BatchNorm":
        if not p.HasField("use_global_stats"):
            d["use_global_stats"] = phase_name == "TEST"
        return d
    if t == "Eltwise":
        if not d.get("coeff"):
            d["coeff"] = [1.0] * max(len(bottom_shapes), 1)
        d.pop("stable_prod_grad", None)
        return d
    if t == "Concat":
        if p.HasField("concat_dim") and not p.HasField("axis"):
            d["axis"] = d["concat_dim"]
        d.pop("concat_dim", None)
        return d
    if t == "Slice":
        if p.HasField("slice_dim") and not p.HasField("axis"):
            d["axis"] = d["slice_dim"]
        d.pop("slice_dim", None)
        return d
    if t == "Crop":
        nd = len(b0) or 4
        axis = d.get("axis", 2) % nd
        n = nd - axis
        off = list(d.get("offset", []))
        d["axis"] = axis
        d["offset"] = [0] * n if not off else off * n if len(off) == 1 else off
        return d
    if t == "Permute":
        d["order"] = permute_order(d.get("order", []), len(b0) or 4)
        return d
    if t == "Input":
        return {"shape": d.get("shape", [])}
    if t == "Python":
        return {k: d.get(k, "") for k in ("module", "layer", "param_str")}
    return d


def permute_order(order: list[int], nd: int) -> list[int]:
    """Caffe's Permute fills unspecified axes in increasing order."""
    out = []
    for o in order:
        o = int(o) % nd
        if o not in out:
            out.append(o)
    for a in range(nd):
        if a not in out:
            out.append(a)
    return out


def squeezed_layout(in_layout: str, in_shape: tuple, out_shape: tuple) -> str:
    """A Reshape that only drops size-1 axes keeps the labels of the axes it keeps (matched
    left to right): ``WNCH`` (7, 1, 16, 1) -> (7, 1, 16) is ``WNC``; ``""`` for any other.
    The TF backends' :func:`~.tfcommon.probe_layout` uses this same function (this module
    imports nothing of layerparity, so the rule lives here).

    >>> squeezed_layout("WNCH", (7, 1, 16, 1), (7, 1, 16))
    'WNC'
    >>> squeezed_layout("WNCH", (7, 1, 16, 2), (7, 1, 32))
    ''
    """
    if not in_layout or in_layout.startswith("flat:") or len(in_layout) != len(in_shape) \
            or not 2 < len(out_shape) < len(in_shape):
        return ""
    kept, j = [], 0
    for label, d in zip(in_layout, in_shape):  # noqa: B905 - worker runs on Python < 3.10 too
        if j < len(out_shape) and d == out_shape[j]:
            kept.append(label)
            j += 1
        elif d != 1:
            return ""
    return "".join(kept) if j == len(out_shape) else ""


_CHANNEL_KINDS = {"Convolution", "Deconvolution", "Pooling", "LRN", "Input", "SPP", "Im2col"}

#: Recurrent layers: their 3-D tops are time-major, T x N x C (a TF port's are N x T x C).
_SEQUENCE_KINDS = {"LSTM", "RNN", "LSTMUnit"}
#: Layers whose top is a table of rows (DetectionOutput: 1 x 1 x K x 7), not an image.
_TABLE_KINDS = {"DetectionOutput"}


def layout_for(kind: str, params: dict, shape: tuple[int, ...], bottoms: list[tuple[str, tuple | None, tuple]]) -> tuple[str, tuple | None]:
    """Declared layout (and flat_shape) of a top, from the layer kind and its bottoms' layouts.

    ``bottoms`` holds ``(layout, flat_shape, shape)`` of each bottom's current value.
    """
    nd = len(shape)
    b_layout, b_flat, b_shape = bottoms[0] if bottoms else ("", None, ())
    plain_b = b_layout if (b_layout and not b_layout.startswith("flat:") and len(b_layout) == len(b_shape)) else ""
    if kind == "Permute":
        if plain_b and len(params.get("order", [])) == nd:
            return "".join(plain_b[o] for o in params["order"]), None
        return "", None
    if kind in _SEQUENCE_KINDS and nd == 3:
        return "TNC", None
    if nd == 3 and plain_b == "TNC" and tuple(shape[:2]) == tuple(b_shape[:2]):
        return "TNC", None  # keeps T and N (InnerProduct with axis 2, elementwise...): still a sequence
    if kind == "InnerProduct":
        return ("NC", None) if nd == 2 else ("", None)
    if kind in _TABLE_KINDS:
        return "", None
    if kind in _CHANNEL_KINDS:
        return ("NCHW", None) if nd == 4 else ("NC", None) if nd == 2 else ("", None)
    if bottoms and tuple(shape) == tuple(b_shape):
        return b_layout, b_flat  # elementwise, in place, BatchNorm/Scale, Dropout, Softmax...
    if kind in ("Reshape", "Flatten") and squeezed_layout(plain_b, b_shape, shape):
        return squeezed_layout(plain_b, b_shape, shape), None  # only size-1 axes dropped
    if nd == 2 and plain_b and len(b_shape) >= 3 and shape[0] == b_shape[0] and shape[1] == int(np.prod(b_shape[1:])):
        return "flat:" + plain_b, tuple(int(d) for d in b_shape[1:])  # Flatten / Reshape to 2-D
    if nd == 4:
        if kind == "Reshape":
            return ("NCHW", None) if plain_b == "NCHW" else ("", None)
        if plain_b and len(plain_b) == 4:
            return plain_b, None  # Concat, Eltwise, Crop, Interp... keep their inputs' labels
        return "NCHW", None
    if nd == 2:
        return "NC", None
    return "", None


def is_auto_split(kind: str, name: str, bottoms: list[str], tops: list[str]) -> bool:
    """A Split layer Caffe inserted itself (``{blob}_{layer}_{i}_split``), not one the user wrote."""
    return (
        kind == "Split"
        and len(bottoms) == 1
        and name.startswith(bottoms[0] + "_")
        and name.endswith("_split")
        and all(t == f"{name}_{k}" for k, t in enumerate(tops))
    )


# -- Python layers ----------------------------------------------------------------------

_PY_METHODS = ("setup", "reshape", "forward")
_GUARD_OWNER: list = [None]  # the PythonLayers of the net being built / run in this process


def error_line(e: BaseException) -> str:
    """``Type: first line of the message`` of a Python exception."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _user_frame(tb) -> str:
    """`` (at file:line)`` of the innermost frame outside this module: where the user's code raised."""
    import traceback

    here = os.path.abspath(__file__)
    libs = tuple({os.path.join(os.path.abspath(p), "lib") for p in (sys.prefix, sys.base_prefix)})
    frames = [fr for fr in traceback.extract_tb(tb) if os.path.abspath(fr.filename) != here]
    own = [fr for fr in frames if not os.path.abspath(fr.filename).startswith(libs)
           and not fr.filename.startswith("<frozen")]
    fr = (own or frames or [None])[-1]
    return f" (at {fr.filename}:{fr.lineno})" if fr is not None else ""


def python_layer_desc(lp) -> str:
    p = lp.python_param
    return f"layer '{lp.name}' (Python layer {p.layer!r} of module {p.module!r})"


class PythonLayers:
    """The net's Python layers, imported before Caffe builds the net, their errors named.

    :meth:`prepare` imports each layer's module and finds its class, so a module that
    is missing or fails to import, or a class that is not there, is a :class:`UserError`
    naming the layer, the module and the first line of the Python error, instead of
    Caffe's ``PyErr_Print`` and a bare C++ exception. It then wraps each class's
    ``setup``/``reshape``/``forward`` (in this process only) so that an exception raised
    in them becomes a :class:`UserError` naming the layer: Caffe sets the layers up in
    net order, so the k-th ``setup`` call is the k-th Python layer.
    """

    def __init__(self, parsed: ParsedNet) -> None:
        self.parsed = parsed
        self.layers = [lp for lp in parsed.layers if lp.type == "Python"]
        self._unclaimed = list(self.layers)
        self._by_id: dict[int, tuple[object, object]] = {}  # id(instance) -> (instance, LayerParameter)

    def prepare(self, caffe) -> None:
        import importlib

        _GUARD_OWNER[0] = self
        base = getattr(caffe, "Layer", None)
        for lp in self.layers:
            p = lp.python_param
            here = f"{self.parsed.where(lp.name)}: {python_layer_desc(lp)}"
            if not p.module or not p.layer:
                raise UserError(f"{here}: python_param needs both module and layer")
            try:
                mod = importlib.import_module(p.module)
            except (Exception, SystemExit) as e:  # noqa: BLE001 - any import failure is the user's module
                missing = isinstance(e, ModuleNotFoundError) and e.name and (
                    p.module == e.name or p.module.startswith(e.name + "."))
                if missing:
                    raise UserError(f"{here}: cannot import module {p.module!r}: {error_line(e)}; put the folder "
                                    f"that holds it on caffe_pythonpath (--caffe-pythonpath DIR)") from None
                raise UserError(f"{here}: importing module {p.module!r} raised {error_line(e)}"
                                f"{_user_frame(e.__traceback__)}") from None
            cls = getattr(mod, p.layer, None)
            if cls is None:
                names = [n for n, v in vars(mod).items() if isinstance(v, type) and base is not None
                         and issubclass(v, base) and v is not base]
                raise UserError(f"{here}: module {p.module!r} ({getattr(mod, '__file__', '?')}) has no {p.layer!r}"
                                + (f"; its caffe.Layer classes: {', '.join(sorted(names))}" if names else ""))
            if base is not None and not (isinstance(cls, type) and issubclass(cls, base)):
                raise UserError(f"{here}: {p.module}.{p.layer} is not a subclass of caffe.Layer")
            for method in _PY_METHODS:
                self._guard(cls, method)

    def _guard(self, cls, method: str) -> None:
        orig = getattr(cls, method, None)
        if orig is None or getattr(orig, "_layerparity_guard", False):
            return

        def guarded(layer, *args, **kw):
            owner = _GUARD_OWNER[0]
            if method == "setup" and owner is not None:
                owner.claim(layer)
            try:
                return orig(layer, *args, **kw)
            except UserError:
                raise
            except Exception as e:  # noqa: BLE001 - the user's code: named, as an input error
                if owner is None:
                    raise
                raise UserError(owner.message(layer, method, e)) from None

        guarded._layerparity_guard = True  # type: ignore[attr-defined]
        guarded.__name__ = method
        setattr(cls, method, guarded)

    def claim(self, layer) -> None:
        """The first ``setup`` call of a layer instance: it is the next Python layer in net order."""
        if id(layer) not in self._by_id and self._unclaimed:
            self._by_id[id(layer)] = (layer, self._unclaimed.pop(0))

    def message(self, layer, method: str, e: BaseException) -> str:
        lp = self._by_id.get(id(layer), (None, None))[1]
        what = f"{self.parsed.where(lp.name)}: {python_layer_desc(lp)}" if lp is not None else (
            f"{self.parsed.path}: a Python layer of class {type(layer).__name__}")
        return f"{what}: its {method}() raised {error_line(e)}{_user_frame(e.__traceback__)}"


# -- the session -----------------------------------------------------------------------


class NetSession:
    """A loaded ``caffe.Net`` stepped one layer at a time."""

    def __init__(self, caffe, net, layer_params_by_name: dict, phase: str, legacy_input: str | None = None,
                 weights_missing: list[str] | None = None) -> None:
        self.caffe = caffe
        self.net = net
        self.phase = phase
        self.lps = layer_params_by_name
        self.legacy_input = legacy_input
        self.weights_missing = list(weights_missing or [])
        self.source = "<live net>"  # the prototxt, for messages (set by load_session)
        names = list(net._layer_names)
        layers = list(net.layers)
        self.plan = []
        for i, (name, layer) in enumerate(zip(names, layers)):  # noqa: B905 - worker runs on Python < 3.10 too
            # the type the prototxt names (the registered one): a fork's C++ type() may differ
            # (this Caffe's Proposal layer says "ProposalLayer"); auto-inserted Splits have no lp
            lp = layer_params_by_name.get(name)
            kind = lp.type if lp is not None and lp.type else layer.type
            self.plan.append((i, name, kind, list(net.bottom_names[name]), list(net.top_names[name]), layer))
        produced = {t for _, _, _, _, tops, _ in self.plan for t in tops}
        net_inputs = list(getattr(net, "inputs", []) or [])
        self.free_inputs = [b for b in net_inputs if b not in produced]  # very old Caffe: no Input layer
        self.input_names = list(self.free_inputs)
        for _, _, kind, _, tops, _ in self.plan:
            if kind == "Input":
                self.input_names.extend(t for t in tops if t not in self.input_names)
        self.probe_names = self._probe_names()
        self.probe_at = {pname: key for key, pname in self.probe_names.items()}
        for n in self.free_inputs:
            self.probe_at[n] = (-1, n)
        self.last_writer: dict[str, int] = {}
        for i, _, _, _, tops, _ in self.plan:
            for t in tops:
                self.last_writer[t] = i
        self.pins = input_pins(self)
        self.ran_shapes: dict[str, tuple] | None = None  # input shapes of the last forward that finished

    def _probe_names(self) -> dict[tuple[int, str], str]:
        taken = set(self.free_inputs)
        layer_names = {name for _, name, _, _, _, _ in self.plan}
        out = {}
        for i, name, kind, bottoms, tops, _ in self.plan:
            if is_auto_split(kind, name, bottoms, tops):
                continue
            for t in tops:
                if kind == "Input" and self.legacy_input == name and t not in layer_names:
                    cand = t
                elif len(tops) == 1:
                    cand = name
                else:
                    cand = f"{name}/{t}"
                base, k = cand, 2
                while cand in taken:
                    cand = f"{base}#{k}"
                    k += 1
                taken.add(cand)
                out[(i, t)] = cand
        return out

    # -- description ----------------------------------------------------------------
    def inputs(self) -> list[dict]:
        out = []
        for n in self.input_names:
            shape = [int(d) for d in self.net.blobs[n].data.shape]
            pins = self.pins.get(n, {})
            free = [a for a in range(2, len(shape)) if a not in pins] if len(shape) == 4 else []
            out.append({"name": n, "shape": shape, "free": free,
                        "pinned": {str(a): why for a, why in sorted(pins.items())}})
        return out

    def describe(self) -> dict:
        ins = self.inputs()
        return {
            "inputs": ins,
            "batch": ins[0]["shape"][0] if ins and ins[0]["shape"] else None,
            "phase": self.phase,
            "caffe_version": getattr(self.caffe, "__version__", None),
            "layers": [{"name": n, "type": k, "bottoms": b, "tops": t} for _, n, k, b, t, _ in self.plan],
            "weights_missing": self.weights_missing,
        }

    # -- running ----------------------------------------------------------------------
    def set_batch(self, batch: int) -> None:
        changed = False
        for n in self.input_names:
            blob = self.net.blobs[n]
            shape = tuple(blob.data.shape)
            if shape and shape[0] != batch:
                blob.reshape(*((batch,) + shape[1:]))
                changed = True
        if changed:
            self.net.reshape()

    def feed(self, arrays: dict[str, np.ndarray]) -> None:
        """Copy the inputs into their blobs, reshaping those blobs if needed.

        The rest of the net is not reshaped here: ``Layer::Forward`` reshapes each
        layer as it runs, so a layer that cannot take the new shape aborts on its
        own step, where the parent can name it.
        """
        for n, a in arrays.items():
            if n not in self.input_names:
                raise UserError(f"unknown input {n!r}; the net's inputs are {self.input_names}")
            blob = self.net.blobs[n]
            if tuple(blob.data.shape) != tuple(a.shape):
                blob.reshape(*a.shape)
        for n, a in arrays.items():
            self.net.blobs[n].data[...] = a

    def forward(self, names: list[str], mark=None) -> dict:
        """Run the net once and return the current values of the probes ``names`` (views, not copies,
        except for probes whose blob a later in-place layer overwrites: those are copied when their
        layer has run, the net being run in pieces up to them). Call :meth:`feed` first.

        ``mark(i)`` is called before layer ``i`` runs, and then the layers run one at a time
        (so an abort can be pinned to its layer): the parent asks for this when the input
        shapes changed since the last forward.
        """
        unknown = [n for n in names if n not in self.probe_at]
        if unknown:
            known = sorted(self.probe_at)
            close = difflib.get_close_matches(unknown[0], known, n=3)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            raise UserError(f"{self.source}: the net has no probe {unknown[0]!r} (probe names are layer names, "
                            f"'layer/top' for layers with several tops){hint}")
        net = self.net
        blobs = net.blobs
        last = len(self.plan) - 1
        early = sorted({(self.probe_at[n][0], n) for n in names
                        if self.last_writer.get(self.probe_at[n][1], -1) > self.probe_at[n][0]})
        out: dict = {}
        pos = 0

        def run_to(end: int) -> int:
            if end < pos:
                return pos
            try:
                if mark is None:
                    net._forward(pos, end)
                else:
                    for k in range(pos, end + 1):
                        mark(k)
                        net._forward(k, k)
            except UserError:
                raise
            except Exception as e:  # noqa: BLE001 - only a Python layer's code raises here
                self._python_failed(pos, end, e)
                raise
            return end + 1

        for i, n in early:
            pos = run_to(i)
            out[n] = blobs[self.probe_at[n][1]].data.copy()
        run_to(last)
        return {n: out[n] if n in out else blobs[self.probe_at[n][1]].data for n in names}

    def iter_probes(self, copy: bool):
        """Yield ``(meta, value)`` per top, right after its layer ran. Call :meth:`feed` first."""
        net = self.net
        blobs = net.blobs
        producer: dict[str, str] = {}
        info: dict[str, tuple] = {}
        for n in self.free_inputs:
            v = blobs[n].data
            lay = "NCHW" if v.ndim == 4 else "NC" if v.ndim == 2 else ""
            producer[n] = n
            info[n] = (lay, None, tuple(v.shape))
            meta = {"name": n, "kind": "Input", "layer": n, "blob": n, "inputs": [], "params": {},
                    "layout": lay, "flat_shape": None, "index": -1}
            yield meta, (v.copy() if copy else v)
        for i, name, kind, bottoms, tops, _layer in self.plan:
            if kind == "Python":
                self._run_python(i, name)
            elif kind != "Input":
                net._forward(i, i)
            if is_auto_split(kind, name, bottoms, tops):
                for t in tops:
                    producer[t] = producer.get(bottoms[0], bottoms[0])
                    info[t] = info.get(bottoms[0], ("", None, ()))
                continue
            b_infos = [info.get(b, ("", None, tuple(blobs[b].data.shape))) for b in bottoms]
            params = layer_params(self.lps.get(name), [bi[2] for bi in b_infos], self.phase)
            ins = [producer.get(b, b) for b in bottoms]
            for t in tops:
                v = blobs[t].data
                shape = tuple(int(d) for d in v.shape)
                lay, flat = layout_for(kind, params, shape, b_infos)
                pname = self.probe_names[(i, t)]
                meta = {"name": pname, "kind": kind, "layer": name, "blob": t, "inputs": ins,
                        "params": params, "layout": lay, "flat_shape": list(flat) if flat else None, "index": i}
                yield meta, (v.copy() if copy else v)
                producer[t] = pname
                info[t] = (lay, flat, shape)

    def _run_python(self, i: int, name: str) -> None:
        """Run Python layer ``i``; an exception from its code is a :class:`UserError` naming it
        (in the worker, :class:`PythonLayers` has named it already; a live net has no guard)."""
        try:
            self.net._forward(i, i)
        except UserError:
            raise
        except Exception as e:  # noqa: BLE001 - the user's layer code
            lp = self.lps.get(name)
            desc = python_layer_desc(lp) if lp is not None else f"layer '{name}' (Python)"
            raise UserError(f"{self.source}: {desc}: its forward() raised {error_line(e)}"
                            f"{_user_frame(e.__traceback__)}") from None

    def _python_failed(self, first: int, last: int, e: BaseException) -> None:
        """An exception out of layers ``first..last`` run together: a :class:`UserError` naming
        the Python layer(s) among them (the worker's guard names the very layer already)."""
        py = [name for i, name, kind, _, _, _ in self.plan if kind == "Python" and first <= i <= last]
        if not py:
            return
        lp = self.lps.get(py[0]) if len(py) == 1 else None
        desc = python_layer_desc(lp) if lp is not None else (
            f"layer '{py[0]}' (Python)" if len(py) == 1 else "one of the Python layers " + ", ".join(map(repr, py)))
        raise UserError(f"{self.source}: {desc}: its forward() raised {error_line(e)}"
                        f"{_user_frame(e.__traceback__)}") from None

    def iter_weights(self, copy: bool):
        for _, name, _, _, _, layer in self.plan:
            if len(layer.blobs):
                yield name, [(b.data.copy() if copy else b.data) for b in layer.blobs]


_SPATIAL_FIXING = {"SPP", "ROIPooling", "PSROIPooling"}


def input_pins(session: NetSession) -> dict[str, dict[int, dict]]:
    """Which spatial dims of the 4-D inputs the net cannot change, and the layer that fixes each.

    A dependency walk over the layers: each blob axis records the input axes its
    size follows. A layer whose parameters need a fixed count pins the input axes
    behind it (InnerProduct: the axes it flattens into its weights; Reshape with
    fully explicit dims); a layer whose output size does not follow its input
    (global pooling, InnerProduct, Interp to a given size, SPP) cuts the
    dependency. Batch and channels are not analysed (Caffe reshapes the batch;
    channels are fixed by the first layer's weights). Conservative where unsure:
    an unknown layer passes its inputs' dependencies on, so a net it misjudges
    still gets Caffe's own error, naming the layer that aborted.
    """
    net = session.net
    deps: dict[str, list] = {}
    for n in session.input_names:
        nd = len(net.blobs[n].data.shape)
        deps[n] = [frozenset({(n, a)}) if (nd == 4 and a >= 2) else frozenset() for a in range(nd)]
    pins: dict[str, dict[int, dict]] = {}
    empty: frozenset = frozenset()

    def pin(ds, layer: str, kind: str, why: str) -> None:
        for d in sorted(set().union(*ds)) if ds else ():
            pins.setdefault(d[0], {}).setdefault(d[1], {"layer": layer, "type": kind, "why": why})

    def rank(b: str) -> int:
        return len(net.blobs[b].data.shape)

    def union(ds) -> frozenset:
        return frozenset().union(*ds) if ds else empty

    for _, name, kind, bottoms, tops, layer in session.plan:
        if kind == "Input":
            for t in tops:
                deps.setdefault(t, [empty] * rank(t))
            continue
        lp = session.lps.get(name)
        bd = [deps.get(b) or [empty] * rank(b) for b in bottoms]
        b0 = bd[0] if bd else []
        nd = rank(tops[0]) if tops else 0
        out = None
        if kind == "InnerProduct" and lp is not None and b0:
            axis = lp.inner_product_param.axis % len(b0)
            shape = [int(d) for d in net.blobs[bottoms[0]].data.shape]
            k = int(np.prod(shape[axis:]))
            wshape = tuple(int(d) for d in layer.blobs[0].data.shape) if len(layer.blobs) else None
            dims = "x".join(str(d) for d in shape[axis:])
            pin(b0[axis:], name, kind, f"takes {dims} = {k} values per item at the declared size"
                + (f" (its weights are {wshape})" if wshape else ""))
            out = list(b0[:axis]) + [empty]
        elif kind in ("Convolution", "Deconvolution") and len(b0) >= 2:
            out = [b0[0], empty] + list(b0[2:])
        elif kind == "Pooling" and lp is not None and lp.pooling_param.global_pooling and len(b0) >= 2:
            out = [b0[0], b0[1]] + [empty] * (len(b0) - 2)
        elif kind in _SPATIAL_FIXING and len(b0) >= 2:
            out = [b0[0]] + [empty] * (nd - 1)
        elif kind == "Interp" and lp is not None and len(b0) >= 2:
            p = lp.interp_param
            fixed = p.HasField("height") and p.HasField("width") and p.height > 0 and p.width > 0
            out = [b0[0], b0[1]] + ([empty] * (nd - 2) if fixed else list(b0[2:nd]))
        elif kind == "Reshape" and lp is not None and b0:
            p = lp.reshape_param
            dims = [int(d) for d in p.shape.dim]
            axis = p.axis % (len(b0) + 1) if p.axis < 0 else p.axis
            end = len(b0) if p.num_axes == -1 else axis + p.num_axes
            inner = b0[axis:end]
            if -1 not in dims:
                copied = {j for j, d in enumerate(dims) if d == 0}
                pin([d for j, d in enumerate(inner) if j not in copied], name, kind,
                    f"reshapes to the fixed dims {dims}")
                mid = [inner[j] if dims[j] == 0 and j < len(inner) else empty for j in range(len(dims))]
            else:
                mid = [inner[j] if (d == 0 and j < len(inner)) else union(inner) if d == -1 else empty
                       for j, d in enumerate(dims)]
            out = list(b0[:axis]) + mid + list(b0[end:])
        elif kind == "Flatten" and lp is not None and b0:
            p = lp.flatten_param
            axis = p.axis % len(b0)
            end = p.end_axis % len(b0)
            out = list(b0[:axis]) + [union(b0[axis:end + 1])] + list(b0[end + 1:])
        elif kind == "Crop" and lp is not None and len(bd) == 2:
            axis = lp.crop_param.axis % len(b0)
            out = list(b0[:axis]) + list(bd[1][axis:])
        elif kind == "Permute" and lp is not None and b0:
            out = [b0[o] for o in permute_order(list(lp.permute_param.order), len(b0))]
        if out is None or len(out) != nd:
            same = [d for d in bd if len(d) == nd]
            if same and len(same) == len(bd):
                out = [union([d[a] for d in bd]) for a in range(nd)]
            else:
                out = [union([x for d in bd for x in d])] * nd
        for t in tops:
            deps[t] = out if rank(t) == len(out) else [union(out)] * rank(t)
    return pins


def load_session(caffe, prototxt: str, weights: str | None, phase: str, batch: int | None,
                 stage=lambda s: None, on_parsed=lambda p: None) -> NetSession:
    """Parse and check, build the net, copy the weights, set the batch; each step announced by ``stage``."""
    pb = caffe.proto.caffe_pb2 if hasattr(caffe, "proto") else __import__("caffe.proto.caffe_pb2").proto.caffe_pb2
    phase_id = caffe.TEST if phase == "TEST" else caffe.TRAIN
    known = list(caffe.layer_type_list()) if hasattr(caffe, "layer_type_list") else None
    stage("parse")
    parsed = parse_prototxt(prototxt, pb, phase_id, known)
    model_layers = None
    if weights:
        if weights.endswith((".h5", ".hdf5")):
            if not os.path.isfile(weights):
                raise UserError(f"{weights}: no such weights file")
        else:
            model_layers = scan_caffemodel(weights)
    on_parsed(parsed)
    py_layers = PythonLayers(parsed)
    if py_layers.layers:
        stage("python")
        py_layers.prepare(caffe)
    stage("build")
    net = caffe.Net(prototxt, phase_id)
    missing: list[str] = []
    if weights:
        with_params = [n for n, layer in zip(net._layer_names, net.layers) if len(layer.blobs)]  # noqa: B905
        if model_layers is not None and with_params:
            missing = [n for n in with_params if n not in model_layers]
            if len(missing) == len(with_params):
                held = [n for n, k in model_layers.items() if k] or list(model_layers)
                raise UserError(
                    f"{weights}: shares no layer name with {prototxt}: the net's layers with weights are "
                    f"{', '.join(with_params[:6])}{'...' if len(with_params) > 6 else ''}; the caffemodel holds "
                    f"{', '.join(held[:6])}{'...' if len(held) > 6 else ''} "
                    f"(a caffemodel of another net?)"
                )
        stage("weights")
        net.copy_from(weights)
    session = NetSession(caffe, net, {lp.name: lp for lp in parsed.layers}, phase, parsed.legacy_input, missing)
    session.source = prototxt
    if batch is not None:
        stage("batch")
        session.set_batch(int(batch))
    stage("ready")
    return session


def locate_failure(caffe, parsed: ParsedNet, phase: str, tmpdir: str, mark) -> None:
    """Build each layer alone (its bottoms as Input layers), in order; ``mark(i, name)`` before each.

    If Caffe aborts, the last mark names the layer it refused. Returns normally if
    every layer builds on its own.
    """
    pb = caffe.proto.caffe_pb2
    phase_id = caffe.TEST if phase == "TEST" else caffe.TRAIN
    shapes: dict[str, list[int]] = {}
    path = os.path.join(tmpdir, "layer.prototxt")
    from google.protobuf import text_format

    for i, lp in enumerate(parsed.layers):
        netp = pb.NetParameter()
        netp.name = "layerparity-locate"
        fed = []
        for b in lp.bottom:
            if b in fed or b not in shapes:
                continue
            fed.append(b)
            inp = netp.layer.add()
            inp.name = "input:" + b
            inp.type = "Input"
            inp.top.append(b)
            inp.input_param.shape.add().dim.extend(shapes[b])
        one = netp.layer.add()
        one.CopyFrom(lp)
        del one.blobs[:]
        with open(path, "w") as f:
            f.write(text_format.MessageToString(netp))
        mark(i, lp.name)
        net = caffe.Net(path, phase_id)
        for t in lp.top:
            shapes[t] = [int(d) for d in net.blobs[t].data.shape]
        del net
    return None


def tensorflow_loaded() -> bool:
    return any(m == "tensorflow" or m.startswith("tensorflow.") or m == "keras" for m in sys.modules)

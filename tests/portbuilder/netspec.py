"""The Caffe side of a zoo net: prototxt parsing, blob shapes, seeded weights, caffemodels.

Everything goes through real pycaffe: shapes come from an instantiated
``caffe.Net``, weights are written with ``net.params[...] = ...; net.save()``.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

os.environ.setdefault("GLOG_minloglevel", "2")

#: The scale factor S of BatchNorm's third blob ([mean*S, var*S, S]), != 1 so a port that
#: forgets to divide by it is visibly wrong (Caffe's moving-average factor in real models).
BN_SCALE_FACTOR = 999.982


def _caffe():
    if "caffe" not in sys.modules and "tensorflow" in sys.modules:
        # Measured here: TF 2.21 imported first, then caffe.Net(...) segfaults.
        raise RuntimeError("import caffe before tensorflow in this process (the other order segfaults in caffe.Net)")
    import caffe

    caffe.set_mode_cpu()
    return caffe


def parse(prototxt: str | os.PathLike[str]):
    """The prototxt as a ``caffe_pb2.NetParameter``."""
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format

    net = caffe_pb2.NetParameter()
    text_format.Merge(Path(prototxt).read_text(), net)
    return net


def with_input_shape(prototxt: str | os.PathLike[str], shape: tuple[int, ...], out: str | os.PathLike[str]) -> str:
    """Writes a copy of ``prototxt`` whose one Input blob has ``shape`` (N, C, H, W); returns its path."""
    from google.protobuf import text_format

    net = parse(prototxt)
    inputs = [lp for lp in net.layer if lp.type == "Input"]
    if len(inputs) != 1 and not net.input:
        raise ValueError(f"{prototxt}: expected exactly one Input layer")
    if inputs:
        del inputs[0].input_param.shape[:]
        inputs[0].input_param.shape.add().dim.extend(int(d) for d in shape)
    else:
        del net.input_shape[:]
        del net.input_dim[:]
        net.input_shape.add().dim.extend(int(d) for d in shape)
    Path(out).write_text(text_format.MessageToString(net))
    return os.fspath(out)


@dataclass
class NetInfo:
    """Layers (protobuf), blob shapes (NCHW, from Caffe) and the input blob of one prototxt."""

    prototxt: str
    layers: list = field(default_factory=list)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    input_blob: str = "data"
    param_shapes: dict[str, list[tuple[int, ...]]] = field(default_factory=dict)
    resolved: str = ""  # the prototxt Caffe actually loaded (with the test's input shape)
    #: (layer, bug) -> whether the port still builds with that shape-changing bug (keras_port memo)
    buildable: dict[tuple[str, str], bool] = field(default_factory=dict, repr=False, compare=False)

    def layer(self, name: str):
        for lp in self.layers:
            if lp.name == name:
                return lp
        raise KeyError(name)

    def consumers(self, blob: str) -> list:
        return [lp for lp in self.layers if blob in lp.bottom]


def net_info(prototxt: str | os.PathLike[str]) -> NetInfo:
    caffe = _caffe()
    spec = parse(prototxt)
    net = caffe.Net(os.fspath(prototxt), caffe.TEST)
    shapes = {name: tuple(int(d) for d in b.data.shape) for name, b in net.blobs.items()}
    layers = list(spec.layer)
    inp = next((lp.top[0] for lp in layers if lp.type == "Input"), spec.input[0] if spec.input else "data")
    pshapes = {n: [tuple(int(d) for d in b.data.shape) for b in net.params[n]] for n in net.params}
    return NetInfo(os.fspath(prototxt), layers, shapes, inp, pshapes, os.fspath(prototxt))


def random_input(shape: tuple[int, ...], seed: int, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _he(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    return (rng.standard_normal(shape) * np.sqrt(2.0 / max(fan_in, 1))).astype(np.float32)


#: Caffe's recurrent layers: their second bottom is ``cont``, T x N, 0 where a sequence starts.
RECURRENT = ("LSTM", "RNN")


def sequence_starts(shape: tuple[int, ...]) -> np.ndarray:
    """Caffe's ``cont`` for one sequence per item starting at t = 0: T x N, 0 at t = 0, else 1."""
    cont = np.ones(shape, np.float32)
    cont[0] = 0
    return cont


def _cont_parameters(layers) -> set[str]:
    """Parameter layers whose top is a recurrent layer's ``cont`` bottom (a constant of the deploy net)."""
    conts = {lp.bottom[1] for lp in layers if lp.type in RECURRENT and len(lp.bottom) > 1}
    return {lp.name for lp in layers if lp.type == "Parameter" and set(lp.top) & conts}


def _reindex_parameters(layers) -> dict[str, str]:
    """Parameter layers whose top is a BatchReindex's index bottom -> the blob that BatchReindex
    reorders along its axis 0 (T of CRNN's T x N x C sequence)."""
    layers = list(layers)
    tops = {}  # blob -> the Parameter layer writing it
    for lp in layers:
        if lp.type == "Parameter":
            tops.update({t: lp.name for t in lp.top})
    return {tops[lp.bottom[1]]: lp.bottom[0] for lp in layers
            if lp.type == "BatchReindex" and len(lp.bottom) > 1 and lp.bottom[1] in tops}


def reversed_index(n: int) -> np.ndarray:
    """BatchReindex's index that reverses its axis 0 (a Caffe CRNN's backward direction): n-1, ..., 0."""
    return np.arange(n - 1, -1, -1, dtype=np.float32)


def _gaussian_std(lp) -> float | None:
    """The std of a Convolution / InnerProduct's explicit ``weight_filler { type: "gaussian" }``
    (Faster R-CNN's RPN heads: std 0.01, so the deltas stay O(0.1) and the scores unsaturated)."""
    param = lp.convolution_param if lp.type == "Convolution" else lp.inner_product_param
    if param.HasField("weight_filler") and param.weight_filler.type == "gaussian":
        return float(param.weight_filler.std)
    return None


def make_caffemodel(prototxt: str, out: str | os.PathLike[str], x: np.ndarray, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Seeded weights for every layer of ``prototxt``, written through pycaffe to ``out``.

    Convolution / InnerProduct / Deconvolution: He-scaled normal kernels (N(0, std) where the
    prototxt gives a gaussian weight_filler), small normal biases. BatchNorm: mean and variance
    calibrated on ``x`` (the statistics
    of the layer's actual input; variance floored at a tenth of the layer mean, times U(0.5, 1.5)), stored as
    ``[mean*S, var*S, S]`` with S = BN_SCALE_FACTOR. Scale: gamma U(0.5, 1.5),
    beta N(0, 0.2). PReLU: slopes U(0.05, 0.5). Normalize: 20 + N(0, 1). A Parameter
    layer feeding a recurrent layer's ``cont``: :func:`sequence_starts`; one feeding a
    BatchReindex's index: :func:`reversed_index` (it must be as long as the reordered axis).
    Others: N(0, 0.1).
    Returns the parameters in Caffe's layout.
    """
    caffe = _caffe()
    rng = np.random.default_rng(seed)
    net = caffe.Net(prototxt, caffe.TEST)
    names = list(net._layer_names)
    spec = {lp.name: lp for lp in parse(prototxt).layer}
    cont_layers = _cont_parameters(spec.values())
    reindexed = _reindex_parameters(spec.values())  # Parameter layer -> the blob it reindexes
    for name in names:
        if name not in net.params:
            continue
        layer = net.layer_dict[name]
        blobs = net.params[name]
        t = layer.type
        if t in ("Convolution", "InnerProduct"):
            w = blobs[0].data
            fan_in = int(np.prod(w.shape[1:]))
            std = _gaussian_std(spec[name])
            blobs[0].data[...] = _he(rng, w.shape, fan_in) if std is None else rng.normal(0.0, std, w.shape)
        elif t == "Deconvolution":
            w = blobs[0].data  # (C_in, C_out/g, k, k)
            cin, _, kh, kw = w.shape
            cp = spec[name].convolution_param
            stride = cp.stride[0] if len(cp.stride) else 1
            blobs[0].data[...] = _he(rng, w.shape, max(cin * kh * kw // (stride * stride), 1))
        elif t == "Scale":
            blobs[0].data[...] = rng.uniform(0.5, 1.5, blobs[0].data.shape)
            if len(blobs) > 1:
                blobs[1].data[...] = rng.normal(0.0, 0.2, blobs[1].data.shape)
            continue
        elif t == "PReLU":
            blobs[0].data[...] = rng.uniform(0.05, 0.5, blobs[0].data.shape)
            continue
        elif t == "Normalize":
            blobs[0].data[...] = 20.0 + rng.standard_normal(blobs[0].data.shape)
            continue
        elif t == "BatchNorm":
            continue  # calibrated below
        elif t == "Parameter" and name in cont_layers:
            blobs[0].data[...] = sequence_starts(blobs[0].data.shape)
            continue
        elif t == "Parameter" and name in reindexed:
            n, axis0 = blobs[0].data.shape, net.blobs[reindexed[name]].data.shape[0]
            if n != (axis0,):
                raise ValueError(f"{name}: a BatchReindex index of shape {n} cannot reverse an axis of {axis0}")
            blobs[0].data[...] = reversed_index(axis0)
            continue
        else:
            for b in blobs:
                b.data[...] = rng.normal(0.0, 0.1, b.data.shape)
            continue
        if len(blobs) > 1:
            blobs[1].data[...] = rng.normal(0.0, 0.1, blobs[1].data.shape)

    # Forward one layer at a time, calibrating each BatchNorm on its actual input.
    in_blob = net.inputs[0]
    net.blobs[in_blob].data[...] = x
    for i, name in enumerate(names):
        layer = net.layer_dict[name]
        if layer.type == "BatchNorm":
            bottom = net.blobs[net.bottom_names[name][0]].data
            axes = (0, 2, 3) if bottom.ndim == 4 else (0,)
            mean = bottom.mean(axis=axes)
            var = bottom.var(axis=axes)
            # Floor near-dead channels at a tenth of the layer's mean variance (trained nets
            # rarely divide by ~0), then perturb: var*U(0.5, 1.5).
            var = (var + 0.1 * var.mean() + 1e-6) * rng.uniform(0.5, 1.5, mean.shape)
            s = BN_SCALE_FACTOR
            blobs = net.params[name]
            blobs[0].data[...] = mean * s
            blobs[1].data[...] = var * s
            blobs[2].data[...] = s
        net._forward(i, i)
    net.save(os.fspath(out))
    return {n: [b.data.copy() for b in net.params[n]] for n in net.params}


def read_params(prototxt: str, caffemodel: str) -> dict[str, list[np.ndarray]]:
    """Every layer's parameter blobs, in Caffe's layout, read through pycaffe."""
    caffe = _caffe()
    net = caffe.Net(os.fspath(prototxt), os.fspath(caffemodel), caffe.TEST)
    return {n: [b.data.copy() for b in net.params[n]] for n in net.params}


def caffe_forward(prototxt: str, caffemodel: str, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every blob after a plain Caffe forward (final values; in-place blobs hold their last writer)."""
    caffe = _caffe()
    net = caffe.Net(os.fspath(prototxt), os.fspath(caffemodel), caffe.TEST)
    net.blobs[net.inputs[0]].reshape(*x.shape)
    net.reshape()
    net.blobs[net.inputs[0]].data[...] = x
    net.forward()
    return {k: v.data.copy() for k, v in net.blobs.items()}


def caffe_layer_outputs(prototxt: str, caffemodel: str, x: np.ndarray) -> dict[str, np.ndarray]:
    """Each layer's first top right after that layer ran (in-place chains give one value per layer)."""
    caffe = _caffe()
    net = caffe.Net(os.fspath(prototxt), os.fspath(caffemodel), caffe.TEST)
    net.blobs[net.inputs[0]].data[...] = x
    out = {}
    for i, name in enumerate(net._layer_names):
        net._forward(i, i)
        tops = net.top_names[name]
        if tops:
            out[name] = net.blobs[tops[0]].data.copy()
    return out

"""Hostile inputs: every case must end in a clear error, never a crash, a hang, a
killed process or a silent pass.

"Clear" means an ``layerparity.errors.InputError`` subclass (or, on the command
line, exit status 2 with one line on stderr) whose message names the file or the
layer and what is wrong. Everything runs against real Caffe (in its worker
process), real TensorFlow and the real engine; nothing is mocked.

The list of cases, with what each proves, is in docs/reliability.md.
"""

from __future__ import annotations

import html.parser
import io
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from layerparity.errors import (
    ArchiveError,
    CaffeError,
    InputDataError,
    InputError,
    MappingError,
    ModelLoadError,
)
from layerparity.trace import Probe, Trace

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable

# A hang is a failure too: every test here gets a generous wall-clock guard (not a
# speed claim; a healthy case takes a few seconds at most).
HANG_GUARD_S = 240


@pytest.fixture(autouse=True)
def _hang_guard():
    def boom(signum, frame):
        raise TimeoutError(f"hostile case still running after {HANG_GUARD_S}s: a hang")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(HANG_GUARD_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def esc(s: object) -> str:
    return re.escape(str(s))


# -- a small real Caffe net, its weights, and a Keras model -----------------------------

TINY = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool1" top: "fc" inner_product_param { num_output: 5 } }
"""

TWO_INPUTS = """name: "two"
layer { name: "a" type: "Input" top: "a" input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }
layer { name: "b" type: "Input" top: "b" input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }
layer { name: "sum" type: "Eltwise" bottom: "a" bottom: "b" top: "sum" }
"""


def _write(path, text: str | bytes) -> str:
    mode = "wb" if isinstance(text, bytes) else "w"
    with open(path, mode) as f:
        f.write(text)
    return os.fspath(path)


def _caffemodel(prototxt: str, out: str, seed: int = 0) -> str:
    import caffe

    net = caffe.Net(prototxt, caffe.TEST)
    rng = np.random.default_rng(seed)
    for name in net.params:
        for b in net.params[name]:
            b.data[...] = rng.standard_normal(b.data.shape).astype(np.float32) * 0.1
    net.save(out)
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny")
    proto = _write(d / "tiny.prototxt", TINY)
    weights = _caffemodel(proto, os.fspath(d / "tiny.caffemodel"))
    return proto, weights


@pytest.fixture(scope="module")
def tiny_backend(tiny):
    from layerparity.backends.caffe import CaffeBackend

    with CaffeBackend(*tiny) as cb:
        yield cb


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    import keras

    d = tmp_path_factory.mktemp("keras")
    x = keras.Input((8, 8, 3), name="data")
    y = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(x)
    y = keras.layers.ReLU(name="relu1")(y)
    model = keras.Model(x, y, name="tinyport")
    path = os.fspath(d / "tiny.keras")
    model.save(path)
    h5 = os.fspath(d / "tiny.h5")
    model.save(h5)
    return path, h5


@pytest.fixture(scope="module")
def tf_backend(keras_file):
    from layerparity.backends.tensorflow import load_tf

    b = load_tf(keras_file[0])
    yield b
    b.close()


def _caffe(proto, weights=None, **kw):
    from layerparity.backends.caffe import CaffeBackend

    return CaffeBackend(proto, weights, **kw)


# == 1. prototxt ====================================================================


PROTOTXT_CASES = [
    ("syntax", TINY.replace('top: "conv1"\n', 'top: "conv1"\n  kernel_size 3 }}\n', 1), [r":\d+"]),
    ("unknown_type", TINY.replace('type: "Pooling"', 'type: "Poolinng"'), ["pool1", "Poolinng"]),
    ("missing_bottom", TINY.replace('bottom: "pool1"', 'bottom: "pool9"'), ["fc", "pool9"]),
    ("cycle", TINY.replace('name: "conv1" type: "Convolution" bottom: "data"',
                           'name: "conv1" type: "Convolution" bottom: "fc"'), ["conv1", "fc"]),
    ("duplicate_top", TINY.replace('top: "fc"', 'top: "data"'), ["fc", "data"]),
    ("duplicate_name", TINY.replace('name: "fc"', 'name: "conv1"'), ["conv1"]),
    ("empty", "", []),
    ("no_layers", 'name: "nothing"\n', []),
    ("binary", b"\x08\x96\x01\x00\x00garbage\xff\xfe", []),
    ("not_utf8", b'name: "\xff\xfe"\n', []),
]


@pytest.mark.parametrize("case, text, must_name", [pytest.param(*c, id=c[0]) for c in PROTOTXT_CASES])
def test_prototxt_rejected(tmp_path, case, text, must_name):
    proto = _write(tmp_path / f"{case}.prototxt", text)
    with pytest.raises(CaffeError, match=esc(proto)) as ei:
        _caffe(proto)
    for pattern in must_name:
        assert re.search(pattern if pattern.startswith(":") else esc(pattern), str(ei.value)), str(ei.value)


def test_prototxt_caffe_abort_names_the_layer(tmp_path):
    """Parses and validates, but Caffe's CHECK aborts while building it: the worker dies, we don't."""
    text = TINY + (
        'layer { name: "join" type: "Concat" bottom: "data" bottom: "pool1" top: "join" }\n'
    )
    proto = _write(tmp_path / "abort.prototxt", text)
    with pytest.raises(CaffeError, match=esc(proto)) as ei:
        _caffe(proto)
    assert "join" in str(ei.value)
    # and this process is fine: a good net still loads afterwards
    good = _write(tmp_path / "good.prototxt", TINY)
    with _caffe(good) as cb:
        assert [s.name for s in cb.input_specs()] == ["data"]


def test_prototxt_missing_file(tmp_path):
    missing = os.fspath(tmp_path / "nope.prototxt")
    with pytest.raises(CaffeError, match=esc(missing)):
        _caffe(missing)


def test_prototxt_and_caffemodel_swapped(tiny):
    proto, weights = tiny
    with pytest.raises(CaffeError, match=esc(weights)):
        _caffe(weights, proto)


# == 2. caffemodel ==================================================================


def _model_bytes(tiny) -> bytes:
    with open(tiny[1], "rb") as f:
        return f.read()


@pytest.mark.parametrize("case", ["truncated", "random", "empty", "text"])
def test_caffemodel_unreadable(tmp_path, tiny, case):
    proto, _ = tiny
    data = _model_bytes(tiny)
    payload = {
        "truncated": data[: len(data) // 2],
        "random": np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        "empty": b"",
        "text": b"just some notes, not weights\n",
    }[case]
    weights = _write(tmp_path / f"{case}.caffemodel", payload)
    with pytest.raises(CaffeError, match=esc(weights)):
        _caffe(proto, weights)


def test_caffemodel_of_another_net_shapes_do_not_fit(tmp_path, tiny):
    """Same layer names, other shapes: Caffe's copy_from CHECK aborts; we name the layer."""
    proto, _ = tiny
    other = _write(tmp_path / "other.prototxt", TINY.replace("num_output: 4", "num_output: 6"))
    weights = _caffemodel(other, os.fspath(tmp_path / "other.caffemodel"))
    with pytest.raises(CaffeError, match=esc(weights)) as ei:
        _caffe(proto, weights)
    assert "conv1" in str(ei.value)


def test_caffemodel_of_another_net_no_common_layer(tmp_path, tiny):
    proto, _ = tiny
    other = _write(tmp_path / "renamed.prototxt",
                   TINY.replace('"conv1"', '"c1"').replace('"fc"', '"f"').replace('"relu1"', '"r1"'))
    weights = _caffemodel(other, os.fspath(tmp_path / "renamed.caffemodel"))
    with pytest.raises(CaffeError, match=esc(weights)):
        _caffe(proto, weights)


def test_caffemodel_missing(tmp_path, tiny):
    missing = os.fspath(tmp_path / "nope.caffemodel")
    with pytest.raises(CaffeError, match=esc(missing)):
        _caffe(tiny[0], missing)


# == 3. TF models ===================================================================


def _load_tf(path):
    from layerparity.backends.tensorflow import load_tf

    return load_tf(path)


def test_tf_model_missing(tmp_path):
    missing = os.fspath(tmp_path / "nope.keras")
    with pytest.raises(ModelLoadError, match=esc(missing)):
        _load_tf(missing)


@pytest.mark.parametrize("case", ["prototxt", "text", "empty_dir", "npy"])
def test_tf_model_wrong_kind(tmp_path, tiny, case):
    if case == "prototxt":
        path = tiny[0]
    elif case == "text":
        path = _write(tmp_path / "model.txt", "hello\n")
    elif case == "empty_dir":
        path = os.fspath(tmp_path / "saved")
        os.makedirs(path)
    else:
        path = os.fspath(tmp_path / "model.npy")
        np.save(path, np.zeros(3))
    with pytest.raises(ModelLoadError, match=esc(path)):
        _load_tf(path)


@pytest.mark.parametrize("case", ["keras_random", "keras_truncated", "h5_truncated", "pb_random",
                                  "tflite_random", "savedmodel_corrupt"])
def test_tf_model_corrupt(tmp_path, keras_file, case):
    rnd = np.random.default_rng(3).integers(0, 256, 2048, dtype=np.uint8).tobytes()
    if case == "keras_random":
        path = _write(tmp_path / "m.keras", rnd)
    elif case == "keras_truncated":
        with open(keras_file[0], "rb") as f:
            data = f.read()
        path = _write(tmp_path / "m.keras", data[: len(data) // 2])
    elif case == "h5_truncated":
        with open(keras_file[1], "rb") as f:
            data = f.read()
        path = _write(tmp_path / "m.h5", data[: len(data) // 2])
    elif case == "pb_random":
        path = _write(tmp_path / "frozen.pb", rnd)
    elif case == "tflite_random":
        path = _write(tmp_path / "m.tflite", rnd)
    else:
        path = os.fspath(tmp_path / "sm")
        os.makedirs(os.path.join(path, "variables"))
        _write(os.path.join(path, "saved_model.pb"), rnd)
    with pytest.raises(ModelLoadError, match=esc(path)):
        _load_tf(path)


# == 4. inputs ======================================================================

BAD_INPUTS = {
    "wrong_shape": (np.zeros((1, 4, 8, 8), np.float32), r"shape"),
    "wrong_rank": (np.zeros((3, 8, 8), np.float32), r"rank"),
    "string_dtype": (np.full((1, 3, 8, 8), "x"), r"dtype"),
    "object_dtype": (np.full((1, 3, 8, 8), None, dtype=object), r"dtype"),
    "nan": (np.where(np.arange(192).reshape(1, 3, 8, 8) == 5, np.nan, 0).astype(np.float32), r"NaN"),
    "inf": (np.where(np.arange(192).reshape(1, 3, 8, 8) == 5, np.inf, 0).astype(np.float32), r"Inf"),
    "empty": (np.zeros((0, 3, 8, 8), np.float32), r"empty"),
    "complex": (np.zeros((1, 3, 8, 8), np.complex64), r"complex"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_caffe_input_rejected(tiny_backend, case):
    x, what = BAD_INPUTS[case]
    with pytest.raises(InputDataError, match=r"'data'") as ei:
        tiny_backend.capture(x)
    assert re.search(what, str(ei.value)), str(ei.value)


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_tf_input_rejected(tf_backend, case):
    x, what = BAD_INPUTS[case]
    with pytest.raises(InputDataError, match=r"'data'") as ei:
        tf_backend.capture(x)
    assert re.search(what, str(ei.value)), str(ei.value)


def test_caffe_backend_survives_bad_inputs(tiny_backend):
    """After every rejection above, the same backend still captures a good input."""
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    t = tiny_backend.capture(x)
    assert "fc" in t and t["fc"].shape == (1, 5)


def test_input_unknown_and_missing_names(tiny_backend):
    x = np.zeros((1, 3, 8, 8), np.float32)
    with pytest.raises(InputDataError, match=r"'image'"):
        tiny_backend.capture({"image": x})


def test_input_batch_mismatch_between_inputs(tmp_path):
    proto = _write(tmp_path / "two.prototxt", TWO_INPUTS)
    a = np.zeros((1, 3, 4, 4), np.float32)
    b = np.zeros((2, 3, 4, 4), np.float32)
    with _caffe(proto) as cb:
        with pytest.raises(InputDataError, match=r"batch") as ei:
            cb.capture({"a": a, "b": b})
    assert "'a'" in str(ei.value) or "'b'" in str(ei.value), str(ei.value)


ROIS_BESIDE_IMAGE = """name: "rois"
layer { name: "a" type: "Input" top: "a" input_param { shape { dim: 1 dim: 3 dim: 4 dim: 4 } } }
layer { name: "r" type: "Input" top: "r" input_param { shape { dim: 2 dim: 5 } } }
layer { name: "a2" type: "Power" bottom: "a" top: "a2" power_param { scale: 2 } }
layer { name: "r2" type: "Power" bottom: "r" top: "r2" power_param { scale: 2 } }
"""


def test_inputs_with_their_declared_leading_sizes_need_not_agree(tmp_path):
    """R-FCN/Faster R-CNN nets declare rois R x 5 beside a 1 x C x H x W image: axis 0 is not a
    batch there, so inputs given exactly as declared are taken; once one is resized (batched),
    the sizes must agree again."""
    proto = _write(tmp_path / "rois.prototxt", ROIS_BESIDE_IMAGE)
    a, r = np.ones((1, 3, 4, 4), np.float32), np.ones((2, 5), np.float32)
    with _caffe(proto) as cb:
        t = cb.capture({"a": a, "r": r})
        assert t["a2"].shape == (1, 3, 4, 4) and t["r2"].shape == (2, 5)
        with pytest.raises(InputDataError, match=r"disagree on the batch size: 'a' has 3, 'r' has 2"):
            cb.capture({"a": np.ones((3, 3, 4, 4), np.float32), "r": r})


def test_input_batch_mismatch_between_inputs_tf():
    import keras

    from layerparity.backends.tensorflow import load_tf

    a_in = keras.Input((4, 4, 3), name="a")
    b_in = keras.Input((4, 4, 3), name="b")
    model = keras.Model([a_in, b_in], keras.layers.Add(name="sum")([a_in, b_in]))
    with load_tf(model) as tb:
        with pytest.raises(InputDataError, match=r"batch"):
            tb.capture({"a": np.zeros((1, 3, 4, 4), np.float32), "b": np.zeros((2, 3, 4, 4), np.float32)})


def test_input_file_wrong_kind_cli(tmp_path, tiny, keras_file):
    """CLI: an input file that is not an array: exit 2, one line naming the file."""
    bad = _write(tmp_path / "input.npy", b"not numpy at all")
    r = _cli("compare", "--caffe-model", tiny[0], "--caffe-weights", tiny[1], "--tf-model", keras_file[0],
             "--input", bad)
    _assert_cli_usage_error(r, bad)


# == 5. mappings ====================================================================


def _traces(names, tf_names=None, offset_at=None, value_shape=(1, 6)):
    """A Caffe and a TF trace of 2-D (NC) probes that pair by name."""
    tf_names = tf_names or names
    c = Trace("caffe", "c.prototxt")
    t = Trace("tensorflow", "t.keras")
    rng = np.random.default_rng(0)
    prev_c = prev_t = None
    for i, (n, m) in enumerate(zip(names, tf_names, strict=True)):
        v = rng.standard_normal(value_shape).astype(np.float32)
        c.add(Probe(n, kind="Input" if i == 0 else "InnerProduct", layout="NC", value=v,
                    inputs=[prev_c] if prev_c else []))
        t.add(Probe(m, kind="InputLayer" if i == 0 else "Dense", layout="NC",
                    value=v + (0.5 if i == offset_at else 0.0), inputs=[prev_t] if prev_t else []))
        prev_c, prev_t = n, m
    return c, t


def test_mapping_duplicate_key_json(tmp_path):
    from layerparity.alignment import load_mapping

    path = _write(tmp_path / "m.json", '{"fc1": "dense_1", "fc1": "dense_2"}')
    with pytest.raises(MappingError, match=esc(path)) as ei:
        load_mapping(path)
    assert "fc1" in str(ei.value)


def test_mapping_duplicate_key_yaml(tmp_path):
    from layerparity.alignment import load_mapping

    path = _write(tmp_path / "m.yaml", "fc1: dense_1\nconv1: c1\nfc1: dense_2\n")
    with pytest.raises(MappingError, match=esc(path)) as ei:
        load_mapping(path)
    assert "fc1" in str(ei.value)


def test_mapping_duplicate_tf_name(tmp_path):
    from layerparity.alignment import load_mapping

    path = _write(tmp_path / "m.yaml", "fc1: dense\nfc2: dense\n")
    with pytest.raises(MappingError, match=esc(path)) as ei:
        load_mapping(path)
    assert "dense" in str(ei.value)


@pytest.mark.parametrize("text", ["[1, 2]", "fc1: [a, b]\n", "{not json", "fc1: {x: 1}\n", "? [a]\n: b\n"],
                         ids=["list", "list_value", "bad_json", "dict_value", "list_key"])
def test_mapping_malformed(tmp_path, text):
    from layerparity.alignment import load_mapping

    path = _write(tmp_path / "m.yaml", text)
    with pytest.raises(MappingError, match=esc(path)):
        load_mapping(path)


def test_mapping_unknown_caffe_layer(tmp_path):
    from layerparity.compare import compare_traces

    c, t = _traces(["data", "fc1", "fc2"], ["data", "dense_a", "dense_b"])
    path = _write(tmp_path / "m.yaml", "fc1: dense_a\nfc9: dense_b\n")
    with pytest.raises(MappingError, match=esc(path)) as ei:
        compare_traces(c, t, mapping=path)
    assert "fc9" in str(ei.value)


def test_mapping_unknown_tf_layer(tmp_path):
    from layerparity.compare import compare_traces

    c, t = _traces(["data", "fc1", "fc2"], ["data", "dense_a", "dense_b"])
    path = _write(tmp_path / "m.yaml", "fc1: dense_a\nfc2: dense_zzz\n")
    with pytest.raises(MappingError, match=esc(path)) as ei:
        compare_traces(c, t, mapping=path)
    assert "dense_zzz" in str(ei.value) and "fc2" in str(ei.value)


def test_mapping_bad_file_cli(tmp_path, tiny, keras_file):
    path = _write(tmp_path / "m.json", '{"fc1": "a", "fc1": "b"}')
    x = os.fspath(tmp_path / "x.npy")
    np.save(x, np.zeros((1, 3, 8, 8), np.float32))
    r = _cli("compare", "--caffe-model", tiny[0], "--caffe-weights", tiny[1], "--tf-model", keras_file[0],
             "--input", x, "--mapping", path)
    _assert_cli_usage_error(r, path)


# == 6. archives ====================================================================


def _small_trace(names=("data", "conv1")) -> Trace:
    t = Trace("caffe", "tiny.prototxt", meta={"batch": 1})
    x = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    t.inputs["data"] = x
    prev = None
    for n in names:
        t.add(Probe(n, kind="Convolution", layout="NCHW", value=x + len(n), inputs=[prev] if prev else []))
        prev = n
    return t


def _members(path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


def _rezip(path, members) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for n, b in members:
            zf.writestr(n, b)


def _npy(arr, allow_pickle=False) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def _manifest_of(path) -> dict:
    raw = dict(_members(path))["manifest.npy"]
    return json.loads(np.load(io.BytesIO(raw)).tobytes().decode("utf-8"))


def _with_manifest(path, edit) -> None:
    members = _members(path)
    m = _manifest_of(path)
    edit(m)
    raw = json.dumps(m).encode("utf-8")
    members = [(n, _npy(np.frombuffer(raw, np.uint8)) if n == "manifest.npy" else b) for n, b in members]
    _rezip(path, members)


def _saved(tmp_path, name="t.npz", **kw) -> str:
    path = os.fspath(tmp_path / name)
    _small_trace(**kw).save(path)
    return path


def _set_probe(i, key, value):
    def edit(m):
        m["probes"][i][key] = value

    return edit


MANIFEST_CASES = [
    ("shape_lies", _set_probe(1, "shape", [1, 2, 3, 5]), "conv1"),
    ("missing_array", _set_probe(1, "key", "a99"), "conv1"),
    ("newer_version", lambda m: m.update(version=2), "version"),
    ("other_format", lambda m: m.update(format="something-else"), "format"),
    ("probes_not_list", lambda m: m.update(probes={"x": 1}), "probes"),
    ("duplicate_probe_names", lambda m: m["probes"].append(dict(m["probes"][0])), "data"),
    ("infinite_shape", _set_probe(1, "shape", [float("inf")]), "conv1"),
    ("huge_flat_shape", _set_probe(1, "flat_shape", [1e400]), "conv1"),
    ("name_not_string", _set_probe(1, "name", ["conv1"]), "conv1"),
    ("inputs_not_strings", _set_probe(1, "inputs", [{"a": 1}]), "conv1"),
]


@pytest.mark.parametrize("case, edit, must_name", [pytest.param(*c, id=c[0]) for c in MANIFEST_CASES])
def test_archive_tampered_manifest(tmp_path, case, edit, must_name):
    path = _saved(tmp_path)
    _with_manifest(path, edit)
    with pytest.raises(ArchiveError, match=esc(path)) as ei:
        Trace.load(path)
    assert must_name in str(ei.value), str(ei.value)


@pytest.mark.parametrize("case", ["random", "empty", "bare_npy", "manifest_not_json", "no_manifest",
                                  "member_not_npy", "manifest_member_not_npy", "huge_array_header"])
def test_archive_unreadable(tmp_path, case):
    path = _saved(tmp_path)
    members = _members(path)
    if case == "random":
        _write(path, np.random.default_rng(1).integers(0, 256, 1000, dtype=np.uint8).tobytes())
    elif case == "empty":
        _write(path, b"")
    elif case == "bare_npy":
        _write(path, _npy(np.zeros(3)))
    elif case == "manifest_not_json":
        _rezip(path, [(n, _npy(np.frombuffer(b"{nope", np.uint8)) if n == "manifest.npy" else b) for n, b in members])
    elif case == "no_manifest":
        _rezip(path, [(n, b) for n, b in members if n != "manifest.npy"])
    elif case == "member_not_npy":
        # the manifest points at a member that numpy hands back as raw bytes
        _rezip(path, [(n, b) for n, b in members] + [("raw", b"\x00" * 96)])
        _with_manifest(path, _set_probe(1, "key", "raw"))
    elif case == "manifest_member_not_npy":
        # manifest.npy holding the raw JSON (no .npy header): numpy hands it back as bytes
        raw = json.dumps(_manifest_of(path)).encode("utf-8")
        _rezip(path, [(n, raw if n == "manifest.npy" else b) for n, b in members])
    else:  # an array member whose header claims 2**40 floats: refused, not allocated
        hdr = "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,), }".ljust(118) + "\n"
        bomb = b"\x93NUMPY\x01\x00" + len(hdr).to_bytes(2, "little") + hdr.encode() + b"\x00" * 64
        _rezip(path, [(n, bomb if n == "a2.npy" else b) for n, b in members])
    with pytest.raises(ArchiveError, match=esc(path)):
        Trace.load(path)


class _Evil:
    """Unpickling this creates a marker file: proof that a payload ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("where", ["array", "manifest", "inputs"])
def test_archive_pickle_payload_is_refused_and_never_run(tmp_path, where):
    marker = os.fspath(tmp_path / "PWNED")
    # sanity: the payload does run when unpickled, so its absence below means something
    pickle.loads(pickle.dumps(_Evil(marker))).close()
    assert os.path.exists(marker)
    os.remove(marker)

    path = _saved(tmp_path)
    evil = _npy(np.array([_Evil(marker)], dtype=object), allow_pickle=True)
    target = {"array": "a2.npy", "manifest": "manifest.npy", "inputs": "a0.npy"}[where]
    _rezip(path, [(n, evil if n == target else b) for n, b in _members(path)])
    with pytest.raises(ArchiveError, match=esc(path)):
        Trace.load(path)
    with pytest.raises(ArchiveError, match=esc(path)):
        from layerparity.trace import ArchiveReader

        with ArchiveReader(path) as r:
            r.inputs()
            list(r.iter_probes())
    assert not os.path.exists(marker), "the pickle payload was executed"


PATHLIKE = ["../../x", "../../../../tmp/lp-escape", "/etc/passwd", "..\\..\\win", "a/../../b", "./.", "~/.bashrc"]


def test_archive_pathlike_names_are_data(tmp_path):
    work = tmp_path / "deep" / "er"
    work.mkdir(parents=True)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    t = Trace("caffe", "../../source.prototxt")
    for i, n in enumerate(PATHLIKE):
        t.add(Probe(n, kind="Convolution", blob=n, layer=n, inputs=PATHLIKE[:i], value=np.full((1, 2), i, np.float32)))
    t.inputs["../../input"] = np.zeros((1, 2), np.float32)
    path = os.fspath(work / "t.npz")
    t.save(path)
    back = Trace.load(path)
    after = sorted(str(p) for p in tmp_path.rglob("*"))
    assert set(after) - set(before) == {path}, "saving/loading wrote something besides the archive"
    assert not os.path.exists("/tmp/lp-escape")
    assert back.names == PATHLIKE
    assert list(back.inputs) == ["../../input"]
    for i, n in enumerate(PATHLIKE):
        assert back[n].layer == n and back[n].blob == n and back[n].inputs == PATHLIKE[:i]
        assert back[n].value[0, 0] == i
    # every member of the zip has a generated name, none derived from a probe name
    assert all(re.fullmatch(r"(manifest|a\d+)\.npy", n) for n, _ in _members(path))


@pytest.mark.parametrize("value", [np.float32(3.5), np.zeros((0, 4), np.float32), np.zeros((2, 0, 3), np.int8),
                                   np.ones((1, 2, 3), np.float16)[:, ::-1]],
                         ids=["scalar", "empty", "empty_int8", "non_contiguous"])
def test_archive_odd_shapes_round_trip(tmp_path, value):
    """0-d (a scalar TF output, a loss), empty and non-contiguous values save and load as they are."""
    t = Trace("tensorflow", "m.keras")
    t.add(Probe("out", kind="Mean", value=value))
    path = os.fspath(tmp_path / "odd.npz")
    t.save(path)
    back = Trace.load(path)["out"]
    assert back.value.shape == np.asarray(value).shape and back.value.dtype == np.asarray(value).dtype
    assert np.array_equal(back.value, value)


def test_archive_zip_member_with_traversal_name(tmp_path):
    """A member called ../../evil.npy is never extracted anywhere."""
    sub = tmp_path / "a" / "b"
    sub.mkdir(parents=True)
    path = _saved(sub)
    members = _members(path) + [("../../evil.npy", _npy(np.zeros(2))), ("/abs/evil.npy", _npy(np.zeros(2)))]
    _rezip(path, members)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    t = Trace.load(path)
    assert t.names == ["data", "conv1"]
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


def test_is_archive_never_raises(tmp_path):
    from layerparity.trace import is_archive

    good = _saved(tmp_path)
    assert is_archive(good)
    # a zip whose only member uses a compression method zipfile does not implement
    odd = os.fspath(tmp_path / "odd.npz")
    _rezip(odd, [("manifest.npy", b"x")])
    data = bytearray(open(odd, "rb").read())
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):
        i = data.find(sig)
        off = i + (8 if sig == b"PK\x03\x04" else 10)
        data[off:off + 2] = (99).to_bytes(2, "little")  # AES-encrypted / unknown method
    _write(odd, bytes(data))
    assert is_archive(odd) in (True, False)
    with pytest.raises(ArchiveError, match=esc(odd)):
        Trace.load(odd)
    # a zip whose member name is not valid UTF-8 but flagged as UTF-8
    bad_name = os.fspath(tmp_path / "badname.npz")
    _rezip(bad_name, [("manifest.npy", b"x")])
    data = bytearray(open(bad_name, "rb").read())
    data = data.replace(b"manifest.npy", b"\xffanifest.npy")
    for sig, flag_off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        i = data.find(sig)
        flags = int.from_bytes(data[i + flag_off:i + flag_off + 2], "little") | 0x800
        data[i + flag_off:i + flag_off + 2] = flags.to_bytes(2, "little")
    _write(bad_name, bytes(data))
    assert is_archive(bad_name) is False
    with pytest.raises(ArchiveError, match=esc(bad_name)):
        Trace.load(bad_name)


def test_archive_dtype_lie_reaches_no_engine(tmp_path):
    """A manifest whose dtype disagrees with the stored array is refused (found by fuzz/targets/diff.py)."""
    from layerparity.compare import compare_traces

    c, t = _traces(["data", "fc1", "fc2"])
    cp, tp = os.fspath(tmp_path / "c.npz"), os.fspath(tmp_path / "t.npz")
    c.save(cp)
    t.save(tp)
    _with_manifest(tp, _set_probe(1, "dtype", "flat:NHWC"))
    with pytest.raises(ArchiveError, match=esc(tp)) as ei:
        compare_traces(cp, tp)
    assert "fc1" in str(ei.value)


HOSTILE_PARAMS = {
    "minus_inf": [float("-inf"), 3], "strings": ["a", "b"], "nested": [[1, 2]], "none": [None],
    "nan": float("nan"), "dict": {"h": 3}, "huge_int": 10**40, "int32_max": [2, 2**31 - 1], "zero": [0, 0],
    "negative": [-3, -3],
}


@pytest.mark.parametrize("fields", [("kernel_size", "stride", "pad"), ("stride",)], ids=["all", "stride"])
@pytest.mark.parametrize("layer", ["conv1", "pool1"])
@pytest.mark.parametrize("bad", list(HOSTILE_PARAMS.values()), ids=list(HOSTILE_PARAMS))
def test_archive_hostile_params_do_not_crash_diagnosis(tmp_path, bad, layer, fields):
    """Params are data from the archive: a kernel_size of [-inf, 3] or a stride of 2**31-1 (found by
    fuzz/targets/diff.py) must not crash a diagnosis rule nor make it allocate what the blob does not
    hold (the engine reports either as "a layerparity bug")."""
    import warnings

    from layerparity.compare import compare_traces

    sys.path.insert(0, ROOT)
    from fuzz.targets.diff import _pair

    c, t = _pair()
    for p in c:
        if p.name == layer:
            p.params = {**p.params, **{f: bad for f in fields}}
    tf_name = "conv1" if layer == "conv1" else "pool1"
    probes = [Probe(**{**q.__dict__, "value": q.value + 0.25}) if q.name == tf_name else q for q in t]
    t = Trace("tensorflow", t.source, probes, inputs=t.inputs)
    cp, tp = os.fspath(tmp_path / "c.npz"), os.fspath(tmp_path / "t.npz")
    c.save(cp)
    t.save(tp)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rep = compare_traces(cp, tp)
    bugs = [str(w.message) for w in caught if "layerparity bug" in str(w.message)]
    assert not bugs, bugs
    assert rep.first_divergence is not None
    assert rep.first_divergence.caffe_layer in (("conv1", "relu1") if layer == "conv1" else ("pool1",))


def test_archive_tampered_cli_diff(tmp_path):
    caffe_path = _saved(tmp_path, "c.npz")
    tf = _small_trace()
    tf.framework = "tensorflow"
    tf_path = os.fspath(tmp_path / "t.npz")
    tf.save(tf_path)
    _with_manifest(caffe_path, _set_probe(1, "shape", [9, 9]))
    r = _cli("diff", caffe_path, tf_path)
    _assert_cli_usage_error(r, caffe_path)
    _with_manifest(caffe_path, lambda m: m.update(version=99))
    r = _cli("diff", caffe_path, tf_path)
    _assert_cli_usage_error(r, caffe_path)
    assert "version" in r.stderr


# == 7. report content ================================================================

XSS = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "javascript:alert(1)",
       "</td></tr></table><iframe src=//evil>", "<svg/onload=alert(1)>", "';alert(1);//"]


class _Tags(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.script_text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.script_text.append(data)


def _parse(page: str) -> _Tags:
    p = _Tags()
    p.feed(page)
    p.close()
    return p


def _report(names, offset_at=None, tf_names=None):
    from layerparity.compare import compare_traces

    c, t = _traces(names, tf_names=tf_names, offset_at=offset_at)
    return compare_traces(c, t)


def test_report_html_escapes_hostile_names():
    from layerparity.report import render_html

    benign = render_html(_report(["data"] + [f"layer{i}" for i in range(len(XSS))], offset_at=2))
    page = render_html(_report(["data", *XSS], offset_at=2))
    for s in XSS:
        if "<" in s or '"' in s:
            assert s not in page, f"unescaped in the HTML report: {s}"
    # inert: the hostile page has exactly the markup of the benign one
    hostile_tags, benign_tags = _parse(page), _parse(benign)
    assert [t for t, _ in hostile_tags.tags] == [t for t, _ in benign_tags.tags]
    for tag, attrs in hostile_tags.tags:
        assert tag not in ("img", "iframe"), tag
        for a, v in attrs.items():
            assert not a.startswith("on"), (tag, a, v)
            assert not (v or "").strip().lower().startswith("javascript:"), (tag, a, v)
    assert hostile_tags.script_text == benign_tags.script_text
    # the names are still there, as text
    text = re.sub(r"<[^>]*>", "", page)
    import html as _html

    plain = _html.unescape(text)
    for s in XSS:
        assert s in plain


def test_report_huge_names(tmp_path):
    from layerparity.report import format_report, load_report, render_html, write_json

    big = "L" * 100_000
    names = ["data", big, big + "2"]
    rep = _report(names, offset_at=1)
    assert rep.first_divergence is not None and rep.first_divergence.caffe_layer == big
    page = render_html(rep)
    assert big in page
    text = format_report(rep)
    assert max(len(line) for line in text.splitlines()) < 2_000, "the text report must clip huge names"
    path = os.fspath(tmp_path / "r.json")
    write_json(rep, path)
    assert [r.caffe_layer for r in load_report(path).rows] == names
    t, _ = _traces(names)
    t.save(tmp_path / "big.npz")
    assert Trace.load(tmp_path / "big.npz").names == names


UNICODE = ["data", "conv/ünï/中文", "😀/emoji\u200d", "\u202eright-to-left", "ℌ𝔢𝔩𝔩𝔬", "tab\tnew\u2028line"]


def test_report_unicode_round_trip(tmp_path):
    from layerparity.report import load_report, render_html, write_json

    c, _ = _traces(UNICODE)
    c.save(tmp_path / "u.npz")
    assert Trace.load(tmp_path / "u.npz").names == UNICODE
    rep = _report(UNICODE, offset_at=2)
    path = os.fspath(tmp_path / "u.json")
    write_json(rep, path)
    back = load_report(path)
    assert [r.caffe_layer for r in back.rows] == UNICODE
    assert back.first_divergence.caffe_layer == UNICODE[2]
    page = render_html(rep)
    assert re.search(r"<meta charset=.?utf-8", page, re.I)
    import html as _html

    plain = _html.unescape(re.sub(r"<[^>]*>", "", page))
    for n in UNICODE[:5]:
        assert n in plain, n


def test_report_control_characters_in_names(tmp_path):
    from layerparity.report import load_report, render_html, write_json

    names = ["data", "nul\x00byte", "esc\x1b[31mred", "bell\x07"]
    rep = _report(names, offset_at=1)
    page = render_html(rep)
    assert "\x00" not in page and "\x1b" not in page
    path = os.fspath(tmp_path / "c.json")
    write_json(rep, path)
    assert [r.caffe_layer for r in load_report(path).rows] == names


def _report_file(tmp_path, edit) -> str:
    rep = _report(["data", "fc1", "fc2"], offset_at=2)
    doc = json.loads(rep.to_json())
    edit(doc)
    path = os.fspath(tmp_path / "report.json")
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(doc))  # allow_nan: Python writes NaN / Infinity literals
    return path


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("mismatched", -1, r"'mismatched' \(-1\) is not between 0 and 'total'"),
        ("mismatched", 10**6, r"'mismatched' \(1000000\) is not between 0 and 'total'"),
        ("total", -5, r"'total' is negative \(-5\)"),
        ("nan_mismatch", 10**6, r"'nan_mismatch' \(1000000\) is not between 0 and 'mismatched'"),
    ],
)
def test_json_report_metric_counts_out_of_range(tmp_path, key, value, message):
    from layerparity.report import ReportFormatError, load_report

    path = _report_file(tmp_path, _set_layer(2, key, value, sub="metrics"))
    with pytest.raises(ReportFormatError, match=message) as e:
        load_report(path)
    assert path in str(e.value) and "layers[2].metrics" in str(e.value)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["layers"][2].__setitem__("max_abs_error", 0.0), r"'max_abs_error' \(0.0\) contradicts its metrics"),
        (lambda d: d["layers"][1].__setitem__("cosine", None), r"'cosine' is null but 'metrics' is given"),
        (lambda d: d["layers"][1].__setitem__("metrics", None), r"'max_abs_error' is given but 'metrics' is null"),
    ],
)
def test_json_report_summary_must_repeat_the_metrics(tmp_path, edit, message):
    """Found by the report fuzz target: a layer's summary numbers that say something else than its metrics."""
    from layerparity.report import ReportFormatError, load_report

    path = _report_file(tmp_path, edit)
    with pytest.raises(ReportFormatError, match=message):
        load_report(path)


def test_html_chart_with_ratios_near_the_float_limit(tmp_path):
    """Found by the report fuzz target: an error ratio near 1e308 overflowed the chart's decade grid."""
    from layerparity.report import load_report, render_html

    def edit(doc):  # smallest passing atol 4.5e303 against atol 3e-5: a finite ratio of 1.5e308
        doc["layers"][2]["metrics"]["min_atol"] = 4.5e303

    rep = load_report(_report_file(tmp_path, edit))
    html = render_html(rep)
    assert "<svg" in html and "error-chart" in html


def _set_layer(i, key, value, sub=None):
    def edit(doc):
        target = doc["layers"][i] if sub is None else doc["layers"][i][sub]
        target[key] = value

    return edit


@pytest.mark.parametrize(
    "case, edit",
    [
        pytest.param("chain_of_ints", _set_layer(1, "caffe_chain", [1, 2]), id="chain_of_ints"),
        pytest.param("infinity_literal", _set_layer(1, "scale", float("inf"), sub="metrics"), id="infinity_literal"),
        pytest.param("nan_literal", _set_layer(1, "cosine", float("nan"), sub="metrics"), id="nan_literal"),
        pytest.param("passed_contradicts_metrics", _set_layer(2, "passed", True), id="passed_contradicts_metrics"),
        pytest.param("shape_of_strings", _set_layer(1, "caffe_shape", ["1", "6"]), id="shape_of_strings"),
    ],
)
def test_json_report_tampered(tmp_path, case, edit):
    """A JSON report (a golden file, a CI artifact) is read back: refused with ReportFormatError,
    or rebuilt into a report that renders and re-serializes to what the file says (found by
    fuzz/targets/report.py)."""
    from layerparity.report import ReportFormatError, format_report, load_report, render_html

    path = _report_file(tmp_path, edit)
    try:
        rep = load_report(path)
    except ReportFormatError as e:
        assert path in str(e)
        return
    format_report(rep)
    render_html(rep)
    again = json.loads(rep.to_json())
    with open(path, encoding="utf-8") as f:
        given = json.load(f)
    for i, layer in enumerate(given["layers"]):
        for k in ("caffe_layer", "caffe_chain", "passed", "caffe_shape"):
            assert again["layers"][i][k] == layer[k], (i, k)


# == 8. the command line ================================================================


def _cli(*args, timeout=HANG_GUARD_S - 30):
    env = dict(os.environ, GLOG_minloglevel="2", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([PY, "-m", "layerparity.cli", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)


def _assert_cli_usage_error(r, must_name: str) -> None:
    assert r.returncode == 2, f"exit {r.returncode}; stderr: {r.stderr[-2000:]}"
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}: {r.stderr[-2000:]}"
    assert must_name in lines[0], lines[0]
    assert "Traceback" not in r.stderr


def test_cli_missing_files(tmp_path):
    missing = os.fspath(tmp_path / "nope.prototxt")
    r = _cli("compare", "--caffe-model", missing, "--tf-model", missing, "--input", missing)
    _assert_cli_usage_error(r, missing)


def test_cli_diff_not_an_archive(tmp_path):
    junk = _write(tmp_path / "junk.npz", b"PK\x03\x04 not really")
    other = _write(tmp_path / "other.npz", b"")
    r = _cli("diff", junk, other)
    _assert_cli_usage_error(r, junk)


def test_cli_capture_bad_prototxt(tmp_path):
    proto = _write(tmp_path / "bad.prototxt", TINY.replace('type: "ReLU"', 'type: "ReLUU"'))
    x = os.fspath(tmp_path / "x.npy")
    np.save(x, np.zeros((1, 3, 8, 8), np.float32))
    r = _cli("capture", "--caffe-model", proto, "--input", x, "-o", os.fspath(tmp_path / "o.npz"))
    _assert_cli_usage_error(r, proto)
    assert "ReLUU" in r.stderr
    assert not os.path.exists(tmp_path / "o.npz")


def test_cli_capture_nan_input(tmp_path, tiny):
    x = os.fspath(tmp_path / "x.npy")
    np.save(x, np.full((1, 3, 8, 8), np.nan, np.float32))
    r = _cli("capture", "--caffe-model", tiny[0], "--caffe-weights", tiny[1], "--input", x,
             "-o", os.fspath(tmp_path / "o.npz"))
    _assert_cli_usage_error(r, x)
    assert "NaN" in r.stderr


def test_inputerror_family_is_valueerror():
    """The documented contract the cases above rely on."""
    for cls in (CaffeError, ModelLoadError, ArchiveError, MappingError, InputDataError):
        assert issubclass(cls, InputError) and issubclass(cls, ValueError)

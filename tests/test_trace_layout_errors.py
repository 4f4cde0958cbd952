"""trace.py and layout.py say what the caller got wrong with the library's input errors
(issue 12, item 6): never a bare ValueError/TypeError/AttributeError from NumPy or Python
that names no probe, field or layout. Pure NumPy."""

from __future__ import annotations

import re

import numpy as np
import pytest

from layerparity import layout
from layerparity.errors import ArchiveError, InputDataError, InputError, LayoutMismatch
from layerparity.trace import ArchiveReader, Probe, Trace, save_archive


def _raises(exc, msg, fn):
    """``fn()`` raises ``exc`` (an InputError) whose message contains ``msg``, and nothing else."""
    with pytest.raises(InputError) as e:
        fn()
    assert type(e.value) is exc, f"{type(e.value).__name__}: {e.value}"
    assert msg in str(e.value), str(e.value)


@pytest.mark.parametrize(("kw", "msg"), [
    ({"flat_shape": "ab"}, "probe 'p': flat_shape must be a sequence of integers >= 0, got 'ab'"),
    ({"flat_shape": 3}, "probe 'p': flat_shape must be a sequence of integers >= 0, got 3"),
    ({"flat_shape": (2, -1)}, "probe 'p': flat_shape must be a sequence of integers >= 0"),
    ({"shape": ("x",)}, "probe 'p': shape must be a sequence of integers >= 0"),
    ({"shape": None}, "probe 'p': shape must be a sequence of integers >= 0, got None"),
    ({"layout": 5}, "probe 'p': layout must be a string, got 5"),
    ({"kind": None}, "probe 'p': kind must be a string, got None"),
    # a bare string would read as one input name per character
    ({"inputs": "conv1"}, "probe 'p': inputs must be a list of names, got str 'conv1'"),
    ({"inputs": ["conv1", 2]}, "probe 'p': inputs must be a list of strings"),
    ({"fused": "relu"}, "probe 'p': fused must be a list of names, got str 'relu'"),
    ({"params": [1, 2]}, "probe 'p': params must be a dict, got list"),
])
def test_a_malformed_probe_is_an_input_error_naming_the_probe_and_field(kw, msg):
    _raises(InputError, msg, lambda: Probe("p", **kw))


def test_a_ragged_value_is_an_input_data_error_naming_the_probe():
    _raises(InputDataError, "probe 'p': value is not an array", lambda: Probe("p", value=[[1.0], [1.0, 2.0]]))


def test_well_formed_probes_are_unchanged():
    p = Probe("p", "Convolution", np.zeros((1, 2, 3, 3), np.float32), inputs=("data",), fused=None,
              params=None, layout="NCHW", flat_shape=(np.int64(2), 3, 3))
    assert p.inputs == ["data"] and p.fused == [] and p.params == {} and p.flat_shape == (2, 3, 3)
    assert p.shape == (1, 2, 3, 3) and p.dtype == "float32"
    q = p.without_value()
    assert q.shape == (1, 2, 3, 3) and q.value is None and q.inputs == ["data"]


@pytest.mark.parametrize(("args", "kw", "msg"), [
    (("caffe", "net.prototxt", [1]), {}, "caffe trace 'net.prototxt': expected a Probe, got int"),
    (("caffe", "net.prototxt", 5), {}, "caffe trace 'net.prototxt': probes must be an iterable of Probe objects, got int"),
    (("caffe", "net.prototxt", Probe("p")), {}, "probes must be an iterable of Probe objects, got Probe"),
    (("caffe", "net.prototxt"), {"inputs": [1, 2]}, "caffe trace 'net.prototxt': inputs must be a dict, got list"),
    (("caffe", "net.prototxt"), {"meta": [1]}, "caffe trace 'net.prototxt': meta must be a dict, got list"),
    ((None, "x"), {}, "Trace: framework must be a string"),
])
def test_a_malformed_trace_is_an_input_error(args, kw, msg):
    _raises(InputError, msg, lambda: Trace(*args, **kw))


def test_saving_into_a_missing_folder_names_the_archive_not_a_temporary_file(tmp_path):
    path = tmp_path / "nope" / "caffe.npz"
    with pytest.raises(ArchiveError) as e:
        Trace("caffe", "x", [Probe("p", value=np.zeros(2, np.float32))]).save(path)
    assert str(e.value) == f"{path}: cannot write the trace archive: the folder {str(tmp_path / 'nope')!r} does not exist"
    assert not (tmp_path / "nope").exists()


def test_a_manifest_with_a_negative_dimension_is_an_archive_error(tmp_path):
    """The Probe check is reached from an archive too: then the file is to blame, and named."""
    import io
    import zipfile

    path = tmp_path / "t.npz"
    save_archive(path, "caffe", "x", {}, {}, [Probe("conv1", layout="NCHW", shape=(1, 2))])
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    manifest = np.load(path, allow_pickle=False)["manifest"].tobytes().decode()
    assert '"shape": [1, 2]' in manifest
    manifest = manifest.replace('"shape": [1, 2]', '"shape": [1, -2]')
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.frombuffer(manifest.encode(), np.uint8))
    members["manifest.npy"] = buf.getvalue()
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    with pytest.raises(ArchiveError, match=re.escape(f"{path}: malformed manifest entry: probe 'conv1': shape must be")):
        with ArchiveReader(path) as r:
            list(r.iter_probes())


X4 = np.zeros((1, 2, 3, 4), np.float32)


@pytest.mark.parametrize(("fn", "exc", "msg"), [
    (lambda: layout.convert(X4, 5, "NHWC"), LayoutMismatch, "source layout must be a string of axis labels"),
    (lambda: layout.convert(X4, "NCHW", None), LayoutMismatch, "target layout must be a string of axis labels"),
    (lambda: layout.relayout(X4, None, None, "NHWC"), LayoutMismatch, "source layout must be a string"),
    (lambda: layout.relayout(X4, "NCHW", None, ["N", "H", "W", "C"]), LayoutMismatch, "target layout must be a string"),
    (lambda: layout.axes_permutation("NCHW", 4), LayoutMismatch, "layout must be a string"),
    (lambda: layout.is_flat(None), LayoutMismatch, "layout must be a string"),
    (lambda: layout.convert(np.zeros((2, 6)), "flat:NCHW", "flat:NHWC", ("a", "b", "c")), InputDataError,
     "flat_shape must be a sequence of integers >= 0, got ('a', 'b', 'c')"),
    (lambda: layout.relayout_shape((2, -1, 3, 3), "NCHW", None, "NHWC"), InputDataError,
     "shape must be a sequence of integers >= 0, got (2, -1, 3, 3)"),
    (lambda: layout.conv_weight_caffe_to_tf(np.zeros((4, 1, 3))), InputDataError,
     "Caffe convolution weight (O, I, kH, kW): expected a 4-D weight, got shape (4, 1, 3)"),
    (lambda: layout.conv_weight_tf_to_caffe(np.zeros((3, 3))), InputDataError,
     "TF Conv2D kernel (kH, kW, I, O): expected a 4-D weight, got shape (3, 3)"),
    (lambda: layout.deconv_weight_caffe_to_tf(np.zeros(3)), InputDataError, "expected a 4-D weight"),
    (lambda: layout.depthwise_weight(np.zeros((4, 1, 3, 3)), 0), InputDataError,
     "channels must be a positive integer, got 0"),
    (lambda: layout.depthwise_weight(np.zeros((4, 1, 3)), 2), InputDataError, "expected a 4-D weight"),
    (lambda: layout.inner_product_weight_caffe_to_tf(np.zeros((4, 10)), (2, 2, 2)), InputDataError,
     "InnerProduct weight (4, 10): its input of per-item shape (2, 2, 2) does not hold 10 values"),
    (lambda: layout.inner_product_weight_caffe_to_tf(np.zeros(4)), InputDataError, "expected a 2-D weight"),
    (lambda: layout.flatten_permutation(-1, 2, 2), InputDataError, "integers >= 0"),
])
def test_layout_functions_name_the_bad_argument(fn, exc, msg):
    _raises(exc, msg, fn)


def test_the_checks_change_no_result():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 8)).astype(np.float32)
    np.testing.assert_array_equal(layout.inner_product_weight_caffe_to_tf(w, (8, 1, 1)), w.T)
    w = rng.standard_normal((5, 2 * 2 * 3)).astype(np.float32)
    k = layout.inner_product_weight_caffe_to_tf(w, (3, 2, 2))
    x = rng.standard_normal((1, 3, 2, 2)).astype(np.float32)
    # Dense on Keras' H*W*C flatten == InnerProduct on Caffe's C*H*W flatten
    np.testing.assert_allclose(x.transpose(0, 2, 3, 1).reshape(1, -1) @ k, x.reshape(1, -1) @ w.T, rtol=1e-6)
    assert layout.relayout_shape((np.int64(2), 3, 4, 5), "NCHW", None, "NHWC") == (2, 4, 5, 3)
    assert layout.flatten_permutation(2, 1, 2).tolist() == [0, 2, 1, 3]

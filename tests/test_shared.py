"""The small shared modules (formatting, atomic_write, names, keras_layers), the one error
hierarchy, the one tolerance validator, and the defects fixed with them: complex arrays
refused instead of losing their imaginary part, one rule for "is this a trace archive"."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import layerparity as lp
from layerparity import formatting, names
from layerparity.atomic_write import atomic_path, write_text
from layerparity.errors import (
    ArchiveError,
    InputDataError,
    InputError,
    InternalError,
    LayoutMismatch,
    ReportFormatError,
    UsageError,
    WeightParityError,
)
from layerparity.metrics import Tolerance, ToleranceTable, check_tolerance_pair, compute_metrics
from layerparity.result import LayerResult, Metrics, Report
from layerparity.trace import Probe, Trace, is_archive, save_archive

# -- formatting ----------------------------------------------------------------------------


def test_one_number_formatter_everywhere():
    from layerparity import testing
    from layerparity.report import chart, html, text

    assert text.fmt_num is chart.fmt_num is html.fmt_num is formatting.fmt_num
    assert text.fmt_shape is html.fmt_shape is formatting.fmt_shape
    assert chart.clip_name("x" * 100, 10) == formatting.clip_name("x" * 100, 10)
    # the asserts keep torch's float style through the same function
    assert testing._num(2.0) == formatting.fmt_num(2.0, 6, float_repr=True) == "2.0"
    assert testing._num(1.23456789e-5) == "1.23457e-05"


@pytest.mark.parametrize(("x", "digits", "float_repr", "want"), [
    (None, 3, False, "-"),
    (0.0, 3, False, "0"),
    (0.0, 6, True, "0.0"),
    (2.0, 3, False, "2"),
    (2.0, 6, True, "2.0"),
    (0.000123456789, 3, False, "0.000123"),
    (0.000123456789, 6, True, "0.000123457"),
    (3e-5, 6, True, "3e-05"),
    (123456789.0, 3, False, "1.23e+08"),
    (float("nan"), 3, True, "nan"),
    (float("-inf"), 3, False, "-inf"),
    (np.float32(0.1), 6, True, "0.1"),
])
def test_fmt_num(x, digits, float_repr, want):
    assert formatting.fmt_num(x, digits, float_repr=float_repr) == want


def test_shapes_indices_and_names():
    assert formatting.fmt_shape((1, 3, 5, 5)) == "(1, 3, 5, 5)"
    assert formatting.fmt_shape(np.zeros((7,)).shape) == "(7,)"
    assert formatting.fmt_shape(()) == "()"
    assert formatting.fmt_index(None) == "-" and formatting.fmt_index((0, 2)) == "(0, 2)"
    assert formatting.clip_name("a\nb\tc") == "a\\nb\\tc"
    long = "model/" + "a" * 80 + "/conv1/BiasAdd"
    clipped = formatting.clip_name(long)
    assert len(clipped) == formatting.NAME_WIDTH and clipped.startswith("model/") and clipped.endswith("/conv1/BiasAdd")


# -- atomic_write --------------------------------------------------------------------------


def test_atomic_path_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "r.json"
    write_text(target, "old\n")
    with pytest.raises(RuntimeError, match="half way"), atomic_path(target) as tmp:
        with open(tmp, "w") as f:
            f.write("new, but only half")
        raise RuntimeError("half way")
    assert target.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["r.json"]  # no .partial left behind
    write_text(tmp_path / "a" / "b" / "c.txt", "made the folders")
    assert (tmp_path / "a" / "b" / "c.txt").read_text() == "made the folders"


def test_only_atomic_write_renames_files_into_place():
    """One atomic-write helper (issue 12 item 8): no other module of the package calls os.replace/rename,
    except the demo, which builds its files together in a scratch folder and moves them in."""
    import ast
    import pathlib

    pkg = pathlib.Path(lp.__file__).parent
    offenders = []
    for f in sorted(pkg.rglob("*.py")):
        if f.name == "atomic_write.py" or f.relative_to(pkg).as_posix() == "demo/__init__.py":
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("replace", "rename") and \
                    isinstance(node.value, ast.Name) and node.value.id == "os":
                offenders.append(f"{f.relative_to(pkg)}:{node.lineno}")
    assert not offenders, offenders


def test_the_name_rules_live_in_names_py():
    """One name-normalising module (issue 12 item 8): the TF wrapper-scope and copy-suffix rules
    are written once, in layerparity/names.py (the graph backends import them)."""
    import pathlib

    pkg = pathlib.Path(lp.__file__).parent
    writers = sorted(str(f.relative_to(pkg)) for f in pkg.rglob("*.py")
                     if re.search(r"re\.compile\([^)]*(PartitionedCall|_\\d\+\$)", f.read_text()))
    assert writers == ["names.py"], writers


def test_an_archive_that_fails_while_streaming_leaves_the_old_one(tmp_path):
    path = tmp_path / "caffe.npz"
    x = np.ones((1, 2, 3, 3), np.float32)
    save_archive(path, "caffe", "old", {}, {"data": x}, [Probe("conv1", "Convolution", x, layout="NCHW")])

    def probes():
        yield Probe("conv1", "Convolution", 2 * x, layout="NCHW")
        raise OSError("the worker died")

    with pytest.raises(OSError, match="the worker died"):
        save_archive(path, "caffe", "new", {}, {"data": x}, probes())
    assert Trace.load(path).source == "old"
    assert sorted(os.listdir(tmp_path)) == ["caffe.npz"]


def test_reports_are_written_through_the_one_helper(tmp_path):
    from layerparity.report import write_html, write_json

    r = Report(rows=[], unmapped_caffe=[], unmapped_tf=[])
    write_json(r, tmp_path / "out" / "r.json")
    write_html(r, tmp_path / "out" / "r.html")
    assert sorted(os.listdir(tmp_path / "out")) == ["r.html", "r.json"]


# -- names ---------------------------------------------------------------------------------


def test_one_folding_rule_for_alignment_and_weights():
    from layerparity import weights

    assert names.canon("conv1/7x7_s2") == "conv1_7x7_s2" and names.canon("Conv1") == "Conv1"
    assert names.fold("Conv1/7x7-s2") == "conv1_7x7_s2"
    assert names.tf_name_keys("StatefulPartitionedCall/model/conv1/BiasAdd:0")[-2:] == ["conv1", "BiasAdd"]
    assert names.normalize_name("model/Conv1/BiasAdd:0") == "model_conv1"
    assert weights.normalize_name is names.normalize_name
    # the weight check matches case-insensitively on the alignment's keys
    w = np.arange(6, dtype=np.float32).reshape(2, 3, 1, 1)
    rep = weights.check_weights({"Conv1": [w]}, {"model/conv1/BiasAdd": [w.transpose(2, 3, 1, 0)]})
    assert rep and rep.rows[0].tf_layer == "model/conv1/BiasAdd"


# -- keras_layers --------------------------------------------------------------------------


def test_the_lrn_layer_lives_outside_the_demo_and_imports_keras_lazily():
    code = ("import sys, layerparity.keras_layers, layerparity.demo; "
            "assert 'keras' not in sys.modules and 'tensorflow' not in sys.modules, 'imported eagerly'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    from layerparity import demo, keras_layers

    assert demo.lrn_layer_class is keras_layers.lrn_layer_class
    LRN = keras_layers.lrn_layer_class()
    assert LRN is keras_layers.lrn_layer_class()  # one class, registered once
    x = np.random.default_rng(0).standard_normal((1, 4, 4, 8)).astype(np.float32)
    y = np.asarray(LRN(depth_radius=2, bias=1.0, alpha=1e-4 / 5, beta=0.75)(x))
    # Caffe's formula, ACROSS_CHANNELS, local_size 5: x / (k + alpha/n * sum x^2)^beta
    sq = np.pad(x**2, ((0, 0), (0, 0), (0, 0), (2, 2)))
    want = x / (1.0 + 1e-4 / 5 * sum(sq[..., i:i + 8] for i in range(5))) ** 0.75
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)


# -- errors --------------------------------------------------------------------------------


def test_moved_errors_are_input_errors_in_errors_py():
    for cls in (UsageError, WeightParityError, ReportFormatError):
        assert cls.__module__ == "layerparity.errors" and issubclass(cls, InputError)
        assert getattr(lp, cls.__name__) is cls
    # where users import them today (docs/report-format.md) still works
    from layerparity.report import ReportFormatError as from_report

    assert from_report is ReportFormatError


def test_trace_and_layout_raise_the_librarys_input_errors(tmp_path):
    from layerparity.layout import axes_permutation, convert, depthwise_weight

    with pytest.raises(InputError, match="probe name must be a non-empty string"):
        Probe("")
    t = Trace("caffe", "net.prototxt", [Probe("conv1")])
    with pytest.raises(InputError, match="duplicate probe name 'conv1'"):
        t.add(Probe("conv1"))
    with pytest.raises(LayoutMismatch, match="do not name the same axes"):
        axes_permutation("NCHW", "NHW")
    with pytest.raises(LayoutMismatch, match="only one is flattened"):
        convert(np.zeros((1, 8)), "flat:NHWC", "NCHW")
    with pytest.raises(LayoutMismatch, match="needs flat_shape"):
        convert(np.zeros((1, 8)), "flat:NHWC", "flat:NCHW")
    with pytest.raises(InputDataError, match="not depthwise"):
        depthwise_weight(np.zeros((6, 2, 3, 3)), 3)
    # a tampered manifest: the bad field is named, as an ArchiveError (not a bare TypeError)
    path = tmp_path / "t.npz"
    Trace("caffe", "x", [Probe("conv1", value=np.zeros(2, np.float32))]).save(path)
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    manifest = np.load(path, allow_pickle=False)["manifest"].tobytes().decode()
    at = manifest.rindex('"inputs": []')  # the probe's (the archive's own inputs list comes first)
    manifest = manifest[:at] + '"inputs": [1]' + manifest[at + len('"inputs": []'):]
    import io

    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.frombuffer(manifest.encode(), np.uint8))
    members["manifest.npy"] = buf.getvalue()
    with zipfile.ZipFile(path, "w") as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    with pytest.raises(ArchiveError, match=r"probe 'conv1': malformed manifest entry \(field 'inputs' must be a list of strings\)"):
        Trace.load(path)


def _m(err: float) -> Metrics:
    idx = (0,)
    return Metrics(err, idx, err, idx, err, err, 1.0, 0, 1, 0, 1.0, 0.0, 0.0, True)


def test_aggregate_caller_mistakes_are_input_errors_not_bugs():
    from layerparity.report import aggregate_reports

    a = Report([LayerResult("conv1", "conv1", "conv1", metrics=_m(0.0))], [], [])
    b = Report([LayerResult("conv2", "conv2", "conv2", metrics=_m(0.0))], [], [])
    cases = [
        (([],), "needs at least one report"),
        (([a, a], ["only one label"]), "2 reports but 1 labels"),
        (([a, b], ["x.npy", "y.npy"]), "reports of 'y.npy' and 'x.npy' compare different layers"),
        (([a, "not a report"],), "needs Report objects, got str"),
        ((a,), "aggregate_reports needs a list of Report objects, got Report"),
        ((None,), "aggregate_reports needs a list of Report objects, got NoneType"),
        # a string of labels would be one label per character
        (([a, a], "ab"), "aggregate_reports: labels must be a list with one label per report, got 'ab'"),
        (([a, a], 2), "labels must be a list with one label per report, got 2"),
        # a first divergence that is not one of the report's rows (was a bare StopIteration)
        (([a, Report([LayerResult("conv1", "conv1", "conv1", metrics=_m(1.0))], [], [],
                     first_divergence=LayerResult("conv1", "conv1", "conv1", metrics=_m(1.0)))], ["x.npy", "y.npy"]),
         "the report of 'y.npy' names 'conv1' its first divergence, but that row is not one of its rows"),
    ]
    for args, msg in cases:
        with pytest.raises(InputError, match=re.escape(msg)) as e:
            aggregate_reports(*args)
        assert not isinstance(e.value, InternalError)


# -- one tolerance validator ---------------------------------------------------------------


def test_one_validator_names_what_the_caller_calls_the_options():
    msg = "rtol and atol must be given together or not at all: atol needs rtol too (got rtol=None, atol=1e-05)"
    with pytest.raises(InputError, match=re.escape(msg)):
        check_tolerance_pair(None, 1e-5)
    with pytest.raises(InputError, match=re.escape("tolerances['fc*']: " + msg.replace("1e-05", "0.001"))):
        ToleranceTable(tolerances={"fc*": (None, 1e-3)})
    with pytest.raises(InputError, match=re.escape(
            "--rtol and --atol must be given together or not at all: --rtol needs --atol too")):
        check_tolerance_pair(1e-3, None, names=("--rtol", "--atol"))
    with pytest.raises(InputError, match=re.escape("--atol must be a finite number >= 0, got -1")):
        check_tolerance_pair(1e-3, -1, names=("--rtol", "--atol"))
    assert check_tolerance_pair(1e-3, 0) == Tolerance(rtol=1e-3, atol=0.0)


def test_the_cli_uses_the_validator(capsys):
    from layerparity.cli import EXIT_USAGE, main

    assert main(["diff", "a.npz", "b.npz", "--atol", "1e-3"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--rtol and --atol must be given together or not at all: --atol needs --rtol too" in err


# -- complex arrays --------------------------------------------------------------------------


def test_complex_arrays_are_refused_not_compared_by_their_real_part():
    ref = np.array([1 + 0j, 2 + 0j], np.complex64)
    got = np.array([1 + 5j, 2 + 0j], np.complex64)  # real parts equal: a .real comparison would pass
    tol = Tolerance(1e-4, 3e-5)
    for a, b, side in ((ref, got, "reference"), (ref.real, got, "compared")):
        with pytest.raises(InputDataError, match=re.escape(f"cannot compare a complex {side} array (complex64)")):
            compute_metrics(a, b, tol)
    from layerparity.backends.base import InputSpec, check_input_array

    with pytest.raises(InputDataError, match="input 'data' is complex"):
        check_input_array("net", "data", np.ones((1, 3), np.complex128), InputSpec("data", (None, 3), "NC"))


# -- one rule for trace archives -------------------------------------------------------------


def test_a_trace_archive_is_recognised_by_its_content_whatever_its_name(tmp_path):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 2, 3, 3)).astype(np.float32)
    caffe = Trace("caffe", "net.prototxt", [Probe("data", "Input", x, layout="NCHW"),
                                            Probe("conv1", "Convolution", 2 * x, inputs=["data"], layout="NCHW")],
                  inputs={"data": x})
    tf = Trace("tensorflow", "port.keras", [Probe("data", "InputLayer", x.transpose(0, 2, 3, 1), layout="NHWC"),
                                            Probe("conv1", "Conv2D", 2 * x.transpose(0, 2, 3, 1), inputs=["data"],
                                                  layout="NHWC")])
    c_path, t_path = tmp_path / "caffe.trace", tmp_path / "tf.recorded"  # no .npz anywhere
    caffe.save(c_path)
    tf.save(t_path)
    assert is_archive(c_path) and is_archive(str(t_path))
    assert not is_archive(tmp_path) and not is_archive(None) and not is_archive(tmp_path / "missing.npz")
    not_zip = tmp_path / "x.npz"
    np.save(tmp_path / "x.npy", x)
    os.replace(tmp_path / "x.npy", not_zip)
    assert not is_archive(not_zip)
    # compare_models and assert_parity use both as recorded traces (no framework runs)
    report = lp.compare_models(c_path, t_path, x)
    assert report and [r.caffe_layer for r in report.rows] == ["data", "conv1"]
    assert lp.assert_parity(c_path, t_path, None)  # inputs=None: the ones stored in the Caffe archive


# -- the capture verbs -----------------------------------------------------------------------


def test_capture_verbs_pass_their_options_through():
    from layerparity import demo

    f = demo.files()
    demo.register_keras_objects()
    x = np.load(f.input)
    caffe = lp.capture_caffe(f.prototxt, f.caffemodel, x, phase="TEST", timeout=300)
    assert caffe.framework == "caffe" and caffe["conv1"].layout == "NCHW"
    tf = lp.capture_tf(f.keras, x, tensors=["conv1", "relu1", "conv2", "relu2"])
    assert tf.framework == "tensorflow"
    assert tf.names == ["data", "conv1", "relu1", "conv2", "relu2"]  # only these (and the input)
    assert tf["conv1"].layout == "NHWC" and tf["conv1"].shape == (1, 32, 32, 16)
    report = lp.compare_traces(caffe, tf)
    assert report.first_divergence.caffe_layer == demo.BUG_LAYER
    with pytest.raises(InputError, match="phase must be 'TEST' or 'TRAIN'"):
        lp.capture_caffe(f.prototxt, f.caffemodel, x, phase="DEPLOY")

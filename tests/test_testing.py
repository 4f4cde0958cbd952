"""layerparity.testing: assert_blob_close (pure NumPy) and assert_parity (real Caffe, real TF)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from layerparity import demo
from layerparity.errors import InputDataError, InputError
from layerparity.result import Diagnosis, LayerResult, Metrics, Report, Tolerance
from layerparity.testing import assert_blob_close, assert_parity, format_parity_failure
from layerparity.trace import Trace

# -- assert_blob_close -------------------------------------------------------------------


def test_blob_close_passes_after_nhwc_to_nchw():
    caffe = np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)
    assert_blob_close(caffe, caffe.transpose(0, 2, 3, 1))
    assert_blob_close(caffe, caffe, layout="NCHW")


def test_blob_close_message_is_torch_shaped():
    expected = (
        "Blobs are not close!\n"
        "\n"
        "Mismatched elements: 2 / 3 (66.7%)\n"
        "Greatest absolute difference: 2.0 at index (1,) (up to 3e-05 allowed: atol 1e-05 x max|caffe| 3.0)\n"
        "Greatest relative difference: 1.0 at index (1,) (up to 0.0001 allowed)"
    )
    with pytest.raises(AssertionError, match="^" + re.escape(expected) + "$"):
        assert_blob_close(np.array([1.0, 2.0, 3.0]), np.array([1.0, 4.0, 3.01]), layout="", rtol=1e-4, atol=1e-5)


def test_blob_close_index_is_nchw_and_name_in_header():
    caffe = np.zeros((1, 3, 4, 5), np.float32)
    tf = np.zeros((1, 4, 5, 3), np.float32)
    tf[0, 2, 1, 0] = 1.0  # NHWC (n, h, w, c) -> NCHW (0, 0, 2, 1)
    with pytest.raises(AssertionError) as e:
        assert_blob_close(caffe, tf, name="conv1")
    msg = str(e.value)
    assert msg.startswith("Blobs of 'conv1' are not close!\n\nMismatched elements: 1 / 60 (1.7%)\n")
    from layerparity.metrics import DEFAULT_TOLERANCES

    allowed = DEFAULT_TOLERANCES["float32"].atol  # relative to max|caffe|, which is 1.0 for all zeros
    assert (f"Greatest absolute difference: 1.0 at index (0, 0, 2, 1) (up to {allowed!r} allowed: "
            f"atol {allowed!r} x max|caffe| 1.0)") in msg
    assert msg.endswith("(indices are in Caffe's NCHW layout; the TF tensor was converted from NHWC)")


def test_blob_close_shape_mismatch():
    with pytest.raises(AssertionError, match=re.escape(
        "Blob shapes do not match: Caffe (1, 2, 3, 3) != TF (1, 2, 3, 4) (TF (1, 3, 4, 2) in NHWC)"
    )):
        assert_blob_close(np.zeros((1, 2, 3, 3)), np.zeros((1, 3, 4, 2)))


def test_blob_close_nan_is_never_close():
    with pytest.raises(AssertionError, match=re.escape("NaN/Inf mismatches: 1 (no tolerance passes these)")):
        assert_blob_close(np.ones(3), np.array([1.0, np.nan, 1.0]), layout="", rtol=1.0, atol=1.0)


def test_blob_close_bad_arguments_are_input_errors():
    with pytest.raises(InputError, match=re.escape(
        "assert_blob_close: rtol and atol must be given together or not at all: rtol needs atol too (got rtol=0.1, atol=None)"
    )):
        assert_blob_close(np.ones(2), np.ones(2), layout="", rtol=0.1)
    with pytest.raises(InputDataError, match=re.escape("the TF tensor has shape (2, 3) (rank 2), which cannot be in layout 'NHWC'")):
        assert_blob_close(np.ones((2, 3)), np.ones((2, 3)))
    with pytest.raises(InputError, match="not an axis-label string"):
        assert_blob_close(np.ones((2, 3)), np.ones((2, 3)), layout="XY")
    with pytest.raises(InputDataError, match="tf_tensor has dtype <U1"):
        assert_blob_close(np.ones(1), np.array(["a"]), layout="")


def test_blob_close_refuses_complex_instead_of_dropping_the_imaginary_part():
    # equal real parts, imaginary parts 1 apart: comparing .real only would pass
    a = np.array([1 + 0j, 2 + 0j])
    b = np.array([1 + 1j, 2 + 0j])
    for caffe, tf, what in ((a, b, "caffe_blob"), (a.real, b, "tf_tensor")):
        with pytest.raises(InputDataError, match=re.escape(f"assert_blob_close: {what} is complex (complex128)")):
            assert_blob_close(caffe, tf, layout="")


def test_parity_message_of_a_report_without_tolerances_uses_the_default_table():
    """A report that records no tolerance (hand-built, or read back from JSON without one) is
    explained with the float32 default of the one table, not with a tolerance of its own."""
    from layerparity.metrics import DEFAULT_TOLERANCES

    row = LayerResult("conv1", "conv1", "conv1", caffe_shape=(1, 2, 2, 2), metrics=_m(0.5, False))
    msg = format_parity_failure(Report([row], [], [], first_divergence=row))
    t = DEFAULT_TOLERANCES["float32"]
    assert (f"(up to {t.atol * 2.0!r} allowed: atol {t.atol!r} x max|caffe| 2.0)\n"
            f"Greatest relative difference: 0.5 at index (0, 1, 2, 3) (up to {t.rtol!r} allowed)") in msg


# -- the parity message (hand-built report) ------------------------------------------------


def _m(err: float, passed: bool, idx=(0, 1, 2, 3)) -> Metrics:
    return Metrics(err, idx, err, idx, err, err, 0.5, 0 if passed else 4, 8, 0, 2.0, err / 2, err * 10, passed)


def test_parity_message_layout_is_fixed():
    tol = Tolerance(rtol=1e-4, atol=1e-5)
    rows = [
        LayerResult("conv1", "conv1", "conv1", caffe_shape=(1, 2, 2, 2), metrics=_m(0.0, True), tolerance=tol),
        LayerResult("conv2", "conv2", "tf_conv2", caffe_shape=(1, 2, 2, 2), metrics=_m(0.5, False), own=_m(0.5, False),
                    tolerance=tol, diagnoses=[Diagnosis("padding_asymmetry", "SAME pads bottom/right only", "ZeroPadding2D(1) then 'valid'", 0.95),
                                              Diagnosis("unknown", "?", "?", 0.1)]),
    ]
    rep = Report(rows, [], [], tolerance=tol, first_divergence=rows[1])
    expected = """\
Models diverge at Caffe layer 'conv2' (TF layer 'tf_conv2')!

Mismatched elements: 4 / 8 (50.0%)
Greatest absolute difference: 0.5 at index (0, 1, 2, 3) (up to 2e-05 allowed: atol 1e-05 x max|caffe| 2.0)
Greatest relative difference: 0.5 at index (0, 1, 2, 3) (up to 0.0001 allowed)
(indices are Caffe coordinates: NCHW for 4-D blobs)
Smallest tolerance that would pass: atol=0.25 x max|caffe| (2.0) at rtol=0.0001, or rtol=5.0 at atol=1e-05
Own error (TF layer fed the Caffe input): max abs 0.5, max rel 0.5: the error starts in this layer
Total error (in the TF model): max abs 0.5, max rel 0.5

Diagnosis: padding_asymmetry (confidence 0.95): SAME pads bottom/right only
Fix: ZeroPadding2D(1) then 'valid'
Other candidates: unknown

Layers (2 compared, 1 out of tolerance; FIRST marks the first divergence):
  #  Caffe layer  TF layer  shape         max abs  max rel  cosine  mismatch  own abs  status
  1  conv1        conv1     (1, 2, 2, 2)        0        0     0.5        0%        -  ok
  2  conv2        tf_conv2  (1, 2, 2, 2)      0.5      0.5     0.5       50%      0.5  FIRST"""
    assert format_parity_failure(rep) == expected


def test_parity_message_caps_the_table_and_says_so():
    rows = [LayerResult(f"l{i}", f"l{i}", f"l{i}", metrics=_m(0.0 if i < 50 else 1.0, i < 50)) for i in range(80)]
    rep = Report(rows, [], [], first_divergence=rows[50])
    msg = format_parity_failure(rep, max_rows=8)
    assert "  ... 48 rows above not shown" in msg
    assert "  ... 24 rows below not shown" in msg
    assert "  (showing rows 49-56 of 80 (capped at 8; the JSON/HTML report has every row))" in msg


def test_parity_message_for_a_shape_mismatch():
    row = LayerResult("pool1", "pool1", "pool1", caffe_shape=(1, 8, 3, 3), tf_shape=(1, 2, 2, 8), note="ceil vs floor")
    msg = format_parity_failure(Report([row], [], [], first_divergence=row))
    assert "Shapes do not match: Caffe (1, 8, 3, 3) != TF (1, 2, 2, 8) (ceil vs floor)" in msg
    assert "Own error (TF layer fed the Caffe input): not measured" in msg


# -- assert_parity end to end (real Caffe, real TensorFlow) ----------------------------------


@pytest.fixture(scope="module")
def files():
    return demo.files()


@pytest.fixture(scope="module")
def x(files):
    return np.load(files.input)


def test_assert_parity_names_the_planted_bug(files, x):
    with pytest.raises(AssertionError) as e:
        assert_parity(files.prototxt, files.keras, x, caffe_weights=files.caffemodel)
    msg = str(e.value)
    assert msg.startswith("Models diverge at Caffe layer 'conv2' (TF layer 'conv2')!\n\nMismatched elements: 2048 / 2048 (100.0%)\n")
    assert re.search(r"\nGreatest absolute difference: [0-9.]+ at index \(0, \d+, \d, \d\) \(up to [0-9.e-]+ allowed: atol 3e-05 x max\|caffe\| [0-9.e+-]+\)\n", msg)
    assert "Own error (TF layer fed the Caffe input): max abs " in msg and ": the error starts in this layer\n" in msg
    assert "\nFix: " in msg and "ZeroPadding2D" in msg.split("\nFix: ")[1]
    table = msg.split("FIRST marks the first divergence):\n")[1]
    conv2 = next(line for line in table.splitlines() if line.split()[1:3] == ["conv2", "conv2"])
    assert conv2.rstrip().endswith("FIRST")
    relu2 = next(line for line in table.splitlines() if line.split()[1:2] == ["relu2"])
    assert relu2.rstrip().endswith("inherited")


def test_assert_parity_passes_on_the_fixed_port_and_returns_the_report(files, x):
    import keras

    keras.utils.clear_session()
    fixed = demo.build_keras_port(demo.demo_weights(), buggy=False)
    report = assert_parity(files.prototxt, fixed, x, caffe_weights=files.caffemodel)
    assert report and report.first_divergence is None
    assert report.row("conv2").metrics.max_abs_error < 1e-4


def test_assert_parity_on_archived_traces(files, x, tmp_path):
    from layerparity.backends.caffe import capture_caffe
    from layerparity.backends.tensorflow import capture_tf

    caffe_npz = tmp_path / "caffe.npz"
    capture_caffe(files.prototxt, files.caffemodel, x).save(caffe_npz)
    # a Caffe archive against the live TF port: inputs come from the archive, own error still measured
    with pytest.raises(AssertionError, match=re.escape("Models diverge at Caffe layer 'conv2' (TF layer 'conv2')!")) as e:
        assert_parity(caffe_npz, files.keras, None)
    assert "the error starts in this layer" in str(e.value)
    # two archives (no framework runs); a Trace object works the same
    tf_npz = tmp_path / "tf.npz"
    capture_tf(files.keras, x).save(tf_npz)
    with pytest.raises(AssertionError, match=re.escape("Models diverge at Caffe layer 'conv2'")):
        assert_parity(caffe_npz, tf_npz, None)
    with pytest.raises(AssertionError, match=re.escape("Models diverge at Caffe layer 'conv2'")):
        assert_parity(Trace.load(caffe_npz), tf_npz, None)


def test_assert_parity_bad_input_is_not_an_assertion(files, x, tmp_path):
    with pytest.raises(InputError, match=re.escape("inputs is None")):
        assert_parity(files.prototxt, files.keras, None, caffe_weights=files.caffemodel)
    with pytest.raises(InputError, match="rtol and atol must be given together"):
        assert_parity(files.prototxt, files.keras, x, caffe_weights=files.caffemodel, atol=1e-3)
    with pytest.raises(InputError, match=re.escape(str(tmp_path / "missing.prototxt"))):
        assert_parity(tmp_path / "missing.prototxt", files.keras, x)


def test_assert_parity_hides_its_frames():
    import inspect

    from layerparity import testing

    for fn in (testing.assert_parity, testing.assert_blob_close):
        assert "__tracebackhide__ = True" in inspect.getsource(fn)

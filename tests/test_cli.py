"""The command line, end to end on the demo net with real Caffe and real TensorFlow."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from layerparity import cli, demo
from layerparity.report import read_json

PY = sys.executable


def run(*args: str, cwd=None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "2", "COLUMNS": "160"}
    return subprocess.run([PY, "-m", "layerparity.cli", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout)


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected ONE line on stderr, got:\n{stderr}"
    return lines[0]


@pytest.fixture(scope="module")
def files():
    return demo.files()


@pytest.fixture(scope="module")
def fixed_keras(files, tmp_path_factory):
    p = tmp_path_factory.mktemp("fixed") / "fixed.keras"
    demo.build_keras_port(demo.demo_weights(), buggy=False).save(str(p))
    return str(p)


def model_args(files, tf=None):
    return ["--caffe-model", files.prototxt, "--caffe-weights", files.caffemodel, "--tf-model", tf or files.keras]


# -- subprocess: exit codes, one-line errors, lazy imports -------------------------------------


def test_importing_the_cli_and_help_do_not_import_frameworks():
    code = (
        "import sys, layerparity.cli as c\n"
        "try:\n    c.main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "bad = [m for m in ('tensorflow', 'keras', 'caffe') if m in sys.modules]\n"
        "assert not bad, bad\nprint('clean')\n"
    )
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "compare" in out.stdout and "clean" in out.stdout


def test_compare_finds_the_bug_exit_1_and_writes_reports(files, tmp_path):
    out = run("compare", *model_args(files), "--input", files.input,
              "--json", str(tmp_path / "r.json"), "--html", str(tmp_path / "r.html"))
    assert out.returncode == 1, out.stderr
    conv2 = next(line for line in out.stdout.splitlines() if " conv2 " in line and "FIRST" in line)
    assert conv2.split()[:3] == ["6", "conv2", "conv2"]
    assert "First divergence: Caffe layer 'conv2' / TF layer 'conv2'" in out.stdout
    d = read_json(tmp_path / "r.json")
    assert d["passed"] is False and d["first_divergence"]["caffe_layer"] == "conv2"
    assert [x["caffe_layer"] for x in d["layers"]][:6] == ["data", "conv1", "relu1", "pool1", "norm1", "conv2"]
    page = (tmp_path / "r.html").read_text()
    assert "id=first-divergence" in page and "conv2" in page


def test_compare_within_tolerance_exits_0(files, fixed_keras):
    out = run("compare", *model_args(files, fixed_keras), "--input", files.input)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "PASS: all" in out.stdout


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--rtol", "1e-3"], "--rtol needs --atol too"),
        (["--atol", "1e-3"], "--atol needs --rtol too"),
        (["--rtol", "-1", "--atol", "0"], "rtol must be a finite number >= 0"),
    ],
)
def test_tolerance_usage_errors_exit_2_one_line(files, extra, fragment):
    out = run("compare", *model_args(files), "--input", files.input, *extra)
    assert out.returncode == 2
    assert fragment in one_line(out.stderr)


def test_argparse_errors_are_one_line(files):
    out = run("compare", "--caffe-model", files.prototxt)
    assert out.returncode == 2
    line = one_line(out.stderr)
    assert line.startswith("layerparity compare: error: the following arguments are required: --tf-model, --input")
    out = run("nonsense")
    assert out.returncode == 2 and "invalid choice: 'nonsense'" in one_line(out.stderr)


def test_unreadable_inputs_exit_2_naming_the_file(files, tmp_path):
    missing = tmp_path / "nope.npy"
    out = run("compare", *model_args(files), "--input", str(missing))
    assert out.returncode == 2
    assert one_line(out.stderr) == f"layerparity compare: error: {missing}: no such input file"

    bad_proto = tmp_path / "bad.prototxt"
    bad_proto.write_text('layer { name: "x" type: "NoSuchLayerType" bottom: "nothing" top: "x" }\n')
    out = run("compare", "--caffe-model", str(bad_proto), "--tf-model", files.keras, "--input", files.input)
    assert out.returncode == 2, out.stderr
    assert str(bad_proto) in one_line(out.stderr)

    wrong_shape = tmp_path / "x.npy"
    np.save(wrong_shape, np.zeros((1, 3, 7, 7), np.float32))
    out = run("compare", *model_args(files), "--input", str(wrong_shape))
    assert out.returncode == 2
    line = one_line(out.stderr)
    assert "layer 'ip1' (InnerProduct)" in line and "Traceback" not in out.stderr  # the layer that fixes the size


def test_demo_runs_the_bundled_example():
    out = run("demo")
    assert out.returncode == 0, out.stderr
    assert "layerparity found it" in out.stdout
    assert next(line for line in out.stdout.splitlines() if "FIRST" in line).split()[1] == "conv2"
    assert "Diagnosis:" in out.stdout and "Fix:" in out.stdout


# -- in-process (one TF import for the rest) ---------------------------------------------------


def test_several_inputs_give_per_layer_stats(files, tmp_path, capsys):
    x = np.load(files.input)
    batch = np.concatenate([x, x * 0.5, -x])
    np.save(tmp_path / "batch.npy", batch)
    code = cli.main(["compare", *model_args(files), "--input", files.input, "--input", str(tmp_path / "batch.npy"),
                     "--json", str(tmp_path / "r.json"), "--no-own-error"])
    assert code == 1
    d = read_json(tmp_path / "r.json")
    inputs = d["meta"]["inputs"]
    assert inputs["count"] == 4
    assert inputs["labels"][1:] == [f"{tmp_path / 'batch.npy'}[{i}]" for i in range(3)]
    assert inputs["per_layer"]["conv2"]["failed_inputs"] == 4
    assert inputs["per_layer"]["conv1"]["failed_inputs"] == 0
    assert all(x["own_error"] is None for x in d["layers"])  # --no-own-error
    assert "Over 4 inputs" in capsys.readouterr().out


def test_image_input_with_preprocessing(files, tmp_path, capsys):
    from PIL import Image

    rng = np.random.RandomState(3)
    Image.fromarray(rng.randint(0, 256, (40, 50, 3)).astype(np.uint8), "RGB").save(tmp_path / "im.jpg")
    code = cli.main(["compare", *model_args(files), "--input", str(tmp_path / "im.jpg"), "--resize", "32", "32",
                     "--mean", "104", "117", "123", "--raw-scale", "255", "--input-scale", "0.017",
                     "--swap-channels", "2,1,0"])
    assert code == 1
    assert "First divergence: Caffe layer 'conv2'" in capsys.readouterr().out
    code = cli.main(["compare", *model_args(files), "--input", str(tmp_path / "im.jpg"), "--swap-channels", "2,1"])
    assert code == 2
    assert "channel swap (2, 1) is not a permutation" in capsys.readouterr().err


def test_capture_then_diff(files, tmp_path, capsys):
    c, t = tmp_path / "c.npz", tmp_path / "t.npz"
    assert cli.main(["capture", "--caffe-model", files.prototxt, "--caffe-weights", files.caffemodel,
                     "--input", files.input, "-o", str(c)]) == 0
    assert cli.main(["capture", "--tf-model", files.keras, "--input", files.input, "-o", str(t)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {c}: 10 caffe probes" in out and f"wrote {t}: " in out
    assert cli.main(["diff", str(t), str(c), "--json", str(tmp_path / "d.json")]) == 1  # order does not matter
    assert read_json(tmp_path / "d.json")["first_divergence"]["caffe_layer"] == "conv2"
    capsys.readouterr()
    assert cli.main(["diff", str(c), str(c)]) == 2
    assert "are both caffe traces" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["capture", "--tf-model", files.keras, "--caffe-model", files.prototxt, "--input", files.input, "-o", str(t)])
    assert e.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_diff_of_a_non_archive_exits_2(tmp_path, capsys):
    p = tmp_path / "x.npz"
    np.savez(p, a=np.zeros(3))
    assert cli.main(["diff", str(p), str(p)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(p) in err and "no readable manifest" in err


def test_weights_subcommand(files, fixed_keras, tmp_path, capsys):
    assert cli.main(["weights", *model_args(files), "--json", str(tmp_path / "w.json")]) == 0
    assert "Weights match." in capsys.readouterr().out
    d = json.loads((tmp_path / "w.json").read_text())
    assert d["passed"] is True and {x["caffe_layer"] for x in d["layers"]} >= {"conv1", "conv2", "ip1"}


def test_weights_subcommand_finds_a_reshape_bug(files, tmp_path, capsys):
    import keras

    from layerparity.layout import conv_weight_caffe_to_tf

    w = demo.demo_weights()
    model = demo.build_keras_port(w, buggy=False)
    k = model.get_layer("conv1").get_weights()
    model.get_layer("conv1").set_weights([w["conv1"][0].reshape(conv_weight_caffe_to_tf(w["conv1"][0]).shape), k[1]])
    p = tmp_path / "reshaped.keras"
    model.save(str(p))
    keras.utils.clear_session()
    assert cli.main(["weights", *model_args(files, str(p))]) == 1
    out = capsys.readouterr().out
    assert "Weights differ!" in out and "conv1" in out and "reshape_not_transpose" in out


def test_an_unexpected_exception_is_a_short_bug_report(monkeypatch, capsys, tmp_path):
    def boom(args):
        raise KeyError("internal state")

    monkeypatch.setitem(cli._COMMANDS, "diff", boom)
    assert cli.main(["diff", "a.npz", "b.npz"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("layerparity diff: layerparity bug: KeyError: 'internal state' (please report it")
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.fixture(scope="module")
def exported_ports(tmp_path_factory):
    """The buggy demo port as a SavedModel directory and as a .tflite file."""
    import tensorflow as tf

    d = tmp_path_factory.mktemp("exported")
    model = demo.build_keras_port(demo.demo_weights(), buggy=True)
    model.export(str(d / "saved_model"), verbose=False)
    (d / "port.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return {"saved_model": str(d / "saved_model"), "tflite": str(d / "port.tflite")}


@pytest.mark.parametrize("form", ["saved_model", "tflite"])
def test_compare_other_tf_model_forms(files, exported_ports, form, tmp_path, capsys):
    code = cli.main(["compare", *model_args(files, exported_ports[form]), "--input", files.input,
                     "--json", str(tmp_path / "r.json")])
    assert code == 1
    d = read_json(tmp_path / "r.json")
    # TFLite fuses the ReLU into the convolution, so the divergence shows on the fused pair
    assert d["first_divergence"]["caffe_layer"] in ({"conv2"} if form == "saved_model" else {"conv2", "relu2"})
    before = [x for x in d["layers"] if x["caffe_layer"] in ("pool1", "norm1")]
    assert len(before) == 2 and all(x["passed"] for x in before)


def test_demo_files_regenerate_deterministically(files, tmp_path):
    import keras

    out = subprocess.run([PY, "-m", "layerparity.demo", "--regenerate", str(tmp_path)], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(tmp_path)
    new = demo.files(tmp_path)
    assert open(new.caffemodel, "rb").read() == open(files.caffemodel, "rb").read()
    np.testing.assert_array_equal(np.load(new.input), np.load(files.input))
    assert open(new.prototxt).read() == open(files.prototxt).read()
    demo.register_keras_objects()
    a, b = keras.saving.load_model(new.keras), keras.saving.load_model(files.keras)
    assert [layer.name for layer in a.layers] == [layer.name for layer in b.layers]
    for wa, wb in zip(a.get_weights(), b.get_weights(), strict=True):
        np.testing.assert_array_equal(wa, wb)


def test_compare_opens_the_models_as_compare_models_does(files, capsys):
    """compare_many opens both sides through compare_models' own opening: a prototxt given
    as the TF model is the caller's swap (exit 2, one line), not a failed Keras load."""
    code = cli.main(["compare", *model_args(files, tf=files.prototxt), "--input", files.input])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "is a Caffe prototxt; did you swap the caffe and tf arguments?" in err

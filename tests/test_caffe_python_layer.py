"""Caffe Python layers (``type: "Python"``) against real pycaffe built with them, and real TF.

The layer modules are written into tmp folders and reach the Caffe worker only through
``pythonpath=`` / ``caffe_pythonpath=`` / ``--caffe-pythonpath`` / ``--parity-caffe-pythonpath``:
the test process never has them on its own path. The net: data -> conv1 -> affine
(a Python layer computing ``x * scale + shift`` from its ``param_str``) -> relu1.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from layerparity import compare_models
from layerparity.backends.caffe import CaffeBackend, capture_caffe
from layerparity.errors import CaffeError, InputError
from layerparity.trace import Trace

pytest_plugins = ["pytester"]

AFFINE = '''
import caffe


class Affine(caffe.Layer):
    """top = bottom * scale + shift, param_str "scale shift"; raises on inputs above "limit"."""

    def setup(self, bottom, top):
        words = self.param_str.split()
        if len(words) not in (2, 3):
            raise ValueError(f"param_str must be 'scale shift [limit]', got {self.param_str!r}\\nsecond line")
        self.scale, self.shift = float(words[0]), float(words[1])
        self.limit = float(words[2]) if len(words) == 3 else None

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        if self.limit is not None and bottom[0].data.max() > self.limit:
            raise RuntimeError(f"input above the limit {self.limit:g}")
        top[0].data[...] = bottom[0].data * self.scale + self.shift

    def backward(self, top, propagate_down, bottom):
        pass
'''

NET = '''name: "pynet"
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 3 dim: 8 dim: 8 }} }} }}
layer {{ name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param {{ num_output: 4 kernel_size: 3 pad: 1
    weight_filler {{ type: "gaussian" std: 0.3 }} bias_filler {{ type: "constant" value: 0.1 }} }} }}
{python}layer {{ name: "relu1" type: "ReLU" bottom: "{last}" top: "relu1" }}
'''


def python_layer(name: str, bottom: str, module: str = "affine_layer", layer: str = "Affine",
                 param_str: str = "2 1") -> str:
    return (f'layer {{ name: "{name}" type: "Python" bottom: "{bottom}" top: "{name}"\n'
            f'  python_param {{ module: "{module}" layer: "{layer}" param_str: "{param_str}" }} }}\n')


def write_net(path: Path, *layers: tuple[str, dict]) -> str:
    text, last = "", "conv1"
    for name, kw in layers:
        text += python_layer(name, last, **kw)
        last = name
    path.write_text(NET.format(python=text, last=last))
    return str(path)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The layer module's folder, the net, a real caffemodel (conv1's weights) and an input."""
    import caffe

    d = tmp_path_factory.mktemp("pylayer")
    mods = d / "mods"
    mods.mkdir()
    (mods / "affine_layer.py").write_text(AFFINE)
    (mods / "broken_import.py").write_text("import numpy\nfrom numpy import no_such_name_xyz  # noqa\n")
    (mods / "not_a_layer.py").write_text("class Affine:\n    pass\n")
    conv_only = d / "conv_only.prototxt"
    conv_only.write_text(NET.format(python="", last="conv1"))
    caffe.set_mode_cpu()
    net = caffe.Net(str(conv_only), caffe.TEST)
    weights = d / "conv1.caffemodel"
    net.save(str(weights))
    w, b = (np.array(p.data) for p in net.params["conv1"])
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    return {"dir": d, "mods": str(mods), "proto": write_net(d / "pynet.prototxt", ("affine", {})),
            "weights": str(weights), "w": w, "b": b, "x": x}


def keras_port(files, *, scale=2.0, shift=1.0, named=True):
    import keras

    inp = keras.Input((8, 8, 3), name="data" if named else None)
    conv = keras.layers.Conv2D(4, 3, padding="same", name="conv1" if named else None)
    y = conv(inp)
    y = keras.layers.Lambda(lambda t: t * scale + shift, name="affine" if named else None)(y)
    y = keras.layers.ReLU(name="relu1" if named else None)(y)
    conv.set_weights([files["w"].transpose(2, 3, 1, 0), files["b"]])
    return keras.Model(inp, y)


def test_this_caffe_build_registers_python_layers():
    import caffe

    assert "Python" in caffe.layer_type_list()


def test_a_python_layer_is_captured_like_any_other_layer(files):
    t = capture_caffe(files["proto"], files["weights"], files["x"], pythonpath=[files["mods"]])
    assert [p.name for p in t] == ["data", "conv1", "affine", "relu1"]
    p = t["affine"]
    assert p.kind == "Python" and p.inputs == ["conv1"] and p.layout == "NCHW"
    assert p.params == {"module": "affine_layer", "layer": "Affine", "param_str": "2 1"}
    conv = t["conv1"].value
    np.testing.assert_allclose(p.value, conv * 2 + 1, rtol=1e-6)
    np.testing.assert_allclose(t["relu1"].value, np.maximum(conv * 2 + 1, 0), rtol=1e-6)
    assert t.meta["pythonpath"] == [files["mods"]]


def test_the_top_level_capture_caffe_takes_pythonpath_too(files):
    import layerparity

    t = layerparity.capture_caffe(files["proto"], files["weights"], files["x"], pythonpath=files["mods"])
    assert t["affine"].kind == "Python" and t.meta["pythonpath"] == [files["mods"]]
    np.testing.assert_allclose(t["affine"].value, t["conv1"].value * 2 + 1, rtol=1e-6)


def test_a_correct_keras_port_passes_and_the_python_layer_is_a_row(files):
    report = compare_models(files["proto"], keras_port(files), files["x"], caffe_weights=files["weights"],
                            caffe_pythonpath=[files["mods"]])
    assert report, report
    row = report.row("affine")
    assert row.caffe_kind == "Python" and row.tf_layer == "affine"
    assert row.metrics is not None and row.metrics.max_abs_error < 1e-4
    assert report.coverage.passes and "affine" not in report.coverage.uncovered


def test_assert_parity_takes_caffe_pythonpath(files):
    from layerparity import assert_parity

    report = assert_parity(files["proto"], keras_port(files), files["x"], caffe_weights=files["weights"],
                           caffe_pythonpath=[files["mods"]])
    assert report.row("affine").caffe_kind == "Python"
    with pytest.raises(AssertionError, match="affine"):
        assert_parity(files["proto"], keras_port(files, scale=3.0), files["x"], caffe_weights=files["weights"],
                      caffe_pythonpath=[files["mods"]])


def test_a_buggy_port_fails_at_the_python_layer(files):
    report = compare_models(files["proto"], keras_port(files, shift=0.0), files["x"],
                            caffe_weights=files["weights"], caffe_options={"pythonpath": [files["mods"]]})
    assert not report
    assert report.first_divergence is not None and report.first_divergence.divergent_layer == "affine"
    assert report.row("conv1").metrics.max_abs_error < 1e-4  # upstream still agrees


def test_an_unnamed_port_pairs_the_python_layer_by_structure(files):
    report = compare_models(files["proto"], keras_port(files, named=False), files["x"],
                            caffe_weights=files["weights"], caffe_pythonpath=files["mods"])
    assert report
    row = report.row("affine")
    assert row.tf_kind == "Lambda" and row.tf_layer.startswith("lambda")


def test_a_port_in_standard_layers_needs_a_mapping_for_the_python_layer(files):
    """Rescaling (kind "scale") is not taken for the Python layer by structure: uncovered, so
    the check fails; with an explicit mapping it is compared, and passes."""
    import keras

    inp = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(4, 3, padding="same")
    y = keras.layers.Rescaling(2.0, offset=1.0, name="scale_shift")(conv(inp))
    model = keras.Model(inp, keras.layers.ReLU()(y))
    conv.set_weights([files["w"].transpose(2, 3, 1, 0), files["b"]])
    kw = {"caffe_weights": files["weights"], "caffe_pythonpath": [files["mods"]]}
    report = compare_models(files["proto"], model, files["x"], **kw)
    assert not report and "affine" in report.coverage.uncovered
    report = compare_models(files["proto"], model, files["x"], mapping={"affine": "scale_shift"}, **kw)
    assert report and report.row("affine").tf_layer == "scale_shift"


def test_a_python_layer_the_port_leaves_out_is_uncovered_never_dropped(files):
    import keras

    inp = keras.Input((8, 8, 3), name="data")
    conv = keras.layers.Conv2D(4, 3, padding="same", name="conv1")
    y = keras.layers.ReLU(name="relu1")(conv(inp))
    conv.set_weights([files["w"].transpose(2, 3, 1, 0), files["b"]])
    report = compare_models(files["proto"], keras.Model(inp, y), files["x"], caffe_weights=files["weights"],
                            caffe_pythonpath=[files["mods"]])
    assert not report
    assert "affine" in report.coverage.uncovered


# -- errors: each one names the layer and the module, fast, and never kills the worker --------


def caffe_error(*args, **kw) -> str:
    start = time.monotonic()
    with pytest.raises(CaffeError) as ei:
        with CaffeBackend(*args, timeout=120, **kw) as cb:
            cb.capture(np.ones((1, 3, 8, 8), np.float32))
    assert time.monotonic() - start < 60, "the error took too long (a hang?)"
    return str(ei.value)


def test_a_missing_module_names_the_layer_the_module_and_the_fix(files):
    msg = caffe_error(files["proto"], files["weights"])
    assert "pynet.prototxt:6: layer 'affine' (Python layer 'Affine' of module 'affine_layer')" in msg
    assert "ModuleNotFoundError: No module named 'affine_layer'" in msg
    assert "caffe_pythonpath" in msg


def test_an_import_error_inside_the_module_shows_its_first_line_and_where(files):
    proto = write_net(files["dir"] / "broken.prototxt", ("prop", {"module": "broken_import"}))
    msg = caffe_error(proto, files["weights"], pythonpath=[files["mods"]])
    assert "layer 'prop' (Python layer 'Affine' of module 'broken_import')" in msg
    assert "importing module 'broken_import' raised ImportError: cannot import name 'no_such_name_xyz'" in msg
    assert "broken_import.py:2" in msg


def test_a_module_without_the_class_or_with_a_non_layer_class_is_named(files):
    proto = write_net(files["dir"] / "noclass.prototxt", ("affine", {"layer": "Nope"}))
    msg = caffe_error(proto, files["weights"], pythonpath=[files["mods"]])
    assert "layer 'affine'" in msg and "has no 'Nope'" in msg and "its caffe.Layer classes: Affine" in msg
    proto = write_net(files["dir"] / "notlayer.prototxt", ("affine", {"module": "not_a_layer"}))
    msg = caffe_error(proto, files["weights"], pythonpath=[files["mods"]])
    assert "not_a_layer.Affine is not a subclass of caffe.Layer" in msg


def test_an_exception_in_setup_names_the_layer_that_raised_and_only_its_first_line(files):
    # two layers of one class: the second one's param_str is bad, and it is the one named
    proto = write_net(files["dir"] / "badsetup.prototxt", ("first", {}), ("second", {"param_str": "oops"}))
    msg = caffe_error(proto, files["weights"], pythonpath=[files["mods"]])
    assert "badsetup.prototxt:8: layer 'second' (Python layer 'Affine' of module 'affine_layer')" in msg
    assert "its setup() raised ValueError: param_str must be 'scale shift [limit]', got 'oops'" in msg
    assert "affine_layer.py:" in msg and "second line" not in msg and "'first'" not in msg


def test_an_exception_in_forward_is_an_input_error_and_the_worker_lives_on(files):
    proto = write_net(files["dir"] / "limit.prototxt", ("affine", {"param_str": "2 1 100"}))
    with CaffeBackend(proto, files["weights"], pythonpath=[files["mods"]], timeout=120) as cb:
        big = np.full((1, 3, 8, 8), 1000, np.float32)
        for run in (lambda: cb.capture(big), lambda: cb.forward(big, ["relu1"])):
            with pytest.raises(CaffeError) as ei:
                run()
            msg = str(ei.value)
            assert "layer 'affine' (Python layer 'Affine' of module 'affine_layer')" in msg
            assert "its forward() raised RuntimeError: input above the limit 100" in msg
            assert isinstance(ei.value, InputError) and cb.alive
        t = cb.capture(files["x"])  # the same worker still runs the net
        np.testing.assert_allclose(t["affine"].value, t["conv1"].value * 2 + 1, rtol=1e-6)


def test_a_live_net_in_this_process_names_the_python_layer_that_raised(files, monkeypatch):
    """``from_net``: no worker and no guard; the layer is still named, as an input error."""
    import caffe

    monkeypatch.syspath_prepend(files["mods"])
    proto = write_net(files["dir"] / "live.prototxt", ("affine", {"param_str": "2 1 100"}))
    net = caffe.Net(proto, files["weights"], caffe.TEST)
    cb = CaffeBackend.from_net(net, prototxt=proto, pythonpath=files["mods"])
    big = np.full((1, 3, 8, 8), 1000, np.float32)
    for run in (lambda: cb.capture(big), lambda: cb.forward(big, ["relu1"])):
        with pytest.raises(CaffeError) as ei:
            run()
        msg = str(ei.value)
        assert "layer 'affine' (Python layer 'Affine' of module 'affine_layer')" in msg
        assert "its forward() raised RuntimeError: input above the limit 100" in msg and "affine_layer.py:" in msg
    t = cb.capture(files["x"])
    np.testing.assert_allclose(t["affine"].value, t["conv1"].value * 2 + 1, rtol=1e-6)


def test_pythonpath_must_name_existing_folders(files):
    with pytest.raises(InputError, match="pythonpath folder .*nowhere does not exist"):
        CaffeBackend(files["proto"], files["weights"], pythonpath=str(files["dir"] / "nowhere"))


# -- the CLI and the pytest plugin ------------------------------------------------------------


KERAS_AFFINE = '''
import keras


@keras.saving.register_keras_serializable(package="pylayer_test")
class Affine(keras.layers.Layer):
    def __init__(self, scale=2.0, shift=1.0, **kw):
        super().__init__(**kw)
        self.scale, self.shift = scale, shift

    def call(self, x):
        return x * self.scale + self.shift

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "shift": self.shift}
'''


@pytest.fixture(scope="module")
def keras_files(files):
    """A .keras port with a custom Affine layer (its module beside it), and the input as .npy."""
    import importlib.util

    import keras

    d = files["dir"]
    (d / "affine_keras.py").write_text(KERAS_AFFINE)
    spec = importlib.util.spec_from_file_location("affine_keras", d / "affine_keras.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    inp = keras.Input((8, 8, 3), name="data")
    conv = keras.layers.Conv2D(4, 3, padding="same", name="conv1")
    y = keras.layers.ReLU(name="relu1")(mod.Affine(name="affine")(conv(inp)))
    conv.set_weights([files["w"].transpose(2, 3, 1, 0), files["b"]])
    keras.Model(inp, y).save(d / "port.keras")
    np.save(d / "x.npy", files["x"])
    return {"keras": str(d / "port.keras"), "module": str(d / "affine_keras.py"), "x": str(d / "x.npy")}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "layerparity.cli", *args], capture_output=True, text=True,
                          timeout=600)


def test_cli_compare_and_capture_take_caffe_pythonpath(files, keras_files, tmp_path):
    base = ["compare", "--caffe-model", files["proto"], "--caffe-weights", files["weights"],
            "--tf-model", keras_files["keras"], "--keras-module", keras_files["module"], "--input", keras_files["x"]]
    r = cli(*base, "--caffe-pythonpath", str(tmp_path), "--caffe-pythonpath", files["mods"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "affine" in r.stdout
    r = cli(*base)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "layer 'affine'" in r.stderr and "No module named 'affine_layer'" in r.stderr
    out = tmp_path / "caffe.npz"
    r = cli("capture", "--caffe-model", files["proto"], "--caffe-weights", files["weights"],
            "--input", keras_files["x"], "--caffe-pythonpath", files["mods"], "-o", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    t = Trace.load(out)
    assert t["affine"].kind == "Python"
    np.testing.assert_allclose(t["affine"].value, t["conv1"].value * 2 + 1, rtol=1e-6)
    r = cli("capture", "--caffe-model", files["proto"], "--input", keras_files["x"],
            "--caffe-pythonpath", str(tmp_path / "missing"), "-o", str(out))
    assert r.returncode == 2 and "--caffe-pythonpath" in r.stderr and "no such folder" in r.stderr


def test_the_parity_fixture_takes_the_pythonpath_option_and_ini(files, keras_files, pytester, monkeypatch):
    monkeypatch.setenv("GLOG_minloglevel", "2")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    pytester.makepyfile(test_port=textwrap.dedent(f"""
        import numpy as np

        def test_port(parity):
            report = parity.check({files['proto']!r}, {keras_files['keras']!r}, np.load({keras_files['x']!r}),
                                  caffe_weights={files['weights']!r})
            assert report.row("affine").caffe_kind == "Python"

        def test_caffe_net(caffe_net):
            t = caffe_net({files['proto']!r}, {files['weights']!r}).capture(np.load({keras_files['x']!r}))
            assert t["affine"].kind == "Python"
    """))
    keras_opt = (f"--parity-keras-module={keras_files['module']}",)  # "=": no path argument to move the rootdir
    result = pytester.runpytest_subprocess(*keras_opt, "--parity-caffe-pythonpath", files["mods"])
    result.assert_outcomes(passed=2)
    result = pytester.runpytest_subprocess(*keras_opt)
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*layer 'affine'*No module named 'affine_layer'*"])
    pytester.makeini(f"[pytest]\nparity_caffe_pythonpath =\n    {files['mods']}\n")
    result = pytester.runpytest_subprocess(*keras_opt)
    result.assert_outcomes(passed=2)


def test_sweep_takes_caffe_pythonpath_and_keras_modules_in_its_worker_processes(files, keras_files, tmp_path):
    """sweep(caffe_pythonpath=, keras_modules=) reach a spawned worker, which imports the Keras
    module itself (this process's registration does not travel) and gives the Caffe worker the
    folder; without the folder, the sweep fails naming the Python layer's module."""
    from layerparity import sweep

    stack = np.concatenate([files["x"], files["x"] * 0.5, files["x"] - 1]).astype(np.float32)
    np.save(tmp_path / "stack.npy", stack)
    result = sweep(files["proto"], keras_files["keras"], str(tmp_path / "stack.npy"), caffe_weights=files["weights"],
                   caffe_pythonpath=files["mods"], keras_modules=[keras_files["module"]], workers=1, sample=1)
    assert result.passed and result.completed == 3, result.summary()
    assert result.layer("affine").n >= 1 and result.layer("affine").failed == 0
    with pytest.raises(InputError, match=r"(?s)affine.*affine_layer"):
        sweep(files["proto"], keras_files["keras"], stack, caffe_weights=files["weights"],
              keras_modules=[keras_files["module"]], workers=0)
    with pytest.raises(InputError, match="pythonpath folder .*missing.* does not exist"):
        sweep(files["proto"], keras_files["keras"], stack, caffe_weights=files["weights"],
              caffe_pythonpath=str(tmp_path / "missing"), workers=0)


def test_cli_sweep_takes_caffe_pythonpath_and_keras_module(files, keras_files, tmp_path):
    base = ["sweep", "--caffe-model", files["proto"], "--caffe-weights", files["weights"],
            "--tf-model", keras_files["keras"], "--inputs", keras_files["x"], "--workers", "1", "--quiet"]
    r = cli(*base, "--keras-module", keras_files["module"], "--caffe-pythonpath", files["mods"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "PASS" in r.stdout
    r = cli(*base, "--caffe-pythonpath", files["mods"])  # the port's Affine class unknown to the worker
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Affine" in r.stderr and "--keras-module" in r.stderr
    r = cli(*base, "--keras-module", keras_files["module"])  # the Caffe net's module not found
    assert r.returncode == 2, r.stdout + r.stderr
    assert "layer 'affine'" in r.stderr and "No module named 'affine_layer'" in r.stderr
    r = cli(*base, "--caffe-pythonpath", str(tmp_path / "missing"))
    assert r.returncode == 2 and "--caffe-pythonpath" in r.stderr and "no such folder" in r.stderr
    r = cli(*base, "--keras-module", str(tmp_path / "missing.py"))
    assert r.returncode == 2 and "--keras-module" in r.stderr and "no such file" in r.stderr

"""Custom Keras layers: ``custom_objects=`` (load_tf, compare_models, assert_parity),
``--keras-module`` (CLI), ``--parity-keras-module`` (pytest), the one-line error naming an
unknown class, and the demo's LRN loading with no registration call. Real Caffe and TF.

The port under test is the demo's, with its LRN replaced by a user's own ``CaffeLRN``
class (registered as ``lpt_custom>CaffeLRN`` where the file was saved, in a child
process, so this process does not know it until a test gives it)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from layerparity import demo
from layerparity.errors import ModelLoadError

pytest_plugins = ["pytester"]

PY = sys.executable
FILES = demo.files()
PKG = "lpt_custom"

USER_MODULE = textwrap.dedent(f"""
    import keras
    import tensorflow as tf


    @keras.saving.register_keras_serializable(package={PKG!r}, name="CaffeLRN")
    class CaffeLRN(keras.layers.Layer):
        def __init__(self, depth_radius=2, bias=1.0, alpha=1e-4, beta=0.75, **kw):
            super().__init__(**kw)
            self.depth_radius, self.bias, self.alpha, self.beta = int(depth_radius), float(bias), float(alpha), float(beta)

        def call(self, x):
            return tf.nn.local_response_normalization(x, self.depth_radius, self.bias, self.alpha, self.beta)

        def get_config(self):
            return {{**super().get_config(), "depth_radius": self.depth_radius, "bias": self.bias,
                    "alpha": self.alpha, "beta": self.beta}}
""")

# the same class, NOT registered: what a caller hands over as custom_objects
PLAIN_CLASS = USER_MODULE.replace(f"@keras.saving.register_keras_serializable(package={PKG!r}, name=\"CaffeLRN\")\n", "")


def _env() -> dict[str, str]:
    return {**os.environ, "GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.fixture(scope="module")
def custom_port(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("custom_port")
    module = d / "my_layers.py"
    module.write_text(USER_MODULE)
    port = d / "custom_port.keras"
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(d)!r})
        import my_layers
        from layerparity import demo
        demo.lrn_layer_class = lambda: my_layers.CaffeLRN   # the port uses the user's LRN class
        model = demo.build_keras_port(demo.demo_weights())
        model.save({str(port)!r})
        model.save({str(port.with_suffix(".h5"))!r})
    """)
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return {"dir": str(d), "module": str(module), "port": str(port)}


def _plain_class():
    ns: dict = {}
    exec(compile(PLAIN_CLASS, "<plain CaffeLRN>", "exec"), ns)  # noqa: S102 - our own test source
    return ns["CaffeLRN"]


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_unknown_class_fails_with_one_line_naming_class_and_option(custom_port, suffix):
    from layerparity.backends.tensorflow import load_tf

    with pytest.raises(ModelLoadError) as ei:
        load_tf(os.path.splitext(custom_port["port"])[0] + suffix)
    msg = str(ei.value)
    assert "\n" not in msg
    assert f"'{PKG}>CaffeLRN'" in msg and "'norm1'" in msg
    assert "custom_objects=" in msg and "--keras-module" in msg


def test_custom_objects_in_load_tf_compare_models_and_assert_parity(custom_port):
    from layerparity import assert_parity, compare_models
    from layerparity.backends.tensorflow import load_tf

    cls = _plain_class()
    with load_tf(custom_port["port"], custom_objects={f"{PKG}>CaffeLRN": cls}) as tb:
        assert type(tb.model.get_layer("norm1")).__name__ == "CaffeLRN"
    x = np.load(FILES.input)
    report = compare_models(FILES.prototxt, custom_port["port"], x, caffe_weights=FILES.caffemodel,
                            custom_objects={f"{PKG}>CaffeLRN": cls})
    assert report.row("norm1").passed  # the user's LRN matches Caffe's
    assert report.first_divergence.caffe_layer == demo.BUG_LAYER
    report = compare_models(FILES.prototxt, custom_port["port"], x, caffe_weights=FILES.caffemodel,
                            tf_options={"custom_objects": [(f"{PKG}>CaffeLRN", cls)]})
    assert report.first_divergence.caffe_layer == demo.BUG_LAYER
    with pytest.raises(AssertionError, match="conv2"):
        assert_parity(FILES.prototxt, custom_port["port"], x, caffe_weights=FILES.caffemodel,
                      custom_objects={f"{PKG}>CaffeLRN": cls})


def test_bad_custom_objects_are_model_load_errors(custom_port):
    from layerparity.backends.tensorflow import load_tf

    with pytest.raises(ModelLoadError, match="custom_objects"):
        load_tf(custom_port["port"], custom_objects=42)
    with pytest.raises(ModelLoadError, match="keras module .*nope.py: no such file"):
        from layerparity.backends.keras import import_keras_module

        import_keras_module(os.path.join(custom_port["dir"], "nope.py"))


def _cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "layerparity.cli", *args], capture_output=True, text=True, env=_env(),
                          timeout=600, cwd=cwd)


def test_cli_keras_module(custom_port):
    base = ["compare", "--caffe-model", FILES.prototxt, "--caffe-weights", FILES.caffemodel,
            "--tf-model", custom_port["port"], "--input", FILES.input]
    r = _cli(*base)
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"{PKG}>CaffeLRN" in lines[0] and "--keras-module" in lines[0]
    r = _cli(*base, "--keras-module", custom_port["module"])
    assert r.returncode == 1, r.stderr  # loaded; the demo's planted bug is found
    assert "conv2" in r.stdout
    r = _cli(*base, "--keras-module", os.path.join(custom_port["dir"], "missing.py"))
    assert r.returncode == 2 and "--keras-module" in r.stderr and "no such file" in r.stderr


def test_cli_keras_module_may_offer_a_dict(custom_port, tmp_path):
    """A module that registers nothing but offers ``custom_objects``."""
    mod = tmp_path / "offers.py"
    mod.write_text(PLAIN_CLASS + f"\ncustom_objects = {{{PKG + '>CaffeLRN'!r}: CaffeLRN}}\n")
    out = tmp_path / "t.npz"
    r = _cli("capture", "--tf-model", custom_port["port"], "--input", FILES.input, "-o", str(out),
             "--keras-module", str(mod))
    assert r.returncode == 0, r.stderr
    assert out.is_file()


def test_demo_port_loads_without_registering_anything():
    """The demo's LRN (``layerparity>LRN``) is known to load_tf by the same mechanism: a
    fresh process that never calls register_keras_objects loads port.keras."""
    code = textwrap.dedent(f"""
        import caffe  # noqa: F401 (caffe before TF, as everywhere)
        from layerparity.backends.tensorflow import load_tf
        import keras
        assert keras.saving.get_registered_object("layerparity>LRN") is None
        with load_tf({FILES.keras!r}) as tb:
            print(type(tb.model.get_layer("norm1")).__name__)
    """)
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().endswith("LRN")


def test_parity_fixture_keras_module_option(custom_port, pytester):
    pytester.makepyfile(test_port=textwrap.dedent(f"""
        import numpy as np

        def test_custom(parity):
            parity.check({FILES.prototxt!r}, {custom_port["port"]!r}, np.load({FILES.input!r}),
                         caffe_weights={FILES.caffemodel!r})
    """))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*{PKG}>CaffeLRN*--parity-keras-module*"])
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--parity-keras-module", custom_port["module"])
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*Models diverge at Caffe layer 'conv2'*"])

"""Messages that point at the fix: an image of the wrong size names the image and the
``--resize H W`` that fits it; a missing TensorFlow names the extra to install; golden-trace
messages show paths relative to the pytest rootdir. Real Caffe and real TF."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from layerparity import cli, demo

pytest_plugins = ["pytester"]

PY = sys.executable
FILES = demo.files()


def _env() -> dict[str, str]:
    return {**os.environ, "GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "2"}


def test_image_of_another_size_names_the_image_and_suggests_resize(tmp_path, capsys):
    from PIL import Image

    rng = np.random.RandomState(3)
    Image.fromarray(rng.randint(0, 256, (50, 60, 3)).astype(np.uint8), "RGB").save(tmp_path / "cat.png")
    code = cli.main(["compare", "--caffe-model", FILES.prototxt, "--caffe-weights", FILES.caffemodel,
                     "--tf-model", FILES.keras, "--input", str(tmp_path / "cat.png")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1
    assert err.startswith(f"layerparity compare: error: {tmp_path / 'cat.png'}: this image is 50 x 60"), err
    assert "--resize 32 32" in err
    # the advice works: resized, it runs (and finds the demo's bug)
    code = cli.main(["compare", "--caffe-model", FILES.prototxt, "--caffe-weights", FILES.caffemodel,
                     "--tf-model", FILES.keras, "--input", str(tmp_path / "cat.png"), "--resize", "32", "32"])
    assert code == 1, capsys.readouterr().err


def test_an_array_of_another_size_keeps_the_model_message(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 50, 60), np.float32))
    code = cli.main(["compare", "--caffe-model", FILES.prototxt, "--caffe-weights", FILES.caffemodel,
                     "--tf-model", FILES.keras, "--input", str(tmp_path / "x.npy")])
    err = capsys.readouterr().err
    assert code == 2
    assert "--resize" not in err and "has shape (1, 3, 50, 60)" in err


@pytest.mark.parametrize("how", ["api", "cli"])
def test_missing_tensorflow_names_the_extra(how, tmp_path):
    """TensorFlow made unimportable in a child process (``sys.modules['tensorflow'] = None``
    is what Python does for a module that is not there)."""
    if how == "api":
        body = f"""
            from layerparity.backends.tensorflow import load_tf
            from layerparity.errors import FrameworkMissingError
            try:
                load_tf({FILES.keras!r})
            except FrameworkMissingError as e:
                print(e)
        """
    else:
        body = f"""
            from layerparity.cli import main
            sys.exit(main(["capture", "--tf-model", {FILES.keras!r}, "--input", {FILES.input!r},
                           "-o", {str(tmp_path / "t.npz")!r}]))
        """
    code = "import sys\nsys.modules['tensorflow'] = None\nsys.modules['keras'] = None\n" + textwrap.dedent(body)
    r = subprocess.run([PY, "-c", code], capture_output=True, text=True, env=_env(), timeout=300)
    out = r.stdout + r.stderr
    assert "pip install 'layerparity[tf]'" in out, out
    if how == "cli":
        assert r.returncode == 2


def test_golden_messages_show_paths_relative_to_the_rootdir(pytester):
    pytester.makepyfile(test_port=textwrap.dedent(f"""
        import numpy as np

        def test_golden(parity):
            parity.check({FILES.prototxt!r}, {FILES.keras!r}, np.load({FILES.input!r}),
                         caffe_weights={FILES.caffemodel!r}, golden="demo")
    """))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*golden Caffe trace test_port/demo.caffe.npz is missing: record it with*"])
    assert str(pytester.path) not in result.stdout.str().split("golden Caffe trace", 1)[1].splitlines()[0]


def test_demo_write_puts_the_readme_files_in_a_folder_and_the_readme_commands_run(tmp_path, capsys):
    d = tmp_path / "try"
    assert cli.main(["demo", "--write", str(d)]) == 0
    names = {"deploy.prototxt", "weights.caffemodel", "model.keras", "port.keras", "input.npy", "inputs.npy"}
    assert names <= {p.name for p in d.iterdir()}
    assert np.load(d / "inputs.npy").shape == (8, 3, 32, 32)
    np.testing.assert_array_equal(np.load(d / "inputs.npy")[:1], np.load(d / "input.npy"))
    capsys.readouterr()
    # the README's compare command, as written, in that folder
    old = os.getcwd()
    os.chdir(d)
    try:
        code = cli.main(["compare", "--caffe-model", "deploy.prototxt", "--caffe-weights", "weights.caffemodel",
                         "--tf-model", "model.keras", "--input", "input.npy", "--html", "report.html"])
    finally:
        os.chdir(old)
    assert code == 1 and "First divergence: Caffe layer 'conv2'" in capsys.readouterr().out
    assert (d / "report.html").is_file()
    # an existing file is never replaced
    assert cli.main(["demo", "--write", str(d)]) == 2
    assert "would replace deploy.prototxt" in capsys.readouterr().err
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "layerparity demo --write" in readme


def test_missing_caffe_says_how_to_get_it(tmp_path):
    """The Caffe worker's interpreter finds a ``caffe`` that fails to import (first on its
    PYTHONPATH): the error says Caffe is not on PyPI and how to build or point at one."""
    from layerparity.backends.caffe import CaffeBackend
    from layerparity.errors import FrameworkMissingError

    (tmp_path / "caffe").mkdir()
    (tmp_path / "caffe" / "__init__.py").write_text("raise ImportError('caffe is not installed here')\n")
    with pytest.raises(FrameworkMissingError) as ei:
        with CaffeBackend(FILES.prototxt, FILES.caffemodel, env={"PYTHONPATH": str(tmp_path)}) as cb:
            cb.input_specs()
    msg = str(ei.value)
    assert "caffe is not installed here" in msg
    assert "make setup" in msg and "python=" in msg and "layerparity[caffe]" in msg

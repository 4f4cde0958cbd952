"""layerparity.sweep / `layerparity sweep` against real Caffe and real TensorFlow.

Nets: the bundled demo net with its correct port, its buggy port (conv2 padding: every
input fails there), and a port whose relu1 is a ReLU6 (only inputs large enough to
saturate fail, at relu1); a tiny Embed net whose Caffe worker segfaults on one input
and whose port kills its own process (SIGKILL, as the OOM killer does) on another.
"""

from __future__ import annotations

import json
import math
import os
import pty
import re
import select
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import layerparity
from layerparity import demo
from layerparity.report.sweep import read_sweep_json, render_sweep_html, validate_sweep
from layerparity.sweeper.feed import open_source
from layerparity.sweeper.stats import RELATIVE_ACCURACY, Distribution

README = Path(__file__).resolve().parents[1] / "README.md"
ENV = {**os.environ, "GLOG_minloglevel": "2", "TF_CPP_MIN_LOG_LEVEL": "2"}


def _demo_weights():
    return (getattr(demo, "demo_weights", None) or demo._weights)()


@pytest.fixture(scope="module")
def files():
    demo.register_keras_objects()
    return demo.files()


@pytest.fixture(scope="module")
def ports(files, tmp_path_factory):
    """Paths of the correct demo port and of one whose relu1 saturates at 6 (ReLU6)."""
    import keras

    d = tmp_path_factory.mktemp("ports")
    fixed = demo.build_keras_port(_demo_weights(), buggy=False)
    fixed.save(str(d / "fixed.keras"))
    cfg = fixed.get_config()
    for layer in cfg["layers"]:
        if layer["config"]["name"] == "relu1":
            layer["config"]["max_value"] = 6.0
    relu6 = keras.Model.from_config(cfg)
    relu6.set_weights(fixed.get_weights())
    relu6.save(str(d / "relu6.keras"))
    return {"fixed": str(d / "fixed.keras"), "relu6": str(d / "relu6.keras"), "buggy": files.keras}


def _inputs(n: int, large: set[int] = frozenset(), seed: int = 3) -> np.ndarray:
    """n demo inputs; those in ``large`` are scaled so that conv1 goes far above 6."""
    x = np.random.default_rng(seed).uniform(-1, 1, size=(n, 3, 32, 32)).astype(np.float32) * 0.2
    for i in large:
        x[i] *= 100.0
    return x


def _comparable(d: dict) -> dict:
    d = json.loads(json.dumps(d))
    d.pop("run")
    return d


# -- statistics ---------------------------------------------------------------------------------


def test_distribution_quantiles_are_within_the_documented_relative_error():
    vals = np.random.default_rng(0).lognormal(-10, 3, size=20000)
    vals[::997] = 0.0
    d = Distribution()
    for i, v in enumerate(vals):
        d.add(float(v), i, f"in{i}")
    for q in (0.5, 0.99):
        exact = float(np.quantile(vals, q, method="lower"))
        assert abs(d.quantile(q) - exact) <= RELATIVE_ACCURACY * exact * 1.0001 + 1e-300, (q, d.quantile(q), exact)
    assert d.max == vals.max() and d.worst_index == int(vals.argmax())
    assert d.mean == pytest.approx(vals.mean(), rel=1e-9)
    # constant memory: the sketch's buckets are bounded whatever the count
    wide = Distribution()
    for k in range(-300, 301):
        wide.add(10.0**k, k, "")
    assert len(wide._sketch._store.bins) <= 2048 and wide.quantile(1.0) == 1e300
    d.add(float("nan"), 20000, "bad")
    assert d.nonfinite == 1 and d.quantile(1.0) == math.inf and d.worst_index == 20000


def test_sources_folder_of_images_stacks_and_iterables(tmp_path):
    from PIL import Image

    from layerparity.inputs import Preprocess, load_image

    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 255, (10, 12, 3), dtype=np.uint8)).save(tmp_path / f"im{k}.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "notes.txt").write_text("ignored")
    pre = Preprocess(resize=(8, 8), channel_swap=(2, 1, 0), raw_scale=255.0, mean=(104.0, 117.0, 123.0))
    src = open_source(tmp_path, pre)
    items = list(src)
    assert src.length == 4 and [os.path.basename(lab) for lab, _ in items] == ["broken.png", "im0.png", "im1.png", "im2.png"]
    assert isinstance(items[0][1], layerparity.InputDataError)  # becomes that input's error row
    np.testing.assert_array_equal(items[1][1], load_image(tmp_path / "im0.png", pre))
    stack = rng.normal(size=(5, 3, 4, 4)).astype(np.float32)
    np.save(tmp_path / "s.npy", stack)
    got = list(open_source(tmp_path / "s.npy"))
    assert [lab for lab, _ in got][:2] == [f"{tmp_path / 's.npy'}[0]", f"{tmp_path / 's.npy'}[1]"]
    np.testing.assert_array_equal(np.concatenate([x for _, x in got]), stack)
    # an iterable: a (C, H, W) item is one input, an (N, C, H, W) item is N inputs
    got = list(open_source(iter([stack[0], stack[1:4], stack[4:]])))
    assert [lab for lab, _ in got] == [f"input[{i}]" for i in range(5)]
    np.testing.assert_array_equal(np.concatenate([x for _, x in got]), stack)
    with pytest.raises(layerparity.InputDataError, match="preprocessing"):
        open_source(tmp_path / "s.npy", pre)


def test_reports_escape_hostile_names_and_validate(tmp_path):
    """Layer names come from model files and labels from file names: never markup in the page."""
    from layerparity.sweeper.runner import SweepResult
    from layerparity.sweeper.stats import ItemResult, SweepStats

    bad = "<img src=x onerror=alert(1)>"
    st = SweepStats()
    st.set_layers([("conv" + bad, "tf" + bad), ("prob", "prob")], ["prob"])
    st.add(ItemResult(0, "a.png", "pass", full=True, rows=[("conv" + bad, "tf" + bad, 1e-7, 1e-6, 0.01, True),
                                                               ("prob", "prob", 1e-8, 1e-7, 0.001, True)]))
    st.add(ItemResult(1, bad + ".png", "fail", screen_failed=True, full=True,
                      rows=[("conv" + bad, "tf" + bad, 3.0, 9.0, float("inf"), False), ("prob", "prob", 0.1, 1.0, 50.0, False)],
                      first_divergence="conv" + bad, first_divergence_tf="tf" + bad,
                      example={"first_divergence": {"caffe_layer": "conv" + bad, "diagnoses": [
                          {"kind": "k" + bad, "summary": bad, "fix": bad}]}}))
    st.add(ItemResult(2, "c.png", "error", error="CaffeError: " + bad))
    r = SweepResult("p" + bad, "t", "outputs-first", None, 3, dict(st.counts), [("prob", "prob")], st.layer_list(),
                    st.failure_groups(), list(st.errors), st.worst_inputs(), [0])
    page = render_sweep_html(r)
    assert "<img" not in page and page.count("&lt;img src=x onerror=alert(1)&gt;") >= 6
    d = r.to_dict()
    validate_sweep(d)
    assert d["layers"][0]["tolerance_ratio"]["max"] == "inf" and d["layers"][0]["tolerance_ratio"]["nonfinite"] == 1
    assert d["failures"][0]["inputs"] == [{"index": 1, "label": bad + ".png"}]
    assert d["errors"]["rows"] == [{"index": 2, "label": "c.png", "error": "CaffeError: " + bad}]
    assert not r and r.failed_inputs == {"conv" + bad: [1]}
    d["inputs"]["failed"] = 2
    with pytest.raises(layerparity.ReportFormatError, match="passed \\+ failed \\+ errors"):
        validate_sweep(d)


# -- verdicts ---------------------------------------------------------------------------------


def test_correct_port_passes_outputs_first(files, ports, tmp_path):
    x = _inputs(12)
    r = layerparity.sweep(files.prototxt, ports["fixed"], x, caffe_weights=files.caffemodel, workers=0, sample=3)
    assert r and r.passed and r.mode == "outputs-first", r.summary()
    assert r.counts == {"completed": 12, "passed": 12, "failed": 0, "errors": 0, "full": 3, "screen_failed": 0,
                        "screen_failed_passed": 0}
    assert r.outputs == [("prob", "prob")] and len(r.sample) == 3 and 0 in r.sample
    assert r.layer("prob").output and r.layer("prob").n == 12  # the screened output: every input
    assert r.layer("conv1").n == 3 and not r.layer("conv1").output  # inner layers: the full comparisons
    d = r.to_dict()
    validate_sweep(d)
    assert d["failures"] == [] and d["first_divergence_histogram"] == []
    prob = next(lay for lay in d["layers"] if lay["caffe_layer"] == "prob")
    assert prob["max_abs_error"]["p50"] <= prob["max_abs_error"]["p99"] <= prob["max_abs_error"]["max"] < 1e-5
    assert 0 <= prob["max_abs_error"]["worst_input"]["index"] < 12
    r.write_json(tmp_path / "s.json")
    assert read_sweep_json(tmp_path / "s.json") == json.loads(json.dumps(d))


def test_inputs_that_fail_are_named_and_grouped_by_first_divergent_layer(files, ports, tmp_path):
    large = {2, 5, 9}
    r = layerparity.sweep(files.prototxt, ports["relu6"], _inputs(12, large), caffe_weights=files.caffemodel,
                          workers=0, sample=2)
    assert not r
    assert r.failed_inputs == {"relu1": sorted(large)}, r.summary()
    assert r.counts["screen_failed"] == 3 and r.counts["failed"] == 3 and r.counts["passed"] == 9
    g = r.failures[0]
    assert g.tf_layer == "relu1" and g.example["index"] == 2
    assert g.example["first_divergence"]["caffe_layer"] == "relu1"
    relu1 = r.layer("relu1")
    assert relu1.failed == 3 and relu1.dists["max_abs_error"].worst_index in large
    assert {w["index"] for w in r.worst_inputs[:3]} == large
    page = render_sweep_html(r)
    assert 'class="fd-histogram"' in page and 'data-layer="relu1" data-count="3"' in page
    assert 'class="distribution-chart"' in page and 'class="tolerance"' in page
    # --every-layer: the same verdict, every input compared in full
    e = layerparity.sweep(files.prototxt, ports["relu6"], _inputs(12, large), caffe_weights=files.caffemodel,
                          workers=0, every_layer=True)
    assert e.mode == "every-layer" and e.counts["full"] == 12 and e.failed_inputs == r.failed_inputs
    assert e.layer("conv1").n == 12
    # five inputs per plain forward (the last batch padded with copies of input 11): the same verdict
    b = layerparity.sweep(files.prototxt, ports["relu6"], _inputs(12, large), caffe_weights=files.caffemodel,
                          workers=0, sample=2, batch=5)
    assert b.batch == 5 and b.failed_inputs == r.failed_inputs and b.counts == r.counts


def test_a_truncated_port_fails_the_sweep_even_though_every_input_agrees(files, ports, tmp_path):
    """The port stops after relu2 (no pool2, ip1, prob): each input's numbers agree where both
    nets have them, but the sweep cannot judge the rest of the net, so it fails and says why;
    partial=True declares the partial check and then it passes."""
    import keras

    full = keras.models.load_model(ports["fixed"])
    cut = keras.Model(full.input, full.get_layer("relu2").output)
    cut.save(str(tmp_path / "cut.keras"))
    x = _inputs(6)
    r = layerparity.sweep(files.prototxt, str(tmp_path / "cut.keras"), x, caffe_weights=files.caffemodel,
                          workers=0, sample=2)
    assert not r and not r.passed, r.summary()
    assert r.counts["failed"] == 0 and r.counts["errors"] == 0 and r.counts["passed"] == 6
    assert "'prob'" in r.coverage_problem and "ip1" in r.coverage_problem
    assert "not covered (every input)" in r.summary()
    d = r.to_dict()
    validate_sweep(d)
    assert d["passed"] is False and d["coverage_problem"] == r.coverage_problem
    assert "Not covered (every input)" in render_sweep_html(r)
    p = layerparity.sweep(files.prototxt, str(tmp_path / "cut.keras"), x, caffe_weights=files.caffemodel,
                          workers=0, sample=2, partial=True)
    assert p and p.coverage_problem == "", p.summary()
    # the CLI: exit 1 without --partial, 0 with it
    base = [sys.executable, "-m", "layerparity.cli", "sweep", "--caffe-model", files.prototxt,
            "--caffe-weights", files.caffemodel, "--tf-model", str(tmp_path / "cut.keras"),
            "--inputs", str(tmp_path / "x.npy"), "--workers", "0", "--sample", "1", "--quiet"]
    np.save(tmp_path / "x.npy", x[:2])
    out = subprocess.run(base, capture_output=True, text=True, env=ENV, timeout=600)
    assert out.returncode == 1 and "not covered (every input)" in out.stdout, out.stdout + out.stderr
    out = subprocess.run(base + ["--partial"], capture_output=True, text=True, env=ENV, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr


def test_buggy_demo_port_fails_everywhere_at_conv2_with_its_diagnosis(files):
    r = layerparity.sweep(files.prototxt, files.keras, _inputs(4), caffe_weights=files.caffemodel, workers=0)
    assert r.failed_inputs == {"conv2": [0, 1, 2, 3]}
    kinds = [d["kind"] for d in r.failures[0].example["first_divergence"]["diagnoses"]]
    assert kinds[0] == "padding_asymmetry"
    assert "padding_asymmetry" in r.summary()


def test_dask_local_cluster_gives_the_serial_result(files, ports, tmp_path):
    import distributed

    x = _inputs(10, {3, 7})
    kw = dict(caffe_weights=files.caffemodel, sample=3, progress=False)
    serial = layerparity.sweep(files.prototxt, ports["relu6"], x, workers=0, **kw)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        r = layerparity.sweep(files.prototxt, ports["relu6"], x, executor=client.get_executor(pure=False), **kw)
        pids = client.run(os.getpid)
        # the command line on the same cluster (its workers keep the models open between sweeps)
        np.save(tmp_path / "x.npy", x)
        out = subprocess.run([sys.executable, "-m", "layerparity.cli", "sweep", "--caffe-model", files.prototxt,
                              "--caffe-weights", files.caffemodel, "--tf-model", ports["relu6"], "--inputs",
                              str(tmp_path / "x.npy"), "--sample", "3", "--dask-scheduler", cluster.scheduler_address,
                              "--json", str(tmp_path / "dask.json")], capture_output=True, text=True, timeout=600, env=ENV)
    assert len(set(pids.values())) == 2
    assert r.executor.endswith("ClientExecutor")
    assert _comparable(r.to_dict()) == _comparable(serial.to_dict())
    assert r.failed_inputs == {"relu1": [3, 7]}
    assert out.returncode == 1, out.stdout + out.stderr
    via_cli = _comparable(read_sweep_json(tmp_path / "dask.json"))
    expected = _comparable(serial.to_dict())
    for d in (via_cli, expected):  # the CLI names the stack's rows by the file
        for g in d["failures"]:
            g["inputs"] = [i["index"] for i in g["inputs"]]
            g["example"].pop("label")
        d["worst_inputs"] = [w["index"] for w in d["worst_inputs"]]
        for lay in d["layers"]:
            for m in ("max_abs_error", "max_rel_error", "tolerance_ratio"):
                lay[m]["worst_input"] = lay[m]["worst_input"]["index"]
    assert via_cli == expected


# -- dying workers, Ctrl-C ------------------------------------------------------------------------------

EMBED = """
name: "embed"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 } } }
layer { name: "embed" type: "Embed" bottom: "data" top: "embed" embed_param { input_dim: 10 num_output: 3 bias_term: false } }
layer { name: "ip" type: "InnerProduct" bottom: "embed" top: "ip" inner_product_param { num_output: 5 } }
"""

_WRITE_EMBED = r"""
import sys, numpy as np, caffe
proto, out, pfile = sys.argv[1:4]
net = caffe.Net(proto, caffe.TEST)
g = np.random.default_rng(0)
for blobs in net.params.values():
    for b in blobs:
        b.data[...] = g.normal(0, 0.5, b.data.shape)
net.save(out)
np.savez(pfile, **{f"{k}__{i}": b.data for k, v in net.params.items() for i, b in enumerate(v)})
"""


@pytest.fixture(scope="module")
def embed_net(tmp_path_factory):
    """Caffe Embed reads its weight row at the input's index unchecked (a release build): a huge
    negative index segfaults the Caffe worker. The Keras port starts with a Lambda that SIGKILLs its
    own process when an input value exceeds 1000: the sweep worker dies as under the OOM killer."""
    import keras

    d = tmp_path_factory.mktemp("embed")
    proto, weights, pfile = d / "embed.prototxt", d / "embed.caffemodel", d / "p.npz"
    proto.write_text(EMBED)
    out = subprocess.run([sys.executable, "-c", _WRITE_EMBED, str(proto), str(weights), str(pfile)],
                         capture_output=True, text=True, timeout=300, env=ENV)
    assert out.returncode == 0, out.stderr[-2000:]
    with np.load(pfile) as z:
        emb, w, b = z["embed__0"], z["ip__0"], z["ip__1"]
    L = keras.layers
    inp = keras.Input((4,), name="data")
    guard = L.Lambda(lambda x: x + 0.0 * __import__("tensorflow").reshape(__import__("tensorflow").py_function(
        lambda v: (__import__("os").kill(__import__("os").getpid(), 9) if float(v.numpy().max()) > 1e3 else 0.0) or 0.0,
        [x], "float32"), []), output_shape=(4,), name="guard")
    y = L.Embedding(10, 3, name="embed")(guard(inp))
    y = L.Flatten(name="flatten")(y)
    y = L.Dense(5, name="ip")(y)
    model = keras.Model(inp, y)
    model.get_layer("embed").set_weights([emb])
    model.get_layer("ip").set_weights([w.T, b])
    model.save(str(d / "port.keras"))
    return str(proto), str(weights), str(d / "port.keras")


def test_a_worker_that_dies_costs_only_its_input(embed_net):
    proto, weights, port = embed_net
    x = np.random.default_rng(0).integers(0, 10, size=(9, 4)).astype(np.float32)
    x[3, 2] = -1e9  # Caffe's worker segfaults on this one
    x[6, 1] = 5000.0  # the sweep worker (holding TF) is SIGKILLed on this one
    r = layerparity.sweep(proto, port, x, caffe_weights=weights, workers=1, sample=1,
                          tf_options={"safe_mode": False}, progress=False)
    errors = {e.index: e.error for e in r.errors}
    assert sorted(errors) == [3, 6], r.summary()
    assert errors[3].startswith("CaffeError") and "SIGSEGV" in errors[3]
    assert errors[6].startswith("WorkerDied")
    assert r.counts["passed"] == 7 and r.counts["failed"] == 0 and not r
    assert r.layer("ip").n == 7


def _read_until(fd: int, pattern: str, timeout: float) -> str:
    buf, end = "", time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 65536).decode("utf-8", "replace")
            except OSError:
                break
            buf += chunk
            if re.search(pattern, buf):
                return buf
    raise AssertionError(f"no {pattern!r} within {timeout} s; got {buf[-2000:]!r}")


def test_ctrl_c_stops_and_writes_the_partial_report(files, ports, tmp_path):
    """A real SIGINT to the command's process group, on a terminal (the progress bar shows
    inputs/s and failures so far); the partial reports are written, exit status 130."""
    n = 4000
    np.save(tmp_path / "many.npy", _inputs(n))
    argv = [sys.executable, "-m", "layerparity.cli", "sweep", "--caffe-model", files.prototxt,
            "--caffe-weights", files.caffemodel, "--tf-model", ports["fixed"], "--inputs", str(tmp_path / "many.npy"),
            "--workers", "1", "--json", str(tmp_path / "partial.json"), "--html", str(tmp_path / "partial.html")]
    master, slave = pty.openpty()
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env={**ENV, "COLUMNS": "200"},
                            start_new_session=True, cwd=tmp_path)
    os.close(slave)
    try:
        shown = _read_until(master, r"(\d\d+)/4000.*inputs/s", 240)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C on the terminal does
        # keep reading the terminal while it stops: a full pty would block its last writes
        end = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < end:
            try:
                if select.select([master], [], [], 0.5)[0]:
                    shown += os.read(master, 65536).decode("utf-8", "replace")
            except OSError:
                time.sleep(0.5)
        if proc.poll() is None:
            tree = subprocess.run(["ps", "-o", "pid,ppid,stat,etime,cmd", "-g", str(proc.pid)],
                                  capture_output=True, text=True).stdout
            raise AssertionError(f"still running 300 s after SIGINT; processes:\n{tree}\noutput:\n{shown[-3000:]}")
        rc = proc.returncode
        try:
            while select.select([master], [], [], 1)[0]:
                shown += os.read(master, 65536).decode("utf-8", "replace")
        except OSError:
            pass
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        os.close(master)
    assert rc == 130, shown[-3000:]
    assert "failed" in shown and "Traceback" not in shown, shown[-3000:]
    d = read_sweep_json(tmp_path / "partial.json")
    assert d["interrupted"] is True and d["passed"] is False
    assert 10 <= d["inputs"]["completed"] < n and d["inputs"]["errors"] == 0
    assert d["inputs"]["passed"] == d["inputs"]["completed"]
    assert "INTERRUPTED" in (tmp_path / "partial.html").read_text(encoding="utf-8")


# -- the command line -------------------------------------------------------------------------------


def test_cli_exit_status_reports_and_no_progress_bar_off_a_terminal(files, ports, tmp_path):
    np.save(tmp_path / "x.npy", _inputs(6, {4}))
    base = ["sweep", "--caffe-model", files.prototxt, "--caffe-weights", files.caffemodel,
            "--inputs", str(tmp_path / "x.npy"), "--workers", "0", "--sample", "2"]
    out = subprocess.run([sys.executable, "-m", "layerparity.cli", *base, "--tf-model", ports["relu6"],
                          "--json", "s.json", "--html", "s.html"], capture_output=True, text=True, timeout=600,
                         env=ENV, cwd=tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "first divergence relu1 (TF relu1): 1 input(s): 4" in out.stdout
    assert "inputs/s" not in out.stderr  # stderr is not a terminal: no progress bar
    d = read_sweep_json(tmp_path / "s.json")
    assert d["first_divergence_histogram"] == [{"caffe_layer": "relu1", "tf_layer": "relu1", "count": 1}]
    assert "fd-histogram" in (tmp_path / "s.html").read_text(encoding="utf-8")
    bad = subprocess.run([sys.executable, "-m", "layerparity.cli", *base, "--tf-model", ports["fixed"], "--rtol", "1e-3"],
                         capture_output=True, text=True, timeout=120, env=ENV, cwd=tmp_path)
    assert bad.returncode == 2 and "--atol" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_readme_sweep_line_runs_on_the_demo_files(files, ports, tmp_path):
    text = README.read_text(encoding="utf-8")
    usage = re.search(r"^## Usage\n(.*?)^## ", text, re.S | re.M).group(1)
    (block,) = [b for b in re.findall(r"^```\w*\n(.*?)^```", usage, re.S | re.M) if "layerparity sweep" in b]
    argv = shlex.split(block.replace("\\\n", " "))
    assert argv[:2] == ["layerparity", "sweep"]
    names = {"deploy.prototxt": files.prototxt, "weights.caffemodel": files.caffemodel, "model.keras": ports["buggy"]}
    for name, src in names.items():
        os.symlink(src, tmp_path / name)
    inputs = argv[argv.index("--inputs") + 1]
    np.save(tmp_path / inputs, _inputs(3))
    out = subprocess.run([sys.executable, "-m", "layerparity.cli", *argv[1:], "--workers", "0"], capture_output=True,
                         text=True, timeout=600, env=ENV, cwd=tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "first divergence conv2" in out.stdout
    for flag in ("--html", "--json"):
        if flag in argv:
            assert (tmp_path / argv[argv.index(flag) + 1]).exists()


def test_a_model_that_cannot_be_opened_stops_the_sweep_at_once(files, tmp_path):
    """Not one error row per input: the first worker that cannot open the models says why."""
    bad = tmp_path / "bad.keras"
    bad.write_bytes(b"not a keras file")
    with pytest.raises(layerparity.ModelLoadError, match="bad.keras"):
        layerparity.sweep(files.prototxt, bad, _inputs(3), caffe_weights=files.caffemodel, workers=1, progress=False)
    with pytest.raises(layerparity.InputError, match="no such file"):
        layerparity.sweep(files.prototxt, tmp_path / "missing.keras", _inputs(3), caffe_weights=files.caffemodel)

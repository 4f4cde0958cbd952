"""The pytest plugin end to end with pytester: fail, pass, options, report files, golden
traces (regen, run without Caffe, stale), and pytest-xdist. Real Caffe and real TF."""

from __future__ import annotations

import shutil
import textwrap

import pytest

from layerparity import demo
from layerparity.report import read_json
from layerparity.trace import ArchiveReader

pytest_plugins = ["pytester"]

FILES = demo.files()

HEADER = f"""
import numpy as np
import pytest
from layerparity import demo

PROTO = {FILES.prototxt!r}
WEIGHTS = {FILES.caffemodel!r}
BUGGY = {FILES.keras!r}
X = np.load({FILES.input!r})


def fixed_port():
    return demo.build_keras_port(demo.demo_weights(), buggy=False)
"""


def make_tests(pytester: pytest.Pytester, body: str, name: str = "test_port") -> None:
    pytester.makepyfile(**{name: HEADER + textwrap.dedent(body)})


@pytest.fixture
def env(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.setenv("GLOG_minloglevel", "2")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    return pytester


def test_failing_check_shows_the_message_and_writes_reports(env):
    make_tests(env, """
        def test_buggy(parity):
            parity.check(PROTO, BUGGY, X, caffe_weights=WEIGHTS)

        @pytest.mark.parametrize("case", ["a/b c"])
        def test_param(parity, case):
            parity.check(PROTO, BUGGY, X, caffe_weights=WEIGHTS)
            parity.check(PROTO, BUGGY, X, caffe_weights=WEIGHTS)  # not reached
    """)
    result = env.runpytest_subprocess("--parity-report", "reports")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines([
        "*Models diverge at Caffe layer 'conv2' (TF layer 'conv2')!*",
        "*Fix: *",
        "*Reports: *test_port.py__test_buggy.html*",
    ])
    # the assert helpers' frames are hidden: the traceback points at the test
    assert "def check(" not in result.stdout.str()
    reports = env.path / "reports"
    names = sorted(p.name for p in reports.iterdir())
    assert "test_port.py__test_buggy.html" in names and "test_port.py__test_buggy.json" in names
    param = [n for n in names if n.startswith("test_port.py__test_param_a_b_c-")]
    assert len(param) == 2 and {n.rsplit(".", 1)[1] for n in param} == {"html", "json"}
    d = read_json(reports / "test_port.py__test_buggy.json")
    assert d["first_divergence"]["caffe_layer"] == "conv2"
    assert "<!DOCTYPE html>" in (reports / "test_port.py__test_buggy.html").read_text()


def test_passing_check_returns_the_report_and_options_set_the_tolerance(env):
    make_tests(env, """
        def test_fixed(parity):
            report = parity.check(PROTO, fixed_port(), X, caffe_weights=WEIGHTS)
            assert report and report.first_divergence is None

        def test_buggy_but_loose(parity):
            report = parity.check(PROTO, BUGGY, X, caffe_weights=WEIGHTS)
            assert report.tolerance.rtol == 10.0

        def test_loaders(parity, caffe_net, tf_model):
            report = parity.check(caffe_net(PROTO, WEIGHTS), tf_model(BUGGY), X)
            assert report.row("conv1").passed
    """)
    result = env.runpytest_subprocess("--parity-rtol", "10", "--parity-atol", "10")
    result.assert_outcomes(passed=3)
    # without the loose options the buggy port fails
    result = env.runpytest_subprocess("-k", "buggy_but_loose")
    result.assert_outcomes(failed=1)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--parity-rtol", "1e-3"], "--parity-rtol needs --parity-atol too (got --parity-rtol=0.001, --parity-atol=None)"),
        (["--parity-atol", "1e-3"], "--parity-atol needs --parity-rtol too (got --parity-rtol=None, --parity-atol=0.001)"),
        (["--parity-rtol", "nan", "--parity-atol", "0"], "--parity-rtol must be a finite number >= 0, got nan"),
    ],
)
def test_tolerance_options_go_together(pytester, args, message):
    pytester.makepyfile("def test_nothing(): pass")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])


def test_options_are_in_one_group_with_help(pytester):
    result = pytester.runpytest("--help")
    out = result.stdout.str()
    section = out.split("layerparity: Caffe vs TensorFlow parity checks:")[1]
    for opt in ("--parity-rtol=R", "--parity-atol=A", "--parity-report=DIR", "--parity-regen"):
        assert opt in section


def _poison_caffe(path) -> str:
    """A folder whose ``caffe`` package fails to import: put first on PYTHONPATH, it makes
    Caffe unavailable to the test process and to the Caffe worker processes it would start."""
    d = path / "no_caffe"
    (d / "caffe").mkdir(parents=True)
    (d / "caffe" / "__init__.py").write_text("raise ImportError('caffe is not installed here')\n")
    return str(d)


def test_golden_trace_regen_run_without_caffe_then_stale(env, monkeypatch, tmp_path):
    proto = env.path / "deploy.prototxt"
    shutil.copyfile(FILES.prototxt, proto)
    make_tests(env, f"""
        def test_golden(parity):
            parity.check({str(proto)!r}, fixed_port(), X, caffe_weights=WEIGHTS, golden="demo")

        def test_golden_fixture(parity_golden):
            parity_golden.check({str(proto)!r}, BUGGY, X, caffe_weights=WEIGHTS)
    """, name="test_golden")
    golden = env.path / "test_golden" / "demo.caffe.npz"

    # 1. nothing recorded yet: both fail and say how to record
    result = env.runpytest_subprocess()
    result.assert_outcomes(failed=2)
    # (paths relative to the rootdir)
    result.stdout.fnmatch_lines(["*golden Caffe trace test_golden/demo.caffe.npz is missing: "
                                 "record it with `pytest --parity-regen` (needs Caffe)*"])

    # 2. record (needs Caffe): the recording is compared at once
    result = env.runpytest_subprocess("--parity-regen")
    result.assert_outcomes(passed=1, failed=1)  # the fixture test uses the buggy port
    result.stdout.fnmatch_lines(["*Models diverge at Caffe layer 'conv2'*"])
    assert golden.is_file() and (env.path / "test_golden" / "test_golden_fixture.caffe.npz").is_file()
    with ArchiveReader(golden) as r:
        assert r.framework == "caffe"
        assert set(r.meta["golden"]) == {"prototxt_sha256", "caffemodel_sha256", "input_sha256"}
    stamp = golden.stat().st_mtime_ns

    # 3. where Caffe is not importable: the golden run still works (TF only) ...
    monkeypatch.setenv("PYTHONPATH", _poison_caffe(tmp_path))
    result = env.runpytest_subprocess("-k", "test_golden and not fixture")
    result.assert_outcomes(passed=1)
    # ... and really has no Caffe: recording there fails
    result = env.runpytest_subprocess("-k", "test_golden and not fixture", "--parity-regen")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*caffe is not installed here*"])
    assert golden.stat().st_mtime_ns == stamp
    monkeypatch.delenv("PYTHONPATH")

    # 4. the prototxt changes: the recording is stale
    proto.write_text(proto.read_text() + "\n# edited\n")
    result = env.runpytest_subprocess("-k", "test_golden and not fixture")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*golden Caffe trace test_golden/demo.caffe.npz is stale: the prototxt changed since it was recorded; "
        "re-record it with `pytest --parity-regen` (needs Caffe)*"
    ])
    # so does a different input (with the prototxt as recorded)
    shutil.copyfile(FILES.prototxt, proto)
    make_tests(env, f"""
        def test_golden(parity):
            parity.check({str(proto)!r}, fixed_port(), X * 2, caffe_weights=WEIGHTS, golden="demo")
    """, name="test_golden")
    result = env.runpytest_subprocess()
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*is stale: the input changed since it was recorded*"])


def test_bad_golden_name_is_an_input_error(env):
    make_tests(env, """
        from layerparity.errors import InputError

        def test_name(parity):
            with pytest.raises(InputError, match="golden name '../x'"):
                parity.check(PROTO, BUGGY, X, caffe_weights=WEIGHTS, golden="../x")
    """)
    env.runpytest().assert_outcomes(passed=1)


def test_under_xdist_reports_are_unique_and_goldens_recorded_once(env):
    make_tests(env, """
        @pytest.mark.parametrize("case", ["a", "a/b", "a b", "a:b"])
        def test_many(parity, case):
            parity.check(PROTO, BUGGY, X, caffe_weights=WEIGHTS, golden="shared")
    """)
    result = env.runpytest_subprocess("-n", "2", "--parity-regen", "--parity-report", "rep")
    result.assert_outcomes(failed=4)
    result.stdout.fnmatch_lines(["*2 workers*"])
    names = sorted(p.name for p in (env.path / "rep").iterdir())
    assert len(names) == 8 and len({n.rsplit(".", 1)[0] for n in names}) == 4, names
    for n in names:
        if n.endswith(".json"):
            assert read_json(env.path / "rep" / n)["first_divergence"]["tf_layer"] == "conv2"
    golden = env.path / "test_port" / "shared.caffe.npz"
    with ArchiveReader(golden) as r:
        assert len(r.probe_metas()) == 10
    assert not list((env.path / "test_port").glob("*.partial"))
    # and without regen, the workers compare against the one recording
    result = env.runpytest_subprocess("-n", "2")
    result.assert_outcomes(failed=4)
    result.stdout.fnmatch_lines(["*Models diverge at Caffe layer 'conv2'*"])


# -- open models reused across the session -------------------------------------------------

REUSE_CONFTEST = """
import sys


def pytest_sessionfinish(session):
    mod = sys.modules.get("test_port")
    seen = getattr(mod, "SEEN", [])
    with open("closed_at_end.txt", "w") as f:
        f.write(f"{len(seen)} {sum(not b.alive for b in seen)}")
"""


def test_checks_of_one_port_open_each_model_once_per_session(env):
    env.makeconftest(REUSE_CONFTEST)
    make_tests(env, """
        FIXED = fixed_port()
        PIDS, SEEN = [], []

        @pytest.mark.parametrize("i", range(4))
        def test_check(parity, i):
            parity.check(PROTO, FIXED, X, caffe_weights=WEIGHTS)
            (cb,) = parity.models.backends("caffe")
            PIDS.append(cb.worker_info()["pid"])
            SEEN.append(cb)

        def test_buggy_file_twice(parity):
            for _ in range(2):
                with pytest.raises(AssertionError, match="conv2"):
                    parity.check(PROTO, BUGGY, X, caffe_weights=WEIGHTS)

        def test_counts(parity):
            assert len(PIDS) == 4 and len(set(PIDS)) == 1  # one Caffe worker for every check
            assert parity.models.opened == {"caffe": 1, "tf": 2}  # the live port, the .keras file
    """)
    result = env.runpytest_subprocess("-p", "no:randomly")
    result.assert_outcomes(passed=6)
    assert (env.path / "closed_at_end.txt").read_text() == "4 4"  # closed when the session ended


def test_a_changed_prototxt_gets_a_new_worker_and_no_reuse_opens_per_check(env):
    make_tests(env, """
        import shutil

        def test_changed_file(parity, tmp_path):
            proto = tmp_path / "net.prototxt"
            shutil.copy(PROTO, proto)
            port = fixed_port()
            parity.check(proto, port, X, caffe_weights=WEIGHTS)
            (first,) = parity.models.backends("caffe")
            parity.check(proto, port, X, caffe_weights=WEIGHTS)
            assert parity.models.opened["caffe"] == 1
            proto.write_text(proto.read_text() + "# edited")
            parity.check(proto, port, X, caffe_weights=WEIGHTS)
            (second,) = parity.models.backends("caffe")
            assert parity.models.opened["caffe"] == 2 and second is not first and not first.alive
            parity.check(proto, port, X, caffe_weights=WEIGHTS, caffe_options={"timeout": 300})
            assert parity.models.opened["caffe"] == 3  # other options, another backend
    """, name="test_changed")
    env.runpytest_subprocess("-p", "no:randomly").assert_outcomes(passed=1)
    make_tests(env, """
        def test_no_reuse(parity):
            assert parity.models is None
            report = parity.check(PROTO, fixed_port(), X, caffe_weights=WEIGHTS)
            assert report
    """, name="test_noreuse")
    env.runpytest_subprocess("-p", "no:randomly", "--parity-no-reuse", "test_noreuse.py").assert_outcomes(passed=1)

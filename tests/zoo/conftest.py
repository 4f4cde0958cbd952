"""The model zoo: real architectures, seeded weights written through pycaffe at test time.

Per net (once per test session and worker; every test of a net shares one xdist
group, so one worker does the Caffe work once): the prototxt with the test input
shape, a caffemodel from a seeded generator, the input, and the Caffe trace
captured once through ``layerparity.capture_caffe`` and saved as an archive that
every bug's comparison streams from.

Results of the matrix are appended to a session directory; when
LAYERPARITY_WRITE_VALIDATION=1, each worker's session end rewrites
docs/validation.md from every result there (the last worker to finish writes
the complete table).
"""

from __future__ import annotations

import gc
import json
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import caffe  # noqa: F401  - before TensorFlow (the other order segfaults in caffe.Net)
import numpy as np
import pytest
from zoo_nets import NETS, ROOT, ZOO, ZooNet, use_pythonpath

use_pythonpath()  # the port builder's in-process pycaffe imports the nets' Python layers too


def pytest_configure(config: pytest.Config) -> None:
    # Registered here too so `-p no:xdist` runs keep --strict-markers happy.
    config.addinivalue_line("markers", "xdist_group(name): tests that must share one xdist worker")


@dataclass
class ZooCase:
    """One net, ready to compare: everything on the Caffe side, computed once."""

    net: ZooNet
    prototxt: str
    caffemodel: str
    x: np.ndarray
    params: dict[str, list[np.ndarray]] | None  # in memory for the net in use only
    info: object
    caffe_trace: str  # archive path
    setup_seconds: float
    extra: dict = field(default_factory=dict)

    def compare(self, model):
        """Capture the Keras ``model`` on this case's input and compare it with the shared Caffe
        trace (weights checked too); the model's TF state is released afterwards."""
        import keras

        import layerparity as lp
        from layerparity.backends.tensorflow import load_tf

        tb = load_tf(model)
        try:
            return lp.compare_traces(self.caffe_trace, tb.capture(self.x), replay=tb, caffe_weights=self.params,
                                     tf_weights=tb.weights())
        finally:
            tb.close()
            del model
            keras.backend.clear_session()
            gc.collect()


class _Zoo:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._cases: dict[str, ZooCase] = {}

    def __call__(self, name: str) -> ZooCase:
        import portbuilder as pb

        if name not in self._cases:
            self._cases[name] = self._prepare(NETS[name])
        case = self._cases[name]
        # Only the net in use keeps its parameters in memory (VGG's alone are ~180 MB).
        for other in self._cases.values():
            if other is not case:
                other.params = None
        if case.params is None:
            case.params = pb.read_params(case.prototxt, case.caffemodel)
        return case

    def _prepare(self, net: ZooNet) -> ZooCase:
        import layerparity as lp
        import portbuilder as pb

        t0 = time.perf_counter()
        d = self.root / net.name
        d.mkdir(parents=True, exist_ok=True)
        proto = pb.with_input_shape(ZOO / net.file, net.input_shape, d / "deploy.prototxt")
        x = pb.random_input(net.input_shape, seed=1000 + net.seed)
        model = d / "weights.caffemodel"
        params = pb.make_caffemodel(proto, model, x, seed=net.seed)
        trace = lp.capture_caffe(proto, os.fspath(model), x, pythonpath=[os.fspath(d) for d in net.pythonpath] or None)
        archive = d / "caffe-trace.npz"
        trace.save(archive)
        del trace
        info = pb.net_info(proto)
        return ZooCase(net, proto, os.fspath(model), x, params, info, os.fspath(archive), time.perf_counter() - t0)


@pytest.fixture(scope="session")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> _Zoo:
    """``zoo("resnet50")`` -> the prepared :class:`ZooCase` (cached for the session)."""
    return _Zoo(tmp_path_factory.mktemp("zoo"))


# -- results and docs/validation.md -------------------------------------------------


def _results_dir(config: pytest.Config) -> Path:
    run = getattr(config, "workerinput", {}).get("testrunuid") or _LOCAL_RUN
    d = Path(os.environ.get("TMPDIR", "/tmp")) / f"layerparity-validation-{run}"
    d.mkdir(parents=True, exist_ok=True)
    return d


_LOCAL_RUN = uuid.uuid4().hex
_SESSION_START = time.time()


@pytest.fixture(scope="session")
def record_result(request: pytest.FixtureRequest):
    """``record_result(dict)``: keep one matrix outcome for docs/validation.md."""
    worker = getattr(request.config, "workerinput", {}).get("workerid", "main")

    def record(entry: dict) -> None:
        if os.environ.get("LAYERPARITY_WRITE_VALIDATION") != "1":
            return
        with open(_results_dir(request.config) / f"results-{worker}.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")

    return record


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("LAYERPARITY_WRITE_VALIDATION") != "1":
        return
    if not hasattr(session.config, "workerinput") and getattr(session.config.option, "numprocesses", None):
        # the xdist controller ran no test and has no results: its session ends after the
        # workers' (the last of which wrote the complete table) and must not overwrite it
        return
    import fcntl

    from validation_doc import write_validation

    d = _results_dir(session.config)
    worker = getattr(session.config, "workerinput", {}).get("workerid", "main")
    (d / f"done-{worker}.json").write_text(json.dumps({"start": _SESSION_START, "end": time.time()}))
    with open(d / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = []
        for f in sorted(d.glob("results-*.jsonl")):
            entries += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        spans = [json.loads(f.read_text()) for f in d.glob("done-*.json")]
        wall = max(s["end"] for s in spans) - min(s["start"] for s in spans)
        write_validation(ROOT / "docs" / "validation.md", entries, NETS, wall_seconds=wall)

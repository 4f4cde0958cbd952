"""The third-party matrix: Caffe nets ported by caffe2onnx -> onnx2tf, tools nobody here wrote.

Ports and manifests: thirdparty_ports.py. With LAYERPARITY_WRITE_VALIDATION=1, each outcome is
kept and the session end rewrites the "Third-party matrix" section of docs/validation.md (after
the zoo's writer, which rewrites the whole file, when both run in one session).
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, os.fspath(Path(__file__).parent))
from thirdparty_ports import NETS, ROOT, TRIED, refusal_probe  # noqa: E402

# -- results and docs/validation.md ---------------------------------------------------------

_LOCAL_RUN = uuid.uuid4().hex
_SESSION_START = time.time()


def _results_dir(config: pytest.Config) -> Path:
    run = getattr(config, "workerinput", {}).get("testrunuid") or _LOCAL_RUN
    d = Path(os.environ.get("TMPDIR", "/tmp")) / f"layerparity-thirdparty-{run}"
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session")
def record_thirdparty(request: pytest.FixtureRequest):
    """``record_thirdparty(dict)``: keep one matrix outcome for docs/validation.md."""
    worker = getattr(request.config, "workerinput", {}).get("workerid", "main")

    def record(entry: dict) -> None:
        if os.environ.get("LAYERPARITY_WRITE_VALIDATION") != "1":
            return
        with open(_results_dir(request.config) / f"results-{worker}.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")

    return record


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if os.environ.get("LAYERPARITY_WRITE_VALIDATION") != "1":
        return
    if not hasattr(session.config, "workerinput") and getattr(session.config.option, "numprocesses", None):
        return  # the xdist controller ran no test; the last worker wrote the section
    import fcntl

    from validation_section import write_section

    d = _results_dir(session.config)
    worker = getattr(session.config, "workerinput", {}).get("workerid", "main")
    (d / f"done-{worker}.json").write_text(json.dumps({"start": _SESSION_START, "end": time.time()}))
    with open(d / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = []
        for f in sorted(d.glob("results-*.jsonl")):
            entries += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
        if entries:
            f = refusal_probe.refused_path()
            refusals = json.loads(f.read_text()) if f.exists() else {}
            refusals = {n: {**r, "why": TRIED[n]["why"]} for n, r in refusals.items() if n in TRIED}
            write_section(ROOT / "docs" / "validation.md", entries, NETS, refusals)

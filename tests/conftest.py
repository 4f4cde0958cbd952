"""Suite-wide setup. Every test runs against real Caffe and real TensorFlow:
a missing framework is an error, never a skip."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("GLOG_minloglevel", "2")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# A diagnosis rule that raises fails the test instead of being skipped (docs/diagnosis.md).
os.environ.setdefault("LAYERPARITY_DIAGNOSIS_STRICT", "1")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("filterwarnings", "error:diagnosis of:RuntimeWarning")


def pytest_sessionstart(session: pytest.Session) -> None:
    missing = []
    for mod in ("caffe", "tensorflow"):
        try:
            __import__(mod)
        except Exception as e:  # noqa: BLE001
            missing.append(f"{mod} ({type(e).__name__}: {e})")
    if missing:
        raise pytest.UsageError(
            "layerparity's tests need real Caffe and real TensorFlow; not importable: "
            + "; ".join(missing)
            + ". Run `make test`, which builds and installs both."
        )

"""The converter ports of tests/thirdparty: where they are, what each net's manifest says.

The ports are built once by ``make converter-ports`` (scripts/make_converter_ports.py) into
``${LAYERPARITY_CACHE:-~/.cache/layerparity}/converter-ports-<key>/<net>/``, each with a
``manifest.json``. Nothing is built or downloaded here: a missing port is a test failure that
says which make target builds it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("make_converter_ports", ROOT / "scripts" / "make_converter_ports.py")
ports = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("make_converter_ports", ports)
_spec.loader.exec_module(ports)

NETS = ports.NETS
_spec = importlib.util.spec_from_file_location("converter_refusals", ROOT / "scripts" / "converter_refusals.py")
refusal_probe = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("converter_refusals", refusal_probe)
_spec.loader.exec_module(refusal_probe)
TRIED = refusal_probe.TRIED


@dataclass
class PortSet:
    """One net's files, from its manifest."""

    name: str
    dir: Path
    manifest: dict

    def path(self, rel: str) -> str:
        return os.fspath(self.dir / rel)

    @property
    def prototxt(self) -> str:
        return self.path(self.manifest["prototxt"])

    @property
    def caffemodel(self) -> str:
        return self.path(self.manifest["caffemodel"])

    def input(self):
        import numpy as np

        return np.load(self.path(self.manifest["input"]))

    def bug(self, name: str) -> dict:
        for b in self.manifest["bugs"]:
            if b["name"] == name:
                return b
        raise KeyError(f"{self.name}: no bug {name!r} in {self.dir / 'manifest.json'}")


def load_ports(name: str) -> PortSet:
    d = ports.ports_dir() / name
    f = d / "manifest.json"
    if not f.exists():
        pytest.fail(
            f"the converter ports of {name} are not built: {f} is missing. "
            "Run `make converter-ports` (it builds the converter venv and every net's ports, "
            "cached under ${LAYERPARITY_CACHE:-~/.cache/layerparity}); `make test` runs it first.",
            pytrace=False,
        )
    manifest = json.loads(f.read_text())
    for rel in [manifest["prototxt"], manifest["caffemodel"], manifest["input"], manifest["correct"]["savedmodel"]] + [
        b["savedmodel"] for b in manifest["bugs"]
    ]:
        if not (d / rel).exists():
            pytest.fail(f"{d / rel} is missing from a built port set: delete {d} and run `make converter-ports`",
                        pytrace=False)
    return PortSet(name, d, manifest)


def load_refusals() -> dict:
    """What caffe2onnx did with each zoo net of ``TRIED`` (scripts/converter_refusals.py:
    ``probe``), ``{net: {"converted", "converter_said", "layer_types"}}``."""
    f = refusal_probe.refused_path()
    if not f.exists():
        pytest.fail(f"the converter has not been tried on the zoo nets {sorted(TRIED)}: {f} is missing. "
                    "Run `make converter-ports`; `make test` runs it first.", pytrace=False)
    return json.loads(f.read_text())

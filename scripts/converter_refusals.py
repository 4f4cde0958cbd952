#!/usr/bin/env python3
"""Try the converter on the zoo nets it is not known to port, and keep what it said.

    .venv/bin/python scripts/converter_refusals.py --converter-python CONVERTER_VENV/bin/python

Issue 15: where a converter (caffe2onnx -> onnx2tf) can port a zoo net, that port belongs in the
third-party matrix (scripts/make_converter_ports.py). caffe2onnx 0.1.2 cannot port the nets of
``TRIED``; ``make converter-ports`` runs this after the matrix and records, per net, whether
caffe2onnx converted it and the converter's own words, in ``<ports dir>/refused-<hash>.json``
(the hash covers this file, the nets and the zoo's Python layer modules, not the matrix's key:
editing a zoo net re-tries it without rebuilding every converter port).
tests/thirdparty/test_converter_refusals.py fails if one of them converts: then it belongs in
the matrix.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, os.fspath(HERE))
import make_converter_ports as ports  # noqa: E402

ZOO = ports.ROOT / "fixtures" / "zoo"
PYLAYERS = ZOO / "pylayers"  # the zoo's Python layer modules (a Python-layer net loads them)

#: zoo net -> its prototxt, the layer types caffe2onnx 0.1.2 lacks for it, and what that does.
TRIED: dict[str, dict] = {
    "fcn8s": {"fixture": "fcn8s.prototxt", "lacks": ["Crop"],
              "why": "no Crop: it writes no node for the skips' Crop layers, so each skip's Add has one input"},
    "crnn": {"fixture": "crnn.prototxt", "lacks": ["Permute", "LSTM"],
             "why": "its caffe.proto has no Permute (nor has it any LSTM converter): the prototxt does not parse"},
    "ssd_full": {"fixture": "ssd_full.prototxt", "lacks": ["Normalize", "Permute", "PriorBox", "DetectionOutput"],
                 "why": "its caffe.proto has no SSD layers (Normalize, Permute, PriorBox, DetectionOutput)"},
    "faster_rcnn": {"fixture": "faster_rcnn.prototxt", "lacks": ["Python"],
                    "why": "no Python layers: it passes over the proposal and ROI pooling layers without a word, "
                           "then fails at fc6, the InnerProduct reading the skipped roi_pool5 (no shape for it)"},
}


def refused_path() -> Path:
    """The record for these versions of this file, the TRIED nets and the zoo's Python layers."""
    h = hashlib.sha256(Path(__file__).read_bytes())
    for name, tried in TRIED.items():
        h.update(name.encode() + (ZOO / tried["fixture"]).read_bytes())
    for f in sorted(PYLAYERS.glob("*.py")):
        h.update(f.read_bytes())
    return ports.ports_dir() / f"refused-{h.hexdigest()[:12]}.json"


def converter_words(message: str) -> str:
    """The converter's own complaint, from a failed caffe2onnx run's output: the protobuf parse
    error, or the ONNX checker's lines (caffe2onnx prints them and writes nothing)."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "ParseError" in ln or "has no field named" in ln:
            return ln.split("ParseError: ", 1)[-1]
    picked = [ln for ln in lines if ln.startswith(("Node(", "Unrecognized", "==> Context"))]
    return " ".join(picked[:2]) if picked else (lines[-1] if lines else "no output")


def probe(converter_python: str) -> dict:
    """Run caffe2onnx on each TRIED net (seeded weights written by pycaffe); ``{net: {"converted":
    bool, "converter_said": str, "layer_types": [...]}}``, also written to :func:`refused_path`."""
    import caffe
    import numpy as np
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format

    caffe.set_mode_cpu()
    if os.fspath(PYLAYERS) not in sys.path:
        sys.path.insert(0, os.fspath(PYLAYERS))
    root = ports.ports_dir()
    root.mkdir(parents=True, exist_ok=True)
    out: dict[str, dict] = {}
    scratch = Path(tempfile.mkdtemp(prefix="probe-", dir=root))
    try:
        for name, tried in TRIED.items():
            d = scratch / name
            d.mkdir()
            src = ZOO / tried["fixture"]
            net = caffe_pb2.NetParameter()
            text_format.Merge(src.read_text(), net)
            types = sorted({lay.type for lay in net.layer})
            ports.without_dropout(net)
            (d / "deploy_nodropout.prototxt").write_text(text_format.MessageToString(net))
            live = caffe.Net(os.fspath(src), caffe.TEST)
            rng = np.random.default_rng(7)
            for blobs in live.params.values():
                for b in blobs:
                    b.data[...] = rng.normal(0, 0.1, b.data.shape)
            live.save(os.fspath(d / "weights.caffemodel"))
            job = d / "job.json"
            job.write_text(json.dumps({"dir": os.fspath(d), "onnx_prototxt": os.fspath(d / "deploy_nodropout.prototxt"),
                                       "caffemodel": os.fspath(d / "weights.caffemodel")}))
            try:
                ports._tool(converter_python, "caffe2onnx", os.fspath(job), PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION="python")
                out[name] = {"converted": True, "converter_said": "", "layer_types": types}
            except SystemExit as e:
                out[name] = {"converted": False, "converter_said": converter_words(str(e)), "layer_types": types}
            r = out[name]
            print(f"converter ports: {name} (zoo): caffe2onnx "
                  + ("converted it" if r["converted"] else f"refused it: {r['converter_said']}"), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    refused_path().write_text(json.dumps(out, indent=1))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--converter-python", required=True, help="the converter venv's python")
    args = ap.parse_args(argv)
    if not refused_path().exists():
        probe(args.converter_python)
    return 0


if __name__ == "__main__":
    sys.exit(main())

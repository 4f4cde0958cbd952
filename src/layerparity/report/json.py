"""The JSON report: write, read, validate, and rebuild a :class:`Report` from it.

The format is :meth:`Report.to_dict` (see docs/report-format.md for every key).
Non-finite numbers are written as the strings ``"nan"``, ``"inf"``, ``"-inf"``
so the file is strict JSON that any parser reads.

>>> import tempfile, os
>>> from layerparity.result import Report
>>> path = os.path.join(tempfile.mkdtemp(), "r.json")
>>> write_json(Report(rows=[], unmapped_caffe=[], unmapped_tf=["flatten"]), path)
>>> read_json(path)["unmapped"]
{'caffe': [], 'tf': ['flatten']}
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from ..atomic_write import write_text
from ..errors import ReportFormatError
from ..result import (
    REPORT_FORMAT_VERSION,
    Coverage,
    Diagnosis,
    LayerResult,
    Metrics,
    Report,
    Tolerance,
    blamed_layer,
)
from ..weights import WeightRow

__all__ = ["ReportFormatError", "write_json", "read_json", "validate_report", "report_from_dict", "load_report"]

FORMAT = "layerparity-report"


def write_json(report: Report, path: str | os.PathLike[str]) -> None:
    """Write ``report`` as JSON (UTF-8, indented); atomically (a temp file, then rename)."""
    write_text(path, report.to_json(indent=2) + "\n")


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a JSON report; the dict as written. Raises :class:`ReportFormatError`."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ReportFormatError(f"{path}: no such report file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportFormatError(f"{path}: not a JSON report ({e})") from None
    validate_report(data, where=path)
    return data


def load_report(path: str | os.PathLike[str]) -> Report:
    """Read a JSON report back into a :class:`Report` (``to_dict`` of it equals the file)."""
    return report_from_dict(read_json(path), where=os.fspath(path))


# -- validation ------------------------------------------------------------------

_NUM = (int, float)


def _is_num(x: Any) -> bool:
    return (isinstance(x, _NUM) and not isinstance(x, bool)) or x in ("nan", "inf", "-inf")


def _check(cond: bool, where: str, what: str) -> None:
    if not cond:
        raise ReportFormatError(f"{where}: {what}")


_LAYER_KEYS = {
    "caffe_layer": str, "caffe_blob": str, "caffe_chain": list, "caffe_kind": str, "tf_layer": str,
    "tf_kind": str, "caffe_shape": list, "tf_shape": list, "passed": bool, "note": str, "diagnoses": list,
}
_LAYER_NUMS = ("max_abs_error", "max_rel_error", "cosine", "mismatched_fraction")
_METRIC_NUMS = (
    "max_abs_error", "max_rel_error", "mean_abs_error", "rel_rms_error", "cosine",
    "mismatched_fraction", "scale", "min_atol", "min_rtol",
)
_METRIC_INTS = ("mismatched", "total", "nan_mismatch")


def validate_report(data: Any, where: str = "report") -> None:
    """Raise :class:`ReportFormatError` naming the first key that breaks the format."""
    _check(isinstance(data, dict), where, "the top level is not a JSON object")
    _check(data.get("format") == FORMAT, where, f"'format' is {data.get('format')!r}, expected {FORMAT!r}")
    v = data.get("version")
    _check(isinstance(v, int) and not isinstance(v, bool), where, f"'version' is {v!r}, expected an integer")
    _check(
        1 <= v <= REPORT_FORMAT_VERSION,
        where,
        f"report format version {v} is not supported (this layerparity reads up to {REPORT_FORMAT_VERSION}; upgrade layerparity)",
    )
    _check(isinstance(data.get("passed"), bool), where, "'passed' is missing or not a boolean")
    for k in ("caffe_source", "tf_source"):
        _check(isinstance(data.get(k, ""), str), where, f"{k!r} is not a string")
    tol = data.get("tolerance")
    if tol is not None:
        _tolerance(tol, f"{where}: tolerance")
    layers = data.get("layers")
    _check(isinstance(layers, list), where, "'layers' is missing or not a list")
    for i, layer in enumerate(layers):
        _layer(layer, f"{where}: layers[{i}]")
    fd = data.get("first_divergence", "missing")
    _check(fd != "missing", where, "'first_divergence' is missing (null when nothing diverged)")
    if fd is not None:
        w = f"{where}: first_divergence"
        _check(isinstance(fd, dict), w, "not an object")
        for k in ("caffe_layer", "tf_layer"):
            _check(isinstance(fd.get(k), str), w, f"{k!r} is missing or not a string")
        for k in ("max_abs_error", "max_rel_error"):
            _check(_is_num(fd.get(k)), w, f"{k!r} is missing or not a number")
        _check(isinstance(fd.get("diagnoses"), list), w, "'diagnoses' is missing or not a list")
        for j, d in enumerate(fd["diagnoses"]):
            _diagnosis(d, f"{w}.diagnoses[{j}]")
        _weights(fd.get("weights", []), f"{w}.weights")
        if fd.get("own_error") is not None:
            _metrics(fd["own_error"], f"{w}.own_error")
        _check(
            any(isinstance(x, dict) and x.get("caffe_layer") == fd["caffe_layer"] for x in layers),
            w,
            f"names Caffe layer {fd['caffe_layer']!r}, which is not in 'layers'",
        )
    um = data.get("unmapped")
    _check(isinstance(um, dict), where, "'unmapped' is missing or not an object")
    for k in ("caffe", "tf"):
        _check(
            isinstance(um.get(k), list) and all(isinstance(x, str) for x in um[k]),
            where,
            f"'unmapped.{k}' is missing or not a list of names",
        )
    _check(isinstance(data.get("meta", {}), dict), where, "'meta' is not an object")
    conv = data.get("conventions", [])
    _check(isinstance(conv, list), where, "'conventions' is not a list")
    for j, d in enumerate(conv):
        _diagnosis(d, f"{where}: conventions[{j}]")
    cov = data.get("coverage")
    if cov is not None:
        _check(isinstance(cov, dict), where, "'coverage' is not an object")
        for k in ("outputs", "missing_outputs", "uncovered", "left_out"):
            _check(isinstance(cov.get(k, []), list) and all(isinstance(x, str) for x in cov.get(k, [])),
                   where, f"'coverage.{k}' is not a list of names")
        _check(isinstance(cov.get("partial", False), (bool, list)), where, "'coverage.partial' is not a boolean or a list")


def _tolerance(t: Any, w: str) -> None:
    _check(isinstance(t, dict), w, "not an object")
    for k in ("rtol", "atol"):
        _check(_is_num(t.get(k)), w, f"{k!r} is missing or not a number")
    _check(isinstance(t.get("relative_atol", True), bool), w, "'relative_atol' is not a boolean")


def _layer(x: Any, w: str) -> None:
    _check(isinstance(x, dict), w, "not an object")
    for k, typ in _LAYER_KEYS.items():
        _check(isinstance(x.get(k), typ), w, f"{k!r} is missing or not a {typ.__name__}")
    for k in ("caffe_shape", "tf_shape"):
        _check(all(isinstance(d, int) and not isinstance(d, bool) for d in x[k]), w, f"{k!r} holds a non-integer")
    for k in _LAYER_NUMS:
        _check(x.get(k) is None or _is_num(x.get(k)), w, f"{k!r} is not a number or null")
    _check(all(isinstance(c, str) for c in x["caffe_chain"]), w, "'caffe_chain' holds a non-string")
    _check(isinstance(x.get("drift", False), bool), w, "'drift' is not a boolean")
    if x.get("tolerance") is not None:
        _tolerance(x["tolerance"], f"{w}.tolerance")
    if x.get("metrics") is not None:
        _metrics(x["metrics"], f"{w}.metrics")
    if x.get("own_error") is not None:
        _metrics(x["own_error"], f"{w}.own_error")
    _check(x.get("contaminated_by") is None or isinstance(x["contaminated_by"], str), w, "'contaminated_by' is not a string or null")
    for j, d in enumerate(x["diagnoses"]):
        _diagnosis(d, f"{w}.diagnoses[{j}]")
    _weights(x.get("weights", []), f"{w}.weights")
    # divergent_layer is derived (LayerResult.divergent_layer): a written value must be that one
    _check(isinstance(x.get("chain_head", ""), str), w, "'chain_head' is not a string")
    expected = blamed_layer(x["caffe_chain"], x["caffe_layer"], x.get("chain_head", ""),
                            x["diagnoses"][0].get("layer") if x["diagnoses"] else None)
    got = x.get("divergent_layer", expected)
    _check(got == expected, w, f"'divergent_layer' is {got!r}, but its caffe_chain, chain_head and top diagnosis "
                               f"name {expected!r}")


_WEIGHT_STATUSES = ("equal", "folded", "different", "missing")


def _weights(ws: Any, w: str) -> None:
    """``weights``: the weight check of a diagnosed row (``layerparity weights``' layer rows)."""
    _check(isinstance(ws, list), w, "not a list")
    for j, r in enumerate(ws):
        wj = f"{w}[{j}]"
        _check(isinstance(r, dict), wj, "not an object")
        for k in ("caffe_layer", "caffe_kind", "status"):
            _check(isinstance(r.get(k), str), wj, f"{k!r} is missing or not a string")
        st = r["status"]
        _check(st in _WEIGHT_STATUSES or (st.startswith("equal_under:") and len(st) > len("equal_under:")), wj,
               f"'status' is {st!r}, expected one of {', '.join(_WEIGHT_STATUSES)} or equal_under:<transform>")
        t = r.get("transform")
        _check(t == (st.split(":", 1)[1] if st.startswith("equal_under:") else None), wj,
               f"'transform' ({t!r}) contradicts 'status' ({st!r})")
        _check(r.get("tf_layer") is None or isinstance(r["tf_layer"], str), wj, "'tf_layer' is not a string or null")
        _check(isinstance(r.get("tf_ops", []), list) and all(isinstance(o, str) for o in r.get("tf_ops", [])), wj,
               "'tf_ops' is not a list of names")
        blobs = r.get("blobs", [])
        _check(isinstance(blobs, list), wj, "'blobs' is not a list")
        for i, b in enumerate(blobs):
            wb = f"{wj}.blobs[{i}]"
            _check(isinstance(b, dict), wb, "not an object")
            _check(isinstance(b.get("index"), int) and not isinstance(b.get("index"), bool), wb,
                   "'index' is missing or not an integer")
            for k in ("role", "status"):
                _check(isinstance(b.get(k), str), wb, f"{k!r} is missing or not a string")
            _check(isinstance(b.get("caffe_shape"), list), wb, "'caffe_shape' is missing or not a list")
            _check(b.get("max_abs_error") is None or _is_num(b["max_abs_error"]), wb,
                   "'max_abs_error' is not a number or null")


def _metrics(m: Any, w: str) -> None:
    _check(isinstance(m, dict), w, "not an object")
    for k in _METRIC_NUMS:
        _check(_is_num(m.get(k)), w, f"{k!r} is missing or not a number")
    for k in _METRIC_INTS:
        _check(isinstance(m.get(k), int) and not isinstance(m.get(k), bool), w, f"{k!r} is missing or not an integer")
    total, mismatched, nan_mismatch = m["total"], m["mismatched"], m["nan_mismatch"]
    _check(total >= 0, w, f"'total' is negative ({total})")
    _check(0 <= mismatched <= total, w, f"'mismatched' ({mismatched}) is not between 0 and 'total' ({total})")
    _check(0 <= nan_mismatch <= mismatched, w,
           f"'nan_mismatch' ({nan_mismatch}) is not between 0 and 'mismatched' ({mismatched})")
    for k in ("max_abs_index", "max_rel_index"):
        v = m.get(k)
        _check(v is None or (isinstance(v, list) and all(isinstance(i, int) for i in v)), w, f"{k!r} is not a list of integers or null")
    _check(isinstance(m.get("passed"), bool), w, "'passed' is missing or not a boolean")


def _diagnosis(d: Any, w: str) -> None:
    _check(isinstance(d, dict), w, "not an object")
    for k in ("kind", "summary", "fix"):
        _check(isinstance(d.get(k), str), w, f"{k!r} is missing or not a string")
    _check(isinstance(d.get("evidence"), dict), w, "'evidence' is missing or not an object")
    _check(d.get("confidence") is None or _is_num(d.get("confidence")), w, "'confidence' is not a number")
    _check(isinstance(d.get("layer", ""), str), w, "'layer' is not a string")


# -- rebuilding ------------------------------------------------------------------


def _num(x: Any) -> float:
    if isinstance(x, str):
        return {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}[x]
    return float(x)


def _idx(x: Any) -> tuple[int, ...] | None:
    return None if x is None else tuple(int(i) for i in x)


def metrics_from_dict(m: dict[str, Any]) -> Metrics:
    return Metrics(
        max_abs_error=_num(m["max_abs_error"]),
        max_abs_index=_idx(m.get("max_abs_index")),
        max_rel_error=_num(m["max_rel_error"]),
        max_rel_index=_idx(m.get("max_rel_index")),
        mean_abs_error=_num(m["mean_abs_error"]),
        rel_rms_error=_num(m["rel_rms_error"]),
        cosine=_num(m["cosine"]),
        mismatched=int(m["mismatched"]),
        total=int(m["total"]),
        nan_mismatch=int(m["nan_mismatch"]),
        scale=_num(m["scale"]),
        min_atol=_num(m["min_atol"]),
        min_rtol=_num(m["min_rtol"]),
        passed=bool(m["passed"]),
    )


def _diag(d: dict[str, Any]) -> Diagnosis:
    return Diagnosis(
        kind=d["kind"],
        summary=d["summary"],
        fix=d["fix"],
        confidence=_num(d.get("confidence", 0.5)),
        evidence=dict(d.get("evidence", {})),
        layer=d.get("layer", ""),
    )


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _tol(t: dict[str, Any] | None) -> Tolerance | None:
    if not t:
        return None
    return Tolerance(_num(t["rtol"]), _num(t["atol"]), bool(t.get("relative_atol", True)))


def report_from_dict(data: dict[str, Any], where: str = "report") -> Report:
    """A :class:`Report` from its (validated) JSON form."""
    validate_report(data, where)
    rows = []
    for x in data["layers"]:
        rows.append(
            LayerResult(
                caffe_layer=x["caffe_layer"],
                caffe_blob=x["caffe_blob"],
                tf_layer=x["tf_layer"],
                caffe_kind=x["caffe_kind"],
                tf_kind=x["tf_kind"],
                caffe_chain=list(x["caffe_chain"]),
                caffe_shape=tuple(x["caffe_shape"]),
                tf_shape=tuple(x["tf_shape"]),
                metrics=metrics_from_dict(x["metrics"]) if x.get("metrics") else None,
                own=metrics_from_dict(x["own_error"]) if x.get("own_error") else None,
                note=x["note"],
                diagnoses=[_diag(d) for d in x["diagnoses"]],
                contaminated_by=x.get("contaminated_by"),
                tolerance=_tol(x.get("tolerance")),
                chain_head=x.get("chain_head", ""),
                weights=[WeightRow.from_dict(r) for r in x.get("weights", [])],
            )
        )
    for i, (r, x) in enumerate(zip(rows, data["layers"], strict=True)):
        for k in ("max_abs_error", "max_rel_error", "cosine", "mismatched_fraction"):  # they repeat the metrics
            if k in x and x[k] is None:
                _check(r.metrics is None, f"{where}: layers[{i}]", f"{k!r} is null but 'metrics' is given")
            if x.get(k) is None:
                continue
            _check(r.metrics is not None, f"{where}: layers[{i}]", f"{k!r} is given but 'metrics' is null")
            _check(_same(_num(x[k]), getattr(r.metrics, k)), f"{where}: layers[{i}]",
                   f"{k!r} ({x[k]}) contradicts its metrics ({getattr(r.metrics, k)})")
        _check(r.passed == x["passed"], f"{where}: layers[{i}]", "'passed' contradicts its metrics, own error and tolerance")
        _check(r.drift == x.get("drift", r.drift), f"{where}: layers[{i}]", "'drift' contradicts its metrics, own error and tolerance")
    fd = data.get("first_divergence")
    first = None
    if fd is not None:
        first = next(r for r in rows if r.caffe_layer == fd["caffe_layer"])
    return Report(
        rows=rows,
        unmapped_caffe=list(data["unmapped"]["caffe"]),
        unmapped_tf=list(data["unmapped"]["tf"]),
        tolerance=_tol(data.get("tolerance")),
        first_divergence=first,
        caffe_source=data.get("caffe_source", ""),
        tf_source=data.get("tf_source", ""),
        meta=dict(data.get("meta", {})),
        coverage=Coverage.from_dict(data["coverage"]) if isinstance(data.get("coverage"), dict) else None,
        conventions=[_diag(d) for d in data.get("conventions", [])],
    )

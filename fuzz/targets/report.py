"""The JSON report reader: ``report.load_report`` (validate + rebuild a ``Report``), then
every renderer on what it rebuilt (``to_json``, text, HTML), as the CLI and the
pytest plugin do with golden reports.

Rejected = ``ReportFormatError`` (an ``InputError``). Crash = anything else, or a
rebuilt report whose per-layer data differs from the validated file (the reader
promises a faithful round trip; keys it does not know are ignored).
"""

from __future__ import annotations

import json
import math
import os
import random

from fuzz import mutators

_PATH = ""


def setup(workdir: str) -> None:
    global _PATH
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else workdir
    d = os.path.join(base, f"lp-fuzz-report-{os.getpid()}")
    os.makedirs(d, exist_ok=True)
    _PATH = os.path.join(d, "case.json")


def seeds() -> list[bytes]:
    from fuzz.targets.diff import _pair
    from layerparity.compare import compare_traces
    from layerparity.trace import Probe, Trace

    out = []
    c, t = _pair()
    out.append(compare_traces(c, t).to_json().encode("utf-8"))
    probes = [Probe(**{**q.__dict__, "value": q.value + 0.5}) if q.name == "pool1" else q for q in t]
    bad = Trace("tensorflow", t.source, probes, inputs=t.inputs)
    out.append(compare_traces(c, bad).to_json().encode("utf-8"))
    return out


def one_input(data: bytes) -> None:
    from layerparity.report import format_report, load_report, read_json, render_html

    with open(_PATH, "wb") as f:
        f.write(data)
    rep = load_report(_PATH)
    raw = read_json(_PATH)
    again = json.loads(rep.to_json())
    where = _differs(again["layers"], raw["layers"], "layers")
    assert where is None, f"the round trip changed {where}"
    format_report(rep)
    render_html(rep)


def _as_float(x) -> float | None:
    if isinstance(x, bool):
        return None
    if isinstance(x, (int, float)):
        return float(x)
    if x in ("nan", "inf", "-inf"):
        return float(x)
    return None


def _differs(rebuilt, given, path: str) -> str | None:
    """First place where the rebuilt JSON differs from the file (keys the reader ignores excepted)."""
    if isinstance(rebuilt, dict) and isinstance(given, dict):
        for k, v in rebuilt.items():
            if k not in given or k == "mismatched_fraction":
                continue  # a default the file left out, or a field derived from others (mismatched / total)
            d = _differs(v, given[k], f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(rebuilt, list) and isinstance(given, list):
        if len(rebuilt) != len(given):
            return f"{path} (length {len(given)} -> {len(rebuilt)})"
        for i, (a, b) in enumerate(zip(rebuilt, given, strict=True)):
            d = _differs(a, b, f"{path}[{i}]")
            if d:
                return d
        return None
    a, b = _as_float(rebuilt), _as_float(given)
    if a is not None and b is not None:  # Infinity / "inf" and NaN / "nan" are the same number
        return None if a == b or (math.isnan(a) and math.isnan(b)) else f"{path} ({given!r} -> {rebuilt!r})"
    return None if rebuilt == given else f"{path} ({str(given)[:40]!r} -> {str(rebuilt)[:40]!r})"


def mutate(data: bytes, rng: random.Random) -> bytes:
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return mutators.byte_mutate(data, rng)
    for _ in range(rng.randint(1, 3)):
        doc = mutators.mutate_json(doc, rng)
    return json.dumps(doc, ensure_ascii=rng.random() < 0.5).encode("utf-8")


def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
    import atheris

    def mut(d: bytes, rng: random.Random) -> bytes:
        return mutate(d, rng) if rng.random() < 0.85 else atheris.Mutate(d, max_size)

    return mutators.guarded(mut, lambda d: atheris.Mutate(d, max_size))(data, max_size, seed)

"""The model-zoo matrix: real Caffe against real Keras ports of real architectures.

For each net: the correct port passes at the default tolerance, every computing
Caffe layer being compared. For each (net, bug) pair that applies: the report's
first divergence is the layer the bug was injected at and the top diagnosis is
the injected kind. Outcomes feed docs/validation.md (``make validation``).
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from pathlib import Path

import pytest
from zoo_nets import NETS, ZOO

import portbuilder as pb

pytestmark = pytest.mark.slow

#: Caffe layer types with no computation at inference: a port leaves them out.
TRIVIAL = {"Input", "Dropout", "Split", "Silence"}


def _applicable() -> list[tuple[str, str, str]]:
    """(net, bug, first layer it applies to), as the port builder decides."""
    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, net in NETS.items():
            proto = pb.with_input_shape(ZOO / net.file, net.input_shape, f"{tmp}/{name}.prototxt")
            info = pb.net_info(proto)
            for bug in pb.BUGS:
                where = pb.applicable_layers(info, bug, first=True)
                if where:
                    cases.append((name, bug, where[0]))
    return cases


def _applicability_key() -> str:
    """Everything the builder's decision depends on: the prototxts and input sizes, the
    builder's sources, and the framework versions (Keras decides whether a port builds)."""
    from importlib.metadata import PackageNotFoundError, version

    def dist_version(names: tuple[str, ...]) -> str:
        for n in names:
            try:
                return version(n)
            except PackageNotFoundError:
                pass
        return "?"

    h = hashlib.sha256()
    for name, net in NETS.items():
        h.update(f"{name}:{net.file}:{net.input_shape}\n".encode())
        h.update((ZOO / net.file).read_bytes())
    for src in sorted(Path(pb.__file__).parent.glob("*.py")):
        h.update(src.name.encode() + src.read_bytes())
    for dists in (("keras",), ("tensorflow", "tensorflow-cpu", "tf-nightly")):
        h.update(f"{dists[0]}=={dist_version(dists)}\n".encode())
    return h.hexdigest()


def _bug_cases(config: pytest.Config) -> list[tuple[str, str, str]]:
    """:func:`_applicable`, memoized in pytest's cache under the key of its inputs: deciding where
    the shape-changing bugs still build takes shapes-only Keras builds (seconds per worker)."""
    cache = getattr(config, "cache", None)
    key = _applicability_key()
    if cache is not None:
        hit = cache.get(_CACHE_ENTRY, None)
        if isinstance(hit, dict) and hit.get("key") == key:
            return [tuple(c) for c in hit["cases"]]
    cases = _applicable()
    if cache is not None:
        cache.set(_CACHE_ENTRY, {"key": key, "cases": [list(c) for c in cases]})
    return cases


_CACHE_ENTRY = "layerparity/zoo-bug-cases"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.definition.name == "test_injected_bug_is_found":
        metafunc.parametrize("net,bug,layer", [pytest.param(n, b, at, marks=_group(n))
                                               for n, b, at in _bug_cases(metafunc.config)])


def _group(net: str):
    return pytest.mark.xdist_group(f"zoo-{net}")


def _compare(case, bugs=()):
    """Build the port, capture it, compare against the shared Caffe trace archive."""
    t0 = time.perf_counter()
    report = case.compare(pb.build_keras(case.info, case.params, bugs=bugs))
    return report, time.perf_counter() - t0


@pytest.mark.parametrize("net", [pytest.param(n, marks=_group(n)) for n in NETS])
def test_correct_port_passes(net, zoo, record_result):
    case = zoo(net)
    report, seconds = _compare(case)
    fd = report.first_divergence
    compared = {c for r in report.rows for c in (r.caffe_layer, *r.caffe_chain)}
    missing = [lp_.name for lp_ in case.info.layers if lp_.type not in TRIVIAL and lp_.name not in compared]
    failing = [(r.caffe_layer, r.max_rel_error, r.note) for r in report.rows if not r.passed]
    record_result({"net": net, "bug": None, "passed": bool(report), "first": fd.caffe_layer if fd else None,
                   "failing": len(failing), "rows": len(report.rows), "missing": missing,
                   "worst": failing[0][0] if failing else None,
                   "seconds": round(seconds, 2), "setup_seconds": round(case.setup_seconds, 2)})
    assert not missing, f"{net}: Caffe layers never compared: {missing}"
    assert report, f"{net}: the correct port fails: first divergence {fd.caffe_layer if fd else None}; failing rows {failing[:8]}"
    assert fd is None


def test_injected_bug_is_found(net, bug, layer, zoo, record_result):
    case = zoo(net)
    assert pb.plan_bugs(case.info, [bug]) == {layer: bug}
    report, seconds = _compare(case, bugs=[bug])
    fd = report.first_divergence
    found_layer = fd.caffe_layer if fd else None
    chain = list(fd.caffe_chain) if fd else []
    kinds = [d.kind for d in fd.diagnoses] if fd else []
    layer_ok = fd is not None and (found_layer == layer or layer in chain)
    kind_ok = bool(kinds) and kinds[0] == bug
    record_result({"net": net, "bug": bug, "layer": layer, "found_layer": found_layer, "kinds": kinds[:3],
                   "layer_ok": layer_ok, "kind_ok": kind_ok, "seconds": round(seconds, 2)})
    assert not report, f"{net} with {bug} at {layer}: the report passes"
    assert layer_ok, f"{net} with {bug} injected at {layer}: first divergence is {found_layer} (chain {chain})"
    assert kind_ok, f"{net} with {bug} at {layer}: diagnoses {kinds} (summary: {fd.diagnoses[0].summary if fd and fd.diagnoses else None})"

"""The zoo nets that caffe2onnx cannot port (issue 15: a net goes into the third-party matrix
where a converter can port it). ``make converter-ports`` tries the converter on each net of
``TRIED`` and keeps what it said; these tests hold that record to the reasons given for it."""

from __future__ import annotations

import pytest
from thirdparty_ports import NETS, ROOT, TRIED, load_refusals


@pytest.fixture(scope="module")
def refusals() -> dict:
    return load_refusals()


@pytest.mark.parametrize("name", sorted(TRIED))
def test_the_converter_refuses_the_zoo_net_for_the_reason_given(refusals, name):
    r = refusals.get(name)
    assert r is not None, f"{name} was not tried with the converter; record: {sorted(refusals)}"
    assert not r["converted"], (
        f"caffe2onnx now converts {name}: move it from TRIED into NETS in scripts/make_converter_ports.py "
        "so that its converter port is checked in the third-party matrix")
    assert r["converter_said"].strip(), f"{name}: the converter's refusal was not recorded"
    lacks = TRIED[name]["lacks"]
    assert set(lacks) <= set(r["layer_types"]), (name, lacks, r["layer_types"])


def test_tried_nets_are_zoo_nets_not_in_the_matrix():
    in_matrix = {spec["fixture"] for spec in NETS.values()}
    for name, tried in TRIED.items():
        assert (ROOT / "fixtures" / "zoo" / tried["fixture"]).exists(), name
        assert tried["fixture"] not in in_matrix, f"{name} is both in the matrix and refused"

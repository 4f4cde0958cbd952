"""docs/layers.md is generated from what the tests prove (tests/layer_types/layers_table.py):
it must be current, name only types this Caffe build registers, and claim "captured and
aligned" only for types whose family module tests a correct and a buggy port."""

from __future__ import annotations

import ast
from pathlib import Path

import layers_table as LT
import pytest

from layerparity.diagnosis._core import DIAGNOSIS_KINDS
from layerparity.diagnosis.decide import RULES_BY_KIND
from layerparity.diagnosis.shapes import INTERP_KINDS
from layerparity.kinds import canonical_kind


def test_docs_layers_md_is_the_generated_page():
    expected = LT.render(LT.registered_types())
    assert LT.PAGE.read_text("utf-8") == expected, (
        "docs/layers.md is stale: run `.venv/bin/python tests/layer_types/layers_table.py --write`")


def test_every_registered_type_has_exactly_one_row():
    types = LT.registered_types()
    assert len(types) > 60 and "Convolution" in types and "Python" in types  # this build, Python layers on
    rows = LT.rows(types)
    assert [r["type"] for r in rows] == types


def test_family_modules_name_only_registered_types_and_each_type_once():
    types = set(LT.registered_types())
    seen: dict[str, str] = {}
    fams = LT.family_modules()
    assert fams, "no family module found in tests/layer_types"
    for module, (covered, not_yet) in fams.items():
        for t in [*covered, *not_yet]:
            assert t in types, f"{module}: {t!r} is not a layer type of this Caffe build"
            assert t not in LT.NOT_DEPLOY, f"{module}: {t!r} is marked as not a deploy layer"
            assert t not in seen, f"{t!r} is claimed by {seen[t]} and {module}"
            seen[t] = module


@pytest.mark.parametrize("module", sorted(LT.family_modules()))
def test_a_covered_type_cannot_exist_without_its_tests(module):
    """At least two tests of the module (the correct port, the buggy port) are parametrized
    over ``sorted(COVERED)``: a row added to COVERED runs both."""
    tree = ast.parse((LT.ROOT / module).read_text("utf-8"))
    n = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            for dec in node.decorator_list:
                if "parametrize" in ast.unparse(dec) and "sorted(COVERED)" in ast.unparse(dec):
                    n += 1
    covered, _ = LT.family_modules()[module]
    assert not covered or n >= 2, f"{module}: {n} test(s) parametrized over sorted(COVERED), need 2"


def _shape_rule_kinds() -> set[str]:
    """Kinds returned by the diagnosis package's ``*_shape_rule`` functions (they run for a
    shape mismatch at any layer, whatever its kind)."""
    out: set[str] = set()
    for path in (LT.ROOT / "src" / "layerparity" / "diagnosis").glob("*.py"):
        for fn in ast.walk(ast.parse(path.read_text("utf-8"))):
            if isinstance(fn, ast.FunctionDef) and fn.name.endswith("shape_rule"):
                out |= {n.value for n in ast.walk(fn) if isinstance(n, ast.Constant) and n.value in DIAGNOSIS_KINDS}
    return out


def test_layer_diagnoses_name_real_kinds_of_rules_that_run_for_the_type():
    shape_kinds = _shape_rule_kinds()
    from layerparity.diagnosis.weight_check import WEIGHT_TRANSFORM_KINDS as weight_kinds
    assert {"concat_axis", "deconv_same_padding"} <= shape_kinds
    for t, ks in LT.LAYER_DIAGNOSES.items():
        assert set(ks) <= set(DIAGNOSIS_KINDS), (t, set(ks) - set(DIAGNOSIS_KINDS))
        ruled = canonical_kind(t) in RULES_BY_KIND or t in INTERP_KINDS
        assert ruled or set(ks) <= shape_kinds | set(weight_kinds), f"no rule runs for {t}"
    assert set(LT.GENERIC_DIAGNOSES) <= set(DIAGNOSIS_KINDS)


def test_a_type_no_module_covers_is_not_checked_never_passed(tmp_path, monkeypatch):
    monkeypatch.setattr(LT, "HERE", Path(tmp_path))  # no family module at all
    (row,) = LT.rows(["AbsVal"])
    assert row["status"] == "not checked"
    (tmp_path / "test_x.py").write_text('COVERED = {"AbsVal": "keras Lambda(abs)"}\nNOT_YET = {}\n')
    monkeypatch.setattr(LT, "ROOT", Path(tmp_path))
    (row,) = LT.rows(["AbsVal"])
    assert row["status"] == "captured and aligned" and row["test"] == "`test_x.py`"

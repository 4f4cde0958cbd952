"""A few seconds of the fuzz targets (fuzz/targets/*) under hypothesis, in the suite.

The full coverage-guided runs are ``make fuzz`` (atheris, fuzz/run.py); this
smoke version runs the same targets, seeds and structure-aware mutators with a
fixed hypothesis seed (``derandomize``), so a regression in a reader shows up
in ``make test``. Each case must be accepted or raise an ``InputError``;
anything else (another exception, a failed invariant) fails the test with the
offending input printed by hypothesis.
"""

from __future__ import annotations

import os
import sys

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from fuzz.targets import archive, caffemodel, diff, prototxt, report  # noqa: E402

from layerparity.errors import InputError  # noqa: E402

TARGETS = {"archive": archive, "prototxt": prototxt, "caffemodel": caffemodel, "diff": diff, "report": report}
# no shrinking: a smoke run reports the first failing input as generated, quickly
SMOKE = settings(max_examples=60, deadline=None, derandomize=True, database=None, report_multiple_bugs=False,
                 phases=[Phase.explicit, Phase.generate],
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    out = {}
    for name, mod in TARGETS.items():
        mod.setup(os.fspath(tmp_path_factory.mktemp(f"fuzz-{name}")))
        out[name] = mod.seeds()
    return out


def _run(mod, data: bytes) -> str:
    try:
        mod.one_input(data)
    except InputError:
        return "rejected"
    return "accepted"


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_seeds_are_accepted(seeded, name):
    """The starting corpus must be valid, or the fuzzer explores nothing."""
    assert seeded[name], f"target {name} has no seeds"
    for i, s in enumerate(seeded[name]):
        assert _run(TARGETS[name], s) == "accepted", f"{name} seed {i} was rejected"


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_mutated_inputs_accepted_or_input_error(seeded, name):
    mod = TARGETS[name]
    seeds = seeded[name]

    @SMOKE
    @given(rng=st.randoms(use_true_random=False), which=st.integers(0, len(seeds) - 1), rounds=st.integers(1, 4))
    def case(rng, which, rounds):
        data = seeds[which]
        for _ in range(rounds):
            data = mod.mutate(data, rng)
        _run(mod, data)

    case()


@pytest.mark.parametrize("name", ["archive", "prototxt", "caffemodel", "report"])
def test_raw_bytes_accepted_or_input_error(seeded, name):
    mod = TARGETS[name]

    @settings(SMOKE, max_examples=40)
    @given(data=st.binary(max_size=2048))
    def case(data):
        _run(mod, data)

    case()

"""The units checker against pysimlin's: both flag the same variables on deliberately broken models.

pysimlin (Simlin's engine) is a test-only dependency; without it these tests skip.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from armsdyn.units import check_units
from tests.conftest import MODELS

simlin = pytest.importorskip("simlin", reason="pysimlin is not installed (pip install pysimlin)")

BROKEN = Path(__file__).parent / "data" / "units"

#: The variable each broken model's deliberate error is in (see tests/data/units/README.md).
INTENDED = {
    "wrong_flow_units.mdl": {"arming rate X", "arms X"},
    "adding_unlike.mdl": {"arming rate X"},
    "coefficient_units.mdl": {"reaction of X"},
    "exp_of_arms.mdl": {"deterrence"},
    "dimensioned_exponent.mdl": {"escalation"},
    "min_of_unlike.mdl": {"capped rate X"},
    "stock_units.mdl": {"arms Y"},
}

#: Errors pysimlin's checker does not look for: armsdyn flags them, pysimlin flags nothing else.
SIMLIN_DOES_NOT_CHECK = {"dimensioned_exponent.mdl": "pysimlin does not require a dimensionless exponent"}

#: pysimlin reports a flow whose units do not match its stock at the flow; armsdyn at the stock's INTEG.
_ATTACHED_STOCK = re.compile(r"units expected by the attached stock (\w+)")


def _canonical(name: str) -> str:
    return re.sub(r"\W+", "_", name.strip().lower()).strip("_")


def armsdyn_flags(path: Path) -> set[str]:
    return {_canonical(issue.variable) for issue in check_units(path)}


def simlin_flags(path: Path) -> set[str]:
    """Variables pysimlin's units checks flag (its per-model summary, naming no variable, left out)."""
    flagged = set()
    for error in simlin.load(path).project.get_errors():
        if "UNIT" not in error.code.name or not error.variable_name:
            continue
        stock = _ATTACHED_STOCK.search(str(error.details or error.message))
        flagged.add(_canonical(stock.group(1) if stock else error.variable_name))
    return flagged


def test_every_broken_model_is_here_and_documented() -> None:
    files = sorted(p.name for p in BROKEN.glob("*.mdl"))
    assert files == sorted(INTENDED)
    readme = (BROKEN / "README.md").read_text(encoding="utf-8")
    assert all(f"`{name}`" in readme for name in files)


@pytest.mark.parametrize("name", sorted(INTENDED))
def test_armsdyn_flags_the_intended_variable(name: str) -> None:
    assert {_canonical(v) for v in INTENDED[name]} <= armsdyn_flags(BROKEN / name)


@pytest.mark.parametrize("name", sorted(set(INTENDED) - set(SIMLIN_DOES_NOT_CHECK)))
def test_armsdyn_and_simlin_flag_the_same_variables(name: str) -> None:
    ours, theirs = armsdyn_flags(BROKEN / name), simlin_flags(BROKEN / name)
    assert {_canonical(v) for v in INTENDED[name]} <= theirs
    assert ours == theirs


@pytest.mark.parametrize("name", sorted(SIMLIN_DOES_NOT_CHECK))
def test_where_simlin_does_not_check_it_flags_nothing_else(name: str) -> None:
    ours, theirs = armsdyn_flags(BROKEN / name), simlin_flags(BROKEN / name)
    assert {_canonical(v) for v in INTENDED[name]} <= ours
    assert theirs <= ours, SIMLIN_DOES_NOT_CHECK[name]


@pytest.mark.parametrize("name", sorted(p.name for p in MODELS.glob("*.mdl")))
def test_both_find_the_shipped_models_consistent(name: str) -> None:
    assert armsdyn_flags(MODELS / name) == set()
    assert simlin_flags(MODELS / name) == set()


def test_the_comparison_would_see_a_disagreement() -> None:
    """The unmodified model against a broken one: the flags differ, so agreement above is not vacuous."""
    assert simlin_flags(BROKEN / "coefficient_units.mdl") != simlin_flags(MODELS / "richardson.mdl")
    assert armsdyn_flags(BROKEN / "coefficient_units.mdl") != armsdyn_flags(MODELS / "richardson.mdl")

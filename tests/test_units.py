"""Units checking: broken models are flagged at the right variable; the shipped models are consistent."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from armsdyn.errors import ModelError
from armsdyn.units import check_units, parse_units, show
from tests.conftest import CONFIGS, MODELS, call_cli, write_config

CONTROL = """
INITIAL TIME = 0
	~	Year
	~	|
FINAL TIME = 10
	~	Year
	~	|
TIME STEP = 0.25
	~	Year [0,?]
	~	|
SAVEPER = TIME STEP
	~	Year
	~	|
"""


def _model(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "broken.mdl"
    path.write_text("{UTF-8}\n" + body + CONTROL, encoding="utf-8")
    return path


def _flagged(path: Path) -> set[str]:
    return {issue.variable for issue in check_units(path)}


def test_units_strings_parse_like_vensim() -> None:
    assert show(parse_units("Dmnl")) == "Dmnl"
    assert show(parse_units("Dmnl [0,1]")) == "Dmnl"
    assert parse_units("units/Year") * parse_units("Year") == parse_units("units")
    assert parse_units("money/units") * parse_units("units/Year") == parse_units("money/Year")
    assert parse_units("1/Year") * parse_units("Year") == parse_units("Dmnl")
    assert parse_units("megatons^2") == parse_units("megatons") ** 2
    assert parse_units("apples") != parse_units("megatons^2")
    assert parse_units("") is None


def test_unreadable_units_are_an_error() -> None:
    with pytest.raises(ModelError, match="cannot read units"):
        parse_units("apples /* pears")


def test_adding_apples_to_megatons_squared_is_flagged(tmp_path: Path) -> None:
    path = _model(
        tmp_path,
        """
harvest = 3
	~	apples
	~	|
yield squared = 2
	~	megatons^2
	~	|
mixture = harvest + yield squared
	~	apples
	~	|
""",
    )
    issues = check_units(path)
    assert [i.variable for i in issues] == ["mixture"]
    assert issues[0].equation == "harvest + yield squared"
    assert {issues[0].left, issues[0].right} == {"apples", "megatons**2"}
    assert "'+' of unlike quantities" in issues[0].problem


def test_a_stock_whose_flow_is_not_per_time_is_flagged(tmp_path: Path) -> None:
    path = _model(
        tmp_path,
        """
stock = INTEG(inflow, 0)
	~	arms
	~	|
inflow = 1
	~	arms
	~	|
good stock = INTEG(good inflow, 0)
	~	arms
	~	|
good inflow = 1
	~	arms/Year
	~	|
""",
    )
    issues = check_units(path)
    assert _flagged(path) == {"stock"}
    assert any({i.left, i.right} == {"arms", "Year*arms"} for i in issues), [str(i) for i in issues]


def test_exp_of_a_dimensioned_quantity_is_flagged(tmp_path: Path) -> None:
    path = _model(
        tmp_path,
        """
budget = 5
	~	money
	~	|
growth = EXP(budget)
	~	Dmnl
	~	|
scaled growth = EXP(budget / reference budget)
	~	Dmnl
	~	|
reference budget = 2
	~	money
	~	|
""",
    )
    issues = check_units(path)
    assert _flagged(path) == {"growth"}
    assert issues[0].problem.startswith("EXP of a quantity with dimensions")


def test_a_dimensioned_exponent_and_mismatched_declaration_are_flagged(tmp_path: Path) -> None:
    path = _model(
        tmp_path,
        """
rate = 0.1
	~	1/Year
	~	|
base = 2
	~	Dmnl
	~	|
power = base ^ rate
	~	Dmnl
	~	|
spending = rate * 3
	~	money/Year
	~	|
""",
    )
    assert _flagged(path) == {"power", "spending"}


def test_numbers_functions_and_time_are_accepted(tmp_path: Path) -> None:
    path = _model(
        tmp_path,
        """
level = INTEG(change - 0.5, 1)
	~	arms
	~	|
change = MAX(0, MIN(level * rate, cap)) + STEP(cap, 5) + IF THEN ELSE(Time > 3, 1, 0)
	~	arms/Year
	~	|
rate = 0.1
	~	1/Year
	~	|
cap = 2
	~	arms/Year
	~	|
perceived = SMOOTH(level, 2)
	~	arms
	~	|
ramped = RAMP(cap, 1, 4)
	~	arms
	~	|
share = XIDZ(level, perceived, 1) * EXP(-rate * Time)
	~	Dmnl
	~	|
""",
    )
    assert check_units(path) == []


@pytest.mark.parametrize("name", sorted(p.name for p in MODELS.glob("*") if p.suffix in {".mdl", ".xmile"}))
def test_every_shipped_model_is_consistent(name: str) -> None:
    assert [str(i) for i in check_units(MODELS / name)] == []


def _broken_richardson(tmp_path: Path) -> Path:
    text = (MODELS / "richardson.mdl").read_text(encoding="utf-8")
    grievance = "grievance g=\n\t1\n\t~\tarms/Year"
    assert grievance in text
    path = tmp_path / "richardson.mdl"
    path.write_text(text.replace(grievance, "grievance g=\n\t1\n\t~\tarms"), encoding="utf-8")
    return path


CONFIG = """
[time]
initial = 0
final = 10
step = 0.125
saveper = 0.5

[[scenarios]]
name = "one"

[output]
variables = ["arms X"]
"""


def test_check_units_warns_and_strict_fails(tmp_path: Path) -> None:
    config = write_config(tmp_path, CONFIG, model=_broken_richardson(tmp_path))
    warned = call_cli("check", "--units", config)
    assert warned.returncode == 0, warned.stderr
    assert "units:" in warned.stdout
    assert "warning: arming rate X" in warned.stdout
    assert "[arms/Year] vs [arms]" in warned.stdout or "[arms] vs [arms/Year]" in warned.stdout
    strict = call_cli("check", "--units", "--strict", config)
    assert strict.returncode == 2
    assert "error: arming rate X" in strict.stdout


def test_check_units_on_a_clean_model_and_without_the_flag(tmp_path: Path) -> None:
    model = Path(shutil.copy(MODELS / "richardson.mdl", tmp_path / "richardson.mdl"))
    config = write_config(tmp_path, CONFIG, model=model)
    clean = call_cli("check", "--units", "--strict", config)
    assert clean.returncode == 0, clean.stderr
    assert "consistent" in clean.stdout
    plain = call_cli("check", config)
    assert plain.returncode == 0, plain.stderr
    assert "units:" not in plain.stdout


def test_unlike_operands_are_flagged_beside_an_unchecked_one(tmp_path: Path) -> None:
    path = _model(
        tmp_path,
        """
apples = 1
	~	apples
	~	|
pears = 1
	~	pears
	~	|
anything = 1
	~	|
basket = MAX(anything, apples, pears)
	~	apples
	~	|
negated = -apples
	~	apples
	~	|
""",
    )
    assert _flagged(path) == {"basket"}


def test_check_units_reads_an_audit_configs_model() -> None:
    done = call_cli("check", "--units", "--strict", CONFIGS / "audit_knowledge_argument.toml")
    assert done.returncode == 0, done.stderr
    assert "valid audit" in done.stdout
    assert "knowledge_engine.mdl: consistent" in done.stdout

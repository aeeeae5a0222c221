"""Config validation: every bad input is reported clearly before anything runs."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from armsdyn import ConfigError, load_config
from armsdyn.cli import main
from tests.conftest import CONFIGS, MODELS, call_cli, write_config

GOOD = """
[time]
initial = 0
final = 10
step = 0.125
saveper = 0.5

[parameters]
"defence coefficient k" = 0.5

[[scenarios]]
name = "one"
parameters = { "fatigue coefficient a" = 1.5 }

[[scenarios]]
name = "two"
parameters = { "grievance g" = [[0, 1.0], [10, 3.0]] }

[output]
variables = ["arms X", "arms Y"]

[[figures]]
kind = "time_series"
variables = ["arms X"]
"""

# (id, text to replace, replacement, message regex)
BAD = [
    ("unknown-top-key", "[time]", "[tiem]", r"tiem: unknown key; did you mean 'time'\? \(allowed: experiment, time"),
    ("unknown-time-key", "final = 10", "finale = 10", r"time\.finale: unknown key; did you mean 'final'\?"),
    ("wrong-type", "final = 10", 'final = "10"', r"time\.final: expected a number, got string '10'"),
    ("step-zero", "step = 0.125", "step = 0", r"time\.step: must be positive, got 0\.0"),
    ("step-negative", "step = 0.125", "step = -1", r"time\.step: must be positive"),
    ("final-before-initial", "final = 10", "final = -5", r"time\.final: must be after time\.initial \(0\.0\)"),
    (
        "saveper-not-multiple",
        "saveper = 0.5",
        "saveper = 0.3",
        r"time\.saveper: must be a positive whole multiple of time\.step \(0\.125\)",
    ),
    ("time-nan", "final = 10", "final = nan", r"time\.final: must be a finite number, got nan"),
    (
        "unknown-parameter",
        '"defence coefficient k" = 0.5',
        '"defence coeficient k" = 0.5',
        r"""parameters\."defence coeficient k": unknown parameter in model .*richardson\.mdl; """
        r"did you mean 'defence coefficient k'\?",
    ),
    (
        "stock-as-parameter",
        '"defence coefficient k" = 0.5',
        '"arms X" = 3',
        r"""parameters\."arms X": 'arms X' is a stock, not a constant; only constants can be set""",
    ),
    (
        "parameter-wrong-type",
        '"defence coefficient k" = 0.5',
        '"defence coefficient k" = "high"',
        r"""parameters\."defence coefficient k": expected a number or a list of \[time, value\] pairs, """
        r"got string 'high'",
    ),
    ("parameter-nan", '"defence coefficient k" = 0.5', '"defence coefficient k" = nan', r"must be a number, got nan"),
    (
        "series-bad-pair",
        "[[0, 1.0], [10, 3.0]]",
        "[[0, 1.0], [10]]",
        r"""scenarios\[1\]\.parameters\."grievance g"\[1\]: expected a \[time, value\] pair""",
    ),
    (
        "series-unsorted",
        "[[0, 1.0], [10, 3.0]]",
        "[[10, 1.0], [0, 3.0]]",
        r"times of a \[time, value\] series must increase strictly",
    ),
    (
        "duplicate-scenario",
        'name = "two"',
        'name = "one"',
        r"scenarios\[1\]\.name: duplicate scenario name 'one' \(also scenarios\[0\]\)",
    ),
    (
        "unsafe-scenario-name",
        'name = "two"',
        'name = "../../etc"',
        r"scenarios\[1\]\.name: '\.\./\.\./etc' is not a safe name",
    ),
    ("scenario-missing-name", 'name = "two"\n', "", r"scenarios\[1\]\.name: missing"),
    (
        "unknown-output-variable",
        '["arms X", "arms Y"]',
        '["arms X", "arm Y"]',
        r"output\.variables\[1\]: unknown variable 'arm Y' .*did you mean 'arms Y'\?",
    ),
    (
        "unknown-figure-kind",
        'kind = "time_series"',
        'kind = "timeseries"',
        r"figures\[0\]\.kind: unknown figure kind 'timeseries'; did you mean 'time_series'\?",
    ),
    (
        "figure-unknown-variable",
        'variables = ["arms X"]\n',
        'variables = ["army X"]\n',
        r"figures\[0\]\.variables\[0\]: unknown variable 'army X'",
    ),
    (
        "figure-key-not-for-kind",
        'variables = ["arms X"]\n',
        'variables = ["arms X"]\nmetrics = ["final arms X"]\n',
        r"figures\[0\]\.metrics: not used by kind 'time_series' \(it takes: variables\)",
    ),
    (
        "unknown-layout",
        'kind = "time_series"',
        'kind = "time_series"\nlayout = "grid"',
        r"figures\[0\]\.layout: unknown layout for time_series 'grid' \(allowed: overlay, small_multiples\)",
    ),
    (
        "unknown-metric",
        'kind = "time_series"\nvariables = ["arms X"]',
        'kind = "metric_bars"\nmetrics = ["final arms Z"]',
        r"figures\[0\]\.metrics\[0\]: unknown metric 'final arms Z' for this model; did you mean 'final arms [XY]'\?",
    ),
    (
        "metric-regain-share-moved-to-the-model",
        "[output]",
        "[metrics]\nregain_share = 0.5\n[output]",
        r"metrics\.regain_share: unknown key",
    ),
    (
        "unknown-baseline",
        "[output]",
        '[metrics]\nbaseline = "on"\n[output]',
        r"metrics\.baseline: unknown scenario 'on'; did you mean 'one'\?",
    ),
    (
        "unknown-scenario-baseline",
        'name = "two"',
        'name = "two"\nbaseline = "onee"',
        r"scenarios\[1\]\.baseline: unknown scenario 'onee'; did you mean 'one'\? \(scenarios: one\)",
    ),
    (
        "own-baseline",
        'name = "two"',
        'name = "two"\nbaseline = "two"',
        r"scenarios\[1\]\.baseline: scenario 'two' cannot be its own baseline",
    ),
    (
        "baseline-not-string",
        'name = "two"',
        'name = "two"\nbaseline = 1',
        r"scenarios\[1\]\.baseline: expected a string",
    ),
    ("not-toml", "[time]", "[time", r"not valid TOML: .*line"),
    ("duplicate-key", "final = 10", "final = 10\nfinal = 11", r"not valid TOML"),
]


def _bad_config(tmp_path: Path, old: str, new: str) -> Path:
    assert old in GOOD, old
    return write_config(tmp_path, GOOD.replace(old, new, 1))


def test_good_config_is_valid(tmp_path: Path) -> None:
    exp = load_config(write_config(tmp_path, GOOD))
    assert [s.name for s in exp.scenarios] == ["one", "two"]
    # Base overrides reach every scenario; a scenario's own override wins.
    assert exp.scenario("one").parameters == {"defence coefficient k": 0.5, "fatigue coefficient a": 1.5}
    assert exp.scenario("two").parameters["grievance g"] == ((0.0, 1.0), (10.0, 3.0))
    assert exp.time.final == 10.0
    assert exp.time.saveper == 0.5
    assert exp.variables == ("arms X", "arms Y")


@pytest.mark.parametrize(("old", "new", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_config_is_rejected_with_a_clear_message(tmp_path: Path, old: str, new: str, message: str) -> None:
    path = _bad_config(tmp_path, old, new)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    assert str(path) in str(info.value), "the message must name the config file"


@pytest.mark.parametrize(("old", "new", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_cli_exits_2_and_writes_nothing_on_a_bad_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, message: str
) -> None:
    path = _bad_config(tmp_path, old, new)
    out = tmp_path / "results" / "exp"
    assert main(["run", str(path), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("armsdyn: error: ")
    assert "Traceback" not in err
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    text = GOOD.replace("step = 0.125", "step = 0").replace('"fatigue coefficient a"', '"fatigue coeff a"')
    with pytest.raises(ConfigError, match=r"2 problems:\n  - time\.step: .*\n  - scenarios\[0\]\.parameters"):
        load_config(write_config(tmp_path, text))


def test_missing_model_file_lists_where_it_looked(tmp_path: Path) -> None:
    path = write_config(tmp_path, GOOD, model=Path("no/such.mdl"))
    with pytest.raises(ConfigError, match=r"experiment\.model: model file 'no/such\.mdl' not found \(looked for "):
        load_config(path)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.toml: config file not found"):
        load_config(tmp_path / "missing.toml")


def test_unsafe_experiment_name(tmp_path: Path) -> None:
    path = tmp_path / "x.toml"
    path.write_text(f'[experiment]\nname = "/tmp/evil"\nmodel = "{(MODELS / "richardson.mdl").as_posix()}"\n')
    with pytest.raises(ConfigError, match=r"experiment\.name: '/tmp/evil' is not a safe folder name"):
        load_config(path)


def test_model_path_resolves_relative_to_the_config_file() -> None:
    exp = load_config(CONFIGS / "richardson.toml")
    assert exp.model.path.resolve() == (MODELS / "richardson.mdl").resolve()


def test_default_output_is_stocks_and_flows_and_infinite_parameters_are_allowed(tmp_path: Path) -> None:
    text = '[[scenarios]]\nname = "s"\nparameters = { "grievance g" = inf }\n'
    exp = load_config(write_config(tmp_path, text))
    assert set(exp.variables) == {"arms X", "arms Y", "arming rate X", "arming rate Y"}
    assert math.isinf(exp.scenario("s").parameters["grievance g"])


def test_without_scenarios_there_is_one_base_scenario(tmp_path: Path) -> None:
    exp = load_config(write_config(tmp_path, '[parameters]\n"grievance g" = 2\n'))
    assert [(s.name, dict(s.parameters)) for s in exp.scenarios] == [("base", {"grievance g": 2.0})]


def test_scenario_baseline_names_another_scenario(tmp_path: Path) -> None:
    exp = load_config(write_config(tmp_path, GOOD.replace('name = "two"', 'name = "two"\nbaseline = "one"', 1)))
    assert exp.scenario("two").baseline == "one"
    assert exp.scenario("one").baseline is None


def _ranged_model(tmp_path: Path) -> Path:
    """Richardson's model declaring ranges: k in [0, 2], a strictly positive (at least 0.01)."""
    text = (MODELS / "richardson.mdl").read_text()
    ranged = text.replace(
        "defence coefficient k=\n\t0.9\n\t~\t1/Year\n", "defence coefficient k=\n\t0.9\n\t~\t1/Year [0,2]\n"
    )
    ranged = ranged.replace(
        "fatigue coefficient a=\n\t1\n\t~\t1/Year\n", "fatigue coefficient a=\n\t1\n\t~\t1/Year [0.01,?]\n"
    )
    assert ranged.count("[0,2]") == 1
    assert ranged.count("[0.01,?]") == 1
    path = tmp_path / "ranged.mdl"
    path.write_text(ranged)
    return path


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        (
            "scenario",
            "-0.5",
            r"""scenarios\[0\]\.parameters\."defence coefficient k": scenario 'one': 'defence coefficient k' = -0\.5 """
            r"is outside the range \[0, 2\] that .*ranged\.mdl declares",
        ),
        ("scenario", "2.5", r"'defence coefficient k' = 2\.5 is outside the range \[0, 2\]"),
        ("scenario", "inf", r"'defence coefficient k' = inf is outside the range \[0, 2\]"),
        ("scenario", "[[0, 1], [10, 2.01]]", r"'defence coefficient k' = 2\.01 is outside the range \[0, 2\]"),
        ("base", "3", r"""^\S+: parameters\."defence coefficient k": 'defence coefficient k' = 3 is outside"""),
    ],
)
def test_overrides_outside_the_declared_range_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], where: str, value: str, message: str
) -> None:
    model = _ranged_model(tmp_path)
    override = f'"defence coefficient k" = {value}'
    if where == "scenario":
        body = f'[[scenarios]]\nname = "one"\nparameters = {{ {override} }}\n'
    else:
        body = f"[parameters]\n{override}\n"
    config = write_config(tmp_path, body, model=model)
    with pytest.raises(ConfigError, match=message):
        load_config(config)
    assert main(["check", str(config)]) == 2
    assert "is outside the range" in capsys.readouterr().err


def test_overrides_at_the_ends_of_the_declared_range_are_allowed(tmp_path: Path) -> None:
    model = _ranged_model(tmp_path)
    body = "".join(
        f'[[scenarios]]\nname = "s{i}"\n'
        f'parameters = {{ "defence coefficient k" = {k}, "fatigue coefficient a" = {a} }}\n'
        for i, (k, a) in enumerate([(0, 0.01), (2, 1e9), ("[[0, 0], [10, 2]]", 0.5)])
    )
    exp = load_config(write_config(tmp_path, body, model=model))
    assert exp.scenario("s1").parameters["defence coefficient k"] == 2.0
    # A strictly positive range refuses zero.
    zero = write_config(tmp_path, '[parameters]\n"fatigue coefficient a" = 0\n', model=model, name="zero")
    with pytest.raises(ConfigError, match=r"'fatigue coefficient a' = 0 is outside the range \[0\.01, inf\]"):
        load_config(zero)


def test_sampled_bounds_outside_the_declared_range_are_refused(tmp_path: Path) -> None:
    study = (
        '[sensitivity]\nmethod = "latin"\nsamples = 8\n'
        '[[sensitivity.parameters]]\nname = "defence coefficient k"\nbounds = [0.5, {high}]\n'
        '[[sensitivity.outputs]]\nvariable = "arms X"\n'
    )
    model = _ranged_model(tmp_path)
    with pytest.raises(
        ConfigError,
        match=r"sensitivity\.parameters\[0\]\.bounds: sampled 'defence coefficient k' = 3 is outside the range "
        r"\[0, 2\]",
    ):
        load_config(write_config(tmp_path, study.format(high=3), model=model))
    assert load_config(write_config(tmp_path, study.format(high=2), model=model, name="ok")).sensitivity is not None


def test_check_refuses_a_constant_in_a_model_diagram_before_anything_runs(tmp_path: Path) -> None:
    # A constant is on no link of the diagram: drawing it failed after the runs (and on every
    # redraw by `armsdyn figures`); `armsdyn check` refuses it in the drawing's own words.
    body = GOOD + '\n[[figures]]\nkind = "model_diagram"\nvariables = ["arms X", "grievance g", "arms Y"]\n'
    proc = call_cli("check", write_config(tmp_path, body))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert re.search(
        r"exp\.toml: .*figures\[1\]\.variables: model diagram of .*richardson\.mdl: 'grievance g' cannot be drawn "
        r"\(a constant, time or a control variable is on no link of the diagram\); name stocks, flows and auxiliaries",
        proc.stderr,
    ), proc.stderr
    # The same figure of stocks, flows and auxiliaries is accepted.
    good = body.replace('"grievance g", ', '"reaction of X", ')
    assert call_cli("check", write_config(tmp_path, good)).returncode == 0

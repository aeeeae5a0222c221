"""Loop discovery: the causal graph, every elementary loop, link and loop polarity, the CLI."""

from __future__ import annotations

import doctest
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import xarray as xr

import armsdyn
from armsdyn import loop_table
from armsdyn.errors import ModelError, ResultsError
from armsdyn.feedback import (
    Loop,
    RunStates,
    documented_groups,
    elementary_cycles,
    find_loops,
    link_polarity,
    on_feedback_loops,
)
from armsdyn.loop_table import loops
from armsdyn.ltm import loop_dominance
from armsdyn.model import load_model
from armsdyn.pipeline import run_experiment
from tests.conftest import MODELS, ROOT, call_cli, write_config

HAND_MADE = """{UTF-8}
population= INTEG (births - deaths, 100)
	~	people
	~	|
births= population * birth rate
	~	people/Year
	~	|
deaths= population / lifetime
	~	people/Year
	~	|
birth rate= 0.03 * crowding
	~	1/Year
	~	|
crowding= 1 - population / capacity
	~	Dmnl
	~	|
capacity= 1000
	~	people
	~	|
lifetime= 70
	~	Year
	~	|
rumour= SMOOTH(population, 2)
	~	people
	~	|
INITIAL TIME = 0
	~	Year
	~	|
FINAL TIME = 10
	~	Year
	~	|
TIME STEP = 0.125
	~	Year
	~	|
SAVEPER = 1
	~	Year
	~	|
"""


def _table(loops: list) -> set[tuple[str, tuple[str, ...]]]:
    return {(loop.polarity, loop.variables) for loop in loops}


def test_richardson_has_the_action_reaction_loop_and_two_fatigue_loops() -> None:
    loops = find_loops(MODELS / "richardson.mdl")
    assert _table(loops) == {
        ("R", ("arms X", "reaction of Y", "arming rate Y", "arms Y", "reaction of X", "arming rate X")),
        ("B", ("arms X", "fatigue of X", "arming rate X")),
        ("B", ("arms Y", "fatigue of Y", "arming rate Y")),
    }
    assert [loop.length for loop in loops] == [3, 3, 6]
    assert all(loop.polarities == (1, -1, 1) for loop in loops if loop.polarity == "B")


def test_hand_made_model_has_its_known_loops(tmp_path: Path) -> None:
    path = tmp_path / "logistic.mdl"
    path.write_text(HAND_MADE, encoding="utf-8")
    assert _table(find_loops(path)) == {
        ("R", ("population", "births")),
        ("B", ("population", "deaths")),
        ("B", ("population", "crowding", "birth rate", "births")),
    }  # the SMOOTH reads population but feeds nothing back: no loop


def test_johnson_finds_every_elementary_cycle() -> None:
    graph = {"a": {"a", "b"}, "b": {"c", "a"}, "c": {"a", "b"}, "d": {"a"}}
    found = {tuple(c) for c in elementary_cycles(graph)}
    assert found == {("a",), ("a", "b"), ("b", "c"), ("a", "b", "c")}
    assert {tuple(c) for c in elementary_cycles(graph, max_length=2)} == {("a",), ("a", "b"), ("b", "c")}


@pytest.mark.slow
def test_knowledge_model_has_the_knowledge_engine_and_action_reaction_loops() -> None:
    # Element by element the action-reaction loop runs through 22 variables (each state's power
    # into the other's perceived threat, procurement and back).
    loops = find_loops(MODELS / "knowledge_engine.mdl", max_length=22, limit=200_000)
    assert ("R", ("general knowledge", "knowledge growth")) in _table(loops)
    assert not any(loop.polarity == "?" and not any(loop.mixed) for loop in loops)
    # The action-reaction loop: each state's procurement answers the threat the other's power poses.
    action_reaction = [
        loop
        for loop in loops
        if {"procurement[A]", "procurement[B]", "perceived threat[A]", "perceived threat[B]"} <= set(loop.variables)
        and not any("treaty" in v for v in loop.variables)
    ]
    assert action_reaction
    assert {loop.polarity for loop in action_reaction} == {"R"}


MIXED = """{UTF-8}
stock= INTEG (growth, 1)
	~	units
	~	|
growth= 0.1 * stock * (10 - stock)
	~	units/Year
	~	|
INITIAL TIME = 0
	~	Year
	~	|
FINAL TIME = 20
	~	Year
	~	|
TIME STEP = 0.125
	~	Year
	~	|
SAVEPER = 1
	~	Year
	~	|
"""


def test_a_link_whose_sign_changes_along_the_run_is_mixed(tmp_path: Path) -> None:
    # d growth / d stock = 0.1 (10 - 2 stock): positive until the stock passes 5, negative after.
    path = tmp_path / "mixed.mdl"
    path.write_text(MIXED, encoding="utf-8")
    (loop,) = find_loops(path)
    assert loop.polarity == "?"
    assert loop.mixed == (True, False)
    assert "[mixed: stock -> growth]" in loop.describe()
    # Over a run that stays below 5 the same link is positive throughout.
    model = load_model(path)
    early = RunStates(model, time=replace(model.time, final=2.0))
    assert early.values["stock"].max() < 5
    assert link_polarity(early, "stock", "growth") == (1, False)


@pytest.mark.slow
def test_knowledge_model_links_are_signed_over_the_run() -> None:
    # Signed at the initial state alone, most loops came out "?" (links inactive there: branches
    # of MIN/MAX that do not bind, treaty factors that are zero until the treaty).
    loops = find_loops(MODELS / "knowledge_engine.mdl", max_length=8)
    undetermined = [loop for loop in loops if loop.polarity == "?"]
    assert len(undetermined) <= 2
    for loop in undetermined:  # only a link whose sign really changes along the run
        assert any(loop.mixed)
    table = {loop.variables: loop for loop in loops}
    assert table[("hardware[A]", "decommissioning[A]")].polarity == "B"
    assert table[("effective power[B]", "modernisation[B]")].polarity == "B"


def test_cli_prints_the_loops() -> None:
    out = call_cli("loops", MODELS / "richardson.mdl")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["id", "pol", "len", "variables"]
    assert any(line.startswith("R1") and " 6 " in line and "reaction of Y" in line for line in lines)
    assert sum(line.startswith("B") for line in lines[1:]) == 2


@pytest.mark.parametrize(
    ("path", "through"),
    [
        (MODELS / "richardson.mdl", ["reaction of X"]),
        (MODELS / "richardson.mdl", ["fatigue of Y", "reaction of Y"]),
        (MODELS / "richardson_n.mdl", ["reaction"]),
    ],
    ids=["richardson-one", "richardson-two", "richardson_n-every-element"],
)
def test_loops_through_variables_are_the_loops_that_pass_through_them(path: Path, through: list[str]) -> None:
    every = find_loops(path)
    passing = find_loops(path, through=through)

    def on(loop: Loop) -> bool:
        return any(n in through or n.split("[", 1)[0] in through for n in loop.variables)

    expected = sorted((loop.variables, loop.polarities) for loop in every if on(loop))
    assert expected
    assert sorted((loop.variables, loop.polarities) for loop in passing) == expected
    assert len(expected) < len(every)


def test_loops_through_an_unknown_variable_are_refused() -> None:
    with pytest.raises(ModelError, match="no variable of the model's causal graph is called 'reaction of Z'"):
        find_loops(MODELS / "richardson.mdl", through=["reaction of Z"])


def test_cli_names_loops_after_a_configs_groups_and_keeps_loops_through_a_variable(tmp_path: Path) -> None:
    config = tmp_path / "groups.toml"
    config.write_text(
        f'[experiment]\nname = "g"\nmodel = "{(MODELS / "richardson.mdl").as_posix()}"\n'
        '[attribution]\nstocks = ["arms X"]\n'
        '[[attribution.groups]]\nname = "action-reaction"\nvariables = ["reaction of X", "reaction of Y"]\n',
        encoding="utf-8",
    )
    proc = call_cli("loops", MODELS / "richardson.mdl", "--groups", config)
    assert proc.returncode == 0, proc.stderr
    named = [line for line in proc.stdout.splitlines() if line.endswith("[action-reaction]")]
    assert len(named) == 1
    assert named[0].startswith("R1")
    proc = call_cli("loops", MODELS / "richardson.mdl", "--through", "fatigue of Y")
    assert proc.returncode == 0, proc.stderr
    assert [line.split()[0] for line in proc.stdout.splitlines()[1:]] == ["B1"]
    assert "fatigue of Y" in proc.stdout
    proc = call_cli("loops", MODELS / "richardson.mdl", "--through", "fatigue of Z")
    assert proc.returncode == 2
    assert "'fatigue of Z'" in proc.stderr


def test_loops_api_gives_a_models_loop_table_named_after_groups(tmp_path: Path) -> None:
    report = loops(MODELS / "richardson.mdl", groups={"action-reaction": ["reaction of X", "reaction of Y"]})
    assert report.scores is None
    table = report.table
    assert list(table.columns) == ["name", "variables", "length", "polarity"]
    assert table.index.name == "loop"
    assert dict(table["polarity"]) == {"B1": "B", "B2": "B", "R1": "R"}
    # The model file's documentation names both kinds of loop (Loop group: ...).
    assert dict(table["name"]) == {"B1": "fatigue", "B2": "fatigue", "R1": "action-reaction"}
    assert table.loc["R1", "variables"] == (
        "arms X", "reaction of Y", "arming rate Y", "arms Y", "reaction of X", "arming rate X"
    )  # fmt: skip
    assert list(table["length"]) == [len(v) for v in table["variables"]] == [3, 3, 6]
    # A config's [[attribution.groups]] name them the same way.
    config = write_config(
        tmp_path,
        '[attribution]\nstocks = ["arms X"]\n'
        '[[attribution.groups]]\nname = "restraint"\nvariables = ["fatigue of X"]\n',
    )
    assert dict(loops(load_model(MODELS / "richardson.mdl"), groups=config).table["name"]) == {
        "B1": "fatigue, restraint",
        "B2": "fatigue",
        "R1": "action-reaction",
    }


def test_loops_api_docstring_example_holds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    # The example calls the package's own armsdyn.loops: the export itself is under test.
    assert armsdyn.loops is loop_table.loops
    assert armsdyn.LoopReport is loop_table.LoopReport
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    (test,) = finder.find(loop_table.loops, "loops", globs={})
    runner.run(test)
    assert runner.summarize(verbose=False).failed == 0
    assert runner.summarize(verbose=False).attempted >= 4


def test_loops_api_reads_a_results_folders_loop_table_and_scores(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        "[time]\nfinal = 5\nstep = 0.125\nsaveper = 0.5\n"
        '[[scenarios]]\nname = "runaway"\n'
        'parameters = { "defence coefficient k" = 1.2, "defence coefficient l" = 1.2 }\n'
        '[[scenarios]]\nname = "stable"\n'
        'parameters = { "defence coefficient k" = 0.3, "defence coefficient l" = 0.3 }\n'
        "[loop_dominance]\n"
        '[attribution]\nstocks = ["arms X"]\n'
        '[[attribution.groups]]\nname = "reaction"\nvariables = ["reaction of X", "reaction of Y"]\n',
    )
    folder = run_experiment(config, out=tmp_path / "results")
    report = loops(folder)
    assert report.scores is not None
    # The table is the loops the run scored, named as the model's documentation and the run's own
    # attribution groups name them.
    expected = loops(MODELS / "richardson.mdl").table
    pd.testing.assert_frame_equal(report.table.drop(columns="name"), expected.drop(columns="name"))
    assert dict(report.table["name"]) == {"B1": "fatigue", "B2": "fatigue", "R1": "action-reaction, reaction"}
    with xr.open_dataset(folder / "loops.nc") as saved:
        xr.testing.assert_identical(report.scores, saved.load())
    assert report.scores["relative_loop_score"].dims == ("scenario", "loop", "time")
    runaway = abs(report.scores["relative_loop_score"].sel(scenario="runaway")).mean("time")
    assert runaway.idxmax().item() == "R1"
    # The Dataset itself (as loop_dominance returns it) gives the same table.
    pd.testing.assert_frame_equal(loops(report.scores).table, report.table)
    dominance = loop_dominance(MODELS / "richardson.mdl")
    pd.testing.assert_frame_equal(loops(dominance).table, expected)


def test_loops_api_refuses_what_holds_no_loop_analysis(tmp_path: Path) -> None:
    config = write_config(tmp_path, "[time]\nfinal = 1\n")
    folder = run_experiment(config, out=tmp_path / "results")
    with pytest.raises(ResultsError, match=r"results: no loops\.nc \(a run writes it when its config has a "):
        loops(folder)
    with xr.open_dataset(folder / "results.nc") as ds, pytest.raises(ResultsError, match="holds no loop analysis"):
        loops(ds.load())


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        (
            "richardson.mdl",
            {"action-reaction": ("reaction of X", "reaction of Y"), "fatigue": ("fatigue of X", "fatigue of Y")},
        ),
        (
            "richardson.xmile",
            {"action-reaction": ("reaction of X", "reaction of Y"), "fatigue": ("fatigue of X", "fatigue of Y")},
        ),
        ("richardson_n.mdl", {"action-reaction": ("reaction",), "fatigue": ("fatigue",)}),
        ("richardson_n_1909.mdl", {"action-reaction": ("reaction",), "fatigue": ("fatigue",)}),
        (
            "knowledge_engine.mdl",
            {
                "action-reaction": ("rival signal",),
                "military research push": ("frontier push",),
                "treaty": ("treaty in force",),
            },
        ),
        ("security_dilemma.mdl", {"action-reaction": ("rival forces", "threat faced")}),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_every_shipped_model_names_its_loop_groups_in_its_documentation(model: str, expected: dict) -> None:
    assert documented_groups(load_model(MODELS / model)) == expected
    # Each names variables on feedback loops, so a group names loops (not an exogenous driver).
    on_loops = on_feedback_loops(load_model(MODELS / model))
    assert {v for variables in expected.values() for v in variables} <= on_loops


def test_subscripted_loops_are_named_after_the_documented_group_of_any_element() -> None:
    found = find_loops(MODELS / "richardson_n.mdl")
    for loop in found:
        expected = {"reaction": "action-reaction", "fatigue": "fatigue"}
        assert loop.groups == tuple(
            sorted({expected[v.split("[")[0]] for v in loop.variables if v.split("[")[0] in expected})
        )
    assert {loop.groups for loop in found} == {("action-reaction",), ("fatigue",)}


def _documented(text: str, variable: str, doc: str) -> str:
    """The model text with `doc` as the documentation of `variable` (which has none)."""
    start = text.index(f"\n{variable}=") + 1
    blank = text.index("\t~\t|", text.index("\t~\t", start) + 3)
    return text[:blank] + f"\t~\t{doc}\n\t|" + text[blank + len("\t~\t|") :]


def test_documentation_names_loop_groups_in_a_sentence_of_its_own(tmp_path: Path) -> None:
    path = tmp_path / "logistic.mdl"
    text = _documented(HAND_MADE, "crowding", "How full the land is. LOOP GROUPS: carrying capacity, limits; more.")
    path.write_text(_documented(text, "deaths", "loop group:   mortality"), encoding="utf-8")
    model = load_model(path)
    assert documented_groups(model) == {
        "carrying capacity": ("crowding",),
        "limits": ("crowding",),
        "mortality": ("deaths",),
    }
    named = {loop.variables: loop.groups for loop in find_loops(model)}
    assert named == {
        ("population", "births"): (),
        ("population", "deaths"): ("mortality",),
        ("population", "crowding", "birth rate", "births"): ("carrying capacity", "limits"),
    }
    proc = call_cli("loops", path)
    assert proc.returncode == 0, proc.stderr
    assert [line.rsplit("  ", 1)[-1] for line in proc.stdout.splitlines()[1:] if line.endswith("]")] == [
        "[mortality]",
        "[carrying capacity, limits]",
    ]


@pytest.mark.parametrize(
    "doc",
    [
        "The loop group: e.g. fatigue.",
        "See the loop groups: below.",
        "Deaths per year (their loop group: mortality).",
        "Not a note; but loop groups: none here",
    ],
)
def test_loop_group_words_inside_a_sentence_are_prose_not_a_note(tmp_path: Path, doc: str) -> None:
    # Only a sentence that starts with "Loop group:" names a group: the words elsewhere in prose
    # once named groups "e" and "below".
    path = tmp_path / "logistic.mdl"
    path.write_text(_documented(HAND_MADE, "deaths", doc), encoding="utf-8")
    assert documented_groups(load_model(path)) == {}


@pytest.mark.parametrize(
    "note",
    [
        "Loop group: .",
        "Loop group: other.",
        "Loop group: guns+butter",
        "Loop groups: arms, , race.",
        # A name ends at the end of a sentence, so an abbreviation's full stop is not cut off
        # silently ("U.S. action" once named the group "U"): it is refused as a name with a '.'.
        "Loop group: U.S. action.",
        "Loop group: e.g. fatigue.",
    ],
)
def test_a_malformed_loop_group_note_is_refused_naming_the_variable(tmp_path: Path, note: str) -> None:
    path = tmp_path / "logistic.mdl"
    path.write_text(_documented(HAND_MADE, "deaths", note), encoding="utf-8")
    with pytest.raises(
        ModelError, match=r"logistic\.mdl: the documentation of 'deaths' names loop group .*'Loop group: NAME\.'"
    ):
        documented_groups(load_model(path))


@pytest.mark.parametrize("variable", ["lifetime", "rumour"])
def test_a_loop_group_note_on_a_variable_on_no_loop_is_refused(tmp_path: Path, variable: str) -> None:
    # A constant, or a variable only read off a loop, names no loop: the group would be empty, as
    # [[attribution.groups]] refuses such a variable.
    path = tmp_path / "logistic.mdl"
    path.write_text(_documented(HAND_MADE, variable, "Loop group: mortality."), encoding="utf-8")
    with pytest.raises(
        ModelError,
        match=rf"logistic\.mdl: the documentation of '{variable}' names loop group 'mortality', but '{variable}' "
        "lies on no feedback loop",
    ):
        documented_groups(load_model(path))


def test_the_cli_names_loops_from_the_models_documentation() -> None:
    proc = call_cli("loops", MODELS / "richardson.mdl")
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line for line in proc.stdout.splitlines()[1:]}
    assert rows["R1"].endswith("[action-reaction]")
    assert rows["B1"].endswith("[fatigue]")
    assert rows["B2"].endswith("[fatigue]")
    # loops.nc keeps the names: the Dataset of the scores has them per loop, as a coordinate named
    # apart from the attribution's loop_group dimension (a different thing: a config's groups).
    ds = loop_dominance(MODELS / "richardson.mdl")
    assert dict(zip(ds["loop"].values, ds["documented_groups"].values, strict=True)) == {
        "B1": "fatigue",
        "B2": "fatigue",
        "R1": "action-reaction",
    }
    assert "loop_groups" not in ds.coords


@pytest.mark.parametrize("written_as", ["documented_groups", "loop_groups", None])
def test_the_loop_table_reads_loops_nc_as_written_now_and_before(tmp_path: Path, written_as: str | None) -> None:
    # loops.nc of earlier runs has the documented groups as "loop_groups", or (older still) none.
    ds = loop_dominance(MODELS / "richardson.mdl")
    if written_as is None:
        ds = ds.drop_vars("documented_groups")
    elif written_as != "documented_groups":
        ds = ds.rename({"documented_groups": written_as})
    ds.to_netcdf(tmp_path / "loops.nc", engine="netcdf4")
    named = loops(tmp_path).table["name"].to_dict()
    expected = {"B1": "fatigue", "B2": "fatigue", "R1": "action-reaction"}
    assert named == (expected if written_as else dict.fromkeys(expected, ""))

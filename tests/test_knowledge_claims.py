"""The knowledge argument, tested by running the models over ranges of parameters.

Each test runs models/knowledge_engine.mdl with PySD over a grid of parameter
values and checks a property of the outcome. Nothing here is hard-coded into
the model: each test can fail if the model's structure or defaults change so
that the claim no longer holds. The ranges are stated and justified per test;
they are the plausible ranges given in docs/models.md, not tuned points.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
import xarray as xr

import armsdyn
from armsdyn.config import parse_config
from armsdyn.treaty import treaty_metrics
from tests.conftest import MODELS

KNOWLEDGE = MODELS / "knowledge_engine.mdl"
INF = float("inf")
PERSISTENT = {"knowledge half life A": INF, "knowledge half life B": INF}
SAVED = [
    "general knowledge",
    "hardware A",
    "hardware B",
    "effective power A",
    "effective power B",
    "insecurity A",
    "insecurity B",
    "treaty in force",
    "cumulative disarmament A",
    "cumulative disarmament B",
]


def run(
    scenarios: dict[str, dict[str, Any]], *, model: Any = KNOWLEDGE, step: float = 0.0625, final: float = 100
) -> xr.Dataset:
    """Run scenarios of a model through the normal config path, with PySD."""
    data = {
        "experiment": {"name": "claims", "model": str(model)},
        "time": {"initial": 0, "final": final, "step": step, "saveper": 0.5},
        "scenarios": [{"name": name, "parameters": params} for name, params in scenarios.items()],
        "output": {"variables": SAVED if model == KNOWLEDGE else ["arms X", "arms Y"]},
    }
    ds = armsdyn.run(parse_config(data))
    # Claim 6 (part): whatever the scenario, hardware stocks never go negative.
    if model == KNOWLEDGE:
        assert float(ds["hardware_a"].min()) >= 0.0
        assert float(ds["hardware_b"].min()) >= 0.0
    return ds


def at(ds: xr.Dataset, key: str, scenario: str, time: float) -> float:
    return float(ds[key].sel(scenario=scenario).sel(time=time))


# Long-run growth of scientific and technical output runs at roughly 1-4% a
# year; development cycles that set how fast military knowledge adopts the
# frontier run from about 5 to 15 years (docs/models.md, parameter table).
GROWTH_RATES = (0.01, 0.025, 0.04)
ADOPTION_TIMES = (5.0, 10.0, 15.0)


def test_independent_engine_power_rises_with_knowledge_without_action_reaction() -> None:
    """Claim 1: with no action-reaction and no treaty, effective power still rises as knowledge grows."""
    grid = list(itertools.product(GROWTH_RATES, ADOPTION_TIMES))
    common = {"action reaction switch": 0, "treaty switch": 0}
    scenarios = {
        f"g{g}_t{t}": {**common, "intrinsic knowledge growth rate": g, "adoption time A": t, "adoption time B": t}
        for g, t in grid
    }
    # Controls: the same without knowledge growth.
    scenarios |= {
        f"halted_t{t}": {**common, "knowledge growth switch": 0, "adoption time A": t, "adoption time B": t}
        for t in ADOPTION_TIMES
    }
    ds = run(scenarios)
    for g, t in grid:
        name = f"g{g}_t{t}"
        power = [at(ds, "effective_power_a", name, year) for year in (25, 50, 75, 100)]
        knowledge = [at(ds, "general_knowledge", name, year) for year in (25, 50, 75, 100)]
        assert np.all(np.diff(knowledge) > 0)
        assert np.all(np.diff(power) > 0), f"{name}: effective power did not rise with knowledge: {power}"
        assert power[-1] > 1.2 * power[0], name
        # Hardware alone is flat: the rise is quality, i.e. knowledge, not quantity.
        hardware = [at(ds, "hardware_a", name, year) for year in (50, 100)]
        assert abs(hardware[1] / hardware[0] - 1) < 0.05, name
    for t in ADOPTION_TIMES:
        halted = [at(ds, "effective_power_a", f"halted_t{t}", year) for year in (50, 100)]
        assert abs(halted[1] / halted[0] - 1) < 0.05, f"halted_t{t}: power changed without knowledge growth"


# Deep cuts (50-90%) as in the disarmament proposals the model speaks to, and
# procurement lead times of 2-5 years (docs/models.md).
FRACTIONS = (0.5, 0.7, 0.9)
PROCUREMENT_TIMES = (2.0, 3.0, 5.0)


@pytest.mark.slow
def test_knowledge_outlives_hardware_cuts_barely_dampen_insecurity() -> None:
    """Claim 2: with persistent knowledge, insecurity falls far less than hardware, and breakout is fast."""
    grid = list(itertools.product(FRACTIONS, PROCUREMENT_TIMES))
    ds = run(
        {
            f"f{f}_p{p}": {**PERSISTENT, "disarmament fraction": f, "procurement time A": p, "procurement time B": p}
            for f, p in grid
        }
    )
    table = treaty_metrics(ds)
    for f, p in grid:
        row = table.loc[f"f{f}_p{p}"]
        for s in "AB":
            assert row[f"hardware reduction {s}"] == pytest.approx(f, abs=0.01)
            # Well below 1; it may even be negative, when a cut state's insecurity
            # rises because it sees its own cuts at once and the other's only later.
            assert row[f"dampening efficiency {s}"] < 0.5, f"f{f}_p{p}: cuts dampened insecurity almost in proportion"
            assert row[f"breakout status {s}"] == "regained"
            assert row[f"breakout time {s}"] <= 2 * p, (
                f"f{f}_p{p}: breakout slower than a small multiple of procurement"
            )


# Half-lives from codified (infinite) through a retiring workforce's tacit
# skills (decades) to deliberate suppression (a few years); two cut depths and
# two perception delays (1-3 years) to show the ordering is not one point's.
HALF_LIVES = (INF, 30.0, 10.0, 3.0)


@pytest.mark.slow
@pytest.mark.parametrize(("fraction", "delay"), [(0.6, 1.0), (0.9, 3.0)])
def test_insecurity_reduction_grows_as_knowledge_half_life_shortens(fraction: float, delay: float) -> None:
    """Claim 3: the shorter knowledge lives, the more disarmament reduces insecurity."""
    common = {
        "disarmament fraction": fraction,
        "perception delay A": delay,
        "perception delay B": delay,
        "forgetting start time": 30,
    }
    ds = run({f"h{h}": {**common, "knowledge half life A": h, "knowledge half life B": h} for h in HALF_LIVES})
    table = treaty_metrics(ds)
    for s in "AB":
        reductions = [table.loc[f"h{h}", f"insecurity reduction {s}"] for h in HALF_LIVES]
        assert np.all(np.diff(reductions) > 0), f"not monotone in half-life: {reductions}"


# A lead in the speed of adopting the frontier (A faster by 0-12 years of
# development cycle), with the treaty lapsing after 10 or 30 years.
LEADS = (0.0, 2.0, 4.0, 6.0)


@pytest.mark.slow
@pytest.mark.parametrize("treaty_end", [40.0, 60.0])
def test_knowledge_lead_gives_a_mobilisation_edge_that_grows_with_the_lead(treaty_end: float) -> None:
    """Claim 4: the state with more knowledge rebuilds faster, the more so the larger its lead."""
    ds = run(
        {
            f"lead{lead}": {
                **PERSISTENT,
                "adoption time A": 10 - lead,
                "adoption time B": 10 + lead,
                "treaty end time": treaty_end,
            }
            for lead in LEADS
        }
    )
    table = treaty_metrics(ds)
    edges = [table.loc[f"lead{lead}", "mobilisation edge A over B"] for lead in LEADS]
    assert edges[0] == pytest.approx(0.0, abs=1e-9)  # symmetric states: no edge
    assert np.all(np.array(edges[1:]) > 0), edges
    assert np.all(np.diff(edges) > 0), f"edge does not grow with the lead: {edges}"


RICHARDSON_REDUCTION = {
    "knowledge growth switch": 0,
    "treaty switch": 0,
    **{
        f"{name} {s}": value
        for s in "AB"
        for name, value in {
            "initial military knowledge": 1,
            "initial fielded quality": 1,
            "knowledge half life": INF,
            "latent threat weight": 0,
            "perception delay": 0,
            "fatigue sensitivity": 0,
            "uncertainty sensitivity": 0,
            "mobilisable share": 1e6,
        }.items()
    },
}

# (k, l, a, b, g, h, x0, y0): a stable, an asymmetric stable and a runaway race,
# all with arms that stay positive (hardware cannot go negative, Richardson's arms can).
RICHARDSON_CASES = {
    "stable": (0.2, 0.2, 0.5, 0.5, 5.0, 5.0, 30.0, 30.0),
    "asymmetric": (0.3, 0.1, 0.4, 0.6, 8.0, 2.0, 20.0, 40.0),
    "runaway": (0.35, 0.3, 0.25, 0.3, 4.0, 3.0, 30.0, 25.0),
}


@pytest.mark.parametrize("case", RICHARDSON_CASES.values(), ids=RICHARDSON_CASES.keys())
def test_knowledge_model_reduces_to_richardson(case: tuple[float, ...]) -> None:
    """Claim 5: with knowledge fixed and no latent term, hardware follows Richardson's equations."""
    k, l_, a, b, g, h, x0, y0 = case
    knowledge = {
        **RICHARDSON_REDUCTION,
        "procurement time A": 1 / a,
        "security margin A": k / a,
        "grievance force A": g / a,
        "initial hardware A": x0,
        "procurement time B": 1 / b,
        "security margin B": l_ / b,
        "grievance force B": h / b,
        "initial hardware B": y0,
    }
    richardson = dict(zip(armsdyn.richardson.PARAMETER_NAMES.values(), case, strict=True))
    ours = run({"case": knowledge}, step=0.03125, final=40)
    ref = run({"case": richardson}, model=MODELS / "richardson.mdl", step=0.03125, final=40)
    for mine, theirs in (("hardware_a", "arms_x"), ("hardware_b", "arms_y")):
        np.testing.assert_allclose(ours[mine].values, ref[theirs].values, rtol=1e-9)


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9, 0.99])
def test_disarmament_removes_exactly_the_configured_fraction(fraction: float) -> None:
    """Claim 6: the treaty's outflow removes the configured share of the hardware held at its start."""
    ds = run({"cut": {**PERSISTENT, "disarmament fraction": fraction}}, final=40)
    start, period = 30.0, 5.0
    for s in "ab":
        removed = at(ds, f"cumulative_disarmament_{s}", "cut", start + period) - at(
            ds, f"cumulative_disarmament_{s}", "cut", start
        )
        assert removed / at(ds, f"hardware_{s}", "cut", start) == pytest.approx(fraction, rel=1e-9)
        # Nothing is removed outside the cut window.
        assert at(ds, f"cumulative_disarmament_{s}", "cut", start) == 0.0
        assert at(ds, f"cumulative_disarmament_{s}", "cut", 40.0) == at(
            ds, f"cumulative_disarmament_{s}", "cut", start + period
        )

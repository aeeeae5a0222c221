"""The power, peace and security postures as mechanism tests on models/security_dilemma.mdl.

Each posture is a small set of behaviour parameters (docs/models.md section 2).
Every claim below is checked with its mechanism on and again with it ablated,
over a grid of intrinsic security (resilience time) and perception delay, both
states alike: a claim that held equally without its mechanism would be built
into the model. Runs are real PySD runs through ``armsdyn.run(parse_config(...))``.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
import xarray as xr

import armsdyn
from armsdyn.config import parse_config
from armsdyn.model import load_model
from armsdyn.results import find_faults
from tests.conftest import CONFIGS, MODELS

MODEL = MODELS / "security_dilemma.mdl"
SAVED = [
    "hardware",
    "insecurity",
    "restraint",
    "relative lead",
    "perceived own forces",
    "cumulative cuts",
    "cumulative procurement",
    "cumulative removals",
    "burden share",
]
POLICY = 30.0  # restraint is adopted after the race has built up
# Intrinsic security as years of economic weight, and the perception delay: the
# assumptions the posture comparison is checked over (defaults 0.1 and 2).
RESILIENCE = (0.03, 0.1, 0.3)
DELAYS = (0.5, 2.0, 4.0)
GRID = list(itertools.product(RESILIENCE, DELAYS))


def step_at(t: float, value: float, before: float = 0.0) -> list[list[float]]:
    """A time-series override that steps from `before` to `value` within one time step at `t`."""
    return [[0.0, before], [t, before], [t + 0.0625, value]]


def both(name: str, value: Any) -> dict[str, Any]:
    """The same value of `name` for both states, element by element (so it overrides a single state's)."""
    return {f"{name}[A]": value, f"{name}[B]": value}


def power(s: str) -> dict[str, float]:
    return {f"cost of defeat[{s}]": 0.5, f"opportunism[{s}]": 2.0}


def restraint(s: str, *, reciprocal: bool = True) -> dict[str, Any]:
    return {f"restraint pace[{s}]": step_at(POLICY, 0.2), f"reciprocity[{s}]": 1.0 if reciprocal else 0.0}


SECURITY = {**both("reflexive weight", 0.5), **both("defensive share", 0.5)}
SECURITY_ABLATED = {**both("reflexive weight", 0.0), **both("defensive share", 0.0)}


def grid_point(resilience: float, delay: float) -> dict[str, float]:
    return {**both("resilience time", resilience), **both("perception delay", delay)}


def run(
    scenarios: dict[str, dict[str, Any]],
    *,
    step: float = 0.0625,
    saveper: float = 0.5,
    variables: list[str] | None = None,
) -> xr.Dataset:
    """Run scenarios of the security-dilemma model through the normal config path, with PySD."""
    names = list(scenarios)
    data = {
        "experiment": {"name": "postures", "model": str(MODEL)},
        "time": {"initial": 0, "final": 100, "step": step, "saveper": saveper},
        # Config scenario names must be file-name safe; the readable labels go back on after.
        "scenarios": [{"name": f"s{i}", "parameters": scenarios[n]} for i, n in enumerate(names)],
        "output": {"variables": variables or SAVED},
    }
    ds = armsdyn.run(parse_config(data))
    assert not find_faults(ds), find_faults(ds)
    return ds.assign_coords(scenario=names)


def final(ds: xr.Dataset, name: str, var: str, state: str) -> float:
    return float(ds[var].sel(scenario=name, state=state).isel(time=-1))


def mean_after_policy(ds: xr.Dataset, name: str, var: str, state: str) -> float:
    return float(ds[var].sel(scenario=name, state=state).sel(time=slice(POLICY, None)).mean())


def on_grid(cases: dict[str, dict[str, Any]]) -> xr.Dataset:
    """Every case at every grid point, labelled ``"case r d"``."""
    return run({f"{c} {r} {d}": {**grid_point(r, d), **p} for (r, d) in GRID for c, p in cases.items()})


@pytest.fixture(scope="module")
def grid() -> xr.Dataset:
    return on_grid(
        {
            "status_quo": {},
            "power": {**power("A"), **power("B")},
            "power_no_cost_of_defeat": {**power("A"), **power("B"), **both("cost of defeat", 0.0)},
            "power_B": power("B"),
            "power_B_no_opportunism": {**power("B"), "opportunism[B]": 0.0},
            "unilateral": {**restraint("A", reciprocal=False), **power("B")},
            "unilateral_no_opportunism": {**restraint("A", reciprocal=False), **power("B"), "opportunism[B]": 0.0},
            "reciprocal_vs_power": {**restraint("A"), **power("B")},
            "unforgiving_vs_power": {**restraint("A"), **power("B"), "forgiveness time[A]": float("inf")},
            "peace": {**restraint("A"), **restraint("B")},
            "peace_ablated": {**restraint("A"), **restraint("B"), **both("restraint pace", 0.0)},
            "security": SECURITY,
            "security_ablated": SECURITY_ABLATED,
            "reflexive_only": {**both("reflexive weight", 0.5)},
            "defensive_only": {**both("defensive share", 0.5)},
        }
    )


@pytest.mark.parametrize(("resilience", "delay"), GRID)
def test_power_posture_is_self_defeating_through_fear_of_defeat(
    grid: xr.Dataset, resilience: float, delay: float
) -> None:
    """Power: both states arm more and end *more* insecure; without a cost of defeat nothing changes.

    Opportunism is idle at parity (no lead to press), so in the symmetric race the
    self-defeat comes from the margin that fear of defeat raises with insecurity.
    """
    at = f" {resilience} {delay}"
    for s in "AB":
        assert final(grid, "power" + at, "hardware", s) > 1.5 * final(grid, "status_quo" + at, "hardware", s)
        assert final(grid, "power" + at, "insecurity", s) > final(grid, "status_quo" + at, "insecurity", s) + 0.05
        ablated = grid["insecurity"].sel(state=s).sel(scenario="power_no_cost_of_defeat" + at)
        base = grid["insecurity"].sel(state=s).sel(scenario="status_quo" + at)
        np.testing.assert_allclose(ablated, base, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("resilience", "delay"), GRID)
def test_security_posture_lowers_both_insecurities_and_not_when_ablated(
    grid: xr.Dataset, resilience: float, delay: float
) -> None:
    at = f" {resilience} {delay}"
    for s in "AB":
        base_final = final(grid, "status_quo" + at, "insecurity", s)
        base_mean = mean_after_policy(grid, "status_quo" + at, "insecurity", s)
        assert final(grid, "security" + at, "insecurity", s) < base_final - 0.1
        assert mean_after_policy(grid, "security" + at, "insecurity", s) < base_mean - 0.1
        # Each half of the posture lowers insecurity on its own: reflexive weighing
        # through the other state's reaction to lower arms, defensive forces directly.
        for half in ("reflexive_only", "defensive_only"):
            assert final(grid, half + at, "insecurity", s) < base_final - 0.02
        # With both levers at 0 the posture does nothing.
        assert final(grid, "security_ablated" + at, "insecurity", s) == pytest.approx(base_final, rel=1e-9)


@pytest.mark.parametrize(("resilience", "delay"), GRID)
def test_reciprocal_restraint_ends_with_lower_arms_and_the_cut_is_not_undone(
    grid: xr.Dataset, resilience: float, delay: float
) -> None:
    at = f" {resilience} {delay}"
    for s in "AB":
        peace = grid["hardware"].sel(state=s).sel(scenario="peace" + at)
        base = final(grid, "status_quo" + at, "hardware", s)
        assert float(peace.isel(time=-1)) < 0.5 * base
        # The goal falls with the cuts, so procurement does not rebuild what was cut.
        assert float(peace.sel(time=slice(POLICY + 10, None)).max()) < 0.6 * float(peace.sel(time=POLICY))
        assert final(grid, "peace" + at, "cumulative_cuts", s) > 10
        assert final(grid, "peace" + at, "insecurity", s) < final(grid, "status_quo" + at, "insecurity", s) - 0.1
        # Ablated (no restraint), the posture is the status quo.
        assert final(grid, "peace_ablated" + at, "hardware", s) == pytest.approx(base, rel=1e-9)
        assert final(grid, "peace_ablated" + at, "cumulative_cuts", s) == 0


@pytest.mark.parametrize(("resilience", "delay"), GRID)
def test_unilateral_restraint_is_exploited_by_an_opportunist(grid: xr.Dataset, resilience: float, delay: float) -> None:
    """A restrains itself whatever B does; B takes the power posture.

    Exploited: A ends more insecure than if it had not restrained itself against the
    same rival (and than in the status quo), while B presses a lead. Opportunism
    ablated, the penalty shrinks by at least 0.05 and, where intrinsic security is
    not tiny, restraint pays instead.
    """
    at = f" {resilience} {delay}"
    exploited = final(grid, "unilateral" + at, "insecurity", "A")
    assert exploited > final(grid, "power_B" + at, "insecurity", "A") + 0.03
    assert exploited > final(grid, "status_quo" + at, "insecurity", "A") + 0.1
    assert final(grid, "unilateral" + at, "relative_lead", "B") > 0.2

    penalty = exploited - final(grid, "power_B" + at, "insecurity", "A")
    ablated = final(grid, "unilateral_no_opportunism" + at, "insecurity", "A") - final(
        grid, "power_B_no_opportunism" + at, "insecurity", "A"
    )
    assert ablated < penalty - 0.05
    if resilience >= 0.1:
        assert ablated < 0


@pytest.mark.parametrize(("resilience", "delay"), GRID)
def test_reciprocity_delays_exploitation(grid: xr.Dataset, resilience: float, delay: float) -> None:
    """Against the same opportunist, restraint that stops when B's forces grow against A's costs A less.

    Reciprocity 0 is the ablation (the unconditional case). Forgiveness lets the
    benchmark drift up to B's higher level, so restraint creeps back and
    exploitation is delayed, not prevented; never forgiving, A ends as if it had
    not restrained itself at all.
    """
    at = f" {resilience} {delay}"
    for read in (final, mean_after_policy):
        reciprocal = read(grid, "reciprocal_vs_power" + at, "insecurity", "A")
        assert reciprocal < read(grid, "unilateral" + at, "insecurity", "A") - 0.02
    assert final(grid, "reciprocal_vs_power" + at, "restraint", "A") < final(grid, "unilateral" + at, "restraint", "A")
    assert final(grid, "unforgiving_vs_power" + at, "restraint", "A") < 0.01
    assert final(grid, "unforgiving_vs_power" + at, "insecurity", "A") == pytest.approx(
        final(grid, "power_B" + at, "insecurity", "A"), abs=0.01
    )


def test_no_result_is_an_arithmetic_echo_of_an_override(grid: xr.Dataset) -> None:
    """The posture results come out of the dynamics, not out of the values set.

    The old model's security insecurity was the override's threat factor times a
    force ratio, whatever the intrinsic security. Here each ratio to the status quo
    stays away from the override values that set the posture and changes with
    intrinsic security.
    """
    offensive_share = 1 - 0.5 * (1 - 0.3)  # defensive share 0.5, defensive threat weight 0.3
    echoes = {
        "security": (offensive_share, 1 - 0.5, offensive_share * (1 - 0.5)),  # reflexive weight 0.5
        "peace": (1 - 0.5, 0.2),  # restraint limit 0.5, restraint pace 0.2
        "power": (1.5, 2.0, 3.0),  # 1 + cost of defeat, opportunism, their product
    }
    for case, values in echoes.items():
        by_resilience = {}
        for resilience, delay in GRID:
            at = f" {resilience} {delay}"
            insecurity = final(grid, case + at, "insecurity", "A") / final(grid, "status_quo" + at, "insecurity", "A")
            hardware = final(grid, case + at, "hardware", "A") / final(grid, "status_quo" + at, "hardware", "A")
            for ratio in (insecurity, hardware):
                # An echo would match to rounding at every point; a near miss at one is a coincidence.
                assert min(abs(ratio - v) for v in values) > 0.005, (case, resilience, delay, ratio)
            by_resilience.setdefault(resilience, insecurity)
        spread = max(by_resilience.values()) - min(by_resilience.values())
        assert spread > 0.05, (case, by_resilience)


def test_the_perception_delay_shapes_the_transition() -> None:
    """Restraint is judged on perceived forces, so its path depends on the perception delay."""
    ds = run({f"peace {d}": {**restraint("A"), **restraint("B"), **both("perception delay", d)} for d in DELAYS})
    means = [mean_after_policy(ds, f"peace {d}", "insecurity", "A") for d in DELAYS]
    assert means == sorted(means)
    assert means[-1] - means[0] > 0.01


def test_posture_switch_at_a_policy_time() -> None:
    """Power to security at year 50 by time-series overrides: the power race before, the security outcome after."""
    ds = armsdyn.run(CONFIGS / "security_views.toml")
    switch, pw, sec = (ds.sel(scenario=n) for n in ("power_to_security", "power", "security"))
    before = slice(0, 50)
    for s in "AB":
        np.testing.assert_allclose(
            switch["insecurity"].sel(state=s).sel(time=before), pw["insecurity"].sel(state=s).sel(time=before)
        )
        assert float(switch["insecurity"].sel(state=s).isel(time=-1)) == pytest.approx(
            float(sec["insecurity"].sel(state=s).isel(time=-1)), rel=1e-3
        )
        assert (
            float(switch["insecurity"].sel(state=s).sel(time=60))
            < float(pw["insecurity"].sel(state=s).sel(time=60)) - 0.1
        )


def shipped_scenarios() -> dict[str, dict[str, Any]]:
    """The shipped config's scenarios as parameter tables (time series as lists)."""
    experiment = armsdyn.load_config(CONFIGS / "security_views.toml")
    return {
        sc.name: {k: [list(p) for p in v] if isinstance(v, tuple) else v for k, v in sc.parameters.items()}
        for sc in experiment.scenarios
    }


def _scaled(parameters: dict[str, Any], factor: float) -> dict[str, Any]:
    """Every capability unit multiplied by `factor`: forces and grievances up, unit costs down."""
    model = load_model(MODEL)
    out = dict(parameters)
    for name, by in (("initial hardware", factor), ("grievance force", factor), ("unit cost", 1 / factor)):
        var = model.variable(name)
        for element, default in zip(var.elements(), var.defaults, strict=True):
            out[var.element_name(element)] = default * by
    return out


def test_rescaling_every_capability_unit_leaves_insecurity_unchanged() -> None:
    cases = shipped_scenarios()
    ds = run({**cases, **{f"{n} x10": _scaled(p, 10.0) for n, p in cases.items()}})
    for name in cases:
        for s in "AB":
            for var in ("insecurity", "restraint", "relative_lead", "burden_share"):
                np.testing.assert_allclose(
                    ds[var].sel(scenario=f"{name} x10", state=s),
                    ds[var].sel(scenario=name, state=s),
                    rtol=1e-9,
                    atol=1e-12,
                    err_msg=f"{var}[{s}]",
                )
            np.testing.assert_allclose(
                ds["hardware"].sel(scenario=f"{name} x10", state=s),
                10 * ds["hardware"].sel(scenario=name, state=s),
                rtol=1e-9,
            )


EDGES = {
    "zero delays and times": {
        **both("perception delay", 0.0),
        **both("procurement time", 0.0),
        **both("budget adjustment time", 0.0),
        **both("relapse time", 0.0),
        **both("forgiveness time", 0.0),
        **both("breach tolerance", 0.0),
        **restraint("A"),
        **restraint("B"),
    },
    # With every lag at zero the race is a one-step map; the power posture's gain then
    # overshoots without bound (a property of the map, not a divisor), so only the
    # perception delay is zero here.
    "instant perception, power": {**both("perception delay", 0.0), **power("A"), **power("B")},
    "zero service life": {**both("service life", 0.0), **restraint("A"), **restraint("B")},
    "no intrinsic security": {**both("resilience time", 0.0), **restraint("A", reciprocal=False), **power("B")},
    "never forgiven": {**both("forgiveness time", float("inf")), **restraint("A"), **power("B")},
    "deepest restraint": {**both("restraint limit", 0.95), **both("restraint pace", 50.0), **both("reciprocity", 0.0)},
    "no economy": {**both("economy", 0.0), **power("A"), **power("B")},
}


def test_stocks_stay_in_range_and_the_cuts_balance() -> None:
    """Non-negative stocks, every declared range held, and hardware = initial + procured - removed - cut."""
    model = load_model(MODEL)
    every = [v.name for v in model.variables.values() if v.kind != "constant"]
    cases = shipped_scenarios()
    ds = run({**cases, **EDGES}, variables=every)  # run() asserts no fault: finite and in every declared range
    for name in ds["scenario"].values:
        x = ds.sel(scenario=name)
        for s in "AB":
            assert float(x["hardware"].sel(state=s).min()) >= 0
            assert float(x["restraint"].sel(state=s).max()) <= float(x["restraint_limit"].sel(state=s)) + 1e-12
            initial = float(x["hardware"].sel(state=s).isel(time=0))
            balance = (
                initial
                + x["cumulative_procurement"].sel(state=s)
                - x["cumulative_removals"].sel(state=s)
                - x["cumulative_cuts"].sel(state=s)
            )
            scale = max(1.0, float(x["cumulative_procurement"].sel(state=s).max()))
            np.testing.assert_allclose(x["hardware"].sel(state=s), balance, atol=1e-9 * scale, err_msg=str(name))
    assert float(ds["cumulative_cuts"].sel(state="A").sel(scenario="peace_unilateral_exploited").isel(time=-1)) > 10
    assert float(ds["cumulative_cuts"].sel(state="B").sel(scenario="peace_unilateral_exploited").isel(time=-1)) == 0


def test_a_zero_perception_delay_acts_within_one_time_step() -> None:
    ds = run({"instant": both("perception delay", 0.0)}, saveper=0.0625)
    x = ds.sel(scenario="instant")
    np.testing.assert_allclose(
        x["perceived_own_forces"].sel(state="A").values[1:], x["hardware"].sel(state="A").values[:-1], rtol=1e-12
    )

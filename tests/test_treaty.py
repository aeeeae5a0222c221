"""Treaty metrics from the model's event records: known answers by construction, and the shipped experiment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import armsdyn
from armsdyn.treaty import OPTIONAL, WORLD, columns, required_variables, treaty_metrics
from tests.conftest import CONFIGS, call_cli

T = np.arange(0.0, 20.5, 0.5)

# Final values of the records for two scenarios: "s" signed at 5, cut 60% of its
# hardware (100 -> 40) while insecurity fell 1.0 -> 0.85, ended at 12 and
# regained its power at 17; "t" never signed.
RECORDS = {
    "treaty signed": (1, 0),
    "treaty broken": (1, 0),
    "treaty signing time": (5, 0),
    "treaty breakdown time": (12, 0),
    "breakdown by insecurity": (1, 0),
    "hardware at signing": (100, 0),
    "hardware after cuts": (40, 0),
    "insecurity at signing": (1.0, 0),
    "insecurity after cuts": (0.85, 0),
    "power regained": (1, 0),
    "regain time": (17, 0),
    "mean insecurity over term": (0.6, 0.8),
    "cumulative civil output": (900, 1000),
}


def _dataset(records: dict[str, tuple[float, float]], states: tuple[str, ...] = ("A", "B")) -> xr.Dataset:
    """Records as series that reach their final value only at the last time (earlier values must not matter).

    The world records are scalars; the per-state ones are subscripted by a ``state`` range, as the
    knowledge model writes them, with the same value for every state.
    """
    data = {}
    for name, (s_value, t_value) in records.items():
        per_state = name not in WORLD and name != "breakdown by insecurity"
        series = np.zeros((2, T.size, len(states)) if per_state else (2, T.size))
        series[:, -1] = np.array((s_value, t_value)).reshape((2, 1) if per_state else (2,))
        dims = ("scenario", "time", "state") if per_state else ("scenario", "time")
        data[name.replace(" ", "_")] = xr.DataArray(series, dims=dims, attrs={"long_name": name})
    coords = {"scenario": ["s", "t"], "time": ("time", T, {"units": "Year"}), "state": list(states)}
    return xr.Dataset(data, coords=coords)


def test_metrics_follow_their_definitions_on_constructed_records() -> None:
    table = treaty_metrics(_dataset(RECORDS), baseline="t")
    row = table.loc["s"]
    assert row["treaty status"] == "defection"
    assert row["treaty start"] == 5.0
    assert row["breakdown time"] == 12.0
    assert row["hardware reduction A"] == pytest.approx(0.6)
    assert row["insecurity reduction A"] == pytest.approx(0.15)
    assert row["dampening efficiency A"] == pytest.approx(0.25)
    assert row["insecurity reduction vs baseline A"] == pytest.approx(0.25)
    assert row["foregone output A"] == pytest.approx(0.1)
    assert row["breakout time A"] == pytest.approx(5.0)
    assert row["breakout status A"] == "regained"
    assert row["mobilisation edge A over B"] == 0.0
    assert set(table.columns) <= set(columns(("A", "B")))
    assert table.loc["t", "treaty status"] == "no treaty"
    assert table.loc["t", "breakout status A"] == "no treaty"
    assert np.isnan(table.loc["t", "breakout time A"])


@pytest.mark.parametrize(
    ("changes", "status", "treaty_status"),
    [
        ({"treaty broken": (0, 0)}, "no breakdown", "in force to the end"),
        ({"power regained": (0, 0)}, "not regained", "defection"),
        ({"breakdown by insecurity": (0, 0)}, "regained", "expired"),
    ],
    ids=["no-breakdown", "never-regained", "expired"],
)
def test_undefined_values_are_explicit(changes: dict, status: str, treaty_status: str) -> None:
    row = treaty_metrics(_dataset({**RECORDS, **changes})).loc["s"]
    assert row["breakout status A"] == status
    assert row["treaty status"] == treaty_status
    assert np.isnan(row["breakout time A"]) == (status != "regained")


def test_each_scenario_is_compared_with_its_own_baseline() -> None:
    ds = _dataset(RECORDS)
    table = treaty_metrics(ds, baseline="s", baselines={"s": "t"})
    assert table.loc["s", "insecurity reduction vs baseline A"] == pytest.approx(0.25)
    assert table.loc["t", "insecurity reduction vs baseline A"] == pytest.approx(1 - 0.8 / 0.6)
    with pytest.raises(KeyError, match="baseline scenario 'nope' is not among the scenarios"):
        treaty_metrics(ds, baselines={"s": "nope"})
    with pytest.raises(KeyError, match="treaty metrics need these variables saved: treaty signed"):
        treaty_metrics(ds.drop_vars("treaty_signed"))


def test_main_experiment_runs_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "dvk"
    proc = call_cli("run", CONFIGS / "disarmament_vs_knowledge.toml", "--out", out)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(out / "metrics.csv", index_col="scenario")
    assert table.loc["baseline", "treaty status"] == "no treaty"
    assert table.loc["baseline", "breakout status A"] == "no treaty"
    assert table.loc["disarm_knowledge_persists", "treaty status"] == "expired"
    assert table.loc["disarm_knowledge_persists", "breakdown time"] == 60
    assert table.loc["arcadian_cheating_B", "treaty status"] == "cheating detected"
    # The arcadian levers cost output; the plain treaty does not.
    assert table.loc["arcadian", "foregone output A"] > 0.3
    assert abs(table.loc["disarm_knowledge_persists", "foregone output A"]) < 0.05
    for stem in ("scenario_panels", "breakout_times", "insecurity_reduction_vs_half_life"):
        assert (out / "figures" / f"{stem}.pdf").is_file()
    with xr.open_dataset(out / "results.nc") as ds:
        # The table is reproducible from the saved results alone.
        again = armsdyn.compute_metrics(ds.load())
    pd.testing.assert_series_equal(
        again["breakout time A"], table["breakout time A"], check_names=False, check_exact=False, rtol=1e-12
    )


def test_the_main_config_saves_every_record_the_metrics_read() -> None:
    experiment = armsdyn.load_config(CONFIGS / "disarmament_vs_knowledge.toml")
    saved = set(experiment.variables)
    assert set(required_variables()) <= saved
    assert {v for v in OPTIONAL if v in experiment.model.variables} <= saved


def test_security_views_experiment_runs() -> None:
    ds = armsdyn.run(CONFIGS / "security_views.toml")
    assert list(ds["scenario"].values) == [
        "status_quo",
        "power",
        "power_B",
        "peace_reciprocal",
        "peace_unilateral_exploited",
        "peace_reciprocal_vs_power",
        "security",
        "power_to_security",
    ]
    assert list(ds["hardware"].dims) == ["scenario", "time", "state"]
    assert float(ds["hardware"].min()) >= 0


def test_a_third_state_adds_its_columns_and_its_pairs() -> None:
    """The metrics follow the model's state range: three states give three of each column and three edges."""
    table = treaty_metrics(_dataset(RECORDS, states=("A", "B", "C")), baseline="t")
    assert table.loc["s", "breakout time C"] == pytest.approx(5.0)
    assert table.loc["s", "dampening efficiency C"] == pytest.approx(0.25)
    edges = [c for c in table.columns if c.startswith("mobilisation edge")]
    assert edges == ["mobilisation edge A over B", "mobilisation edge A over C", "mobilisation edge B over C"]
    assert set(table.columns) <= set(columns(("A", "B", "C")))

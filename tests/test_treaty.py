"""Treaty metrics on series whose answers are known by construction, and on the shipped experiment."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import armsdyn
from armsdyn.treaty import COLUMNS, treaty_metrics
from tests.conftest import CONFIGS, run_cli

T = np.arange(0.0, 20.5, 0.5)


def _dataset(treaty: np.ndarray, hardware: np.ndarray, insecurity: np.ndarray, power: np.ndarray) -> xr.Dataset:
    """Two scenarios ("s", a copy "t"), both states alike, from given series."""

    def var(values: np.ndarray, name: str) -> xr.DataArray:
        return xr.DataArray(np.vstack([values, values]), dims=("scenario", "time"), attrs={"long_name": name})

    data = {"treaty_in_force": var(treaty, "treaty in force")}
    for s in "AB":
        data[f"hardware_{s}"] = var(hardware, f"hardware {s}")
        data[f"insecurity_{s}"] = var(insecurity, f"insecurity {s}")
        data[f"effective_power_{s}"] = var(power, f"effective power {s}")
        data[f"arms_burden_{s}"] = var(np.full_like(T, 2.0), f"arms burden {s}")
    return xr.Dataset(data, coords={"scenario": ["s", "t"], "time": ("time", T, {"units": "Year"})})


def test_metrics_follow_their_definitions_on_constructed_series() -> None:
    treaty = ((T >= 5) & (T < 12)).astype(float)  # in force from 5, breaks down at 12
    hardware = np.where(T < 5, 100.0, np.where(T < 8, 100 - 20 * (T - 5), 40.0))  # cut 60% by t = 8
    insecurity = np.where(T < 5, 1.0, np.where(T < 8, 1.0 - 0.05 * (T - 5), 0.85))  # falls 15%
    # Power 100 before, 40 during; from the breakdown it climbs 10 per year: regains 90 at 12 + 5.
    power = np.where(T < 5, 100.0, np.where(T < 12, 40.0, np.minimum(40 + 10 * (T - 12), 100.0)))
    row = treaty_metrics(_dataset(treaty, hardware, insecurity, power)).loc["s"]
    assert row["treaty status"] == "broke down"
    assert row["treaty start"] == 5.0
    assert row["breakdown time"] == 12.0
    assert row["hardware reduction A"] == pytest.approx(0.6)
    assert row["insecurity before A"] == 1.0
    assert row["insecurity after A"] == pytest.approx(0.85)
    assert row["insecurity reduction A"] == pytest.approx(0.15)
    assert row["dampening efficiency A"] == pytest.approx(0.25)
    assert row["breakout time A"] == pytest.approx(5.0)
    assert row["breakout status A"] == "regained"
    assert row["mobilisation edge A over B"] == 0.0
    assert row["peak insecurity A"] == 1.0
    assert row["cumulative arms burden A"] == pytest.approx(2.0 * 20.0)
    assert set(treaty_metrics(_dataset(treaty, hardware, insecurity, power)).columns) <= set(COLUMNS)


def test_breakout_is_interpolated_between_saved_times() -> None:
    treaty = ((T >= 5) & (T < 12)).astype(float)
    hardware = np.where((T >= 5) & (T < 12), 10.0, 100.0)
    power = np.where(T < 5, 100.0, np.where(T < 12, 10.0, 10 + 30 * (T - 12)))  # reaches 90 at 12 + 80/30
    row = treaty_metrics(_dataset(treaty, hardware, np.ones_like(T), power)).loc["s"]
    assert row["breakout time A"] == pytest.approx(80 / 30)


@pytest.mark.parametrize(
    ("treaty", "power", "status", "treaty_status"),
    [
        (np.zeros_like(T), np.full_like(T, 100.0), "no treaty", "no treaty"),
        ((T >= 5).astype(float), np.where(T < 5, 100.0, 40.0), "no breakdown", "in force to the end"),
        (((T >= 5) & (T < 12)).astype(float), np.where(T < 5, 100.0, 40.0), "not regained", "broke down"),
    ],
    ids=["no-treaty", "no-breakdown", "never-regained"],
)
def test_undefined_values_are_explicit(treaty: np.ndarray, power: np.ndarray, status: str, treaty_status: str) -> None:
    row = treaty_metrics(_dataset(treaty, np.full_like(T, 100.0), np.ones_like(T), power)).loc["s"]
    assert row["breakout status A"] == status
    assert row["treaty status"] == treaty_status
    assert np.isnan(row["breakout time A"])
    assert np.isnan(row["mobilisation edge A over B"])


def test_baseline_comparison_and_missing_baseline() -> None:
    treaty = ((T >= 5) & (T < 12)).astype(float)
    ds = _dataset(treaty, np.full_like(T, 100.0), np.full_like(T, 0.8), np.full_like(T, 100.0))
    ds["insecurity_A"].loc[{"scenario": "t"}] = 1.0  # "t" plays a baseline at insecurity 1
    table = treaty_metrics(ds, baseline="t")
    assert table.loc["s", "insecurity reduction vs baseline A"] == pytest.approx(0.2)
    with pytest.raises(KeyError, match="baseline scenario 'nope' is not among the scenarios"):
        treaty_metrics(ds, baseline="nope")


def test_main_experiment_runs_end_to_end(tmp_path: pytest.TempPathFactory) -> None:
    out = tmp_path / "dvk"
    proc = run_cli("run", CONFIGS / "disarmament_vs_knowledge.toml", "--out", out)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(out / "metrics.csv", index_col="scenario")
    assert table.loc["baseline", "treaty status"] == "no treaty"
    assert table.loc["baseline", "breakout status A"] == "no treaty"
    assert table.loc["disarm_knowledge_persists", "treaty status"] == "broke down"
    for stem in ("scenario_panels", "breakout_times", "insecurity_reduction_vs_half_life"):
        assert (out / "figures" / f"{stem}.pdf").is_file()
        assert (out / "figures" / f"{stem}.png").is_file()
    with xr.open_dataset(out / "results.nc") as ds:
        assert ds.attrs["metrics_baseline"] == "baseline"
        # The table is reproducible from the saved results alone.
        again = armsdyn.compute_metrics(ds.load())
    pd.testing.assert_series_equal(
        again["breakout time A"], table["breakout time A"], check_names=False, check_exact=False, rtol=1e-12
    )


def test_security_views_experiment_runs() -> None:
    ds = armsdyn.run(CONFIGS / "security_views.toml")
    assert list(ds["scenario"].values) == ["status_quo", "power", "peace_agreed", "peace_unilateral", "security"]
    assert float(ds["hardware_a"].min()) >= 0

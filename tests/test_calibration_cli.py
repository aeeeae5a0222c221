"""`armsdyn calibrate` and `armsdyn analyse` as a user runs them.

In-process (:func:`tests.conftest.call_cli`, the same :func:`armsdyn.cli.main` the entry point calls):
the process is not the point here, the printed verdicts and written folders are.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from armsdyn import Richardson
from tests.conftest import CONFIGS, call_cli


def test_calibrate_richardson_1909_prints_and_writes_kappa_and_c(tmp_path: Path) -> None:
    out = tmp_path / "cal"
    proc = call_cli("calibrate", CONFIGS / "calibrate_richardson_1909.toml", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "kappa" in proc.stdout
    assert (out / "manifest.json").is_file()
    estimates = pd.read_csv(out / "estimates.csv", index_col=0)
    assert round(float(estimates.loc["kappa", "estimate"]), 2) == 0.73
    again = call_cli("calibrate", CONFIGS / "calibrate_richardson_1909.toml", "--out", out)
    assert again.returncode == 2
    assert "already exists" in again.stderr


def test_calibrate_bad_config_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text((CONFIGS / "calibrate_richardson_1909.toml").read_text().replace("[calibration]", "[calibratio]", 1))
    proc = call_cli("calibrate", bad, "--out", tmp_path / "out")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_analyse_agrees_with_the_closed_form(tmp_path: Path) -> None:
    csv = tmp_path / "eq.csv"
    proc = call_cli("analyse", CONFIGS / "richardson.toml", "--out", csv)
    assert proc.returncode == 0, proc.stderr
    table = pd.read_csv(csv)
    row = table[table["scenario"] == "asymmetric"].iloc[0]
    expected = Richardson(0.9, 0.3, 0.6, 1.2, 1.5, 0.5).equilibrium()
    assert row["arms X"] == pytest.approx(expected[0], rel=1e-6)
    assert row["arms Y"] == pytest.approx(expected[1], rel=1e-6)
    assert "stable" in proc.stdout


@pytest.mark.slow
def test_calibrate_bayes_prints_the_posterior_verdict(tmp_path: Path) -> None:
    pytest.importorskip("emcee")
    config = tmp_path / "b.toml"
    text = (CONFIGS / "calibrate_richardson_1909.toml").read_text()
    # Richardson's 1909-1913 budgets, fitted by the trajectory posterior: reactions and grievances free,
    # fatigue at Richardson's 0.17, each alliance starting from its 1909 budget.
    head = text.replace('"../models/', f'"{(CONFIGS.parent / "models").as_posix()}/').split("[calibration]")[0]
    config.write_text(
        head
        + '[parameters]\n"fatigue coefficient a" = 0.17\n"fatigue coefficient b" = 0.17\n'
        + '[calibration]\nmethod = "bayes"\nsteps = 300\nburn = 150\nseed = 1\n'
        + '[calibration.initial_values]\n"arms X" = "observed"\n"arms Y" = "observed"\n'
        + "[calibration.parameters]\n"
        + '"defence coefficient k" = { initial = 0.9, bounds = [0, 3] }\n'
        + '"defence coefficient l" = { initial = 0.9, bounds = [0, 3] }\n'
        + '"grievance g" = { initial = -30, bounds = [-200, 200] }\n'
        + '"grievance h" = { initial = -30, bounds = [-200, 200] }\n',
        encoding="utf-8",
    )
    out = tmp_path / "out"
    proc = call_cli("calibrate", config, "--out", out)
    assert proc.returncode == 0, proc.stderr
    line = next(line for line in proc.stdout.splitlines() if line.startswith("posterior: "))
    assert "walkers (emcee), max R-hat" in line
    assert "P(stable) = " in line
    assert any(line.startswith("stability: ") for line in proc.stdout.splitlines())
    draws = pd.read_csv(out / "posterior.csv")
    assert {"defence coefficient k", "stable", "log_posterior"} <= set(draws.columns)
    assert (out / "figures" / "posterior_predictive.svg").is_file()


def test_check_names_what_a_regression_calibration_estimates() -> None:
    """A lagged fit estimates the model's terms from the data: check says so instead of an empty list."""
    proc = call_cli("check", CONFIGS / "calibrate_usa_russia_china.toml")
    assert proc.returncode == 0, proc.stderr
    assert "lagged fit of the model's reaction, fatigue and grievance terms to 31 observations" in proc.stdout

"""Calibration with a fixed time series: fitted on the compiled engine, the same as with PySD."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from armsdyn.calibration import calibrate, load_calibration, write_calibration
from armsdyn.ensemble import FallbackWarning
from armsdyn.errors import ConfigError
from armsdyn.model import TimeSettings, load_model
from tests.conftest import MODELS

#: X's grievance rises for ten years and falls back (a crisis), given as a series; the rest is fitted.
GRIEVANCE_G = ((0.0, 0.5), (10.0, 3.0), (20.0, 0.5))
TRUTH = {
    "defence coefficient k": 0.15,
    "defence coefficient l": 0.1,
    "fatigue coefficient a": 0.3,
    "fatigue coefficient b": 0.25,
    "grievance h": 0.5,
}
START = {"initial arms X": 1.0, "initial arms Y": 2.0}
TIME = TimeSettings(0, 30, 0.0625, 1.0, "Year")


def _config(tmp_path: Path, engine: str | None) -> Path:
    """A trajectory calibration of data the model (PySD) generates with the series, plus noise."""
    model = load_model(MODELS / "richardson.mdl")
    times, values = zip(*GRIEVANCE_G, strict=True)
    given = {**TRUTH, **START, "grievance g": pd.Series(values, index=times)}
    clean = model.simulate(given, TIME, ["arms X", "arms Y"])
    rng = np.random.default_rng(16)
    noisy = {c: clean[v] + rng.normal(0, 0.05, TIME.save_times().size) for c, v in (("x", "arms X"), ("y", "arms Y"))}
    data = pd.DataFrame(noisy, index=pd.Index(TIME.save_times(), name="year"))
    data.to_csv(tmp_path / "d.csv")
    series = ", ".join(f"[{t:g}, {v:g}]" for t, v in GRIEVANCE_G)
    fitted = "\n".join(f'"{n}" = {{ initial = 0.5, bounds = [0, 5] }}' for n in TRUTH)
    path = tmp_path / f"series_{engine or 'default'}.toml"
    path.write_text(
        f'[experiment]\nname = "series"\nmodel = "{(MODELS / "richardson.mdl").as_posix()}"\n'
        "[time]\ninitial = 0\nfinal = 30\nstep = 0.0625\nsaveper = 1\n"
        f'[parameters]\n"grievance g" = [{series}]\n"initial arms X" = 1.0\n"initial arms Y" = 2.0\n'
        '[data]\nfile = "d.csv"\nunits = "u"\ncolumns = { x = "arms X", y = "arms Y" }\n'
        '[calibration]\nmethod = "trajectory"\n' + (f'engine = "{engine}"\n' if engine else "") +
        f"[calibration.parameters]\n{fitted}\n",
        encoding="utf-8",
    )  # fmt: skip
    return path


def test_a_fixed_time_series_is_fitted_on_the_compiled_engine_as_with_pysd(tmp_path: Path) -> None:
    default = load_calibration(_config(tmp_path, None))
    assert default.engine == "compiled"
    compiled = calibrate(default)
    pysd = calibrate(_config(tmp_path, "pysd"))
    # The compiled engine ran every simulation of the fit (no fallback to PySD).
    assert compiled.summary["engine"] == "compiled"
    assert compiled.summary["backend"] in ("numba", "numpy")
    assert pysd.summary["engine"] == "pysd"
    assert compiled.summary["converged"]
    assert pysd.summary["converged"]
    est, ref = compiled.estimates, pysd.estimates
    np.testing.assert_allclose(est["estimate"], ref["estimate"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(est["std_error"], ref["std_error"], rtol=1e-3)
    np.testing.assert_allclose(compiled.fit["fitted"], pysd.fit["fitted"], rtol=1e-6)
    # And the fit finds the race that made the data, with the grievance's crisis read from the series.
    for name, true in TRUTH.items():
        assert abs(est.loc[name, "estimate"] - true) < 4 * est.loc[name, "std_error"], name
    assert compiled.summary["r2"] > 0.999


def test_a_fixed_time_series_posterior_runs_on_the_compiled_engine(tmp_path: Path) -> None:
    pytest.importorskip("emcee")
    path = _config(tmp_path, None)
    text = path.read_text().replace('method = "trajectory"', 'method = "bayes"\nsteps = 40\nburn = 20\nseed = 3')
    path.write_text(text)
    result = calibrate(path)
    # The posterior's own simulator, which the least-squares fit's summary["engine"] does not speak for.
    assert result.summary["posterior"]["engine"] == "compiled"
    assert result.summary["posterior"]["backend"] in ("numba", "numpy")
    assert result.summary["engine"] == "compiled"
    assert result.posterior is not None
    # Every walker sits near the truth the series-driven data came from (40 steps: no convergence claimed).
    draws = result.posterior[list(TRUTH)]
    assert np.all(np.abs(draws.median() - pd.Series(TRUTH)) < 0.1)


GROWTH = (
    "{UTF-8}\nstock = INTEG(rate, 1) ~~|\nrate = k * stock ~~|\nk = 0.3 ~~|\nhorizon = 5 ~~|\n"
    "INITIAL TIME = 0 ~~|\nFINAL TIME = horizon * 2 ~~|\nTIME STEP = 0.5 ~~|\nSAVEPER = 1 ~~|\n"
)


def _growth_config(tmp_path: Path, method: str) -> Path:
    """A calibration of GROWTH's k, a model the compiled engine cannot compile, to its own noisy run."""
    model_path = tmp_path / "growth.mdl"
    model_path.write_text(GROWTH, encoding="utf-8")
    times = TimeSettings(0, 10, 0.5, 1.0, "")
    clean = load_model(model_path).simulate({"k": 0.1}, times, ["stock"])["stock"]
    noisy = clean * (1 + np.random.default_rng(5).normal(0, 0.01, clean.size))
    pd.DataFrame({"s": noisy}, index=pd.Index(times.save_times(), name="t")).to_csv(tmp_path / "d.csv")
    path = tmp_path / "growth.toml"
    path.write_text(
        f'[experiment]\nname = "growth"\nmodel = "{model_path.as_posix()}"\n'
        '[data]\nfile = "d.csv"\ntime = "t"\nunits = "u"\ncolumns = { s = "stock" }\n'
        f'[calibration]\nmethod = "{method}"\n'
        '[calibration.parameters]\n"k" = { initial = 0.3, bounds = [0, 1] }\n',
        encoding="utf-8",
    )
    return path


def test_a_model_the_compiled_engine_cannot_compile_is_fitted_with_pysd(tmp_path: Path) -> None:
    # A FINAL TIME defined by a model variable is beyond the compiled engine: the fit warns once and uses PySD.
    path = _growth_config(tmp_path, "trajectory")
    with pytest.warns(FallbackWarning, match="FINAL TIME.*the calibration simulates with PySD instead"):
        result = calibrate(path)
    assert result.summary["engine"] == "pysd"
    assert result.estimates.loc["k", "estimate"] == pytest.approx(0.1, abs=0.005)
    # The manifest records the engine that ran, not the one the config asked for (the compiled default).
    folder = write_calibration(result, tmp_path / "out")
    manifest = json.loads((folder / "manifest.json").read_text())["calibration"]
    assert manifest["engine"] == "pysd"
    assert manifest["posterior_engine"] is None
    assert json.loads((folder / "summary.json").read_text())["engine"] == "pysd"


def test_a_posterior_of_a_model_the_compiled_engine_cannot_compile_is_refused(tmp_path: Path) -> None:
    # PySD would run emcee's 2000 steps x 32 walkers one at a time: a hang, not a fallback. Refused at
    # once, before the least-squares fit, naming the construct and what to do instead.
    pytest.importorskip("emcee")
    path = _growth_config(tmp_path, "bayes")
    with pytest.raises(ConfigError) as caught:
        calibrate(path)
    message = str(caught.value)
    assert message.startswith(f'{path}: calibration.method = "bayes" needs the compiled engine')
    assert "growth.mdl" in message
    assert "FINAL TIME" in message
    assert "64,000 runs (2000 steps x 32 walkers)" in message
    assert 'use method = "trajectory"' in message

"""Calibration: Richardson's own estimator, trajectory matching with honest intervals, configs end to end."""

from __future__ import annotations

import json
import math
import sys
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.linalg import block_diag
from scipy.stats import t as student_t
from statsmodels.tsa.vector_ar.vecm import coint_johansen

from armsdyn.calibration import (
    FittedParameter,
    calibrate,
    calibrate_many,
    diagnose,
    fit_trajectories,
    format_summary,
    identification_note,
    load_calibration,
    near_bound,
    parse_calibration,
    richardson_combined_fit,
    richardson_stability,
    stability_verdict,
    write_calibration,
)
from armsdyn.data import load_csv
from armsdyn.errors import ConfigError, ResultsError
from armsdyn.model import TimeSettings, load_model
from armsdyn.richardson import Richardson
from tests.conftest import CONFIGS, MODELS, SHARED

RICHARDSON_TABLE = SHARED / "data" / "richardson_1909_1913.csv"

#: A stable Richardson race with a slow approach, so a 30-year record identifies all six coefficients.
TRUTH = {
    "defence coefficient k": 0.15,
    "defence coefficient l": 0.1,
    "fatigue coefficient a": 0.3,
    "fatigue coefficient b": 0.25,
    "grievance g": 1.0,
    "grievance h": 0.5,
}
START = {"initial arms X": 1.0, "initial arms Y": 2.0}
TIME = TimeSettings(0, 30, 0.0625, 1.0, "Year")
GUESSES = [
    FittedParameter(name, 1.0 if "grievance" in name else 0.5, (0, 5) if "coefficient" in name else (-20, 20))
    for name in TRUTH
]


def _synthetic(rng: np.random.Generator, sigma: float) -> pd.DataFrame:
    """Observations the model itself generates (PySD), with Gaussian noise."""
    clean = load_model(MODELS / "richardson.mdl").simulate({**TRUTH, **START}, TIME, ["arms X", "arms Y"])
    return pd.DataFrame({k: v + rng.normal(0, sigma, v.size) for k, v in clean.items()}, index=TIME.save_times())


def test_richardson_estimator_gives_the_published_result() -> None:
    if not RICHARDSON_TABLE.is_file():
        pytest.skip(f"shared reference data {RICHARDSON_TABLE} is not on this machine")
    table = load_csv(RICHARDSON_TABLE)
    totals = table.sum(axis=1)
    kappa, c, details = richardson_combined_fit(totals.index, totals.to_numpy())
    # Richardson (1960), as in Braun (1993) section 4.5: kappa ~ 0.73 per year, c ~ 194 million pounds.
    assert round(kappa, 2) == 0.73
    assert abs(c - 194) < 1.0
    np.testing.assert_allclose(details["increments"], [5.6, 10.1, 23.8, 50.3], atol=1e-9)
    np.testing.assert_allclose(details["means"], [202.0, 209.85, 226.8, 263.85], atol=1e-9)
    assert details["r2"] > 0.99
    assert details["kappa_ci"][0] < kappa < details["kappa_ci"][1]


def test_richardson_estimator_is_exact_on_its_own_model() -> None:
    # Increments on means are exact for the Euler-like difference kappa*(mean - c) recursion.
    kappa, c = 0.5, 100.0
    totals = [150.0]
    for _ in range(5):
        # Solve T1 - T0 = kappa * ((T0 + T1)/2 - c) for T1.
        t0 = totals[-1]
        totals.append((t0 * (1 + kappa / 2) - kappa * c) / (1 - kappa / 2))
    k_hat, c_hat, _ = richardson_combined_fit(range(1900, 1906), totals)
    assert k_hat == pytest.approx(kappa)
    assert c_hat == pytest.approx(c)


@pytest.mark.parametrize(
    ("years", "totals", "expected"),
    [([1, 2], [1, 2], "at least three"), ([1, 3, 2], [1, 2, 3], "increase strictly"), ([1, 2, 3], [1, 2], "same")],
)
def test_richardson_estimator_errors(years: list, totals: list, expected: str) -> None:
    with pytest.raises(ValueError, match=expected):
        richardson_combined_fit(years, totals)


def test_richardson_1909_config_end_to_end(tmp_path: Path) -> None:
    result = calibrate(CONFIGS / "calibrate_richardson_1909.toml")
    assert round(result.summary["kappa"], 2) == 0.73
    assert abs(result.summary["c"] - 194) < 1.0
    assert result.estimates.loc["c", "units"] == "million current pounds sterling"
    folder = write_calibration(result, tmp_path / "r1909", command=["armsdyn", "calibrate"])
    names = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {"estimates.csv", "fit.csv", "summary.json", "data.csv", "manifest.json", "figures/fit.pdf"} <= names
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["data"]["path"].endswith("models/data/richardson_1909_1913.csv")
    assert manifest["data"]["units"] == "million current pounds sterling"
    assert set(manifest["files"]) == names - {"manifest.json"}
    estimates = pd.read_csv(folder / "estimates.csv", index_col="parameter")
    assert estimates.loc["kappa", "estimate"] == pytest.approx(result.summary["kappa"])
    with pytest.raises(ResultsError, match="already exists"):
        write_calibration(result, folder)
    write_calibration(result, folder, force=True)


def test_parameters_recovered_from_synthetic_data_with_pysd() -> None:
    observed = _synthetic(np.random.default_rng(7), sigma=0.05)
    fit = fit_trajectories(load_model(MODELS / "richardson.mdl"), observed, GUESSES, TIME, fixed=START)
    est = fit.estimates
    assert fit.statistics["converged"]
    for name, true in TRUTH.items():
        assert abs(est.loc[name, "estimate"] - true) < 4 * est.loc[name, "std_error"], name
        assert est.loc[name, "estimate"] == pytest.approx(true, abs=0.1), name
    assert fit.statistics["sigma"] == pytest.approx(0.05, rel=0.3)
    assert fit.statistics["r2"] > 0.99
    assert fit.statistics["jacobian_condition"] < 1e6
    assert identification_note(fit.statistics, fit.estimates).startswith("parameters identified")


def test_engines_agree() -> None:
    observed = _synthetic(np.random.default_rng(3), sigma=0.1)
    model = load_model(MODELS / "richardson.mdl")
    pysd = fit_trajectories(model, observed, GUESSES, TIME, fixed=START, engine="pysd").estimates
    ensemble = fit_trajectories(model, observed, GUESSES, TIME, fixed=START, engine="compiled").estimates
    np.testing.assert_allclose(ensemble["estimate"], pysd["estimate"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ensemble["std_error"], pysd["std_error"], rtol=1e-3)


def test_fits_run_numbas_kernel_and_numpys_without_numba(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("numba")
    observed = _synthetic(np.random.default_rng(3), sigma=0.1)
    model = load_model(MODELS / "richardson.mdl")
    with_numba = fit_trajectories(model, observed, GUESSES, TIME, fixed=START)
    assert with_numba.statistics["backend"] == "numba"
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba now raises ImportError
    without = fit_trajectories(model, observed, GUESSES, TIME, fixed=START)
    assert without.statistics["backend"] == "numpy"
    np.testing.assert_allclose(with_numba.estimates["estimate"], without.estimates["estimate"], rtol=1e-8)


@pytest.mark.slow
def test_nominal_95_percent_intervals_cover_the_truth() -> None:
    # 50 noisy data sets from the model, each fitted; the Jacobian intervals should cover the true
    # values about 95% of the time. Binomial sd of a 50-fit coverage is 0.031; 300 pooled intervals
    # (6 per fit, correlated within a fit) get a tolerance of about 3.5 sd of the pooled rate.
    rng = np.random.default_rng(1984)
    model = load_model(MODELS / "richardson.mdl")
    hits = []
    for _ in range(50):
        fit = fit_trajectories(model, _synthetic(rng, sigma=0.1), GUESSES, TIME, fixed=START, engine="compiled")
        est = fit.estimates
        hits.append([est.loc[n, "ci_low"] <= TRUTH[n] <= est.loc[n, "ci_high"] for n in TRUTH])
    hits = np.array(hits)
    pooled = hits.mean()
    assert 0.90 <= pooled <= 0.99, hits.mean(axis=0)
    assert (hits.mean(axis=0) >= 0.84).all(), hits.mean(axis=0)


def _cold_war(bootstrap: int, **calibration: object) -> dict:
    path = CONFIGS / "calibrate_cold_war.toml"
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    raw["calibration"].update(bootstrap=bootstrap, **calibration)
    return raw


def test_cold_war_config_reports_stability_with_its_uncertainty(tmp_path: Path) -> None:
    path = CONFIGS / "calibrate_cold_war.toml"
    spec = parse_calibration(_cold_war(20), text=path.read_text(), source=path)
    assert spec.data.units == "billion current US dollars"
    assert spec.observations.index[0] == 1955
    assert spec.observations.loc[1988, "arms X"] == pytest.approx(281.935)
    result = calibrate(spec)
    summary = result.summary
    assert summary["converged"]
    assert summary["r2"] > 0.9
    fitted = result.estimates["estimate"]
    model = Richardson(*(fitted[f"{kind} coefficient {s}"] for kind, s in
                         (("defence", "k"), ("defence", "l"), ("fatigue", "a"), ("fatigue", "b"))),
                       fitted["grievance g"], fitted["grievance h"])  # fmt: skip
    assert summary["stability"] in ("stable", "unstable", "indeterminate")
    if summary["stability"] != "indeterminate":
        assert summary["stability"] == ("stable" if model.determinant > 0 else "unstable")
    assert summary["stability_reason"]
    assert result.derived.loc["determinant ab-kl", "estimate"] == pytest.approx(model.determinant)
    assert 0 <= summary["share_stable_bootstrap"] <= 1
    assert summary["bootstrap_replicates"] == 20
    assert not math.isnan(result.derived.loc["determinant ab-kl", "std_error"])
    # The numbers the fit has always given, with the diagnostics beside them.
    assert fitted["defence coefficient k"] == pytest.approx(0.0770, abs=2e-3)
    assert fitted["defence coefficient l"] == pytest.approx(0.0918, abs=2e-3)
    assert summary["r2"] == pytest.approx(0.980, abs=2e-3)
    assert summary["stability"] == "indeterminate"
    assert set(summary["at_bound"]) == {"fatigue coefficient a", "fatigue coefficient b"}
    assert math.isnan(result.derived.loc["equilibrium X", "estimate"])
    assert "not cointegrated" in summary["diagnostics_verdict"]
    assert "likely spurious" in summary["diagnostics_verdict"]
    assert "autocorrelated" in summary["diagnostics_verdict"]
    assert summary["diagnostics"]["residuals"]["arms X"]["durbin_watson"] < 1
    assert summary["bic"] > summary["aic"]
    assert summary["identification"].startswith("weakly identified: at a bound: fatigue coefficient a")
    assert "bootstrap fits piling at a bound" in summary["identification"]
    folder = write_calibration(result, tmp_path / "cw")
    table = pd.read_csv(folder / "diagnostics.csv")
    assert {"Ljung-Box (residuals)", "Durbin-Watson (residuals)", "ADF levels (null: unit root)",
            "KPSS levels (null: stationary)", "Engle-Granger cointegration (null: none)", "AIC", "BIC",
            "verdict"} <= set(table["test"])  # fmt: skip
    assert json.loads((folder / "summary.json").read_text())["diagnostics_verdict"] == summary["diagnostics_verdict"]
    assert (folder / "bootstrap.csv").is_file()
    assert (folder / "derived.csv").is_file()
    assert (folder / "figures" / "residuals.svg").is_file()
    # The specifications beside it: dropping fatigue (at its bound anyway) is preferred by AIC and BIC.
    table = pd.read_csv(folder / "comparison.csv", index_col="specification")
    assert table.loc["trajectory", "aic"] == pytest.approx(summary["aic"])
    assert table.loc["trajectory, no fatigue", "rank_aic"] == 1
    assert table.loc["trajectory", "delta_aic"] == pytest.approx(4.0, abs=0.1)
    assert table.loc["trajectory, no fatigue", "stability"] == "unstable (given a = 0, b = 0)"
    assert table["group"].nunique() == 3


BASE = """
[experiment]
name = "cal"
model = "MODEL"

[data]
file = "d.csv"
columns = { x = "arms X" }
units = "u"

[calibration]
parameters = { "grievance g" = { initial = 1, bounds = [0, 5] } }
"""


def _config(tmp_path: Path, body: str = BASE, data: str = "year,x\n0,1\n1,2\n2,3\n") -> Path:
    (tmp_path / "d.csv").write_text(data, encoding="utf-8")
    path = tmp_path / "cal.toml"
    path.write_text(body.replace("MODEL", (MODELS / "richardson.mdl").as_posix()), encoding="utf-8")
    return path


def test_a_small_config_fits_with_default_time(tmp_path: Path) -> None:
    spec = load_calibration(_config(tmp_path))
    assert (spec.time.initial, spec.time.final, spec.time.saveper) == (0, 2, 1)
    assert spec.parameters[0].name == "grievance g"
    result = calibrate(spec)
    assert result.summary["n_observations"] == 3


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (("[data]", "[data]\nkindd = 'csv'"), "data.kindd: unknown key; did you mean 'kind'?"),
        (('"arms X"', '"arms Z"'), "unknown variable 'arms Z'"),
        (('units = "u"', ""), "data.units: missing; a CSV does not say its units"),
        (("x = ", "y = "), "no column 'y'"),
        (("[calibration]", "[calibration]\nloss = 'hubber'"), "unknown loss 'hubber'; did you mean 'huber'?"),
        (("[calibration]", "[parameters]\n'grievance g' = 1\n[calibration]"), "also fixed in [parameters]"),
        (('"grievance g"', '"grievance gg"'), "richardson.mdl; did you mean 'grievance g'?"),
        (("bounds = [0, 5]", "bounds = [5, 0]"), "expected [low, high] with low < high"),
        (("initial = 1", "initial = 9"), "within the bounds"),
        (("[calibration]", "[time]\nsaveper = 0.7\n[calibration]"), "time.saveper"),
        (("[calibration]", "[calibration]\ninitial_values = { 'arms Y' = 'observed' }"), "is not observed"),
        (("[calibration]", "[calibration]\ninitial_values = { 'grievance g' = 'observed' }"), "not a stock"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, edit: tuple[str, str], expected: str) -> None:
    body = BASE.replace(*edit, 1)
    with pytest.raises(ConfigError, match=r"cal\.toml") as info:
        load_calibration(_config(tmp_path, body))
    assert expected in str(info.value)


def test_data_errors_are_reported_as_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"column 'x', line 3: 'two', which is not a number"):
        load_calibration(_config(tmp_path, data="year,x\n0,1\n1,two\n"))


def test_initial_values_fitted_from_the_first_observation(tmp_path: Path) -> None:
    body = BASE.replace("[calibration]", "[calibration]\ninitial_values = { 'arms X' = { bounds = [0, 10] } }")
    spec = load_calibration(_config(tmp_path, body, data="year,x\n0,4\n1,4.5\n2,5\n3,5.2\n"))
    fitted = {p.name: p for p in spec.parameters}
    assert fitted["initial arms X"].initial == 4
    assert fitted["initial arms X"].stock == "arms X"
    result = calibrate(spec)
    assert result.estimates.loc["initial arms X", "estimate"] == pytest.approx(4, abs=0.5)


def test_data_mapping_error_is_not_followed_by_spurious_messages(tmp_path: Path) -> None:
    body = BASE.replace("[calibration]", "[calibration]\ninitial_values = { 'arms X' = { bounds = [0, 10] } }")
    body = body.replace("x = ", "y = ", 1)
    with pytest.raises(ConfigError) as info:
        load_calibration(_config(tmp_path, body))
    assert "no column 'y'" in str(info.value)
    assert "is not observed" not in str(info.value)


def test_near_bound_is_relative_to_the_bounds_scale() -> None:
    flags = near_bound(np.array([4.6e-18, 1.2e-10, 0.3, 2.9999999, 1e-10, 5.0]), np.array([0, 0, 0, 0, 0, 0.0]),
                       np.array([3, 3, 3, 3, 1e-9, np.inf]))  # fmt: skip
    assert flags.tolist() == [True, True, False, True, False, False]


def test_stability_verdict_rules() -> None:
    assert stability_verdict(3.58e-20, (-1.0, 1.0), 0.01)[0] == "indeterminate"
    assert stability_verdict(3.58e-20, (1e-20, 1e-19), 0.01)[0] == "indeterminate"  # noise, however tight
    assert stability_verdict(0.05, (0.01, 0.09), 0.1)[0] == "stable"
    assert stability_verdict(-0.05, (-0.09, -0.01), 0.1)[0] == "unstable"
    assert stability_verdict(0.05, (-0.01, 0.11), 0.1)[0] == "indeterminate"
    assert stability_verdict(0.05, (0.01, 0.09), 0.1, (-0.02, 0.1))[0] == "indeterminate"
    assert stability_verdict(0.05, (math.nan, math.nan), 0.1)[0] == "indeterminate"


#: Known systems (k, l, a, b): ab - kl = 0.06 (stable), -0.06 (unstable) and 0 (borderline).
SYSTEMS = {
    "stable": (0.15, 0.1, 0.3, 0.25),
    "unstable": (0.3, 0.25, 0.15, 0.1),
    "indeterminate": (0.2, 0.3, 0.3, 0.2),
}


@pytest.mark.parametrize("expected", list(SYSTEMS))
def test_verdicts_on_known_systems_over_seeds(expected: str) -> None:
    truth = {**TRUTH, **dict(zip(list(TRUTH)[:4], SYSTEMS[expected], strict=True))}
    time = TimeSettings(0, 20, 0.0625, 1.0, "Year")
    model = load_model(MODELS / "richardson.mdl")
    clean = model.simulate({**truth, **START}, time, ["arms X", "arms Y"])
    verdicts = []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        observed = pd.DataFrame({n: v + rng.normal(0, 0.1, v.size) for n, v in clean.items()}, index=time.save_times())
        fit = fit_trajectories(model, observed, GUESSES, time, fixed=START)
        found = richardson_stability(fit.estimates, fit.covariance, fit.statistics["dof"], truth)
        verdicts.append(found["verdict"])
    # A 95% interval excludes zero on a borderline system about 1 time in 20: allow one miss in eight.
    assert verdicts.count(expected) >= 7, verdicts
    if expected != "indeterminate":
        wrong = "unstable" if expected == "stable" else "stable"
        assert wrong not in verdicts, verdicts


def test_two_independent_random_walks_are_flagged_as_likely_spurious() -> None:
    model = load_model(MODELS / "richardson.mdl")
    time = TimeSettings(0, 59, 0.0625, 1.0, "Year")
    flagged = 0
    for seed in range(6):
        rng = np.random.default_rng(seed)
        walks = pd.DataFrame(
            {"arms X": 50 + np.cumsum(rng.normal(0, 1, 60)), "arms Y": 50 + np.cumsum(rng.normal(0, 1, 60))},
            index=time.save_times(),
        )
        fit = fit_trajectories(model, walks, GUESSES, time, fixed={"initial arms X": 50.0, "initial arms Y": 50.0})
        found = diagnose(walks, fit.fit, fit.statistics["n_parameters"])
        flagged += "likely spurious" in found["verdict"]
    # Each of the unit-root and cointegration tests errs 1 time in 20 at most: allow one miss in six.
    assert flagged >= 5


def test_stationary_series_are_not_flagged() -> None:
    rng = np.random.default_rng(0)
    obs = pd.DataFrame({"arms X": rng.normal(10, 1, 80), "arms Y": rng.normal(5, 1, 80)}, index=np.arange(80.0))
    fit = pd.concat(
        [pd.DataFrame({"variable": c, "time": obs.index, "residual": obs[c] - obs[c].mean()}) for c in obs],
        ignore_index=True,
    )
    found = diagnose(obs, fit, 2)
    assert found["verdict"].startswith("series are stationary")
    assert found["series"]["arms X"]["order"] == "I(0)"


# --------------------------------------------------------------------------- lagged regression, SUR, comparison

#: A stable discrete-time race (ab - kl = 0.06) with correlated shocks, so SUR has something to weigh.
LAGGED_TRUTH = {
    "grievance g": 2.0,
    "defence coefficient k": 0.1,
    "fatigue coefficient a": 0.3,
    "grievance h": 1.0,
    "defence coefficient l": 0.15,
    "fatigue coefficient b": 0.25,
}


def _lagged_series(
    rng: np.random.Generator, years: int = 60, truth: dict | None = None, rho: float = 0.6
) -> pd.DataFrame:
    """X_t - X_{t-1} = g + k Y_{t-1} - a X_{t-1} + e (and Y alike), shocks correlated across states."""
    p = {**LAGGED_TRUTH, **(truth or {})}
    shocks = rng.multivariate_normal([0, 0], [[0.25, rho * 0.25], [rho * 0.25, 0.25]], size=years)
    x, y = [8.0], [9.0]
    for e in shocks[1:]:
        x0, y0 = x[-1], y[-1]
        x.append(x0 + p["grievance g"] + p["defence coefficient k"] * y0 - p["fatigue coefficient a"] * x0 + e[0])
        y.append(y0 + p["grievance h"] + p["defence coefficient l"] * x0 - p["fatigue coefficient b"] * y0 + e[1])
    return pd.DataFrame({"arms X": x, "arms Y": y}, index=pd.Index(np.arange(1950, 1950 + years), name="year"))


def test_lagged_sur_and_ols_equal_statsmodels_var1_and_ols() -> None:
    import statsmodels.api as sm
    from statsmodels.tsa.api import VAR

    from armsdyn.calibration import fit_system, lagged_equations

    obs = _lagged_series(np.random.default_rng(11))
    equations, context = lagged_equations(obs)
    sur, ols = fit_system(equations, "sur"), fit_system(equations, "ols")
    var = VAR(obs.to_numpy()).fit(1, trend="c")
    # VAR(1): Z_t = c + A Z_{t-1}; Richardson's lagged form is Z_t - Z_{t-1} = c + (A - I) Z_{t-1}.
    c, a_mat = var.params[0], var.params[1:].T
    expected = {
        "grievance g": c[0],
        "defence coefficient k": a_mat[0, 1],
        "fatigue coefficient a": 1 - a_mat[0, 0],
        "grievance h": c[1],
        "defence coefficient l": a_mat[1, 0],
        "fatigue coefficient b": 1 - a_mat[1, 1],
    }
    for fit in (sur, ols):
        for name, value in expected.items():
            assert fit.params[name] == pytest.approx(value, rel=1e-8, abs=1e-10), name
    # Same regressors in both equations: SUR is the VAR's maximum-likelihood fit, error covariance included.
    assert sur.log_likelihood == pytest.approx(var.llf, rel=1e-10)
    np.testing.assert_allclose(sur.sigma, var.sigma_u_mle, rtol=1e-8)
    assert sur.n_likelihood_parameters == 6 + 3
    assert ols.n_likelihood_parameters == 6 + 2
    # OLS equation by equation: statsmodels' coefficients, standard errors and log-likelihoods.
    llf = 0.0
    for j, eq in enumerate(equations):
        ref = sm.OLS(eq.response, eq.design).fit()
        np.testing.assert_allclose(ols.params[list(eq.parameters)], ref.params, rtol=1e-10)
        se = np.sqrt(np.diag(ols.covariance.loc[list(eq.parameters), list(eq.parameters)]))
        np.testing.assert_allclose(se, ref.bse, rtol=1e-8)
        np.testing.assert_allclose(ols.residuals[:, j], ref.resid, atol=1e-10)
        llf += ref.llf
    assert ols.log_likelihood == pytest.approx(llf, rel=1e-10)
    assert list(context.index) == list(obs.index[1:])


def test_restricted_sur_is_statsmodels_gls_with_the_estimated_covariance() -> None:
    import statsmodels.api as sm

    from armsdyn.calibration import fit_system, lagged_equations

    obs = _lagged_series(np.random.default_rng(5), rho=0.8)
    # Holding k at its true value leaves the equations different regressors: SUR now differs from OLS.
    equations, _ = lagged_equations(obs, fixed={"defence coefficient k": 0.1})
    assert equations[0].parameters == ("grievance g", "fatigue coefficient a")
    sur, ols = fit_system(equations, "sur"), fit_system(equations, "ols")
    assert sur.converged
    assert sur.iterations > 1
    big = block_diag(*[e.design for e in equations])
    y = np.concatenate([e.response for e in equations])
    gls = sm.GLS(y, big, sigma=np.kron(sur.sigma, np.eye(len(y) // 2))).fit(cov_type="fixed scale")
    np.testing.assert_allclose(sur.params.to_numpy(), gls.params, rtol=1e-7)
    np.testing.assert_allclose(sur.covariance.to_numpy(), gls.cov_params(), rtol=1e-6, atol=1e-12)
    assert not np.allclose(sur.params.to_numpy(), ols.params.to_numpy(), rtol=1e-6)
    # Its likelihood is the maximum over the coefficients: OLS's coefficients under SUR's covariance do worse.
    assert sur.log_likelihood > ols.log_likelihood


def test_differenced_lagged_fit_equals_statsmodels_var_on_the_changes() -> None:
    from statsmodels.tsa.api import VAR

    from armsdyn.calibration import fit_system, lagged_equations

    obs = _lagged_series(np.random.default_rng(2))
    equations, _ = lagged_equations(obs, transform="differenced")
    fit = fit_system(equations, "sur")
    changes = obs.diff().dropna().to_numpy()
    var = VAR(changes).fit(1, trend="n")
    # D_t - D_{t-1} = k D^Y_{t-1} - a D^X_{t-1}: the VAR(1) of the changes without a constant, minus I.
    a_mat = var.params.T
    assert fit.params["defence coefficient k"] == pytest.approx(a_mat[0, 1], rel=1e-8)
    assert fit.params["fatigue coefficient a"] == pytest.approx(1 - a_mat[0, 0], rel=1e-8)
    assert fit.params["defence coefficient l"] == pytest.approx(a_mat[1, 0], rel=1e-8)
    assert fit.params["fatigue coefficient b"] == pytest.approx(1 - a_mat[1, 1], rel=1e-8)
    assert fit.log_likelihood == pytest.approx(var.llf, rel=1e-10)
    assert "grievance g" not in fit.params


def test_lagged_intervals_cover_the_truth_at_the_nominal_rate() -> None:
    from armsdyn.calibration import fit_system, lagged_equations

    hits = {"sur": [], "ols": []}
    for seed in range(200):
        equations, _ = lagged_equations(_lagged_series(np.random.default_rng(seed)))
        for estimator in hits:
            fit = fit_system(equations, estimator)
            se = np.sqrt(np.diag(fit.covariance.to_numpy()))
            tq = student_t.ppf(0.975, fit.dof)
            truth = np.array([LAGGED_TRUTH[n] for n in fit.params.index])
            hits[estimator].append(np.abs(fit.params.to_numpy() - truth) <= tq * se)
    for estimator, rows in hits.items():
        rate = np.mean(rows)
        # 1200 intervals, correlated within a fit: a tolerance of about 3 binomial sd of 200 fits.
        assert 0.91 <= rate <= 0.98, (estimator, rate, np.mean(rows, axis=0))


def test_lagged_regression_skips_years_with_gaps() -> None:
    from armsdyn.calibration import lagged_equations

    obs = _lagged_series(np.random.default_rng(0), years=12)
    obs.loc[1955, "arms Y"] = math.nan
    obs = obs.drop(index=1958)
    equations, context = lagged_equations(obs)
    # 1955 (missing Y) removes the responses of 1955 and 1956; the absent 1958 those of 1958 and 1959.
    assert list(context.index) == [1951, 1952, 1953, 1954, 1957, 1960, 1961]
    _, context = lagged_equations(obs, transform="differenced")
    assert list(context.index) == [1952, 1953, 1954, 1961]
    assert equations[0].response.size == 7


def test_bic_finds_the_action_reaction_only_where_it_is() -> None:
    # Claim: the comparison prefers the reaction terms when the data have them, and drops them when
    # they are ablated (k = l = 0 in the data-generating process).
    from armsdyn.calibration import fit_system, lagged_equations

    def prefers_reaction(truth: dict, seed: int) -> bool:
        obs = _lagged_series(np.random.default_rng(seed), years=60, truth=truth)
        bics = []
        for fixed in ({}, {"defence coefficient k": 0.0, "defence coefficient l": 0.0}):
            fit = fit_system(lagged_equations(obs, fixed=fixed)[0], "sur")
            k = fit.n_likelihood_parameters
            bics.append(-2 * fit.log_likelihood + k * math.log(fit.residuals.size))
        return bics[0] < bics[1]

    strong = {"defence coefficient k": 0.25, "defence coefficient l": 0.2}
    ablated = {"defence coefficient k": 0.0, "defence coefficient l": 0.0}
    with_reaction = np.mean([prefers_reaction(strong, s) for s in range(40)])
    without = np.mean([prefers_reaction(ablated, s) for s in range(40)])
    assert with_reaction >= 0.95, with_reaction
    assert without <= 0.1, without


def test_india_pakistan_specifications_ranked_and_written(tmp_path: Path) -> None:
    result = calibrate(CONFIGS / "calibrate_india_pakistan.toml")
    table = result.comparison
    assert table is not None
    assert set(table.index) == {"trajectory", *(s.label for s in result.spec.specifications)}
    assert len(result.alternatives) == 8
    # Four groups of comparable likelihoods: levels, yearly changes, changes of changes, and GDP shares.
    groups = table.groupby("group")["response"].first()
    assert len(groups) == 4
    assert table.loc["GDP share, lagged SUR", "group"] != table.loc["lagged SUR", "group"]
    assert table.loc["lagged SUR", "group"] == table.loc["lagged OLS", "group"]
    for _, part in table.groupby("group"):
        assert part["delta_aic"].min() == 0
        assert part["rank_aic"].min() == 1
        assert part["akaike_weight"].sum() == pytest.approx(1)
    # Same regressors: SUR and OLS coefficients agree; SUR spends a parameter on the error correlation.
    sur = next(r for r in result.alternatives if r.spec.label == "lagged SUR")
    ols = next(r for r in result.alternatives if r.spec.label == "lagged OLS")
    np.testing.assert_allclose(sur.estimates["estimate"], ols.estimates["estimate"], rtol=1e-8)
    assert table.loc["lagged SUR", "n_parameters"] == table.loc["lagged OLS", "n_parameters"] + 1
    gdp = next(r for r in result.alternatives if r.spec.label == "GDP share, lagged SUR")
    assert gdp.spec.data.units == "percent of GDP"
    assert gdp.spec.observations.loc[1990, "arms X"] == pytest.approx(3.146214610299615)
    assert "given k = 0, l = 0" in table.loc["lagged SUR, no reaction", "stability"]
    differenced = next(r for r in result.alternatives if r.spec.label == "lagged SUR, differenced")
    assert "g and h" in differenced.derived.loc["equilibrium X", "note"]
    assert differenced.summary["diagnostics_verdict"].startswith("differenced series")
    verdict = result.summary["comparison"]["verdict"]
    assert any(line.startswith("group 1") and "preferred by AIC" in line for line in verdict)
    assert verdict[-1].startswith("4 groups fit different observations")
    # What `armsdyn calibrate` prints after the estimates (tests/test_calibration_cli.py runs the command):
    # the honest verdicts, in words, beside the numbers; the ranking, and which specification is
    # preferred by how much.
    lines = format_summary(result).splitlines()
    assert any(line.startswith("stability: indeterminate (the 95% interval of ab - kl") for line in lines)
    assert any(line.startswith("diagnostics: series are I(1) and not cointegrated") for line in lines)
    assert any(line.startswith("identification: weakly identified: at a bound") for line in lines)
    assert "specifications ranked by AIC within groups fitted to the same observations:" in lines
    preferred = [line for line in lines if line.startswith("group 1 (levels of arms X, arms Y")]
    assert len(preferred) == 1
    assert "preferred by AIC 'trajectory, no fatigue', 4.0 below 'trajectory'" in preferred[0]
    assert "AIC and BIC rank specifications within a group only" in lines[-1]
    folder = write_calibration(result, tmp_path / "ip")
    back = pd.read_csv(folder / "comparison.csv", index_col="specification")
    for name, row in back.iterrows():
        shown = next(line for line in lines if line.startswith(f"{name} "))
        assert f"{row['aic']:.1f}" in shown, name
    pd.testing.assert_series_equal(back["aic"], table["aic"], check_names=False)
    assert list(back["rank_aic"]) == list(table["rank_aic"])
    estimates = pd.read_csv(folder / "specifications.csv")
    assert set(estimates["specification"]) == set(table.index)
    row = estimates[(estimates["specification"] == "lagged OLS") & (estimates["parameter"] == "defence coefficient k")]
    assert float(row["estimate"].iloc[0]) == pytest.approx(ols.estimates.loc["defence coefficient k", "estimate"])
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["calibration"]["specifications"][0] == "trajectory"
    assert json.loads((folder / "summary.json").read_text())["comparison"]["verdict"] == verdict


def test_a_lagged_config_writes_its_fit(tmp_path: Path) -> None:
    body = BASE.replace('columns = { x = "arms X" }', 'columns = { x = "arms X", y = "arms Y" }')
    body = body.replace("[calibration]\nparameters = { \"grievance g\" = { initial = 1, bounds = [0, 5] } }",
                        '[calibration]\nmethod = "lagged"\nestimator = "ols"')  # fmt: skip
    obs = _lagged_series(np.random.default_rng(3), years=30)
    data = "year,x,y\n" + "\n".join(f"{t},{r['arms X']},{r['arms Y']}" for t, r in obs.iterrows()) + "\n"
    spec = load_calibration(_config(tmp_path, body, data=data))
    assert (spec.method, spec.estimator, spec.transform, spec.label) == ("lagged", "ols", "levels", "lagged ols")
    result = calibrate(spec)
    assert result.summary["n_observations"] == 2 * 29
    assert result.summary["stability"] in ("stable", "indeterminate")
    assert result.comparison is None
    folder = write_calibration(result, tmp_path / "lagged")
    fit = pd.read_csv(folder / "fit.csv")
    assert len(fit) == 58
    assert set(fit["variable"]) == {"arms X", "arms Y"}
    assert not (folder / "comparison.csv").exists()
    assert (folder / "figures" / "fit.png").is_file()
    diag = pd.read_csv(folder / "diagnostics.csv").set_index("test")
    assert diag.loc["AIC", "statistic"] == pytest.approx(result.summary["aic"])


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ('method = "lagged"', "specifications[0].name: missing"),
        ('name = "x"\nmethod = "bayes"', "specifications[0] (\"x\").method: unknown method 'bayes'"),
        ('name = "x"\nmethod = "richardson_combined"', "allowed: trajectory, lagged"),
        ('name = "x"\nfix = { "grievance gg" = 0 }', 'fix."grievance gg": unknown constant in model'),
        ('name = "x"\nfix = { "grievance g" = "zero" }', "expected a finite number, got string 'zero'"),
        ('name = "x"\nestimator = "sur"', "calibration.estimator: only used with method 'lagged'"),
        ('name = "x"\nmethod = "lagged"\nestimator = "gls"', "unknown estimator 'gls'"),
        ('name = "x"\nmethod = "lagged"', "'lagged' needs both stocks observed; map a data series to 'arms Y'"),
        ('name = "x"\ndata = { file = "none.csv" }', 'specifications[0] ("x"): data: '),
        ('name = "cal"\nflavour = 1', "specifications[0].flavour: unknown key"),
        ('name = "trajectory"', "'trajectory' names two specifications"),
    ],
)
def test_specification_errors_name_the_entry(tmp_path: Path, entry: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=r"cal\.toml") as info:
        load_calibration(_config(tmp_path, BASE + "\n[[specifications]]\n" + entry + "\n"))
    assert expected in str(info.value)


def test_lagged_needs_enough_years(tmp_path: Path) -> None:
    body = BASE.replace('columns = { x = "arms X" }', 'columns = { x = "arms X", y = "arms Y" }')
    body = body.replace("[calibration]\n", '[calibration]\nmethod = "lagged"\n')
    with pytest.raises(ConfigError, match="has 4 usable years"):
        load_calibration(_config(tmp_path, body, data="year,x,y\n0,1,2\n1,2,3\n2,3,3\n3,4,5\n4,4,6\n"))


# --------------------------------------------------------------------------- N states (subscripted models)

#: A stable three-state race of models/richardson_n.mdl (max Re eig(K - A) < 0) and an unstable one.
N_STATES = ("USA", "Russia", "China")
N_TRUTH = {
    "stable": {"k": [[0, 0.2, 0.05], [0.25, 0, 0.05], [0.1, 0.05, 0]], "a": [0.4, 0.35, 0.3], "g": [10, 5, 8]},
    "unstable": {"k": [[0, 0.45, 0.2], [0.5, 0, 0.1], [0.3, 0.2, 0]], "a": [0.2, 0.2, 0.15], "g": [10, 5, 8]},
}


def _n_parameters(truth: dict) -> dict[str, float]:
    out = {}
    for i, si in enumerate(N_STATES):
        out[f"fatigue coefficient a[{si}]"] = truth["a"][i]
        out[f"grievance g[{si}]"] = truth["g"][i]
        for j, sj in enumerate(N_STATES):
            out[f"defence coefficient k[{si}, {sj}]"] = truth["k"][i][j]
    return out


def _n_lagged_series(rng: np.random.Generator, truth: dict, years: int = 40, sd: float = 0.5) -> pd.DataFrame:
    """x_t - x_{t-1} = g + K x_{t-1} - a x_{t-1} + e for three states."""
    k, a, g = (np.asarray(truth[s], dtype=float) for s in "kag")
    x = [np.array([20.0, 20.0, 20.0])]
    for _ in range(years - 1):
        x.append(x[-1] + g + k @ x[-1] - a * x[-1] + rng.normal(0, sd, 3))
    return pd.DataFrame(np.array(x), columns=[f"arms[{s}]" for s in N_STATES], index=np.arange(1980, 1980 + years))


def test_n_state_lagged_fit_equals_statsmodels_var1() -> None:
    from statsmodels.tsa.api import VAR

    from armsdyn.calibration import fit_system, lagged_equations
    from armsdyn.calibration_config import lagged_system

    system = lagged_system(load_model(MODELS / "richardson_n.mdl"))
    assert system is not None
    assert system.stocks == ("arms[USA]", "arms[Russia]", "arms[China]")
    assert system.held == {f"defence coefficient k[{s}, {s}]": 0.0 for s in N_STATES}
    obs = _n_lagged_series(np.random.default_rng(4), N_TRUTH["stable"])
    equations, _ = lagged_equations(obs, system=system)
    fit = fit_system(equations, "sur")
    var = VAR(obs.to_numpy()).fit(1, trend="c")
    c, a_mat = var.params[0], var.params[1:].T
    for i, si in enumerate(N_STATES):
        assert fit.params[f"grievance g[{si}]"] == pytest.approx(c[i], rel=1e-7)
        assert fit.params[f"fatigue coefficient a[{si}]"] == pytest.approx(1 - a_mat[i, i], rel=1e-7)
        for j, sj in enumerate(N_STATES):
            if i != j:
                assert fit.params[f"defence coefficient k[{si}, {sj}]"] == pytest.approx(a_mat[i, j], rel=1e-7)
    assert fit.log_likelihood == pytest.approx(var.llf, rel=1e-10)


@pytest.mark.parametrize("expected", ["stable", "unstable"])
def test_n_state_stability_verdicts_over_seeds(tmp_path: Path, expected: str) -> None:
    # The N-state verdict comes from max Re eig(K - A) (-0.11 stable, +0.41 unstable) and its interval.
    verdicts = []
    for seed in range(6):
        obs = _n_lagged_series(np.random.default_rng(seed), N_TRUTH[expected], years=40 if expected == "stable" else 20,
                               sd=2.0)  # fmt: skip
        data = tmp_path / f"n{seed}.csv"
        obs.rename(columns=lambda c: c[5:-1]).to_csv(data, index_label="year")
        config = tmp_path / f"n{seed}.toml"
        config.write_text(
            f'[experiment]\nname = "n"\nmodel = "{(MODELS / "richardson_n.mdl").as_posix()}"\n'
            f'[data]\nfile = "{data.name}"\nunits = "u"\n'
            'columns = { USA = "arms[USA]", Russia = "arms[Russia]", China = "arms[China]" }\n'
            '[calibration]\nmethod = "lagged"\n',
            encoding="utf-8",
        )
        result = calibrate(config)
        truth = _n_parameters(N_TRUTH[expected])
        est = result.estimates
        # Twelve coefficients per fit: every one within 4.5 standard errors of the truth.
        within = [abs(est.loc[n, "estimate"] - truth[n]) <= 4.5 * est.loc[n, "std_error"] for n in est.index]
        assert all(within), est
        verdicts.append(result.summary["stability"])
    assert verdicts.count(expected) >= 5, verdicts
    wrong = "unstable" if expected == "stable" else "stable"
    assert wrong not in verdicts


def test_n_state_trajectory_fit_recovers_elements_and_shared_values(tmp_path: Path) -> None:
    model = load_model(MODELS / "richardson_n.mdl")
    time = TimeSettings(0, 30, 0.0625, 1.0, "Year")
    truth = {
        "defence coefficient k[USA, Russia]": 0.2,
        "defence coefficient k[Russia, USA]": 0.25,
        "defence coefficient k[China, USA]": 0.1,
        "fatigue coefficient a": 0.4,  # one value shared by the three states
        "grievance g[USA]": 10.0,
        "grievance g[Russia]": 5.0,
        "grievance g[China]": 8.0,
    }
    held = {"defence coefficient k[USA, China]": 0, "defence coefficient k[Russia, China]": 0,
            "defence coefficient k[China, Russia]": 0}  # fmt: skip
    clean = model.simulate({**truth, **held, "initial arms": 20.0}, time, ["arms"])["arms"]
    noisy = clean + np.random.default_rng(0).normal(0, 0.3, clean.shape)
    data = pd.DataFrame(noisy, columns=list(N_STATES), index=pd.Index(np.arange(31), name="year"))
    data.to_csv(tmp_path / "n.csv")
    guesses = {n: (0.1, [0, 3]) if "coefficient" in n else (1.0, [-50, 50]) for n in truth}
    fitted = "\n".join(f'"{n}" = {{ initial = {g}, bounds = {b} }}' for n, (g, b) in guesses.items())
    fixed = "\n".join(f'"{n}" = {v}' for n, v in held.items())
    (tmp_path / "n.toml").write_text(
        f'[experiment]\nname = "n"\nmodel = "{(MODELS / "richardson_n.mdl").as_posix()}"\n'
        f"[time]\ninitial = 0\nfinal = 30\nstep = 0.0625\nsaveper = 1\n"
        f'[parameters]\n"initial arms" = 20\n{fixed}\n'
        '[data]\nfile = "n.csv"\nunits = "u"\n'
        'columns = { USA = "arms[USA]", Russia = "arms[Russia]", China = "arms[China]" }\n'
        f"[calibration.parameters]\n{fitted}\n",
        encoding="utf-8",
    )
    spec = load_calibration(tmp_path / "n.toml")
    assert list(spec.observations.columns) == ["arms[USA]", "arms[Russia]", "arms[China]"]
    result = calibrate(spec)
    est = result.estimates
    for name, value in truth.items():
        assert abs(est.loc[name, "estimate"] - value) < 4 * est.loc[name, "std_error"], name
    assert est.loc["grievance g[USA]", "units"] == "arms/Year"
    assert result.summary["r2"] > 0.99
    # Stable truth: max Re eig(K - A) < 0 for K above and a = 0.4.
    assert result.summary["stability"] == "stable"
    folder = write_calibration(result, tmp_path / "out")
    derived = pd.read_csv(folder / "derived.csv", index_col="quantity")
    assert derived.loc["max Re eig(K - A)", "estimate"] == pytest.approx(result.summary["spectral_abscissa"])
    assert np.isfinite(derived.loc["equilibrium arms[China]", "estimate"])
    fit = pd.read_csv(folder / "fit.csv")
    assert set(fit["variable"]) == {"arms[USA]", "arms[Russia]", "arms[China]"}


def test_usa_russia_china_config_compares_n_state_specifications(tmp_path: Path) -> None:
    result = calibrate(CONFIGS / "calibrate_usa_russia_china.toml")
    assert result.spec.method == "lagged"
    assert "defence coefficient k[USA, China]" in result.estimates.index
    assert "defence coefficient k[USA, USA]" not in result.estimates.index  # held: fatigue's twin
    table = result.comparison
    assert table is not None
    assert table.loc["lagged SUR", "group"] == table.loc["lagged SUR, no reaction", "group"]
    assert table.loc["lagged SUR", "n_parameters"] == 12 + 6
    assert table.loc["lagged SUR, no reaction", "n_parameters"] == 6 + 6
    assert result.summary["stability"] in ("stable", "unstable", "indeterminate")
    assert result.summary["stability_reason"].startswith(("max Re eig(K - A)", "the 95% interval of max Re"))
    trajectory = next(r for r in result.alternatives if r.spec.method == "trajectory")
    assert trajectory.summary["identification"].startswith("weakly identified")
    # Johansen's test of the three series, as statsmodels computes it, in the summary and the diagnostics.
    johansen = result.summary["diagnostics"]["johansen"]
    direct = coint_johansen(result.spec.observations.dropna().to_numpy(), 0, 1)
    np.testing.assert_allclose(johansen["trace"], direct.lr1)
    line = next(line for line in format_summary(result).splitlines() if line.startswith("cointegration: "))
    assert line.startswith("cointegration: Johansen trace test (constant, 1 lagged difference, 31 observations)")
    assert f"rank {johansen['rank']} of 3" in line
    folder = write_calibration(result, tmp_path / "urc")
    back = pd.read_csv(folder / "comparison.csv", index_col="specification")
    assert list(back.index) == list(table.index)
    assert (folder / "derived.csv").is_file()
    diagnostics = pd.read_csv(folder / "diagnostics.csv")
    np.testing.assert_allclose(diagnostics.loc[diagnostics["test"].str.startswith("Johansen trace"), "statistic"],
                               direct.lr1)  # fmt: skip
    assert diagnostics.loc[diagnostics["test"] == "Johansen rank", "statistic"].item() == johansen["rank"]
    assert (diagnostics["test"] == "Engle-Granger cointegration (null: none)").sum() == 3
    saved = json.loads((folder / "summary.json").read_text())
    assert saved["diagnostics"]["johansen"]["rank"] == johansen["rank"]


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        ('{ USA = "arms" }', "'arms' is subscripted by state; map each data series to one element, e.g. 'arms[USA]'"),
        ('{ USA = "arms[Germany]" }', "Germany"),
        ('{ USA = "arms[USA]", Russia = "arms[Russia]" }', "'lagged' needs all 3 states' stocks observed"),
    ],
)
def test_n_state_mapping_errors(tmp_path: Path, columns: str, expected: str) -> None:
    (tmp_path / "d.csv").write_text("year,USA,Russia\n" + "".join(f"{y},{y},{y}\n" for y in range(10)))
    (tmp_path / "cal.toml").write_text(
        f'[experiment]\nname = "n"\nmodel = "{(MODELS / "richardson_n.mdl").as_posix()}"\n'
        f'[data]\nfile = "d.csv"\nunits = "u"\ncolumns = {columns}\n[calibration]\nmethod = "lagged"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r"cal\.toml") as info:
        load_calibration(tmp_path / "cal.toml")
    assert expected in str(info.value)


# --------------------------------------------------------------------------- Bayesian posterior (emcee)


def _bayes_config(tmp_path: Path, observed: pd.DataFrame, extra: str = "", steps: int = 1000, burn: int = 500) -> Path:
    """A method = "bayes" config over `observed` (arms X and Y), fitting Richardson's six coefficients."""
    data = observed.rename(columns={"arms X": "x", "arms Y": "y"})
    data.index.name = "year"
    data.to_csv(tmp_path / "d.csv")
    fitted = "\n".join(f'"{n}" = {{ initial = {g.initial}, bounds = {list(g.bounds)} }}' for n, g in
                       zip(TRUTH, GUESSES, strict=True))  # fmt: skip
    path = tmp_path / "b.toml"
    path.write_text(
        f'[experiment]\nname = "b"\nmodel = "{(MODELS / "richardson.mdl").as_posix()}"\n'
        "[time]\ninitial = 0\nfinal = 30\nstep = 0.0625\nsaveper = 1\n"
        '[parameters]\n"initial arms X" = 1.0\n"initial arms Y" = 2.0\n'
        '[data]\nfile = "d.csv"\nunits = "u"\ncolumns = { x = "arms X", y = "arms Y" }\n'
        f'[calibration]\nmethod = "bayes"\nsteps = {steps}\nburn = {burn}\nseed = 3\n{extra}'
        f"[calibration.parameters]\n{fitted}\n",
        encoding="utf-8",
    )
    return path


@pytest.mark.slow
def test_bayes_posterior_agrees_with_least_squares_and_is_written(tmp_path: Path) -> None:
    pytest.importorskip("emcee")
    result = calibrate(_bayes_config(tmp_path, _synthetic(np.random.default_rng(7), sigma=0.1), steps=3000, burn=1000))
    est = result.estimates
    post = result.summary["posterior"]
    # Well identified: sampled in the parameters themselves, and converged by every check.
    assert post["coordinates"] == "parameters"
    assert post["converged"], post["convergence"]
    assert post["max_rhat"] < 1.1
    assert post["min_ess"] > 200
    assert 0.1 < post["acceptance"] < 0.9
    for name, true in TRUTH.items():
        # The posterior median sits inside the least-squares interval, and the posterior interval covers the truth.
        assert est.loc[name, "ci_low"] <= est.loc[name, "posterior_median"] <= est.loc[name, "ci_high"], name
        assert est.loc[name, "posterior_low"] <= true <= est.loc[name, "posterior_high"], name
    # A clearly stable race (ab - kl = 0.06): every posterior draw is stable.
    assert result.summary["p_stable_posterior"] == 1.0
    assert result.summary["stability"] == "stable"
    assert result.summary["stability_reason"].startswith("posterior probability of stability 1.000")
    assert "P(stable) = 1.000" in format_summary(result)
    folder = write_calibration(result, tmp_path / "out")
    draws = pd.read_csv(folder / "posterior.csv")
    assert {"walker", "step", "log_posterior", "stable", *TRUTH} <= set(draws.columns)
    assert draws["step"].min() >= 1000
    k_median = est.loc["defence coefficient k", "posterior_median"]
    assert draws["defence coefficient k"].median() == pytest.approx(k_median, abs=0.02)
    back = pd.read_csv(folder / "estimates.csv", index_col="parameter")
    np.testing.assert_allclose(back["rhat"], est["rhat"])
    predictive = pd.read_csv(folder / "posterior_predictive.csv")
    assert set(predictive["variable"]) == {"arms X", "arms Y"}
    # The 95% posterior predictive band holds about 95% of the observations.
    merged = predictive.merge(result.fit, on=["variable", "time"])
    inside = ((merged["observed"] >= merged["low"]) & (merged["observed"] <= merged["high"])).mean()
    assert 0.85 <= inside <= 1.0
    assert (folder / "figures" / "posterior_predictive.png").is_file()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["calibration"]["sampler"]["package"] == "emcee"
    # The engines that ran: the least-squares fit's and the posterior's (summary.json says the same).
    assert manifest["calibration"]["engine"] == result.summary["engine"] == "compiled"
    assert manifest["calibration"]["posterior_engine"] == post["engine"] == "compiled"


@pytest.mark.slow
def test_bayes_posterior_covers_the_truth_at_the_nominal_rate(tmp_path: Path) -> None:
    pytest.importorskip("emcee")
    specs = []
    for seed in range(16):
        folder = tmp_path / str(seed)
        folder.mkdir()
        config = _bayes_config(folder, _synthetic(np.random.default_rng(100 + seed), sigma=0.1), steps=500, burn=200,
                               extra="walkers = 16\n")  # fmt: skip
        specs.append(load_calibration(config))
    hits = []
    # The 16 posteriors sampled together; each is calibrate()'s (tests/test_calibration_posterior.py).
    for result in calibrate_many(specs):
        est = result.estimates
        hits.append([est.loc[n, "posterior_low"] <= TRUTH[n] <= est.loc[n, "posterior_high"] for n in TRUTH])
    # 96 intervals (6 per fit, correlated within a fit): about 3 binomial sd of 16 fits around 0.95.
    rate = float(np.mean(hits))
    assert 0.85 <= rate <= 1.0, np.mean(hits, axis=0)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"extra": "walkers = 7\n"}, "calibration.walkers: must be even and more than twice the 6 fitted quantities"),
        ({"steps": 5, "burn": 1}, "calibration.steps: must be between 10 and 1000000"),
        ({"burn": 1000}, "calibration.burn: must be at least 0 and below steps (1000)"),
        ({"extra": 'priors = { "grievance z" = { normal = [0, 1] } }\n'}, '"grievance z": not a fitted quantity'),
        ({"extra": 'priors = { "grievance g" = { normal = [0, -1] } }\n'}, "expected [mean, sd] with sd > 0"),
        ({"extra": 'priors = { "grievance g" = { uniform = [0, 1] } }\n'}, "unknown key"),
        ({"extra": 'engine = "pysd"\n'}, "method 'bayes' runs on the compiled engine"),
    ],
)
def test_bayes_config_errors(tmp_path: Path, settings: dict, expected: str) -> None:
    config = _bayes_config(tmp_path, _synthetic(np.random.default_rng(0), sigma=0.1), **settings)
    with pytest.raises(ConfigError, match=r"b\.toml") as info:
        load_calibration(config)
    assert expected in str(info.value)


def test_bayes_needs_bounds_or_a_prior(tmp_path: Path) -> None:
    config = _bayes_config(tmp_path, _synthetic(np.random.default_rng(0), sigma=0.1))
    config.write_text(config.read_text().replace("bounds = [-20, 20]", "bounds = [-20, inf]", 1))
    with pytest.raises(ConfigError, match="needs finite bounds"):
        load_calibration(config)
    config.write_text(
        config.read_text().replace("seed = 3\n", 'seed = 3\npriors = { "grievance g" = { normal = [1, 2] } }\n')
    )
    assert load_calibration(config).priors == {"grievance g": (1.0, 2.0)}


def test_sampler_keys_belong_to_bayes(tmp_path: Path) -> None:
    body = BASE.replace("[calibration]\n", "[calibration]\nsteps = 100\n")
    with pytest.raises(ConfigError, match=r"calibration\.steps: only used with method 'bayes', not 'trajectory'"):
        load_calibration(_config(tmp_path, body))


def test_bayes_without_emcee_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "emcee", None)  # import emcee now raises ImportError
    spec = load_calibration(_bayes_config(tmp_path, _synthetic(np.random.default_rng(0), sigma=0.1), steps=20, burn=10))
    with pytest.raises(ConfigError, match=r"pip install 'armsdyn\[bayes\]'"):
        calibrate(spec)


def test_an_unconverged_posterior_gives_no_verdict(tmp_path: Path) -> None:
    pytest.importorskip("emcee")
    # 6 kept steps of 14 walkers are at most 84 draws: fewer than the 100 effective draws a verdict needs.
    config = _bayes_config(tmp_path, _synthetic(np.random.default_rng(7), sigma=0.1), steps=12, burn=6,
                           extra="walkers = 14\n")  # fmt: skip
    result = calibrate(config)
    assert result.summary["posterior"]["min_ess"] < 100
    assert result.summary["stability"] == "indeterminate"
    assert result.summary["stability_reason"].startswith("posterior not converged")
    assert "posterior not converged" in result.summary["identification"]
    assert "give [calibration.priors]" in result.summary["identification"]
    assert result.summary["stability_least_squares"] == "stable"

"""Sensitivity studies through the whole pipeline: config, SALib sampling, ensemble runs, indices, files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import armsdyn
from armsdyn import ConfigError, Richardson
from armsdyn.sensitivity import run_study, sample
from armsdyn.sensitivity_methods import METHODS
from tests.conftest import MODELS, ROOT, call_cli, write_config

DATA = ROOT / "tests" / "data"

# Analytic Sobol indices of the Ishigami function with a = 7, b = 0.1
# (Ishigami and Homma 1990; SALib's test suite uses the same values).
A, B = 7.0, 0.1
VAR = A**2 / 8 + B * math.pi**4 / 5 + B**2 * math.pi**8 / 18 + 0.5
V1 = 0.5 * (1 + B * math.pi**4 / 5) ** 2
V2 = A**2 / 8
V13 = B**2 * math.pi**8 * (1 / 18 - 1 / 50)
ISHIGAMI_S1 = np.array([V1, V2, 0.0]) / VAR
ISHIGAMI_ST = np.array([V1 + V13, V2, V13]) / VAR


def test_ishigami_indices_match_the_analytic_values_within_their_intervals() -> None:
    exp = armsdyn.load_config(DATA / "ishigami.toml")
    _, indices = run_study(exp)
    row = indices.sel(output="Y final")
    assert np.all(np.abs(row["S1"].values - ISHIGAMI_S1) <= row["S1_conf"].values)
    assert np.all(np.abs(row["ST"].values - ISHIGAMI_ST) <= row["ST_conf"].values)


OAT = """
[time]
final = 60
step = 0.0625
saveper = 1
[parameters]
"defence coefficient k" = 0.4
"defence coefficient l" = 0.4
"fatigue coefficient a" = 1.0
"fatigue coefficient b" = 1.0
"grievance h" = 1.0
[sensitivity]
method = "oat"
levels = 3
[[sensitivity.parameters]]
name = "grievance g"
bounds = [0.5, 2.0]
[[sensitivity.parameters]]
name = "fatigue coefficient a"
bounds = [0.8, 1.6]
[[sensitivity.parameters]]
name = "defence coefficient k"
bounds = [0.1, 0.6]
[[sensitivity.outputs]]
variable = "arms X"
aggregate = "final"
"""


def test_one_at_a_time_sweep_of_richardson_reproduces_the_closed_form_equilibrium(tmp_path: Path) -> None:
    exp = armsdyn.load_config(write_config(tmp_path, OAT))
    ensemble, indices = run_study(exp)
    base = {"k": 0.4, "l": 0.4, "a": 1.0, "b": 1.0, "g": 1.0, "h": 1.0}
    mid = {"g": 1.25, "a": 1.2, "k": 0.35}  # OAT holds the others at their midpoints
    symbol = {"grievance g": "g", "fatigue coefficient a": "a", "defence coefficient k": "k"}
    row = indices.sel(output="arms X final")
    for name, (lo, hi) in zip(symbol, [(0.5, 2.0), (0.8, 1.6), (0.1, 0.6)], strict=True):
        for bound, key in ((lo, "at_low"), (hi, "at_high")):
            params = {**base, **mid, symbol[name]: bound}
            expected = Richardson(**params).equilibrium()[0]
            got = float(row[key].sel(parameter=name))
            assert got == pytest.approx(expected, rel=1e-4), (name, key)
    # Every run is stable here, so the ensemble's final arms sit at the equilibrium too.
    assert ensemble.sizes["run"] == 1 + 3 * 3


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_runs_and_is_reproducible(tmp_path: Path, method: str) -> None:
    text = OAT.replace('method = "oat"', f'method = "{method}"\nsamples = 16\nseed = 3').replace(
        "levels = 3", "levels = 4"
    )
    exp = armsdyn.load_config(write_config(tmp_path, text))
    first = sample(exp.sensitivity)
    again = sample(exp.sensitivity)
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    ensemble, indices = run_study(exp)
    assert set(indices["parameter"].values) == {"grievance g", "fatigue coefficient a", "defence coefficient k"}
    assert indices.attrs["method"] == method
    assert "output: arms X final" in ensemble
    if method != "grid":
        assert indices.data_vars, "no indices computed"
        assert np.isfinite(indices.to_array()).any()


def test_serial_and_parallel_studies_are_identical(tmp_path: Path) -> None:
    text = OAT.replace('method = "oat"', 'method = "sobol"\nsamples = 32\nseed = 5')
    exp = armsdyn.load_config(write_config(tmp_path, text))
    serial = run_study(exp, workers=1)
    parallel = run_study(exp, workers=2)
    xr.testing.assert_identical(serial[0], parallel[0])
    xr.testing.assert_identical(serial[1], parallel[1])


def test_cli_writes_the_study_with_its_figures(tmp_path: Path) -> None:
    text = OAT.replace('method = "oat"', 'method = "morris"\nsamples = 8\nseed = 1\nfan_variables = ["arms X"]')
    text = text.replace("levels = 3", "levels = 4")
    out = tmp_path / "out"
    proc = call_cli("run", write_config(tmp_path, text), "--out", out, "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    assert "sensitivity study: morris" in proc.stderr
    with xr.open_dataset(out / "sensitivity" / "indices.nc") as indices:
        assert {"mu_star", "sigma", "mu_star_conf"} <= set(indices.data_vars)
    with xr.open_dataset(out / "sensitivity" / "ensemble.nc") as ensemble:
        assert ensemble["arms_x"].dims == ("fan_run", "time")
        assert ensemble["output: arms X final"].dims == ("run",)
        assert "grievance_g" in ensemble.coords
    for stem in ("sensitivity_morris_arms_X_final", "fan_chart_arms_X"):
        assert (out / "figures" / f"{stem}.pdf").is_file()
    # A finished study is re-analysed and re-plotted from its saved runs alone.
    with xr.open_dataset(out / "sensitivity" / "indices.nc") as before:
        first = before.load()
    (out / "figures" / "fan_chart_arms_X.pdf").unlink()
    again = call_cli("figures", out)
    assert again.returncode == 0, again.stderr
    assert (out / "figures" / "fan_chart_arms_X.pdf").is_file()
    with xr.open_dataset(out / "sensitivity" / "indices.nc") as after:
        xr.testing.assert_identical(after.load(), first)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('method = "oat"', 'method = "sobel"', r"sensitivity\.method: unknown method 'sobel'; did you mean 'sobol'\?"),
        ('name = "grievance g"', 'name = "grievance q"', r"parameters\[0\]\.name: unknown parameter 'grievance q'"),
        ("bounds = [0.5, 2.0]", "bounds = [2.0, 0.5]", r"parameters\[0\]\.bounds: low must be below high"),
        (
            "bounds = [0.5, 2.0]",
            'bounds = [0.5, 2.0]\ndistribution = "norm"',
            r"parameters\[0\]\.bounds: method 'oat' needs unif or logunif bounds",
        ),
        ('aggregate = "final"', 'aggregate = "average"', r"outputs\[0\]\.aggregate: unknown aggregate 'average'"),
        (
            'variable = "arms X"',
            'metric = "breakout time A"',
            r"outputs\[0\]\.metric: unknown metric 'breakout time A'",
        ),
        ("levels = 3", "levels = 1", r"sensitivity\.levels: must be at least 2"),
        ('method = "oat"', 'method = "morris"', r"sensitivity\.levels: morris needs an even number of levels, got 3"),
    ],
    ids=["method", "parameter", "bounds-order", "bounds-dist", "aggregate", "metric", "levels", "morris-levels"],
)
def test_bad_sensitivity_tables_are_rejected(tmp_path: Path, old: str, new: str, message: str) -> None:
    assert old in OAT
    with pytest.raises(ConfigError, match=message):
        armsdyn.load_config(write_config(tmp_path, OAT.replace(old, new, 1)))


def test_a_study_samples_and_reads_single_elements_of_a_subscripted_model(tmp_path: Path) -> None:
    """Element parameters ("grievance g[China]", a tied pair of reaction coefficients) and element outputs."""
    from armsdyn.cli import main

    config = tmp_path / "triad_sobol.toml"
    config.write_text(
        f"""
[experiment]
name = "triad_sobol"
model = "{(MODELS / "richardson_n.mdl").as_posix()}"
[time]
final = 10
step = 0.125
saveper = 1
[output]
variables = ["arms"]
[sensitivity]
method = "sobol"
samples = 16
seed = 3
[[sensitivity.parameters]]
name = "grievance g[China]"
bounds = [50, 200]
[[sensitivity.parameters]]
name = "defence coefficient k[USA, Russia]"
bounds = [0.1, 0.5]
also = ["defence coefficient k[Russia, USA]"]
[[sensitivity.outputs]]
variable = "arms[USA]"
[[sensitivity.outputs]]
metric = "final arms[China]"
""",
        encoding="utf-8",
    )
    assert main(["run", str(config), "--out", str(tmp_path / "out")]) == 0
    with xr.open_dataset(tmp_path / "out" / "sensitivity" / "indices.nc") as indices:
        assert list(indices["parameter"].values) == ["grievance g[China]", "defence coefficient k[USA, Russia]"]
        st = indices["ST"].sel(output="arms[USA] final").values
    # Over ten years the USA's arms answer the USA-Russia reaction, hardly China's grievance:
    # were the sampled elements mixed up, the indices would say otherwise.
    assert st[1] > 0.5
    assert st[0] < 0.2
    with xr.open_dataset(tmp_path / "out" / "sensitivity" / "ensemble.nc") as ensemble:
        usa = ensemble["output: arms[USA] final"].values
        k = ensemble["defence_coefficient_k[USA,Russia]"].values
    assert np.corrcoef(k, usa)[0, 1] > 0.5  # a stronger reaction to Russia arms the USA more
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    study = manifest["engine"]["study"]
    assert study["engine"] in ("compiled (numpy)", "compiled (numba)")  # the backend is chosen automatically
    assert (study["workers"], study["runs"]) == ("1", 64)
    assert manifest["versions"]["SALib"] != "not installed"


def test_a_subscripted_output_must_name_its_element(tmp_path: Path) -> None:
    from armsdyn import ConfigError

    text = f"""
[experiment]
name = "x"
model = "{(MODELS / "richardson_n.mdl").as_posix()}"
[sensitivity]
method = "latin"
[[sensitivity.parameters]]
name = "grievance g[Chna]"
bounds = [50, 200]
[[sensitivity.outputs]]
variable = "arms"
"""
    config = tmp_path / "bad.toml"
    config.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        armsdyn.load_config(config)
    message = str(err.value)
    assert "sensitivity.parameters[0].name" in message
    assert "China" in message
    assert "sensitivity.outputs[0].variable: 'arms' has one value per element; name one" in message


def test_a_perfectly_monotone_output_draws_its_spearman_bar(tmp_path: Path) -> None:
    """One parameter and an output that rises with it exactly: rho = 1, an interval of zero width, a figure."""
    config = tmp_path / "monotone.toml"
    config.write_text(
        f"""
[experiment]
name = "monotone"
model = "{(MODELS / "richardson.mdl").as_posix()}"
[time]
initial = 0
final = 5
step = 0.125
[sensitivity]
method = "latin"
samples = 40
seed = 3
[[sensitivity.parameters]]
name = "grievance g"
bounds = [1, 20]
[[sensitivity.outputs]]
variable = "arms X"
""",
        encoding="utf-8",
    )
    proc = call_cli("run", config, "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    with xr.open_dataset(tmp_path / "out" / "sensitivity" / "indices.nc") as indices:
        assert float(indices["spearman"].sel(output="arms X final", parameter="grievance g")) == pytest.approx(1.0)
    assert list((tmp_path / "out" / "figures").glob("sensitivity_latin_*.png"))


def test_an_element_name_with_a_space_stays_a_coordinate_on_disk(tmp_path: Path) -> None:
    """Sampling "grievance g[Austria Hungary]": netCDF refuses a coordinate named with a space (xarray warns,
    an error here, and writes it as a data variable); the key has none, the long_name keeps the name."""
    from armsdyn.cli import main

    config = tmp_path / "ah.toml"
    config.write_text(
        f"""
[experiment]
name = "ah"
model = "{(MODELS / "richardson_n_1909.mdl").as_posix()}"
[time]
initial = 0
final = 2
step = 0.125
[sensitivity]
method = "latin"
samples = 8
[[sensitivity.parameters]]
name = "grievance g[Austria Hungary]"
bounds = [0, 1]
[[sensitivity.outputs]]
variable = "arms[France]"
""",
        encoding="utf-8",
    )
    assert main(["run", str(config), "--out", str(tmp_path / "out")]) == 0
    with xr.open_dataset(tmp_path / "out" / "sensitivity" / "ensemble.nc") as ensemble:
        coordinate = ensemble.coords["grievance_g[Austria_Hungary]"]
        assert coordinate.attrs["long_name"] == "grievance g[Austria Hungary]"
        assert coordinate.dims == ("run",)


# --- Sobol bootstrap in bounded batches (issue 19) --------------------------------------------


def _ishigami_study_outputs() -> tuple[armsdyn.Experiment, np.ndarray, xr.Dataset]:
    """The Ishigami study run through the pipeline: the experiment, its outputs per run, its indices."""
    exp = armsdyn.load_config(DATA / "ishigami.toml")
    ensemble, indices = run_study(exp)
    return exp, ensemble["output: Y final"].to_numpy(), indices


def test_sobol_indices_of_a_study_equal_salibs_own_analysis() -> None:
    from SALib.analyze import sobol

    exp, y, indices = _ishigami_study_outputs()
    spec = exp.sensitivity
    assert spec.seed != 0  # SALib draws from numpy's global generator for seed 0
    ref = sobol.analyze(spec.problem(), y, calc_second_order=spec.second_order, seed=spec.seed)
    row = indices.sel(output="Y final")
    for key in ("S1", "ST", "S1_conf", "ST_conf"):
        np.testing.assert_array_equal(row[key].values, np.asarray(ref[key]), err_msg=key)


@pytest.mark.parametrize("second_order", [False, True])
def test_sobol_bootstrap_in_batches_equals_the_unbatched_computation(second_order: bool) -> None:
    from SALib.analyze import sobol as salib_sobol
    from SALib.sample import sobol as salib_sample
    from SALib.test_functions import Ishigami

    from armsdyn.sensitivity_methods import _BYTES_PER_DRAW, SOBOL_RESAMPLES, bootstrap_columns, sobol_indices

    problem = {"num_vars": 3, "names": ["x1", "x2", "x3"], "bounds": [[-math.pi, math.pi]] * 3}
    x = salib_sample.sample(problem, 512, calc_second_order=second_order, seed=3)
    y = Ishigami.evaluate(x)
    n = 512
    whole = sobol_indices(problem, y, second_order=second_order, seed=19, batch_bytes=2**40)
    assert bootstrap_columns(n, SOBOL_RESAMPLES, 2**40) == [(0, SOBOL_RESAMPLES)]
    # Widths 2 (the least), 3 (a last single column folded into the batch before it) and 7.
    for width in (2, 3, 7):
        batch = width * _BYTES_PER_DRAW * n
        columns = bootstrap_columns(n, SOBOL_RESAMPLES, batch)
        assert len(columns) > 1
        assert all(stop - start >= 2 for start, stop in columns)
        batched = sobol_indices(problem, y, second_order=second_order, seed=19, batch_bytes=batch)
        assert batched.keys() == whole.keys()
        for key in whole:
            np.testing.assert_array_equal(batched[key], whole[key], err_msg=f"{key}, batches of {width}")
    ref = salib_sobol.analyze(problem, y, calc_second_order=second_order, seed=19)
    for key in whole:
        np.testing.assert_array_equal(whole[key], np.asarray(ref[key]), err_msg=key)
    # Another seed draws other resamples: the intervals change, the indices do not.
    other = sobol_indices(problem, y, second_order=second_order, seed=20)
    np.testing.assert_array_equal(other["S1"], whole["S1"])
    assert not np.array_equal(other["S1_conf"], whole["S1_conf"])


def test_sobol_intervals_with_seed_zero_are_reproducible() -> None:
    from SALib.sample import sobol as salib_sample
    from SALib.test_functions import Ishigami

    from armsdyn.sensitivity_methods import sobol_indices

    problem = {"num_vars": 3, "names": ["x1", "x2", "x3"], "bounds": [[-math.pi, math.pi]] * 3}
    y = Ishigami.evaluate(salib_sample.sample(problem, 256, calc_second_order=False, seed=1))
    first, again = sobol_indices(problem, y, seed=0), sobol_indices(problem, y, seed=0)
    np.testing.assert_array_equal(first["S1_conf"], again["S1_conf"])


def test_sobol_bootstrap_memory_is_bounded_by_a_batch() -> None:
    """SALib's analysis holds every resample at once; the batched one a batch at a time."""
    import tracemalloc

    from SALib.analyze import sobol as salib_sobol

    from armsdyn.sensitivity_methods import SOBOL_RESAMPLES, bootstrap_columns, sobol_indices

    # Both analyses' memory grows linearly with the rows: at 10,000 SALib's holds about 13 times
    # ours (65 MB against 5 MB), far past the factor 4 checked, in a third of 20,000 rows' time.
    d, n = 8, 10_000
    problem = {"num_vars": d, "names": [f"x{i}" for i in range(d)], "bounds": [[0.0, 1.0]] * d}
    x = np.random.default_rng(2).random((n * (d + 2), d))
    y = x[:, 0] + 2 * x[:, 1] * x[:, 2] + 0.1 * x[:, 3] ** 2
    budget = 4 * 2**20
    assert len(bootstrap_columns(n, SOBOL_RESAMPLES, budget)) > 1  # the budget does cut the resamples

    def peak(function) -> int:
        tracemalloc.start()
        try:
            function()
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    ours = peak(lambda: sobol_indices(problem, y, seed=5, batch_bytes=budget))
    theirs = peak(lambda: salib_sobol.analyze(problem, y, calc_second_order=False, seed=5))
    # The analysis keeps the output's normalised copy and its A, B and AB columns (about 3 times y);
    # the bootstrap adds at most one batch.
    assert ours <= 4 * y.nbytes + budget, (ours, y.nbytes)
    assert theirs > 4 * ours  # what the batches save at this size: 100 resamples of 10,000 rows


def test_a_study_of_a_scenario_with_a_time_series_runs_it_in_every_sample(tmp_path: Path) -> None:
    """A study's scenario may set a time series (the config refused it): each run takes it, as PySD does."""
    from dataclasses import replace

    from armsdyn.specs import Scenario

    series = ((0.0, 1.0), (30.0, 3.0))
    text = OAT.replace('"grievance h" = 1.0', '"grievance h" = [[0, 1.0], [30, 3.0]]')
    exp = armsdyn.load_config(write_config(tmp_path, text))
    # Two worker processes and small chunks: the shared series travels with every chunk.
    ensemble, _ = run_study(exp, workers=2, chunk_size=4)
    (tmp_path / "constant").mkdir()
    constant, _ = run_study(armsdyn.load_config(write_config(tmp_path / "constant", OAT)))
    got = ensemble["output: arms X final"].values
    assert not np.allclose(got, constant["output: arms X final"].values)  # the series acts in every run
    base = exp.scenario(exp.sensitivity.scenario).parameters
    assert base["grievance h"] == series
    sampled = [p.name for p in exp.sensitivity.parameters]
    by_name = {c.attrs.get("long_name", k): c.values for k, c in ensemble.coords.items() if c.dims == ("run",)}
    runs = [0, 4, 8]
    scenarios = tuple(
        Scenario(f"run{i}", parameters={**base, **{name: float(by_name[name][i]) for name in sampled}}) for i in runs
    )
    reference = armsdyn.run(replace(exp, scenarios=scenarios, sensitivity=None, engine="pysd"))
    final = reference["arms_x"].isel(time=-1).values
    np.testing.assert_allclose(got[runs], final, rtol=1e-9)

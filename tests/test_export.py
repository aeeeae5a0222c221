"""armsdyn export: tidy tables of real results folders, read back and compared with results.nc."""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import armsdyn
from armsdyn.errors import ResultsError
from armsdyn.export import export_results
from tests.conftest import CONFIGS, RACE_ATTRIBUTION, call_cli, write_config

# One worker runs the modules that read the session's run of configs/richardson.toml
# (tests/conftest.py's richardson_results: the run and its two figures, about 4 s of CPU), so
# it runs once, not once on each worker: test_cli, test_export and test_figures.
pytestmark = pytest.mark.xdist_group("richardson_run")

#: A Richardson race that overflows (inf, then NaN) beside a stable one, and a small Latin study.
STUDY = """
[time]
initial = 0
final = 40
step = 0.125
saveper = 0.5

[[scenarios]]
name = "stable"
description = "fatigue wins, with a comma"
parameters = { "defence coefficient k" = 0.5, "defence coefficient l" = 0.5 }

[[scenarios]]
name = "overflow"
parameters = { "defence coefficient k" = 400.0, "defence coefficient l" = 400.0 }

[output]
variables = ["arms X", "arms Y", "arming rate X"]

[sensitivity]
method = "latin"
samples = 24
seed = 7
scenario = "stable"
fan_variables = ["arms X"]

[[sensitivity.parameters]]
name = "defence coefficient k"
bounds = [0.1, 0.9]

[[sensitivity.parameters]]
name = "grievance g"
bounds = [0.0, 2.0]

[[sensitivity.outputs]]
variable = "arms X"
aggregate = "final"

[[sensitivity.outputs]]
variable = "arms Y"
aggregate = "max"
"""


@pytest.fixture(scope="module")
def folders(
    tmp_path_factory: pytest.TempPathFactory, richardson_results: subprocess.CompletedProcess[str]
) -> dict[str, Path]:
    """Real results folders: Richardson's regimes, the subscripted four nations, a study with an overflow."""
    base = tmp_path_factory.mktemp("export")
    study = write_config(base, STUDY, name="study")
    return {
        # The session's run of configs/richardson.toml, copied: an export writes inside the folder.
        "richardson": Path(shutil.copytree(richardson_results.args[-1], base / "richardson")),
        "four_nations": armsdyn.run_experiment(_four_nations(base), out=base / "four_nations"),
        "study": armsdyn.run_experiment(study, out=base / "study", workers=1),
    }


def _four_nations(folder: Path, extra: str = "") -> Path:
    """configs/richardson_1909_four_nations.toml (and `extra` tables) without its figure, written in `folder`.

    An export reads results.nc, the study's files and the manifest, never a figure: drawing
    the config's four panels would cost every run of it a second or two.
    """
    text = (CONFIGS / "richardson_1909_four_nations.toml").read_text(encoding="utf-8")
    text = text.replace('"../models/', f'"{(CONFIGS.parent / "models").as_posix()}/')
    assert text.count("[[figures]]") == 1
    path = folder / "four_nations.toml"
    path.write_text(re.sub(r"\[\[figures\]\]\n(.+\n)*", "", text) + extra, encoding="utf-8")
    return path


def _read_exact(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _as_float(text: str) -> float:
    return float(text) if text else np.nan


def _rebuild(rows: list[dict[str, str]], ds: xr.Dataset, case: str = "scenario") -> dict[str, np.ndarray]:
    """The long rows back into one array per variable, in the Dataset's own (case, time, element) order."""
    by_variable: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_variable.setdefault(row["variable"], []).append(row)
    arrays = {}
    for name, group in by_variable.items():
        da = next(v for k, v in ds.data_vars.items() if v.attrs.get("long_name", k) == name)
        extra = [d for d in da.dims if d not in (da.dims[0], "time")]
        shape = da.transpose(da.dims[0], "time", *extra).shape
        cases = [str(c) for c in ds[da.dims[0]].values] if da.dims[0] in ds.coords else None
        times = list(ds["time"].values)
        elements = sorted({r["element"] for r in group}, key=[r["element"] for r in group].index)
        out = np.full((*shape[:2], len(elements)), -12345.0)
        for r in group:
            i = cases.index(r[case]) if cases else int(r[case])
            out[i, times.index(float(r["time"])), elements.index(r["element"])] = _as_float(r["value"])
        arrays[name] = out.reshape(shape)
    return arrays


@pytest.mark.parametrize("name", ["richardson", "four_nations", "study"])
def test_reading_the_csv_back_reproduces_results_nc_exactly(folders: dict[str, Path], name: str) -> None:
    folder = export_results(folders[name], force=True)
    assert folder == folders[name] / "export"
    with xr.open_dataset(folders[name] / "results.nc") as ds:
        ds = ds.load()
        rows = _read_exact(folder / "results.csv")
        assert list(rows[0]) == ["scenario", "time", "variable", "element", "value", "units"]
        assert len(rows) == sum(da.size for da in ds.data_vars.values())
        arrays = _rebuild(rows, ds)
        assert set(arrays) == {da.attrs["long_name"] for da in ds.data_vars.values()}
        for da in ds.data_vars.values():
            extra = [d for d in da.dims if d not in ("scenario", "time")]
            expected = da.transpose("scenario", "time", *extra).values
            got = arrays[da.attrs["long_name"]]
            # Bit for bit, NaN where NaN and inf where inf.
            assert got.tobytes() == expected.tobytes() or np.array_equal(got, expected, equal_nan=True)
            assert np.array_equal(got, expected, equal_nan=True)
            units = {r["units"] for r in rows if r["variable"] == da.attrs["long_name"]}
            assert units == {da.attrs["units"]}
        # pandas reads the same numbers back (its default parser is exact).
        table = pd.read_csv(folder / "results.csv")
        assert np.array_equal(table["value"].to_numpy(), [_as_float(r["value"]) for r in rows], equal_nan=True)


def test_the_overflowing_scenario_round_trips_its_inf_and_nan(folders: dict[str, Path]) -> None:
    with xr.open_dataset(folders["study"] / "results.nc") as ds:
        arms = ds["arms_x"].sel(scenario="overflow").values
    assert np.isinf(arms).any() or np.isnan(arms).any(), "the overflow scenario should leave finite numbers"
    folder = export_results(folders["study"], force=True)
    values = [_as_float(r["value"]) for r in _read_exact(folder / "results.csv") if r["scenario"] == "overflow"]
    assert any(np.isnan(v) or np.isinf(v) for v in values)


def test_subscripted_variables_name_their_elements(folders: dict[str, Path]) -> None:
    folder = export_results(folders["four_nations"], force=True)
    rows = _read_exact(folder / "results.csv")
    assert {r["element"] for r in rows} == {"France", "Russia", "Germany", "Austria Hungary"}
    parameters = _read_exact(folder / "parameters.csv")
    k = {
        (r["scenario"], r["element"]): float(r["value"])
        for r in parameters
        if r["parameter"] == "defence coefficient k"
    }
    with xr.open_dataset(folders["four_nations"] / "results.nc") as ds:
        expected = ds["defence_coefficient_k"].sel(scenario="entente_restraint", state="France", rival="Germany")
        assert k[("entente_restraint", "France, Germany")] == float(expected) == 0.225
        assert len(k) == ds["defence_coefficient_k"].size


def test_scenarios_and_parameters_tables(folders: dict[str, Path]) -> None:
    folder = export_results(folders["richardson"], force=True)
    scenarios = pd.read_csv(folder / "scenarios.csv", keep_default_na=False)
    with xr.open_dataset(folders["richardson"] / "results.nc") as ds:
        assert list(scenarios["scenario"]) == [str(s) for s in ds["scenario"].values]
        assert list(scenarios["description"]) == [str(s) for s in ds["scenario_description"].values]
        parameters = pd.read_csv(folder / "parameters.csv")
        grievance = parameters[parameters["parameter"] == "grievance g"].set_index("scenario")["value"]
        assert grievance.to_dict() == {
            str(s): float(v) for s, v in zip(ds["scenario"].values, ds["grievance_g"].values, strict=True)
        }
        assert set(parameters[parameters["parameter"] == "grievance g"]["units"]) == {ds["grievance_g"].attrs["units"]}


def test_the_data_dictionary_describes_every_variable(folders: dict[str, Path]) -> None:
    folder = export_results(folders["study"], force=True)
    dictionary = pd.read_csv(folder / "dictionary.csv", keep_default_na=False)
    assert list(dictionary.columns) == ["table", "variable", "name", "units", "description"]
    results = dictionary[dictionary["table"] == "results"].set_index("variable")
    assert results.loc["time", "units"] == "Year"
    with xr.open_dataset(folders["study"] / "results.nc") as ds:
        for key, da in ds.data_vars.items():
            row = results.loc[da.attrs["long_name"]]
            assert (row["name"], row["units"]) == (key, da.attrs["units"])
            assert row["description"] == " ".join(da.attrs["description"].split())
            assert row["description"]
    tables = set(dictionary["table"])
    assert {"results", "parameters", "ensemble_runs", "ensemble_series"} <= tables
    # Every variable of every exported table has a dictionary row.
    for table, column in (("results", "variable"), ("ensemble_runs", "variable"), ("parameters", "parameter")):
        names = set(pd.read_csv(folder / f"{table}.csv")[column])
        assert names <= set(dictionary[dictionary["table"] == table]["variable"]), table


def test_the_sensitivity_ensemble_is_exported(folders: dict[str, Path]) -> None:
    folder = export_results(folders["study"], force=True)
    with xr.open_dataset(folders["study"] / "sensitivity" / "ensemble.nc") as ensemble:
        ensemble = ensemble.load()
    runs = _read_exact(folder / "ensemble_runs.csv")
    table = {(int(r["run"]), r["role"], r["variable"]): _as_float(r["value"]) for r in runs}
    n = ensemble.sizes["run"]
    assert n == 24
    k = [table[(i, "parameter", "defence coefficient k")] for i in range(n)]
    assert np.array_equal(k, ensemble["defence_coefficient_k"].values)
    for label in ("arms X final", "arms Y max"):
        got = [table[(i, "output", label)] for i in range(n)]
        assert np.array_equal(got, ensemble[f"output: {label}"].values, equal_nan=True)
    series = _read_exact(folder / "ensemble_series.csv")
    rebuilt = _rebuild(series, ensemble.rename({"fan_run": "run"}), case="run")
    assert np.array_equal(rebuilt["arms X"], ensemble["arms_x"].values)
    indices = pd.read_csv(folder / "indices.csv")
    with xr.open_dataset(folders["study"] / "sensitivity" / "indices.nc") as saved:
        rho = indices[(indices["index"] == "spearman") & (indices["output"] == "arms X final")]
        expected = saved["spearman"].sel(output="arms X final")
        assert rho.set_index("parameter")["value"].to_dict() == {
            str(p): float(v) for p, v in zip(expected["parameter"].values, expected.values, strict=True)
        }
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["export"]["rows"]["ensemble_runs"] == len(runs)
    assert set(manifest["source"]["files"]) == {
        "results.nc",
        "manifest.json",
        "sensitivity/ensemble.nc",
        "sensitivity/indices.nc",
    }
    assert set(manifest["files"]) == {p.name for p in folder.iterdir()} - {"manifest.json"}


def test_no_study_no_ensemble_tables(folders: dict[str, Path], tmp_path: Path) -> None:
    folder = export_results(folders["richardson"], tmp_path / "out")
    assert sorted(p.name for p in folder.iterdir()) == [
        "dictionary.csv",
        "manifest.json",
        "parameters.csv",
        "results.csv",
        "scenarios.csv",
    ]


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="pyarrow is not installed (armsdyn[export])")
def test_parquet_round_trips(folders: dict[str, Path], tmp_path: Path) -> None:
    folder = export_results(folders["four_nations"], tmp_path / "pq", fmt="parquet")
    table = pd.read_parquet(folder / "results.parquet")
    with xr.open_dataset(folders["four_nations"] / "results.nc") as ds:
        arms = table[table["variable"] == "arms"]["value"].to_numpy()
        assert np.array_equal(arms, ds["arms"].transpose("scenario", "time", "state").values.ravel())


def test_parquet_without_pyarrow_says_what_to_install(
    folders: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As where pyarrow is not installed: importing it fails (in this process, pyarrow loaded or not).
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    proc = call_cli("export", folders["richardson"], "--format", "parquet", "--out", tmp_path / "pq")
    assert proc.returncode == 2, proc.stderr
    assert "pyarrow" in proc.stderr
    assert "armsdyn[export]" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "pq").exists()


def test_cli_writes_refuses_and_replaces(folders: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "tables"
    proc = call_cli("export", folders["richardson"], "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert (out / "results.csv").is_file()
    first = (out / "results.csv").read_bytes()
    proc = call_cli("export", folders["richardson"], "--out", out)
    assert proc.returncode == 2
    assert str(out) in proc.stderr
    assert "--force" in proc.stderr
    proc = call_cli("export", folders["richardson"], "--out", out, "--force")
    assert proc.returncode == 0, proc.stderr
    assert (out / "results.csv").read_bytes() == first  # the same results give the same bytes
    assert not list(tmp_path.glob(".tables.*"))  # no partial folder or lock left behind


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda tmp: tmp / "missing", "does not exist"),
        (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "has no results.nc"),
        (lambda tmp: (tmp / "file.nc").write_text("x") and tmp / "file.nc", "is not a folder"),
    ],
)
def test_cli_bad_results_folder_exits_2_naming_it(tmp_path: Path, make: object, says: str) -> None:
    path = make(tmp_path)  # type: ignore[operator]
    proc = call_cli("export", path)
    assert proc.returncode == 2
    assert str(path) in proc.stderr
    assert says in proc.stderr
    assert "results folder written by 'armsdyn run'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_unknown_format_lists_the_allowed(folders: dict[str, Path]) -> None:
    proc = call_cli("export", folders["richardson"], "--format", "xlsx")
    assert proc.returncode == 2
    assert "csv" in proc.stderr
    assert "parquet" in proc.stderr


def test_export_never_replaces_the_results_folder(folders: dict[str, Path]) -> None:
    proc = call_cli("export", folders["richardson"], "--out", folders["richardson"], "--force")
    assert proc.returncode == 2
    assert "name another export folder" in proc.stderr
    assert (folders["richardson"] / "results.nc").is_file()


def test_a_failed_export_leaves_the_earlier_one(
    folders: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = export_results(folders["richardson"], tmp_path / "out")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = {"n": 0}
    original = pd.DataFrame.to_csv

    def failing(self: pd.DataFrame, *args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", failing)
    with pytest.raises(ResultsError, match="nothing was written"):
        export_results(folders["richardson"], out, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    calls["n"] = 0
    with pytest.raises(ResultsError, match="nothing was written"):
        export_results(folders["richardson"], tmp_path / "new")
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_study_of_subscripted_elements_exports_them_as_elements(tmp_path: Path) -> None:
    config = _four_nations(
        tmp_path,
        """
[sensitivity]
method = "latin"
samples = 12
seed = 3
scenario = "richardson_fit"
fan_variables = ["arms[Germany]"]

[[sensitivity.parameters]]
name = "grievance g[Germany]"
bounds = [-40.0, -30.0]

[[sensitivity.parameters]]
name = "defence coefficient k[Germany, France]"
bounds = [0.3, 0.6]

[[sensitivity.outputs]]
variable = "arms[Germany]"
aggregate = "final"
""",
    )
    folder = export_results(armsdyn.run_experiment(config, out=tmp_path / "r", workers=1))
    runs = pd.read_csv(folder / "ensemble_runs.csv", keep_default_na=False)
    grievance = runs[(runs["role"] == "parameter") & (runs["variable"] == "grievance g")]
    sampled = grievance[grievance["element"] == "Germany"]
    assert len(sampled) == 12
    assert sampled["value"].between(-40.0, -30.0).all()
    assert sampled["value"].nunique() == 12
    assert (grievance[grievance["element"] == "France"]["value"] == -35.4).all()  # not sampled: the scenario's
    # Every element's value per run is a parameter, whether netCDF kept it as a coordinate or not.
    grievance = runs[runs["variable"] == "grievance g"]
    assert set(grievance["role"]) == {"parameter"}
    assert set(grievance["element"]) == {"France", "Russia", "Germany", "Austria Hungary"}
    assert set(runs[runs["role"] == "output"]["variable"]) == {"arms[Germany] final"}
    k = runs[(runs["variable"] == "defence coefficient k") & (runs["element"] == "Germany, France")]
    assert k["value"].between(0.3, 0.6).all()
    series = pd.read_csv(folder / "ensemble_series.csv", keep_default_na=False)
    assert set(zip(series["variable"], series["element"], strict=True)) == {("arms", "Germany")}
    with xr.open_dataset(tmp_path / "r" / "sensitivity" / "ensemble.nc") as ensemble:
        key = next(k for k, v in ensemble.data_vars.items() if v.dims[0] == "fan_run")
        assert np.array_equal(series["value"].to_numpy(), ensemble[key].values.ravel())
    dictionary = pd.read_csv(folder / "dictionary.csv", keep_default_na=False)
    rows = dictionary[(dictionary["table"] == "ensemble_series") & (dictionary["variable"] == "arms")]
    assert len(rows) == 1
    assert rows["units"].item() == "arms"


def test_the_loop_analysis_is_exported(tmp_path: Path) -> None:
    """loops.nc's attribution and loop scores become long tables that equal the netCDF values."""
    body = RACE_ATTRIBUTION + "\n[loop_dominance]\n"
    out = tmp_path / "out"
    assert call_cli("run", write_config(tmp_path, body), "--out", out).returncode == 0
    folder = export_results(out)
    shares = pd.read_csv(folder / "attribution.csv", keep_default_na=False)
    assert list(shares.columns) == ["scenario", "stock", "group", "kind", "share", "change"]
    with xr.open_dataset(out / "loops.nc") as loops:
        for row in shares.itertuples():
            cell = {"scenario": row.scenario, "attributed": row.stock, "loop_group": row.group}
            assert row.share == float(loops["attribution_share"].sel(cell))
            assert row.change == float(loops["attribution_change"].sel(cell))
        assert shares.groupby("scenario")["share"].sum().to_numpy() == pytest.approx([1.0, 1.0])
        listed = pd.read_csv(folder / "loops.csv")
        assert list(listed["loop"]) == [str(v) for v in loops["loop"].values]
        assert set(listed["polarity"]) <= {"R", "B", "U", "reinforcing", "balancing", "undetermined", "mixed"}
        scores = pd.read_csv(folder / "loop_scores.csv")
        assert len(scores) == loops["loop_score"].size
        one = scores[(scores["scenario"] == "race") & (scores["loop"] == listed["loop"][0])]
        want = loops["relative_loop_score"].sel(scenario="race", loop=listed["loop"][0]).values
        np.testing.assert_array_equal(one["relative_score"].to_numpy(), want)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert {"attribution", "loops", "loop_scores"} <= set(manifest["tables"])
    assert "loops.nc" in manifest["source"]["files"]

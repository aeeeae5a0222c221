"""armsdyn compare: real results folders differing by a parameter, a model change, a time grid, versions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import armsdyn
from armsdyn.compare import CompareError, compare_results, draw_comparison
from tests.conftest import CONFIGS, MODELS, call_cli

BODY = """
[time]
initial = 0
final = 20
step = 0.0625
saveper = {saveper}

[[scenarios]]
name = "stable"
parameters = {{ "defence coefficient k" = 0.5, "defence coefficient l" = 0.5 }}

[[scenarios]]
name = "asymmetric"
[scenarios.parameters]
"defence coefficient k" = 0.9
"defence coefficient l" = 0.3
"fatigue coefficient a" = 0.6
"fatigue coefficient b" = 1.2
"grievance g" = {g}
"grievance h" = 0.5

[output]
variables = ["arms X", "arms Y", "arming rate X"]
"""


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A base run, its re-run, and runs differing by a parameter, the model and the time grid."""
    base = tmp_path_factory.mktemp("compare")
    (base / "m").mkdir()
    model = Path(shutil.copy(MODELS / "richardson.mdl", base / "richardson.mdl"))
    text = model.read_text(encoding="utf-8")
    assert "initial arms X=\n\t1\n" in text
    # The same config text beside a model whose initial arms X is 3 instead of 1.
    changed = base / "m" / "richardson.mdl"
    changed.write_text(text.replace("initial arms X=\n\t1\n", "initial arms X=\n\t3\n"), encoding="utf-8")
    head = '[experiment]\nname = "exp"\nmodel = "richardson.mdl"\n'
    configs = {
        "a": (base / "exp.toml", BODY.format(g=1.5, saveper=0.5)),
        "b": (base / "exp_b.toml", BODY.format(g=2.5, saveper=0.5)),
        "model": (base / "m" / "exp.toml", BODY.format(g=1.5, saveper=0.5)),
        "grid": (base / "exp_t.toml", BODY.format(g=1.5, saveper=1.0)),
    }
    for path, body in configs.values():
        path.write_text(head + body, encoding="utf-8")
    out = {name: armsdyn.run_experiment(config, out=base / f"out_{name}") for name, (config, _) in configs.items()}
    out["again"] = armsdyn.run_experiment(configs["a"][0], out=base / "out_again")
    return out


def test_a_rerun_of_the_same_config_is_identical(folders: dict[str, Path]) -> None:
    c = compare_results(folders["a"], folders["again"])
    assert c.identical
    assert not c.metrics["differs"].any()
    assert len(c.metrics) > 0
    assert (c.variables["max_abs_difference"] == 0).all()
    assert set(c.variables["variable"]) == {"arms X", "arms Y", "arming rate X"}
    # Only the command line (its --out) differs: nothing that would explain a difference.
    assert set(c.manifest["key"]) <= {"command"}
    assert c.config_diff == []
    assert "0 of" in c.report()


def test_a_parameter_change_is_found_and_explained(folders: dict[str, Path]) -> None:
    c = compare_results(folders["a"], folders["b"])
    assert not c.identical
    # Metrics: only the scenario whose grievance changed differs, by B - A from the two metrics.csv.
    changed = c.metrics[c.metrics["differs"]]
    assert set(changed["scenario"]) == {"asymmetric"}
    metrics_a = pd.read_csv(folders["a"] / "metrics.csv", index_col=0)
    metrics_b = pd.read_csv(folders["b"] / "metrics.csv", index_col=0)
    row = c.metrics.set_index(["scenario", "metric"]).loc[("asymmetric", "final arms X")]
    assert row["a"] == metrics_a.at["asymmetric", "final arms X"]
    assert row["b"] == metrics_b.at["asymmetric", "final arms X"]
    assert row["difference"] == row["b"] - row["a"] > 0  # more grievance, more arms
    # Variables: the largest difference matches the netCDF files, and is in the changed scenario.
    with xr.open_dataset(folders["a"] / "results.nc") as ds_a, xr.open_dataset(folders["b"] / "results.nc") as ds_b:
        expected = float(np.abs(ds_b["arms_x"] - ds_a["arms_x"]).max())
        stable = float(np.abs(ds_b["arms_x"] - ds_a["arms_x"]).sel(scenario="stable").max())
    arms = c.variables.set_index("variable").loc["arms X"]
    assert arms["max_abs_difference"] == expected > 0
    assert stable == 0
    assert arms["scenario"] == "asymmetric"
    assert arms["b"] - arms["a"] == pytest.approx(expected)
    # Provenance: the config changed, not the model or the versions; the diff shows the parameter.
    keys = set(c.manifest["key"])
    assert "config.sha256" in keys
    assert not any(k.startswith(("model.", "versions.")) for k in keys)
    removed = [line for line in c.config_diff if line.startswith("-") and not line.startswith("---")]
    added = [line for line in c.config_diff if line.startswith("+") and not line.startswith("+++")]
    assert len(removed) == len(added) == 1
    assert removed[0] == '-"grievance g" = 1.5'
    assert added[0] == '+"grievance g" = 2.5'
    report = c.report()
    assert "config.sha256" in report
    assert '"grievance g" = 2.5' in report
    assert "final arms X" in report


def test_a_model_change_shows_in_the_model_hash(folders: dict[str, Path]) -> None:
    c = compare_results(folders["a"], folders["model"])
    keys = set(c.manifest["key"])
    assert {"model.sha256", "model.path"} <= keys
    assert c.config_diff == []  # the same config text: the model explains the difference
    assert c.variables.set_index("variable").loc["arms X", "max_abs_difference"] > 0
    initial = c.variables.set_index("variable").loc["arms X"]
    assert initial["max_abs_difference"] == pytest.approx(2.0)  # initial arms X 1 -> 3
    assert initial["time"] == 0.0


def test_version_differences_are_reported(folders: dict[str, Path], tmp_path: Path) -> None:
    copy = Path(shutil.copytree(folders["a"], tmp_path / "other_versions"))
    manifest = json.loads((copy / "manifest.json").read_text(encoding="utf-8"))
    recorded = manifest["versions"]["pysd"]
    manifest["versions"]["pysd"] = "0.0.1"
    (copy / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    c = compare_results(folders["a"], copy)
    row = c.manifest.set_index("key").loc["versions.pysd"]
    assert (row["a"], row["b"]) == (recorded, "0.0.1")
    assert f"versions.pysd: {recorded} -> 0.0.1" in c.report()
    assert c.identical


def test_different_time_grids_are_compared_at_common_times(folders: dict[str, Path]) -> None:
    c = compare_results(folders["a"], folders["grid"])
    assert any("time grids differ" in note for note in c.notes)
    assert "time.saveper" in set(c.manifest["key"])
    # The same runs saved less often: equal where both saved.
    assert (c.variables["max_abs_difference"] == 0).all()


def test_the_figure_draws_the_variables_that_differ(folders: dict[str, Path], tmp_path: Path) -> None:
    c = compare_results(folders["a"], folders["b"])
    drawn = draw_comparison(c, tmp_path / "diff.svg", top=2)
    assert drawn == list(c.variables["variable"][:2])
    assert all(c.variables.set_index("variable").loc[v, "max_abs_difference"] > 0 for v in drawn)
    svg = (tmp_path / "diff.svg").read_text(encoding="utf-8")
    assert "asymmetric" in svg
    assert "stable" not in svg  # an unchanged scenario is left out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["diff.svg"]


def test_cli_compare_with_a_figure(folders: dict[str, Path], tmp_path: Path) -> None:
    figure = tmp_path / "figs" / "compare.png"
    proc = call_cli("compare", folders["a"], folders["b"], "--figure", figure, "--top", "3")
    assert proc.returncode == 0, proc.stderr
    assert "config.sha256" in proc.stdout
    assert '+"grievance g" = 2.5' in proc.stdout
    assert "final arms X" in proc.stdout
    assert "arms X" in proc.stdout
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in figure.parent.iterdir()) == ["compare.png"]


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--figure", "out.gif"], ".png"),
        (["--figure", "out.png", "--top", "0"], "at least one"),
    ],
)
def test_cli_bad_figure_options_exit_2(folders: dict[str, Path], tmp_path: Path, extra: list[str], says: str) -> None:
    proc = call_cli("compare", folders["a"], folders["b"], *extra, cwd=tmp_path)
    assert proc.returncode == 2
    assert says in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not list(tmp_path.iterdir())


def test_cli_compare_refuses_a_folder_that_is_not_results(folders: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "results.nc").write_text("not netCDF")
    (tmp_path / "notes" / "manifest.json").write_text("{}")
    for bad, says in ((tmp_path / "missing", "does not exist"), (tmp_path / "notes", "cannot read")):
        proc = call_cli("compare", folders["a"], bad)
        assert proc.returncode == 2
        assert str(bad) in proc.stderr
        assert says in proc.stderr
        assert "Traceback" not in proc.stderr


def test_a_bad_figure_name_is_refused_before_reading(folders: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(CompareError, match=r"\.pdf, \.svg, \.png"):
        compare_results(folders["a"], tmp_path / "missing", figure=tmp_path / "x.jpg")


def test_subscripted_variables_are_compared_by_element(tmp_path: Path) -> None:
    text = (CONFIGS / "richardson_1909_four_nations.toml").read_text(encoding="utf-8")
    text = text.replace('"../models/', f'"{MODELS.as_posix()}/')
    # Without its [[figures]] (the last tables): compare reads results, manifest and config, and
    # drawing the figures of both runs was two thirds of this test's time.
    text = text[: text.index("\n[[figures]]")] + "\n"
    assert text.count('"grievance g" = -35.4') == 1
    (tmp_path / "a.toml").write_text(text, encoding="utf-8")
    (tmp_path / "b.toml").write_text(text.replace('"grievance g" = -35.4', '"grievance g" = -30.0'), encoding="utf-8")
    a = armsdyn.run_experiment(tmp_path / "a.toml", out=tmp_path / "a")
    b = armsdyn.run_experiment(tmp_path / "b.toml", out=tmp_path / "b")
    c = compare_results(a, b)
    arms = c.variables.set_index("variable").loc["arms"]
    with xr.open_dataset(a / "results.nc") as ds_a, xr.open_dataset(b / "results.nc") as ds_b:
        diff = np.abs(ds_b["arms"] - ds_a["arms"])
        assert arms["max_abs_difference"] == float(diff.max())
        assert arms["element"] == str(diff.idxmax("state").sel(scenario=arms["scenario"], time=arms["time"]).item())
    drawn = draw_comparison(c, tmp_path / "diff.svg", top=1)
    title = f"{drawn[0]}[{c.variables['element'][0]}]"
    assert title in (tmp_path / "diff.svg").read_text(encoding="utf-8")
    assert any(line.startswith('+"grievance g" = -30.0') for line in c.config_diff)


def test_runs_that_overflow_compare_equal_to_themselves(tmp_path: Path) -> None:
    """inf and NaN where both folders hold them are no difference; a finite value against NaN is."""
    model = Path(shutil.copy(MODELS / "richardson.mdl", tmp_path / "richardson.mdl"))
    body = BODY.format(g=1.5, saveper=0.5).replace('"defence coefficient k" = 0.5', '"defence coefficient k" = 400.0')
    body = body.replace('"defence coefficient l" = 0.5', '"defence coefficient l" = 400.0').replace(
        "final = 20", "final = 40"
    )
    (tmp_path / "exp.toml").write_text(f'[experiment]\nname = "exp"\nmodel = "{model.name}"\n{body}', encoding="utf-8")
    a = armsdyn.run_experiment(tmp_path / "exp.toml", out=tmp_path / "a")
    with xr.open_dataset(a / "results.nc") as ds:
        assert not np.isfinite(ds["arms_x"].sel(scenario="stable").values).all()
    b = Path(shutil.copytree(a, tmp_path / "b"))
    c = compare_results(a, b)
    assert c.identical
    assert (c.variables["max_abs_difference"] == 0).all()
    # B's overflow replaced by finite numbers: an infinite difference, at the first non-finite value.
    with xr.open_dataset(a / "results.nc") as ds:
        ds = ds.load()
    ds["arms_x"] = ds["arms_x"].fillna(0.0).where(np.isfinite(ds["arms_x"].fillna(0.0)), 0.0)
    (b / "results.nc").unlink()
    ds.to_netcdf(b / "results.nc", engine="netcdf4")
    arms = compare_results(a, b).variables.set_index("variable").loc["arms X"]
    assert arms["max_abs_difference"] == np.inf
    assert arms["scenario"] == "stable"
    assert not np.isfinite(arms["a"])
    assert arms["b"] == 0.0


def test_cli_compare_writes_its_tables(folders: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "comparison"
    proc = call_cli("compare", folders["a"], folders["b"], "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "config.diff",
        "manifest.json",
        "manifest_differences.csv",
        "metrics.csv",
        "report.txt",
        "variables.csv",
    ]
    c = compare_results(folders["a"], folders["b"])
    metrics = pd.read_csv(out / "metrics.csv")
    assert len(metrics) == len(c.metrics)  # every metric, for a robustness table
    row = metrics.set_index(["scenario", "metric"]).loc[("asymmetric", "final arms X")]
    expected = c.metrics.set_index(["scenario", "metric"]).loc[("asymmetric", "final arms X")]
    assert float(row["difference"]) == expected["difference"]
    variables = pd.read_csv(out / "variables.csv", keep_default_na=False)
    assert list(variables["variable"]) == list(c.variables["variable"])
    assert np.array_equal(variables["max_abs_difference"], c.variables["max_abs_difference"])
    assert "config.sha256" in set(pd.read_csv(out / "manifest_differences.csv")["key"])
    assert '+"grievance g" = 2.5' in (out / "config.diff").read_text(encoding="utf-8")
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["compare"]["b"] == str(folders["b"].resolve())
    assert manifest["identical"] is False
    # An existing folder is refused before anything is compared; --force replaces it.
    proc = call_cli("compare", folders["a"], folders["b"], "--out", out)
    assert proc.returncode == 2
    assert str(out) in proc.stderr
    assert "--force" in proc.stderr
    assert proc.stdout == ""
    proc = call_cli("compare", folders["a"], folders["again"], "--out", out, "--force")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((out / "manifest.json").read_text(encoding="utf-8"))["identical"] is True

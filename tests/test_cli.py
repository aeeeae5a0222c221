"""The command line: in this process where the process is not the point, in a subprocess where it is.

Most tests call :func:`armsdyn.cli.main` with the arguments a user types (``call_cli``),
which is what the ``armsdyn`` command runs; the entry point itself, its exit statuses and the
absence of a traceback are checked with real processes (the installed script).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from armsdyn.cli import COMPARE_TOP, main
from armsdyn.model import file_sha256
from tests.conftest import CONFIGS, MODELS, ROOT, call_cli

# One worker runs the modules that read the session's run of configs/richardson.toml
# (tests/conftest.py's richardson_results: the run and its two figures, about 4 s of CPU), so
# it runs once, not once on each worker: test_cli, test_export and test_figures.
pytestmark = pytest.mark.xdist_group("richardson_run")


@pytest.fixture(scope="module")
def results(richardson_results: subprocess.CompletedProcess[str]) -> Path:
    """The folder of ``armsdyn run configs/richardson.toml`` (tests/conftest.py), after checking its output."""
    assert "[5/5] mutual_goodwill" in richardson_results.stderr  # a progress line per scenario
    assert richardson_results.stderr.rstrip().endswith(f"armsdyn: wrote {richardson_results.args[-1]}")
    return Path(richardson_results.args[-1])


def test_run_writes_every_documented_file(results: Path) -> None:
    for name in ("results.nc", "metrics.csv", "manifest.json"):
        assert (results / name).is_file(), name
    for stem in ("arms_over_time", "phase_portrait"):
        for suffix in (".pdf", ".png"):
            path = results / "figures" / f"{stem}{suffix}"
            assert path.stat().st_size > 1000, path
    assert not [p for p in results.parent.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_results_reopen_with_attrs_and_coords(results: Path) -> None:
    with xr.open_dataset(results / "results.nc") as ds:
        assert ds["arms_x"].dims == ("scenario", "time")
        assert ds["arms_y"].attrs["long_name"] == "arms Y"
        assert ds["arms_y"].attrs["units"] == "arms"
        assert ds["arming_rate_x"].attrs["description"]
        assert ds["time"].attrs["units"] == "Year"
        assert float(ds.sel(scenario="asymmetric")["fatigue_coefficient_b"]) == 1.2
        assert set(ds["scenario"].values) == {
            "stable",
            "runaway",
            "disarmament_spiral",
            "asymmetric",
            "mutual_goodwill",
        }


def test_metrics_table_has_one_row_per_scenario(results: Path) -> None:
    table = pd.read_csv(results / "metrics.csv", index_col="scenario")
    with xr.open_dataset(results / "results.nc") as ds:
        assert list(table.index) == list(ds["scenario"].values)
        np.testing.assert_allclose(table["final arms Y"], ds["arms_y"].isel(time=-1).values)
    assert {"equilibrium X", "eigenvalue 1 real", "stability", "regime", "fault time"} <= set(table.columns)


def test_manifest_records_provenance(results: Path) -> None:
    manifest = json.loads((results / "manifest.json").read_text())
    config = CONFIGS / "richardson.toml"
    assert manifest["config"]["text"] == config.read_text()
    assert manifest["config"]["sha256"] == file_sha256(config)
    assert manifest["model"]["sha256"] == file_sha256(MODELS / "richardson.mdl")
    assert set(manifest["versions"]) >= {"armsdyn", "pysd", "numpy", "xarray"}
    assert manifest["command"][:2] == ["armsdyn", "run"]
    assert manifest["started"] <= manifest["finished"]
    assert "git_commit" in manifest
    for name, digest in manifest["files"].items():
        assert file_sha256(results / name) == digest


def test_existing_results_are_not_overwritten_without_force(results: Path, tmp_path: Path) -> None:
    out = Path(shutil.copytree(results, tmp_path / "r"))  # the same run's folder, this test's to replace
    marker = out / "manifest.json"
    before = marker.read_text()
    # The same experiment without its figures: what is checked is the replacing, and drawing them
    # would cost the forced run three seconds.
    config = tmp_path / "richardson.toml"
    text = (CONFIGS / "richardson.toml").read_text().replace('"../models/', f'"{MODELS.as_posix()}/')
    config.write_text(text[: text.index("[[figures]]")])
    again = call_cli("run", config, "--out", out)
    assert again.returncode == 2
    assert "already exists; pass --force" in again.stderr
    assert marker.read_text() == before
    forced = call_cli("run", config, "--out", out, "--force")
    assert forced.returncode == 0, forced.stderr
    assert json.loads(marker.read_text())["started"] >= json.loads(before)["started"]


def test_bad_config_exits_2_without_traceback_and_creates_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        CONFIGS.joinpath("richardson.toml")
        .read_text()
        .replace('"fatigue coefficient a"', '"fatigue coeficient a"', 1)
        .replace('"../models/richardson.mdl"', f'"{(MODELS / "richardson.mdl").as_posix()}"')
    )
    # In this process: main() returns the exit status the installed command exits with (its own
    # process is test_the_installed_command_shows_help_with_examples_and_exits_0's).
    proc = call_cli("run", bad, cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "did you mean 'fatigue coefficient a'" in proc.stderr
    assert str(bad) in proc.stderr
    assert not (tmp_path / "results").exists()


def test_check_validates_without_running(tmp_path: Path) -> None:
    proc = call_cli("check", CONFIGS / "richardson.toml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "valid" in proc.stdout
    assert not (tmp_path / "results").exists()


def test_models_lists_models_with_parameters() -> None:
    proc = call_cli("models", cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "richardson.mdl" in proc.stdout
    assert "defence coefficient k = 0.9 1/Year" in proc.stdout


def test_describe_lists_variables_with_units_and_docs() -> None:
    proc = call_cli("describe", MODELS / "richardson.mdl")
    assert proc.returncode == 0, proc.stderr
    assert "arms X [arms]" in proc.stdout
    assert "Armaments of state X" in proc.stdout
    missing = call_cli("describe", "nowhere.mdl")
    assert missing.returncode == 2
    assert "nowhere.mdl: model file not found" in missing.stderr


def test_the_installed_command_shows_help_with_examples_and_exits_0() -> None:
    script = shutil.which("armsdyn", path=str(Path(sys.executable).parent))
    assert script is not None, "the armsdyn entry point is not installed next to this Python"
    proc = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "armsdyn run configs/richardson.toml" in proc.stdout
    # A usage error is argparse's status 2 with the usage line, as for any other error a user can fix.
    proc = subprocess.run([script, "frobnicate"], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 2
    assert "invalid choice: 'frobnicate'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_compare_help_states_the_comparisons_own_default() -> None:
    from armsdyn.compare import TOP

    assert COMPARE_TOP == TOP
    proc = call_cli("compare", "--help")
    assert proc.returncode == 0
    assert f"variables in the figure (default: {TOP})" in " ".join(proc.stdout.split())


def test_an_unknown_export_format_names_the_allowed_ones(tmp_path: Path) -> None:
    proc = call_cli("export", tmp_path, "--format", "xlsx")
    assert proc.returncode == 2
    assert "xlsx" in proc.stderr
    assert "csv" in proc.stderr
    assert "parquet" in proc.stderr


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ("calibrate_cold_war.toml", "valid calibration 'calibrate_cold_war': trajectory fit of"),
        ("audit_knowledge_argument.toml", "valid audit of"),
        ("richardson.toml", "valid: experiment 'richardson'"),
    ],
)
def test_check_validates_each_kind_of_config_with_its_own_reader(
    config: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(CONFIGS / config)]) == 0
    assert says in capsys.readouterr().out


@pytest.mark.parametrize("config", sorted(p.name for p in CONFIGS.glob("*.toml")))
def test_every_shipped_config_passes_check(config: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A shipped config that stopped validating (a renamed variable, a changed model) fails here, not for a user."""
    assert main(["check", str(CONFIGS / config)]) == 0, capsys.readouterr().err
    assert "valid" in capsys.readouterr().out

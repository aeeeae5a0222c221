"""Results folders are written whole or not at all."""

from __future__ import annotations

import fcntl
import hashlib
import json
import warnings
from dataclasses import replace
from pathlib import Path

import pytest
import xarray as xr

import armsdyn
from armsdyn import FigureSpec, ResultsError, load_config, write_results
from armsdyn.ensemble import FallbackWarning
from tests.conftest import CONFIGS, call_cli


@pytest.fixture(scope="module")
def experiment() -> armsdyn.Experiment:
    return load_config(CONFIGS / "richardson.toml")


@pytest.fixture(scope="module")
def ds(experiment: armsdyn.Experiment) -> xr.Dataset:
    return armsdyn.run(experiment)


def test_failure_while_writing_leaves_no_folder(tmp_path: Path, experiment: armsdyn.Experiment, ds: xr.Dataset) -> None:
    broken = replace(experiment, figures=(FigureSpec("time_series", "bad", ("not saved",)),))
    with pytest.raises(KeyError, match="not saved"):
        write_results(ds, broken, tmp_path / "out")
    assert list(tmp_path.iterdir()) == [], "a partial folder or lock file was left behind"


def test_failure_while_replacing_keeps_the_earlier_results(
    tmp_path: Path, experiment: armsdyn.Experiment, ds: xr.Dataset
) -> None:
    # No figure: the replacement, not the drawing, is what fails here (a figure costs a second).
    target = write_results(ds, replace(experiment, figures=()), tmp_path / "out")
    before = (target / "manifest.json").read_text()
    broken = replace(experiment, figures=(FigureSpec("time_series", "bad", ("not saved",)),))
    with pytest.raises(KeyError):
        write_results(ds, broken, target, force=True)
    assert (target / "manifest.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_second_writer_is_refused_while_the_first_holds_the_lock(
    tmp_path: Path, experiment: armsdyn.Experiment, ds: xr.Dataset
) -> None:
    with open(tmp_path / ".out.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(ResultsError, match="another armsdyn run is writing this results folder"):
            write_results(ds, experiment, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_existing_folder_is_refused_without_force(
    tmp_path: Path, experiment: armsdyn.Experiment, ds: xr.Dataset
) -> None:
    (tmp_path / "out").mkdir()
    with pytest.raises(ResultsError, match="already exists; pass --force"):
        write_results(ds, experiment, tmp_path / "out")


_DATA_MODEL = """{UTF-8}
state:
\tGET DIRECT SUBSCRIPT('data/states.csv', ',', 'A2', 'A3', '')
\t~\t
\t~\tThe states, read from a file beside the model.
\t|
demand := GET DIRECT DATA('data/series.csv', ',', 'A', 'B2') ~ units ~ a series from a CSV file |
k = GET DIRECT CONSTANTS('constants.csv', ',', 'B2') ~ dmnl ~ a constant from a CSV file |
arms[state] = INTEG(k * demand, 0) ~ units ~ fed by data read from files |
INITIAL TIME = 0 ~ Year ~ |
FINAL TIME = 10 ~ Year ~ |
TIME STEP = 1 ~ Year ~ |
SAVEPER = TIME STEP ~ Year ~ |
"""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_manifest_pins_every_data_file_the_model_reads(tmp_path: Path) -> None:
    """A replication archive's manifest names each data file with its SHA-256; a changed byte shows."""
    archive = tmp_path / "archive"
    (archive / "data").mkdir(parents=True)
    (archive / "data" / "states.csv").write_text("state\nUSA\nRussia\n")
    (archive / "data" / "series.csv").write_text("time,demand\n0,1\n5,2\n10,4\n")
    (archive / "constants.csv").write_text("name,value\nk,3\n")
    (archive / "unread.csv").write_text("not read by the model\n")
    (archive / "demand.mdl").write_text(_DATA_MODEL, encoding="utf-8")
    config = archive / "exp.toml"
    config.write_text('[experiment]\nname = "data"\nmodel = "demand.mdl"\n', encoding="utf-8")

    def run(out: str) -> tuple[dict[str, dict[str, str]], float]:
        with warnings.catch_warnings():  # the engine hands the model to PySD, and the CLI says so
            warnings.simplefilter("always", FallbackWarning)
            done = call_cli("run", config, "--out", tmp_path / out)
        assert done.returncode == 0, done.stderr
        assert "subscript ranges read from files" in done.stdout + done.stderr
        manifest = json.loads((tmp_path / out / "manifest.json").read_text(encoding="utf-8"))
        with xr.open_dataset(tmp_path / out / "results.nc") as ds:
            final = float(ds["arms"].isel(time=-1).sum())
        return {f["name"]: f for f in manifest["model"]["data_files"]}, final

    files, final = run("first")
    assert sorted(files) == ["constants.csv", "data/series.csv", "data/states.csv"]
    for name, entry in files.items():
        assert entry["sha256"] == _sha256(archive / name), name
        assert Path(entry["path"]) == (archive / name).resolve()

    constants = archive / "constants.csv"
    constants.write_bytes(constants.read_bytes().replace(b"k,3", b"k,4"))  # one byte
    changed, changed_final = run("second")
    assert changed["constants.csv"]["sha256"] == _sha256(constants) != files["constants.csv"]["sha256"]
    for name in ("data/series.csv", "data/states.csv"):
        assert changed[name]["sha256"] == files[name]["sha256"]
    assert changed_final != final, "the run did not read the changed file"


def test_a_model_reading_no_data_files_lists_none(experiment: armsdyn.Experiment) -> None:
    from armsdyn.output import build_manifest

    manifest = build_manifest(experiment, started="2026-01-01T00:00:00+00:00", command=[])
    assert manifest["model"]["data_files"] == []

"""Results folders are written whole or not at all."""

from __future__ import annotations

import fcntl
from dataclasses import replace
from pathlib import Path

import pytest
import xarray as xr

import armsdyn
from armsdyn import FigureSpec, ResultsError, load_config, write_results
from tests.conftest import CONFIGS


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
    target = write_results(ds, experiment, tmp_path / "out")
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


def test_figures_are_byte_identical_across_renders(
    tmp_path: Path, experiment: armsdyn.Experiment, ds: xr.Dataset
) -> None:
    a = write_results(ds, experiment, tmp_path / "a")
    b = write_results(ds, experiment, tmp_path / "b")
    for pdf in (a / "figures").glob("*.pdf"):
        assert pdf.read_bytes() == (b / "figures" / pdf.name).read_bytes(), pdf.name

"""Chunked ensembles: identical across chunk sizes and executors, resumable after a kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import armsdyn
from armsdyn.runner import StoreError
from armsdyn.sensitivity import run_study
from tests.conftest import CONFIGS, MODELS, run_cli

STUDY = (CONFIGS / "knowledge_sensitivity.toml").read_text().replace('"../models/', f'"{MODELS}/')


def _config(tmp_path: Path, samples: int = 8) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(STUDY.replace("samples = 256", f"samples = {samples}"))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[xr.Dataset, xr.Dataset]:
    exp = armsdyn.load_config(_config(tmp_path_factory.mktemp("ref")))
    return run_study(exp, chunk_size=10_000)


def test_chunk_size_does_not_change_results(tmp_path: Path, reference: tuple[xr.Dataset, xr.Dataset]) -> None:
    exp = armsdyn.load_config(_config(tmp_path))
    ensemble, indices = run_study(exp, chunk_size=7, workers=2)
    xr.testing.assert_identical(ensemble, reference[0])
    xr.testing.assert_identical(indices, reference[1])


def test_store_refuses_another_study_and_unrequested_resume(tmp_path: Path) -> None:
    exp = armsdyn.load_config(_config(tmp_path))
    store = tmp_path / "store"
    run_study(exp, store=store, chunk_size=20)
    with pytest.raises(StoreError, match="pass --resume to continue it"):
        run_study(exp, store=store, chunk_size=20)
    resumed = run_study(exp, store=store, chunk_size=20, resume=True)  # nothing left to run
    assert resumed[0].sizes["run"] == 8 * (8 + 2)
    with pytest.raises(StoreError, match="holds chunks of a different study"):
        run_study(exp, store=store, chunk_size=21, resume=True)


@pytest.mark.slow
def test_resume_after_a_kill_gives_the_uninterrupted_result(tmp_path: Path) -> None:
    config = _config(tmp_path, samples=64)  # 640 runs
    whole = tmp_path / "whole"
    proc = run_cli("run", config, "--out", whole, "--workers", "1", "--chunk-size", "16")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "resumed"
    store = tmp_path / ".resumed.study"
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "armsdyn",
            "run",
            str(config),
            "--out",
            str(out),
            "--workers",
            "1",
            "--chunk-size",
            "16",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while len(list(store.glob("chunk-*.nc"))) < 2 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    kept = len(list(store.glob("chunk-*.nc")))
    assert 2 <= kept < 40, f"kill came too late to test resuming ({kept} chunks)"
    assert not out.exists()
    refused = run_cli("run", config, "--out", out, "--workers", "1", "--chunk-size", "16")
    assert refused.returncode == 2
    assert "--resume" in refused.stderr
    resumed = run_cli("run", config, "--out", out, "--workers", "1", "--chunk-size", "16", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert not store.exists()
    for name in ("indices.nc", "ensemble.nc"):
        with xr.open_dataset(whole / "sensitivity" / name) as a, xr.open_dataset(out / "sensitivity" / name) as b:
            xr.testing.assert_identical(a.load(), b.load())


@pytest.mark.slow
def test_dask_cluster_gives_identical_results(tmp_path: Path, reference: tuple[xr.Dataset, xr.Dataset]) -> None:
    distributed = pytest.importorskip("distributed", reason="Dask distributed is not installed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
    ) as cluster:
        exp = armsdyn.load_config(_config(tmp_path))
        ensemble, indices = run_study(exp, scheduler=cluster.scheduler_address, chunk_size=13)
    xr.testing.assert_identical(ensemble, reference[0])
    xr.testing.assert_identical(indices, reference[1])
    assert np.isfinite(indices["ST"]).any()


def test_a_chunk_fits_a_workers_share_of_memory() -> None:
    from armsdyn.runner import CHUNK_BYTES, CHUNK_COPIES, study_chunk

    exp = armsdyn.load_config(CONFIGS / "knowledge_sensitivity.toml")
    time = exp.time
    saves = round((time.final - time.initial) / time.saveper) + 1
    width = sum(len(exp.model.variable(v).elements()) or 1 for v in exp.sensitivity.variables)
    chunk = study_chunk(exp, 8192)
    # The knowledge study reads 18 variables over 201 saved times: 8192 runs would not fit.
    assert 100 < chunk < 8192
    assert 8 * CHUNK_COPIES * width * saves * chunk <= CHUNK_BYTES
    assert study_chunk(exp, 7) == 7


def test_chunks_combine_to_what_they_hold_in_run_order(tmp_path: Path) -> None:
    # The combined study is read chunk by chunk into arrays of the study's size; it must equal
    # concatenating the chunk files whole, with the fan-chart runs of the first chunks only.
    exp = armsdyn.load_config(_config(tmp_path, samples=8))
    store = tmp_path / "store"
    ensemble, _ = run_study(exp, store=store, chunk_size=6, workers=2)
    chunks = [xr.load_dataset(p) for p in sorted(store.glob("chunk-*.nc"))]
    assert len(chunks) == 14
    run_vars = [k for k, v in chunks[0].data_vars.items() if v.dims == ("run",)]
    fan_vars = [k for k, v in chunks[0].data_vars.items() if "fan_run" in v.dims]
    whole = xr.concat([c[run_vars] for c in chunks], dim="run").merge(
        xr.concat([c[fan_vars] for c in chunks], dim="fan_run")
    )
    np.testing.assert_array_equal(ensemble["run"].values, np.arange(80))
    for name in [*run_vars, *fan_vars, *(k for k, c in whole.coords.items() if c.dims == ("run",))]:
        np.testing.assert_array_equal(ensemble[name].values, whole[name].values, err_msg=name)
        assert ensemble[name].attrs == whole[name].attrs, name

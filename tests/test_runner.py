"""Chunked ensembles: identical across chunk sizes and executors, resumable after a kill."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import armsdyn
import armsdyn.runner
from armsdyn.runner import StoreError
from armsdyn.sensitivity import run_study
from tests.conftest import CONFIGS, MODELS, call_cli
from tests.test_reliability import kill_at

# One worker runs this module, so the studies its module fixtures run are run once; and
# test_reliability, whose fork server (tests.test_reliability.Child, about 3.5 s of imports
# preloaded) the kill test here uses too: it then starts once.
pytestmark = pytest.mark.xdist_group("forkserver")

STUDY = (CONFIGS / "knowledge_sensitivity.toml").read_text().replace('"../models/', f'"{MODELS}/')


def _config(tmp_path: Path, samples: int = 8) -> Path:
    path = tmp_path / "study.toml"
    path.write_text(STUDY.replace("samples = 256", f"samples = {samples}"))
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[xr.Dataset, xr.Dataset]:
    exp = armsdyn.load_config(_config(tmp_path_factory.mktemp("ref")))
    return run_study(exp, chunk_size=10_000)


@pytest.fixture(scope="module")
def pooled(tmp_path_factory: pytest.TempPathFactory) -> tuple[xr.Dataset, xr.Dataset, Path]:
    """The same study in four chunks (the last one short) on two worker processes, and its chunk store."""
    folder = tmp_path_factory.mktemp("pooled")
    exp = armsdyn.load_config(_config(folder))
    store = folder / "store"
    ensemble, indices = run_study(exp, store=store, chunk_size=23, workers=2)
    return ensemble, indices, store


def test_chunk_size_does_not_change_results(
    reference: tuple[xr.Dataset, xr.Dataset], pooled: tuple[xr.Dataset, xr.Dataset, Path]
) -> None:
    xr.testing.assert_identical(pooled[0], reference[0])
    xr.testing.assert_identical(pooled[1], reference[1])


def test_store_refuses_another_study_and_unrequested_resume(
    tmp_path: Path, pooled: tuple[xr.Dataset, xr.Dataset, Path]
) -> None:
    exp = armsdyn.load_config(_config(tmp_path))
    store = pooled[2]  # every chunk finished; none of these calls writes to it
    with pytest.raises(StoreError, match="pass --resume to continue it"):
        run_study(exp, store=store, chunk_size=23)
    resumed = run_study(exp, store=store, chunk_size=23, resume=True)  # nothing left to run
    assert resumed[0].sizes["run"] == 8 * (8 + 2)
    xr.testing.assert_identical(resumed[0], pooled[0])
    with pytest.raises(StoreError, match="holds chunks of a different study"):
        run_study(exp, store=store, chunk_size=24, resume=True)


@pytest.mark.slow
def test_resume_after_a_kill_gives_the_uninterrupted_result(
    tmp_path: Path, reference: tuple[xr.Dataset, xr.Dataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A real `armsdyn run` in a process of its own, SIGKILLed right after its second of four chunks
    # is written (test_reliability's kill points): two chunks are done before the kill, two after.
    config = _config(tmp_path)
    out = tmp_path / "resumed"
    store = tmp_path / ".resumed.study"
    args = ["run", config, "--out", out, "--workers", "1", "--chunk-size", "20"]
    kill_at("after a study's second chunk is written", *args)
    assert sorted(p.name for p in store.glob("chunk-*.nc")) == ["chunk-000000.nc", "chunk-000001.nc"]
    assert not out.exists()
    refused = call_cli(*args)
    assert refused.returncode == 2
    assert "--resume" in refused.stderr
    # The resumed run reads the killed run's two chunks and runs only the other two.
    written: list[int] = []
    write_chunk = armsdyn.runner._write_chunk

    def recording(folder: Path, index: int, chunk: xr.Dataset) -> None:
        written.append(index)
        write_chunk(folder, index, chunk)

    monkeypatch.setattr(armsdyn.runner, "_write_chunk", recording)
    resumed = call_cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert written == [2, 3]
    assert not store.exists()
    # Bit for bit the study run whole, uninterrupted (in one chunk: reference).
    for name, whole in zip(("ensemble.nc", "indices.nc"), reference, strict=True):
        with xr.open_dataset(out / "sensitivity" / name) as ds:
            xr.testing.assert_identical(ds.load(), whole)


@pytest.mark.slow
def test_dask_cluster_gives_identical_results(tmp_path: Path, reference: tuple[xr.Dataset, xr.Dataset]) -> None:
    distributed = pytest.importorskip("distributed", reason="Dask distributed is not installed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
    ) as cluster:
        exp = armsdyn.load_config(_config(tmp_path))
        ensemble, indices = run_study(exp, scheduler=cluster.scheduler_address, chunk_size=27)
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


def test_chunks_combine_to_what_they_hold_in_run_order(pooled: tuple[xr.Dataset, xr.Dataset, Path]) -> None:
    # The combined study is read chunk by chunk into arrays of the study's size; it must equal
    # concatenating the chunk files whole, with the fan-chart runs of the first chunks only.
    ensemble, _, store = pooled
    chunks = [xr.load_dataset(p) for p in sorted(store.glob("chunk-*.nc"))]
    assert [c.sizes["run"] for c in chunks] == [23, 23, 23, 11]
    run_vars = [k for k, v in chunks[0].data_vars.items() if v.dims == ("run",)]
    fan_vars = [k for k, v in chunks[0].data_vars.items() if "fan_run" in v.dims]
    whole = xr.concat([c[run_vars] for c in chunks], dim="run").merge(
        xr.concat([c[fan_vars] for c in chunks], dim="fan_run")
    )
    np.testing.assert_array_equal(ensemble["run"].values, np.arange(80))
    for name in [*run_vars, *fan_vars, *(k for k, c in whole.coords.items() if c.dims == ("run",))]:
        np.testing.assert_array_equal(ensemble[name].values, whole[name].values, err_msg=name)
        assert ensemble[name].attrs == whole[name].attrs, name

"""The result arrays that run_ensemble's worker processes write into (armsdyn.ensemble._parallel)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from armsdyn.ensemble._parallel import _mapped, _shared_arrays
from armsdyn.errors import ResultsError

SHAPES = [(201, 1000), (201, 2, 1000)]
NBYTES = 8 * (201 * 1000 + 201 * 2 * 1000)


@pytest.mark.skipif(not hasattr(os, "posix_fallocate"), reason="space is reserved only where posix_fallocate exists")
def test_the_results_space_stays_reserved_while_the_workers_write() -> None:
    # A sparse file would let a worker's write fail with SIGBUS when /dev/shm fills up.
    with _shared_arrays(SHAPES) as (where, arrays):
        assert os.stat(where[0]).st_blocks * 512 >= NBYTES
        assert [a.shape for a in arrays] == SHAPES


def test_a_workers_writes_are_the_results_and_the_file_is_gone_after() -> None:
    with _shared_arrays(SHAPES) as (where, arrays):
        worker = _mapped(where)  # what a worker process maps
        worker[0][:, 10:20] = 7.0
        worker[1][5, 1, :] = np.arange(1000)
    assert not Path(where[0]).exists()
    assert arrays[0][:, 10:20].sum() == 7.0 * 201 * 10  # still readable: the mapping outlives the name
    np.testing.assert_array_equal(arrays[1][5, 1], np.arange(1000))


def test_a_failure_inside_removes_the_file() -> None:
    with pytest.raises(RuntimeError), _shared_arrays(SHAPES) as (where, _):
        raise RuntimeError("a worker failed")
    assert not Path(where[0]).exists()


@pytest.mark.skipif(not hasattr(os, "posix_fallocate"), reason="space is reserved only where posix_fallocate exists")
def test_no_room_anywhere_is_a_results_error_naming_the_size_and_places(monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    def full(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)  # the operating system's answer on a full disk
    before = {p.name for p in Path("/dev/shm").glob("armsdyn-ensemble-*")} if Path("/dev/shm").is_dir() else set()
    no_room = r"no room for the ensemble's results \(0\.00 GiB\).*one worker"
    with pytest.raises(ResultsError, match=no_room), _shared_arrays(SHAPES):
        pass
    after = {p.name for p in Path("/dev/shm").glob("armsdyn-ensemble-*")} if Path("/dev/shm").is_dir() else set()
    assert after <= before  # nothing left behind

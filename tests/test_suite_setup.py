"""The test suite's own machinery: what tests/conftest.py sets up (pytest-xdist groups, in-process CLI calls)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import _copy_kernels, _kept_kernels, call_cli


@pytest.mark.xdist_group("probe")
def test_an_xdist_group_reaches_the_scheduler(request: pytest.FixtureRequest) -> None:
    # --dist loadgroup sends a group to one worker by the "@group" its node ids end with; without
    # it each grouped test pays its group's shared fixtures again (tests/conftest.py's hook).
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("the suite was not run with --dist loadgroup")
    assert request.node.nodeid.endswith("@probe"), request.node.nodeid


@pytest.mark.parametrize("before", [None, "svg"])
def test_an_in_process_cli_call_leaves_mplbackend_as_it_found_it(
    before: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # main() sets MPLBACKEND=Agg for its process; a later test in this process must not inherit it.
    if before is None:
        monkeypatch.delenv("MPLBACKEND", raising=False)
    else:
        monkeypatch.setenv("MPLBACKEND", before)
    assert call_cli("--version").returncode == 0
    assert os.environ.get("MPLBACKEND") == before


def test_kept_kernels_are_copied_whole_with_their_stamps_and_never_their_speeds(tmp_path: Path) -> None:
    # A session starts with the kernels earlier ones compiled (numba checks its index against the
    # module's time stamp, so the stamp must survive the copy), but measures backend speeds anew.
    kept, session = tmp_path / "kept", tmp_path / "session"
    (kept / "__pycache__").mkdir(parents=True)
    (kept / "armsdyn_kernel_ab.py").write_text("# kernel\n")
    (kept / "__pycache__" / "armsdyn_kernel_ab.kernel-3.py311.nbi").write_bytes(b"index")
    (kept / "armsdyn_kernel_ab.timings.json").write_text('{"numba": 1e-9}')
    os.utime(kept / "armsdyn_kernel_ab.py", (1_000_000, 1_000_000))
    session.mkdir()
    (session / "armsdyn_kernel_cd.py").write_text("# compiled this session\n")
    _copy_kernels(kept, session)
    assert sorted(p.relative_to(session).as_posix() for p in session.rglob("*") if p.is_file()) == [
        "__pycache__/armsdyn_kernel_ab.kernel-3.py311.nbi",
        "armsdyn_kernel_ab.py",
        "armsdyn_kernel_cd.py",
    ]
    assert (session / "armsdyn_kernel_ab.py").stat().st_mtime == 1_000_000
    # And back at the session's end: what it compiled joins the kept ones; a kept file stays as it is.
    (session / "armsdyn_kernel_ab.py").write_text("# changed\n")
    _copy_kernels(session, kept)
    assert (kept / "armsdyn_kernel_cd.py").read_text() == "# compiled this session\n"
    assert (kept / "armsdyn_kernel_ab.py").read_text() == "# kernel\n"
    assert not list(kept.rglob("*.tmp"))  # pathlib's * matches dot files too


def test_kept_kernels_can_be_turned_off_or_moved(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ARMSDYN_TEST_KERNELS", "off")
    assert _kept_kernels() is None
    monkeypatch.setenv("ARMSDYN_TEST_KERNELS", str(tmp_path))
    assert _kept_kernels() == tmp_path
    monkeypatch.delenv("ARMSDYN_TEST_KERNELS")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert _kept_kernels() == tmp_path / "armsdyn-tests" / "ensemble-numba"

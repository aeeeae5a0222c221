"""The test suite's own machinery: what tests/conftest.py sets up (pytest-xdist groups, in-process CLI calls)."""

from __future__ import annotations

import os

import pytest

from tests.conftest import call_cli


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

"""The test suite's own machinery: what tests/conftest.py sets up for pytest-xdist."""

from __future__ import annotations

import pytest


@pytest.mark.xdist_group("probe")
def test_an_xdist_group_reaches_the_scheduler(request: pytest.FixtureRequest) -> None:
    # --dist loadgroup sends a group to one worker by the "@group" its node ids end with; without
    # it each grouped test pays its group's shared fixtures again (tests/conftest.py's hook).
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("the suite was not run with --dist loadgroup")
    assert request.node.nodeid.endswith("@probe"), request.node.nodeid

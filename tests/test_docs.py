"""The numbers docs/models.md states are the numbers the shipped configs produce."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_the_documented_tables_are_current() -> None:
    """The main experiment's and the security postures' tables, rerun from the shipped configs."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "make_tables.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr or "a table in docs/models.md differs from a fresh run"

"""The numbers docs/models.md states are the numbers the shipped configs produce."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_the_documented_main_experiment_table_is_current() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "make_tables.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr or "docs/models.md's table differs from a fresh run"

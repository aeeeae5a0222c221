"""The numbers docs/models.md states are the numbers the shipped configs produce."""

from __future__ import annotations

import importlib.util
from types import ModuleType

import pytest

from tests.conftest import ROOT


def _make_tables() -> ModuleType:
    """docs/make_tables.py as a module (a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("make_tables", ROOT / "docs" / "make_tables.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_documented_tables_are_current(capsys: pytest.CaptureFixture[str]) -> None:
    """The main experiment's and the security postures' tables, rerun from the shipped configs.

    ``python docs/make_tables.py --check``, in this process: a new interpreter would add only
    its imports to the same runs.
    """
    code = _make_tables().main(["--check"])
    assert code == 0, capsys.readouterr().err or "a table in docs/models.md differs from a fresh run"

"""Redrawn lookups on the peer test-models: every graphical function of every shared case, redrawn.

The cases were written by other tools' authors (named, inline, WITH LOOKUP, subscripted and
XMILE graphical functions), not around our engine. Each lookup is redrawn whole with a table of
its own kind of shape but other points; the compiled engine's run must equal PySD's run with the
same table, in both backends, or the engine must refuse the case cleanly (``UnsupportedConstruct``).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from armsdyn.ensemble import UnsupportedConstruct, compile_model
from armsdyn.model import load_model
from tests.conftest import SHARED

CASES = SHARED / "test-models"
CASE_FILES = sorted(CASES.glob("*/*.mdl")) + sorted(CASES.glob("*/*.xmile")) if CASES.is_dir() else []
NUMBA = importlib.util.find_spec("numba") is not None
BACKENDS = ["numpy", pytest.param("numba", marks=pytest.mark.skipif(not NUMBA, reason="numba is not installed"))]
# Cases whose numba kernel takes tens of seconds to compile (hundreds of element statements), and
# subscripted_lookups, whose redraws tests/test_subscripted_lookup_overrides.py runs on numba already
# (64 s here for its per-run tables: the suite's third-slowest test, for no new coverage).
NUMBA_SLOW = {
    "test_subscripted_delays.mdl",
    "test_subscripted_smooth.mdl",
    "test_subscript_definition.mdl",
    "test_subscripted_lookups.mdl",
}


def _lookup_cases() -> list[Path]:
    """The shared cases that have a graphical function PySD can load (found from the model files' text)."""
    found = []
    for path in CASE_FILES:
        text = path.read_text(encoding="utf-8", errors="replace")
        if "<gf" in text or "WITH LOOKUP" in text.upper() or "LOOKUP" in text.upper() or ")-(" in text:
            found.append(path)
    return found


LOOKUP_CASES = _lookup_cases()

#: A redraw over a wide range, so inputs anywhere read points of the new table (and its ends).
TABLE = ((-100.0, -1.0), (-1.0, 0.5), (0.0, 1.0), (0.5, 0.25), (2.0, 3.0), (10.0, 2.0), (100.0, 5.0))


@functools.cache
def _pysd(path: Path, lookups: tuple[str, ...], names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """PySD's run of `path` with every lookup in `lookups` redrawn as TABLE, once per process.

    Both backends' variant of a case (one xdist group, so one worker) compare with the same runs.
    """
    model = load_model(path)
    redrawn = pd.Series([y for _, y in TABLE], index=[x for x, _ in TABLE])
    out = model.simulate({name: redrawn for name in lookups}, model.time, list(names))
    for values in out.values():
        values.setflags(write=False)  # shared: no test may change another's reference
    return out


@pytest.mark.skipif(not LOOKUP_CASES, reason=f"peer conformance models not found in {CASES}")
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "path",
    [pytest.param(p, marks=pytest.mark.xdist_group(f"shared_lookups:{p.parent.name}/{p.name}")) for p in LOOKUP_CASES],
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_every_lookup_of_a_shared_case_redrawn_runs_as_pysd_runs_it(path: Path, backend: str) -> None:
    if backend == "numba" and path.name in NUMBA_SLOW:
        pytest.skip("numba compiles this case for tens of seconds; its redraws run here on numpy (see NUMBA_SLOW)")
    try:
        model = load_model(path)
    except Exception as exc:  # whatever PySD itself cannot run is not a redraw case
        pytest.skip(f"PySD cannot run this case: {exc}")
    lookups = [v.name for v in model.variables.values() if v.kind == "lookup"]
    if not lookups:
        pytest.skip("no lookup variable to redraw (its tables, if any, are inline in an equation: WITH LOOKUP)")
    try:
        compiled = compile_model(path, backend=backend)
        names = [v.name for v in compiled.variables.values() if v.kind != "lookup"]
        # Run 0 redraws every lookup; run 1 keeps the file's tables.
        ds = compiled.run({}, variables=names, lookups={name: [TABLE, None] for name in lookups})
    except UnsupportedConstruct as exc:
        pytest.skip(f"unsupported construct {exc.construct} in {exc.variable!r}")
    for run, redrawn in enumerate((tuple(lookups), ())):
        reference = _pysd(path, redrawn, tuple(names))
        for name in names:
            got = ds[model.variable(name).py_name].isel(run=run).values
            np.testing.assert_allclose(
                got, reference[name], rtol=1e-9, atol=1e-12, equal_nan=True, err_msg=f"{path.name}: {name}, run {run}"
            )

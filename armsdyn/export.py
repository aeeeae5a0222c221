"""Export a results folder as tidy long tables (CSV or Parquet) with a data dictionary.

For users of R, Stata or a spreadsheet: ``results.nc`` (and a sensitivity
study's ``sensitivity/``) become tables with one value per row,

``results``
    scenario, time, variable, element, value, units: every saved variable
    (``element`` names the subscript element of a subscripted variable,
    e.g. ``"France"`` or ``"France, Germany"``; empty otherwise).
``scenarios``
    scenario, description, baseline (and a failed run's error, where one failed).
``parameters``
    scenario, parameter, element, value, units: the model constants each
    scenario set.
``ensemble_runs`` (a study only)
    run, role, variable, element, value, units: each run's sampled parameters
    (role ``parameter``) and outputs (role ``output``).
``ensemble_series`` (a study with ``fan_variables`` only)
    run, time, variable, element, value, units: the saved time series of the
    first runs.
``indices`` (a study only)
    output, parameter, index, value: the sensitivity indices.
``attribution`` (a run with ``[attribution]``)
    scenario, stock, group, kind, share, change: each loop group's share of the
    change of each attributed stock (element) over the window, from ``loops.nc``.
``loops`` and ``loop_scores`` (a run with ``[loop_dominance]``)
    every loop scored (loop, polarity, length, variables, partition), and its
    loop score and relative loop score per scenario and time.
``dictionary``
    table, variable, name, units, description: every variable of every table
    (``name`` is its key in the netCDF files).

CSV floats are written as the shortest text that reads back to the same
double (Python's ``repr``; NaN as an empty field), so reading a CSV back
reproduces ``results.nc`` exactly (tested with Python's ``float`` and pandas
3's ``read_csv``). Parquet needs
pyarrow (``pip install 'armsdyn[export]'``). The export folder is written
atomically with a ``manifest.json`` naming its source and the sha256 of each
file.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from armsdyn import __version__
from armsdyn.errors import ArmsdynError, ResultsError
from armsdyn.model import file_sha256
from armsdyn.output import (
    ENSEMBLE_FILE,
    INDICES_FILE,
    MANIFEST_FILE,
    STUDY_DIR,
    atomic_folder,
    locked,
    now,
)
from armsdyn.results import LOOPS_FILE, RESULTS_FILE

#: How a study's ensemble names its outputs (see :mod:`armsdyn.sensitivity`).
OUTPUT_PREFIX = "output: "
#: The formats ``armsdyn export --format`` writes.
FORMATS = ("csv", "parquet")
#: The export folder inside a results folder when no other is named.
EXPORT_DIR = "export"
#: Coordinates on ``scenario`` that describe the scenario rather than set a model constant.
SCENARIO_COLUMNS = {
    "scenario_description": "description",
    "baseline": "baseline",
    "error": "error",
    "error_variable": "error_variable",
    "error_time": "error_time",
}

#: What each column of each table holds (written into the export's manifest).
COLUMNS: dict[str, dict[str, str]] = {
    "results": {
        "scenario": "scenario name (the config's [[scenarios]] name)",
        "time": "model time (units: the dictionary's 'time' row)",
        "variable": "model variable name",
        "element": "subscript element(s), comma-separated in the variable's dimension order; empty if unsubscripted",
        "value": "the saved value (empty: NaN)",
        "units": "the variable's units as the model declares them",
    },
    "scenarios": {
        "scenario": "scenario name",
        "description": "the config's description of the scenario",
        "baseline": "the scenario metrics are compared against (empty: none)",
        "error": "a failed run's error (column present only when a run failed)",
    },
    "parameters": {
        "scenario": "scenario name",
        "parameter": "model constant name",
        "element": "subscript element(s); empty if unsubscripted",
        "value": "the constant's value in the scenario",
        "units": "the constant's units",
    },
    "ensemble_runs": {
        "run": "run number of the sensitivity study (0-based)",
        "role": "'parameter' (a sampled value) or 'output' (a value computed from the run)",
        "variable": "parameter or output name",
        "element": "subscript element(s) of a subscripted parameter or output; empty otherwise",
        "value": "the value in the run",
        "units": "units (outputs: empty)",
    },
    "ensemble_series": {
        "run": "run number (the same run as in ensemble_runs)",
        "time": "model time",
        "variable": "model variable name",
        "element": "subscript element(s); empty if unsubscripted",
        "value": "the saved value",
        "units": "the variable's units",
    },
    "indices": {
        "output": "the study's output",
        "parameter": "the sampled parameter",
        "index": "the index's name (e.g. S1, ST, mu_star, spearman)",
        "value": "the index's value",
    },
    "attribution": {
        "scenario": "scenario name",
        "stock": "the attributed stock (element), e.g. 'effective power[A]'",
        "group": "the loop group, or 'other' (what the run produces with every group cut)",
        "kind": "'loops' (a group of feedback loops), 'driver' (an exogenous driver) or 'other'",
        "share": "the group's Shapley share of the stock's change over the window (shares sum to 1)",
        "change": "the group's Shapley value: the change of the stock it accounts for, in the stock's units",
    },
    "loops": {
        "loop": "loop id (R: reinforcing, B: balancing, U: undetermined)",
        "polarity": "the loop's polarity over the run",
        "length": "number of variables on the loop",
        "variables": "the loop's variables in causal order",
        "partition": "the cycle partition the loop's relative score is a share of",
    },
    "loop_scores": {
        "scenario": "scenario name",
        "loop": "loop id (see the loops table)",
        "time": "model time",
        "score": "Loops That Matter loop score (product of the loop's link scores)",
        "relative_score": "the loop's share of its partition's summed absolute scores, in [-1, 1]",
    },
    "dictionary": {
        "table": "the table the variable appears in",
        "variable": "variable name as in that table",
        "name": "its key in results.nc or sensitivity/ensemble.nc (elements saved one by one: each key)",
        "units": "units",
        "description": "the model's documentation of the variable",
    },
}


class ExportError(ArmsdynError, ValueError):
    """An export was asked for in a format that cannot be written here."""


def _name(da: xr.DataArray, key: Any) -> str:
    return str(da.attrs.get("long_name") or key)


def _elements(da: xr.DataArray, dims: Iterable[str]) -> list[str]:
    dims = list(dims)
    if not dims:
        return [""]
    return [", ".join(e) for e in itertools.product(*([str(v) for v in da[d].values] for d in dims))]


_ONE_ELEMENT = re.compile(r"^([^\[\]]+?)\s*\[([^\[\]]*)\]$")


def _split(name: str) -> tuple[str, str]:
    """``"insecurity[A]"`` (one element saved or sampled on its own) -> ``("insecurity", "A")``."""
    found = _ONE_ELEMENT.match(name)
    return (found.group(1), ", ".join(e.strip() for e in found.group(2).split(","))) if found else (name, "")


def _long(da: xr.DataArray, case: str, variable: str, *, case_column: str | None = None) -> pd.DataFrame:
    """One variable on ``(case, [time,] extra...)`` as rows (case, time, element, value, variable, units)."""
    has_time = "time" in da.dims
    extra = [str(d) for d in da.dims if d not in (case, "time")]
    da = da.transpose(case, *(["time"] if has_time else []), *extra)
    cases = da[case].values if case in da.coords else np.arange(da.sizes[case])
    times = da["time"].values.astype(float) if has_time else np.array([np.nan])
    elements = _elements(da, extra)
    if not extra:
        variable, element = _split(variable)
        elements = [element]
    n_case, n_time, n_el = len(cases), len(times), len(elements)
    values = np.asarray(da.values, dtype=float).reshape(-1)
    frame = {
        case_column or case: np.repeat(cases, n_time * n_el),
        "time": np.tile(np.repeat(times, n_el), n_case),
        "variable": variable,
        "element": np.tile(np.asarray(elements, dtype=object), n_case * n_time),
        "value": values,
        "units": str(da.attrs.get("units", "")),
    }
    return pd.DataFrame(frame)


def _open(path: Path) -> xr.Dataset:
    try:
        with xr.open_dataset(path) as ds:
            return ds.load()
    except (OSError, ValueError, RuntimeError) as exc:
        msg = f"{path}: cannot read ({exc}); is the results folder complete?"
        raise ResultsError(msg) from exc


def read_results_folder(folder: str | os.PathLike[str]) -> tuple[xr.Dataset, dict[str, Any], tuple[xr.Dataset, ...]]:
    """Read a results folder: its results, its manifest and its study (ensemble, indices) if it has one.

    Raises
    ------
    ResultsError
        If `folder` is not a results folder written by ``armsdyn run``
        (a folder holding ``results.nc`` and ``manifest.json``).
    """
    folder = Path(folder)
    expected = f"a results folder written by 'armsdyn run' (holding {RESULTS_FILE} and {MANIFEST_FILE})"
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a folder"
        msg = f"{folder}: {what}; expected {expected}"
        raise ResultsError(msg)
    missing = [n for n in (RESULTS_FILE, MANIFEST_FILE) if not (folder / n).is_file()]
    if missing:
        msg = f"{folder}: has no {' or '.join(missing)}; expected {expected}"
        raise ResultsError(msg)
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        msg = f"{folder / MANIFEST_FILE}: cannot read ({exc}); expected {expected}"
        raise ResultsError(msg) from exc
    if not isinstance(manifest, dict):
        msg = f"{folder / MANIFEST_FILE}: not an armsdyn manifest; expected {expected}"
        raise ResultsError(msg)
    ds = _open(folder / RESULTS_FILE)
    if "scenario" not in ds.dims:
        msg = f"{folder / RESULTS_FILE}: has no 'scenario' dimension; expected {expected}"
        raise ResultsError(msg)
    study: tuple[xr.Dataset, ...] = ()
    if (folder / STUDY_DIR / ENSEMBLE_FILE).is_file():
        study = (_open(folder / STUDY_DIR / ENSEMBLE_FILE),)
        if (folder / STUDY_DIR / INDICES_FILE).is_file():
            study += (_open(folder / STUDY_DIR / INDICES_FILE),)
    return ds, manifest, study


def results_table(ds: xr.Dataset) -> pd.DataFrame:
    """Every saved variable of a results Dataset as a long table.

    Returns
    -------
    pandas.DataFrame
        Columns scenario, time, variable, element, value, units; ordered by
        variable (as saved), scenario, time and element.
    """
    frames = [_long(da, "scenario", _name(da, key)) for key, da in ds.data_vars.items() if da.dims[:1] == ("scenario",)]
    columns = list(COLUMNS["results"])
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def scenarios_table(ds: xr.Dataset) -> pd.DataFrame:
    """One row per scenario: name, description, baseline (and the error of a failed run)."""
    table = pd.DataFrame({"scenario": [str(s) for s in ds["scenario"].values]})
    for coord, column in SCENARIO_COLUMNS.items():
        if coord in ds.coords and ds[coord].dims == ("scenario",):
            values = ds[coord].values
            table[column] = values.astype(float) if values.dtype.kind == "f" else [str(v) for v in values]
    return table


def parameters_table(ds: xr.Dataset) -> pd.DataFrame:
    """The model constants each scenario set, long: scenario, parameter, element, value, units."""
    frames = []
    for key, da in ds.coords.items():
        if key in SCENARIO_COLUMNS or da.dims[:1] != ("scenario",) or da.dtype.kind not in "fiub":
            continue
        frame = _long(da, "scenario", _name(da, key)).rename(columns={"variable": "parameter"})
        frames.append(frame.drop(columns="time"))
    columns = list(COLUMNS["parameters"])
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def _per_run(da: xr.DataArray) -> bool:
    """A value per run of a study (a sampled parameter or an output, possibly subscripted)."""
    return da.dims[:1] == ("run",) and "time" not in da.dims


def ensemble_tables(ensemble: xr.Dataset) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A study's ensemble as two long tables: per-run values, and the saved time series.

    Returns
    -------
    (pandas.DataFrame, pandas.DataFrame)
        ``ensemble_runs`` (run, role, variable, element, value, units) and
        ``ensemble_series`` (run, time, variable, element, value, units; empty
        when the study kept no time series).
    """
    frames = []
    for key, da in itertools.chain(ensemble.coords.items(), ensemble.data_vars.items()):
        if key != "run" and _per_run(da):
            # Outputs are keyed "output: ..."; anything else per run is a parameter's value (a
            # coordinate whose name has a space is written to netCDF as a data variable).
            role = "output" if str(key).startswith(OUTPUT_PREFIX) else "parameter"
            frames.append(_long(da, "run", _name(da, key)).drop(columns="time").assign(role=role))
    columns = list(COLUMNS["ensemble_runs"])
    per_run = pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)
    series = [
        _long(da, str(da.dims[0]), _name(da, key), case_column="run")
        for key, da in ensemble.data_vars.items()
        if da.dims[:1] != ("run",) and "time" in da.dims
    ]
    columns = list(COLUMNS["ensemble_series"])
    return per_run, pd.concat(series, ignore_index=True)[columns] if series else pd.DataFrame(columns=columns)


def indices_table(indices: xr.Dataset) -> pd.DataFrame:
    """A study's sensitivity indices, long: output, parameter, index, value."""
    frames = []
    for key, da in indices.data_vars.items():
        if set(da.dims) != {"output", "parameter"}:
            continue
        da = da.transpose("output", "parameter")
        outputs, parameters = [str(v) for v in da["output"].values], [str(v) for v in da["parameter"].values]
        frames.append(
            pd.DataFrame(
                {
                    "output": np.repeat(outputs, len(parameters)),
                    "parameter": np.tile(parameters, len(outputs)),
                    "index": str(key),
                    "value": np.asarray(da.values, dtype=float).reshape(-1),
                }
            )
        )
    columns = list(COLUMNS["indices"])
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def loops_tables(loops: xr.Dataset) -> dict[str, pd.DataFrame]:
    """A run's loop analysis (``loops.nc``) as long tables: ``attribution``, ``loops``, ``loop_scores``.

    Only the tables the run computed are returned (attribution with
    ``[attribution]``, the other two with ``[loop_dominance]``).
    """
    tables: dict[str, pd.DataFrame] = {}
    if "attribution_share" in loops:
        share = loops["attribution_share"].transpose("scenario", "attributed", "loop_group")
        change = loops["attribution_change"].transpose("scenario", "attributed", "loop_group")
        scenarios, stocks, groups = (
            [str(v) for v in share[d].values] for d in ("scenario", "attributed", "loop_group")
        )
        kinds = [str(v) for v in loops["group_kind"].values] if "group_kind" in loops.coords else [""] * len(groups)
        n_s, n_a, n_g = len(scenarios), len(stocks), len(groups)
        tables["attribution"] = pd.DataFrame(
            {
                "scenario": np.repeat(scenarios, n_a * n_g),
                "stock": np.tile(np.repeat(stocks, n_g), n_s),
                "group": np.tile(groups, n_s * n_a),
                "kind": np.tile(kinds, n_s * n_a),
                "share": np.asarray(share.values, dtype=float).reshape(-1),
                "change": np.asarray(change.values, dtype=float).reshape(-1),
            }
        )
    if "relative_loop_score" in loops:
        ids = [str(v) for v in loops["loop"].values]
        described = {
            "polarity": "polarity",
            "length": "length",
            "loop_variables": "variables",
            "partition": "partition",
        }
        tables["loops"] = pd.DataFrame(
            {"loop": ids, **{col: loops[c].values for c, col in described.items() if c in loops.coords}}
        )
        score = loops["loop_score"].transpose("scenario", "loop", "time")
        relative = loops["relative_loop_score"].transpose("scenario", "loop", "time")
        scenarios = [str(v) for v in score["scenario"].values]
        times = score["time"].values.astype(float)
        n_s, n_l, n_t = len(scenarios), len(ids), len(times)
        tables["loop_scores"] = pd.DataFrame(
            {
                "scenario": np.repeat(scenarios, n_l * n_t),
                "loop": np.tile(np.repeat(ids, n_t), n_s),
                "time": np.tile(times, n_s * n_l),
                "score": np.asarray(score.values, dtype=float).reshape(-1),
                "relative_score": np.asarray(relative.values, dtype=float).reshape(-1),
            }
        )
    return tables


def dictionary_table(ds: xr.Dataset, ensemble: xr.Dataset | None = None) -> pd.DataFrame:
    """The data dictionary: table, variable, name, units, description of every variable exported."""
    rows: list[dict[str, str]] = []

    def add(table: str, key: Any, da: xr.DataArray) -> None:
        variable = _split(_name(da, key))[0] if len(da.dims) == 1 + ("time" in da.dims) else _name(da, key)
        for row in rows:  # elements saved or sampled one by one: one row, naming every key
            if (row["table"], row["variable"]) == (table, variable):
                row["name"] += f", {key}"
                return
        rows.append(
            {
                "table": table,
                "variable": variable,
                "name": str(key),
                "units": str(da.attrs.get("units", "")),
                "description": " ".join(str(da.attrs.get("description", "")).split()),
            }
        )

    time_units = str(ds.attrs.get("time_units", ""))
    rows.append(
        {"table": "results", "variable": "time", "name": "time", "units": time_units, "description": "model time"}
    )
    for key, da in ds.data_vars.items():
        if da.dims[:1] == ("scenario",):
            add("results", key, da)
    for key, da in ds.coords.items():
        if key not in SCENARIO_COLUMNS and da.dims[:1] == ("scenario",) and da.dtype.kind in "fiub":
            add("parameters", key, da)
    if ensemble is not None:
        for key, da in ensemble.coords.items():
            if key != "run" and _per_run(da):
                add("ensemble_runs", key, da)
        for key, da in ensemble.data_vars.items():
            if _per_run(da):
                add("ensemble_runs", key, da)
            elif "time" in da.dims:
                add("ensemble_series", key, da)
    return pd.DataFrame(rows, columns=list(COLUMNS["dictionary"]))


def _shortest(x: float) -> str:
    return repr(float(x))


def _writer(fmt: str) -> Callable[[pd.DataFrame, Path], None]:
    if fmt == "csv":

        def write_csv(table: pd.DataFrame, path: Path) -> None:
            # repr: the shortest text that parses back to the same double.
            table.to_csv(path, index=False, float_format=_shortest, lineterminator="\n")

        return write_csv
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401  (optional: armsdyn[export])
        except ImportError:
            msg = (
                "--format parquet needs pyarrow, which is not installed: pip install 'armsdyn[export]' "
                "(or pip install pyarrow); --format csv needs nothing more"
            )
            raise ExportError(msg) from None

        def write_parquet(table: pd.DataFrame, path: Path) -> None:
            table.to_parquet(path, engine="pyarrow", index=False)

        return write_parquet
    msg = f"export format {fmt!r} is not known; allowed: {', '.join(FORMATS)}"
    raise ExportError(msg)


def export_results(
    results: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    fmt: str = "csv",
    force: bool = False,
) -> Path:
    """Export a results folder as tidy long tables with a data dictionary.

    Parameters
    ----------
    results : path-like
        A results folder written by ``armsdyn run`` (or
        :func:`armsdyn.run_experiment`).
    out : path-like, optional
        The export folder to create (default ``RESULTS/export``).
    fmt : {"csv", "parquet"}
        Table format. Parquet needs pyarrow (``pip install 'armsdyn[export]'``).
    force : bool
        Replace an existing export folder that armsdyn wrote.

    Returns
    -------
    pathlib.Path
        The export folder, holding ``results``, ``scenarios``, ``parameters``,
        ``dictionary`` (and for a sensitivity study ``ensemble_runs``,
        ``ensemble_series`` and ``indices``; for a run with a loop analysis
        ``attribution`` or ``loops`` and ``loop_scores``) as ``.csv`` or
        ``.parquet``, and ``manifest.json``.

    Raises
    ------
    ResultsError
        If `results` is not a results folder, or the export folder exists
        (without `force`), is locked or cannot be written; nothing is left
        half-written.
    ExportError
        If `fmt` is not one of :data:`FORMATS`, or is ``"parquet"`` without pyarrow.

    Examples
    --------
    >>> folder = armsdyn.export_results("results/richardson")  # doctest: +SKIP
    >>> pd.read_csv(folder / "results.csv")  # doctest: +SKIP
    """
    write = _writer(fmt)
    results = Path(results)
    target = Path(out) if out is not None else results / EXPORT_DIR
    # Reading is under the results folder's lock only when the export goes inside it.
    source, dest = Path(os.path.abspath(results)), Path(os.path.abspath(target))
    if source.is_relative_to(dest):
        msg = f"{target}: is the results folder {results} (or holds it); name another export folder"
        raise ResultsError(msg)
    if (dest.exists() or dest.is_symlink()) and not force:
        msg = f"{target}: export folder already exists; pass --force to replace it, or --out to write elsewhere"
        raise ResultsError(msg)
    inside = dest.is_relative_to(source)
    with locked(results) if inside else contextlib.nullcontext():
        ds, manifest, study = read_results_folder(results)
        tables = {
            "results": results_table(ds),
            "scenarios": scenarios_table(ds),
            "parameters": parameters_table(ds),
        }
        ensemble = study[0] if study else None
        if ensemble is not None:
            tables["ensemble_runs"], series = ensemble_tables(ensemble)
            if len(series):
                tables["ensemble_series"] = series
            if len(study) > 1:
                tables["indices"] = indices_table(study[1])
        if (results / LOOPS_FILE).is_file():
            tables |= loops_tables(_open(results / LOOPS_FILE))
        tables["dictionary"] = dictionary_table(ds, ensemble)
        sources = [RESULTS_FILE, MANIFEST_FILE, *([LOOPS_FILE] if (results / LOOPS_FILE).is_file() else [])]
        sources += [f"{STUDY_DIR}/{n}" for n in (ENSEMBLE_FILE, INDICES_FILE) if (results / STUDY_DIR / n).is_file()]
        with atomic_folder(target, force=force) as tmp:
            for name, table in tables.items():
                write(table, tmp / f"{name}.{fmt}")
            files = {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
            record = {
                "export": {"format": fmt, "created": now(), "rows": {n: len(t) for n, t in tables.items()}},
                "source": {
                    "folder": str(results.resolve()),
                    "experiment": manifest.get("experiment"),
                    "files": {n: file_sha256(results / n) for n in sources},
                },
                "tables": {n: COLUMNS[n] for n in tables},
                "versions": {"armsdyn": __version__, "pandas": pd.__version__},
                "files": files,
            }
            (tmp / MANIFEST_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return target

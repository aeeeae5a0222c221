"""Compare two results folders: metrics, variables and the provenance that explains their differences.

``armsdyn compare A B`` answers "what changed, by how much, and why": each
metric of each scenario side by side with B - A, each saved variable's
largest absolute difference (and where it is), and the differences between
the two manifests (config, model hash, time settings, package versions,
engine) with a line diff of the two configs. ``--figure`` overlays the time
series of the variables that differ most, A solid and B dashed.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.lines import Line2D

from armsdyn import __version__
from armsdyn.errors import ArmsdynError, ResultsError
from armsdyn.export import read_results_folder
from armsdyn.figures import DOUBLE_COLUMN, FORMATS, axis_label, paper_style, save_figure
from armsdyn.model import file_sha256
from armsdyn.output import MANIFEST_FILE, METRICS_FILE, atomic_folder, now

#: Manifest entries that record when and how a run was made, not what it computed.
IGNORED_MANIFEST_KEYS = ("started", "finished", "files", "config.text", "figures_redrawn")
#: Variables drawn by ``--figure`` unless told otherwise.
TOP = 4
#: Scenarios drawn per panel at most (those where the variable differs most).
MAX_SCENARIOS = 5


class CompareError(ArmsdynError, ValueError):
    """A comparison was asked for that cannot be made (e.g. a figure in an unknown format)."""


@dataclass(frozen=True)
class Comparison:
    """Two results folders compared.

    Attributes
    ----------
    a, b : pathlib.Path
        The folders.
    metrics : pandas.DataFrame
        One row per scenario and metric of both folders: ``scenario``,
        ``metric``, ``a``, ``b``, ``difference`` (B - A, numeric metrics only)
        and ``differs``.
    variables : pandas.DataFrame
        One row per variable saved in both: ``variable``, ``units``,
        ``max_abs_difference`` (over the scenarios and times both hold; inf
        where one is finite and the other not), ``relative`` (to A's largest
        magnitude in that scenario), and where it occurs: ``scenario``, ``time``, ``element``,
        ``a``, ``b``. Sorted, largest relative difference first.
    manifest : pandas.DataFrame
        The manifest entries that differ: ``key`` (dotted), ``a``, ``b``.
    config_diff : list of str
        A unified diff of the two recorded config texts (empty if identical).
    notes : list of str
        Scenarios, metrics or variables only one folder holds, and time grids that differ.
    """

    a: Path
    b: Path
    metrics: pd.DataFrame
    variables: pd.DataFrame
    manifest: pd.DataFrame
    config_diff: list[str]
    notes: list[str]
    datasets: tuple[xr.Dataset, xr.Dataset] = field(repr=False, compare=False)

    @property
    def identical(self) -> bool:
        """True when no metric and no variable differs."""
        return not bool(self.metrics["differs"].any()) and not bool((self.variables["max_abs_difference"] > 0).any())

    def report(self, *, all_metrics: bool = False) -> str:
        """The comparison as text: provenance differences, config diff, metrics and variables.

        Parameters
        ----------
        all_metrics : bool
            List every metric, not only those that differ.
        """
        lines = [f"A: {self.a}", f"B: {self.b}", ""]
        if len(self.manifest):
            lines.append("Manifest differences (what may explain the results' differences):")
            for row in self.manifest.itertuples(index=False):
                a, b = _short(row.a), _short(row.b)
                if str(row.key).endswith("sha256"):  # a hash says "changed"; its first digits suffice
                    a, b = a[:12], b[:12]
                lines.append(f"  {row.key}: {a} -> {b}")
        else:
            lines.append("Manifests: same config, model, time settings, versions and engine.")
        if self.config_diff:
            lines += ["", "Config diff (A -> B):", *(f"  {line}" for line in self.config_diff)]
        lines.append("")
        changed = self.metrics[self.metrics["differs"]]
        shown = self.metrics if all_metrics else changed
        lines.append(f"Metrics: {len(changed)} of {len(self.metrics)} differ (B - A)" + (":" if len(shown) else "."))
        if len(shown):
            table = shown.drop(columns="differs" if not all_metrics else []).assign(
                a=shown["a"].map(_short), b=shown["b"].map(_short), difference=shown["difference"].map(_short)
            )
            lines += ["  " + line for line in table.to_string(index=False).splitlines()]
        lines.append("")
        differing = self.variables[self.variables["max_abs_difference"] > 0]
        lines.append(
            f"Variables: {len(differing)} of {len(self.variables)} differ; largest |B - A| over the common "
            "scenarios and times" + (":" if len(self.variables) else ".")
        )
        if len(self.variables):
            table = self.variables.copy()
            for column in ("max_abs_difference", "relative", "time", "a", "b"):
                table[column] = table[column].map(_short)
            lines += ["  " + line for line in table.to_string(index=False).splitlines()]
        if self.notes:
            lines += ["", "Notes:", *(f"  {note}" for note in self.notes)]
        return "\n".join(lines)


def _short(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return "" if np.isnan(value) else f"{value:.6g}"
    if isinstance(value, list):
        return ", ".join(map(str, value))
    text = "(none)" if value is None else str(value)
    return text if len(text) <= 72 else text[:69] + "..."


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def manifest_differences(a: Mapping[str, Any], b: Mapping[str, Any]) -> pd.DataFrame:
    """The entries of two manifests that differ (dotted keys), ignoring times and file hashes."""
    flat_a, flat_b = _flatten(a), _flatten(b)
    keys = list(flat_a) + [k for k in flat_b if k not in flat_a]
    rows = [
        {"key": key, "a": flat_a.get(key), "b": flat_b.get(key)}
        for key in keys
        if not any(key == ignored or key.startswith(ignored + ".") for ignored in IGNORED_MANIFEST_KEYS)
        and flat_a.get(key) != flat_b.get(key)
    ]
    return pd.DataFrame(rows, columns=["key", "a", "b"])


def config_diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """A unified diff of two manifests' recorded config texts."""
    text_a = str((a.get("config") or {}).get("text") or "")
    text_b = str((b.get("config") or {}).get("text") or "")
    return list(difflib.unified_diff(text_a.splitlines(), text_b.splitlines(), "A", "B", n=0, lineterm=""))


def _read_metrics(folder: Path) -> pd.DataFrame:
    path = folder / METRICS_FILE
    try:
        return pd.read_csv(path, index_col=0)
    except FileNotFoundError:
        return pd.DataFrame()
    except (OSError, ValueError) as exc:
        msg = f"{path}: cannot read ({exc})"
        raise ResultsError(msg) from exc


def compare_metrics(a: pd.DataFrame, b: pd.DataFrame, notes: list[str] | None = None) -> pd.DataFrame:
    """Metrics tables (one row per scenario) side by side, long: scenario, metric, a, b, difference, differs."""
    notes = notes if notes is not None else []
    scenarios = [s for s in a.index if s in b.index]
    metrics = [m for m in a.columns if m in b.columns]
    for label, one, other in (("A", a, b), ("B", b, a)):
        if only := [str(s) for s in one.index if s not in other.index]:
            notes.append(f"scenarios only in {label}: {', '.join(only)}")
        if only := [str(m) for m in one.columns if m not in other.columns]:
            notes.append(f"metrics only in {label}: {', '.join(only)}")
    rows = []
    for scenario in scenarios:
        for metric in metrics:
            va, vb = a.at[scenario, metric], b.at[scenario, metric]
            numeric = pd.api.types.is_numeric_dtype(a[metric]) and pd.api.types.is_numeric_dtype(b[metric])
            missing_a, missing_b = bool(pd.isna(va)), bool(pd.isna(vb))
            if numeric:
                va, vb = float(va), float(vb)
                difference = vb - va if not (missing_a or missing_b) else np.nan
                same = va == vb or (missing_a and missing_b)
            else:
                difference = np.nan
                same = (missing_a and missing_b) or (not missing_a and not missing_b and str(va) == str(vb))
            rows.append(
                {
                    "scenario": str(scenario),
                    "metric": str(metric),
                    "a": va,
                    "b": vb,
                    "difference": difference,
                    "differs": not same,
                }
            )
    return pd.DataFrame(rows, columns=["scenario", "metric", "a", "b", "difference", "differs"])


def _by_name(ds: xr.Dataset) -> dict[str, xr.DataArray]:
    return {str(da.attrs.get("long_name", key)): da for key, da in ds.data_vars.items() if da.dims[:1] == ("scenario",)}


def _absolute_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|b - a| elementwise: 0 where both are equal (inf and NaN included), inf where only one is finite."""
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(b - a)
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    return np.where(same, 0.0, np.where(np.isnan(diff), np.inf, diff))


def _aligned(da_a: xr.DataArray, da_b: xr.DataArray) -> tuple[xr.DataArray, xr.DataArray]:
    da_a, da_b = xr.align(da_a.reset_coords(drop=True), da_b.reset_coords(drop=True), join="inner")
    da_b = da_b.transpose(*da_a.dims)
    return da_a, da_b


def compare_variables(ds_a: xr.Dataset, ds_b: xr.Dataset, notes: list[str] | None = None) -> pd.DataFrame:
    """Each variable both hold: its largest absolute difference over the scenarios and times both hold."""
    notes = notes if notes is not None else []
    vars_a, vars_b = _by_name(ds_a), _by_name(ds_b)
    for label, one, other in (("A", vars_a, vars_b), ("B", vars_b, vars_a)):
        if only := [n for n in one if n not in other]:
            notes.append(f"variables only in {label}: {', '.join(only)}")
    times_a, times_b = ds_a["time"].values, ds_b["time"].values
    if not np.array_equal(times_a, times_b):
        common = np.intersect1d(times_a, times_b)
        notes.append(
            f"time grids differ (A: {len(times_a)} times from {times_a[0]:g} to {times_a[-1]:g}; B: {len(times_b)} "
            f"from {times_b[0]:g} to {times_b[-1]:g}); compared at the {len(common)} times both saved"
        )
    rows = []
    for name, da_a in vars_a.items():
        if name not in vars_b:
            continue
        a, b = _aligned(da_a, vars_b[name])
        row: dict[str, Any] = {"variable": name, "units": str(da_a.attrs.get("units", ""))}
        if a.size == 0:
            notes.append(f"{name!r}: no scenario, time or element in common")
            continue
        diff = _absolute_difference(a.values.astype(float), b.values.astype(float))
        at = np.unravel_index(int(np.argmax(diff)), diff.shape)
        where = dict(zip(a.dims, at, strict=True))
        extra = [d for d in a.dims if d not in ("scenario", "time")]
        # Relative to A's largest magnitude in the scenario where the difference is largest.
        in_scenario = np.abs(a.isel(scenario=where["scenario"]).values)
        finite = in_scenario[np.isfinite(in_scenario)]
        scale = float(finite.max()) if finite.size else 0.0
        largest = float(diff[at])
        row.update(
            {
                "max_abs_difference": largest,
                "relative": largest / scale if scale > 0 else (0.0 if largest == 0 else np.inf),
                "scenario": str(a["scenario"].values[where["scenario"]]),
                "time": float(a["time"].values[where["time"]]) if "time" in where else np.nan,
                "element": ", ".join(str(a[d].values[where[d]]) for d in extra),
                "a": float(a.values[at]),
                "b": float(b.values[at]),
            }
        )
        rows.append(row)
    columns = ["variable", "units", "max_abs_difference", "relative", "scenario", "time", "element", "a", "b"]
    table = pd.DataFrame(rows, columns=columns)
    order = np.lexsort((-table["max_abs_difference"].to_numpy(float), -table["relative"].to_numpy(float)))
    return table.iloc[order].reset_index(drop=True)


def compare_results(
    a: str | os.PathLike[str],
    b: str | os.PathLike[str],
    *,
    figure: str | os.PathLike[str] | None = None,
    top: int = TOP,
) -> Comparison:
    """Compare two results folders.

    Parameters
    ----------
    a, b : path-like
        Results folders written by ``armsdyn run`` (e.g. before and after a
        model change, or two configs differing by a parameter).
    figure : path-like, optional
        Also draw the time series of the `top` variables that differ most,
        A solid and B dashed, into this file (``.png``, ``.pdf`` or ``.svg``).
    top : int
        Variables in the figure.

    Returns
    -------
    Comparison
        Metrics side by side, variables' largest differences, manifest and
        config differences; ``Comparison.report()`` gives the text the
        command prints.

    Raises
    ------
    ResultsError
        If `a` or `b` is not a results folder, or the figure cannot be written.
    CompareError
        If the figure's format is not one of png, pdf, svg, or `top` < 1.

    Examples
    --------
    >>> c = armsdyn.compare_results("results/before", "results/after")  # doctest: +SKIP
    >>> print(c.report())  # doctest: +SKIP
    >>> c.metrics[c.metrics["differs"]]  # doctest: +SKIP
    """
    if figure is not None:
        _figure_format(Path(figure))
        if top < 1:
            msg = f"--top {top}: draw at least one variable"
            raise CompareError(msg)
    a, b = Path(a), Path(b)
    ds_a, manifest_a, study_a = read_results_folder(a)
    ds_b, manifest_b, study_b = read_results_folder(b)
    notes: list[str] = []
    if study_a or study_b:
        notes.append("sensitivity studies (sensitivity/) are not compared; their manifests' engine entries are")
    comparison = Comparison(
        a=a,
        b=b,
        metrics=compare_metrics(_read_metrics(a), _read_metrics(b), notes),
        variables=compare_variables(ds_a, ds_b, notes),
        manifest=manifest_differences(manifest_a, manifest_b),
        config_diff=config_diff(manifest_a, manifest_b),
        notes=notes,
        datasets=(ds_a, ds_b),
    )
    if figure is not None:
        draw_comparison(comparison, figure, top=top)
    return comparison


def _figure_format(path: Path) -> str:
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        msg = f"{path}: a figure's name must end in one of {', '.join('.' + f for f in FORMATS)}"
        raise CompareError(msg)
    return fmt


@contextlib.contextmanager
def _staged(path: Path) -> Iterator[Path]:
    """A temporary stem beside `path`, renamed onto `path` when the block succeeds."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.partial-", dir=path.parent)
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        msg = f"{path}: cannot write the figure ({exc.strerror}); is the folder writable?"
        raise ResultsError(msg) from exc
    staged = Path(tmp)
    written = staged.parent / f"{staged.name}.{_figure_format(path)}"
    try:
        yield staged
        os.replace(written, path)
    except OSError as exc:
        msg = f"{path}: cannot write the figure ({exc})"
        raise ResultsError(msg) from exc
    finally:
        with contextlib.suppress(OSError):
            written.unlink()


def draw_comparison(comparison: Comparison, path: str | os.PathLike[str], *, top: int = TOP) -> list[str]:
    """Overlay A's (solid) and B's (dashed) time series of the variables that differ most.

    One panel per variable; in each, the scenarios where it differs most (at
    most five; those where it does not differ are left out), one colour per scenario; a subscripted variable shows the
    element where it differs most. Written atomically.

    Returns
    -------
    list of str
        The variables drawn, in panel order.
    """
    path = Path(path)
    _figure_format(path)
    ds_a, ds_b = comparison.datasets
    table = comparison.variables
    chosen = table[np.isfinite(table["time"].to_numpy(float))].head(top)
    if chosen.empty:
        msg = f"{path}: no variable over time is saved in both folders; nothing to draw"
        raise CompareError(msg)
    vars_a, vars_b = _by_name(ds_a), _by_name(ds_b)
    with paper_style():
        fig, axes = plt.subplots(
            len(chosen),
            1,
            squeeze=False,
            sharex=True,
            figsize=(DOUBLE_COLUMN, 0.9 + 1.9 * len(chosen)),
            layout="constrained",
        )
        try:
            colours = plt.rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
            scenario_colour: dict[str, str] = {}
            for panel, row in zip(axes[:, 0], chosen.itertuples(index=False), strict=True):
                a, b = _aligned(vars_a[row.variable], vars_b[row.variable])
                extra = [d for d in a.dims if d not in ("scenario", "time")]
                if extra:
                    pick = dict(zip(extra, [e.strip() for e in row.element.split(",")], strict=True))
                    a, b = a.sel(pick), b.sel(pick)
                by_scenario = _absolute_difference(a.values, b.values).max(axis=a.dims.index("time"))
                # Only the scenarios where it differs (the unchanged ones would set the scale).
                order = [int(i) for i in np.argsort(-by_scenario, kind="stable") if by_scenario[i] > 0]
                order = order[:MAX_SCENARIOS] or [0]
                for i in order:
                    scenario = str(a["scenario"].values[i])
                    colour = scenario_colour.setdefault(scenario, colours[len(scenario_colour) % len(colours)])
                    t = a["time"].values
                    panel.plot(t, a.isel(scenario=i).values, color=colour, linestyle="-")
                    panel.plot(t, b.isel(scenario=i).values, color=colour, linestyle="--")
                label = vars_a[row.variable].attrs.get("long_name", row.variable)
                title = f"{label}[{row.element}]" if row.element else str(label)
                panel.set_title(f"{title}: max |B - A| = {row.max_abs_difference:.3g}", loc="left")
                panel.set_ylabel(row.units or "value")
            axes[-1, 0].set_xlabel(axis_label(ds_a["time"]))
            handles = [Line2D([], [], color=c, label=s) for s, c in scenario_colour.items()]
            handles += [
                Line2D([], [], color="0.3", linestyle="-", label=f"A: {comparison.a.name}"),
                Line2D([], [], color="0.3", linestyle="--", label=f"B: {comparison.b.name}"),
            ]
            fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 4))
            with _staged(path) as stem:
                save_figure(fig, stem, [_figure_format(path)])
        finally:
            plt.close(fig)
    return [str(v) for v in chosen["variable"]]


def _cell(value: Any) -> Any:
    return value if value is None or isinstance(value, str | int | float) else json.dumps(value)


def write_comparison(
    comparison: Comparison, out: str | os.PathLike[str], *, force: bool = False, all_metrics: bool = True
) -> Path:
    """Write a comparison's tables into a new folder, atomically.

    The folder holds ``metrics.csv`` (every metric of every scenario both
    folders hold, or with `all_metrics` False only those that differ),
    ``variables.csv``, ``manifest_differences.csv``, ``config.diff``,
    ``report.txt`` and a ``manifest.json`` naming A and B.

    Raises
    ------
    ResultsError
        If `out` exists (without `force`), is locked or cannot be written.
    """
    out = Path(out)
    metrics = comparison.metrics if all_metrics else comparison.metrics[comparison.metrics["differs"]]
    with atomic_folder(out, force=force) as tmp:
        metrics.to_csv(tmp / "metrics.csv", index=False, lineterminator="\n")
        comparison.variables.to_csv(tmp / "variables.csv", index=False, lineterminator="\n")
        comparison.manifest.map(_cell).to_csv(tmp / "manifest_differences.csv", index=False, lineterminator="\n")
        (tmp / "config.diff").write_text("".join(f"{line}\n" for line in comparison.config_diff), encoding="utf-8")
        (tmp / "report.txt").write_text(comparison.report(all_metrics=all_metrics) + "\n", encoding="utf-8")
        record = {
            "compare": {"a": str(comparison.a.resolve()), "b": str(comparison.b.resolve()), "created": now()},
            "identical": comparison.identical,
            "versions": {"armsdyn": __version__},
            "files": {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()},
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return out

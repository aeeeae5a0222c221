"""Load historical military-expenditure data as tidy tables with their units stated.

Every loader returns a :class:`pandas.DataFrame` indexed by year (or the file's
time column), one column per series, and states the units in ``attrs``:

- ``attrs["units"]``: dict of column name to units;
- ``attrs["time_units"]``: the unit of the index;
- ``attrs["source"]``: the file read.

Three readers are provided:

- :func:`load_csv` for any CSV with a time column, wide (a column per series)
  or tidy (a series column and a value column);
- :func:`load_nmc` for the Correlates of War National Material Capabilities
  (NMC v6) table, by state code or abbreviation, single states or coalitions
  summed;
- :func:`load_sipri` for the SIPRI Military Expenditure Database in long
  ``country,year,value`` form.

Unit conventions matter more than anything else here: NMC's ``milex`` is in
thousands of current pounds sterling up to 1913 and thousands of current US
dollars from 1914, so a series crossing 1913/1914 jumps by the exchange rate.
:func:`load_nmc` refuses to mix the eras unless told how to convert.
Empty cells are missing values (NaN); text in a numeric column is an error.

References
----------
.. [1] Singer, J. D., Bremer, S. and Stuckey, J. (1972). Capability distribution,
   uncertainty, and major power war, 1820-1965. In B. Russett (ed.), *Peace, War,
   and Numbers*, 19-48. Beverly Hills: Sage.
.. [2] Greig, J. M. and Enterline, A. J. (2021). *National Material Capabilities
   (NMC) Data Documentation, version 6.0*. Correlates of War Project.
.. [3] SIPRI Military Expenditure Database (2023). Stockholm International Peace
   Research Institute. https://www.sipri.org/databases/milex
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from armsdyn.errors import ArmsdynError, did_you_mean

#: Last year in which NMC's ``milex`` is in pounds sterling; dollars from the next year.
NMC_POUND_ERA_END = 1913

#: Units of the NMC v6 variables (codebook, Greig and Enterline 2021).
NMC_UNITS: dict[str, str] = {
    "milex": "",  # depends on the era; see nmc_milex_units
    "milper": "thousands of military personnel",
    "irst": "thousands of tons of iron and steel",
    "pec": "thousands of coal-ton equivalents of energy",
    "tpop": "thousands of people",
    "upop": "thousands of people in cities",
    "cinc": "share of the system's capabilities (0-1)",
}

#: NMC's code for a missing value.
NMC_MISSING = -9

#: SIPRI file kinds: a marker in the file name, and the units of its values.
SIPRI_KINDS: dict[str, str] = {
    "constant2021usd": "million US dollars at constant 2021 prices",
    "share_gdp": "fraction of GDP",
    "current_usd": "million current US dollars",
    "currentusd": "million current US dollars",
    "per_capita": "current US dollars per person",
}

#: A state given to :func:`load_nmc`: its COW abbreviation (e.g. ``"USA"``) or code (``2``).
State = str | int


class DataError(ArmsdynError, ValueError):
    """A data file is missing, malformed, or cannot give the series asked for."""


class DataWarning(UserWarning):
    """Observed series have gaps or values a quantity such as expenditure cannot take."""


@dataclass(frozen=True)
class SeriesGaps:
    """Where observed series have holes or negative values.

    Attributes
    ----------
    step : float
        The regular spacing of the times (the smallest gap between them).
    missing_times : tuple of float
        Times on that regular grid, between the first and last, with no row at all.
    missing : mapping of str to tuple of float
        Per series: times of rows where its value is missing (empty cell).
    negative : mapping of str to tuple of float
        Per series: times where its value is below zero.
    """

    step: float
    missing_times: tuple[float, ...]
    missing: Mapping[str, tuple[float, ...]]
    negative: Mapping[str, tuple[float, ...]]

    @property
    def has_gaps(self) -> bool:
        """True if any time of the regular grid lacks a row or a value."""
        return bool(self.missing_times) or any(self.missing.values())

    def describe_gaps(self) -> str:
        """``"no rows for 1961-1962; 'usa' missing in 1970"`` (empty when there are no gaps)."""
        parts = []
        if self.missing_times:
            parts.append(f"no rows for {format_times(self.missing_times, self.step)}")
        parts += [
            f"{name!r} missing in {format_times(times, self.step)}" for name, times in self.missing.items() if times
        ]
        return "; ".join(parts)

    def describe_negative(self) -> str:
        """``"'usa' in 1955, 1957-1958"`` (empty when no value is negative)."""
        return "; ".join(
            f"{name!r} in {format_times(times, self.step)}" for name, times in self.negative.items() if times
        )


def format_times(times: Sequence[float], step: float = 1.0, limit: int = 12) -> str:
    """Times as compact ranges: ``1950, 1953-1955`` (at most `limit` ranges, then "and N more")."""
    ranges: list[list[float]] = []
    for t in sorted(times):
        if ranges and math.isclose(t - ranges[-1][1], step, rel_tol=1e-9):
            ranges[-1][1] = t
        else:
            ranges.append([t, t])
    text = [f"{a:g}" if a == b else f"{a:g}-{b:g}" for a, b in ranges[:limit]]
    if len(ranges) > limit:
        text.append(f"and {len(ranges) - limit} more")
    return ", ".join(text)


def find_gaps(frame: pd.DataFrame) -> SeriesGaps:
    """Missing times, missing values and negative values of series indexed by time.

    The regular spacing is the smallest gap between consecutive times; a time on
    that grid between the first and the last without a row is missing.
    """
    t = frame.index.to_numpy(dtype=float)
    gaps = np.diff(t)
    step = float(gaps.min()) if gaps.size and gaps.min() > 0 else 1.0
    missing_times: list[float] = []
    if gaps.size and (t[-1] - t[0]) / step <= 1_000_000:
        grid = t[0] + step * np.arange(round((t[-1] - t[0]) / step) + 1)
        have = np.isclose(grid[:, None], t[None, :], rtol=0, atol=1e-9 * step).any(axis=1)
        missing_times = [float(x) for x in grid[~have]]
    missing = {str(c): tuple(float(x) for x in t[frame[c].isna().to_numpy()]) for c in frame.columns}
    negative = {str(c): tuple(float(x) for x in t[(frame[c] < 0).to_numpy()]) for c in frame.columns}
    return SeriesGaps(step, tuple(missing_times), missing, negative)


def _read(path: Path, what: str) -> pd.DataFrame:
    """Read a CSV as text cells, so every conversion can be checked and reported."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except FileNotFoundError:
        msg = f"{path}: {what} file not found"
        raise DataError(msg) from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        msg = f"{path}: cannot read {what} file as CSV: {exc}"
        raise DataError(msg) from None


def _require_columns(frame: pd.DataFrame, names: Sequence[str], path: Path) -> None:
    have = [str(c) for c in frame.columns]
    for name in names:
        if name not in frame.columns:
            msg = f"{path}: no column {name!r}{did_you_mean(name, have)} (columns: {', '.join(have)})"
            raise DataError(msg)


def _numeric(frame: pd.DataFrame, column: str, path: Path, *, missing: bool = True) -> np.ndarray:
    """A column as floats; empty cells are NaN when `missing`, text is an error naming the row.

    Row numbers are the file's line numbers (the header is line 1), which is what
    a user sees in an editor.
    """
    cells = frame[column].astype(str).str.strip()
    values = pd.to_numeric(cells.where(cells != ""), errors="coerce").to_numpy(dtype=float)
    bad = ~np.isfinite(values) & ((cells != "").to_numpy() | (not missing))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        cell = frame[column].iloc[i]
        what = "an empty cell" if cells.iloc[i] == "" else f"{cell!r}, which is not a number"
        more = f" ({int(bad.sum()) - 1} more such cells)" if bad.sum() > 1 else ""
        msg = f"{path}: column {column!r}, line {i + 2}: {what}{more}"
        raise DataError(msg)
    return values


def _check_times(times: np.ndarray, column: str, path: Path, rows: np.ndarray | None = None) -> None:
    """Times must increase strictly: name the first pair of lines that do not."""
    lines = np.arange(len(times)) + 2 if rows is None else rows
    for i in range(1, len(times)):
        if times[i] == times[i - 1]:
            msg = f"{path}: column {column!r}: duplicate time {times[i]:g} on lines {lines[i - 1]} and {lines[i]}"
            raise DataError(msg)
        if times[i] < times[i - 1]:
            msg = (
                f"{path}: column {column!r}: times must increase; {times[i]:g} on line {lines[i]} "
                f"follows {times[i - 1]:g} on line {lines[i - 1]}"
            )
            raise DataError(msg)


def _as_index(times: np.ndarray, name: str) -> pd.Index:
    # Whole-number times (years) stay integers, so rows print and match as years.
    if np.all(np.isfinite(times)) and np.all(times == np.round(times)):
        return pd.Index(times.astype(np.int64), name=name)
    return pd.Index(times, name=name)


def _select_years(frame: pd.DataFrame, years: tuple[float, float] | None, path: Path) -> pd.DataFrame:
    if years is None:
        return frame
    low, high = years
    if low > high:
        msg = f"{path}: years ({low}, {high}): the first year must not be after the last"
        raise DataError(msg)
    out = frame.loc[(frame.index >= low) & (frame.index <= high)]
    if out.empty:
        msg = f"{path}: no rows in years {low}-{high} (the data cover {frame.index.min()}-{frame.index.max()})"
        raise DataError(msg)
    return out


def _finish(frame: pd.DataFrame, units: Mapping[str, str], time_units: str, path: Path) -> pd.DataFrame:
    frame.attrs["units"] = dict(units)
    frame.attrs["time_units"] = time_units
    frame.attrs["source"] = str(path)
    return frame


def load_csv(
    path: str | os.PathLike[str],
    time: str = "year",
    columns: Sequence[str] | Mapping[str, str] | None = None,
    units: str | Mapping[str, str] | None = None,
    *,
    series: str | None = None,
    value: str = "value",
    time_units: str = "year",
) -> pd.DataFrame:
    """Read a wide or tidy CSV with a time column.

    Parameters
    ----------
    path : path-like
        The CSV file (header in the first line).
    time : str
        Name of the time column (e.g. ``"year"``).
    columns : sequence of str or mapping of str to str, optional
        Series to keep: column names (wide), or values of `series` (tidy); a
        mapping renames them (``{"france": "France"}``). Default: every series.
    units : str or mapping of str to str, optional
        Units of the values: one string for all series, or one per (renamed)
        series. Default ``"unknown"``, stated so, since a CSV does not say.
    series : str, optional
        For a tidy file: the column naming the series (e.g. ``"country"``);
        the file is then pivoted to one column per series.
    value : str
        For a tidy file: the column holding the values.
    time_units : str
        Unit of the time column.

    Returns
    -------
    pandas.DataFrame
        Indexed by time (strictly increasing), one float column per series;
        empty cells are NaN. ``attrs`` hold ``units``, ``time_units``, ``source``.

    Raises
    ------
    DataError
        If the file cannot be read, a column or series is missing, a cell is not
        a number, or times are unsorted or repeated (within a series) - each
        naming the file, column and line.
    """
    path = Path(path)
    raw = _read(path, "data")
    _require_columns(raw, [time] + ([series, value] if series else []), path)
    wanted = list(columns) if columns is not None else None
    rename = dict(columns) if isinstance(columns, Mapping) else {}
    times = _numeric(raw, time, path, missing=False)
    if series is None:
        names = wanted if wanted is not None else [c for c in raw.columns if c != time]
        _require_columns(raw, names, path)
        _check_times(times, time, path)
        frame = pd.DataFrame({name: _numeric(raw, name, path) for name in names}, index=_as_index(times, time))
    else:
        keys = raw[series].astype(str).str.strip()
        available = list(dict.fromkeys(keys))
        names = wanted if wanted is not None else available
        for name in names:
            if name not in available:
                msg = (
                    f"{path}: no series {name!r} in column {series!r}"
                    f"{did_you_mean(name, available)} ({len(available)} series in the file)"
                )
                raise DataError(msg)
        values = _numeric(raw, value, path)
        parts = {}
        for name in names:
            rows = np.flatnonzero((keys == name).to_numpy())
            _check_times(times[rows], time, path, rows + 2)
            parts[name] = pd.Series(values[rows], index=_as_index(times[rows], time))
        frame = pd.DataFrame(parts).sort_index()
        frame.index.name = time
    frame = frame.rename(columns=rename)
    unit_map = _units(units, list(frame.columns), path)
    return _finish(frame, unit_map, time_units, path)


def _units(units: str | Mapping[str, str] | None, names: list[str], path: Path) -> dict[str, str]:
    if units is None:
        return dict.fromkeys(names, "unknown")
    if isinstance(units, str):
        return dict.fromkeys(names, units)
    missing = [n for n in names if n not in units]
    if missing:
        msg = f"{path}: units not given for {', '.join(map(repr, missing))}; give one string or one per series"
        raise DataError(msg)
    return {n: units[n] for n in names}


def nmc_milex_units(first: int, last: int, era_conversion: float | Mapping[int, float] | None = None) -> str:
    """Units of NMC ``milex`` over the years `first`-`last` (after any era conversion)."""
    if last <= NMC_POUND_ERA_END:
        return "thousands of current pounds sterling"
    if first > NMC_POUND_ERA_END:
        return "thousands of current US dollars"
    rate = "yearly rates given" if isinstance(era_conversion, Mapping) else f"{era_conversion:g} US dollars per pound"
    return f"thousands of current US dollars (years to {NMC_POUND_ERA_END} converted from pounds at {rate})"


def load_nmc(
    path: str | os.PathLike[str],
    states: Sequence[State] | Mapping[str, Sequence[State]],
    variable: str = "milex",
    years: tuple[int, int] | None = None,
    era_conversion: float | Mapping[int, float] | None = None,
) -> pd.DataFrame:
    """Read a variable of the Correlates of War NMC v6 table for states or coalitions.

    Parameters
    ----------
    path : path-like
        The NMC CSV (columns ``stateabb``, ``ccode``, ``year`` and the variables).
    states : sequence of str or int, or mapping of str to sequence
        States by COW abbreviation (``"USA"``, any case) or code (``2``); or
        coalitions, ``{"Entente": ["FRN", "RUS"]}``, whose members are summed.
    variable : str
        An NMC variable: ``milex``, ``milper``, ``irst``, ``pec``, ``tpop``,
        ``upop`` or ``cinc``.
    years : (int, int), optional
        First and last year, inclusive. Default: every year in the file.
    era_conversion : float or mapping of int to float, optional
        For ``milex`` over years on both sides of 1913/1914: US dollars per
        pound sterling, one rate or one per pound-era year, applied to the
        values up to 1913. Without it such a span is refused.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``year``, one column per state (its abbreviation) or
        coalition. NMC's missing code (-9) and years a state did not exist are
        NaN; a coalition's total is NaN in any year a member's value is missing
        (a partial sum would look like a fall in spending).

    Raises
    ------
    DataError
        If a state or variable is unknown, the years select nothing, or the
        years mix the pound and dollar eras of ``milex`` without `era_conversion`.
    """
    path = Path(path)
    raw = _read(path, "NMC")
    _require_columns(raw, ["stateabb", "ccode", "year"], path)
    variables = [c for c in raw.columns if c in NMC_UNITS]
    if variable not in raw.columns or variable not in NMC_UNITS:
        hint = did_you_mean(variable, variables)
        msg = f"{path}: unknown NMC variable {variable!r}{hint} (allowed: {', '.join(variables)})"
        raise DataError(msg)
    groups = _groups(states)
    abbs = raw["stateabb"].str.strip().str.upper()
    codes = _numeric(raw, "ccode", path, missing=False).astype(int)
    abb_of_code = dict(zip(codes, abbs, strict=True))
    year = _numeric(raw, "year", path, missing=False).astype(int)
    values = _numeric(raw, variable, path)
    values[values == NMC_MISSING] = math.nan

    first, last = years if years is not None else (int(year.min()), int(year.max()))
    if first > last:
        msg = f"{path}: years ({first}, {last}): the first year must not be after the last"
        raise DataError(msg)
    if variable == "milex" and first <= NMC_POUND_ERA_END < last and era_conversion is None:
        msg = (
            f"{path}: NMC milex is in thousands of current pounds sterling up to {NMC_POUND_ERA_END} and in "
            f"thousands of current US dollars from {NMC_POUND_ERA_END + 1}; the years {first}-{last} span both, "
            f"so the series would jump in {NMC_POUND_ERA_END + 1}. Restrict years to end by {NMC_POUND_ERA_END} "
            f"or start from {NMC_POUND_ERA_END + 1}, or give era_conversion (US dollars per pound)"
        )
        raise DataError(msg)

    index = pd.Index(np.arange(first, last + 1), name="year")
    frame = pd.DataFrame(index=index)
    for label, members in groups.items():
        total = pd.Series(0.0, index=index)
        for member in members:
            abb = _state(member, abbs, abb_of_code, path)
            if not isinstance(states, Mapping):
                label = abb  # a single state is labelled by its abbreviation, however it was given
            rows = (abbs == abb).to_numpy() & (year >= first) & (year <= last)
            own = pd.Series(values[rows], index=year[rows]).reindex(index)
            total = total + own  # NaN in any member year keeps the total NaN
        frame[label] = total
    if frame.isna().all().all():
        msg = f"{path}: no {variable} values for {', '.join(groups)} in {first}-{last}"
        raise DataError(msg)

    if variable == "milex":
        if first <= NMC_POUND_ERA_END < last and era_conversion is not None:  # None was refused above
            frame = _convert_era(frame, era_conversion, path)
        unit = nmc_milex_units(first, last, era_conversion)
    else:
        unit = NMC_UNITS[variable]
    return _finish(frame, dict.fromkeys(frame.columns, unit), "year", path)


def _groups(states: Sequence[State] | Mapping[str, Sequence[State]]) -> dict[str, list[State]]:
    if isinstance(states, Mapping):
        groups = {str(k): list(v) for k, v in states.items()}
    elif isinstance(states, str | int):
        groups = {str(states).upper(): [states]}
    else:
        groups = {str(s).upper(): [s] for s in states}
    if not groups or not all(groups.values()):
        msg = "give at least one state, and at least one member for each coalition"
        raise DataError(msg)
    return groups


def _state(member: State, abbs: pd.Series, abb_of_code: Mapping[int, str], path: Path) -> str:
    if isinstance(member, int) and not isinstance(member, bool):
        if member in abb_of_code:
            return abb_of_code[member]
        msg = f"{path}: no state with COW code {member}"
        raise DataError(msg)
    name = str(member).strip().upper()
    if name.isdigit() and int(name) in abb_of_code:
        return abb_of_code[int(name)]
    known = sorted(set(abbs))
    if name not in known:
        msg = (
            f"{path}: no state {member!r}{did_you_mean(name, known)} (give a COW abbreviation such as 'USA' or a code)"
        )
        raise DataError(msg)
    return name


def _convert_era(frame: pd.DataFrame, rate: float | Mapping[int, float], path: Path) -> pd.DataFrame:
    frame = frame.copy()
    pound_years = frame.index[frame.index <= NMC_POUND_ERA_END]
    for y in pound_years:
        factor = rate.get(int(y)) if isinstance(rate, Mapping) else rate
        if factor is None or not (isinstance(factor, int | float) and math.isfinite(factor) and factor > 0):
            msg = f"{path}: era_conversion: no positive finite US dollars per pound for {y}"
            raise DataError(msg)
        frame.loc[y] = frame.loc[y] * float(factor)
    return frame


def load_sipri(
    path: str | os.PathLike[str],
    countries: Sequence[str] | Mapping[str, Sequence[str]],
    years: tuple[int, int] | None = None,
    units: str | None = None,
) -> pd.DataFrame:
    """Read SIPRI military expenditure in long ``country,year,value`` form.

    Parameters
    ----------
    path : path-like
        A SIPRI long file. Its units come from its kind, read from the file
        name (``constant2021usd``: million US dollars at constant 2021 prices;
        ``share_gdp``: fraction of GDP); see :data:`SIPRI_KINDS`.
    countries : sequence of str or mapping of str to sequence of str
        Country names as SIPRI spells them (any case), or groups whose members
        are summed (``{"NATO-4": [...]}``; only meaningful for money series).
    years : (int, int), optional
        First and last year, inclusive.
    units : str, optional
        Units, for a file whose name does not say its kind.

    Returns
    -------
    pandas.DataFrame
        Indexed by ``year``, one column per country or group; years a country
        has no value are NaN (SIPRI leaves missing cells out).

    Raises
    ------
    DataError
        If the file's kind is unknown (without `units`), a country is unknown,
        a group sums shares of GDP, or a cell is malformed.
    """
    path = Path(path)
    if units is None:
        kinds = [k for k in SIPRI_KINDS if k in path.name.lower()]
        if not kinds:
            msg = (
                f"{path}: cannot tell the units of this SIPRI file from its name "
                f"(expected one of {', '.join(SIPRI_KINDS)} in it); pass units"
            )
            raise DataError(msg)
        units = SIPRI_KINDS[kinds[0]]
    groups = (
        {str(k): [str(m) for m in v] for k, v in countries.items()}
        if isinstance(countries, Mapping)
        else {str(c): [str(c)] for c in ([countries] if isinstance(countries, str) else countries)}
    )
    if any(len(m) > 1 for m in groups.values()) and "fraction" in units:
        msg = f"{path}: shares of GDP cannot be summed over a group of countries; load them separately"
        raise DataError(msg)
    members = list(dict.fromkeys(m for ms in groups.values() for m in ms))
    raw = _read(path, "SIPRI")
    _require_columns(raw, ["country", "year", "value"], path)
    spelled = {name.lower(): name for name in raw["country"].str.strip()}
    resolved = {}
    for member in members:
        if member.lower() not in spelled:
            msg = f"{path}: no country {member!r}{did_you_mean(member, spelled.values())} (use SIPRI's spelling)"
            raise DataError(msg)
        resolved[member] = spelled[member.lower()]
    wide = load_csv(path, time="year", columns=list(dict.fromkeys(resolved.values())), series="country", units=units)
    frame = pd.DataFrame(index=wide.index)
    for label, ms in groups.items():
        if not isinstance(countries, Mapping):
            label = resolved[ms[0]]  # SIPRI's own spelling, whatever case was asked for
        frame[label] = sum((wide[resolved[m]] for m in ms), start=pd.Series(0.0, index=wide.index))
    frame = _select_years(frame, years, path)
    if years is not None:
        frame = frame.reindex(pd.Index(np.arange(years[0], years[1] + 1), name="year"))
    return _finish(frame, dict.fromkeys(frame.columns, units), "year", path)

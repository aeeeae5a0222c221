"""Load Vensim and XMILE models through PySD, with a translation cache and metadata.

PySD translates a model file into a Python module written next to the file it
reads. armsdyn never lets that happen inside ``models/``: it copies the model
into a cache folder named by the SHA-256 of the file's content and folder (and
PySD's version), translates it there once, and loads the cached translation on
later runs. Data files a model reads (GET DIRECT and GET XLS) are resolved
against the model file's own folder, as PySD does when it runs a model where it
lies; they are read as data (numbers and, for subscripts, checked names), never
run. Editing the model file changes its hash, so the next load translates
again; a half-written cache entry is never used because entries are built in a
temporary folder and renamed into place.

Model files and cache entries are untrusted (see :mod:`armsdyn.safety`): the
model text is checked before PySD reads it, and a cache entry is imported only
if the current user owns it, nobody else can write it, and its code still has
the SHA-256 recorded when it was translated; the generated code is checked
again at every load. An entry that fails is translated afresh (or, when another
user owns it, refused with a message).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from armsdyn.errors import ModelError, did_you_mean
from armsdyn.safety import check_model_text, check_translation, install_literal_eval

if TYPE_CHECKING:
    import pandas as pd

# pandas and xarray are imported where PySD's inputs are built (PySD imports them anyway), not
# here: the compiled engine's worker processes import this module, and pandas was most of their
# start-up.

SUFFIXES = (".mdl", ".xmile", ".stmx")
CONTROL_NAMES = ("INITIAL TIME", "FINAL TIME", "TIME STEP", "SAVEPER", "Time")


def control_name(name: str) -> str | None:
    """The time control (as :data:`CONTROL_NAMES` writes it) a model calls `name`, or None.

    Vensim names ignore case and read an underscore as a space, so ``FINAL_TIME``
    and ``final time`` are ``FINAL TIME``.
    """
    key = " ".join(name.replace("_", " ").split()).casefold()
    return next((control for control in CONTROL_NAMES if control.casefold() == key), None)


@contextlib.contextmanager
def quiet_pysd() -> Iterator[None]:
    """Silence PySD's and pandas' own deprecation chatter and numeric warnings.

    Overflow and NaN are detected on the results instead (see `experiment`), where
    they can be reported with the variable and the time they first appear.
    """
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.filterwarnings("ignore", module=r"pysd(\.|$)")
        yield


def pysd_module() -> Any:
    with quiet_pysd():
        import pysd
    install_literal_eval()
    return pysd


@dataclass(frozen=True)
class Variable:
    """One model variable, as the model file declares it.

    Attributes
    ----------
    name : str
        The model's own (Vensim or XMILE) name, used in configs and labels.
    py_name : str
        PySD's Python-safe name, used as the key in result Datasets.
    kind : str
        ``"constant"``, ``"stock"``, ``"flow"`` (an auxiliary that feeds a stock's
        rate), ``"auxiliary"``, ``"stateful"`` (SMOOTH, DELAY and the like),
        ``"lookup"`` or ``"data"``.
    units : str
        Units from the model file (empty when none are given).
    doc : str
        Documentation string from the model file.
    default : float or None
        Value in the model file, for scalar constants; None otherwise.
    limits : tuple of float
        The range the model declares for the variable (Vensim ``units [min, max]``);
        NaN where a bound is not declared.
    dims : tuple of (str, tuple of str)
        For a subscripted variable, its subscript ranges in order, each with its
        elements (e.g. ``(("state", ("USA", "Russia", "China")),)``); empty for a
        scalar.
    defaults : tuple of float
        For a subscripted constant, the model file's value of every element, in
        the order of :meth:`elements`; empty otherwise.
    """

    name: str
    py_name: str
    kind: str
    units: str
    doc: str
    default: float | None = None
    limits: tuple[float, float] = (math.nan, math.nan)
    dims: tuple[tuple[str, tuple[str, ...]], ...] = ()
    defaults: tuple[float, ...] = ()

    @property
    def dim_names(self) -> tuple[str, ...]:
        """Names of the subscript ranges (empty for a scalar)."""
        return tuple(name for name, _ in self.dims)

    @property
    def shape(self) -> tuple[int, ...]:
        """Number of elements along each subscript range (empty for a scalar)."""
        return tuple(len(elements) for _, elements in self.dims)

    def elements(self) -> list[tuple[str, ...]]:
        """Every element as a tuple of one element name per range, in row-major order."""
        return list(itertools.product(*(elements for _, elements in self.dims)))

    def element_name(self, element: Sequence[str]) -> str:
        """The name of one element, as configs write it: ``"k[USA, China]"``."""
        return f"{self.name}[{', '.join(element)}]"

    def default_array(self) -> Any:
        """The model file's value as an ``xarray.DataArray`` (subscripted constants), else None."""
        if not self.dims or not self.defaults:
            return None
        import xarray as xr

        values = np.array(self.defaults, dtype=float).reshape(self.shape)
        return xr.DataArray(values, coords={n: list(e) for n, e in self.dims}, dims=self.dim_names)

    def describe_value(self) -> str:
        """The model file's value for listings: ``" = 0.9"``, or per element for subscripted constants."""
        if self.default is not None:
            return f" = {self.default:g}"
        if self.defaults:
            parts = [f"{', '.join(e)}: {v:g}" for e, v in zip(self.elements(), self.defaults, strict=True)]
            return f" = {{{'; '.join(parts)}}}"
        return ""

    def describe_dims(self) -> str:
        """``"[state: USA, Russia, China; rival: ...]"`` for a subscripted variable, else ``""``."""
        if not self.dims:
            return ""
        return "[" + "; ".join(f"{n}: {', '.join(e)}" for n, e in self.dims) + "]"


@dataclass(frozen=True)
class TimeSettings:
    """Simulation time settings, in the model's time unit.

    Attributes
    ----------
    initial, final : float
        Start and end of the simulation.
    step : float
        Euler integration step.
    saveper : float
        Interval between saved values; a whole multiple of `step`.
    units : str
        The model's time unit.
    """

    initial: float
    final: float
    step: float
    saveper: float
    units: str = ""

    def save_times(self) -> np.ndarray:
        """Times at which values are saved, from `initial` to `final` inclusive."""
        n = round((self.final - self.initial) / self.saveper)
        return self.initial + self.saveper * np.arange(n + 1)


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cache_dir() -> Path:
    """Folder holding translated models: ``$ARMSDYN_CACHE_DIR``, else the user cache."""
    env = os.environ.get("ARMSDYN_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "armsdyn"


class VariableLookup:
    """Finds variables by model name (any case) or Python-safe name.

    Shared by :class:`Model` and the ensemble engine's compiled models; a
    subclass sets ``path`` and ``variables`` and calls :meth:`_index_variables`.
    """

    path: Path
    variables: dict[str, Variable]

    def _index_variables(self) -> None:
        self._by_key: dict[str, Variable] = {}
        for var in self.variables.values():
            self._by_key[var.name.lower()] = var
            self._by_key[var.py_name] = var

    def variable(self, name: str) -> Variable:
        """Look up a variable by its model name (any case) or Python-safe name.

        Raises
        ------
        KeyError
            With a message naming the model and suggesting the closest name.
        """
        var = self._by_key.get(name) or self._by_key.get(name.lower())
        if var is None:
            hint = did_you_mean(name, self.variables)
            msg = f"no variable {name!r} in model {self.path}{hint}"
            raise KeyError(msg)
        return var

    def element(self, key: str) -> tuple[Variable, tuple[str, ...] | None]:
        """The variable and element a key names: ``"grievance g"`` or ``"k[USA, China]"``.

        Returns
        -------
        (Variable, tuple of str or None)
            The element as one name per subscript range, or None for the whole variable.

        Raises
        ------
        KeyError
            For an unknown variable, or an element that is not one of the
            variable's, with a message naming the allowed elements.
        """
        found = _ELEMENT.match(key)
        if found is None:
            return self.variable(key), None
        var = self.variable(found.group(1).strip())
        given = tuple(part.strip() for part in found.group(2).split(","))
        if not var.dims:
            msg = (
                f"{var.name!r} has no subscripts, so it has no element {found.group(2).strip()!r}; "
                "write it without [...]"
            )
            raise KeyError(msg)
        if len(given) != len(var.dims):
            ranges = ", ".join(var.dim_names)
            msg = f"{var.name!r} has {len(var.dims)} subscript(s) [{ranges}], got {len(given)} in {key!r}"
            raise KeyError(msg)
        element = []
        for name, (dim, allowed) in zip(given, var.dims, strict=True):
            match = next((e for e in allowed if e.lower() == name.lower()), None)
            if match is None:
                msg = (
                    f"{var.name!r} has no element {name!r} in subscript range {dim!r}"
                    f"{did_you_mean(name, allowed)} (allowed: {', '.join(allowed)})"
                )
                raise KeyError(msg)
            element.append(match)
        return var, tuple(element)


class Model(VariableLookup):
    """A translated model with its metadata, ready to simulate.

    Use :func:`load_model` to create one.

    Attributes
    ----------
    path : pathlib.Path
        The model file.
    sha256 : str
        Hash of the model file's content when it was loaded.
    variables : dict of str to Variable
        Every variable except the time controls, keyed by the model's own name
        (sorted by name, as PySD lists them).
    time : TimeSettings
        The model file's own time settings.
    translation : pathlib.Path
        The cached PySD translation that is run.
    pysd_model : pysd.py_backend.model.Model
        PySD's loaded model (its dependency graph and components are read by
        the analyses; runs go through :meth:`simulate`).
    """

    def __init__(self, path: Path, sha256: str, translation: Path) -> None:
        self.path = path
        self.sha256 = sha256
        self.translation = translation
        pysd = pysd_module()
        with quiet_pysd():
            try:
                self.pysd_model = pysd.load(str(translation))
            except FileNotFoundError as exc:
                # Data files are resolved against the model's own folder when it is translated.
                found = re.search(r"^(_ext_\w+)\s+File '(.*)' not found", str(exc), re.S)
                what = f"{found.group(2)} (read by {found.group(1)})" if found else " ".join(str(exc).split())
                msg = f"{path}: a data file the model reads is missing: {what}"
                raise ModelError(msg) from exc
            except Exception as exc:  # a broken translation is a model error
                msg = f"{path}: PySD could not load the translated model: {' '.join(str(exc).split())}"
                raise ModelError(msg) from exc
        self.data_hashes = self._data_hashes()
        self.variables = self._read_variables()
        self.time = self._read_time()
        self._touched: set[str] = set()
        # The file's tables, kept before any run redraws them (PySD redraws the loaded object in place).
        self._file_tables = {
            var.name: table
            for var in self.variables.values()
            if var.kind == "lookup" and var.dims and (table := self._pysd_table(var)) is not None
        }
        self._index_variables()

    def _data_hashes(self) -> dict[str, str]:
        """SHA-256 of each data file PySD read at load (GET DIRECT/XLS), by path."""
        paths: set[str] = set()
        for external in getattr(self.pysd_model, "_external_elements", ()):
            paths.update(str(f) for f in getattr(external, "files", ()) or () if isinstance(f, str | os.PathLike))
        return {path: _hash_or_reason(Path(path)) for path in sorted(paths)}

    def data_changed(self) -> bool:
        """Whether a data file the model read at load has changed since (so a load must read it again)."""
        return any(_hash_or_reason(Path(path)) != digest for path, digest in self.data_hashes.items())

    def _read_variables(self) -> dict[str, Variable]:
        doc = self.pysd_model.doc
        deps = self.pysd_model.dependencies
        flows: set[str] = set()
        for py_name, dep in deps.items():
            for key in dep:
                if key.startswith("_integ_") and py_name == key.removeprefix("_integ_"):
                    flows.update(deps[key].get("step", {}))
        variables = {}
        for row in doc.itertuples(index=False):
            name = row[doc.columns.get_loc("Real Name")]
            if control_name(name):
                continue
            py_name = row[doc.columns.get_loc("Py Name")]
            vtype = row[doc.columns.get_loc("Type")]
            subtype = row[doc.columns.get_loc("Subtype")]
            units = row[doc.columns.get_loc("Units")]
            comment = row[doc.columns.get_loc("Comment")]
            limits = row[doc.columns.get_loc("Limits")] if "Limits" in doc.columns else None
            if vtype == "Stateful":
                kind = "stock" if subtype == "Integ" else "stateful"
            elif vtype == "Constant":
                kind = "constant"
            elif vtype == "Lookup":
                kind = "lookup"
            elif vtype == "Data":
                kind = "data"
            else:
                kind = "flow" if py_name in flows else "auxiliary"
            subscripts = row[doc.columns.get_loc("Subscripts")] if "Subscripts" in doc.columns else None
            dims = self._read_dims(py_name, subscripts)
            default = None
            defaults: tuple[float, ...] = ()
            if kind == "constant":
                with quiet_pysd():
                    value = self.pysd_model[name]
                if np.ndim(value) == 0:
                    default = float(value)
                elif hasattr(value, "dims"):
                    # A subscripted constant: its own dims and coordinates are the truth.
                    dims = tuple((str(d), tuple(str(e) for e in value.coords[d].values)) for d in value.dims)
                    defaults = tuple(float(v) for v in np.asarray(value.values, dtype=float).ravel())
            variables[name] = Variable(
                name=name,
                py_name=py_name,
                kind=kind,
                units=units if isinstance(units, str) else "",
                doc=" ".join(comment.split()) if isinstance(comment, str) else "",
                default=default,
                limits=_limits(limits),
                dims=dims,
                defaults=defaults,
            )
        return variables

    def _read_dims(self, py_name: str, subscripts: object) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """Subscript ranges of a variable with their elements, from PySD's own coordinates."""
        if not isinstance(subscripts, list | tuple) or not subscripts:
            return ()
        with quiet_pysd():
            try:
                coords, dims = self.pysd_model.get_coords(getattr(self.pysd_model.components, py_name)) or ({}, [])
            except Exception:  # a lookup or data object: fall back to the doc table
                coords, dims = {}, []
        if not dims:
            ranges = self.pysd_model.subscripts
            dims = [d for d in subscripts if d in ranges]
            coords = {d: ranges[d] for d in dims}
        return tuple((str(d), tuple(str(e) for e in coords[d])) for d in dims)

    @property
    def subscript_ranges(self) -> dict[str, list[str]]:
        """The model's subscript ranges (including subranges and aliases) with their elements."""
        return {str(k): [str(e) for e in v] for k, v in self.pysd_model.subscripts.items()}

    def _read_time(self) -> TimeSettings:
        comp = self.pysd_model.components
        doc = self.pysd_model.doc
        rows = doc.loc[[control_name(name) == "TIME STEP" for name in doc["Real Name"]], "Units"]
        units = rows.iloc[0] if len(rows) else ""
        return TimeSettings(
            initial=float(comp.initial_time()),
            final=float(comp.final_time()),
            step=float(comp.time_step()),
            saveper=float(comp.saveper()),
            units=units if isinstance(units, str) else "",
        )

    @property
    def name(self) -> str:
        """The model file's name without its suffix."""
        return self.path.stem

    def of_kind(self, *kinds: str) -> list[Variable]:
        """Variables of the given kinds, sorted by name."""
        return [v for v in self.variables.values() if v.kind in kinds]

    def pysd_values(self, params: Mapping[str, Any], time: TimeSettings) -> dict[str, Any]:
        """Overrides keyed by model name in the form PySD's ``run(params=...)`` takes.

        Element overrides (``"k[USA, China]"``) are gathered into one
        ``xarray.DataArray`` per constant, starting from the model file's values
        (or from a whole-variable override given with them); when any element is
        a time series, a ``pandas.Series`` of DataArrays over the union of their
        times (held constant beyond the ends, as for scalar series).
        """
        import pandas as pd

        out: dict[str, Any] = {}
        elementwise: dict[str, dict[tuple[str, ...], Any]] = {}
        tables: dict[str, dict[tuple[str, ...] | None, Any]] = {}
        for key, value in params.items():
            var, element = self.element(key)
            if var.kind == "lookup" and var.dims:
                tables.setdefault(var.name, {})[element] = value
            elif element is None:
                out[var.name] = value
            else:
                elementwise.setdefault(var.name, {})[element] = value
        for name, items in elementwise.items():
            var = self.variables[name]
            whole = out.pop(name, None)
            base = var.default_array()
            series: dict[Any, pd.Series] = {}
            if isinstance(whole, pd.Series):
                series[None] = whole
            elif whole is not None:
                base = base * 0 + whole  # a number or a DataArray for the whole variable
            for element, value in items.items():
                if isinstance(value, pd.Series):
                    series[element] = value
                else:
                    base.loc[dict(zip(var.dim_names, element, strict=True))] = float(value)
            if not series:
                out[name] = base
                continue
            times = sorted({time.initial, time.final}.union(*(set(map(float, s.index)) for s in series.values())))
            frames = []
            for t in times:
                frame = base.copy()
                if None in series:
                    whole_series = series[None]
                    frame[...] = np.interp(t, whole_series.index.to_numpy(float), whole_series.to_numpy(float))
                    for element, value in items.items():
                        if not isinstance(value, pd.Series):
                            frame.loc[dict(zip(var.dim_names, element, strict=True))] = float(value)
                for element, s in series.items():
                    if element is not None:
                        at = np.interp(t, s.index.to_numpy(float), s.to_numpy(float))
                        frame.loc[dict(zip(var.dim_names, element, strict=True))] = at
                frames.append(frame)
            out[name] = pd.Series(frames, index=times)
        for name, given in tables.items():
            out[name] = self._redrawn_table(self.variables[name], given)
        return out

    def _pysd_table(self, var: Variable) -> tuple[Any, str] | None:
        """PySD's table of a subscripted lookup (``lookup_dim`` first, then its ranges) and its kind.

        None for a lookup PySD keeps no such table of (one read from a data file PySD could not
        load, say): a run cannot redraw it then (:meth:`_redrawn_table` says so).
        """
        try:
            obj = getattr(self.pysd_model.components, self.pysd_model._dependencies[var.py_name]["__lookup__"])
            return obj.data.transpose("lookup_dim", *var.dim_names).copy(), str(obj.interp)
        except (AttributeError, KeyError, ValueError):
            return None

    def _redrawn_table(self, var: Variable, given: Mapping[tuple[str, ...] | None, Any]) -> pd.Series:
        """A subscripted lookup with some elements' tables redrawn, as PySD's ``run(params=...)`` takes it.

        `given` maps an element (None: every element) to its table, a ``pandas.Series`` of y indexed
        by x; an element's own table wins over the whole lookup's, and the others keep the file's.
        PySD keeps one x axis for all elements, so every table is put on the union of their points,
        continued beyond its own points as the lookup's kind continues it: each element still reads
        exactly its own table.
        """
        import pandas as pd
        import xarray as xr

        if var.name not in self._file_tables:
            msg = f"{self.path}: PySD keeps no table of points for lookup {var.name!r}, so it cannot be redrawn"
            raise ModelError(msg)
        data, kind = self._file_tables[var.name]
        file_x = np.asarray(data["lookup_dim"].values, dtype=float)
        flat = np.asarray(data.values, dtype=float).reshape(len(file_x), -1)
        own: list[tuple[np.ndarray, np.ndarray]] = []
        for k, element in enumerate(var.elements()):
            table = given.get(element, given.get(None))
            if table is None:
                own.append((file_x, flat[:, k]))
            else:
                points = (table if isinstance(table, pd.Series) else _pairs_series(table)).sort_index()
                own.append((points.index.to_numpy(dtype=float), points.to_numpy(dtype=float)))
        knots = np.unique(np.concatenate([x for x, _ in own]))
        values = np.stack([_table_on(kind, knots, x, y) for x, y in own], axis=-1).reshape((len(knots), *var.shape))
        coords = {n: list(e) for n, e in var.dims}
        frames = [xr.DataArray(row, coords=coords, dims=var.dim_names) for row in values]
        return pd.Series(frames, index=knots)

    def simulate(
        self,
        params: Mapping[str, Any],
        time: TimeSettings,
        variables: Sequence[str],
    ) -> dict[str, np.ndarray]:
        """Run the model once with PySD from a clean state.

        Parameters
        ----------
        params : mapping
            Constant overrides by model name, or for one element of a
            subscripted constant by ``"name[element, ...]"``: a number, or a
            ``pandas.Series`` of values indexed by time (interpolated linearly).
            A whole subscripted constant may also be an ``xarray.DataArray``.
        time : TimeSettings
            Time settings for this run.
        variables : sequence of str
            Model names of the variables to return.

        Returns
        -------
        dict of str to numpy.ndarray
            One array per requested variable, aligned with ``time.save_times()``:
            shape ``(time,)`` for a scalar, ``(time, *var.shape)`` for a
            subscripted variable (its ranges in the order of ``var.dims``).

        Raises
        ------
        SimulationError
            If PySD fails during the run (e.g. a division by zero), naming the
            variable and time where they are known.
        """
        # PySD keeps parameters set by one run for the next. Every constant an
        # earlier run changed is set back to the model file's value (cheaper than
        # reloading the module, which is the fallback for constants without a
        # recorded value).
        model = self.pysd_model
        values = self.pysd_values(params, time)
        restore = {name: _file_value(self.variables[name]) for name in self._touched - set(values)}
        self._touched |= set(values)
        with quiet_pysd():
            if any(value is None for value in restore.values()):
                model.reload()
                restore = {}
                self._touched = set(values)
            try:
                df = model.run(
                    params={**restore, **values},
                    return_columns=list(variables),
                    initial_condition=(time.initial, {}),
                    final_time=time.final,
                    time_step=time.step,
                    saveper=time.saveper,
                    flatten_output=False,
                )
            except Exception as exc:
                error = self._simulation_error(exc)
                # The failed run may have left PySD half-way: start the next one from the file.
                with contextlib.suppress(Exception):
                    model.reload()
                self._touched = set()
                raise error from exc
        if len(df.index) != len(time.save_times()) or not np.allclose(df.index, time.save_times()):
            msg = f"{self.path}: PySD returned values at unexpected times ({len(df.index)} rows)"
            raise ModelError(msg)
        return {name: self._column(df[name], self.variable(name)) for name in variables}

    @staticmethod
    def _column(column: pd.Series, var: Variable) -> np.ndarray:
        if not var.dims:
            return column.to_numpy(dtype=float)
        rows = []
        for cell in column:
            if hasattr(cell, "dims"):
                rows.append(np.asarray(cell.transpose(*var.dim_names).values, dtype=float))
            else:  # a subscripted expression PySD evaluated to one number: the same for every element
                rows.append(np.full(var.shape, float(cell)))
        return np.stack(rows)

    def _simulation_error(self, exc: Exception) -> SimulationError:
        """A :class:`SimulationError` naming the variable and time where PySD failed, where known."""
        variable = ""
        by_py = {v.py_name: v.name for v in self.variables.values()}
        tb = exc.__traceback__
        while tb is not None:  # the innermost frame of the translated model is the failing variable
            code = tb.tb_frame.f_code
            if Path(code.co_filename).name == self.translation.name and code.co_name in by_py:
                variable = by_py[code.co_name]
            tb = tb.tb_next
        at = math.nan
        with contextlib.suppress(Exception):
            at = float(self.pysd_model.time())
        text = f"{type(exc).__name__}: {exc}"
        where = f" in {variable!r}" if variable else ""
        when = f" at time {at:g}" if math.isfinite(at) else ""
        msg = f"{self.path}: PySD failed while simulating{where}{when}: {text}"
        return SimulationError(msg, variable=variable, time=at, text=text)


class SimulationError(ModelError):
    """PySD failed during a run; `variable` and `time` say where, when known ("" and NaN if not).

    Attributes
    ----------
    variable : str
        Model name of the variable whose equation raised, or "".
    time : float
        Model time of the failing step, or NaN.
    text : str
        The exception's type and message.
    """

    def __init__(self, msg: str, *, variable: str = "", time: float = math.nan, text: str = "") -> None:
        super().__init__(msg)
        self.variable = variable
        self.time = time
        self.text = text


_ELEMENT = re.compile(r"^([^\[\]]+)\[([^\[\]]*)\]\s*$")


def _pairs_series(pairs: Sequence[Sequence[float]]) -> pd.Series:
    """``(x, y)`` pairs as a ``pandas.Series`` of y indexed by x."""
    import pandas as pd

    return pd.Series([float(y) for _, y in pairs], index=[float(x) for x, _ in pairs], dtype=float)


def _table_on(kind: str, knots: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A lookup table `x`, `y` of PySD's kind `kind` at `knots`: held, extrapolated or stepped beyond its points."""
    if kind == "hold_backward":
        return y[np.clip(np.searchsorted(x, knots, side="right") - 1, 0, len(x) - 1)]
    out = np.interp(knots, x, y)
    if kind == "extrapolate" and len(x) > 1:
        hi, lo = knots > x[-1], knots < x[0]
        out[hi] = y[-1] + (y[-1] - y[-2]) / (x[-1] - x[-2]) * (knots[hi] - x[-1])
        out[lo] = y[0] + (y[1] - y[0]) / (x[1] - x[0]) * (knots[lo] - x[0])
    return out


def _file_value(var: Variable) -> Any:
    """The model file's value of a constant (a number or a DataArray), or None if not recorded."""
    return var.default if var.default is not None else var.default_array()


_loaded: dict[tuple[str, str], Model] = {}


def _hash_or_reason(path: Path) -> str:
    try:
        return file_sha256(path)
    except OSError as exc:  # gone or unreadable since: differs from any hash, so the model is loaded again
        return f"unreadable: {exc.strerror or exc}"


def load_model(path: str | os.PathLike[str]) -> Model:
    """Load a Vensim (``.mdl``) or XMILE (``.xmile``, ``.stmx``) model through PySD.

    The translation is cached by content hash (see :func:`cache_dir`); a model
    file that changes is translated again.

    Parameters
    ----------
    path : path-like
        The model file.

    Returns
    -------
    Model

    Raises
    ------
    ModelError
        If the file is missing, has an unsupported suffix, or cannot be translated.
    """
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        msg = f"{path}: unsupported model file type {path.suffix!r}; expected one of {', '.join(SUFFIXES)}"
        raise ModelError(msg)
    if not path.is_file():
        msg = f"{path}: model file not found"
        raise ModelError(msg)
    sha = file_sha256(path)
    key = (str(path.resolve()), sha)
    known = _loaded.get(key)
    if known is None or _range_files_problem(known.translation.parent) is not None or known.data_changed():
        # A subscript range or data read from a file that changed since is another model.
        _loaded[key] = Model(path, sha, _translate(path, sha))
    return _loaded[key]


HASH_FILE = "translation.sha256"
#: The files a translation read subscript ranges from (GET DIRECT SUBSCRIPT), with their SHA-256:
#: the elements are written into the generated code, so a changed file needs a new translation.
RANGE_FILES = "range_files.json"


def _translate(path: Path, sha: str) -> Path:
    pysd = pysd_module()
    check_model_text(path)
    folder = cache_dir()
    home = path.resolve().parent
    # A model that reads files resolves them against its own folder, and the translation records
    # them by absolute path; so the same text in another folder is another entry.
    key = hashlib.sha256(f"{sha}\n{home}".encode("utf-8", "surrogateescape")).hexdigest()
    entry = folder / f"{key[:20]}-pysd{pysd.__version__}"
    translated = entry / f"{_module_name(path)}.py"
    if entry.exists() or entry.is_symlink():
        problem = _entry_problem(entry, translated)
        if problem is None:
            check_translation(translated, path)
            return translated
        if not _owned(entry) or entry.is_symlink():
            msg = (
                f"{path}: the cached translation {entry} {problem} and is not yours to replace; it was not "
                "imported. Remove it, or set ARMSDYN_CACHE_DIR to a folder only you can write"
            )
            raise ModelError(msg)
        shutil.rmtree(entry, ignore_errors=True)  # stale, corrupt or tampered: translate afresh
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = Path(tempfile.mkdtemp(prefix=".translating-", dir=folder))  # created 0700
    except OSError as exc:
        msg = f"{folder}: cannot create the translation cache ({exc.strerror}); set ARMSDYN_CACHE_DIR"
        raise ModelError(msg) from exc
    try:
        source = tmp / f"{_module_name(path)}{path.suffix.lower()}"
        shutil.copyfile(path, source)
        from pysd.builders.python.python_model_builder import ModelBuilder

        abstract = parse_model(path, source)
        _check_definitions(path, abstract)
        range_files = _anchor_data_files(path, home, abstract)
        with quiet_pysd():
            try:
                builder = ModelBuilder(abstract)  # reads subscript ranges defined in files
            except Exception as exc:
                raise _translation_error(path, exc) from exc
        _check_file_subscripts(path, builder)
        with quiet_pysd():
            try:
                builder.build_model()
            except Exception as exc:
                raise _translation_error(path, exc) from exc
        code = source.with_suffix(".py")
        check_translation(code, path)
        unsupported = sorted(set(re.findall(r'not_implemented_function\(\s*"([^"]+)"', code.read_text())))
        if unsupported:
            names = ", ".join(name.upper() for name in unsupported)
            msg = f"{path}: the model uses functions PySD does not implement: {names}"
            raise ModelError(msg)
        (tmp / HASH_FILE).write_text(file_sha256(code) + "\n")
        hashes = {str(f): file_sha256(Path(f)) for f in sorted(set(range_files))}
        (tmp / RANGE_FILES).write_text(json.dumps(hashes, indent=1) + "\n")
        try:
            tmp.rename(entry)
        except OSError:
            # Another process finished the same translation first: use theirs if it is sound.
            if _entry_problem(entry, translated) is not None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return translated


def _translation_error(path: Path, exc: Exception) -> ModelError:
    """PySD's failure to translate a model, as one message naming the file."""
    if isinstance(exc, ModelError):
        return ModelError(f"{path}: {exc}")
    if isinstance(exc, KeyError):
        return ModelError(f"{path}: the model uses a variable that it never defines: {exc.args[0]!r}")
    if isinstance(exc, FileNotFoundError):
        # PySD's own message names the file it looked for.
        return ModelError(f"{path}: a data file the model reads is missing: {' '.join(str(exc).split())}")
    return ModelError(f"{path}: PySD could not translate the model: {type(exc).__name__}: {exc}")


def _owned(path: Path) -> bool:
    getuid = getattr(os, "getuid", None)
    return getuid is None or path.lstat().st_uid == getuid()


def _entry_problem(entry: Path, translated: Path) -> str | None:
    """Why a cache entry may not be imported, or None if it may."""
    for item in (entry, translated, entry / HASH_FILE, entry / RANGE_FILES):
        try:
            info = item.lstat()
        except OSError:
            return f"is incomplete ({item.name} is missing)"
        if item.is_symlink():
            return f"holds a symbolic link ({item.name})"
        if not _owned(item):
            return f"is owned by another user ({item.name})"
        if os.name == "posix" and info.st_mode & 0o022:
            return f"can be written by other users ({item.name})"
    try:
        recorded = (entry / HASH_FILE).read_text().strip()
        actual = file_sha256(translated)
    except OSError:
        return "is unreadable"
    if recorded != actual:
        return "has changed since it was translated"
    return _range_files_problem(entry)


def _range_files_problem(entry: Path) -> str | None:
    """Why an entry's subscript ranges read from files are out of date (or unreadable), or None.

    The record is data from the cache, so it is parsed as JSON and checked for
    its shape; it only names files to hash and compare.
    """
    try:
        recorded = json.loads((entry / RANGE_FILES).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"has no readable {RANGE_FILES}"
    if not isinstance(recorded, dict) or not all(isinstance(v, str) for v in recorded.values()):
        return f"has a malformed {RANGE_FILES}"
    for name, sha in recorded.items():
        try:
            current = file_sha256(Path(name))
        except OSError:
            return f"read subscript ranges from {name}, which is now unreadable"
        if current != sha:
            return f"read subscript ranges from {name}, which has changed since"
    return None


def _limits(value: object) -> tuple[float, float]:
    # PySD gives (min, max) with None or NaN for an undeclared bound.
    if not isinstance(value, tuple) or len(value) != 2:
        return (math.nan, math.nan)
    lo, hi = (math.nan if v is None else float(v) for v in value)
    return (lo, hi)


def parse_model(path: Path, source: Path | None = None) -> Any:
    """PySD's abstract model of a Vensim or XMILE file, read safely.

    The file's text is checked first (:func:`armsdyn.safety.check_model_text`)
    and PySD's parser reads literals without evaluating them. This is the one
    place armsdyn hands model text to PySD's parser.

    Parameters
    ----------
    path : pathlib.Path
        The model file (named in messages).
    source : pathlib.Path, optional
        A copy of it to parse instead (PySD writes beside the file it reads).

    Raises
    ------
    ModelError
        If the text is unsafe or cannot be parsed; with the file's line where known.
    """
    check_model_text(path)
    pysd_module()
    source = source or path
    with quiet_pysd():
        try:
            if source.suffix.lower() == ".mdl":
                from pysd.translators.vensim.vensim_file import VensimFile

                parsed = VensimFile(str(source))
            else:
                from pysd.translators.xmile.xmile_file import XmileFile

                parsed = XmileFile(str(source))
            parsed.parse()
            return parsed.get_abstract_model()
        except ModelError as exc:
            msg = f"{path}: {exc}"
            raise ModelError(msg) from exc
        except Exception as exc:
            msg = f"{path}:{_file_line(path, exc)} PySD could not parse the model: {type(exc).__name__}: {exc}"
            raise ModelError(msg) from exc


def _check_definitions(path: Path, abstract: Any) -> None:
    """Refuse a model that defines one (unsubscripted) variable more than once.

    Vensim names are case-insensitive, so ``reaction of X`` and ``Reaction Of X``
    are the same variable; PySD would merge the two definitions and fail later
    with an obscure message.
    """
    for section in abstract.sections:
        for element in section.elements:
            plain = [c for c in element.components if not c.subscripts[0]]
            if len(plain) > 1:
                msg = f"{path}: variable {element.name!r} is defined {len(plain)} times (names ignore case)"
                raise ModelError(msg)


# What a data-file argument of GET DIRECT/GET XLS may hold: PySD writes these strings into the
# generated module between quotes, so a quote, a line break or a trailing backslash there would
# let model text escape into code.
_BAD_IN_FILE_ARGUMENT = re.compile(r"['\"\x00-\x08\x0a-\x1f\x7f]|\\$")  # a tab separator is fine
_BAD_IN_FILE_ELEMENT = re.compile(r"[\"'\\{}%\x00-\x1f\x7f]")
_FILE_READERS = {
    "GetDataStructure": ("GET DIRECT/XLS DATA", ("file", "tab", "time_row_or_col", "cell")),
    "GetLookupsStructure": ("GET DIRECT/XLS LOOKUPS", ("file", "tab", "x_row_or_col", "cell")),
    "GetConstantsStructure": ("GET DIRECT/XLS CONSTANTS", ("file", "tab", "cell")),
}


def _file_readers(node: Any) -> Iterator[Any]:
    """Every GET DIRECT/GET XLS structure in an abstract syntax tree."""
    if type(node).__name__ in _FILE_READERS:
        yield node
        return
    if isinstance(node, list | tuple):
        for item in node:
            yield from _file_readers(item)
    elif isinstance(node, dict):
        for item in node.values():
            yield from _file_readers(item)
    elif hasattr(node, "__dataclass_fields__"):
        for name in node.__dataclass_fields__:
            yield from _file_readers(getattr(node, name, None))


def _anchored(path: Path, home: Path, where: str, what: str, file: str) -> str:
    """A data file's path as the translation records it: absolute, from the model's own folder.

    Vensim on Windows writes ``data\\series.csv``; the separator is made ``/`` so the same
    model reads the same file on any system.
    """
    file = file.replace("\\", "/")
    if not file.strip():
        msg = f"{path}: {where}: {what} names no file"
        raise ModelError(msg)
    resolved = str(home / file)
    for text, whose in ((file, f"file name {file!r}"), (resolved, f"the model's folder {str(home)!r}")):
        if _BAD_IN_FILE_ARGUMENT.search(text):
            msg = (
                f"{path}: {where}: {what} reads {file!r}, and {whose} contains a quote, a control character "
                "or a trailing backslash, which PySD would write into its generated code unescaped; "
                "rename the file (or move the model) to a path without them"
            )
            raise ModelError(msg)
    return resolved


def _anchor_data_files(path: Path, home: Path, abstract: Any) -> list[str]:
    """Point every data file a model reads at the model's own folder, checking its arguments.

    PySD resolves a data file against the folder of the module it generated: for
    armsdyn that is the cache, not the folder the model was downloaded into with
    its data. Each relative file name is made absolute against the model file's
    folder (as PySD does when it runs a model where it lies), in the abstract
    model before the code is generated. The sheet, cell and row arguments are
    written into the code too and are checked the same way.

    Returns
    -------
    list of str
        The absolute paths of the files subscript ranges are read from.

    Raises
    ------
    ModelError
        Naming the variable and the argument that is not allowed.
    """
    range_files = []
    for section in abstract.sections:
        for subscript in section.subscripts:
            if isinstance(subscript.subscripts, dict) and "file" in subscript.subscripts:
                where = f"subscript range {subscript.name!r}"
                spec = subscript.subscripts
                for key, value in spec.items():
                    if key != "file" and isinstance(value, str) and _BAD_IN_FILE_ARGUMENT.search(value):
                        msg = (
                            f"{path}: {where}: GET DIRECT/XLS SUBSCRIPT argument {key} = {value!r} contains "
                            "a quote or a control character; a model file may not contain text that could run as code"
                        )
                        raise ModelError(msg)
                spec["file"] = _anchored(path, home, where, "GET DIRECT/XLS SUBSCRIPT", str(spec["file"]))
                range_files.append(spec["file"])
        for element in section.elements:
            where = f"variable {element.name!r}"
            for component in element.components:
                for node in _file_readers(component.ast):
                    what, arguments = _FILE_READERS[type(node).__name__]
                    for key in arguments[1:]:
                        value = getattr(node, key, "")
                        if isinstance(value, str) and _BAD_IN_FILE_ARGUMENT.search(value):
                            msg = (
                                f"{path}: {where}: {what} argument {key} = {value!r} contains a quote, a control "
                                "character or a trailing backslash; a model file may not contain text that could "
                                "run as code"
                            )
                            raise ModelError(msg)
                    node.file = _anchored(path, home, where, what, str(node.file))
    return range_files


def _check_file_subscripts(path: Path, builder: Any) -> None:
    """Refuse subscript elements read from a data file that could escape the generated code.

    Element names go into the generated module as text, so a data file is held
    to the rule the model file's own subscript names follow.
    """
    for section in builder.sections:
        for name, elements in section.subscripts.subscripts.items():
            for element in (name, *elements):
                if _BAD_IN_FILE_ELEMENT.search(str(element)):
                    msg = (
                        f"{path}: subscript range {name!r} read from a data file has element {str(element)!r}, "
                        "which contains a quote, brace, backslash, percent sign or control character; "
                        "data files may not contain text that could run as code"
                    )
                    raise ModelError(msg)


def _file_line(path: Path, exc: Exception) -> str:
    """``"N:"`` for the file line a parse error points at, or ``""``.

    PySD's parser counts lines within one equation; the text it quotes is
    searched for in the file to give the user the file's own line number.
    """
    found = re.search(r"begins with '(.{3,}?)' \(line", str(exc))
    if not found:
        return ""
    text = path.read_text(encoding="utf-8", errors="replace")
    at = text.find(found.group(1))
    return f"{text.count(chr(10), 0, at) + 1}:" if at >= 0 else ""


def _module_name(path: Path) -> str:
    # The translation is imported as a module, so its name must be an identifier.
    stem = "".join(c if c.isalnum() else "_" for c in path.stem)
    return stem if stem[:1].isalpha() else f"m_{stem}"


def is_finite_number(value: object) -> bool:
    """True for an int or float that is neither NaN nor infinite (bool excluded)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)

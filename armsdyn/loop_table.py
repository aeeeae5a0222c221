"""The loop table of a model, and a run's loop scores: the Python API ``armsdyn.loops``.

One function for a notebook: given a model it lists the feedback loops (:func:`armsdyn.feedback.find_loops`)
as a pandas table; given a run's loop analysis (a results folder's ``loops.nc``, or the Dataset
:func:`armsdyn.ltm.loop_dominance` or :func:`armsdyn.attribution.analyse_loops` returns) it reads
the table from the scores and returns the scores beside it. Loops are named after the loop groups
they belong to: those the model file's documentation names (``Loop group: NAME.``), those a
config's ``[[attribution.groups]]`` or the `groups` argument name, and those recorded in the loop
analysis itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import xarray as xr

from armsdyn.config import load_config
from armsdyn.errors import ResultsError
from armsdyn.feedback import Loop, find_loops, group_names
from armsdyn.model import Model, load_model
from armsdyn.results import LOOPS_FILE

#: The loop table's columns (its index is the loop id, ``"R1"``, ``"B2"``, ...).
COLUMNS = ("name", "variables", "length", "polarity")


@dataclass(frozen=True)
class LoopReport:
    """What :func:`loops` returns: the loop table and, for a run, its loop scores.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per loop, indexed by loop id (``"R1"``, ``"B1"``, ``"U1"`` for an undetermined
        polarity); columns ``name`` (the loop groups it passes through, joined by ``", "``; empty
        for none), ``variables`` (tuple of model names in causal order, the last linking back to
        the first; ``"name[element]"`` for an element), ``length`` and ``polarity`` (``"R"``,
        ``"B"`` or ``"?"``).
    scores : xarray.Dataset or None
        The run's loop analysis (``relative_loop_score`` with dims ``(scenario, loop, time)`` and/or
        the attribution, as in ``loops.nc``); None for a model.
    """

    table: pd.DataFrame
    scores: xr.Dataset | None = None


def loops(
    model_or_results: Model | str | os.PathLike[str] | xr.Dataset,
    *,
    groups: Mapping[str, Sequence[str]] | str | os.PathLike[str] | None = None,
    max_length: int | None = None,
    limit: int | None = None,
    through: Sequence[str] = (),
) -> LoopReport:
    """The feedback loops of a model, or of a run's loop analysis with its scores.

    Parameters
    ----------
    model_or_results : Model, path or xarray.Dataset
        A model (loaded, or its ``.mdl``/XMILE file): its loops are found. A results folder
        written with ``[loop_dominance]`` or ``[attribution]`` (it holds ``loops.nc``), or such a
        Dataset: the loops scored are read from it, and it is returned as the scores.
    groups : mapping or path, optional
        Loop groups naming the loops besides those the model file's documentation names
        (:func:`armsdyn.feedback.documented_groups`): group name to the variables its loops pass
        through, or a config whose ``[[attribution.groups]]`` to use. A run's own attribution
        groups (in its ``loops.nc``) name its loops too.
    max_length, limit : int, optional
        For a model: only loops of at most `max_length` variables; stop after `limit` loops
        (:func:`armsdyn.feedback.find_loops`). A large model can have millions of loops (the
        knowledge model has), so bound them there, or use `through`.
    through : sequence of str, optional
        For a model: only loops through any of these variables.

    Returns
    -------
    LoopReport
        ``table`` (pandas.DataFrame indexed by loop id: ``name``, ``variables``, ``length``,
        ``polarity``) and ``scores`` (the loop analysis, None for a model). A run with an
        attribution but no ``[loop_dominance]`` scored no loops: its table is empty.

    Raises
    ------
    ResultsError
        If a folder holds no ``loops.nc``, or a Dataset holds no loop analysis.

    Examples
    --------
    The loops of Richardson's model, named by its documentation (``Loop group: fatigue.``) and here
    also after a group of one's own:

    >>> import armsdyn
    >>> report = armsdyn.loops("models/richardson.mdl", groups={"X's restraint": ["fatigue of X"]})
    >>> report.table[["name", "length", "polarity"]]  # doctest: +NORMALIZE_WHITESPACE
                             name  length polarity
    loop
    B1    fatigue, X's restraint       3        B
    B2                   fatigue       3        B
    R1           action-reaction       6        R
    >>> report.table.loc["B1", "variables"]
    ('arms X', 'fatigue of X', 'arming rate X')

    From a run (``armsdyn run`` of a config with ``[loop_dominance]``), the scores come too:

    >>> report = armsdyn.loops("results/knowledge_loops")  # doctest: +SKIP
    >>> report.scores["relative_loop_score"].sel(scenario="baseline", loop="R1").plot()  # doctest: +SKIP
    """
    named = _groups(groups)
    if isinstance(model_or_results, xr.Dataset):
        return _from_scores(model_or_results, named, "the Dataset")
    if not isinstance(model_or_results, Model) and Path(model_or_results).is_dir():
        folder = Path(model_or_results)
        path = folder / LOOPS_FILE
        if not path.is_file():
            msg = (
                f"{folder}: no {LOOPS_FILE} (a run writes it when its config has a [loop_dominance] or "
                "[attribution] table); pass a model file to list its loops"
            )
            raise ResultsError(msg)
        with xr.open_dataset(path) as opened:
            return _from_scores(opened.load(), named, str(path))
    model = model_or_results if isinstance(model_or_results, Model) else load_model(Path(model_or_results))
    found = find_loops(model, max_length=max_length, limit=limit, through=through)
    return LoopReport(_table(found, named))


def loop_table(found: Sequence[Loop], groups: Mapping[str, Sequence[str]] | None = None) -> pd.DataFrame:
    """Loops as a table: indexed by loop id, with ``name``, ``variables``, ``length``, ``polarity``.

    Parameters
    ----------
    found : sequence of Loop
        The loops (:func:`armsdyn.feedback.find_loops`).
    groups : mapping, optional
        Group name to variables: each loop through a group's variables is named after it.

    Returns
    -------
    pandas.DataFrame
        One row per loop, in the order given.
    """
    return _table(found, dict(groups or {}))


def _table(found: Sequence[Loop], groups: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """The table of `found`, each loop named after its documented groups and those of `groups`."""
    columns = {
        "name": [", ".join(group_names(loop, groups)) for loop in found],
        "variables": [loop.variables for loop in found],
        "length": [loop.length for loop in found],
        "polarity": [loop.polarity for loop in found],
    }
    index = pd.Index([loop.id for loop in found], name="loop", dtype=object)
    return pd.DataFrame(columns, index=index, columns=list(COLUMNS)).astype({"length": int})


def _from_scores(ds: xr.Dataset, groups: dict[str, tuple[str, ...]], where: str) -> LoopReport:
    """The table of the loops a loop analysis scored (none for an attribution alone), and the analysis."""
    if "loop" not in ds.dims and "loop_group" not in ds.dims:
        msg = (
            f"{where} holds no loop analysis (no 'loop' or 'loop_group' dimension); pass a results folder "
            f"with {LOOPS_FILE}, or the Dataset armsdyn.ltm.loop_dominance returns"
        )
        raise ResultsError(msg)
    if "loop_group" in ds.dims and "group_variables" in ds.coords:
        # The run's own attribution groups ("other" has no variables), unless named otherwise here.
        for name, variables in zip(ds["loop_group"].values, ds["group_variables"].values, strict=True):
            if str(variables) and str(name) not in groups:
                groups[str(name)] = tuple(str(variables).split(", "))
    found = []
    if "loop" in ds.dims:
        n = ds.sizes["loop"]
        # Earlier runs wrote the coordinate as "loop_groups", and before loops were named from the
        # model's documentation, not at all.
        key = next((k for k in ("documented_groups", "loop_groups") if k in ds.coords), None)
        documented = ds[key].values if key else [""] * n
        for loop_id, variables, polarity, named in zip(
            ds["loop"].values, ds["loop_variables"].values, ds["polarity"].values, documented, strict=True
        ):
            # The loop's own polarity is stored, not its links': the table needs only the former.
            signs = {"R": (1,), "B": (-1,)}.get(str(polarity), (0,))
            names = tuple(str(variables).split(" -> "))
            found.append(Loop(str(loop_id), names, signs, (), tuple(filter(None, str(named).split(", ")))))
    return LoopReport(_table(found, groups), ds)


def _groups(groups: Mapping[str, Sequence[str]] | str | os.PathLike[str] | None) -> dict[str, tuple[str, ...]]:
    if groups is None:
        return {}
    if isinstance(groups, Mapping):
        return {str(name): tuple(variables) for name, variables in groups.items()}
    attribution = load_config(groups).attribution
    return {g.name: g.variables for g in attribution.groups} if attribution is not None else {}

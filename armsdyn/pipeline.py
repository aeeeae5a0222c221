"""Run an experiment end to end: config, model runs, a sensitivity study, results folder.

The one place that sequences the stages, used by ``armsdyn run`` and by
:func:`armsdyn.run_experiment` alike, so the command line and the Python API
do exactly the same thing.
"""

from __future__ import annotations

import json
import os
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import xarray as xr

from armsdyn.attribution import analyse_loops
from armsdyn.config import load_config
from armsdyn.errors import ArmsdynError, NumericalWarning, ResultsError
from armsdyn.experiment import run
from armsdyn.figures import draw_figures
from armsdyn.metrics import metrics_table
from armsdyn.model import file_sha256
from armsdyn.output import (
    FIGURES_DIR,
    MANIFEST_FILE,
    METRICS_FILE,
    atomic_folder,
    locked,
    now,
    refuse_existing,
    write_results,
    writing,
)
from armsdyn.results import LOOPS_FILE
from armsdyn.runner import ChunkWriteError, needs, refuse_unfit, remove_store
from armsdyn.sensitivity import run_study
from armsdyn.specs import Experiment


class StudyInterrupted(ArmsdynError):
    """A sensitivity study was interrupted; its finished chunks are kept for ``resume``."""


def run_experiment(
    config: str | os.PathLike[str] | Experiment,
    *,
    out: str | os.PathLike[str] | None = None,
    force: bool = False,
    stop_on_fault: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    chunk_size: int = 8192,
    resume: bool = False,
    report: Callable[[str], None] | None = None,
    progress: bool = False,
    command: Sequence[str] | None = None,
) -> Path:
    """Run every scenario of a config (and its sensitivity study) and write the results folder.

    With ``[loop_dominance]`` or ``[attribution]`` the loop analysis
    (:func:`armsdyn.attribution.analyse_loops`) is written to ``loops.nc`` in the same folder,
    the attribution columns join ``metrics.csv`` and the loop figures are drawn from it, all in
    the one atomic write.

    Parameters
    ----------
    config : path-like or Experiment
        The config file, or an experiment already loaded.
    out : path-like, optional
        The results folder (default ``results/<experiment name>``).
    force : bool
        Replace an existing results folder that armsdyn wrote.
    stop_on_fault : bool
        Stop at the first scenario whose values become non-finite or leave a declared range.
    workers, scheduler, chunk_size, resume
        How a ``[sensitivity]`` study runs (see :func:`armsdyn.sensitivity.run_study`).
    report : callable, optional
        Called with each line of progress and each warning.
    progress : bool
        Show a progress bar for a study.
    command : sequence of str, optional
        The command line, for the manifest.

    Returns
    -------
    pathlib.Path
        The results folder written.

    Raises
    ------
    ArmsdynError
        For a bad config or model, a results folder that may not be replaced, a
        config too large for the machine, or a failed write (nothing is left half-written).
    StudyInterrupted
        When a study is interrupted (Ctrl-C); its finished chunks are kept.
    """
    say = report or (lambda line: None)
    started = now()
    experiment = config if isinstance(config, Experiment) else load_config(config)
    target = Path(out) if out is not None else Path("results") / experiment.name
    refuse_existing(target, force=force)  # before the runs; checked again under the lock
    refuse_unfit(experiment, needs(experiment, workers=workers, chunk_size=chunk_size), target)
    # One lock for the whole run: the results folder and the study's chunk store beside it.
    with locked(target):
        say(f"armsdyn: {experiment.name}: {len(experiment.scenarios)} scenarios of {experiment.model.path}")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", NumericalWarning)
            ds = run(experiment, progress=lambda line: say(f"  {line}"), stop_on_fault=stop_on_fault)
        for w in caught:
            say(f"armsdyn: warning: {w.message}")
        study = None
        store = target.parent / f".{target.name}.study"
        if experiment.sensitivity is not None:
            spec = experiment.sensitivity
            say(
                f"armsdyn: sensitivity study: {spec.method}, {len(spec.parameters)} parameters, "
                f"{len(spec.outputs)} outputs"
            )
            if force and not resume:
                remove_store(store)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UserWarning)
                try:
                    study = run_study(
                        experiment,
                        workers=workers,
                        scheduler=scheduler,
                        store=store,
                        resume=resume,
                        progress=progress,
                        chunk_size=chunk_size,
                    )
                except KeyboardInterrupt:
                    msg = (
                        f"interrupted; finished chunks are kept in {store}: "
                        "run the same command with --resume to continue"
                    )
                    raise StudyInterrupted(msg) from None
                except ChunkWriteError as exc:
                    msg = f"{exc}; finished chunks are kept: run the same command with --resume to continue"
                    raise ResultsError(msg) from exc
                except ArmsdynError:
                    raise
                except (OSError, RuntimeError, zlib.error) as exc:
                    msg = (
                        f"{store}: could not write the study's chunks ({exc}; is the disk full or the folder "
                        "read-only?); finished chunks are kept: run the same command with --resume to continue"
                    )
                    raise ResultsError(msg) from exc
            for w in caught:
                say(f"armsdyn: warning: {w.message}")
            say(f"  {study[0].sizes['run']} runs")
        provenance = None
        if study is not None:
            provenance = {"workers": f"dask {scheduler}" if scheduler else study[0].attrs.get("workers", workers)}
        loops = None
        if experiment.loop_dominance is not None or experiment.attribution is not None:
            parts = {"loop dominance": experiment.loop_dominance, "attribution": experiment.attribution}
            asked = [what for what, spec in parts.items() if spec is not None]
            say(f"armsdyn: loop analysis ({' and '.join(asked)})")
            loops = analyse_loops(experiment)
        if loops is None:
            write_results(
                ds,
                experiment,
                target,
                force=force,
                started=started,
                command=command,
                study=study,
                provenance=provenance,
            )
        else:
            _write_with_loops(ds, loops, experiment, target, force, started, command, study, provenance)
        if study is not None:
            remove_store(store)
    return target


def _write_with_loops(
    ds: xr.Dataset,
    loops: xr.Dataset,
    experiment: Experiment,
    target: Path,
    force: bool,
    started: str,
    command: Sequence[str] | None,
    study: tuple[xr.Dataset, xr.Dataset] | None,
    provenance: Mapping[str, Any] | None,
) -> None:
    """Write the results folder with ``loops.nc``, the attribution columns and the loop figures, atomically.

    The folder is built inside one :func:`armsdyn.output.atomic_folder` staging folder:
    :func:`armsdyn.output.write_results` writes everything it writes (its figures without the
    kinds that read the loop analysis), then ``loops.nc`` is added, ``metrics.csv`` gains the
    attribution columns, the loop figures are drawn and the manifest lists every file; only then
    is the folder swapped into place, so no reader ever sees a folder without its loop analysis.
    """
    plain = tuple(spec for spec in experiment.figures if not spec.reads_loops)
    looped = tuple(spec for spec in experiment.figures if spec.reads_loops)
    with atomic_folder(target, force=force) as tmp:
        inner = tmp / "results"
        write_results(
            ds,
            replace(experiment, figures=plain),
            inner,
            started=started,
            command=command,
            study=study,
            provenance=provenance,
        )
        for entry in inner.iterdir():
            entry.rename(tmp / entry.name)
        inner.rmdir()
        with writing(tmp / LOOPS_FILE):
            loops.to_netcdf(tmp / LOOPS_FILE, engine="netcdf4")
        if "attribution_share" in loops:
            with writing(tmp / METRICS_FILE):
                metrics_table(ds, loops).to_csv(tmp / METRICS_FILE)
        with writing(tmp / FIGURES_DIR):
            draw_figures(ds, looped, tmp / FIGURES_DIR, loops=loops)
        manifest = json.loads((tmp / MANIFEST_FILE).read_text(encoding="utf-8"))
        manifest["files"] = {
            str(p.relative_to(tmp)): file_sha256(p)
            for p in sorted(tmp.rglob("*"))
            if p.is_file() and p.name != MANIFEST_FILE and not p.name.startswith(".")
        }
        with writing(tmp / MANIFEST_FILE), open(tmp / MANIFEST_FILE, "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=2, sort_keys=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())

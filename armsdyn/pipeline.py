"""Run an experiment end to end: config, model runs, a sensitivity study, results folder.

The one place that sequences the stages, used by ``armsdyn run`` and by
:func:`armsdyn.run_experiment` alike, so the command line and the Python API
do exactly the same thing.
"""

from __future__ import annotations

import os
import warnings
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

from armsdyn.config import load_config
from armsdyn.ensemble import choose_workers
from armsdyn.errors import ArmsdynError, NumericalWarning, ResultsError
from armsdyn.experiment import run
from armsdyn.output import locked, now, refuse_existing, write_results
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
            if workers is None and scheduler is None:
                workers = choose_workers(experiment.model.path, needs(experiment).runs)
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
        provenance = {"workers": f"dask {scheduler}" if scheduler else workers} if study is not None else None
        write_results(
            ds, experiment, target, force=force, started=started, command=command, study=study, provenance=provenance
        )
        if study is not None:
            remove_store(store)
    return target

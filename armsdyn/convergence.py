"""Do an experiment's treaty metrics converge as the time step shrinks?

Reruns an experiment at dt, dt/2 and dt/4 and compares every numeric treaty
metric between the last two: a metric that still moves by more than the
tolerance is flagged. Event times are taken at the integration step, so this
is the check that the step is fine enough for the numbers a paper reports.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from armsdyn.config import Experiment
from armsdyn.experiment import run
from armsdyn.metrics import compute_metrics
from armsdyn.treaty import columns, model_states


def convergence(
    experiment: Experiment, *, steps: tuple[float, ...] | None = None, tolerance: float = 0.02
) -> pd.DataFrame:
    """Each numeric treaty metric at the experiment's step dt and at dt/2 and dt/4.

    Parameters
    ----------
    experiment : armsdyn.Experiment
        The experiment to rerun.
    steps : tuple of float, optional
        Time steps to compare (default: dt, dt/2, dt/4).
    tolerance : float
        Relative change between the last two steps above which a metric is
        flagged as not converged.

    Returns
    -------
    pandas.DataFrame
        Rows ``(scenario, metric)``; a column per step, ``relative change``
        between the last two and ``converged``.
    """
    dt = experiment.time.step
    steps = steps or (dt, dt / 2, dt / 4)
    treaty_columns = columns(model_states(experiment.model) or ())
    tables = {}
    for step in steps:
        ds = run(replace(experiment, time=replace(experiment.time, step=step)))
        metrics = compute_metrics(ds)
        numeric = [c for c in treaty_columns if c in metrics.columns and pd.api.types.is_numeric_dtype(metrics[c])]
        tables[step] = metrics[numeric].stack(future_stack=True)
    out = pd.DataFrame(tables)
    out.index.names = ["scenario", "metric"]
    last, prev = out[steps[-1]], out[steps[-2]]
    change = (last - prev).abs() / np.maximum(np.abs(last), 1e-12)
    out["relative change"] = change.where(np.isfinite(last) | np.isfinite(prev))
    out["converged"] = (change <= tolerance) | (~np.isfinite(last) & ~np.isfinite(prev))
    return out

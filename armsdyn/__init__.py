"""armsdyn: system-dynamics models of arms races, run from config files.

The public API::

    import armsdyn
    ds = armsdyn.run("configs/richardson.toml")     # xarray Dataset (scenario, time)
    table = armsdyn.compute_metrics(ds)             # one row per scenario

Ensembles and sensitivity studies: :mod:`armsdyn.ensemble`, :mod:`armsdyn.sensitivity`;
claim audits (scenario discovery): ``armsdyn.audit(config)`` (module ``armsdyn.audit``);
figures: :mod:`armsdyn.figures`.
"""

from __future__ import annotations

import importlib.metadata

try:
    __version__ = importlib.metadata.version("armsdyn")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

from armsdyn.analysis import analyse
from armsdyn.audit import audit
from armsdyn.calibration import (
    CalibrationResult,
    calibrate,
    fit_trajectories,
    richardson_combined_fit,
    write_calibration,
)
from armsdyn.compare import Comparison, compare_results
from armsdyn.config import Experiment, FigureSpec, MetricsSpec, Scenario, load_config
from armsdyn.data import DataError, load_csv, load_nmc, load_sipri
from armsdyn.errors import (
    ArmsdynError,
    ConfigError,
    ModelError,
    NumericalError,
    NumericalWarning,
    ResultsError,
)
from armsdyn.experiment import run
from armsdyn.export import export_results
from armsdyn.feedback import Loop, find_loops
from armsdyn.ltm import loop_dominance as loop_dominance
from armsdyn.metrics import compute_metrics
from armsdyn.model import Model, TimeSettings, Variable, load_model
from armsdyn.output import redraw_figures, write_results
from armsdyn.pipeline import run_experiment
from armsdyn.results import Fault, find_faults
from armsdyn.richardson import Richardson
from armsdyn.sensitivity import run_study

__all__ = [
    "ArmsdynError",
    "CalibrationResult",
    "Comparison",
    "ConfigError",
    "DataError",
    "Experiment",
    "Fault",
    "FigureSpec",
    "Loop",
    "MetricsSpec",
    "Model",
    "ModelError",
    "NumericalError",
    "NumericalWarning",
    "ResultsError",
    "Richardson",
    "Scenario",
    "TimeSettings",
    "Variable",
    "__version__",
    "analyse",
    "audit",
    "calibrate",
    "compare_results",
    "compute_metrics",
    "export_results",
    "find_faults",
    "find_loops",
    "fit_trajectories",
    "load_config",
    "load_csv",
    "load_model",
    "load_nmc",
    "load_sipri",
    "redraw_figures",
    "richardson_combined_fit",
    "run",
    "run_experiment",
    "run_study",
    "write_calibration",
    "write_results",
]

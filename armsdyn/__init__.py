"""armsdyn: system-dynamics models of arms races, run from config files.

The public API::

    import armsdyn
    ds = armsdyn.run("configs/richardson.toml")     # xarray Dataset (scenario, time)
    table = armsdyn.compute_metrics(ds)             # one row per scenario
"""

from __future__ import annotations

import importlib.metadata

try:
    __version__ = importlib.metadata.version("armsdyn")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

from armsdyn.config import Experiment, FigureSpec, Scenario, load_config
from armsdyn.errors import (
    ArmsdynError,
    ConfigError,
    ModelError,
    NumericalError,
    NumericalWarning,
    ResultsError,
)
from armsdyn.experiment import Fault, find_faults, run
from armsdyn.metrics import compute_metrics
from armsdyn.model import Model, TimeSettings, Variable, load_model
from armsdyn.output import write_results
from armsdyn.richardson import Richardson

__all__ = [
    "ArmsdynError",
    "ConfigError",
    "Experiment",
    "Fault",
    "FigureSpec",
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
    "compute_metrics",
    "find_faults",
    "load_config",
    "load_model",
    "run",
    "write_results",
]

"""armsdyn: system-dynamics models of arms races, run from config files.

The public API::

    import armsdyn
    ds = armsdyn.run("configs/richardson.toml")     # xarray Dataset (scenario, time)
    table = armsdyn.compute_metrics(ds)             # one row per scenario

Ensembles and sensitivity studies: :mod:`armsdyn.ensemble`, :mod:`armsdyn.sensitivity`;
claim audits (scenario discovery): ``armsdyn.audit(config)`` (module ``armsdyn.audit``);
figures: :mod:`armsdyn.figures`.

Each public name is imported from its module on first use (PEP 562), so ``import armsdyn``
(and the command line, which imports only what its subcommand needs) does not pay for
matplotlib, scipy.stats or statsmodels until something asks for them.
"""

from __future__ import annotations

import importlib.metadata
import sys
import types
from typing import TYPE_CHECKING, Any

from armsdyn._lazy import lazy_names

try:
    __version__ = importlib.metadata.version("armsdyn")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

if TYPE_CHECKING:  # the names as type checkers and IDEs see them; at run time __getattr__ imports them
    from armsdyn.analysis import analyse
    from armsdyn.attribution import analyse_loops, attribute
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
    from armsdyn.loop_table import LoopReport, loops
    from armsdyn.ltm import loop_dominance as loop_dominance
    from armsdyn.metrics import compute_metrics
    from armsdyn.model import Model, TimeSettings, Variable, load_model
    from armsdyn.output import redraw_figures, write_results
    from armsdyn.pipeline import run_experiment
    from armsdyn.results import Fault, find_faults
    from armsdyn.richardson import Richardson
    from armsdyn.sensitivity import run_study

#: Where each public name lives: ``armsdyn.NAME`` is ``armsdyn.<module>.NAME``.
_MODULES: dict[str, str] = {
    "analyse": "analysis",
    "audit": "audit",
    "CalibrationResult": "calibration",
    "calibrate": "calibration",
    "fit_trajectories": "calibration",
    "richardson_combined_fit": "calibration",
    "write_calibration": "calibration",
    "Comparison": "compare",
    "compare_results": "compare",
    "Experiment": "config",
    "FigureSpec": "config",
    "MetricsSpec": "config",
    "Scenario": "config",
    "load_config": "config",
    "DataError": "data",
    "load_csv": "data",
    "load_nmc": "data",
    "load_sipri": "data",
    "ArmsdynError": "errors",
    "ConfigError": "errors",
    "ModelError": "errors",
    "NumericalError": "errors",
    "NumericalWarning": "errors",
    "ResultsError": "errors",
    "run": "experiment",
    "export_results": "export",
    "Loop": "feedback",
    "find_loops": "feedback",
    "analyse_loops": "attribution",
    "attribute": "attribution",
    "LoopReport": "loop_table",
    "loops": "loop_table",
    "loop_dominance": "ltm",
    "compute_metrics": "metrics",
    "Model": "model",
    "TimeSettings": "model",
    "Variable": "model",
    "load_model": "model",
    "redraw_figures": "output",
    "write_results": "output",
    "run_experiment": "pipeline",
    "Fault": "results",
    "find_faults": "results",
    "Richardson": "richardson",
    "run_study": "sensitivity",
}


__getattr__, __dir__ = lazy_names(__name__, _MODULES)


class _Package(types.ModuleType):
    """The package module, whose public function ``audit`` keeps its name when the submodule loads.

    Importing a submodule binds it on its package (``armsdyn.audit`` = the module); a
    public function of the same name must win, as it did when this file imported every
    name eagerly, or ``armsdyn.audit(config)`` would call a module.
    """

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _MODULES and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

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
    "LoopReport",
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
    "analyse_loops",
    "attribute",
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
    "loops",
    "redraw_figures",
    "richardson_combined_fit",
    "run",
    "run_experiment",
    "run_study",
    "write_calibration",
    "write_results",
]

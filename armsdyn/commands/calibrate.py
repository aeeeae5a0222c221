"""``armsdyn calibrate CONFIG``: fit model parameters to observed series and write the results folder."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from armsdyn.calibration import calibrate as fit
from armsdyn.calibration import format_summary, write_calibration
from armsdyn.calibration_config import CalibrationSpec, load_calibration
from armsdyn.data import DataWarning
from armsdyn.output import locked, refuse_existing


def calibrate(args: argparse.Namespace) -> int:
    """Calibrate ``args.config``, print the estimates and fit, write the folder; the exit status."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        spec = load_calibration(args.config)
    # Problems in the data are the user's to see on the command line, one line each.
    for w in caught:
        if issubclass(w.category, DataWarning):
            print(f"armsdyn: warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    target = args.out or Path("results") / spec.name
    refuse_existing(target, force=args.force)
    with locked(target):  # fails now, not after the fit, if the folder cannot be written
        return _calibrate_locked(args, spec, target)


def _calibrate_locked(args: argparse.Namespace, spec: CalibrationSpec, target: Path) -> int:
    print(f"armsdyn: {spec.name}: calibrating {spec.model.path}", file=sys.stderr)
    result = fit(spec)
    print(result.estimates.to_string())
    if not result.derived.empty:
        print(result.derived.to_string())
    print(format_summary(result))  # fit, stability, diagnostics and identification verdicts, any comparison
    if result.summary.get("converged") is False:
        print("armsdyn: warning: the optimiser did not report convergence", file=sys.stderr)
    write_calibration(result, target, force=args.force, command=args.command_line)
    print(f"armsdyn: wrote {target}", file=sys.stderr)
    return 0

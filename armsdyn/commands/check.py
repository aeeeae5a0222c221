"""``armsdyn check CONFIG``: validate an experiment, calibration or audit config without running it."""

from __future__ import annotations

import argparse
from pathlib import Path

from armsdyn.audit import load_audit
from armsdyn.calibration_config import load_calibration
from armsdyn.config import config_kind, load_config
from armsdyn.runner import needs, refuse_unfit
from armsdyn.units import check_units


def check(args: argparse.Namespace) -> int:
    """Validate ``args.config`` (and with ``--units`` its model's units); the exit status."""
    model_path = _check_config(args.config)
    if not args.units:
        return 0
    issues = check_units(model_path)
    label = "error" if args.strict else "warning"
    print(f"units: {model_path}: " + (f"{len(issues)} inconsistencies" if issues else "consistent"))
    for issue in issues:
        print(f"  {label}: {issue}")
    return 2 if issues and args.strict else 0


def _check_config(config: Path) -> Path:
    """Validate a config with the reader of its kind, print what it holds; the path of its model."""
    kind = config_kind(config)
    if kind == "calibration":
        spec = load_calibration(config)
        # The regression methods estimate the model's coefficients from the data, not named constants.
        names = ", ".join(p.name for p in spec.parameters) or "the model's reaction, fatigue and grievance terms"
        print(
            f"{config}: valid calibration {spec.name!r}: {spec.method} fit of {names} to "
            f"{len(spec.observations)} observations of {spec.data.file}, model {spec.model.path}"
        )
        return spec.model.path
    if kind == "audit":
        audit_spec = load_audit(config)
        print(
            f"{config}: valid audit of {len(audit_spec.claims)} claims over {len(audit_spec.dimensions)} "
            f"uncertain dimensions ({audit_spec.samples} {audit_spec.sampling} samples), "
            f"model {audit_spec.experiment.model.path}"
        )
        return audit_spec.experiment.model.path
    exp = load_config(config)
    found = needs(exp)
    refuse_unfit(exp, found, Path("results") / exp.name)
    print(
        f"{config}: valid: experiment {exp.name!r}, model {exp.model.path}, "
        f"{len(exp.scenarios)} scenarios, {len(exp.variables)} saved variables, {len(exp.figures)} figures; "
        f"{found.summary()}"
    )
    for name in exp.variables:  # subscripted variables keep their dimensions in the results
        var = exp.model.variable(name)
        if var.dims:
            print(f"  {var.name} {var.describe_dims()}")
    return exp.model.path

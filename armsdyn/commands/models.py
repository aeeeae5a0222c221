"""``armsdyn models [FOLDER]`` and ``armsdyn describe MODEL``: what the model files hold."""

from __future__ import annotations

import argparse

from armsdyn.errors import ModelError
from armsdyn.model import SUFFIXES, load_model


def models(args: argparse.Namespace) -> int:
    """List the model files of ``args.folder`` with their stocks and constants; the exit status."""
    folder = args.folder
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in SUFFIXES) if folder.is_dir() else []
    if not files:
        msg = f"{folder}: no model files ({', '.join(SUFFIXES)}) found"
        raise ModelError(msg)
    for path in files:
        model = load_model(path)
        print(f"{path}  (stocks: {', '.join(v.name for v in model.of_kind('stock'))})")
        for var in model.of_kind("constant"):
            print(
                f"    {var.name} = {var.default:g} {var.units}".rstrip()
                if var.default is not None
                else f"    {var.name} {var.units}".rstrip()
            )
    return 0


def describe(args: argparse.Namespace) -> int:
    """List every variable of ``args.model`` with its units and documentation; the exit status."""
    model = load_model(args.model)
    t = model.time
    print(f"{model.path}: time {t.initial:g} to {t.final:g} {t.units}, step {t.step:g}, saved every {t.saveper:g}")
    for kind in ("stock", "flow", "auxiliary", "stateful", "constant", "lookup", "data"):
        variables = model.of_kind(kind)
        if not variables:
            continue
        print(f"\n{kind}s:")
        for var in variables:
            units = f" [{var.units}]" if var.units else ""
            dims = f" {var.describe_dims()}" if var.dims else ""
            print(f"  {var.name}{dims}{var.describe_value()}{units}")
            if var.doc:
                print(f"      {var.doc}")
    return 0

"""Do the treaty metrics of an experiment converge as the time step halves?

    .venv/bin/python benchmarks/convergence.py [CONFIG]   # default: configs/disarmament_vs_knowledge.toml

Reruns the experiment at dt, dt/2 and dt/4 (PySD, every scenario) and prints each numeric treaty
metric at the three steps with its relative change between the last two; a metric that moves by
more than 2% is marked and the script exits 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

import armsdyn
from armsdyn.convergence import convergence

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    config = Path(argv[0]) if argv else ROOT / "configs" / "disarmament_vs_knowledge.toml"
    table = convergence(armsdyn.load_config(config))
    with pd.option_context("display.max_rows", None, "display.width", 160, "display.float_format", "{:.4g}".format):
        print(table)
    moving = table[~table["converged"]]
    for (scenario, metric), row in moving.iterrows():
        print(f"warning: {scenario}: {metric!r} moves by {row['relative change']:.1%} between the last two steps")
    return 1 if len(moving) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""``armsdyn analyse CONFIG``: equilibria of each scenario's stocks and their stability."""

from __future__ import annotations

import argparse

from armsdyn.analysis import analyse as find_equilibria
from armsdyn.analysis import summarise
from armsdyn.config import load_config


def analyse(args: argparse.Namespace) -> int:
    """Print (and with ``--out`` write) the equilibria table of ``args.config``; the exit status."""
    table = find_equilibria(load_config(args.config), stocks=args.stocks, seed=args.seed)
    print(summarise(table))
    if args.out:
        table.to_csv(args.out, index=False)
    return 0

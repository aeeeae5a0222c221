"""``armsdyn loops MODEL``: a model's feedback loops with their polarity (and dominance)."""

from __future__ import annotations

import argparse
import sys

from armsdyn.config import load_config
from armsdyn.feedback import find_loops, format_loops
from armsdyn.ltm import format_dominance, loop_dominance
from armsdyn.model import load_model


def loops(args: argparse.Namespace) -> int:
    """Print the loops of ``args.model`` (named after ``--groups``, with ``--dominance`` scored); the exit status."""
    groups = None
    if args.groups is not None:
        attribution = load_config(args.groups).attribution
        groups = {g.name: g.variables for g in attribution.groups} if attribution is not None else {}
    model = load_model(args.model)
    found = find_loops(model, max_length=args.max_length, limit=args.limit, through=args.through)
    if args.dominance:
        print(format_dominance(found, loop_dominance(model, loops=found), groups=groups))
    else:
        print(format_loops(found, groups))
    if args.limit is not None and len(found) >= args.limit:
        print(f"armsdyn: stopped at {args.limit} loops; use --max-length or --limit", file=sys.stderr)
    return 0

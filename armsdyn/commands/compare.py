"""``armsdyn compare A B``: two results folders side by side, and the provenance behind their differences."""

from __future__ import annotations

import argparse
import sys

from armsdyn.compare import TOP, compare_results, write_comparison
from armsdyn.output import refuse_existing


def compare(args: argparse.Namespace) -> int:
    """Print the comparison of ``args.a`` and ``args.b`` (draw and write it if asked); the exit status."""
    if args.out is not None:
        refuse_existing(args.out, force=args.force)  # before the comparison; checked again when writing
    top = TOP if args.top is None else args.top
    comparison = compare_results(args.a, args.b, figure=args.figure, top=top)
    print(comparison.report(all_metrics=args.all_metrics))
    if args.out is not None:
        print(f"armsdyn: wrote {write_comparison(comparison, args.out, force=args.force)}", file=sys.stderr)
    if args.figure is not None:
        print(f"armsdyn: wrote {args.figure}", file=sys.stderr)
    return 0

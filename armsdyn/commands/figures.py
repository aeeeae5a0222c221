"""``armsdyn figures RESULTS_DIR``: redraw a results folder's figures from its saved results."""

from __future__ import annotations

import argparse
import sys

from armsdyn.output import redraw_figures


def figures(args: argparse.Namespace) -> int:
    """Redraw the figures of ``args.results`` (those of ``args.config`` if given); the exit status."""
    files = redraw_figures(args.results, args.config)
    print(f"armsdyn: redrew {len(files)} files in {args.results / 'figures'}", file=sys.stderr)
    return 0

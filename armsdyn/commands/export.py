"""``armsdyn export RESULTS_DIR``: tidy long tables of a results folder with a data dictionary."""

from __future__ import annotations

import argparse
import sys

from armsdyn.export import export_results


def export(args: argparse.Namespace) -> int:
    """Export ``args.results`` as CSV or Parquet tables; the exit status."""
    target = export_results(args.results, args.out, fmt=args.format, force=args.force)
    print(f"armsdyn: wrote {target}", file=sys.stderr)
    return 0

"""``armsdyn audit CONFIG``: audit a config's claims over its uncertainty space."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from armsdyn.audit import audit as run_audit
from armsdyn.audit import load_audit, summary_lines
from armsdyn.output import refuse_existing


def audit(args: argparse.Namespace) -> int:
    """Run the audit of ``args.config``, print its summary and write the audit folder; the exit status."""
    spec = load_audit(args.config)
    target = args.out or Path("results") / spec.experiment.name / "audit"
    refuse_existing(target, force=args.force)  # before the runs; checked again when writing
    result = run_audit(
        spec,
        out=target,
        samples=args.samples,
        force=args.force,
        workers=args.workers,
        chunk_size=args.chunk_size,
        progress=sys.stderr.isatty(),
        command=args.command_line,
    )
    print(summary_lines(result))
    print(f"wrote {target}/ (report.md, claims.csv, boxes.csv, figures/)")
    return 0

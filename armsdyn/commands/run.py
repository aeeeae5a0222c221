"""``armsdyn run CONFIG``: run an experiment and write its results folder."""

from __future__ import annotations

import argparse
import sys

from armsdyn.pipeline import StudyInterrupted, run_experiment


def run(args: argparse.Namespace) -> int:
    """Run every scenario of ``args.config`` (and its study) and write the results folder; the exit status."""
    try:
        target = run_experiment(
            args.config,
            out=args.out,
            force=args.force,
            stop_on_fault=args.stop_on_fault,
            workers=args.workers,
            scheduler=args.scheduler,
            chunk_size=max(1, args.chunk_size),
            resume=args.resume,
            report=lambda line: print(line, file=sys.stderr),
            progress=sys.stderr.isatty(),
            command=args.command_line,
        )
    except StudyInterrupted as exc:
        print(f"armsdyn: {exc}", file=sys.stderr)
        return 130
    print(f"armsdyn: wrote {target}", file=sys.stderr)
    return 0

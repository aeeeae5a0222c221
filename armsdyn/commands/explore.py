"""``armsdyn explore CONFIG``: sliders over a config's parameters in a local web page (needs Bokeh)."""

from __future__ import annotations

import argparse
import sys


def explore(args: argparse.Namespace) -> int:
    """Serve the explorer of ``args.config`` until interrupted; the exit status."""
    try:
        from armsdyn.explore import serve  # Bokeh is an optional extra
    except ImportError as exc:
        print(f"armsdyn: error: explore needs Bokeh (pip install 'armsdyn[explore]'): {exc}", file=sys.stderr)
        return 2
    announce = lambda url: print(f"armsdyn: explorer at {url} (Ctrl+C to stop)", flush=True)  # noqa: E731
    try:
        serve(args.config, port=args.port, open_browser=not args.no_browser, announce=announce)
    except KeyboardInterrupt:
        print("armsdyn: explorer stopped", file=sys.stderr)
    return 0

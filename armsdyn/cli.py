"""The ``armsdyn`` command line: argument parsing only.

Errors a user can cause (a bad config, a broken model, an existing results
folder) print one clear message and exit with status 2, without a traceback.

Each subcommand's work is a function in :mod:`armsdyn.commands`, named in
:data:`COMMANDS` and imported only when that subcommand runs: ``armsdyn --help``
loads no model, plotting or statistics library, and ``armsdyn check`` none of
the calibration's or the comparison's.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from armsdyn import __version__
from armsdyn.errors import ArmsdynError

#: Each subcommand's function, as ``"module:function"``: it takes the parsed arguments and
#: returns the exit status. The one extension point of the command line (with the subcommand's
#: arguments in :func:`_parser`), and the one place it imports a package module at run time.
COMMANDS: dict[str, str] = {
    "run": "armsdyn.commands.run:run",
    "check": "armsdyn.commands.check:check",
    "figures": "armsdyn.commands.figures:figures",
    "calibrate": "armsdyn.commands.calibrate:calibrate",
    "analyse": "armsdyn.commands.analyse:analyse",
    "audit": "armsdyn.commands.audit:audit",
    "models": "armsdyn.commands.models:models",
    "describe": "armsdyn.commands.models:describe",
    "loops": "armsdyn.commands.loops:loops",
    "export": "armsdyn.commands.export:export",
    "compare": "armsdyn.commands.compare:compare",
    "explore": "armsdyn.commands.explore:explore",
}

#: ``armsdyn compare --top``'s default, :data:`armsdyn.compare.TOP` (stated here for the help
#: text without importing the comparison and matplotlib; a test checks the two agree).
COMPARE_TOP = 4

EPILOG = """\
examples:
  armsdyn run configs/richardson.toml            run every scenario, write results/richardson/
  armsdyn run configs/richardson.toml --out /tmp/r --force
  armsdyn check configs/richardson.toml          validate the config and model only
  armsdyn check --units --strict configs/richardson.toml   also check the model's units
  armsdyn figures results/richardson             redraw the figures from the saved results
  armsdyn calibrate configs/calibrate_richardson_1909.toml
  armsdyn analyse configs/richardson.toml        equilibria and stability of each scenario
  armsdyn audit configs/audit_knowledge_argument.toml --samples 10000
  armsdyn models                                 list models in ./models with their parameters
  armsdyn describe models/richardson.mdl         every variable with units and documentation
  armsdyn loops models/richardson.mdl            every feedback loop with its polarity
  armsdyn loops --dominance models/richardson.mdl   ... and each loop's share of loop activity
  armsdyn export results/richardson --format csv tidy tables in results/richardson/export/
  armsdyn compare results/a results/b --figure diff.png   what differs between two results folders
  armsdyn explore configs/richardson.toml        sliders over the scenarios' parameters in a local web page
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="armsdyn",
        description="Run system-dynamics arms-race experiments from TOML config files.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )

    parser.add_argument("--version", action="version", version=f"armsdyn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "run",
        help="run an experiment and write its results folder",
        description="Run every scenario of CONFIG (compiled engine; PySD where a model cannot compile) "
        "and write results.nc, metrics.csv, figures/ and manifest.json into the results folder.",
    )
    p.add_argument("config", type=Path, help="experiment config file (TOML)")
    p.add_argument("--out", type=Path, help="results folder (default: results/<experiment name>)")
    p.add_argument("--force", action="store_true", help="replace an existing results folder")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="processes for a [sensitivity] study's ensemble (default: all cores)",
    )
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run the study's chunks on this Dask distributed scheduler (e.g. tcp://host:8786)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted [sensitivity] study from its finished chunks",
    )
    p.add_argument(
        "--chunk-size", type=int, default=8192, metavar="N", help="samples simulated together (default: 8192)"
    )
    p.add_argument(
        "--stop-on-fault",
        action="store_true",
        help="stop at the first scenario that overflows to inf or NaN (default: warn and go on)",
    )

    p = sub.add_parser(
        "check",
        help="validate a config and its model without running",
        description="Validate CONFIG: keys, types, time settings and every variable "
        "name against the model. Exit status 0 when valid, 2 otherwise.",
    )
    p.add_argument("config", type=Path, help="experiment config file (TOML)")
    p.add_argument("--units", action="store_true", help="also check the model's equations for dimensional consistency")
    p.add_argument("--strict", action="store_true", help="with --units: a units inconsistency is an error (status 2)")

    p = sub.add_parser(
        "figures",
        help="redraw a results folder's figures from its saved results",
        description="Redraw every figure of RESULTS_DIR from its results.nc (and sensitivity/), "
        "without running any model. The [[figures]] come from the config recorded in the folder's "
        "manifest, or from --config.",
    )
    p.add_argument("results", type=Path, help="a results folder written by 'armsdyn run'")
    p.add_argument("--config", type=Path, help="draw this config's [[figures]] instead")

    p = sub.add_parser(
        "calibrate",
        help="fit model parameters to observed series",
        description="Fit the parameters named in CONFIG's [calibration] table to observed data by "
        "trajectory matching (scipy least_squares), or apply Richardson's combined estimator; write "
        "estimates with standard errors and intervals, fit statistics, residuals and figures.",
    )
    p.add_argument("config", type=Path, help="calibration config file (TOML)")
    p.add_argument("--out", type=Path, help="results folder (default: results/<experiment name>)")
    p.add_argument("--force", action="store_true", help="replace an existing results folder")

    p = sub.add_parser(
        "analyse",
        help="find equilibria of a model's stocks and their stability",
        description="For each scenario of CONFIG: equilibria of the stocks (root finding from several "
        "starts), the numerical Jacobian there, its eigenvalues and a verdict.",
    )
    p.add_argument("config", type=Path, help="experiment config file (TOML)")
    p.add_argument("--stocks", nargs="+", metavar="NAME", help="stocks to solve for (default: those in feedback)")
    p.add_argument("--seed", type=int, default=0, help="seed for the random starting points (default: 0)")
    p.add_argument("--out", type=Path, help="also write the table to this CSV file")

    p = sub.add_parser(
        "audit",
        help="audit a config's claims over its uncertainty space (scenario discovery)",
        description="Sample CONFIG's [uncertainties] (Latin hypercube or Sobol), run every sample with the "
        "ensemble engine, evaluate each [[claims]] predicate per run and write audit/: the share of the space "
        "where each claim holds with its interval, PRIM boxes where it fails and holds, a CART tree, figures "
        "and report.md.",
    )
    p.add_argument("config", type=Path, help="audit config file (TOML) with [[claims]] and [uncertainties]")
    p.add_argument("--out", type=Path, help="audit folder (default: results/<experiment name>/audit)")
    p.add_argument("--samples", type=int, metavar="N", help="runs (default: the config's [audit] samples)")
    p.add_argument("--force", action="store_true", help="replace an existing audit folder")
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="threads of numba's kernel, or processes where numba is not installed (default: all cores)",
    )
    p.add_argument(
        "--chunk-size", type=int, default=8192, metavar="N", help="samples simulated together (default: 8192)"
    )

    p = sub.add_parser("models", help="list the models in a folder with their parameters")
    p.add_argument(
        "folder",
        type=Path,
        nargs="?",
        default=Path("models"),
        help="folder of .mdl/.xmile/.stmx files (default: ./models)",
    )

    p = sub.add_parser("describe", help="list a model's variables with units and documentation")
    p.add_argument("model", type=Path, help="a .mdl, .xmile or .stmx file")

    p = sub.add_parser("loops", help="list a model's feedback loops with their polarity")
    p.add_argument("model", type=Path, help="a .mdl, .xmile or .stmx file")
    p.add_argument("--max-length", type=int, metavar="N", help="only loops of at most N variables")
    p.add_argument("--limit", type=int, default=10000, metavar="N", help="stop after N loops (default: 10000)")
    p.add_argument(
        "--dominance",
        action="store_true",
        help="add each loop's mean and peak share of loop activity over the model file's run (Loops That Matter)",
    )
    p.add_argument(
        "--through",
        action="append",
        default=[],
        metavar="VARIABLE",
        help="only loops through this variable (repeatable; any element of a subscripted one)",
    )
    p.add_argument(
        "--groups",
        type=Path,
        metavar="CONFIG",
        help="name each loop after the [[attribution.groups]] of this config whose variables it passes through",
    )

    p = sub.add_parser(
        "export",
        help="export a results folder as tidy CSV or Parquet tables with a data dictionary",
        description="Write RESULTS_DIR's results.nc (and a sensitivity study's ensemble and indices) as long "
        "tables (scenario, time, variable, element, value, units), with scenarios, parameters and a data "
        "dictionary, into RESULTS_DIR/export/ or --out.",
    )
    p.add_argument("results", type=Path, help="a results folder written by 'armsdyn run'")
    # export_results checks the format and names the allowed ones.
    p.add_argument("--format", default="csv", help="table format: csv (default) or parquet (needs pyarrow)")
    p.add_argument("--out", type=Path, help="export folder (default: RESULTS_DIR/export)")
    p.add_argument("--force", action="store_true", help="replace an existing export folder")

    p = sub.add_parser(
        "compare",
        help="compare two results folders: metrics, variables and the provenance behind their differences",
        description="Print A's and B's metrics side by side with B - A, each variable's largest absolute "
        "difference and where it is, and the manifest differences (config, model hash, versions, engine) "
        "with a diff of the two configs.",
    )
    p.add_argument("a", type=Path, help="results folder A (e.g. before a change)")
    p.add_argument("b", type=Path, help="results folder B (e.g. after it)")
    p.add_argument("--figure", type=Path, metavar="PATH", help="draw the most different variables (.png, .pdf, .svg)")
    p.add_argument("--top", type=int, metavar="N", help=f"variables in the figure (default: {COMPARE_TOP})")
    p.add_argument("--all-metrics", action="store_true", help="list every metric, not only those that differ")
    p.add_argument("--out", type=Path, metavar="DIR", help="also write the tables (CSV), config diff and report here")
    p.add_argument("--force", action="store_true", help="replace an existing --out folder")

    p = sub.add_parser(
        "explore",
        help="explore a config interactively: sliders, live time series and metrics in a local web page",
        description="Serve a page on 127.0.0.1 with a slider per scenario parameter, a scenario picker, the saved "
        "variables and the metrics table re-simulated on every change, and a button that saves the settings as a "
        "new [[scenarios]] entry. Needs the explore extra (pip install 'armsdyn[explore]').",
    )
    p.add_argument("config", type=Path, help="experiment config file (TOML)")
    p.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--no-browser", action="store_true", help="print the page's address without opening a browser")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``armsdyn`` command; returns the exit status.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program name (default: ``sys.argv[1:]``), as in
        ``main(["check", "configs/richardson.toml"])``.

    Returns
    -------
    int
        0 on success, 2 for an error the user can fix, 130 when interrupted.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # The command line draws figures to files only and needs no display (a library import never
    # switches a notebook's backend, but the command does). matplotlib reads MPLBACKEND when a
    # subcommand first imports it; a process that already has it (a test calling main) is switched.
    os.environ["MPLBACKEND"] = "Agg"
    if (matplotlib := sys.modules.get("matplotlib")) is not None:
        matplotlib.use("Agg")
    args = _parser().parse_args(argv)
    args.command_line = ["armsdyn", *argv]  # for the manifests of the folders a command writes
    try:
        return command(args.command)(args)
    except ArmsdynError as exc:
        print(f"armsdyn: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("armsdyn: interrupted; no results were written", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the like: not an error worth a traceback.
        sys.stderr.close()
        return 0


def command(name: str) -> Callable[[argparse.Namespace], int]:
    """The function of subcommand `name` (a key of :data:`COMMANDS`), its module imported now.

    Parameters
    ----------
    name : str
        A subcommand, e.g. ``"run"``.

    Returns
    -------
    callable
        Takes the parsed arguments, returns the exit status.
    """
    module, _, function = COMMANDS[name].partition(":")
    handler: Callable[[argparse.Namespace], int] = getattr(importlib.import_module(module), function)
    return handler

"""The ``armsdyn`` command line.

Errors a user can cause (a bad config, a broken model, an existing results
folder) print one clear message and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

from armsdyn import __version__
from armsdyn.analysis import analyse, summarise
from armsdyn.audit import audit, load_audit, summary_lines
from armsdyn.calibration import calibrate, format_summary, load_calibration, write_calibration
from armsdyn.compare import TOP, compare_results, write_comparison
from armsdyn.config import config_kind, load_config
from armsdyn.data import DataWarning
from armsdyn.errors import ArmsdynError, ModelError
from armsdyn.export import FORMATS, export_results
from armsdyn.feedback import find_loops, format_loops
from armsdyn.ltm import format_dominance, loop_dominance
from armsdyn.model import SUFFIXES, load_model
from armsdyn.output import locked, redraw_figures, refuse_existing
from armsdyn.pipeline import StudyInterrupted, run_experiment
from armsdyn.runner import needs, refuse_unfit
from armsdyn.units import check_units

if TYPE_CHECKING:
    pass

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
        description="Run every scenario of CONFIG with PySD and write results.nc, "
        "metrics.csv, figures/ and manifest.json into the results folder.",
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
    p.add_argument("--workers", type=int, default=None, metavar="N", help="processes (default: all cores)")
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
    p.add_argument(
        "--format", choices=FORMATS, default="csv", help="table format (default: csv; parquet needs pyarrow)"
    )
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
    p.add_argument("--top", type=int, default=TOP, metavar="N", help=f"variables in the figure (default: {TOP})")
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
    """Entry point of the ``armsdyn`` command; returns the exit status."""
    # The command line draws figures to files only: a library import never switches a
    # notebook's backend, but the command does, so it needs no display.
    matplotlib.use("Agg")
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
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


def _run(args: argparse.Namespace) -> int:
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
            command=["armsdyn", *sys.argv[1:]],
        )
    except StudyInterrupted as exc:
        print(f"armsdyn: {exc}", file=sys.stderr)
        return 130
    print(f"armsdyn: wrote {target}", file=sys.stderr)
    return 0


def _check(args: argparse.Namespace) -> int:
    model_path = _check_config(args)
    if not args.units:
        return 0
    issues = check_units(model_path)
    label = "error" if args.strict else "warning"
    print(f"units: {model_path}: " + (f"{len(issues)} inconsistencies" if issues else "consistent"))
    for issue in issues:
        print(f"  {label}: {issue}")
    return 2 if issues and args.strict else 0


def _check_config(args: argparse.Namespace) -> Path:
    kind = config_kind(args.config)
    if kind == "calibration":
        spec = load_calibration(args.config)
        # The regression methods estimate the model's coefficients from the data, not named constants.
        names = ", ".join(p.name for p in spec.parameters) or "the model's reaction, fatigue and grievance terms"
        print(
            f"{args.config}: valid calibration {spec.name!r}: {spec.method} fit of {names} to "
            f"{len(spec.observations)} observations of {spec.data.file}, model {spec.model.path}"
        )
        return spec.model.path
    if kind == "audit":
        audit_spec = load_audit(args.config)
        print(
            f"{args.config}: valid audit of {len(audit_spec.claims)} claims over {len(audit_spec.dimensions)} "
            f"uncertain dimensions ({audit_spec.samples} {audit_spec.sampling} samples), "
            f"model {audit_spec.experiment.model.path}"
        )
        return audit_spec.experiment.model.path
    exp = load_config(args.config)
    found = needs(exp)
    refuse_unfit(exp, found, Path("results") / exp.name)
    print(
        f"{args.config}: valid: experiment {exp.name!r}, model {exp.model.path}, "
        f"{len(exp.scenarios)} scenarios, {len(exp.variables)} saved variables, {len(exp.figures)} figures; "
        f"{found.summary()}"
    )
    for name in exp.variables:  # subscripted variables keep their dimensions in the results
        var = exp.model.variable(name)
        if var.dims:
            print(f"  {var.name} {var.describe_dims()}")
    return exp.model.path


def _models(args: argparse.Namespace) -> int:

    files = sorted(p for p in args.folder.glob("*") if p.suffix.lower() in SUFFIXES) if args.folder.is_dir() else []
    if not files:
        msg = f"{args.folder}: no model files ({', '.join(SUFFIXES)}) found"
        raise ModelError(msg)
    for path in files:
        model = load_model(path)
        print(f"{path}  (stocks: {', '.join(v.name for v in model.of_kind('stock'))})")
        for var in model.of_kind("constant"):
            print(
                f"    {var.name} = {var.default:g} {var.units}".rstrip()
                if var.default is not None
                else f"    {var.name} {var.units}".rstrip()
            )
    return 0


def describe_input(args: argparse.Namespace) -> int:

    model = load_model(args.model)
    t = model.time
    print(f"{model.path}: time {t.initial:g} to {t.final:g} {t.units}, step {t.step:g}, saved every {t.saveper:g}")
    for kind in ("stock", "flow", "auxiliary", "stateful", "constant", "lookup", "data"):
        variables = model.of_kind(kind)
        if not variables:
            continue
        print(f"\n{kind}s:")
        for var in variables:
            units = f" [{var.units}]" if var.units else ""
            dims = f" {var.describe_dims()}" if var.dims else ""
            print(f"  {var.name}{dims}{var.describe_value()}{units}")
            if var.doc:
                print(f"      {var.doc}")
    return 0


def _loops(args: argparse.Namespace) -> int:

    groups = None
    if args.groups is not None:
        attribution = load_config(args.groups).attribution
        groups = {g.name: g.variables for g in attribution.groups} if attribution is not None else {}
    model = load_model(args.model)
    loops = find_loops(model, max_length=args.max_length, limit=args.limit, through=args.through)
    if args.dominance:
        print(format_dominance(loops, loop_dominance(model, loops=loops), groups=groups))
    else:
        print(format_loops(loops, groups))
    if args.limit is not None and len(loops) >= args.limit:
        print(f"armsdyn: stopped at {args.limit} loops; use --max-length or --limit", file=sys.stderr)
    return 0


def _figures(args: argparse.Namespace) -> int:

    files = redraw_figures(args.results, args.config)
    print(f"armsdyn: redrew {len(files)} files in {args.results / 'figures'}", file=sys.stderr)
    return 0


def _calibrate(args: argparse.Namespace) -> int:

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DataWarning)
        spec = load_calibration(args.config)
    for w in caught:
        if issubclass(w.category, DataWarning):
            print(f"armsdyn: warning: {w.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    target = args.out or Path("results") / spec.name
    refuse_existing(target, force=args.force)
    with locked(target):  # fails now, not after the fit, if the folder cannot be written
        return _calibrate_locked(args, spec, target)


def _calibrate_locked(args: argparse.Namespace, spec: Any, target: Path) -> int:

    print(f"armsdyn: {spec.name}: calibrating {spec.model.path}", file=sys.stderr)
    result = calibrate(spec)
    print(result.estimates.to_string())
    if not result.derived.empty:
        print(result.derived.to_string())
    summary = result.summary
    print(format_summary(result))  # fit, stability, diagnostics and identification verdicts, any comparison
    if summary.get("converged") is False:
        print("armsdyn: warning: the optimiser did not report convergence", file=sys.stderr)
    write_calibration(result, target, force=args.force, command=["armsdyn", *sys.argv[1:]])
    print(f"armsdyn: wrote {target}", file=sys.stderr)
    return 0


def _analyse(args: argparse.Namespace) -> int:

    table = analyse(load_config(args.config), stocks=args.stocks, seed=args.seed)
    print(summarise(table))
    if args.out:
        table.to_csv(args.out, index=False)
    return 0


def _audit(args: argparse.Namespace) -> int:

    spec = load_audit(args.config)
    target = args.out or Path("results") / spec.experiment.name / "audit"
    refuse_existing(target, force=args.force)  # before the runs; checked again when writing
    result = audit(
        spec,
        out=target,
        samples=args.samples,
        force=args.force,
        workers=args.workers,
        chunk_size=args.chunk_size,
        progress=sys.stderr.isatty(),
        command=sys.argv,
    )
    print(summary_lines(result))
    print(f"wrote {target}/ (report.md, claims.csv, boxes.csv, figures/)")
    return 0


def _export(args: argparse.Namespace) -> int:
    target = export_results(args.results, args.out, fmt=args.format, force=args.force)
    print(f"armsdyn: wrote {target}", file=sys.stderr)
    return 0


def _compare(args: argparse.Namespace) -> int:
    if args.out is not None:
        refuse_existing(args.out, force=args.force)  # before the comparison; checked again when writing
    comparison = compare_results(args.a, args.b, figure=args.figure, top=args.top)
    print(comparison.report(all_metrics=args.all_metrics))
    if args.out is not None:
        print(f"armsdyn: wrote {write_comparison(comparison, args.out, force=args.force)}", file=sys.stderr)
    if args.figure is not None:
        print(f"armsdyn: wrote {args.figure}", file=sys.stderr)
    return 0


def _explore(args: argparse.Namespace) -> int:
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


_COMMANDS = {
    "audit": _audit,
    "run": _run,
    "check": _check,
    "figures": _figures,
    "calibrate": _calibrate,
    "analyse": _analyse,
    "models": _models,
    "describe": describe_input,
    "loops": _loops,
    "export": _export,
    "compare": _compare,
    "explore": _explore,
}

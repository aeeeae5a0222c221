"""Write the results tables of the shipped experiments into docs/models.md, or check that they are current.

    python docs/make_tables.py           # rerun the configs, rewrite the tables
    python docs/make_tables.py --check   # exit 1 if a table in docs/models.md differs from a fresh run

Each table sits between the markers ``<!-- numbers: NAME -->`` and
``<!-- /numbers -->`` (NAME is a key of :data:`TABLES`: ``main experiment``,
the knowledge model's disarmament scenarios; ``security views``, the
security-dilemma postures; ``attribution``, the main experiment's loop-group
attribution); nothing else in the file is touched.
tests/test_docs.py runs the check, so the documented numbers cannot drift from
what the shipped configs produce.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import xarray as xr

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "models.md"
END = "<!-- /numbers -->"


def _cell(value: object, digits: int = 2) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def main_experiment() -> str:
    """The main experiment's headline metrics per scenario, as a Markdown table."""
    import armsdyn

    ds = armsdyn.run(ROOT / "configs" / "disarmament_vs_knowledge.toml")
    metrics = armsdyn.compute_metrics(ds)
    descriptions = dict(zip(ds["scenario"].values.tolist(), ds["scenario_description"].values.tolist(), strict=True))
    rows = [
        "| scenario | insecurity reduction vs baseline, A / B (term mean) | dampening efficiency A "
        "| breakout time A / B (years) | treaty |",
        "|---|---|---|---|---|",
    ]
    for name, row in metrics.iterrows():
        status = row["treaty status"]
        if status in ("expired", "defection", "cheating detected"):
            status = f"{status} (year {row['breakdown time']:.2f})"
        breakout = f"{_cell(row['breakout time A'])} / {_cell(row['breakout time B'])}"
        reduction = " / ".join(_cell(row[f"insecurity reduction vs baseline {s}"]) for s in "AB")
        if row["breakout status A"] == "not regained":
            breakout = "not regained"
        rows.append(
            f"| `{name}`: {descriptions[name]} "
            f"| {reduction} "
            f"| {_cell(row['dampening efficiency A'])} | {breakout} | {status} |"
        )
    return "\n".join(rows) + "\n"


def security_views() -> str:
    """The security-dilemma postures at the final time and over years 30-100, as a Markdown table."""
    import armsdyn

    ds = armsdyn.run(ROOT / "configs" / "security_views.toml")
    end = ds.isel(time=-1)
    later = ds.sel(time=slice(30, None))
    notes = {
        "power_B": "(A status quo)",
        "peace_unilateral_exploited": "(B power)",
        "peace_reciprocal_vs_power": "(B power)",
        "power_to_security": "(switch at year 50)",
    }

    def pair(da: xr.DataArray, fmt: str) -> str:
        return " / ".join(format(float(da.sel(state=s)), fmt) for s in ("A", "B"))

    rows = [
        "| scenario | hardware A / B | insecurity A / B | mean insecurity A / B | burden % A / B "
        "| cumulative cuts A / B |",
        "|---|---|---|---|---|---|",
    ]
    for name in ds["scenario"].values.tolist():
        at, mean = end.sel(scenario=name), later.sel(scenario=name).mean("time")
        cells = [
            pair(at["hardware"], ".0f"),
            pair(at["insecurity"], ".2f"),
            pair(mean["insecurity"], ".2f"),
            pair(100 * at["burden_share"], ".1f"),
            pair(at["cumulative_cuts"], ".0f"),
        ]
        label = f"`{name}`" + (f" {notes[name]}" if name in notes else "")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def attribution() -> str:
    """The main experiment's loop-group attribution of the growth of effective power, as a Markdown table."""
    import armsdyn
    from armsdyn.attribution import attribute

    experiment = armsdyn.load_config(ROOT / "configs" / "disarmament_vs_knowledge.toml")
    ds = attribute(experiment.model, experiment.attribution, experiment.scenarios, time=experiment.time)
    groups = [str(g) for g in ds["loop_group"].values]
    rows = [
        "| scenario | change of effective power, A / B | " + " | ".join(groups) + " |",
        "|---|---|" + "---|" * len(groups),
    ]
    for scenario in ds["scenario"].values.tolist():
        change = ds["stock_change"].sel(scenario=scenario).values
        cells = []
        for group in groups:
            a, b = ds["attribution_share"].sel(scenario=scenario, loop_group=group).values
            cells.append(_cell(a) if _cell(a) == _cell(b) else f"{_cell(a)} / {_cell(b)}")
        rows.append(f"| `{scenario}` | {change[0]:.0f} / {change[1]:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


#: Each documented table: its marker name and the function that computes it from a fresh run.
TABLES = {"main experiment": main_experiment, "security views": security_views, "attribution": attribution}


def _start(name: str) -> str:
    return f"<!-- numbers: {name} -->"


def current(name: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    start = text.index(_start(name)) + len(_start(name))
    return text[start : text.index(END, start)].strip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the documented tables are current")
    args = parser.parse_args(argv)
    fresh = {name: build() for name, build in TABLES.items()}
    if args.check:
        stale = [name for name, table in fresh.items() if table != current(name)]
        if stale:
            print(f"{DOC}: out of date: {', '.join(stale)}; run python docs/make_tables.py", file=sys.stderr)
            return 1
        return 0
    text = DOC.read_text(encoding="utf-8")
    for name, table in fresh.items():
        head, rest = text.split(_start(name), 1)
        _, tail = rest.split(END, 1)
        text = f"{head}{_start(name)}\n{table}{END}{tail}"
    DOC.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Write the main experiment's results table into docs/models.md, or check that it is current.

    python docs/make_tables.py           # rerun configs/disarmament_vs_knowledge.toml, rewrite the table
    python docs/make_tables.py --check   # exit 1 if the table in docs/models.md differs from a fresh run

The table sits between the markers ``<!-- numbers: main experiment -->`` and
``<!-- /numbers -->``; nothing else in the file is touched. tests/test_docs.py
runs the check, so the documented numbers cannot drift from what the shipped
config produces.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "models.md"
CONFIG = ROOT / "configs" / "disarmament_vs_knowledge.toml"
START = "<!-- numbers: main experiment -->"
END = "<!-- /numbers -->"


def _cell(value: object, digits: int = 2) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def table() -> str:
    """The main experiment's headline metrics per scenario, as a Markdown table."""
    import armsdyn

    experiment = armsdyn.load_config(CONFIG)
    ds = armsdyn.run(experiment)
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


def current() -> str:
    text = DOC.read_text(encoding="utf-8")
    return text[text.index(START) + len(START) : text.index(END)].strip("\n") + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the documented table is current")
    args = parser.parse_args(argv)
    fresh = table()
    if args.check:
        if fresh != current():
            print(f"{DOC}: the main experiment's table is out of date; run python docs/make_tables.py", file=sys.stderr)
            return 1
        return 0
    text = DOC.read_text(encoding="utf-8")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    DOC.write_text(f"{head}{START}\n{fresh}{END}{tail}", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())

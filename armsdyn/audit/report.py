"""The ``audit/`` folder: tables, ``report.md`` (each claim, its share, where it fails, in words), manifest."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from armsdyn.audit.discovery import SIGNIFICANCE, AuditResult, box_words, percent, short_number
from armsdyn.audit.figures import draw_audit_figures
from armsdyn.audit.spec import AuditSpec
from armsdyn.model import file_sha256
from armsdyn.output import MANIFEST_FILE, atomic_folder, build_manifest, now

# --------------------------------------------------------------------------- output


def _dimension_text(spec: AuditSpec) -> list[str]:
    lines = []
    for p in spec.parameters:
        also = f" (and {', '.join(p.also)} alike)" if p.also else ""
        if p.distribution in ("unif", "logunif"):
            scale = "log-uniform" if p.distribution == "logunif" else "uniform"
            lines.append(f"| {p.name}{also} | {short_number(p.bounds[0])} to {short_number(p.bounds[1])} | {scale} |")
        else:
            lines.append(f"| {p.name}{also} | {', '.join(map(short_number, p.bounds))} | {p.distribution} |")
    for s in spec.switches:
        also = f" (and {', '.join(s.also)} alike)" if s.also else ""
        lines.append(f"| {s.name}{also} | {', '.join(map(short_number, s.values))} | switch, equally likely |")
    return lines


def report_text(result: AuditResult) -> str:
    """``report.md``: each claim, its share holding and the conditions under which it fails, in words."""
    spec = result.spec
    exp = spec.experiment
    n = len(result.draws)
    method = "a Latin hypercube" if spec.sampling == "latin" else "a scrambled Sobol sequence"
    ranges = result.ranges()
    lines = [
        f"# Claim audit: {exp.description or exp.name}",
        "",
        f"{n:,} runs of `{exp.model.path.name}` at draws from {method} (seed {spec.seed}) over "
        f"{len(spec.dimensions)} uncertain assumptions; each claim's scenario (and its baseline) ran at every "
        "draw. Shares are of the sampled space, with Wilson 95% intervals; boxes are PRIM's (EMA Workbench), "
        "each the step of its peeling trajectory with the best balance of coverage and density (harmonic "
        f"mean) at a density of at least {percent(spec.min_density)}; quasi-p values test each restriction "
        "(Bryant and Lempert 2010).",
        "",
        "| assumption | range | distribution |",
        "|---|---|---|",
        *_dimension_text(spec),
        "",
    ]
    for r in result.claims:
        c = r.claim
        low, high = r.interval
        where = f"scenario `{c.scenario}`" + (f", compared with `{c.baseline}`" if c.baseline else "")
        lines += [
            f"## {c.name}",
            "",
            f"> {c.text}",
            "",
            f"Predicate: `{c.predicate.text}` ({where}).",
            "",
        ]
        verdict = (
            f"The claim holds in {percent(r.share)} of the space (95% interval {100 * low:.1f} to {100 * high:.1f}%, "
            f"{n:,} runs)."
        )
        if r.undefined.any():
            verdict += (
                f" In {int(r.undefined.sum()):,} runs a metric it uses is undefined (e.g. no breakdown, "
                "so no breakout time); they count as not holding."
            )
        lines += [verdict, ""]
        for outcome in ("fails", "holds"):
            boxes = [b for b in r.boxes if b.outcome == outcome]
            total = int((~r.holds).sum()) if outcome == "fails" else int(r.holds.sum())
            if not boxes:
                if outcome == "fails" and total:
                    lines += [
                        f"PRIM finds no box where it fails with a density of {percent(spec.min_density)}: "
                        f"its {total:,} failures are spread over the space.",
                        "",
                    ]
                continue
            for j, b in enumerate(boxes, start=1):
                qp = ", ".join(f"{d} {b.qp[d]:.2g}" for d in b.limits)
                which = "It" if j == 1 else "Also, it"
                weak = [d for d in b.limits if b.qp[d] > SIGNIFICANCE]
                note = ""
                if weak and len(weak) < len(b.limits):
                    note = (
                        f" The box also restricts {', '.join(weak)}, but not significantly "
                        f"(quasi-p above {SIGNIFICANCE:g}): {box_words(b, ranges)}."
                    )
                lines += [
                    f"{which} **{outcome} when {box_words(b, ranges, alpha=SIGNIFICANCE)}**: this box holds "
                    f"{percent(b.coverage)} of the runs where it {outcome} (coverage), and it {outcome} in "
                    f"{percent(b.density)} of the runs inside (density); the box is {percent(b.mass)} of the space. "
                    f"Quasi-p: {qp}.{note}",
                    "",
                ]
        top = r.scores.sort_values(ascending=False)
        top = top[top > 0].head(3)
        if len(top):
            lines += [
                "CART (second view): the assumptions that best separate holding from failing runs are "
                + ", ".join(f"{k} ({v:.2f})" for k, v in top.items())
                + f"; the tree is in `cart/{c.name}.txt`.",
                "",
            ]
    return "\n".join(lines).rstrip() + "\n"


def write_audit(
    result: AuditResult,
    target: str | os.PathLike[str],
    *,
    force: bool = False,
    started: str | None = None,
    command: Sequence[str] | None = None,
) -> Path:
    """Write the ``audit/`` folder atomically (see :func:`armsdyn.output.atomic_folder`)."""

    started = started or now()
    target = Path(target)
    with atomic_folder(target, force=force) as tmp:
        _fill(tmp, result)
        manifest = build_manifest(result.spec.experiment, started=started, command=command)
        manifest["versions"]["ema_workbench"] = _version("ema_workbench")
        manifest["versions"]["scikit-learn"] = _version("scikit-learn")
        manifest["audit"] = {
            "runs": len(result.draws),
            "sampling": result.spec.sampling,
            "seed": result.spec.seed,
            "dimensions": list(result.spec.dimensions),
            "claims": [c.name for c in result.spec.claims],
        }
        manifest["files"] = {str(p.relative_to(tmp)): file_sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        with open(tmp / MANIFEST_FILE, "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
    return target


def _version(dist: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _fill(folder: Path, result: AuditResult) -> None:
    result.summary().to_csv(folder / "claims.csv")
    runs = result.draws.copy()
    for r in result.claims:
        runs[f"holds: {r.claim.name}"] = r.holds.astype(int)
    runs.index.name = "run"
    runs.to_csv(folder / "runs.csv")
    box_rows, trajectory_rows = [], []
    for r in result.claims:
        for j, b in enumerate(r.boxes, start=1):
            for dim, lim in b.limits.items():
                numeric = len(lim) == 2 and not any(s.name == dim for s in result.spec.switches)
                box_rows.append(
                    {
                        "claim": r.claim.name,
                        "outcome": b.outcome,
                        "box": j,
                        "dimension": dim,
                        "lower": lim[0] if numeric else np.nan,
                        "upper": lim[1] if numeric else np.nan,
                        "values": "" if numeric else " ".join(short_number(v) for v in lim),
                        "quasi-p": b.qp[dim],
                        "coverage": b.coverage,
                        "density": b.density,
                        "mass": b.mass,
                        "step": b.index,
                    }
                )
            t = b.trajectory.copy()
            t.insert(0, "step", range(len(t)))
            t.insert(0, "box", j)
            t.insert(0, "outcome", b.outcome)
            t.insert(0, "claim", r.claim.name)
            trajectory_rows.append(t)
    pd.DataFrame(box_rows).to_csv(folder / "boxes.csv", index=False)
    if trajectory_rows:
        pd.concat(trajectory_rows).to_csv(folder / "trajectories.csv", index=False)
    (folder / "cart").mkdir()
    scores = pd.DataFrame({r.claim.name: r.scores for r in result.claims})
    scores.index.name = "dimension"
    scores.to_csv(folder / "feature_scores.csv")
    for r in result.claims:
        (folder / "cart" / f"{r.claim.name}.txt").write_text(r.cart, encoding="utf-8")
    draw_audit_figures(result, folder / "figures")
    (folder / "report.md").write_text(report_text(result), encoding="utf-8")


def summary_lines(result: AuditResult) -> str:
    """A few lines for the command line."""
    lines = []
    ranges = result.ranges()
    for r in result.claims:
        low, high = r.interval
        line = f"{r.claim.name}: holds in {percent(r.share)} ({100 * low:.1f}-{100 * high:.1f}%)"
        fails = [b for b in r.boxes if b.outcome == "fails"]
        if fails:
            line += f"; fails when {box_words(fails[0], ranges, alpha=SIGNIFICANCE)}"
        lines.append(line)
    return "\n".join(lines)

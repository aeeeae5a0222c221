"""Audit figures: the claim summary, and per claim PRIM's trade-off, box limits and a pairwise scatter."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from armsdyn.audit.discovery import AuditResult, Box, percent, short_number
from armsdyn.figures import SINGLE_COLUMN, paper_style, save_figure

# --------------------------------------------------------------------------- figures


def draw_audit_figures(result: AuditResult, folder: Path) -> list[Path]:
    """Claim summary, and per claim the trade-off, box limits and pairwise scatter of its first failing box."""
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    ranges = result.ranges()
    with paper_style():
        fig = claim_summary(result)
        paths += save_figure(fig, folder / "claims")
        plt.close(fig)
        for r in result.claims:
            boxes = [b for b in r.boxes if b.outcome == "fails"] or [b for b in r.boxes if b.outcome == "holds"]
            if not boxes:
                continue
            box = boxes[0]
            stem = f"{r.claim.name}_{box.outcome}"
            fig, ax = plt.subplots(figsize=(SINGLE_COLUMN, 0.8 * SINGLE_COLUMN))
            tradeoff(box, ax)
            paths += save_figure(fig, folder / f"{stem}_tradeoff")
            plt.close(fig)
            fig, ax = plt.subplots(figsize=(SINGLE_COLUMN, 0.4 + 0.35 * max(1, len(box.limits))))
            box_limits(box, ranges, ax)
            paths += save_figure(fig, folder / f"{stem}_limits")
            plt.close(fig)
            dims = _scatter_dims(box, r.scores, ranges)
            if len(dims) == 2:
                fig, ax = plt.subplots(figsize=(SINGLE_COLUMN, SINGLE_COLUMN))
                pair_scatter(result.draws, r.holds, box, dims, ax)
                paths += save_figure(fig, folder / f"{stem}_scatter")
                plt.close(fig)
    return paths


def claim_summary(result: AuditResult, ax: Any = None) -> Any:
    """One bar per claim: the share of the space where it holds, with its 95% interval."""
    import matplotlib.pyplot as plt

    n = len(result.claims)
    if ax is None:
        fig, ax = plt.subplots(figsize=(SINGLE_COLUMN, 0.5 + 0.35 * n))
    else:
        fig = ax.figure
    shares = [r.share for r in result.claims]
    lows = [max(0.0, r.share - r.interval[0]) for r in result.claims]
    highs = [max(0.0, r.interval[1] - r.share) for r in result.claims]
    y = np.arange(n)[::-1]
    ax.barh(y, shares, xerr=[lows, highs], color="C0", capsize=2, height=0.6)
    for yi, s in zip(y, shares, strict=True):
        ax.text(min(s + 0.02, 0.9), yi, percent(s), va="center", fontsize="small")
    ax.set_yticks(y, [r.claim.name.replace("_", " ") for r in result.claims])
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the space where the claim holds")
    return fig


def tradeoff(box: Box, ax: Any) -> None:
    """PRIM's coverage against density along the peeling trajectory; the chosen box marked."""
    t = box.trajectory
    points = ax.scatter(t["coverage"], t["density"], c=t["res_dim"], cmap="viridis", s=10)
    ax.scatter([box.coverage], [box.density], s=60, facecolors="none", edgecolors="k", label="chosen box")
    ax.figure.colorbar(points, ax=ax, label="restricted dimensions")
    ax.set_xlabel("coverage")
    ax.set_ylabel("density")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower left", fontsize="small")


def box_limits(box: Box, ranges: Mapping[str, tuple[float, float]], ax: Any) -> None:
    """Each restricted dimension's box limits against its full sampled range (normalised)."""
    dims = list(box.limits)
    for i, dim in enumerate(dims[::-1]):
        lim = box.limits[dim]
        ax.plot([0, 1], [i, i], color="0.8", lw=6, solid_capstyle="butt")
        if dim in ranges:
            lo, hi = ranges[dim]
            a, b = (lim[0] - lo) / (hi - lo or 1), (lim[1] - lo) / (hi - lo or 1)
            ax.plot([a, b], [i, i], color="C1", lw=6, solid_capstyle="butt")
            ax.text(a, i + 0.3, short_number(lim[0]), ha="center", fontsize="x-small")
            ax.text(b, i + 0.3, short_number(lim[1]), ha="center", fontsize="x-small")
        else:
            ax.text(0.5, i + 0.3, ", ".join(map(short_number, lim)), ha="center", fontsize="x-small")
    ax.set_yticks(range(len(dims)), [f"{d} (qp {box.qp[d]:.1g})" for d in dims[::-1]], fontsize="small")
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.7, len(dims) - 0.2)
    ax.set_xlabel(f"position in the sampled range (box: runs where the claim {box.outcome})")


def _scatter_dims(box: Box, scores: pd.Series, ranges: Mapping[str, tuple[float, float]]) -> list[str]:
    """The two most restrictive numeric dimensions of the box (narrowest share of their range), else top scores."""

    def width(dim: str) -> float:
        lo, hi = ranges[dim]
        return (box.limits[dim][1] - box.limits[dim][0]) / (hi - lo or 1)

    dims = sorted((d for d in box.limits if d in ranges), key=width)[:2]
    for d in scores.sort_values(ascending=False).index:
        if len(dims) == 2:
            break
        if d in ranges and d not in dims:
            dims.append(d)
    return dims


def pair_scatter(draws: pd.DataFrame, holds: np.ndarray, box: Box, dims: Sequence[str], ax: Any) -> None:
    """Runs over two dimensions coloured by whether the claim holds; the box drawn."""
    from matplotlib.patches import Rectangle

    x, y = draws[dims[0]].to_numpy(), draws[dims[1]].to_numpy()
    show = np.arange(len(x))
    if len(show) > 4000:  # a readable figure: a fixed subset
        show = np.random.default_rng(0).choice(len(x), 4000, replace=False)
    ok = holds[show]
    ax.scatter(x[show][ok], y[show][ok], s=3, color="C0", label="holds", rasterized=True)
    ax.scatter(x[show][~ok], y[show][~ok], s=3, color="C1", marker="x", label="fails", rasterized=True)
    lo = [box.limits.get(d, (draws[d].min(), draws[d].max())) for d in dims]
    ax.add_patch(Rectangle((lo[0][0], lo[1][0]), lo[0][1] - lo[0][0], lo[1][1] - lo[1][0], fill=False, ec="k", lw=1.2))
    ax.set_xlabel(dims[0])
    ax.set_ylabel(dims[1])
    ax.legend(loc="best", fontsize="small", markerscale=3)

"""Scenario discovery: each claim's verdict per run, its share with a Wilson interval, PRIM boxes and a CART view."""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from armsdyn.audit.spec import AuditSpec, Claim

#: Quasi-p above which a box's restriction is reported as not significant.
SIGNIFICANCE = 0.05
#: Wilson interval: the normal quantile of a 95% interval.
Z95 = 1.959963984540054

# --------------------------------------------------------------------------- analysis


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (default 95%)."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class Box:
    """A PRIM box: where a claim fails (or holds) with high density.

    Attributes
    ----------
    outcome : str
        ``"fails"`` or ``"holds"``: the runs the box describes.
    index : int
        The chosen step of the peeling trajectory.
    coverage, density, mass : float
        Share of the outcome's runs inside the box; share of the box's runs with
        the outcome; share of all runs inside the box.
    limits : dict
        Each restricted dimension to ``(lower, upper)`` (numbers) or a tuple of
        the values kept (switches).
    qp : dict
        Each restricted dimension's quasi-p value (the larger of its sides').
    trajectory : pandas.DataFrame
        The peeling (and pasting) trajectory: coverage, density, mass, res_dim.
    """

    outcome: str
    index: int
    coverage: float
    density: float
    mass: float
    limits: dict[str, Any]
    qp: dict[str, float]
    trajectory: pd.DataFrame = field(repr=False)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the EMA Workbench's import-time warnings and its logging."""
    logger = logging.getLogger("EMA")
    level = logger.level
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            logger.setLevel(level)


_NO_PRIM = "claim audits need the EMA Workbench's PRIM: pip install 'armsdyn[audit]'"


def require_prim() -> None:
    """Fail before the runs when the EMA Workbench is missing, without importing it (see :func:`prim_module`)."""
    if importlib.util.find_spec("ema_workbench") is None:
        raise ImportError(_NO_PRIM)


def prim_module() -> Any:
    """The EMA Workbench's PRIM module, imported on first use.

    Importing it takes 4 to 10 s: the workbench imports its whole modelling
    framework, and its method logger inspects the call stack at import time,
    which costs more the more modules are loaded.
    """
    with _quiet():
        try:
            from ema_workbench.analysis import prim
        except ImportError:
            raise ImportError(_NO_PRIM) from None
    return prim


def prim_frame(draws: pd.DataFrame, switches: Sequence[str] = ()) -> pd.DataFrame:
    """The draws as PRIM takes them: numbers as floats, switches as categories."""
    x = draws.astype(float).copy()
    for name in switches:
        x[name] = pd.Categorical(x[name])
    return x


def select_box(trajectory: pd.DataFrame, min_density: float) -> int:
    """The step of a peeling trajectory to report.

    Among the steps with density >= `min_density`, the one with the best balance
    of coverage and density (their harmonic mean, the F1 score of the box as a
    classifier); when no step reaches `min_density`, the densest.
    """
    dense = trajectory[trajectory["density"] >= min_density]
    if len(dense):
        c, d = dense["coverage"], dense["density"]
        return int((2 * c * d / (c + d)).idxmax())
    return int(trajectory["density"].idxmax())


def find_boxes(
    x: pd.DataFrame,
    outcome: np.ndarray,
    *,
    label: str = "fails",
    min_density: float = 0.8,
    peel_alpha: float = 0.05,
    paste_alpha: float = 0.05,
    mass_min: float = 0.05,
    boxes: int = 2,
) -> list[Box]:
    """PRIM boxes of the runs where `outcome` is true (EMA Workbench's :class:`Prim`).

    Each box is chosen on its peeling trajectory by :func:`select_box`; the next
    box is searched among the runs outside it. Boxes whose density does not
    reach `min_density` are not reported.
    """
    y = np.asarray(outcome, dtype=int)
    if y.sum() < 2 or y.sum() > len(y) - 2:
        return []
    prim = prim_module()
    found: list[Box] = []
    with _quiet():
        alg = prim.Prim(x, y, threshold=min_density, peel_alpha=peel_alpha, paste_alpha=paste_alpha, mass_min=mass_min)
        from ema_workbench.analysis.scenario_discovery_util import _determine_restricted_dims

        for _ in range(boxes):
            box = alg.find_box()
            if box is None or box.peeling_trajectory.shape[0] < 2:
                break
            trajectory = box.peeling_trajectory.reset_index(drop=True)
            i = select_box(trajectory, min_density)
            if trajectory.loc[i, "density"] < min_density or trajectory.loc[i, "res_dim"] == 0:
                break
            box.select(i)
            lims = box.box_lims[i]
            restricted = list(_determine_restricted_dims(lims, alg.box_init))
            limits: dict[str, Any] = {}
            for dim in restricted:
                if isinstance(alg.box_init[dim].iloc[0], set):
                    limits[dim] = tuple(sorted(lims[dim].iloc[0]))
                else:
                    limits[dim] = (float(lims[dim].iloc[0]), float(lims[dim].iloc[1]))
            qp = {dim: float(max(v for v in box.qp[i].get(dim, [-1]) if v is not None)) for dim in restricted}
            row = trajectory.loc[i]
            found.append(
                Box(
                    label,
                    i,
                    float(row["coverage"]),
                    float(row["density"]),
                    float(row["mass"]),
                    limits,
                    qp,
                    trajectory[["coverage", "density", "mass", "res_dim"]].astype(float),
                )
            )
    return found


def cart_view(x: pd.DataFrame, holds: np.ndarray, *, seed: int = 0) -> tuple[str, pd.Series]:
    """A CART tree of holds/fails (its text) and feature scores; without scikit-learn, KS scores only."""
    numbers = x.astype(float)
    try:
        from sklearn.tree import DecisionTreeClassifier, export_text
    except ImportError:
        import scipy.stats

        scores = {
            c: float(scipy.stats.ks_2samp(numbers[c][holds], numbers[c][~holds]).statistic)
            if holds.any() and (~holds).any()
            else 0.0
            for c in numbers
        }
        return "(scikit-learn not installed: no tree; scores are Kolmogorov-Smirnov statistics)", pd.Series(scores)
    leaf = max(5, len(x) // 50)
    tree = DecisionTreeClassifier(max_depth=3, min_samples_leaf=leaf, random_state=seed)
    tree.fit(numbers.to_numpy(), np.where(holds, "holds", "fails"))
    text = export_text(tree, feature_names=list(numbers.columns), decimals=3, show_weights=True)
    return text, pd.Series(tree.feature_importances_, index=numbers.columns)


def short_number(v: float) -> str:
    """A number as reports and figures print it: three significant digits."""
    return f"{v:.3g}"


def percent(v: float) -> str:
    """A share as a whole percentage; a dash for NaN."""
    return f"{100 * v:.0f}%" if not math.isnan(v) else "—"


def box_words(
    box: Box, dimensions: Mapping[str, tuple[float, float]] | None = None, *, alpha: float | None = None
) -> str:
    """The box as conditions: ``"latent threat weight A < 0.2 and knowledge half life A < 8"``.

    Most significant restriction first. A side at the full range of a dimension
    (in `dimensions`) is left out. With `alpha`, restrictions whose quasi-p
    exceeds it are left out too (unless all would be).
    """
    parts = []
    items = sorted(box.limits.items(), key=lambda item: box.qp.get(item[0], 1.0))
    if alpha is not None and any(box.qp.get(d, 1.0) <= alpha for d, _ in items):
        items = [(d, lim) for d, lim in items if box.qp.get(d, 1.0) <= alpha]
    for dim, lim in items:
        if dimensions is not None and dim in dimensions and isinstance(lim, tuple) and len(lim) == 2:
            lo_full, hi_full = dimensions[dim]
            low = lim[0] > lo_full + 1e-12 * max(1.0, abs(lo_full))
            high = lim[1] < hi_full - 1e-12 * max(1.0, abs(hi_full))
        else:
            low = high = True
        if dimensions is None or dim not in dimensions:
            values = ", ".join(short_number(v) for v in lim)
            parts.append(f"{dim} is {values}" if len(lim) == 1 else f"{dim} is one of {values}")
        elif low and high:
            parts.append(f"{short_number(lim[0])} < {dim} < {short_number(lim[1])}")
        elif low:
            parts.append(f"{dim} > {short_number(lim[0])}")
        elif high:
            parts.append(f"{dim} < {short_number(lim[1])}")
    return " and ".join(parts)


@dataclass
class ClaimResult:
    """One claim's audit."""

    claim: Claim
    holds: np.ndarray
    undefined: np.ndarray
    boxes: list[Box]
    cart: str
    scores: pd.Series

    @property
    def share(self) -> float:
        """Share of the runs where the claim holds."""
        return float(self.holds.mean()) if self.holds.size else math.nan

    @property
    def interval(self) -> tuple[float, float]:
        """Wilson 95% interval of :attr:`share`."""
        return wilson(int(self.holds.sum()), int(self.holds.size))


@dataclass
class AuditResult:
    """An audit's samples, claims and boxes (see :func:`audit`)."""

    spec: AuditSpec
    draws: pd.DataFrame
    claims: list[ClaimResult]
    values: dict[str, pd.DataFrame]
    folder: Path | None = None

    def summary(self) -> pd.DataFrame:
        """A row per claim: scenario, runs, share holding with its 95% interval, undefined runs."""
        rows = []
        for r in self.claims:
            low, high = r.interval
            rows.append(
                {
                    "claim": r.claim.name,
                    "scenario": r.claim.scenario,
                    "baseline": r.claim.baseline,
                    "predicate": r.claim.predicate.text,
                    "runs": int(r.holds.size),
                    "holds": int(r.holds.sum()),
                    "share": r.share,
                    "share low": low,
                    "share high": high,
                    "undefined": int(r.undefined.sum()),
                    "text": r.claim.text,
                }
            )
        return pd.DataFrame(rows).set_index("claim")

    def ranges(self) -> dict[str, tuple[float, float]]:
        """Each numeric dimension's sampled range (min, max of the draws)."""
        switches = {s.name for s in self.spec.switches}
        return {c: (float(self.draws[c].min()), float(self.draws[c].max())) for c in self.draws if c not in switches}


def evaluate_claims(spec: AuditSpec, draws: pd.DataFrame, tables: Mapping[str, pd.DataFrame]) -> list[ClaimResult]:
    """Each claim's verdict per run, its PRIM boxes (where it fails and where it holds) and its CART view.

    Parameters
    ----------
    spec : AuditSpec
    draws : pandas.DataFrame
        The draws, a row per run (:func:`sample`).
    tables : mapping of str to pandas.DataFrame
        The metrics table of each claim's ``"scenario|baseline"``, a row per run.

    Returns
    -------
    list of ClaimResult
    """
    x = prim_frame(draws, [s.name for s in spec.switches])
    results = []
    for claim in spec.claims:
        table = tables[f"{claim.scenario}|{claim.baseline}"]
        truth = claim.predicate.evaluate({n: table[n].to_numpy() for n in claim.predicate.names})
        holds = truth == 1.0
        options: dict[str, Any] = {
            "min_density": spec.min_density,
            "peel_alpha": spec.peel_alpha,
            "paste_alpha": spec.paste_alpha,
            "mass_min": spec.mass_min,
            "boxes": spec.boxes,
        }
        boxes = find_boxes(x, ~holds, label="fails", **options) + find_boxes(x, holds, label="holds", **options)
        cart, scores = cart_view(draws, holds, seed=spec.seed)
        results.append(ClaimResult(claim, holds, np.isnan(truth), boxes, cart, scores))
    return results

"""Claim audits: predicates, shares against analytic answers, PRIM boxes, the command and the knowledge audit."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from armsdyn.audit import (
    audit,
    find_boxes,
    load_audit,
    numba_model,
    prim_frame,
    sample,
    select_box,
    wilson,
)
from armsdyn.cli import main
from armsdyn.errors import ConfigError
from armsdyn.predicates import parse_predicate

#: One worker runs this file: its tests share the module's Richardson audit, the EMA Workbench's
#: import (2-4 s a process) and the knowledge model's translation and numba kernel (6-7 s to
#: compile) instead of paying each on both workers.
pytestmark = pytest.mark.xdist_group("audit")

ROOT = Path(__file__).resolve().parent.parent
RICHARDSON = ROOT / "models" / "richardson.mdl"
KNOWLEDGE_AUDIT = ROOT / "configs" / "audit_knowledge_argument.toml"

# k and l uniform on [LOW, HIGH], a = b = 1: stable where k*l < 1.
LOW, HIGH = 0.2, 2.0
# A claim that fails exactly in the box k >= K_EDGE and l >= L_EDGE.
K_EDGE, L_EDGE = 1.2, 0.8


def richardson_config(tmp: Path, samples: int, claims: str, sampling: str = "latin") -> Path:
    text = f"""
[experiment]
name = "richardson_audit"
description = "Stability of Richardson's model over a rectangle of reaction coefficients"
model = "{RICHARDSON.as_posix()}"

[time]
initial = 0
final = 2
step = 0.0625
saveper = 1

[parameters]
"fatigue coefficient a" = 1.0
"fatigue coefficient b" = 1.0

[output]
variables = ["arms X"]

[audit]
samples = {samples}
seed = 11
sampling = "{sampling}"
boxes = 1

[[uncertainties.parameters]]
name = "defence coefficient k"
bounds = [{LOW}, {HIGH}]

[[uncertainties.parameters]]
name = "defence coefficient l"
bounds = [{LOW}, {HIGH}]
{claims}
"""
    path = tmp / "richardson_audit.toml"
    path.write_text(text)
    return path


STABLE = """
[[claims]]
name = "stable"
text = "Fatigue outweighs mutual reaction, so arms settle (Richardson 1960)"
predicate = "fatigue coefficient a * fatigue coefficient b > defence coefficient k * defence coefficient l"
"""
IN_BOX = f"""
[[claims]]
name = "outside_box"
text = "A claim built to fail exactly in a box"
predicate = "defence coefficient k < {K_EDGE} or defence coefficient l < {L_EDGE}"
"""
STABLE_METRIC = """
[[claims]]
name = "stable_metric"
text = "The same from the metrics table"
predicate = "determinant ab-kl > 0"
"""


def analytic_stable_share() -> float:
    """P(k*l < 1) for k, l uniform on [LOW, HIGH]."""
    width = HIGH - LOW
    # k below 1/HIGH: every l is stable; above: l < 1/k.
    full = (1 / HIGH - LOW) * width
    partial = np.log(HIGH * HIGH) - LOW * (HIGH - 1 / HIGH)  # integral of (1/k - LOW) from 1/HIGH to HIGH
    return (full + partial) / width**2


def grid() -> tuple[np.ndarray, np.ndarray]:
    edges = np.linspace(LOW, HIGH, 1201)
    mid = (edges[:-1] + edges[1:]) / 2
    return np.meshgrid(mid, mid, indexing="ij")


def box_stats(fails: np.ndarray, k: np.ndarray, lv: np.ndarray, lims: dict) -> tuple[float, float]:
    """Analytic (fine-grid) coverage and density of a box of k and l."""
    (k0, k1), (l0, l1) = lims.get("defence coefficient k", (LOW, HIGH)), lims.get("defence coefficient l", (LOW, HIGH))
    inside = (k >= k0) & (k <= k1) & (lv >= l0) & (lv <= l1)
    return (fails & inside).sum() / fails.sum(), (fails & inside).sum() / inside.sum()


@pytest.fixture(scope="module")
def richardson_audit(tmp_path_factory: pytest.TempPathFactory):
    path = richardson_config(tmp_path_factory.mktemp("audit"), 3000, STABLE + IN_BOX)
    return audit(path, workers=1)


def test_share_holding_matches_the_analytic_share(richardson_audit) -> None:
    stable = richardson_audit.claims[0]
    low, high = stable.interval
    assert low <= analytic_stable_share() <= high
    assert high - low < 0.04  # 3000 runs: the interval is informative
    # The predicate is evaluated per run: it holds exactly where k*l < 1.
    draws = richardson_audit.draws
    expected = draws["defence coefficient k"] * draws["defence coefficient l"] < 1
    assert np.array_equal(stable.holds, expected.to_numpy())


def test_prim_recovers_a_box_shaped_failure_region(richardson_audit) -> None:
    claim = richardson_audit.claims[1]
    fails = [b for b in claim.boxes if b.outcome == "fails"]
    assert fails, "PRIM found no failing box"
    box = fails[0]
    # Tolerance: 3% of each range for the edges, 0.9 for coverage and density.
    tolerance = 0.03 * (HIGH - LOW)
    assert box.limits["defence coefficient k"][0] == pytest.approx(K_EDGE, abs=tolerance)
    assert box.limits["defence coefficient l"][0] == pytest.approx(L_EDGE, abs=tolerance)
    assert box.limits["defence coefficient k"][1] >= HIGH - tolerance
    assert box.limits["defence coefficient l"][1] >= HIGH - tolerance
    k, lv = grid()
    coverage, density = box_stats((k >= K_EDGE) & (lv >= L_EDGE), k, lv, box.limits)
    assert coverage > 0.9
    assert density > 0.9
    assert all(p < 1e-10 for p in box.qp.values())


def test_prim_box_of_the_stability_claim_is_close_to_the_best_box(richardson_audit) -> None:
    """k*l > 1 is not a box: PRIM's box must be close to the best box by the selection's criterion."""
    box = next(b for b in richardson_audit.claims[0].boxes if b.outcome == "fails")
    k, lv = grid()
    fails = k * lv > 1
    coverage, density = box_stats(fails, k, lv, box.limits)
    assert density >= 0.8 - 0.03
    # The best box of the form [k0, HIGH] x [l0, HIGH] with analytic density >= 0.8, by the
    # harmonic mean of coverage and density that select_box maximises along the trajectory.
    # Suffix sums give every box [k[i], HIGH] x [l[j], HIGH] at once.
    inside_fails = fails[::-1, ::-1].cumsum(0).cumsum(1)[::-1, ::-1]
    inside = np.ones_like(fails, dtype=int)[::-1, ::-1].cumsum(0).cumsum(1)[::-1, ::-1]
    c, d = inside_fails / fails.sum(), inside_fails / inside
    f1 = np.where(d >= 0.8, 2 * c * d / np.maximum(c + d, 1e-12), 0.0)
    best = f1.max()
    assert 2 * coverage * density / (coverage + density) == pytest.approx(best, abs=0.03)
    # Both dimensions restricted from below only, beyond the failing region's corner (1/HIGH).
    for dim in ("defence coefficient k", "defence coefficient l"):
        lo, hi = box.limits[dim]
        assert 1 / HIGH < lo < 1.0
        assert hi >= HIGH - 0.05


def test_boxes_are_those_of_the_reference_prim(richardson_audit) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from ema_workbench.analysis import prim
        from ema_workbench.analysis.scenario_discovery_util import _determine_restricted_dims

    x = prim_frame(richardson_audit.draws)
    for result in richardson_audit.claims:
        fails = ~result.holds
        ours = find_boxes(x, fails, min_density=0.8, boxes=1)[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = prim.Prim(x, fails.astype(int), threshold=0.8).find_box()
        trajectory = reference.peeling_trajectory.reset_index(drop=True)
        pd.testing.assert_frame_equal(
            ours.trajectory, trajectory[["coverage", "density", "mass", "res_dim"]].astype(float)
        )
        i = select_box(trajectory, 0.8)
        assert ours.index == i
        lims = reference.box_lims[i]
        restricted = list(_determine_restricted_dims(lims, reference.prim.box_init))
        assert sorted(ours.limits) == sorted(restricted)
        for dim in restricted:
            assert ours.limits[dim] == (lims[dim].iloc[0], lims[dim].iloc[1])
            assert ours.qp[dim] == max(reference.qp[i][dim])
        assert ours.coverage == trajectory.loc[i, "coverage"]
        assert ours.density == trajectory.loc[i, "density"]


def test_wilson_interval_matches_statsmodels() -> None:
    from statsmodels.stats.proportion import proportion_confint

    for k, n in ((0, 10), (3, 10), (500, 1000), (999, 1000)):
        assert wilson(k, n) == pytest.approx(proportion_confint(k, n, method="wilson"), abs=1e-12)


def test_sampling_is_seeded_and_respects_bounds_and_switches(tmp_path: Path) -> None:
    path = richardson_config(tmp_path, 64, STABLE, sampling="sobol")
    text = path.read_text() + '\n[[uncertainties.switches]]\nname = "grievance g"\nvalues = [0, 1, 5]\n'
    path.write_text(text)
    spec = load_audit(path)
    a, b = sample(spec), sample(spec)
    pd.testing.assert_frame_equal(a, b)
    assert a["defence coefficient k"].between(LOW, HIGH).all()
    assert set(a["grievance g"]) == {0.0, 1.0, 5.0}
    # Latin hypercube: each of n equal strata of a parameter holds exactly one draw.
    latin = sample(load_audit(richardson_config(tmp_path, 50, STABLE)))
    strata = np.floor((latin["defence coefficient k"] - LOW) / (HIGH - LOW) * 50).astype(int)
    assert sorted(strata) == list(range(50))


def test_predicates_three_valued_logic() -> None:
    names = ["breakout time A", "procurement time[A]", "treaty status"]
    p = parse_predicate(
        'breakout time A < 2 * procurement time[A] or treaty status == "defection"', names, text_names=["treaty status"]
    )
    values = {
        "breakout time A": np.array([1.0, 9.0, np.nan, np.nan]),
        "procurement time[A]": 3.0,
        "treaty status": np.array(["expired", "expired", "expired", "defection"]),
    }
    np.testing.assert_array_equal(p.evaluate(values), [1.0, 0.0, np.nan, 1.0])
    q = parse_predicate("not (Breakout  Time A > 1) and -breakout time A < 0", names)
    np.testing.assert_array_equal(q.evaluate(values), [1.0, 0.0, np.nan, np.nan])
    assert p.names == ("breakout time A", "procurement time[A]", "treaty status")


@pytest.mark.parametrize(
    ("predicate", "message"),
    [
        ("fatigue coeficient a > 0", "unknown name 'fatigue coeficient a'; did you mean 'fatigue coefficient a'?"),
        ("determinant ab-kl.real > 0", "attribute access"),
        ("abs(determinant ab-kl) > 0", "function calls"),
        ("__import__('os') == 0", "function calls"),
        ("determinant ab-kl ** 2 > 0", "'**'"),
        ("determinant ab-kl", "is not a condition"),
        ('regime < "stable"', "compared with == or != only"),
        ("determinant ab-kl > 0 > ", "not a valid predicate"),
    ],
)
def test_predicate_errors_are_config_errors(tmp_path: Path, predicate: str, message: str) -> None:
    claim = f'\n[[claims]]\nname = "bad"\ntext = "t"\npredicate = """{predicate}"""\n'
    path = richardson_config(tmp_path, 10, claim)
    with pytest.raises(ConfigError) as info:
        load_audit(path)
    text = str(info.value)
    assert message in text
    assert "claims[0].predicate" in text
    if "unknown name" in message:
        assert "allowed names:" in text
        assert "determinant ab-kl" in text


def test_uncertainty_errors(tmp_path: Path) -> None:
    path = richardson_config(tmp_path, 10, STABLE)
    text = path.read_text().replace('"defence coefficient l"', '"defence coeficient l"')
    text += '\n[[uncertainties.switches]]\nname = "fatigue coefficient a"\nvalues = [1]\n'
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_audit(path)
    assert "uncertainties.parameters[1].name: unknown parameter 'defence coeficient l'" in str(info.value)
    assert "did you mean 'defence coefficient l'" in str(info.value)
    assert "uncertainties.switches[0].values: give two or more distinct" in str(info.value)


def test_audit_command_writes_the_folder_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = richardson_config(tmp_path, 10_000, STABLE + STABLE_METRIC)
    out = tmp_path / "audit"
    assert main(["audit", str(path), "--out", str(out), "--samples", "300", "--workers", "1"]) == 0
    assert "stable: holds in" in capsys.readouterr().out
    report = (out / "report.md").read_text()
    assert "## stable" in report
    assert "fails when" in report
    assert "defence coefficient k >" in report
    claims = pd.read_csv(out / "claims.csv", index_col="claim")
    assert claims.loc["stable", "runs"] == 300
    runs = pd.read_csv(out / "runs.csv")
    # The closed-form determinant and the constants give the same verdict in every run.
    assert (runs["holds: stable"] == runs["holds: stable_metric"]).all()
    boxes = pd.read_csv(out / "boxes.csv")
    assert {"claim", "outcome", "dimension", "lower", "upper", "quasi-p", "coverage", "density"} <= set(boxes)
    assert (out / "trajectories.csv").exists()
    for stem in ("claims", "stable_fails_tradeoff", "stable_fails_limits", "stable_fails_scatter"):
        assert (out / "figures" / f"{stem}.pdf").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["audit"]["runs"] == 300
    assert "report.md" in manifest["files"]
    # An existing folder is not replaced without --force, and nothing changes.
    before = (out / "report.md").read_bytes()
    assert main(["audit", str(path), "--out", str(out), "--samples", "300"]) == 2
    assert (out / "report.md").read_bytes() == before


def test_audit_command_reports_config_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = richardson_config(tmp_path, 10, '\n[[claims]]\nname = "x"\ntext = "t"\npredicate = "arms Z > 0"\n')
    assert main(["audit", str(path), "--out", str(tmp_path / "a")]) == 2
    assert "unknown name" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


@pytest.mark.slow
def test_knowledge_audit_config_runs(tmp_path: Path) -> None:
    out = tmp_path / "audit"
    assert main(["audit", str(KNOWLEDGE_AUDIT), "--out", str(out), "--samples", "256", "--workers", "2"]) == 0
    spec = load_audit(KNOWLEDGE_AUDIT)
    claims = pd.read_csv(out / "claims.csv", index_col="claim")
    assert list(claims.index) == [c.name for c in spec.claims]
    assert (claims["runs"] == 256).all()
    assert claims["share"].between(0, 1).all()
    report = (out / "report.md").read_text()
    for claim in spec.claims:
        assert f"## {claim.name}" in report
        assert "Buzan 1984, s." in claim.text
    # The baseline comparison ran: the claim over the treaty's term against the race has a share.
    assert spec.claims[1].baseline == "baseline"


@pytest.mark.slow
def test_knowledge_claims_weaken_when_idle_knowledge_is_forgotten(tmp_path: Path) -> None:
    """The audit can fail the knowledge argument: ablate its mechanism and its claims hold in far less of the space.

    The same audit twice, with idle military knowledge persisting (half-life 200
    to 500 years) and forgotten (2 to 4 years); every other assumption sampled
    as in the config. The claims that rest on persistent knowledge must lose at
    least the stated share; the cheating claim, which rests on detection, not.
    """
    text = KNOWLEDGE_AUDIT.read_text(encoding="utf-8")
    text = text.replace('model = "../models/', f'model = "{(ROOT / "models").as_posix()}/')
    assert text.count("bounds = [2, 500]") == 1
    shares = {}
    for label, bounds in (("persists", "[200, 500]"), ("forgets", "[2, 4]")):
        path = tmp_path / f"{label}.toml"
        path.write_text(text.replace("bounds = [2, 500]", f"bounds = {bounds}"), encoding="utf-8")
        result = audit(path, samples=200, workers=2)
        shares[label] = {r.claim.name: r.share for r in result.claims}
    persists, forgets = shares["persists"], shares["forgets"]
    assert persists["rebuilt_in_short_order"] > 0.9
    assert persists["rebuilt_in_short_order"] - forgets["rebuilt_in_short_order"] > 0.5
    assert persists["disarmed_world_still_fears"] - forgets["disarmed_world_still_fears"] > 0.3
    assert persists["cuts_barely_dampen"] - forgets["cuts_barely_dampen"] > 0.1
    assert persists["suppression_undone_by_cheating"] == forgets["suppression_undone_by_cheating"] == 1.0


@pytest.mark.slow
def test_without_numba_the_audit_runs_numpy_and_gets_the_same_tables(tmp_path: Path) -> None:
    """The fallback: numba hidden (as when it is not installed), the runs go through the runner with numpy.

    The process without numba makes the audit's runs and metrics tables as :func:`audit` does
    (:func:`sample`, then :func:`metric_tables`, the only step that uses numba); the claims'
    verdicts, boxes and report are computed from those tables alike on either path (the EMA
    Workbench, scikit-learn and the report use no numba), so it skips them and the 2-4 s of the
    EMA Workbench's import.
    """
    path = richardson_config(tmp_path, 10, STABLE + STABLE_METRIC)
    out = tmp_path / "numpy.csv"
    code = f"""
import sys
sys.modules["numba"] = None  # as without numba: importing it fails
from armsdyn.audit import load_audit, numba_model, sample
from armsdyn.audit.runs import metric_tables
spec = load_audit({str(path)!r})
assert numba_model(spec.experiment.model.path) is None
tables = metric_tables(spec, sample(spec, 400), workers=1, chunk_size=8192, progress=False)
next(iter(tables.values())).to_csv({str(out)!r}, index=False)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr
    spec = load_audit(path)
    assert numba_model(spec.experiment.model.path) is not None
    ours = next(iter(audit(spec, samples=400, workers=2).values.values()))
    numpy_table = pd.read_csv(out)
    assert list(numpy_table.columns) == list(ours.columns)
    for column in ours.columns:
        if not pd.api.types.is_numeric_dtype(ours[column]):
            # CSV reads an empty text column back as NaN: compare as text, empty for missing.
            text = [["" if pd.isna(v) else str(v) for v in t[column]] for t in (numpy_table, ours)]
            assert text[0] == text[1], column
        else:
            np.testing.assert_allclose(numpy_table[column], ours[column], rtol=1e-9, atol=1e-12, err_msg=column)


def test_the_numba_path_shows_a_progress_bar_only_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--progress drew nothing for runs on numba's kernel; it counts every run of each scenario now."""
    from armsdyn.audit.runs import metric_tables

    spec = load_audit(richardson_config(tmp_path, 10, STABLE))
    if numba_model(spec.experiment.model.path) is None:
        pytest.skip("numba is not installed (pip install '.[fast]'): the runs take the runner's path")
    draws = sample(spec, samples=300)
    quiet = metric_tables(spec, draws, workers=1, chunk_size=128, progress=False)
    assert capsys.readouterr().err == ""
    shown = metric_tables(spec, draws, workers=1, chunk_size=128, progress=True)
    err = capsys.readouterr().err
    assert "300/300" in err, err
    for key in quiet:
        pd.testing.assert_frame_equal(quiet[key], shown[key])

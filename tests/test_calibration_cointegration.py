"""Johansen's cointegration test for N-state calibrations, beside the pairwise Engle-Granger tests."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from statsmodels.tsa.vector_ar.vecm import coint_johansen, select_coint_rank

from armsdyn.calibration import diagnose, johansen_test

STATES = ("arms[USA]", "arms[Russia]", "arms[China]")


def _common_trend(rng: np.random.Generator, n: int = 60) -> pd.DataFrame:
    """Three I(1) series driven by one random walk: two cointegrating relations."""
    trend = np.cumsum(rng.normal(0, 1, n))
    loads = (1.0, 0.5, 2.0)
    return pd.DataFrame({s: 50 + c * trend + rng.normal(0, 0.5, n) for s, c in zip(STATES, loads, strict=True)})


def _independent_walks(rng: np.random.Generator, n: int = 60) -> pd.DataFrame:
    """Three independent random walks: no cointegrating relation."""
    return pd.DataFrame({s: 50 + np.cumsum(rng.normal(0, 1, n)) for s in STATES})


def _residual_table(observations: pd.DataFrame) -> pd.DataFrame:
    """A fit table whose residuals are the series' deviations from their means (diagnose reads them)."""
    return pd.concat(
        [pd.DataFrame({"variable": c, "time": observations.index, "residual": observations[c] - observations[c].mean()})
         for c in observations],
        ignore_index=True,
    )  # fmt: skip


def test_johansen_is_statsmodels_on_the_same_data() -> None:
    data = _common_trend(np.random.default_rng(0))
    found = johansen_test(data)
    direct = coint_johansen(data.to_numpy(), 0, 1)
    np.testing.assert_allclose(found["trace"], direct.lr1)
    np.testing.assert_allclose(found["trace_critical_95"], direct.cvt[:, 1])
    np.testing.assert_allclose(found["max_eigenvalue"], direct.lr2)
    np.testing.assert_allclose(found["max_eigenvalue_critical_95"], direct.cvm[:, 1])
    # The rank is statsmodels' own sequential trace test at 5%.
    assert found["rank"] == select_coint_rank(data.to_numpy(), 0, 1, method="trace", signif=0.05).rank
    assert found["variables"] == list(STATES)
    assert found["n_observations"] == 60


@pytest.mark.parametrize("seed", range(3))
def test_johansen_rank_agrees_with_statsmodels_on_random_walks(seed: int) -> None:
    data = _independent_walks(np.random.default_rng(seed))
    assert johansen_test(data)["rank"] == select_coint_rank(data.to_numpy(), 0, 1, method="trace").rank


def test_johansen_finds_a_common_trend_and_not_independent_walks() -> None:
    together = [johansen_test(_common_trend(np.random.default_rng(s)))["rank"] for s in range(10)]
    apart = [johansen_test(_independent_walks(np.random.default_rng(100 + s)))["rank"] for s in range(10)]
    # One shared random walk leaves two stationary combinations of three series.
    assert all(r >= 1 for r in together), together
    assert sum(r == 2 for r in together) >= 8, together
    # The trace test at r = 0 rejects falsely about 1 time in 20 (small-sample size distortion aside).
    assert sum(r == 0 for r in apart) >= 8, apart


def test_three_independent_walks_are_flagged_by_johansen_not_the_first_pair() -> None:
    rng = np.random.default_rng(5)
    walks = _independent_walks(rng)
    found = diagnose(walks, _residual_table(walks), 3)
    assert found["johansen"]["rank"] == 0
    assert "not cointegrated (Johansen rank 0 of 3; Engle-Granger: " in found["verdict"]
    assert "likely spurious" in found["verdict"]
    # Every pair keeps its Engle-Granger test; the first is the one two-state fits always reported.
    assert [c["test"] for c in found["cointegration_pairs"]] == [
        "Engle-Granger, arms[USA] on arms[Russia]",
        "Engle-Granger, arms[USA] on arms[China]",
        "Engle-Granger, arms[Russia] on arms[China]",
    ]
    assert found["cointegration"] == found["cointegration_pairs"][0]
    shared = _common_trend(rng)
    found = diagnose(shared, _residual_table(shared), 3)
    assert found["johansen"]["rank"] >= 1
    assert "and cointegrated (Johansen rank" in found["verdict"]


def test_two_series_keep_the_engle_granger_verdict_with_johansen_beside() -> None:
    walks = _independent_walks(np.random.default_rng(2))[list(STATES[:2])]
    found = diagnose(walks, _residual_table(walks), 2)
    assert "(Engle-Granger p = " in found["verdict"]
    assert found["johansen"]["variables"] == list(STATES[:2])


def test_johansen_needs_enough_observations() -> None:
    assert johansen_test(_independent_walks(np.random.default_rng(0), n=12)) is None
    assert johansen_test(_independent_walks(np.random.default_rng(0))[[STATES[0]]]) is None

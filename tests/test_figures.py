"""Figures drawn from real results."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
import xarray as xr

import armsdyn
from armsdyn import config, figures
from tests.conftest import CONFIGS


@pytest.fixture(scope="module")
def ds() -> xr.Dataset:
    return armsdyn.run(CONFIGS / "richardson.toml")


def test_config_and_figure_module_know_the_same_kinds() -> None:
    assert set(config.FIGURE_KINDS) == set(figures.FIGURE_KINDS)


@pytest.mark.parametrize("layout", figures.TIME_SERIES_LAYOUTS)
def test_time_series_labels_carry_units(ds: xr.Dataset, layout: str) -> None:
    fig, axes = figures.time_series(ds, ["arms X", "arms Y"], layout=layout)
    try:
        assert axes[-1].get_xlabel() == "Time (Year)"
        assert all("(arms)" in ax.get_ylabel() for ax in axes)
        n_lines = sum(len(ax.get_lines()) for ax in axes)
        assert n_lines == 2 * ds.sizes["scenario"]
    finally:
        plt.close(fig)


def test_time_series_draws_on_given_axes(ds: xr.Dataset) -> None:
    fig, ax = plt.subplots()
    try:
        got_fig, axes = figures.time_series(ds, ["arms X"], scenarios=["stable"], ax=ax)
        assert got_fig is fig
        assert axes == [ax]
        assert len(ax.get_lines()) == 1
    finally:
        plt.close(fig)


def test_phase_portrait_marks_equilibrium_by_stability(ds: xr.Dataset) -> None:
    fig, axes = figures.phase_portrait(ds, "arms X", "arms Y", scenarios=["stable", "runaway"])
    try:
        labels = [[line.get_label() for line in ax.get_lines()] for ax in axes]
        assert "stable equilibrium" in labels[0]
        assert "unstable equilibrium" in labels[1]
        assert {"dx/dt = 0", "dy/dt = 0", "trajectory"} <= set(labels[0])
        assert axes[0].get_xlabel() == "arms X (arms)"
    finally:
        plt.close(fig)

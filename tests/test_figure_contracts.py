"""What the figure functions promise their callers: the Figure they return, the specs they take.

Found by the type checker (issue 18): a phase portrait spec unpacked its variables into
positional arguments, so a third variable was taken for the scenarios; axes on a SubFigure made
the drawing functions return the SubFigure, which cannot be saved.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import xarray as xr
from matplotlib.figure import Figure

from armsdyn import figures
from armsdyn.specs import FigureSpec


@pytest.fixture
def ds() -> xr.Dataset:
    """Two scenarios of two stocks, as a run saves them."""
    t = np.arange(0.0, 5.0)
    arms = {"arms_x": "arms X", "arms_y": "arms Y"}
    return xr.Dataset(
        {
            key: (("scenario", "time"), np.vstack([t + i, 2 * t + i]), {"long_name": name, "units": "arms"})
            for i, (key, name) in enumerate(arms.items())
        },
        coords={"scenario": ["low", "high"], "time": ("time", t, {"long_name": "Time", "units": "Year"})},
    )


@pytest.mark.parametrize("variables", [("arms X",), ("arms X", "arms Y", "arms X")])
def test_a_phase_portrait_spec_needs_exactly_two_variables(
    ds: xr.Dataset, tmp_path: Path, variables: tuple[str, ...]
) -> None:
    # Built in Python, so the config's check never saw it: a clear error, not scenarios "a", "r", ...
    spec = FigureSpec(kind="phase_portrait", name="plane", variables=variables, scenarios=("low",))
    with pytest.raises(ValueError, match=r"'plane': a phase portrait takes exactly two variables \(x, y\), got"):
        figures.draw_figures(ds, [spec], tmp_path)
    plt.close("all")


def test_a_phase_portrait_spec_of_two_variables_draws_its_scenarios(ds: xr.Dataset, tmp_path: Path) -> None:
    spec = FigureSpec(kind="phase_portrait", name="plane", variables=("arms X", "arms Y"), scenarios=("high",))
    fig, axes = figures.figure_drawer("phase_portrait")(ds, spec)
    try:
        assert [ax.get_title() for ax in axes] == ["high"]
        assert axes[0].get_xlabel() == "arms X (arms)"
        assert axes[0].get_ylabel() == "arms Y (arms)"
    finally:
        plt.close(fig)


def test_axes_on_a_subfigure_return_the_figure_to_save(ds: xr.Dataset, tmp_path: Path) -> None:
    fig = plt.figure()
    try:
        ax = fig.subfigures(1, 2)[1].subplots()
        got, axes = figures.time_series(ds, ["arms X"], scenarios=["low"], ax=ax)
        assert got is fig
        assert isinstance(got, Figure)
        assert axes == [ax]
        assert [p.name for p in figures.save_figure(got, tmp_path / "panel", ("png",))] == ["panel.png"]
    finally:
        plt.close(fig)

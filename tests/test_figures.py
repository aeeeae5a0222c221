"""Figures drawn from real results."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import xarray as xr

import armsdyn
from armsdyn import figures
from armsdyn.diagram import causal_diagram, diagram_layout
from armsdyn.errors import ModelError
from tests.conftest import CONFIGS, MODELS, ROOT, call_cli

# One worker runs the modules that read the session's run of configs/richardson.toml
# (tests/conftest.py's richardson_results: the run and its two figures, about 4 s of CPU), so
# it runs once, not once on each worker: test_cli, test_export and test_figures.
pytestmark = pytest.mark.xdist_group("richardson_run")

BASELINE = ROOT / "tests" / "baseline"


@pytest.fixture(scope="module")
def ds(richardson_results: subprocess.CompletedProcess[str]) -> xr.Dataset:
    """configs/richardson.toml's results: the session's run (the same Dataset armsdyn.run returns)."""
    with xr.open_dataset(Path(richardson_results.args[-1]) / "results.nc") as saved:
        return saved.load()


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


@pytest.fixture(scope="module")
def written(richardson_results: subprocess.CompletedProcess[str]) -> Path:
    """The figures folder of the session's `armsdyn run configs/richardson.toml` (read, never changed)."""
    return Path(richardson_results.args[-1]) / "figures"


@pytest.fixture(scope="module")
def redrawn(tmp_path_factory: pytest.TempPathFactory, richardson_results: subprocess.CompletedProcess[str]) -> Path:
    """A copy of that results folder, one figure deleted and all redrawn by `armsdyn figures` from its files alone."""
    out = Path(shutil.copytree(richardson_results.args[-1], tmp_path_factory.mktemp("redrawn") / "r"))
    (out / "figures" / "phase_portrait.pdf").unlink()
    proc = call_cli("figures", out)
    assert proc.returncode == 0, proc.stderr
    return out


def test_every_figure_is_written_as_pdf_svg_png_with_a_caption(written: Path) -> None:
    for stem in ("arms_over_time", "phase_portrait"):
        for suffix in (".pdf", ".svg", ".png", ".md"):
            assert (written / f"{stem}{suffix}").stat().st_size > 200, f"{stem}{suffix}"


def test_pdf_fonts_are_embedded_truetype(written: Path) -> None:
    pdf = (written / "phase_portrait.pdf").read_bytes()
    assert b"/FontFile2" in pdf, "no embedded TrueType font program"
    assert b"/Subtype /Type3" not in pdf, "Type 3 fonts are rejected by many journals"
    assert b"/CreationDate" not in pdf, "a creation date makes renders differ"


def test_renders_are_byte_identical(written: Path, redrawn: Path) -> None:
    # Two renders of the same results in one process: the run's (write_results, from the Dataset it
    # ran) and the redraw's (from results.nc read back); a date, a version, a random id or a
    # counter in a file would differ. The results folder's writer and the redraw share
    # draw_figures, so this is the byte-identity check for both.
    again = redrawn / "figures"
    kept = (".pdf", ".svg", ".md")
    compared = sorted(p.name for p in written.iterdir() if p.suffix in kept)
    assert compared == sorted(p.name for p in again.iterdir() if p.suffix in kept)
    assert len(compared) == 6
    for name in compared:
        assert (again / name).read_bytes() == (written / name).read_bytes(), name


def test_caption_states_model_scenarios_differences_time_and_config(written: Path, ds: xr.Dataset) -> None:
    text = (written / "phase_portrait.md").read_text()
    assert "richardson.mdl" in text
    assert ds.attrs["config_sha256"] in text
    assert "time step 0.03125" in text
    assert "**runaway**" in text
    assert "defence coefficient k = 1.2" in text  # differs between scenarios
    assert "Simulated from 0.0 to 30.0 Year" in text


def test_image_regression_against_the_stored_baseline(ds: xr.Dataset, tmp_path: Path) -> None:
    from matplotlib.testing.compare import compare_images

    with figures.paper_style():
        fig, _ = figures.phase_portrait(ds, "arms X", "arms Y", scenarios=["stable", "runaway"])
        try:
            fig.savefig(tmp_path / "phase_portrait.png", dpi=80, metadata={"Software": None})
        finally:
            plt.close(fig)
    baseline = BASELINE / "phase_portrait.png"
    if not baseline.exists():  # pragma: no cover - written once, checked by eye, then committed
        pytest.fail(f"missing baseline {baseline}; check {tmp_path / 'phase_portrait.png'} and copy it there")
    result = compare_images(str(baseline), str(tmp_path / "phase_portrait.png"), tol=3, in_decorator=True)
    assert result is None, f"phase portrait differs from the baseline: {result}"


def test_scenario_grid_and_metric_figures_from_the_main_experiment() -> None:
    dvk = armsdyn.run(CONFIGS / "disarmament_vs_knowledge.toml")
    fig, axes = figures.scenario_grid(dvk, [["hardware"], ["insecurity"]])
    try:
        assert len(axes) == 2 * dvk.sizes["scenario"]
        assert axes[0].get_title() == "hardware"  # the model's arbitrary force unit is not a label
        assert axes[2].get_ylabel().replace("\n", " ").startswith("Treaty cuts hardware by 90%")  # a description
        # The treaty period is shaded and its end marked in treaty scenarios, not in the baseline.
        assert not axes[0].patches
        assert len(axes[2].patches) == 1
        assert axes[2].lines[0].get_xdata()[0] == 60.0
    finally:
        plt.close(fig)
    fig, axes = figures.metric_bars(dvk, ["breakout time A"])
    try:
        labels = [t.get_text() for t in axes[0].texts]
        assert "no treaty" in labels  # the baseline's undefined breakout says why
        assert axes[0].get_xlabel() == "breakout time A (Year)"
    finally:
        plt.close(fig)
    fig, axes = figures.metric_vs_parameter(
        dvk,
        "knowledge half life[A]",
        ["insecurity reduction A"],
        scenarios=["disarm_knowledge_persists", "disarm_halflife_10"],
    )
    try:
        assert [t.get_text() for t in axes[0].get_xticklabels()][-1] == "∞"
        assert axes[0].get_xlabel() == "knowledge half life[A] (Year)"
        # The infinite half-life is its own marker, not joined to the finite points by a line.
        joined, alone = axes[0].lines
        assert list(joined.get_xdata()) == [10.0]
        assert alone.get_linestyle() == "None"
    finally:
        plt.close(fig)


def test_figures_command_redraws_without_running(tmp_path: Path, redrawn: Path) -> None:
    # The redraw wrote the deleted figure again (identical to the run's: test_renders_are_byte_identical)
    # and recorded itself in the manifest.
    assert (redrawn / "figures" / "phase_portrait.pdf").is_file()
    manifest = json.loads((redrawn / "manifest.json").read_text())
    assert "figures_redrawn" in manifest
    assert "figures/phase_portrait.pdf" in manifest["files"]
    out = Path(shutil.copytree(redrawn, tmp_path / "r"))  # this test's to change
    # Another config's figures, from the same saved results: its one figure, the time series
    # renamed (each figure redrawn costs a second of matplotlib; the portrait twice that).
    text = (
        (CONFIGS / "richardson.toml")
        .read_text()
        .replace('"../models/richardson.mdl"', f'"{MODELS / "richardson.mdl"}"')
        .replace('name = "arms_over_time"', 'name = "arms_two"')
    )
    other = tmp_path / "other.toml"
    other.write_text(re.sub(r'\[\[figures\]\]\nkind = "phase_portrait".*', "", text, flags=re.S))
    assert other.read_text().count("[[figures]]") == 1
    proc = call_cli("figures", out, "--config", other)
    assert proc.returncode == 0, proc.stderr
    assert (out / "figures" / "arms_two.pdf").is_file()
    assert not (out / "figures" / "arms_over_time.pdf").exists()
    assert not (out / "figures" / "phase_portrait.pdf").exists()


def test_parameter_sweep_heatmap_from_a_grid_study(tmp_path: Path) -> None:
    from armsdyn.sensitivity import run_study

    text = (
        (CONFIGS / "knowledge_sweep.toml")
        .read_text()
        .replace('"../models/', f'"{MODELS}/')
        .replace("levels = 9", "levels = 3")
    )
    config = tmp_path / "sweep.toml"
    config.write_text(text)
    ensemble, _ = run_study(armsdyn.load_config(config))
    fig, axes = figures.parameter_sweep(
        ensemble, "insecurity reduction A", ["knowledge half life[A]", "disarmament fraction"]
    )
    try:
        assert axes[0].get_xscale() == "log"
        assert axes[0].get_ylabel() == "disarmament fraction"  # dimensionless: no "(Dmnl)"
    finally:
        plt.close(fig)
    # Both states' half-lives were sampled together.
    np.testing.assert_array_equal(ensemble["knowledge_half_life[A]"].values, ensemble["knowledge_half_life[B]"].values)


@pytest.fixture(scope="module")
def richardson_loops(ds: xr.Dataset) -> xr.Dataset:
    experiment = armsdyn.load_config(CONFIGS / "richardson.toml")
    return armsdyn.loop_dominance(experiment)


def _regression(fig: plt.Figure, name: str, tmp_path: Path) -> None:
    from matplotlib.testing.compare import compare_images

    try:
        fig.savefig(tmp_path / f"{name}.png", dpi=80, metadata={"Software": None})
    finally:
        plt.close(fig)
    baseline = BASELINE / f"{name}.png"
    if not baseline.exists():  # pragma: no cover - written once, checked by eye, then committed
        pytest.fail(f"missing baseline {baseline}; check {tmp_path / f'{name}.png'} and copy it there")
    result = compare_images(str(baseline), str(tmp_path / f"{name}.png"), tol=3, in_decorator=True)
    assert result is None, f"{name} differs from the baseline: {result}"


@pytest.mark.parametrize("layout", figures.LOOP_DOMINANCE_LAYOUTS)
def test_loop_dominance_draws_each_loop_by_polarity(
    ds: xr.Dataset, richardson_loops: xr.Dataset, layout: str, tmp_path: Path
) -> None:
    with figures.paper_style():
        fig, axes = figures.loop_dominance(richardson_loops, layout=layout, results=ds)
        assert fig.get_size_inches()[0] == figures.DOUBLE_COLUMN
        assert len(axes) == richardson_loops.sizes["scenario"]
        labels = fig.legends[0].get_texts()
        # The reinforcing action-reaction loop and the two balancing fatigue loops, each named.
        assert sorted(t.get_text().split(" ")[0] for t in labels) == ["B1", "B2", "R1"]
        if layout == "stacked":
            # Balancing loops lie below zero, the reinforcing one above, in every panel.
            for panel in axes:
                low, high = panel.dataLim.y0, panel.dataLim.y1
                assert low < 0 < high
        _regression(fig, f"loop_dominance_{layout}", tmp_path)


def test_loop_dominance_keeps_only_loops_through_the_variables_asked_for(richardson_loops: xr.Dataset) -> None:
    with figures.paper_style():
        fig, _ = figures.loop_dominance(richardson_loops, variables=["fatigue of X"])
        try:
            assert [t.get_text().split(" ")[0] for t in fig.legends[0].get_texts()] == ["B1"]
        finally:
            plt.close(fig)
    with pytest.raises(ValueError, match="no loop passes through"):
        figures.loop_dominance(richardson_loops, variables=["grievance g"])


def test_model_diagram_shows_every_link_with_its_polarity(tmp_path: Path) -> None:
    with figures.paper_style():
        fig, (ax,) = figures.model_diagram(MODELS / "richardson.mdl")
        assert fig.get_size_inches()[0] == figures.SINGLE_COLUMN  # eight variables: one column
        texts = [t.get_text() for t in ax.texts]
        # 10 links: fatigue -> arming rate is the only negative one per state.
        assert texts.count("\N{MINUS SIGN}") == 2
        assert texts.count("+") == 8
        assert {"arms X", "arming rate Y", "reaction of X"} <= {t.replace("\n", " ") for t in texts}
        _regression(fig, "model_diagram_richardson", tmp_path)
        # At double-column width the same diagram, spread out.
        fig, ax = plt.subplots(figsize=(figures.DOUBLE_COLUMN, 3.0), layout="constrained")
        figures.model_diagram(MODELS / "richardson.mdl", ax=ax)
        _regression(fig, "model_diagram_richardson_wide", tmp_path)


def test_the_causal_diagram_is_the_models_graph_with_link_polarities() -> None:
    model = armsdyn.load_model(MODELS / "richardson.mdl")
    diagram = causal_diagram(model)
    assert sorted(diagram) == sorted(v.name for v in model.variables.values() if v.kind != "constant")
    assert diagram.nodes["arms X"]["kind"] == "stock"
    assert diagram.nodes["arming rate X"]["kind"] == "flow"
    assert diagram.edges["fatigue of X", "arming rate X"]["sign"] == -1
    assert diagram.edges["arms Y", "reaction of X"]["sign"] == 1
    assert diagram.number_of_edges() == 10
    assert all(on for _, _, on in diagram.edges(data="on_loop"))  # every link of Richardson's model closes a loop
    # Drawn alone, the fatigue chain still knows its links close loops of the whole model.
    part = causal_diagram(model, ["arms x", "fatigue_of_x", "arming rate X"])  # any case or Python-safe name
    assert sorted(part.edges) == [
        ("arming rate X", "arms X"),
        ("arms X", "fatigue of X"),
        ("fatigue of X", "arming rate X"),
    ]


def test_the_diagram_layout_is_deterministic_landscape_and_keeps_unconnected_parts_near() -> None:
    model = armsdyn.load_model(MODELS / "richardson.mdl")
    diagram = causal_diagram(model)
    first, again = diagram_layout(diagram), diagram_layout(causal_diagram(model))
    assert first.keys() == again.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], again[name])
    xy = np.array(list(first.values()))
    assert np.ptp(xy[:, 0]) >= np.ptp(xy[:, 1])
    np.testing.assert_allclose(xy.mean(axis=0), 0.0, atol=1e-12)
    # Linked variables sit closer than the two states' stocks, three links apart.
    near = np.linalg.norm(first["arms X"] - first["fatigue of X"])
    assert near < np.linalg.norm(first["arms X"] - first["arms Y"])
    # Two unconnected links: each pair close, the parts apart but on the same page.
    parts = causal_diagram(model, ["arms X", "fatigue of X", "arms Y", "fatigue of Y"])
    placed = diagram_layout(parts)
    inside = np.linalg.norm(placed["arms X"] - placed["fatigue of X"])
    across = np.linalg.norm(placed["arms X"] - placed["arms Y"])
    assert inside < across < 10 * inside


def test_a_model_diagram_refuses_a_constant_and_an_unknown_name() -> None:
    model = armsdyn.load_model(MODELS / "richardson.mdl")
    with pytest.raises(ModelError, match=r"'grievance g' cannot be drawn \(a constant, time or a control variable"):
        causal_diagram(model, ["arms X", "grievance g"])
    with pytest.raises(KeyError, match=r"no variable 'arms Z' in model .*did you mean 'arms [XY]'"):
        causal_diagram(model, ["arms Z"])


def test_loop_dominance_of_one_scenario_fits_a_column(
    ds: xr.Dataset, richardson_loops: xr.Dataset, tmp_path: Path
) -> None:
    with figures.paper_style():
        fig, axes = figures.loop_dominance(richardson_loops, ["runaway"], results=ds)
        assert fig.get_size_inches()[0] == figures.SINGLE_COLUMN
        assert len(axes) == 1
        fig.canvas.draw()
        # Nothing drawn sticks out of the column: the legend and title fit its width.
        width = fig.get_size_inches()[0] * fig.dpi
        for artist in (fig.legends[0], axes[0].title):
            box = artist.get_window_extent()
            assert box.x0 >= -1
            assert box.x1 <= width + 1
        _regression(fig, "loop_dominance_one_column", tmp_path)


def test_attribution_shares_stack_to_the_whole_change(tmp_path: Path) -> None:
    from armsdyn.attribution import attribute
    from armsdyn.specs import AttributionSpec, LoopGroup

    spec = AttributionSpec(
        ("arms X", "arms Y"),
        (
            LoopGroup("action-reaction", ("reaction of X", "reaction of Y")),
            LoopGroup("fatigue", ("fatigue of X", "fatigue of Y")),
        ),
        window=(0.0, 2.0),
    )
    start = {"initial arms X": 0.0, "initial arms Y": 0.0}
    shares = attribute(
        MODELS / "richardson.mdl", spec, {"race": start, "calm": {**start, "defence coefficient l": 0.1}}
    )
    with figures.paper_style():
        fig, axes = figures.attribution_shares(shares)
        assert fig.get_size_inches()[0] == figures.DOUBLE_COLUMN  # two stocks: a panel each
        assert [a.get_title(loc="left") for a in axes] == ["arms X", "arms Y"]
        # The bars of a scenario add up (right minus left) to the whole change: 1.
        for panel in axes:
            for row in (0, 1):
                widths = [p.get_width() for p in panel.patches if abs(p.get_y() + p.get_height() / 2 - row) < 1e-9]
                assert sum(widths) == pytest.approx(1.0, abs=1e-9)
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert labels == ["action-reaction", "fatigue", "other"]
        _regression(fig, "attribution_shares", tmp_path)

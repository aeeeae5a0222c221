"""armsdyn explore: sliders, the runs behind them, the saved scenario, and the page in a real browser."""

from __future__ import annotations

import asyncio
import math
import re
import socket
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import armsdyn
from armsdyn.cli import main
from armsdyn.config import load_config
from armsdyn.metrics import compute_metrics
from tests.conftest import ROOT
from tests.explorer_page import (
    CHROMIUM,
    as_run,
    browser_or_skip,
    first_update,
    page_state,
    showing,
    slider_moved,
    table_values,
)

pytest.importorskip("bokeh", reason="the explorer needs Bokeh (pip install '.[explore]')")

from armsdyn.explore import (
    CURRENT,
    ExploreError,
    Workbench,
    _View,
    append_scenario,
    explorer,
    knobs,
    scenario_toml,
)

RICHARDSON = ROOT / "configs" / "richardson.toml"
KNOWLEDGE = ROOT / "configs" / "disarmament_vs_knowledge.toml"


def test_richardson_sliders_cover_every_scenario_parameter_within_the_declared_range() -> None:
    exp = load_config(RICHARDSON)
    found = {k.key: k for k in knobs(exp)}
    assert set(found) == {k for s in exp.scenarios for k in s.parameters}
    for knob in found.values():
        values = [s.parameters.get(knob.key, knob.default) for s in exp.scenarios]
        assert knob.start <= min(values)
        assert max(values) <= knob.end
        # Every configured value sits on the slider's grid, so picking a scenario moves nothing.
        for v in values:
            assert knob.from_slider(knob.to_slider(v)) == v
        lo, hi = knob.variable.limits
        assert math.isnan(lo) or knob.start == lo
        assert math.isnan(hi) or knob.end == hi


def test_knowledge_sliders_are_per_element_with_a_notch_for_inf() -> None:
    exp = load_config(KNOWLEDGE)
    found = {k.key: k for k in knobs(exp)}
    assert {"adoption time[A]", "adoption time[B]", "covert research share[A]", "covert research share[B]"} <= set(
        found
    )
    assert "adoption time" not in found
    half_life = found["knowledge half life[A]"]
    assert half_life.infinite
    # The config's 3, 10 and 30 years fit, and the last notch stands for inf ("never decays").
    assert half_life.end < 100
    assert half_life.from_slider(half_life.end) == math.inf
    assert half_life.from_slider(half_life.to_slider(30.0)) == 30.0
    share = found["covert research share[B]"]
    assert (share.start, share.end) == (0.0, 1.0)  # the model declares [0, 1]


@pytest.mark.slow
def test_a_slider_update_of_the_knowledge_model_equals_armsdyn_run_and_is_fast() -> None:
    bench = Workbench(KNOWLEDGE)
    view = _View(bench)
    view.pick("knowledge_lead_A")
    view.sliders["adoption time[B]"].value = 7.5
    view.sliders["knowledge half life[A]"].value = 12.0
    values = view.values()
    assert values["adoption time[B]"] == 7.5
    assert values["knowledge half life[B]"] == math.inf

    reference = as_run(KNOWLEDGE, "knowledge_lead_A", values)
    for name in bench.exp.variables:
        py = bench.exp.model.variable(name).py_name
        np.testing.assert_allclose(
            view.frame[py].values[0], reference[py].sel(scenario="probe").values, rtol=1e-9, atol=1e-12
        )
    # The table on the page is the metrics of armsdyn.run's results for the same parameters.
    shown = dict(zip(view.metrics_data["metric"], view.metrics_data["current"], strict=True))
    expected = compute_metrics(reference).loc["probe"]
    assert set(shown) == set(expected.index)
    for metric, value in expected.items():
        if isinstance(value, float):
            np.testing.assert_allclose(shown[metric], value, rtol=1e-9, atol=1e-12, err_msg=metric)
    assert bench.engine == ("compiled (numba)" if _has("numba") else "compiled (numpy)")

    for _ in range(5):  # timed updates after the first (numba's kernel is loaded by then)
        view.sliders["adoption time[A]"].value = view.sliders["adoption time[A]"].value + 0.1
    panels = sorted(p for p, _ in view.times[-5:])
    whole = sorted(w for _, w in view.times[-5:])
    print(f"knowledge model update: panels {panels[2]:.0f} ms, panels and metrics {whole[2]:.0f} ms (median of 5)")
    if _has("numba"):
        # Far above the ~100 ms measured, so that a loaded CI machine passes; a PySD or numpy
        # fallback (over a second a run) does not.
        assert panels[2] < 800


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def test_the_layout_is_a_bokeh_layout_for_notebooks() -> None:
    from bokeh.models import LayoutDOM

    layout = explorer(RICHARDSON)
    assert isinstance(layout, LayoutDOM)
    names = {m.name for m in layout.references() if m.name}
    assert {"scenario", "metrics_table", "save", "slider:grievance g", "series:arms X"} <= names


def test_a_scenario_entry_round_trips_exactly(tmp_path: Path) -> None:
    params = {"adoption time[A]": 0.1 + 0.2, "knowledge half life[B]": math.inf, "treaty switch": 1.0}
    entry = scenario_toml("probe-1", params, description='a "quoted" note', baseline="baseline")
    parsed = tomllib.loads(entry)["scenarios"][0]
    assert parsed["parameters"] == params
    assert parsed["baseline"] == "baseline"
    assert parsed["description"] == 'a "quoted" note'
    with pytest.raises(ExploreError, match="not allowed"):
        scenario_toml("no spaces allowed", params)


def test_appending_a_scenario_is_atomic_and_refuses_clashes(tmp_path: Path) -> None:
    config = tmp_path / "richardson.toml"
    text = RICHARDSON.read_text(encoding="utf-8").replace('"../models/', f'"{ROOT / "models"}/')
    config.write_text(text, encoding="utf-8")
    entry = scenario_toml("probe", {"grievance g": 2.5})
    append_scenario(config, entry)
    assert config.read_text(encoding="utf-8").startswith(text)
    assert load_config(config).scenario("probe").parameters["grievance g"] == 2.5
    with pytest.raises(ExploreError, match="already has a scenario named 'probe'"):
        append_scenario(config, entry)
    with pytest.raises(ExploreError, match=r"only to a \.toml file"):
        append_scenario(tmp_path / "notes.txt", entry)
    broken = tmp_path / "broken.toml"
    broken.write_text("[[scenarios]\n", encoding="utf-8")
    with pytest.raises(ExploreError, match=r"broken\.toml: cannot add"):
        append_scenario(broken, entry)
    assert broken.read_text(encoding="utf-8") == "[[scenarios]\n"  # untouched
    assert not list(tmp_path.glob(".*.tmp"))
    fresh = append_scenario(tmp_path / "new" / "mine.toml", entry)
    assert tomllib.loads(fresh.read_text(encoding="utf-8"))["scenarios"][0]["name"] == "probe"


def test_cli_refuses_a_bad_config_and_port_with_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[experiment]\nname = "x"\nmodel = "missing.mdl"\n', encoding="utf-8")
    assert main(["explore", str(bad), "--no-browser"]) == 2
    assert "missing.mdl" in capsys.readouterr().err
    assert main(["explore", str(RICHARDSON), "--no-browser", "--port", "70000"]) == 2
    assert "--port 70000" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["explore", str(RICHARDSON), "--no-browser", "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err


# --- the page in a real headless browser -------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`armsdyn explore` on a copy of the Richardson config, in a thread of this process; yields its URL and the copy.

    The command itself (:func:`armsdyn.cli.main`) runs, with its own event loop in the thread:
    a new interpreter would cost seconds of imports, the model's load and its numba kernel's,
    and the page does not depend on which process serves it. The port is the test's, so it
    knows where to wait; the server is stopped by stopping that loop, after which the command
    must return 0.
    """
    sync_playwright = browser_or_skip()
    del sync_playwright
    config = tmp_path / "richardson.toml"
    config.write_text(
        RICHARDSON.read_text(encoding="utf-8").replace('"../models/', f'"{ROOT / "models"}/'), encoding="utf-8"
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    loop = asyncio.new_event_loop()
    status: list[int | BaseException] = []

    def command() -> None:
        asyncio.set_event_loop(loop)
        try:
            status.append(main(["explore", str(config), "--no-browser", "--port", str(port)]))
        except BaseException as exc:  # shown by the test, not lost in the thread
            status.append(exc)

    thread = threading.Thread(target=command, name="armsdyn explore", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 120
        while True:  # the port listens once the explorer's workbench is built
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert thread.is_alive(), f"armsdyn explore ended before serving: {status}"
            assert time.monotonic() < deadline, f"armsdyn explore did not listen on {port} within 120 s"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}/", config
    finally:
        loop.call_soon_threadsafe(loop.stop)  # ends the server's IOLoop.start(): serve() then stops the server
        thread.join(timeout=30)
        loop.close()
    assert status == [0], status


@pytest.mark.slow
def test_the_page_moves_with_a_slider_to_armsdyn_runs_values_and_saves_a_runnable_scenario(
    served: tuple[str, Path], tmp_path: Path
) -> None:
    url, config = served
    sync_playwright = browser_or_skip()
    port = url.rsplit(":", 1)[1].strip("/")
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url, timeout=120_000)
            page.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0", timeout=60_000)
            before = first_update(page)
            assert before["count"] >= 1
            assert before["sliders"]["grievance g"] == 1.0  # the first scenario, 'stable'

            # Pick a scenario, then move a slider with the keyboard as a person would.
            page.locator("select").first.select_option("runaway")
            page.wait_for_function(
                "() => Bokeh.documents[0].get_model_by_name('slider:defence coefficient k').value === 1.2"
            )
            exp = load_config(config)
            order = [k.key for k in knobs(exp)]  # the sliders' order on the page
            handle = page.locator(".noUi-handle").nth(order.index("grievance g"))
            handle.focus()
            for _ in range(25):
                handle.press("ArrowRight")
            assert slider_moved(page, "grievance g", 1.249) == pytest.approx(1.25)

            # The plotted series and the table equal armsdyn.run with the page's parameters, once the
            # page has caught up with the last key press.
            params = {k: float(f"{v:.12g}") for k, v in page_state(page)["sliders"].items()}
            assert params["defence coefficient k"] == 1.2
            probe = as_run(config, "runaway", params)
            reference = probe.sel(scenario="probe")
            expected = compute_metrics(probe).loc["probe"]
            panels = {name: reference[exp.model.variable(name).py_name].values for name in ("arms X", "arms Y")}
            state = showing(page, panels, {"final arms X": expected["final arms X"]})
            assert state["sliders"]["grievance g"] == pytest.approx(1.25)
            assert state["sliders"]["defence coefficient k"] == 1.2
            for name, values in panels.items():  # the panels shown (the config's figures)
                np.testing.assert_allclose(state["series"][name]["y0"], values, rtol=1e-9)
            shown = table_values(state["metrics"])
            for metric in ("final arms X", "equilibrium X", "determinant ab-kl", "eigenvalue 1 real"):
                np.testing.assert_allclose(shown[metric], expected[metric], rtol=1e-9)
            # ... and the table a person reads shows them.
            cell = page.locator("td[data-column=current][data-metric='final arms X']")
            assert cell.inner_text() == f"{expected['final arms X']:.6g}"

            # Save the settings as a scenario of the config; `armsdyn run` runs it.
            page.locator("input[type=text]").nth(0).fill("runaway_explored")
            page.locator("input[type=text]").nth(1).fill(str(config))
            page.get_by_role("button", name="Save as scenario").click()
            page.wait_for_function(
                "() => /appended scenario/.test(Bokeh.documents[0].get_model_by_name('status').text)", timeout=30_000
            )
            entry = page.evaluate("() => Bokeh.documents[0].get_model_by_name('entry').text")
            assert 'name = "runaway_explored"' in entry
            assert '"grievance g" = 1.25' in entry
        finally:
            browser.close()
    saved = load_config(config).scenario("runaway_explored")
    assert {k: saved.parameters[k] for k in params} == params
    # armsdyn.run, as `armsdyn run` runs a config (the command's writing of results and figures is
    # test_cli's and test_output's), runs the config with the saved scenario.
    ds = armsdyn.run(config)
    np.testing.assert_allclose(
        ds["arms_x"].sel(scenario="runaway_explored").values, state["series"]["arms X"]["y0"], rtol=1e-9
    )
    # Nothing but the explorer's own server was asked for anything.
    assert requests
    assert all(re.match(rf"(http|ws)://127\.0\.0\.1:{port}/", u) for u in requests), requests


def test_the_pick_of_a_scenario_restores_its_configured_run() -> None:
    bench = Workbench(RICHARDSON)
    view = _View(bench)
    for scenario in bench.exp.scenarios:
        view.pick(scenario.name)
        np.testing.assert_allclose(
            view.frame["arms_x"].sel(scenario=CURRENT).values,
            bench.configured["arms_x"].sel(scenario=scenario.name).values,
            rtol=1e-9,
        )


def test_a_scenario_with_a_time_series_keeps_it_and_runs_it_compiled(tmp_path: Path) -> None:
    """The series rests its slider and runs in the compiled engine, equal to armsdyn.run's PySD run."""
    config = tmp_path / "richardson.toml"
    text = RICHARDSON.read_text(encoding="utf-8").replace('"../models/', f'"{ROOT / "models"}/')
    entry = scenario_toml("rising", {"grievance g": ((0.0, 1.0), (10.0, 2.0)), "defence coefficient k": 0.5})
    config.write_text(text + "\n" + entry, encoding="utf-8")
    bench = Workbench(config)
    view = _View(bench)
    view.pick("rising")
    assert view.sliders["grievance g"].disabled
    assert not view.sliders["grievance h"].disabled
    view.sliders["defence coefficient k"].value = 0.7
    outcome = bench.simulate(bench.frame("rising"), "rising", view.values())
    assert outcome.engine.startswith("compiled"), outcome.engine
    reference = as_run(config, "rising", {"defence coefficient k": 0.7}, engine="pysd")
    np.testing.assert_allclose(
        view.frame["arms_x"].values[0], reference["arms_x"].sel(scenario="probe").values, rtol=1e-9
    )
    saved = tomllib.loads(scenario_toml("again", {**view.values(), **bench.fixed("rising")}))["scenarios"][0]
    assert saved["parameters"]["grievance g"] == [[0.0, 1.0], [10.0, 2.0]]
    view.pick("stable")
    assert not view.sliders["grievance g"].disabled

"""Driving the explorer in a browser: shared by the page test and the notebook test."""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import xarray as xr

from armsdyn.config import load_config
from armsdyn.experiment import run

#: Debian's Chromium (apt-get install -y chromium); Playwright's own download needs the internet.
CHROMIUM = Path("/usr/bin/chromium")


def as_run(config: Path, name: str, params: dict[str, Any], engine: str | None = None) -> xr.Dataset:
    """What armsdyn.run gives for one scenario of `config` with `params`, beside its baselines."""
    exp = load_config(config)
    if engine is not None:
        exp = replace(exp, engine=engine)
    scenario = exp.scenario(name)
    rows = [replace(scenario, name="probe", parameters={**scenario.parameters, **params})]
    rows += [s for s in exp.scenarios if s.name in {scenario.baseline, exp.metrics.baseline} - {None, ""}]
    rows += [s for s in exp.scenarios if s.name in {r.baseline for r in rows} - {None} - {r.name for r in rows}]
    return run(replace(exp, scenarios=tuple(rows)))


def browser_or_skip() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install '.[test]')")
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    return sync_playwright


def page_state(page: Any) -> dict[str, Any]:
    """The document's slider values, series, metrics and update count, read from BokehJS."""
    return page.evaluate(
        """() => {
        const doc = Bokeh.documents[0];
        const out = {sliders: {}, series: {}, metrics: null, count: 0};
        for (const m of doc.all_models) {
            if (!m.name) continue;
            if (m.name.startsWith('slider:')) out.sliders[m.name.slice(7)] = m.value;
            if (m.name.startsWith('series:')) {
                const d = {};
                for (const [k, v] of m.data.entries ? m.data.entries() : Object.entries(m.data)) d[k] = Array.from(v);
                out.series[m.name.slice(7)] = d;
            }
            if (m.name === 'metrics_table') out.metrics = m.text;
            if (m.name === 'timing') {
                const found = /data-update='(\\d+)'/.exec(m.text);
                out.count = found ? Number(found[1]) : 0;
            }
        }
        return out;
    }"""
    )


def first_update(page: Any, timeout: float = 60.0) -> dict[str, Any]:
    """The page's state once its document holds the explorer's first update (made as the page is built)."""
    page.wait_for_function(
        "() => /data-update='[1-9]/.test(Bokeh.documents[0].get_model_by_name('timing').text)", timeout=timeout * 1e3
    )
    return page_state(page)


def slider_moved(page: Any, name: str, beyond: float, timeout: float = 60.0) -> float:
    """Wait until slider `name` stands above `beyond` on the page (its model's value) and return its value."""
    page.wait_for_function(
        "([name, beyond]) => Bokeh.documents[0].get_model_by_name('slider:' + name).value > beyond",
        arg=[name, beyond],
        timeout=timeout * 1e3,
    )
    return float(page_state(page)["sliders"][name])


def showing(
    page: Any,
    series: Mapping[str, Sequence[float]],
    metrics: Mapping[str, float] | None = None,
    rtol: float = 1e-9,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Wait until the page's panels show `series` and its metrics table `metrics`; return the page's state.

    Each panel's current run (``y0``) equals the name's values, and each metric's cell the value,
    to `rtol`: the page has caught up with the last slider move, as soon as it has, with no fixed
    wait. A page that never shows them fails, naming what it showed instead.
    """
    expected = {
        "series": {k: [float(v) for v in values] for k, values in series.items()},
        "metrics": {k: float(v) for k, v in (metrics or {}).items()},
        "rtol": rtol,
    }
    check = r"""(want) => {
        const doc = Bokeh.documents[0];
        const close = (a, b) => Math.abs(a - b) <= want.rtol * Math.abs(b) || (Number.isNaN(a) && Number.isNaN(b));
        for (const [name, values] of Object.entries(want.series)) {
            const data = doc.get_model_by_name('series:' + name).data;  // a Map or a plain object
            const got = data instanceof Map ? data.get('y0') : data['y0'];
            if (!got || got.length !== values.length || !values.every((v, i) => close(got[i], v))) return false;
        }
        const table = doc.get_model_by_name('metrics_table').text;
        for (const [name, value] of Object.entries(want.metrics)) {
            const quoted = name.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
            const pattern = "data-column='current' data-metric='" + quoted + "' data-value='([^']*)'";
            const cell = new RegExp(pattern).exec(table);
            if (!cell || !close(Number(cell[1]), value)) return false;
        }
        return true;
    }"""
    try:
        page.wait_for_function(check, arg=expected, timeout=timeout * 1e3)
    except Exception as exc:  # Playwright's TimeoutError: say what the page shows instead
        state = page_state(page)
        shown = {k: state["series"].get(k, {}).get("y0", [])[-3:] for k in series}
        wanted = {k: v[-3:] for k, v in expected["series"].items()}
        msg = (
            f"the page did not show the expected run within {timeout} s: last values {shown}, expected {wanted}; "
            f"table {table_values(state['metrics'] or '')}, expected {expected['metrics']}"
        )
        raise AssertionError(msg) from exc
    return page_state(page)


def table_values(text: str) -> dict[str, float]:
    """The exact numbers of the metrics table's current-settings column, by metric."""
    found = re.findall(r"data-column='current' data-metric='([^']*)' data-value='([^']*)'", text)
    return {html.unescape(metric): float(value) for metric, value in found}

"""Driving the explorer in a browser: shared by the page test and the notebook test."""

from __future__ import annotations

import html
import re
import time
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


def settle(page: Any, timeout: float = 60.0) -> dict[str, Any]:
    """Wait until updates stop (the count unchanged for a second) and return the page's state."""
    deadline = time.monotonic() + timeout
    state = page_state(page)
    while time.monotonic() < deadline:
        page.wait_for_timeout(1000)
        now = page_state(page)
        if now["count"] == state["count"] and now["count"] > 0:
            return now
        state = now
    raise AssertionError(f"the page kept updating (or never did) for {timeout} s")


def table_values(text: str) -> dict[str, float]:
    """The exact numbers of the metrics table's current-settings column, by metric."""
    found = re.findall(r"data-column='current' data-metric='([^']*)' data-value='([^']*)'", text)
    return {html.unescape(metric): float(value) for metric, value in found}

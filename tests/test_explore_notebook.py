"""The explorer inside a Jupyter notebook: a real notebook server, a real kernel, a real browser.

The notebook is the one README shows (``output_notebook`` then ``show(... explorer(config))``),
run cell by cell from the notebook's own Run menu in headless Chromium. The explorer's panels
must then move with a slider to what :func:`armsdyn.run` gives for the same parameters, exactly
as on the ``armsdyn explore`` page, and nothing may be fetched from outside the machine.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from armsdyn.config import load_config
from armsdyn.explore import knobs
from tests.conftest import ROOT
from tests.explorer_page import CHROMIUM, as_run, browser_or_skip, first_update, page_state, showing, slider_moved
from tests.test_explore import RICHARDSON

pytest.importorskip("bokeh", reason="the explorer needs Bokeh (pip install '.[explore]')")
pytest.importorskip("notebook", reason="the notebook test needs Jupyter Notebook (pip install '.[test]')")
pytest.importorskip("ipykernel", reason="the notebook test needs ipykernel (pip install '.[test]')")

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _notebook(config: Path, port: int) -> dict[str, object]:
    """README's two cells; BokehJS inline because the machine may have no network (and must not use it)."""
    cells = [
        "from bokeh.io import output_notebook, show\n"
        "from bokeh.resources import INLINE\n"
        "from armsdyn.explore import explorer\n"
        "output_notebook(resources=INLINE, hide_banner=True)",
        f"show(lambda doc: doc.add_root(explorer({str(config)!r})), notebook_url='http://127.0.0.1:{port}')",
    ]
    return {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "cells": [
            {
                "cell_type": "code",
                "id": f"cell{i}",
                "metadata": {},
                "source": src,
                "outputs": [],
                "execution_count": None,
            }
            for i, src in enumerate(cells)
        ],
    }


@pytest.fixture
def notebook_server(tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    """A Jupyter Notebook server on 127.0.0.1 serving a notebook of the explorer; yields its URL, token and config."""
    browser_or_skip()
    config = tmp_path / "richardson.toml"
    config.write_text(
        RICHARDSON.read_text(encoding="utf-8").replace('"../models/', f'"{ROOT / "models"}/'), encoding="utf-8"
    )
    port = _free_port()
    token = secrets.token_hex(16)
    (tmp_path / "explore.ipynb").write_text(json.dumps(_notebook(config, port)), encoding="utf-8")
    # Jupyter's and IPython's per-user state goes to the test's folder, not the user's home.
    home = tmp_path / "home"
    env = {
        **os.environ,
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "IPYTHONDIR": str(home / "ipython"),
        "PYTHONUNBUFFERED": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "notebook",
        "--no-browser",
        "--ip=127.0.0.1",
        f"--port={port}",
        "--port-retries=0",
        # A token, not none: another user of the machine must not run code in the kernel meanwhile.
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={tmp_path}",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # CI containers run as root
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"the notebook server exited: {(tmp_path / 'server.log').read_text()}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)  # a connect attempt is cheap: poll finely, do not wait out half seconds
        else:
            raise AssertionError(f"the notebook server did not listen on {port}")
        yield url, token, config
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _run_all_cells(page: Any, attempts: int = 4) -> None:
    """Run > Run All Cells, again if no cell started: a Run All sent before the kernel connects is dropped.

    The kernel's idle indicator can show before the notebook's session reaches the kernel, so
    the sign that the cells run is a cell's prompt leaving ``[ ]`` (``[*]`` or ``[1]``).
    """
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status=idle]", timeout=120_000)
    started = (
        "() => [...document.querySelectorAll('.jp-InputPrompt')].some(p => /\\[(\\*|\\d+)\\]/.test(p.textContent))"
    )
    for _ in range(attempts):
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_role("menuitem", name="Run All Cells", exact=True).click()
        try:
            page.wait_for_function(started, timeout=30_000)
            return
        except Exception:  # Playwright's TimeoutError: the cells did not start; ask again
            continue
    raise AssertionError(f"no cell started after {attempts} Run All Cells")


#: Both cells run by the kernel: a ``[*]`` prompt is only the notebook's request, an ``[n]`` the kernel's reply.
RAN = (
    "() => { const p = [...document.querySelectorAll('.jp-InputPrompt')];"
    " return p.length > 1 && p.every(e => /\\[\\d+\\]/.test(e.textContent)); }"
)


def _state(page: Any, server_log: Path, console: list[str], bokeh: list[str]) -> str:
    """What the notebook, its kernel, BokehJS and the servers did: for a failure's message."""
    try:
        prompts = page.locator(".jp-InputPrompt").all_inner_texts()
        kernel = page.locator(".jp-Notebook-ExecutionIndicator").first.get_attribute("data-status", timeout=1_000)
        outputs = page.locator(".jp-OutputArea").evaluate_all(
            "areas => areas.map(a => [...a.querySelectorAll('.jp-OutputArea-output')]"
            ".map(o => `${o.dataset.mimeType}: ${o.textContent.slice(0, 300)}`))"
        )
        bokehjs = page.evaluate(
            "() => window.Bokeh ? `BokehJS ${Bokeh.version}, ${Bokeh.documents.length} document(s)` : 'no BokehJS'"
        )
        page_state_ = f"prompts {prompts}, kernel {kernel}, {bokehjs}; outputs {outputs}"
    except Exception as exc:  # the page itself is gone: say so, and still show the logs
        page_state_ = f"the page could not be read ({exc})"
    log = server_log.read_text(encoding="utf-8", errors="replace").splitlines()[-40:]
    return (
        f"{page_state_}\nthe kernel's Bokeh server: {bokeh or 'never asked'}\n"
        f"the browser's console (last 20): {console[-20:]}\n"
        "the notebook server's log (last 40 lines):\n" + "\n".join(log)
    )


def test_the_explorer_in_a_notebook_moves_with_a_slider_to_armsdyn_runs_values(
    notebook_server: tuple[str, str, Path],
) -> None:
    url, token, config = notebook_server
    sync_playwright = browser_or_skip()
    requests: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("request", lambda r: requests.append(r.url))
            console: list[str] = []
            page.on("console", lambda m: console.append(f"{m.type}: {m.text[:300]}"))
            page.on("pageerror", lambda e: console.append(f"uncaught: {str(e)[:300]}"))
            bokeh: list[str] = []  # the kernel's Bokeh server's answers (its autoload.js and websocket)
            page.on("response", lambda r: "autoload.js" in r.url and bokeh.append(f"{r.status} {r.url[:120]}"))
            page.on("requestfailed", lambda r: "autoload.js" in r.url and bokeh.append(f"failed: {r.failure}"))
            page.on("websocket", lambda ws: "/ws" in ws.url and bokeh.append(f"websocket {ws.url[:80]}"))
            server_log = config.parent / "server.log"
            page.goto(f"{url}notebooks/explore.ipynb?token={token}", timeout=120_000)
            # Run the notebook as a reader would: Run > Run All Cells.
            _run_all_cells(page)
            try:
                page.wait_for_function(RAN, timeout=180_000)
            except Exception as exc:
                msg = f"the kernel did not run both cells: {_state(page, server_log, console, bokeh)}"
                raise AssertionError(msg) from exc
            try:
                page.wait_for_function(
                    "() => window.Bokeh && Bokeh.documents.length > 0"
                    " && Bokeh.documents[0].get_model_by_name('slider:grievance g')",
                    timeout=180_000,
                )
            except Exception as exc:
                msg = f"the explorer never appeared: {_state(page, server_log, console, bokeh)}"
                raise AssertionError(msg) from exc
            before = first_update(page)
            assert before["sliders"]["grievance g"] == 1.0  # the first scenario, 'stable'

            exp = load_config(config)
            order = [k.key for k in knobs(exp)]  # the sliders' order in the cell
            handle = page.locator(".noUi-handle").nth(order.index("grievance g"))
            # Dragged with the mouse: the notebook's own key bindings take arrow keys in command mode.
            handle.scroll_into_view_if_needed()
            box = handle.bounding_box()
            assert box is not None
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] / 2 + 40, box["y"] + box["height"] / 2, steps=8)
            page.mouse.up()
            assert slider_moved(page, "grievance g", 1.0) > 1.0
            # The panels follow to armsdyn.run's values for the page's parameters (waited for, not slept on).
            params = {k: float(f"{v:.12g}") for k, v in page_state(page)["sliders"].items()}
            reference = as_run(config, "stable", params).sel(scenario="probe")
            panels = {name: reference[exp.model.variable(name).py_name].values for name in ("arms X", "arms Y")}
            state = showing(page, panels)
        finally:
            browser.close()
    for name, values in panels.items():
        assert not np.allclose(before["series"][name]["y0"], values)  # the slider moved the run
        np.testing.assert_allclose(state["series"][name]["y0"], values, rtol=1e-9)
    # The notebook server and the kernel's Bokeh server, both on this machine, served everything.
    assert all(re.match(r"(http|ws)://127\.0\.0\.1:\d+/", u) or u.startswith(("data:", "blob:")) for u in requests), [
        u for u in requests if "127.0.0.1" not in u
    ]

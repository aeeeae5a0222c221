"""Faults never lose results: kills, full disks, numerical blow-ups, hostile names."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import armsdyn
from armsdyn import NumericalError
from tests.conftest import CONFIGS, ROOT, run_cli, write_config


def complete(folder: Path) -> dict[str, object]:
    """Assert `folder` is a complete results folder; return its manifest."""
    manifest = json.loads((folder / "manifest.json").read_text())
    listed = set(manifest["files"])
    present = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} - {"manifest.json"}
    assert present == listed, f"files differ from the manifest: {present ^ listed}"
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest, name
    return manifest


@pytest.mark.slow
def test_kill_at_random_moments_never_leaves_a_half_written_folder(tmp_path: Path) -> None:
    out = tmp_path / "richardson"
    first = run_cli("run", CONFIGS / "richardson.toml", "--out", out)
    assert first.returncode == 0, first.stderr
    seen = {complete(out)["started"]}
    rng = random.Random(20261126)
    env = {**os.environ}
    for _ in range(12):
        proc = subprocess.Popen(
            [sys.executable, "-m", "armsdyn", "run", str(CONFIGS / "richardson.toml"), "--out", str(out), "--force"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        time.sleep(rng.uniform(0.5, 6.0))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        # Whatever the moment, the folder is a complete run: the earlier one or the new one.
        seen.add(complete(out)["started"])
    # The next run cleans up whatever the killed ones left beside the folder.
    last = run_cli("run", CONFIGS / "richardson.toml", "--out", out, "--force")
    assert last.returncode == 0, last.stderr
    complete(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["richardson"]


def test_full_disk_gives_a_clear_error_and_no_folder(tmp_path: Path) -> None:
    out = tmp_path / "results" / "richardson"
    # A file-size limit makes writes fail as on a full disk (SIGXFSZ ignored so
    # the write returns an error instead of killing the process).
    code = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "from armsdyn.cli import main\n"
        "import armsdyn.figures\n"  # import before the limit: imports may write caches
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"
        f"sys.exit(main(['run', {str(CONFIGS / 'richardson.toml')!r}, '--out', {str(out)!r}]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "could not write" in proc.stderr
    assert "nothing was written" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()
    assert list(out.parent.iterdir()) == []


EXPLODING = """
[time]
final = 100
step = 0.125
saveper = 0.5
[[scenarios]]
name = "calm"
[[scenarios]]
name = "explodes"
parameters = { "defence coefficient k" = 2000, "defence coefficient l" = 2000 }
"""


def test_stop_on_fault_stops_with_the_scenario_variable_and_time(tmp_path: Path) -> None:
    config = write_config(tmp_path, EXPLODING)
    with pytest.raises(
        NumericalError, match=r"scenario 'explodes': 'arm.*' became (inf|-inf|nan) at time [0-9.]+ Year"
    ):
        armsdyn.run(config, stop_on_fault=True)
    proc = run_cli("run", config, "--out", tmp_path / "out", "--stop-on-fault")
    assert proc.returncode == 2
    assert "scenario 'explodes'" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_fault_without_stop_is_a_warning_and_the_run_completes(tmp_path: Path) -> None:
    proc = run_cli("run", write_config(tmp_path, EXPLODING), "--out", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "armsdyn: warning: scenario 'explodes'" in proc.stderr
    complete(tmp_path / "out")


@pytest.mark.parametrize("name", ["../escape", "/abs", "a/b", ".hidden", "con:", "x" * 101, "ünï"])
def test_names_that_would_escape_the_results_folder_are_rejected(tmp_path: Path, name: str) -> None:
    config = write_config(
        tmp_path,
        f'[[scenarios]]\nname = "{name}"\n[[figures]]\nkind = "time_series"\nname = "{name}"\nvariables = ["arms X"]\n',
    )
    proc = run_cli("run", config, "--out", tmp_path / "out")
    assert proc.returncode == 2
    assert "is not a safe" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_stock_leaving_its_declared_range_is_a_fault(tmp_path: Path) -> None:
    model = tmp_path / "bounded.mdl"
    text = (ROOT / "models" / "richardson.mdl").read_text()
    model.write_text(
        text.replace(
            "arming rate X,\n\t\tinitial arms X)\n\t~\tarms\n",
            "arming rate X,\n\t\tinitial arms X)\n\t~\tarms [0,?]\n",
            1,
        )
    )
    assert model.read_text() != text
    config = write_config(
        tmp_path,
        '[[scenarios]]\nname = "spiral"\nparameters = { "defence coefficient k" = 1.2, "defence coefficient l" = 1.2, '
        '"grievance g" = -1, "grievance h" = -1, "initial arms X" = 2, "initial arms Y" = 2 }\n'
        '[[scenarios]]\nname = "calm"\n',
        model=model,
    )
    with pytest.warns(armsdyn.NumericalWarning, match=r"scenario 'spiral': 'arms X' = -[0-9.e+-]+, below minimum"):
        ds = armsdyn.run(config)
    assert ds["arms_x"].attrs["valid_min"] == 0.0
    table = armsdyn.compute_metrics(ds)
    assert table.loc["spiral", "fault"] == "below minimum"
    first_negative = float(ds["time"].values[np.flatnonzero(ds["arms_x"].sel(scenario="spiral").values < 0)[0]])
    assert table.loc["spiral", "fault time"] == first_negative
    assert table.loc["calm", "fault"] == "none"
    with pytest.raises(NumericalError, match="below minimum of its declared range"):
        armsdyn.run(config, stop_on_fault=True)

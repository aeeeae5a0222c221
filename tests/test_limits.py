"""Limits before work: a config's runs, steps, saved values, memory and disk, checked against the machine."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

import armsdyn
from armsdyn.cli import main
from armsdyn.runner import machine_memory, needs, study_runs
from armsdyn.sensitivity import sample
from armsdyn.sensitivity_methods import METHODS
from tests.conftest import CONFIGS, ROOT, write_config

STUDY = """
[time]
final = 60
step = 0.0625
saveper = 1
[sensitivity]
method = "latin"
samples = 64
seed = 3
[[sensitivity.parameters]]
name = "grievance g"
bounds = [0.5, 2.0]
[[sensitivity.parameters]]
name = "fatigue coefficient a"
bounds = [0.8, 1.6]
[[sensitivity.parameters]]
name = "defence coefficient k"
bounds = [0.1, 0.6]
[[sensitivity.outputs]]
variable = "arms X"
aggregate = "final"
"""


@pytest.mark.parametrize(
    ("method", "second_order"), [*((m, False) for m in METHODS), ("sobol", True)], ids=[*METHODS, "sobol-second-order"]
)
def test_run_counts_match_the_samples_each_method_draws(tmp_path: Path, method: str, second_order: bool) -> None:
    exp = armsdyn.load_config(write_config(tmp_path, STUDY))
    spec = dataclasses.replace(exp.sensitivity, method=method, samples=8, levels=4, second_order=second_order)
    drawn = len(next(iter(sample(spec).values())))
    assert study_runs(spec) == drawn


def test_check_states_runs_steps_saved_values_and_needs(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(CONFIGS / "richardson.toml")]) == 0
    out = capsys.readouterr().out
    # richardson.toml: 5 scenarios, 0..30 by 0.03125 (960 steps), 4 variables saved every 0.25 (121 times).
    assert "5 scenario runs of 960 steps, 2,420 saved values; needs about " in out
    assert " of memory and " in out
    assert " of disk" in out


def test_check_states_a_study_s_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", str(write_config(tmp_path, STUDY))]) == 0
    assert "1 scenario run + 64 study runs of 960 steps" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("old", "new", "hint"),
    [
        (
            "samples = 64",
            "samples = 1000000000",
            "reduce sensitivity.samples (now 1,000,000,000, giving 1,000,000,000 runs)",
        ),
        (
            'method = "latin"',
            'method = "grid"\nlevels = 100',
            "sensitivity.levels (100 levels ** 6 parameters = 1,000,000,000,000 runs)",
        ),
    ],
    ids=["billion-samples", "grid-of-100-levels"],
)
def test_a_study_that_cannot_fit_is_refused_before_any_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], old: str, new: str, hint: str
) -> None:
    text = STUDY.replace(old, new)
    if "grid" in new:  # a grid over more parameters: 100 ** 6 runs
        extra = "".join(
            f'[[sensitivity.parameters]]\nname = "{name}"\nbounds = [0.5, 1.5]\n'
            for name in ("grievance h", "fatigue coefficient b", "defence coefficient l")
        )
        text = text.replace("[[sensitivity.outputs]]", extra + "[[sensitivity.outputs]]")
    config = write_config(tmp_path, text)
    assert main(["check", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"armsdyn: error: {config}: too large to run here: it needs about ")
    assert "this machine has" in err
    assert hint in err
    assert len(err.strip().splitlines()) == 1
    out = tmp_path / "out"
    assert main(["run", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "too large to run here" in err
    assert "scenarios of" not in err, "refused before running anything"
    assert not out.exists()


def test_many_long_scenarios_that_cannot_fit_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 10,000,000 saved times of 4 variables in each of 2,000 scenarios: far beyond any laptop's memory.
    scenarios = "".join(f'[[scenarios]]\nname = "s{i}"\n' for i in range(2000))
    text = "[time]\nfinal = 10000\nstep = 0.001\nsaveper = 0.001\n" + scenarios
    if machine_memory() > 3 * 8 * 2000 * 10_000_001 * 4:
        pytest.skip("this machine could hold it")
    assert main(["check", str(write_config(tmp_path, text))]) == 2
    err = capsys.readouterr().err
    assert "2000 scenario runs of 10,000,000 steps" in err
    assert "a larger time.saveper, now 0.001: 10,000,001 per run" in err


def _peak_of_run(config: Path, out: Path, *extra: str) -> int:
    """Peak resident bytes of ``armsdyn run CONFIG`` in a fresh process (the largest process of its tree)."""
    code = (
        "import resource, subprocess, sys\n"
        f"done = subprocess.run([sys.executable, '-m', 'armsdyn', 'run', {str(config)!r}, '--out', {str(out)!r}, "
        f"*{list(extra)!r}], capture_output=True, text=True)\n"
        "print(done.stderr, file=sys.stderr)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)\n"
        "sys.exit(done.returncode)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split()[-1])


def test_the_memory_estimate_covers_a_real_study(tmp_path: Path) -> None:
    # The estimate is meant to refuse what cannot fit: it must not be below what a study really
    # takes, nor far above it.
    config = write_config(tmp_path, STUDY.replace("samples = 64", "samples = 50000"))
    peak = _peak_of_run(config, tmp_path / "out", "--workers", "1")
    estimate = needs(armsdyn.load_config(config), workers=1).memory
    assert peak <= estimate <= 3 * peak, (peak, estimate)


@pytest.mark.slow
def test_the_memory_estimate_of_the_shipped_sensitivity_study_is_honest(tmp_path: Path) -> None:
    """`armsdyn check`'s estimate of configs/knowledge_sensitivity.toml, against its measured peak.

    The study runs in the ``armsdyn`` process itself (one worker, as ``run`` chooses for a
    compiled model), so that process's peak is the whole study's.
    """
    config = CONFIGS / "knowledge_sensitivity.toml"
    found = needs(armsdyn.load_config(config))
    assert found.workers == 1
    peak = _peak_of_run(config, tmp_path / "out")
    assert peak <= found.memory <= 3 * peak, (peak, found.memory)

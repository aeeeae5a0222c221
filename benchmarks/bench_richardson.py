"""Speed of a Richardson experiment: cold start, and warm per-scenario cost against PySD.

Run with ``python benchmarks/bench_richardson.py``. It reports (no assertions;
machines are shared and noisy):

- cold: wall time of ``armsdyn run configs/richardson.toml`` in a fresh process
  with an empty translation cache (translation + runs + results folder);
- warm: mean seconds per scenario of ``armsdyn.run`` on the loaded experiment,
  against PySD's own ``Model.run`` of the same translated model with the same
  parameters and time settings, measured in the same process, and their ratio.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "richardson.toml"


def cold() -> float:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "ARMSDYN_CACHE_DIR": str(Path(tmp) / "cache")}
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "armsdyn", "run", str(CONFIG), "--out", str(Path(tmp) / "out")],
            env=env,
            check=True,
            capture_output=True,
        )
        return time.perf_counter() - started


def warm(repeats: int = 20) -> tuple[float, float]:
    import armsdyn
    from armsdyn.model import _quiet_pysd

    exp = armsdyn.load_config(CONFIG)
    n = len(exp.scenarios)
    armsdyn.run(exp)  # warm up imports and caches
    ours = []
    for _ in range(repeats):
        started = time.perf_counter()
        armsdyn.run(exp)
        ours.append((time.perf_counter() - started) / n)

    import pysd

    with _quiet_pysd():
        model = pysd.load(str(exp.model.translation))
        t = exp.time
        theirs = []
        for _ in range(repeats):
            started = time.perf_counter()
            for s in exp.scenarios:
                model.run(
                    params=s.pysd_params(),
                    return_columns=list(exp.variables),
                    final_time=t.final,
                    time_step=t.step,
                    saveper=t.saveper,
                )
            theirs.append((time.perf_counter() - started) / n)
    return statistics.median(ours), statistics.median(theirs)


def main() -> None:
    cold_s = cold()
    ours, theirs = warm()
    print(f"cold run, 5 scenarios, empty cache: {cold_s:.2f} s wall (new process, includes imports)")
    print(
        f"warm per scenario: armsdyn.run {ours * 1e3:.1f} ms, PySD Model.run {theirs * 1e3:.1f} ms, "
        f"ratio {ours / theirs:.2f}"
    )


if __name__ == "__main__":
    main()

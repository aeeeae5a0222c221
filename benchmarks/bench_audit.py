"""Where a claim audit spends its time: stage by stage, wall clock and CPU.

Run with ``python benchmarks/bench_audit.py [--samples N] [--workers N] [--config FILE]``
(default: the knowledge audit, ``configs/audit_knowledge_argument.toml``, at
10,000 samples, every core). It reports (no assertions; machines are shared
and noisy, so it also prints the load average before and after):

- ``import``: importing ``armsdyn.audit`` (numpy, pandas, xarray, PySD, ...);
- ``load``: reading and validating the config (the model's translation, cached on disk);
- ``runs``: every claim scenario at every draw, reduced to metric tables
  (the numba kernel when numba is installed: its load or compile is included);
- ``ema import``: importing the EMA Workbench's PRIM;
- ``claims``: predicates, PRIM boxes (fails and holds) and a CART tree per claim;
- ``write``: the ``audit/`` folder (CSV files, ten figures in PDF, SVG and PNG, the report).

CPU is the process's (all its threads; worker processes of the numpy fallback
are not counted, so compare wall times there).

Measured (2 vCPU shared with other jobs; load average in brackets), the knowledge audit:

before (commit 9c78be8, numpy kernel in worker processes), ``cProfile`` at 2,000 samples,
one worker, 50 s under the profiler [1.4]: runs 15.3 s (numpy kernel 9.9 s of it),
PRIM 8.5 s, EMA import 9.7 s (its method logger inspects the call stack:
``inspect.getmodule`` over 2,300 loaded modules, 2.7 million ``hasattr`` calls),
figures 10.7 s (30 files), config 5.9 s (a translation-cache miss).
``armsdyn audit`` at 10,000 samples: 71 s wall [11] (the numba kernel already cached on disk by
an earlier run); the issue recorded 2:25 (52 s CPU) under load, about 45 s of it the numpy kernel.

numba kernel in this process (2 threads), EMA imported only for PRIM, 10,000 samples
(2026-12-02, after the package split; [8.7 before, 9.9 after]):

=========== ====== =====
stage       wall s cpu s
=========== ====== =====
import        3.97  1.53
load          2.13  0.86
runs         17.42  6.08
ema import   15.15  5.14
claims       17.16  5.89
write        21.25  6.76
total        77.10 26.3
=========== ====== =====

``armsdyn audit configs/audit_knowledge_argument.toml --samples 10000`` (every core), the audit
code before (9c78be8's audit, metrics and richardson modules on today's engine) and after, the
same load [7 to 10]; CPU is user + system of the command and its worker processes:

============================================= ============ ============
numba kernel and model translation            before       after
============================================= ============ ============
cached on disk (a second audit)               77 s, 26 s   46 s, 24 s
not cached (fresh ``ARMSDYN_CACHE_DIR``)      106 s, 36 s  78 s, 30 s
============================================= ============ ============

Before, the engine's "auto" choice ran numpy in each worker process and switched
to numba only once a chunk's pilot showed it paid (with a cached kernel, mostly);
the issue's 2:25 (52 s CPU) was numpy throughout. After, numba runs every chunk
(compiled once, about 20 s CPU, then loaded from disk), so a second audit spends
about 6 s CPU on 30,000 runs; the rest is the EMA import, PRIM and the figures.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "audit_knowledge_argument.toml"

STAGES: list[tuple[str, float, float]] = []


@contextmanager
def stage(name: str) -> Iterator[None]:
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    STAGES.append((name, time.perf_counter() - wall, time.process_time() - cpu))


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=None, help="processes or numba threads (default: every core)")
    args = parser.parse_args()
    print(f"load average before: {load()}")
    started = time.perf_counter()
    with stage("import"):
        # The module, not the function armsdyn.audit that the package exports under its name.
        a: Any = importlib.import_module("armsdyn.audit")
    with stage("load"):
        spec = a.load_audit(args.config)
    with stage("runs"):
        draws = a.sample(spec, args.samples)
        tables = a.metric_tables(spec, draws, workers=args.workers, chunk_size=8192, progress=False)
    with stage("ema import"):
        importlib.import_module("armsdyn.audit.discovery").prim_module()
    with stage("claims"):
        result = a.AuditResult(spec, draws, a.evaluate_claims(spec, draws, tables), tables)
    with tempfile.TemporaryDirectory() as tmp, stage("write"):
        a.write_audit(result, Path(tmp) / "audit")
    total = time.perf_counter() - started
    print(f"{args.samples:,} samples of {args.config.name}, workers={args.workers}")
    print(f"{'stage':<12}{'wall s':>9}{'cpu s':>9}")
    for name, wall, cpu in STAGES:
        print(f"{name:<12}{wall:>9.2f}{cpu:>9.2f}")
    print(f"{'total':<12}{total:>9.2f}")
    print(f"load average after: {load()}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()

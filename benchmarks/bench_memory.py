"""Peak memory of a large sensitivity study, summed over the parent and its worker processes.

Run with ``python benchmarks/bench_memory.py [--runs 200000 1000000 2000000] [--workers 2]``.

Each size is a copy of ``configs/knowledge_sensitivity.toml`` (a Sobol study of
the knowledge model, 8 parameters, so ``samples * 10`` runs) with ``samples``
scaled to give the number of runs asked for, run by ``armsdyn run`` in a
subprocess. The process tree's resident memory (RSS of the ``armsdyn`` process
plus every process below it: the study's workers) is sampled every 50 ms; the
table reports the peak of the sum, the parent's own peak and the workers' peak
sum. RSS counts pages shared between processes (the Python runtime, numpy,
numba) once per process, so the sum overstates what the machine gives up; it is
the measure the 2 GB bound in issue 19 is stated in.

Reads ``/proc`` (Linux); uses psutil instead where it is installed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "knowledge_sensitivity.toml"
SAMPLE_EVERY = 0.05  # seconds
MIB = 2**20


def _children_proc(pid: int) -> list[int]:
    found = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                found += [int(c) for c in fh.read().split()]
    except OSError:
        return []
    return found


def _rss_proc(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return 0  # the process ended between listing and reading


def tree_rss(pid: int) -> tuple[int, int]:
    """RSS of process `pid` and the summed RSS of all its descendants, in bytes."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            proc = psutil.Process(pid)
            own = proc.memory_info().rss
            rest = 0
            for child in proc.children(recursive=True):
                with contextlib.suppress(psutil.Error):  # it ended between listing and reading
                    rest += child.memory_info().rss
            return own, rest
        except psutil.Error:
            return 0, 0
    own, rest, stack = _rss_proc(pid), 0, _children_proc(pid)
    while stack:
        child = stack.pop()
        rest += _rss_proc(child)
        stack += _children_proc(child)
    return own, rest


@dataclass
class Peak:
    runs: int
    samples: int
    seconds: float
    total: int
    parent: int
    workers: int
    status: int


def study_config(folder: Path, runs: int) -> tuple[Path, int]:
    """A copy of the knowledge study with `samples` set for about `runs` runs (Sobol: samples * 10)."""
    text = CONFIG.read_text(encoding="utf-8")
    parameters = text.count("[[sensitivity.parameters]]")
    samples = max(1, round(runs / (parameters + 2)))
    text = re.sub(r"(?m)^samples = \d+$", f"samples = {samples}", text)
    text = text.replace('model = "../models/', f'model = "{(ROOT / "models").as_posix()}/')
    path = folder / f"knowledge_{samples}.toml"
    path.write_text(text, encoding="utf-8")
    return path, samples


def measure(runs: int, workers: int, chunk_size: int) -> Peak:
    """Run one study in a subprocess and sample its process tree's memory until it ends."""
    with tempfile.TemporaryDirectory(prefix="armsdyn-bench-memory-") as tmp:
        folder = Path(tmp)
        config, samples = study_config(folder, runs)
        command = [sys.executable, "-m", "armsdyn", "run", str(config), "--out", str(folder / "out")]
        command += ["--workers", str(workers), "--chunk-size", str(chunk_size)]
        env = {**os.environ, "ARMSDYN_CACHE_DIR": os.environ.get("ARMSDYN_CACHE_DIR", str(folder / "cache"))}
        start = time.monotonic()
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        total = parent = rest = 0
        while proc.poll() is None:
            own, others = tree_rss(proc.pid)
            total, parent, rest = max(total, own + others), max(parent, own), max(rest, others)
            time.sleep(SAMPLE_EVERY)
        seconds = time.monotonic() - start
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        if proc.returncode != 0:
            print(err, file=sys.stderr)
        return Peak(runs, samples, seconds, total, parent, rest, proc.returncode)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[200_000, 1_000_000], help="study sizes (runs)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    parser.add_argument("--chunk-size", type=int, default=8192, help="runs per chunk (default 8192)")
    args = parser.parse_args(argv)
    print(f"{'runs':>10} {'samples':>8} {'time':>8} {'peak total':>11} {'parent':>8} {'workers':>8}  (MiB)")
    failed = 0
    for runs in args.runs:
        p = measure(runs, args.workers, args.chunk_size)
        actual = p.samples * (CONFIG.read_text().count("[[sensitivity.parameters]]") + 2)
        print(
            f"{actual:>10} {p.samples:>8} {p.seconds:>7.0f}s {p.total / MIB:>11.0f} {p.parent / MIB:>8.0f} "
            f"{p.workers / MIB:>8.0f}" + ("" if p.status == 0 else f"  exit status {p.status}"),
            flush=True,
        )
        failed += p.status != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

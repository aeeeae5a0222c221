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

With ``--analysis-only``, each size samples the design and analyses it in one
process without simulating: four outputs (the study's number) computed from the
samples stand in for the model's, so the sampler's and the Sobol analysis's
peaks are measured at sizes whose simulation would take hours on a shared
machine. In a full study the analysis runs after the workers have exited, so
its peak adds to the parent's own memory, not to the workers'.

With ``--configs A.toml B.toml``, each config is run as it is (``armsdyn run``,
in a fresh translation and kernel cache unless ``--warm``) and its peak is
printed beside ``armsdyn check``'s estimate of it (``armsdyn.runner.needs``).

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


def study_config(folder: Path, runs: int, step: float | None = None) -> tuple[Path, int]:
    """A copy of the knowledge study with `samples` set for about `runs` runs (Sobol: samples * 10).

    `step` replaces the study's TIME STEP: fewer Euler steps make a run cheaper while every array
    a run keeps (saved times, outputs, samples) stays the same size, so a large study's memory can
    be measured in a fraction of its time.
    """
    text = CONFIG.read_text(encoding="utf-8")
    if step is not None:
        text = re.sub(r"(?m)^step = [0-9.]+$", f"step = {step!r}", text)
    parameters = text.count("[[sensitivity.parameters]]")
    samples = max(1, round(runs / (parameters + 2)))
    text = re.sub(r"(?m)^samples = \d+$", f"samples = {samples}", text)
    text = text.replace('model = "../models/', f'model = "{(ROOT / "models").as_posix()}/')
    path = folder / f"knowledge_{samples}.toml"
    path.write_text(text, encoding="utf-8")
    return path, samples


def analyse_only(config: Path, salib: bool = False) -> None:
    """Sample `config`'s study and analyse four outputs computed from the samples, without simulating.

    With `salib`, the indices come from ``SALib.analyze.sobol.analyze`` itself (all resamples at
    once), for comparison with armsdyn's batched bootstrap.
    """
    import numpy as np

    import armsdyn
    from armsdyn.sensitivity import analyze, sample
    from armsdyn.sensitivity_methods import METHODS

    if salib:
        from SALib.analyze import sobol

        def salib_sobol(problem: dict, spec: object, x: np.ndarray, y: np.ndarray) -> dict:
            res = sobol.analyze(problem, y, calc_second_order=spec.second_order, seed=spec.seed)
            return {k: np.asarray(res[k], dtype=float) for k in ("S1", "S1_conf", "ST", "ST_conf")}

        METHODS["sobol"] = (METHODS["sobol"][0], salib_sobol)

    spec = armsdyn.load_config(config).sensitivity
    draws = sample(spec)
    columns = list(draws.values())
    # Smooth, interacting functions of the inputs, so every index and interval is computed.
    outputs = {
        "additive": sum((i + 1) * c for i, c in enumerate(columns)),
        "product": columns[0] * columns[1] + np.sin(columns[2]),
        "ratio": columns[3] / (1 + columns[4] ** 2),
        "log": np.log1p(np.abs(columns[5] - columns[6])) + columns[-1],
    }
    analyze(spec, draws, outputs)


def watch(command: list[str], env: dict[str, str]) -> tuple[float, int, int, int, int]:
    """Run `command` and sample its process tree's memory until it ends.

    Returns
    -------
    tuple
        Wall seconds, peak of the summed RSS, the process's own peak, the peak of
        its descendants' sum (bytes), and the exit status.
    """
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
    return seconds, total, parent, rest, proc.returncode


def _env(folder: Path, cold: bool) -> dict[str, str]:
    """The environment of a measured run: a fresh translation and kernel cache when `cold`."""
    cache = str(folder / "cache") if cold else os.environ.get("ARMSDYN_CACHE_DIR", str(folder / "cache"))
    return {**os.environ, "ARMSDYN_CACHE_DIR": cache}


def measure(runs: int, workers: int, chunk_size: int, analysis_only: str = "", step: float | None = None) -> Peak:
    """Run one study in a subprocess and sample its process tree's memory until it ends."""
    with tempfile.TemporaryDirectory(prefix="armsdyn-bench-memory-") as tmp:
        folder = Path(tmp)
        config, samples = study_config(folder, runs, step)
        if analysis_only:
            command = [sys.executable, str(Path(__file__).resolve()), "--analyse-config", str(config)]
            command += ["--analysis-only", analysis_only]
        else:
            command = [sys.executable, "-m", "armsdyn", "run", str(config), "--out", str(folder / "out")]
            command += ["--workers", str(workers), "--chunk-size", str(chunk_size)]
        seconds, total, parent, rest, status = watch(command, _env(folder, cold=False))
        return Peak(runs, samples, seconds, total, parent, rest, status)


def measure_config(config: Path, workers: int | None, cold: bool) -> tuple[float, int, int, int, int, int]:
    """Peak memory of ``armsdyn run CONFIG`` against ``armsdyn check``'s estimate of it.

    Returns
    -------
    tuple
        Wall seconds, peak total, parent and workers (bytes), exit status, and
        the estimate (:func:`armsdyn.runner.needs` with the same `workers`).
    """
    import armsdyn
    from armsdyn.runner import needs

    estimate = needs(armsdyn.load_config(config), workers=workers).memory
    with tempfile.TemporaryDirectory(prefix="armsdyn-bench-memory-") as tmp:
        folder = Path(tmp)
        command = [sys.executable, "-m", "armsdyn", "run", str(config), "--out", str(folder / "out")]
        command += [] if workers is None else ["--workers", str(workers)]
        seconds, total, parent, rest, status = watch(command, _env(folder, cold))
    return seconds, total, parent, rest, status, estimate


def configs_table(configs: list[Path], workers: int | None, cold: bool) -> int:
    """Print each config's measured peak beside its estimate; the exit status counts failures."""
    print(f"{'config':<34} {'time':>6} {'peak total':>11} {'parent':>7} {'workers':>8} {'estimate':>9} {'ratio':>6}")
    failed = 0
    for config in configs:
        seconds, total, parent, rest, status, estimate = measure_config(config, workers, cold)
        print(
            f"{config.name:<34} {seconds:>5.0f}s {total / MIB:>11.0f} {parent / MIB:>7.0f} {rest / MIB:>8.0f} "
            f"{estimate / MIB:>9.0f} {estimate / max(total, 1):>6.2f}" + ("" if status == 0 else f"  exit {status}"),
            flush=True,
        )
        failed += status != 0
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[200_000, 1_000_000], help="study sizes (runs)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default 2; --configs: armsdyn's)")
    parser.add_argument("--chunk-size", type=int, default=8192, help="runs per chunk (default 8192)")
    parser.add_argument(
        "--analysis-only",
        nargs="?",
        const="armsdyn",
        default="",
        choices=["armsdyn", "salib"],
        help="sample and analyse each size's design without simulating, with armsdyn's analysis or SALib's",
    )
    parser.add_argument(
        "--step", type=float, help="the study's TIME STEP instead of 0.0625 (same array sizes, cheaper runs)"
    )
    parser.add_argument(
        "--configs", type=Path, nargs="+", help="instead of the study sizes: run these configs, against the estimate"
    )
    parser.add_argument("--warm", action="store_true", help="with --configs: keep ARMSDYN_CACHE_DIR (default: cold)")
    parser.add_argument("--analyse-config", type=Path, help=argparse.SUPPRESS)  # the --analysis-only child
    args = parser.parse_args(argv)
    if args.analyse_config:
        analyse_only(args.analyse_config, salib=args.analysis_only == "salib")
        return 0
    if args.configs:
        return configs_table(args.configs, args.workers, cold=not args.warm)
    workers = 2 if args.workers is None else args.workers
    print(f"{'runs':>10} {'samples':>8} {'time':>8} {'peak total':>11} {'parent':>8} {'workers':>8}  (MiB)")
    failed = 0
    for runs in args.runs:
        p = measure(runs, workers, args.chunk_size, args.analysis_only, args.step)
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

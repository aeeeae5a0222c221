"""Speed of the ensemble engine against sequential PySD runs.

Run with ``python benchmarks/bench_ensemble.py [--samples N] [--pysd-runs K]``.
On the largest model in ``models/`` (``knowledge_engine.mdl`` when present),
simulated for 200 years at a time step of 1/16, it reports (no assertions;
machines are shared and noisy):

- PySD: runs per second of K sequential ``Model.simulate`` calls (translated
  model warm in the cache);
- ensemble, one core: runs per second of ``CompiledModel.run`` on N samples
  (every constant varied +-30%), compilation excluded;
- ensemble, all cores: ``run_ensemble(..., workers=os.cpu_count())``,
  including worker start-up;
- the ratios ensemble / PySD, wall times, and peak resident memory
  (``ru_maxrss`` of this process and of its worker processes).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VARIABLES = {
    "knowledge_engine": ["hardware A", "hardware B", "insecurity A", "military knowledge A"],
    "richardson": ["arms X", "arms Y"],
}


def largest_model() -> Path:
    preferred = ROOT / "models" / "knowledge_engine.mdl"
    if preferred.is_file():
        return preferred
    return ROOT / "models" / "richardson.mdl"


def samples_for(model, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    samples = {}
    for var in model.variables.values():
        if var.kind == "constant" and var.default is not None:
            factor = rng.uniform(0.7, 1.3, n) if np.isfinite(var.default) else np.ones(n)
            values = var.default * factor
            # Fractions stay fractions (see tests/test_ensemble.py).
            samples[var.name] = np.minimum(values, 1) if 0 < var.default <= 1 else values
    return samples


def maxrss_mib(who: int) -> float:
    # Linux reports kibibytes, macOS bytes.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(who).ru_maxrss * scale / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000, help="ensemble size (default 100000)")
    parser.add_argument("--pysd-runs", type=int, default=20, help="sequential PySD runs to time (default 20)")
    parser.add_argument("--years", type=float, default=200.0)
    parser.add_argument("--saveper", type=float, default=1.0)
    parser.add_argument("--chunk-size", type=int, default=None)
    args = parser.parse_args()

    os.environ.setdefault("ARMSDYN_CACHE_DIR", str(Path(tempfile.gettempdir()) / "armsdyn-bench-cache"))
    from armsdyn.ensemble import DEFAULT_CHUNK_SIZE, compile_model, run_ensemble
    from armsdyn.model import TimeSettings, load_model

    path = largest_model()
    chunk = args.chunk_size or DEFAULT_CHUNK_SIZE
    started = time.perf_counter()
    model = compile_model(path)
    compile_s = time.perf_counter() - started
    settings = TimeSettings(
        initial=model.time.initial,
        final=model.time.initial + args.years,
        step=1 / 16,
        saveper=args.saveper,
        units=model.time.units,
    )
    variables = VARIABLES.get(path.stem) or [model.variable(p).name for p in model.default_variables()[:4]]
    n = args.samples
    samples = samples_for(model, n)
    print(f"model: {path.name}; {args.years:g} {settings.units} at TIME STEP 1/16; saving {len(variables)} variables")
    print(f"compile: {compile_s:.2f} s")

    pysd_model = load_model(path)
    pysd_model.simulate({}, settings, variables)  # warm-up: imports and caches
    started = time.perf_counter()
    for i in range(args.pysd_runs):
        pysd_model.simulate({k: float(v[i]) for k, v in samples.items()}, settings, variables)
    pysd_s = time.perf_counter() - started
    pysd_rate = args.pysd_runs / pysd_s
    print(f"PySD sequential: {args.pysd_runs} runs in {pysd_s:.2f} s = {pysd_rate:.2f} runs/s")

    model.run({k: v[:8] for k, v in samples.items()}, settings, variables)  # warm-up: code generation
    started = time.perf_counter()
    model.run(samples, settings, variables, chunk_size=chunk)
    one_s = time.perf_counter() - started
    one_rate = n / one_s
    print(
        f"ensemble, 1 core: {n} runs in {one_s:.2f} s = {one_rate:.0f} runs/s "
        f"({one_rate / pysd_rate:.0f}x PySD; chunk size {chunk})"
    )

    cores = os.cpu_count() or 1
    started = time.perf_counter()
    run_ensemble(path, samples, settings, variables, workers=cores, chunk_size=chunk)
    all_s = time.perf_counter() - started
    all_rate = n / all_s
    print(
        f"ensemble, {cores} cores: {n} runs in {all_s:.2f} s = {all_rate:.0f} runs/s "
        f"({all_rate / pysd_rate:.0f}x PySD; wall time incl. worker start-up)"
    )
    print(
        f"peak memory: {maxrss_mib(resource.RUSAGE_SELF):.0f} MiB in this process, "
        f"{maxrss_mib(resource.RUSAGE_CHILDREN):.0f} MiB in the largest worker"
    )


if __name__ == "__main__":
    main()

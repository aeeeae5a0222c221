"""Speed and memory of the ensemble engine against sequential PySD and Simlin.

Run with ``python benchmarks/bench_ensemble.py [--samples N] [--pysd-runs K]``
(see ``benchmarks/README.md`` for measured numbers). On the largest model in
``models/`` (``knowledge_engine.mdl`` when present), simulated for 200 years
at a time step of 1/16 and saved yearly, it reports (no assertions; machines
are shared and noisy), all measured in the same run:

- PySD: runs per second of K sequential ``Model.simulate`` calls (translated
  model warm in the cache);
- Simlin (``pysimlin``, its compiled engine), if installed and able to load
  the model: runs per second of sequential runs, every constant overridden;
- the ensemble engine, each available backend (``numpy``, ``numba``), on one
  core and on all cores: runs per second, wall time, compilation excluded
  (numba: one thread, then one per core; numpy: one process, then
  ``run_ensemble(..., workers=os.cpu_count())`` including worker start-up);
- ratios to PySD and Simlin, and peak resident memory (``ru_maxrss``).

``--rates`` gives that table for every shipped model and the benchmark's own
(``benchmarks/models``: a three-state race with a lookup and a SMOOTH, and
their scalar twins), numpy and numba on one core and on all, and what the
automatic plan chose. ``--study N`` instead runs an N-sample Richardson study through
:func:`armsdyn.runner.run_chunked` (a :class:`~armsdyn.runner.Reducer` keeping
two numbers per run) and reports its wall time and peak memory, to show that
memory stays bounded whatever the number of samples.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
VARIABLES = {
    "knowledge_engine": ["hardware", "insecurity", "military knowledge"],
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
        if var.kind != "constant":
            continue
        # Every element of a subscripted constant too (they were left out, so that the choice table's
        # subscripted rows before 2026-12-02 timed a single run).
        named = [(var.name, var.default)] if var.default is not None else [
            (var.element_name(e), d) for e, d in zip(var.elements(), var.defaults, strict=False)
        ]  # fmt: skip
        for name, default in named:
            factor = rng.uniform(0.7, 1.3, n) if np.isfinite(default) else np.ones(n)
            values = default * factor
            # Fractions stay fractions (see tests/test_ensemble.py).
            samples[name] = np.minimum(values, 1) if 0 < default <= 1 else values
    return samples


def maxrss_mib(who: int) -> float:
    # Linux reports kibibytes, macOS bytes.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(who).ru_maxrss * scale / 2**20


def memory_line() -> str:
    return (
        f"peak memory: {maxrss_mib(resource.RUSAGE_SELF):.0f} MiB in this process, "
        f"{maxrss_mib(resource.RUSAGE_CHILDREN):.0f} MiB in the largest worker process"
    )


def simlin_rate(path: Path, model, settings, samples: dict[str, np.ndarray], runs: int, variables: list[str]) -> str:
    """Sequential Simlin runs per second, or why Simlin could not run the model."""
    if importlib.util.find_spec("simlin") is None:
        return "not installed (pip install pysimlin)"
    import simlin

    # Simlin takes its time settings from the file: write a copy with the benchmark's.
    text = path.read_text(encoding="utf-8")
    for name, value in (
        ("INITIAL TIME", settings.initial),
        ("FINAL TIME", settings.final),
        ("TIME STEP", settings.step),
        ("SAVEPER", settings.saveper),
    ):
        text = re.sub(rf"^{name}\s*=\s*[^\s~]+", f"{name} = {value!r}", text, flags=re.MULTILINE)
    folder = Path(tempfile.mkdtemp(prefix="armsdyn-bench-simlin-"))
    copy = folder / path.name
    copy.write_text(text, encoding="utf-8")
    try:
        sm = simlin.load(copy)
        names = set(sm.simulate().get_var_names())
    except Exception as exc:  # report, do not fail the benchmark
        return f"could not load the model: {type(exc).__name__}: {exc}"
    by_name = {v.name: v.py_name for v in model.variables.values()}
    params = [n for n in samples if n in by_name and by_name[n] in names]  # scalar constants: Simlin's names
    # Simlin names a subscripted variable's series by element ("arms[usa]").
    outputs = [
        o for v in variables for o in ([by_name[v]] if by_name[v] in names else
                                       sorted(x for x in names if x.startswith(f"{by_name[v]}[")))
    ]  # fmt: skip
    started = time.perf_counter()
    for i in range(runs):
        sim = sm.simulate({by_name[n]: float(samples[n][i]) for n in params})
        sim.run_to_end()
        for name in outputs:
            sim.get_series(name)
    return runs / (time.perf_counter() - started)


def speed(args: argparse.Namespace) -> None:
    os.environ.setdefault("ARMSDYN_CACHE_DIR", str(Path(tempfile.gettempdir()) / "armsdyn-bench-cache"))
    from armsdyn.ensemble import DEFAULT_CHUNK_SIZE, compile_model, run_ensemble
    from armsdyn.model import TimeSettings, load_model

    path = largest_model()
    chunk = args.chunk_size or DEFAULT_CHUNK_SIZE
    started = time.perf_counter()
    model = compile_model(path, backend="numpy")
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
    cores = os.cpu_count() or 1
    print(f"model: {path.name}; {args.years:g} {settings.units} at TIME STEP 1/16; saving {len(variables)} variables")
    print(f"machine: {cores} CPUs; parse and compile: {compile_s:.2f} s")

    # PySD evaluates subscripted equations through xarray (about 100 s a run of the knowledge model);
    # its reference is the scalar twin, the same equations written per state (tests/test_knowledge_states.py).
    twin = ROOT / "tests" / "data" / f"{path.stem}_scalar.mdl"
    pysd_path, pysd_variables, pysd_samples = path, variables, samples
    if twin.is_file():
        pysd_path = twin
        pysd_variables = [f"{v} {s}" if model.variable(v).dims else v for v in variables for s in ("A", "B")]
        pysd_variables = list(dict.fromkeys(pysd_variables))
        # The twin writes element "x[A]" as the variable "x A".
        pysd_samples = {k.replace("[", " ").rstrip("]"): v for k, v in samples.items()}
        print(f"PySD runs the scalar twin {twin.name} (identical results, one equation per state)")
    pysd_model = load_model(pysd_path)
    known = {v.name for v in pysd_model.variables.values()}
    pysd_samples = {k: v for k, v in pysd_samples.items() if k in known}  # the twin has no rivalry matrix
    pysd_model.simulate({}, settings, pysd_variables)  # warm-up: imports and caches
    started = time.perf_counter()
    for i in range(args.pysd_runs):
        pysd_model.simulate({k: float(v[i]) for k, v in pysd_samples.items()}, settings, pysd_variables)
    pysd_s = time.perf_counter() - started
    pysd_rate = args.pysd_runs / pysd_s
    print(f"PySD sequential: {args.pysd_runs} runs in {pysd_s:.2f} s = {pysd_rate:.2f} runs/s")

    simlin = simlin_rate(path, model, settings, samples, args.simlin_runs, variables)
    if isinstance(simlin, str):
        print(f"Simlin: {simlin}")
        simlin_rate_ = None
    else:
        simlin_rate_ = simlin
        print(f"Simlin sequential (pysimlin): {args.simlin_runs} runs = {simlin:.1f} runs/s")

    def report(label: str, runs: int, seconds: float) -> None:
        rate = runs / seconds
        vs_simlin = f", {rate / simlin_rate_:.1f}x Simlin" if simlin_rate_ else ""
        print(
            f"{label}: {runs} runs in {seconds:.2f} s = {rate:.0f} runs/s "
            f"({rate / pysd_rate:.0f}x PySD{vs_simlin}; 100000 runs in {100_000 / rate:.1f} s)"
        )

    backends = args.backends.split(",")
    if "numpy" in backends:
        m = min(n, args.numpy_samples)
        part = {k: v[:m] for k, v in samples.items()}
        model.run({k: v[:8] for k, v in samples.items()}, settings, variables)  # warm-up: code generation
        started = time.perf_counter()
        model.run(part, settings, variables, chunk_size=chunk)
        report("ensemble numpy, 1 core", m, time.perf_counter() - started)
        started = time.perf_counter()
        run_ensemble(path, part, settings, variables, workers=cores, chunk_size=chunk, backend="numpy")
        report(f"ensemble numpy, {cores} processes", m, time.perf_counter() - started)
    if "numba" in backends:
        if importlib.util.find_spec("numba") is None:
            print("ensemble numba: numba is not installed")
        else:
            fast = compile_model(path, backend="numba")
            started = time.perf_counter()
            fast.run({k: v[:8] for k, v in samples.items()}, settings, variables)  # compile (or load the cache)
            print(f"numba kernel compile (or load from the disk cache): {time.perf_counter() - started:.1f} s")
            for threads in sorted({1, cores}):
                fast.threads = threads
                started = time.perf_counter()
                fast.run(samples, settings, variables, chunk_size=chunk)
                label = f"ensemble numba, {threads} thread{'s' if threads > 1 else ''}"
                report(label, n, time.perf_counter() - started)
    print(memory_line())


def study(args: argparse.Namespace) -> None:
    os.environ.setdefault("ARMSDYN_CACHE_DIR", str(Path(tempfile.gettempdir()) / "armsdyn-bench-cache"))
    from armsdyn.ensemble import compile_model
    from armsdyn.runner import Reducer, run_chunked
    from armsdyn.sensitivity import Output

    path = ROOT / "models" / "richardson.mdl"
    model = compile_model(path)
    n = args.study
    samples = samples_for(model, n, seed=1)
    reduce = Reducer(
        outputs=(
            Output("arms X final", variable="arms X", aggregate="final"),
            Output("arms Y final", variable="arms Y", aggregate="final"),
        ),
        fan_variables=("arms X",),
        fan_runs=200,
    )
    workers = args.workers or os.cpu_count() or 1
    print(f"Richardson study: {n} samples, {len(samples)} sampled constants, chunks of {args.study_chunk}, "
          f"{workers} worker(s), backend {model.backend}")  # fmt: skip
    started = time.perf_counter()
    ds = run_chunked(
        path, samples, model.time, ["arms X", "arms Y"], reduce, chunk_size=args.study_chunk, workers=workers
    )
    seconds = time.perf_counter() - started
    print(f"{ds.sizes['run']} runs in {seconds:.1f} s = {ds.sizes['run'] / seconds:.0f} runs/s")
    inputs = sum(v.nbytes for v in samples.values()) / 2**20
    print(f"samples: {inputs:.0f} MiB; reduced result: {ds.nbytes / 2**20:.0f} MiB")
    print(memory_line())


CHOICE_MODES = ("numpy-1p", "numpy-2p", "numba-cold", "numba-warm", "auto-cold", "auto-warm")
"""Columns of the --choices table: numpy in one process and in two (``run_ensemble(workers=2)``);
numba (one process, a thread per core) with an empty kernel cache (compilation included) and with a
filled one; the automatic choice (``backend="auto"``, ``workers=None``: the plan weighs numpy on one
process and on every core against numba's threads, see ``armsdyn.ensemble._choice``) both ways, warm
meaning a later study of the same model (an earlier auto study of the same size ran, and numba ran
2,048 runs: the kernel and both backends' timings are in the cache)."""


def choice_cell(path: Path, n: int, mode: str, cache: str) -> float:
    """Wall seconds of one study of `n` runs of `path` in `mode`, in this (fresh) process."""
    from armsdyn.ensemble import compile_model, run_ensemble

    os.environ["ARMSDYN_CACHE_DIR"] = cache
    backend = mode.split("-")[0]
    model = compile_model(path, backend=backend)
    samples = samples_for(model, n)
    if mode.endswith("warm"):
        # A later study of the same model: an earlier one of the same size ran with "auto", and numba
        # ran 2,048 runs (the kernel cache filled, each backend's speed kept beside the kernel), then a
        # new process is timed.
        if mode.startswith("auto"):
            subprocess_cell(path, n, "auto-cold", cache)
        compile_model(path, backend="numba").run({k: v[:2048] for k, v in samples.items()})
        return float(subprocess_cell(path, n, mode.replace("warm", "cold"), cache))
    workers = 2 if mode == "numpy-2p" else None if backend == "auto" else 1
    start = time.perf_counter()
    run_ensemble(path, samples, workers=workers, backend=backend)
    return time.perf_counter() - start


def subprocess_cell(path: Path, n: int, mode: str, cache: str) -> str:
    import subprocess

    cmd = [sys.executable, __file__, "--cell", str(path), str(n), mode, cache]
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]


def choices(args: argparse.Namespace) -> None:
    """Wall time of studies of every size on every model, in every mode, and the automatic choice's."""
    models = [Path(p) for p in args.models.split(",")] if args.models else [
        *sorted((ROOT / "models").glob("*.mdl")), *sorted((ROOT / "benchmarks" / "models").glob("*.mdl")),
    ]  # fmt: skip
    sizes = [int(float(v)) for v in args.sizes.split(",")]
    print(f"# {os.cpu_count()} CPUs; wall seconds per study; each cell the median of {args.repeats} fresh processes")
    print("| model | runs | " + " | ".join(CHOICE_MODES) + " | cold ratio | warm ratio |")
    print("|---|---:|" + "---:|" * (len(CHOICE_MODES) + 2))
    for path in models:
        for n in sizes:
            # The same call in two fresh processes has differed 1.3-1.9x (benchmarks/README.md): each mode
            # runs --repeats times, the modes in turn (so that a slower spell of the machine meets them
            # all), each time with its own cache, and the median is the mode's time.
            times: dict[str, list[float]] = {mode: [] for mode in CHOICE_MODES}
            for _ in range(args.repeats):
                for mode in CHOICE_MODES:
                    with tempfile.TemporaryDirectory() as cache:
                        times[mode].append(float(subprocess_cell(path, n, mode, cache)))
            cells = {mode: statistics.median(values) for mode, values in times.items()}
            best_cold = min(cells[m] for m in ("numpy-1p", "numpy-2p", "numba-cold"))
            best_warm = min(cells[m] for m in ("numpy-1p", "numpy-2p", "numba-warm"))
            ratios = f"{cells['auto-cold'] / best_cold:.2f} | {cells['auto-warm'] / best_warm:.2f}"
            row = " | ".join(f"{cells[m]:.2f}" for m in CHOICE_MODES)
            print(f"| {path.name} | {n:,} | {row} | {ratios} |", flush=True)


def compile_cost_cell(path: Path) -> str:
    """Lines, kind, measured and estimated CPU seconds of `path`'s numba kernel (stocks and flows), compiled
    in this fresh process with an empty cache; numba is imported first and its import reported apart."""
    os.environ["ARMSDYN_CACHE_DIR"] = tempfile.mkdtemp()
    started = time.process_time()
    import numba  # noqa: F401

    imported = time.process_time() - started
    from armsdyn.ensemble import _engine, compile_model

    model = compile_model(path, backend="numba")
    names = model.default_variables()
    source = model.source(names, "numba")
    estimate = model._compile_estimate(names)
    started = time.process_time()
    model.kernel(names)
    seconds = time.process_time() - started
    kind = "per sample" if _engine._PER_SAMPLE_MARK in source else "blocked"
    lines = len(source.splitlines())
    return f"| {path.name} | {kind} | {lines} | {imported + seconds:.2f} | {estimate:.2f} |"


def delay_chain(folder: Path, k: int) -> Path:
    """A model of `k` chained DELAY Ns feeding stocks: a per-sample kernel of a length that grows with `k`."""
    lines = ["{UTF-8}", "input = 1 + STEP(1, 5) ~ units ~ |", "dtime = 3 ~ Year ~ |", "norder = 3 ~ dmnl ~ |"]
    previous = "input"
    for i in range(k):
        lines += [
            f"d{i} = DELAY N({previous}, dtime, 1, norder) ~ units ~ |",
            f"s{i} = INTEG(d{i} - s{i} / 4, 0) ~ units ~ |",
        ]
        previous = f"d{i}"
    lines += [
        f"{name} ~ Year ~ |" for name in ("INITIAL TIME = 0", "FINAL TIME = 20", "TIME STEP = 0.25", "SAVEPER = 1")
    ]
    path = folder / f"delay_chain_{k}.mdl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def compile_costs(args: argparse.Namespace) -> None:
    """Measured numba compile time (CPU, numba's import included) against the engine's estimate, per model."""
    import subprocess

    shared = ROOT.parent / "shared" / "test-models"
    with tempfile.TemporaryDirectory() as folder:
        models = [
            *sorted((ROOT / "models").glob("*.mdl")),
            *sorted((ROOT / "benchmarks" / "models").glob("*.mdl")),
            *[delay_chain(Path(folder), k) for k in (1, 4, 8, 16)],
            *sorted(p for p in [shared / "subscripted_delays" / "test_subscripted_delays.mdl"] if p.exists()),
        ]
        print("| model | kernel | lines | compile CPU s | estimate s |")
        print("|---|---|---:|---:|---:|")
        for path in models:
            cmd = [sys.executable, __file__, "--compile-cell", str(path)]
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            print(
                done.stdout.strip().splitlines()[-1] if done.returncode == 0 else f"| {path.name} | failed |",
                flush=True,
            )


def best_seconds(run, budget: float = 10.0, repeats: int = 5) -> float:
    """The shortest of up to `repeats` timed calls of `run` (fewer once `budget` seconds are spent).

    One call of a fast model's study takes tens of milliseconds, where a page
    fault storm or the collector moves a single timing by half (measured:
    numba on two threads at half its one-thread speed in one run, twice it in
    the next); the minimum is the backend's speed, the rest is the machine.
    """
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < repeats and (not times or time.perf_counter() - started < budget):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def rates(args: argparse.Namespace) -> None:
    """runs/s of every engine on each model, in one run: the issue 13 table.

    Sequential PySD (until ``--pysd-runs`` runs or 20 s, at least one run) and
    Simlin, the numpy backend in one process and in one per core, the numba
    backend on one thread and on one per core (warm: compilation excluded;
    numba's first call compiles the kernel), and ``run_ensemble(workers=None)``
    (the automatic plan), with what it chose. The plan is timed as a later
    study of the model meets it: after a first automatic study measured numpy
    (its pilot) and numba, kept beside the kernel (the first study's own cost
    is in the ``--choices`` table). Each ensemble cell is the best of five
    calls (see :func:`best_seconds`). Stocks saved; every constant varied +-30 %.
    """
    os.environ.setdefault("ARMSDYN_CACHE_DIR", str(Path(tempfile.gettempdir()) / "armsdyn-bench-cache"))
    models = [Path(p) for p in args.models.split(",")] if args.models else [
        *sorted((ROOT / "models").glob("*.mdl")), *sorted((ROOT / "benchmarks" / "models").glob("*.mdl")),
    ]  # fmt: skip
    n = args.numpy_samples
    cores = os.cpu_count() or 1
    print(f"# {cores} CPUs; {n:,} runs a cell (best of 5 calls or 10 s); PySD up to {args.pysd_runs} runs or 20 s")
    print(f"| model | PySD | Simlin | numpy, 1 process | numpy, {cores} processes | numba, 1 thread "
          f"| numba, {cores} threads | auto (chose) | auto / best |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for path in models:
        print(rate_row(path, n, cores, args.pysd_runs, args.simlin_runs), flush=True)


def rate_row(path: Path, n: int, cores: int, pysd_runs: int, simlin_runs: int) -> str:
    """One row of the :func:`rates` table: `path`'s runs/s in each engine."""
    from armsdyn.ensemble import TimeGrid, compile_model, run_ensemble
    from armsdyn.model import load_model

    base = compile_model(path, backend="numpy")
    names = [v.name for v in base.variables.values() if v.kind == "stock"]
    samples = samples_for(base, n)
    pysd = load_model(path)
    pysd.simulate({}, pysd.time, names)  # warm-up: imports and caches
    started, runs = time.perf_counter(), 0
    while runs < max(1, pysd_runs) and (runs == 0 or time.perf_counter() - started < 20):
        pysd.simulate({k: float(v[runs]) for k, v in samples.items()}, pysd.time, names)
        runs += 1
    cells = [f"{runs / (time.perf_counter() - started):,.2f}"]
    simlin = simlin_rate(path, base, base.time, samples, simlin_runs, names)
    cells.append(f"{simlin:,.0f}" if isinstance(simlin, float) else "-")
    base.run({k: v[:8] for k, v in samples.items()}, variables=names)  # warm-up: code generation
    seconds = {"numpy 1p": best_seconds(lambda: base.run(samples, variables=names))}
    seconds["numpy Np"] = best_seconds(
        lambda: run_ensemble(path, samples, variables=names, workers=cores, backend="numpy")
    )
    for threads in (1, cores):
        try:
            model = compile_model(path, backend="numba")
            model.backend  # noqa: B018 - resolves the backend, raising if it cannot run the model
        except Exception as exc:  # numba not installed, or the model not compiled for it
            seconds[f"numba {threads}t"] = float("nan")
            print(f"# {path.name}: no numba ({type(exc).__name__})", file=sys.stderr)
            continue
        model.threads = threads
        model.run({k: v[:8] for k, v in samples.items()}, variables=names)  # warm (numba compiles here)
        seconds[f"numba {threads}t"] = best_seconds(lambda m=model: m.run(samples, variables=names))
        model.threads = None
    auto = compile_model(path)
    run_ensemble(path, samples, variables=names, workers=None)  # the first study: its pilot measures numpy
    grid = TimeGrid.from_settings(auto.time, path)
    plan = auto.plan(auto.output_names(names), (), grid, n, processes=cores)
    chose = "pilot" if plan is None else f"{plan.backend}, {plan.processes}p"
    seconds["auto"] = best_seconds(lambda: run_ensemble(path, samples, variables=names, workers=None))
    cells += [f"{n / s:,.0f}" if np.isfinite(s) else "-" for key, s in seconds.items() if key != "auto"]
    cells.append(f"{n / seconds['auto']:,.0f} ({chose})")
    best = np.nanmin([s for key, s in seconds.items() if key != "auto"])
    cells.append(f"{seconds['auto'] / best:.2f}")
    return f"| {path.name} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", action="store_true", help="runs/s of every engine on each model (--models)")
    parser.add_argument("--samples", type=int, default=100_000, help="ensemble size (default 100000)")
    parser.add_argument("--numpy-samples", type=int, default=20_000, help="at most this many for numpy (slower)")
    parser.add_argument("--pysd-runs", type=int, default=20, help="sequential PySD runs to time (default 20)")
    parser.add_argument("--simlin-runs", type=int, default=100, help="sequential Simlin runs to time (default 100)")
    parser.add_argument("--backends", default="numpy,numba", help="comma-separated ensemble backends to time")
    parser.add_argument("--years", type=float, default=200.0)
    parser.add_argument("--saveper", type=float, default=1.0)
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--study", type=int, default=0, help="run an N-sample Richardson study instead")
    parser.add_argument("--study-chunk", type=int, default=50_000, help="chunk size of --study")
    parser.add_argument("--workers", type=int, default=None, help="worker processes of --study (default: CPUs)")
    parser.add_argument("--choices", action="store_true", help="the automatic-choice table (see CHOICE_MODES)")
    parser.add_argument("--models", default="", help="comma-separated model files of --rates and --choices")
    parser.add_argument("--sizes", default="1e3,1e4,1e5", help="study sizes of --choices")
    parser.add_argument("--repeats", type=int, default=1, help="fresh processes per --choices cell (median shown)")
    parser.add_argument("--compile-costs", action="store_true", help="numba compile times against their estimate")
    if sys.argv[1:2] == ["--compile-cell"]:
        print(compile_cost_cell(Path(sys.argv[2])))
        return
    if sys.argv[1:2] == ["--cell"]:
        _, path, n, mode, cache = sys.argv[1:]
        print(choice_cell(Path(path), int(n), mode, cache))
        return
    args = parser.parse_args()
    if args.rates:
        rates(args)
    elif args.choices:
        choices(args)
    elif args.compile_costs:
        compile_costs(args)
    elif args.study:
        study(args)
    else:
        speed(args)


if __name__ == "__main__":
    main()

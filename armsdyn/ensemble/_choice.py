"""The automatic choice: which backend, and how many processes, run the rest of a study fastest.

Pure arithmetic on measured costs (no model, no numpy), so that the one rule serves a call in
this process (numpy or numba) and a study that may also share numpy's chunks between processes.
The constants were measured on the project machine (2 cores; ``benchmarks/README.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

NUMBA_SPEEDUP = 3.0
"""numba's kernel against numpy, per sample on one core, until numba's own speed is measured:
at least this (3-7x measured)."""

THREAD_GAIN = 0.65
"""What each further numba thread adds to one thread's speed (the knowledge model: 1.65x on two)."""

WORKER_START = 0.5
"""Seconds before worker processes run: starting interpreters, importing the engine, unpickling
the model and generating its program. Fitted on the quiet 2-core table of 2026-12-02 (numpy on
one process against two: 0.4-0.7 s on triad_lookup, richardson_n and the knowledge model)."""

MIN_PER_THREAD = 64
"""Samples: below this a chunk is not worth sharing between threads."""


@dataclass(frozen=True)
class NumpyCost:
    """numpy's seconds per chunk (Python's work for every time step, whatever the chunk's size)
    and per sample, in one process."""

    per_chunk: float
    per_sample: float


@dataclass(frozen=True)
class Plan:
    """How to run the rest of a study: a backend, the processes that share numpy's chunks, and the
    seconds this is projected to take."""

    backend: str
    processes: int = 1
    seconds: float = 0.0


def pilot_cost(chunks: Sequence[tuple[int, float]]) -> NumpyCost:
    """numpy's cost from the pilot's ``(samples, seconds)`` chunks, of two sizes.

    The two give a line through both times. Measured against full chunks of
    2,048-8,192 samples, the line was within 25 % on six models (under by up
    to 20 % on the largest, whose working set leaves the CPU cache; over on
    cheap ones), where the larger chunk's time per sample scaled up (which
    counts the fixed cost again with every sample) overstated it 1.1-2.8x:
    see ``benchmarks/README.md``. Where the line cannot be drawn (one size,
    or a busy machine made the shorter chunk the slower), all of it counts per
    sample.
    """
    (m1, t1), (m2, t2) = chunks[0], chunks[-1]
    per_sample = (t2 - t1) / (m2 - m1) if m2 != m1 else 0.0
    per_chunk = t1 - per_sample * m1
    if per_sample <= 0.0 or per_chunk < 0.0:
        return NumpyCost(0.0, sum(t for _, t in chunks) / sum(m for m, _ in chunks))
    return NumpyCost(per_chunk, per_sample)


def numpy_seconds(cost: NumpyCost, runs: int, chunk_size: int, processes: int = 1) -> float:
    """Projected seconds of numpy on `runs` samples in chunks of at most `chunk_size`, in `processes`."""
    if runs <= 0:
        return 0.0
    chunks = max(processes, -(-runs // chunk_size))  # processes share the chunks: at least one each
    start = WORKER_START if processes > 1 else 0.0
    return start + cost.per_chunk * -(-chunks // processes) + cost.per_sample * runs / processes


def numba_seconds(per_sample: float, ready: float, runs: int, chunk_size: int, threads: int) -> float:
    """Projected seconds of numba on `runs` samples: `ready` (load or compile) and `per_sample` on one thread."""
    shared = threads if min(runs, chunk_size) >= 2 * MIN_PER_THREAD else 1
    return ready + per_sample * runs / (1 + THREAD_GAIN * (shared - 1))


def choose(
    numpy: NumpyCost,
    runs: int,
    chunk_size: int,
    cpus: int,
    processes: int,
    numba_ready: float | None = None,
    numba_per_sample: float | None = None,
) -> Plan:
    """The fastest plan for `runs` more samples; the fewest processes, and numpy, on a tie.

    Parameters
    ----------
    numpy : NumpyCost
        numpy's cost in one process.
    runs, chunk_size : int
        Samples to run, and the largest chunk.
    cpus : int
        Cores: numba's threads.
    processes : int
        Processes numpy may share the chunks between (1: this process only).
    numba_ready : float, optional
        Seconds before numba can run (0, loading or compiling its kernel);
        None where numba cannot run the model.
    numba_per_sample : float, optional
        numba's measured seconds per sample on `cpus` threads; by default
        numpy's, :data:`NUMBA_SPEEDUP` times faster on each thread.
    """
    options = [Plan("numpy", p, numpy_seconds(numpy, runs, chunk_size, p)) for p in sorted({1, max(1, processes)})]
    if numba_ready is not None:
        if numba_per_sample is None:
            seconds = numba_seconds(numpy.per_sample / NUMBA_SPEEDUP, numba_ready, runs, chunk_size, cpus)
        else:  # measured with the threads that study had: taken as it is
            seconds = numba_ready + numba_per_sample * runs
        options.append(Plan("numba", 1, seconds))
    return min(options, key=lambda plan: plan.seconds)

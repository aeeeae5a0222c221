"""The whole claim audit: sample the uncertainty space, run every claim's scenarios, judge, write."""

from __future__ import annotations

import os
from collections.abc import Sequence

from armsdyn.audit.discovery import AuditResult, evaluate_claims, require_prim
from armsdyn.audit.report import write_audit
from armsdyn.audit.runs import metric_tables, sample
from armsdyn.audit.spec import AuditSpec, load_audit
from armsdyn.errors import ConfigError
from armsdyn.output import now


def audit(
    config_or_experiment: str | os.PathLike[str] | AuditSpec,
    *,
    out: str | os.PathLike[str] | None = None,
    samples: int | None = None,
    force: bool = False,
    workers: int | None = 1,
    chunk_size: int = 8192,
    progress: bool = False,
    command: Sequence[str] | None = None,
) -> AuditResult:
    """Audit the claims of a config over its uncertainty space.

    Parameters
    ----------
    config_or_experiment : path-like or AuditSpec
        An audit config (see the module docstring) or a spec from :func:`load_audit`.
    out : path-like, optional
        Write the ``audit/`` folder here (atomically, with a manifest); nothing
        is written without it.
    samples : int, optional
        Runs (default: the config's ``[audit] samples``).
    force : bool
        Replace an existing folder armsdyn wrote.
    workers : int or None
        Threads sharing the numba kernel's runs, or local processes without numba
        (None: one per CPU); results do not depend on it.
    chunk_size : int
        Samples simulated together.
    progress : bool
        Show a progress bar on stderr.
    command : sequence of str, optional
        The command line recorded in the manifest.

    Returns
    -------
    AuditResult
    """

    started = now()
    spec = config_or_experiment if isinstance(config_or_experiment, AuditSpec) else load_audit(config_or_experiment)
    if samples is not None and samples < 2:
        msg = f"--samples must be at least 2, got {samples}"
        raise ConfigError(msg)
    draws = sample(spec, samples)
    require_prim()
    tables = metric_tables(spec, draws, workers=workers, chunk_size=max(1, chunk_size), progress=progress)
    results = evaluate_claims(spec, draws, tables)
    result = AuditResult(spec, draws, results, tables)
    if out is not None:
        result.folder = write_audit(result, out, force=force, started=started, command=command)
    return result

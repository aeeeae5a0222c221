"""Claim audits and scenario discovery: where in the uncertainty space does each claim hold?

An audit config is an experiment config with three more tables::

    [audit]                         # optional
    samples = 10000                 # runs (default 1024)
    seed = 1984
    sampling = "latin"              # or "sobol" (scrambled Sobol sequence)
    scenario = "disarm"             # default scenario of the claims (default: the first)
    min_density = 0.8               # a PRIM box's share of runs of the outcome it describes
    boxes = 2                       # PRIM boxes per claim and outcome, at most

    [[uncertainties.parameters]]    # the [[sensitivity.parameters]] syntax
    name = "knowledge half life A"
    bounds = [2, 200]
    distribution = "logunif"        # unif, logunif, triang, norm, truncnorm, lognorm
    also = ["knowledge half life B"]

    [[uncertainties.switches]]      # a structural alternative: one of the values, equally likely
    name = "frontier push rate"
    values = [0, 0.05]

    [[claims]]
    name = "disarmament_barely_dampens"
    text = "Removing hardware does not much dampen insecurity (Buzan 1984, s.2)"
    predicate = "dampening efficiency A < 0.5"
    scenario = "disarm_knowledge_persists"   # optional; its baseline is run too

The space is sampled (Latin hypercube or scrambled Sobol, seeded), every
sample runs with the ensemble engine (in each claim's scenario, and in its
baseline when the scenario has one, with the same draws): its numba kernel in
this process when numba is installed (see :func:`numba_model`), else through
:func:`armsdyn.runner.run_chunked`. Each run is reduced to the final values of
the saved variables, and the metrics table of :func:`armsdyn.metrics.compute_metrics` is
computed from them (treaty metrics read only final values, so they are the same
as in a full run; faults are found on the full series). A predicate (see
:mod:`armsdyn.predicates`) names metric columns, model constants, and
``baseline <metric>`` for the same metric in the baseline run.

Per claim the audit reports the share of the space where it holds with a
Wilson 95% interval, PRIM boxes (Friedman and Fisher 1999) where it fails and
where it holds, found by the EMA Workbench's PRIM (Kwakkel 2017): coverage,
density, the peeling trajectory, the restricted dimensions with a quasi-p
value each (Bryant and Lempert 2010); and a CART tree as a second view.

The package's modules, one job each: :mod:`~armsdyn.audit.spec` (the config),
:mod:`~armsdyn.audit.runs` (draws, runs, metrics tables),
:mod:`~armsdyn.audit.discovery` (verdicts, shares, PRIM boxes, CART),
:mod:`~armsdyn.audit.report` (the ``audit/`` folder and ``report.md``) and
:mod:`~armsdyn.audit.figures`; every public name is importable from here.

References
----------
.. [1] Friedman, J. H. and Fisher, N. I. (1999). Bump hunting in high-dimensional
   data. *Statistics and Computing* 9, 123-143. https://doi.org/10.1023/A:1008894516817
.. [2] Bryant, B. P. and Lempert, R. J. (2010). Thinking inside the box.
   *Technological Forecasting and Social Change* 77(1), 34-49.
   https://doi.org/10.1016/j.techfore.2009.08.002
.. [3] Kwakkel, J. H. (2017). The Exploratory Modeling Workbench. *Environmental
   Modelling & Software* 96, 239-250. https://doi.org/10.1016/j.envsoft.2017.06.054
.. [4] Wilson, E. B. (1927). Probable inference, the law of succession, and
   statistical inference. *JASA* 22(158), 209-212.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from armsdyn.audit.discovery import (
    SIGNIFICANCE,
    AuditResult,
    Box,
    ClaimResult,
    box_words,
    cart_view,
    evaluate_claims,
    find_boxes,
    prim_frame,
    require_prim,
    select_box,
    wilson,
)
from armsdyn.audit.figures import box_limits, claim_summary, draw_audit_figures, pair_scatter, tradeoff
from armsdyn.audit.report import report_text, summary_lines, write_audit
from armsdyn.audit.runs import FinalsReducer, metric_tables, numba_model, sample
from armsdyn.audit.spec import (
    AuditSpec,
    Claim,
    Switch,
    constant_values,
    is_baseline_metric,
    is_text_metric,
    load_audit,
    parse_audit,
    predicate_names,
)
from armsdyn.errors import ConfigError
from armsdyn.output import now

__all__ = [
    "SIGNIFICANCE",
    "AuditResult",
    "AuditSpec",
    "Box",
    "Claim",
    "ClaimResult",
    "FinalsReducer",
    "Switch",
    "audit",
    "box_limits",
    "box_words",
    "cart_view",
    "claim_summary",
    "constant_values",
    "draw_audit_figures",
    "evaluate_claims",
    "find_boxes",
    "is_baseline_metric",
    "is_text_metric",
    "load_audit",
    "metric_tables",
    "numba_model",
    "pair_scatter",
    "parse_audit",
    "predicate_names",
    "prim_frame",
    "report_text",
    "sample",
    "select_box",
    "summary_lines",
    "tradeoff",
    "wilson",
    "write_audit",
]


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

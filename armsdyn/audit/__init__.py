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
:mod:`~armsdyn.audit.report` (the ``audit/`` folder and ``report.md``),
:mod:`~armsdyn.audit.figures` and :mod:`~armsdyn.audit.pipeline` (:func:`audit`, the whole
audit); every public name is importable from here, and each is imported from its module on
first use, so validating an audit config (``armsdyn check``) loads no matplotlib.

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

from typing import TYPE_CHECKING

from armsdyn._lazy import lazy_names

if TYPE_CHECKING:  # the names as type checkers see them; at run time __getattr__ imports them
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
    from armsdyn.audit.pipeline import audit
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

#: Where each public name lives: ``armsdyn.audit.NAME`` is ``armsdyn.audit.<module>.NAME``.
_MODULES: dict[str, str] = {
    "SIGNIFICANCE": "discovery",
    "AuditResult": "discovery",
    "Box": "discovery",
    "ClaimResult": "discovery",
    "box_words": "discovery",
    "cart_view": "discovery",
    "evaluate_claims": "discovery",
    "find_boxes": "discovery",
    "prim_frame": "discovery",
    "require_prim": "discovery",
    "select_box": "discovery",
    "wilson": "discovery",
    "box_limits": "figures",
    "claim_summary": "figures",
    "draw_audit_figures": "figures",
    "pair_scatter": "figures",
    "tradeoff": "figures",
    "report_text": "report",
    "summary_lines": "report",
    "write_audit": "report",
    "FinalsReducer": "runs",
    "metric_tables": "runs",
    "numba_model": "runs",
    "sample": "runs",
    "AuditSpec": "spec",
    "Claim": "spec",
    "Switch": "spec",
    "constant_values": "spec",
    "is_baseline_metric": "spec",
    "is_text_metric": "spec",
    "load_audit": "spec",
    "parse_audit": "spec",
    "predicate_names": "spec",
    "audit": "pipeline",
}

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
    "require_prim",
    "sample",
    "select_box",
    "summary_lines",
    "tradeoff",
    "wilson",
    "write_audit",
]


__getattr__, __dir__ = lazy_names(__name__, _MODULES)

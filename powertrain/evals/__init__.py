"""Eval suites: cases x targets x assertions, run through the gateway, stored, compared."""

from powertrain.evals.assertions import (
    ASSERTIONS,
    Outcome,
    Verdict,
    bind_assertions,
    register_assertion,
    score_case,
)
from powertrain.evals.report import render_report
from powertrain.evals.results import (
    CaseDiff,
    TargetSummary,
    compare_runs,
    overall_pass_rate,
    summarize,
)
from powertrain.evals.runner import EvalRunner, expand_targets
from powertrain.evals.suite import (
    Case,
    CaseSource,
    LoadedSuite,
    Suite,
    SuiteError,
    load_suite,
    load_suite_text,
)

__all__ = [
    "ASSERTIONS",
    "Case",
    "CaseDiff",
    "CaseSource",
    "EvalRunner",
    "LoadedSuite",
    "Outcome",
    "Suite",
    "SuiteError",
    "TargetSummary",
    "Verdict",
    "bind_assertions",
    "compare_runs",
    "expand_targets",
    "load_suite",
    "load_suite_text",
    "overall_pass_rate",
    "register_assertion",
    "render_report",
    "score_case",
    "summarize",
]

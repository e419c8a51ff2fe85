"""The report-card evaluation harness (see docs/evaluation.md): suites, registry, scoring.

Plain Python (never imports Django). `rlhf.evaluation` stays the fast pipeline gate; this
package is the full report card: MMLU, SuperGLUE, HELM-style metrics, string, trajectory and
comparison evaluators. Suites live in their own modules and register themselves on import;
`load_suites()` imports the ones present (a module not written yet is skipped, a broken one is
reported as a suite named "<module>:import" with status error).
"""

from __future__ import annotations

import importlib

from rlhf.evals.registry import (
    SUITES,
    DataMissing,
    EvalInputError,
    Metric,
    Suite,
    SuiteConfig,
    SuiteResult,
    register_suite,
    resolve_suites,
    run_report_card,
    run_suite,
    run_suites,
)

SUITE_MODULES = (
    "rlhf.evals.mc", "rlhf.evals.superglue", "rlhf.evals.helm",
    "rlhf.evals.strings", "rlhf.evals.toxicity", "rlhf.evals.trajectory", "rlhf.evals.comparison",
    "rlhf.evals.efficiency",
)

IMPORT_ERRORS: dict[str, str] = {}


def load_suites() -> dict[str, Suite]:
    """Import every suite module that exists (idempotent) and return the registry."""
    for name in SUITE_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # the module exists but one of its imports does not
                IMPORT_ERRORS[name] = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a broken suite module must not take the others down
            IMPORT_ERRORS[name] = f"{type(exc).__name__}: {exc}"
    return SUITES


__all__ = [
    "IMPORT_ERRORS", "SUITES", "DataMissing", "EvalInputError", "Metric", "Suite", "SuiteConfig", "SuiteResult",
    "load_suites", "register_suite", "resolve_suites", "run_report_card", "run_suite", "run_suites",
]

"""The suite registry and the report card (see docs/evaluation.md).

Why a registry: the CLI, the pipeline job and the studio all run "these suites on this model"
and must agree on names, metric keys and what "not run" means. A suite is a function
`fn(ctx, cfg) -> SuiteResult`; it raises `DataMissing` when its data is absent, which becomes
`status="not_run"` with the reason (never a score), and any other exception becomes
`status="error"` while the other suites still run.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rlhf.evals.lm import EvalContext

KINDS = ("mc", "generation", "comparison")
STATUSES = ("ok", "not_run", "error")


class DataMissing(Exception):
    """A suite's data is not on this machine; the message says how to provide it."""


class EvalInputError(ValueError):
    """Bad input to the harness (unknown suite, missing adapter, ...): nothing was run."""


def _num(x: float | None) -> float | None:
    """JSON-safe float (NaN/inf → None)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass
class Metric:
    """One number with its 95 % interval (None when not meaningful) and the items behind it."""

    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    n: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"value": _num(self.value), "ci_low": _num(self.ci_low), "ci_high": _num(self.ci_high),
                "n": int(self.n)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Metric:
        v = d.get("value")
        return cls(float("nan") if v is None else float(v), d.get("ci_low"), d.get("ci_high"), int(d.get("n", 0)))


@dataclass
class SuiteResult:
    suite: str
    status: str  # "ok" | "not_run" | "error"
    metrics: dict[str, Metric] = field(default_factory=dict)
    n: int = 0
    data_hash: str = ""  # sha256 of the data actually used (file bytes + limit + seed)
    seconds: float = 0.0
    reason: str = ""  # for not_run/error: why, and how to provide the data
    details: dict[str, Any] = field(default_factory=dict)  # JSON-safe extras

    def to_dict(self) -> dict[str, Any]:
        return {"suite": self.suite, "status": self.status,
                "metrics": {k: m.to_dict() for k, m in self.metrics.items()},
                "n": int(self.n), "data_hash": self.data_hash, "seconds": round(float(self.seconds), 4),
                "reason": self.reason, "details": _json_safe(self.details)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SuiteResult:
        return cls(suite=d["suite"], status=d["status"],
                   metrics={k: Metric.from_dict(m) for k, m in (d.get("metrics") or {}).items()},
                   n=int(d.get("n", 0)), data_hash=d.get("data_hash", ""), seconds=float(d.get("seconds", 0.0)),
                   reason=d.get("reason", ""), details=d.get("details") or {})


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, float):
        return _num(x)
    if isinstance(x, (str, int, bool)) or x is None:
        return x
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "item"):  # numpy / torch scalars
        return _json_safe(x.item())
    return str(x)


@dataclass
class SuiteConfig:
    limit: int | None = None  # items per suite (per subject where a suite is per subject)
    seed: int = 0
    batch_size: int = 16
    max_new_tokens: int = 48
    few_shot: int | None = None
    options: dict[str, Any] = field(default_factory=dict)


SuiteFn = Callable[["EvalContext", SuiteConfig], SuiteResult]


@dataclass
class Suite:
    name: str
    fn: SuiteFn
    kind: str  # "mc" | "generation" | "comparison"
    description: str
    tags: tuple[str, ...] = ()


SUITES: dict[str, Suite] = {}


def register_suite(name: str, *, kind: str, description: str, tags: tuple[str, ...] = ()) -> Callable[[SuiteFn], SuiteFn]:
    """Register `fn(ctx, cfg) -> SuiteResult` under `name` (lowercase, unique)."""
    if kind not in KINDS:
        raise ValueError(f"suite kind must be one of {KINDS}, got {kind!r}")

    def wrap(fn: SuiteFn) -> SuiteFn:
        if name in SUITES and SUITES[name].fn is not fn:
            raise ValueError(f"suite {name!r} is already registered by {SUITES[name].fn.__module__}")
        SUITES[name] = Suite(name, fn, kind, description, tuple(tags))
        return fn

    return wrap


def resolve_suites(names: Iterable[str] | str) -> list[str]:
    """Expand "all" (and tags written as "tag:<t>") and check names; EvalInputError on unknown ones."""
    from rlhf.evals import load_suites

    load_suites()
    wanted = [names] if isinstance(names, str) else list(names)
    if not wanted:
        raise EvalInputError("no suite given; choose from: all, " + ", ".join(sorted(SUITES)))
    out: list[str] = []
    for name in wanted:
        if name == "all":
            picked = sorted(SUITES)
        elif name.startswith("tag:"):
            picked = sorted(s for s, suite in SUITES.items() if name[4:] in suite.tags)
            if not picked:
                raise EvalInputError(f"no suite has tag {name[4:]!r}")
        elif name in SUITES:
            picked = [name]
        else:
            raise EvalInputError(f"unknown suite {name!r}; choose from: all, " + ", ".join(sorted(SUITES)))
        out.extend(p for p in picked if p not in out)
    return out


def run_suite(name: str, ctx: EvalContext, cfg: SuiteConfig) -> SuiteResult:
    """One suite, never raising: DataMissing → not_run, other exceptions → error."""
    suite = SUITES[name]
    started = time.monotonic()
    try:
        result = suite.fn(ctx, cfg)
    except DataMissing as exc:
        result = SuiteResult(name, "not_run", reason=str(exc))
    except Exception as exc:  # one broken suite must not take the report card down
        result = SuiteResult(name, "error", reason=f"{type(exc).__name__}: {exc}",
                             details={"traceback": traceback.format_exc(limit=6)})
    result.suite = name
    result.seconds = time.monotonic() - started
    return result


def run_suites(names: list[str] | str, ctx: EvalContext, cfg: SuiteConfig,
               progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run the suites in order and return the report card (JSON-safe dict).

    `progress` gets {"suite", "index", "total", "status", "message"} before and after each suite.
    """
    chosen = resolve_suites(names)
    started = time.monotonic()
    suites: dict[str, Any] = {}
    for i, name in enumerate(chosen):
        if progress:
            progress({"suite": name, "index": i, "total": len(chosen), "status": "running",
                      "message": f"{name} ({i + 1}/{len(chosen)})"})
        result = run_suite(name, ctx, cfg)
        suites[name] = result.to_dict()
        if progress:
            progress({"suite": name, "index": i + 1, "total": len(chosen), "status": result.status,
                      "message": f"{name}: {result.status}", "result": suites[name]})
    return {
        "suites": suites,
        "model": ctx.describe(),
        "config": _json_safe(asdict(cfg)),
        "seconds": round(time.monotonic() - started, 3),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def run_report_card(base: str | Path, adapter: str | Path | None, suites: list[str] | str = "all",
                    limit: int | None = None, seed: int = 0,
                    progress: Callable[[dict[str, Any]], None] | None = None,
                    reward_model: str | Path | None = None, compare_adapter: str | Path | None = None,
                    judge: str | Path | None = None, batch_size: int = 16,
                    options: dict[str, Any] | None = None) -> dict[str, Any]:
    """The one function the Django side calls: load the model once, run the suites, return the card.

    Raises EvalInputError (before loading anything) for unknown suites or a missing adapter path.
    """
    from rlhf.evals.lm import EvalContext

    resolve_suites(suites)  # fail fast on bad names
    ctx = EvalContext.create(base, adapter, reward_model=reward_model, compare_adapter=compare_adapter,
                             judge=judge, seed=seed)
    cfg = SuiteConfig(limit=limit, seed=seed, batch_size=batch_size, options=dict(options or {}))
    return run_suites(suites, ctx, cfg, progress)


__all__ = [
    "SUITES", "DataMissing", "EvalInputError", "Metric", "Suite", "SuiteConfig", "SuiteResult",
    "register_suite", "resolve_suites", "run_report_card", "run_suite", "run_suites",
]

"""The gate for an optimised variant: judged against its *source* version, not against the promoted one.

Rule: every quality suite measured on both may drop by at most its tolerance (absolute, on a 0-1 metric),
and the variant must pay for that with speed or size: tokens/s at least `speed_factor` × the source's, or
size on disk at most `size_factor` × the source's (either suffices). A suite that did not run on both
sides is listed, never counted as passed. The Django side stores the verdict like any gate report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from rlhf.optimise.common import OptimiseError

MAIN_METRICS = ("acc", "exact_match", "accuracy", "acc_norm", "rougeL", "win_rate")


@dataclass
class VariantGate:
    quality_tolerance: float = 0.05  # default maximum drop per suite
    per_suite: dict[str, float] = field(default_factory=dict)  # suite -> its own tolerance
    speed_factor: float = 1.2  # variant tokens/s >= factor x source
    size_factor: float = 0.6  # variant bytes <= factor x source

    def __post_init__(self) -> None:
        tolerances = [self.quality_tolerance, *self.per_suite.values()]
        if any(not 0.0 <= t <= 1.0 for t in tolerances):
            raise OptimiseError("quality tolerances must be in [0, 1]")
        if self.speed_factor <= 0 or self.size_factor <= 0:
            raise OptimiseError("speed_factor and size_factor must be positive")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def report_card_quality(card: dict[str, Any]) -> dict[str, float]:
    """{suite: main metric} of a report card (`rlhf.evals.run_report_card`), suites that ran only."""
    out = {}
    for name, res in (card.get("suites") or {}).items():
        if res.get("status") != "ok":
            continue
        metrics = res.get("metrics") or {}
        key = next((k for k in MAIN_METRICS if k in metrics), None)
        if key is not None:
            value = metrics[key]
            out[name] = float(value["value"] if isinstance(value, dict) else value)
    return out


def judge_variant(source: dict[str, Any], variant: dict[str, Any], gate: VariantGate | None = None) -> dict[str, Any]:
    """`source` / `variant`: {"quality": {suite: value}, "tokens_per_s": float, "size_bytes": int}."""
    gate = gate or VariantGate()
    checks, skipped = [], []
    sq, vq = source.get("quality") or {}, variant.get("quality") or {}
    for suite in sorted(set(sq) | set(vq)):
        if suite not in sq or suite not in vq:
            skipped.append(suite)
            continue
        tol = gate.per_suite.get(suite, gate.quality_tolerance)
        drop = sq[suite] - vq[suite]
        checks.append({"suite": suite, "source": sq[suite], "variant": vq[suite], "delta": -drop, "tolerance": tol,
                       "passed": drop <= tol + 1e-12})
    speed = variant["tokens_per_s"] / source["tokens_per_s"] if source.get("tokens_per_s") else None
    size = variant["size_bytes"] / source["size_bytes"] if source.get("size_bytes") else None
    gains = {"speed_ratio": speed, "size_ratio": size,
             "faster": speed is not None and speed >= gate.speed_factor,
             "smaller": size is not None and size <= gate.size_factor}
    quality_ok = bool(checks) and all(c["passed"] for c in checks)
    passed = quality_ok and (gains["faster"] or gains["smaller"])
    reasons = [f"{c['suite']} dropped {-c['delta']:.3f} > {c['tolerance']:.3f}" for c in checks if not c["passed"]]
    if not checks:
        reasons.append("no quality suite measured on both source and variant")
    if not (gains["faster"] or gains["smaller"]):
        reasons.append(f"neither {gate.speed_factor}x faster nor {gate.size_factor}x the size")
    return {"passed": passed, "checks": checks, "skipped": skipped, "gains": gains, "gate": gate.to_dict(),
            "reasons": reasons}


__all__ = ["VariantGate", "judge_variant", "report_card_quality"]

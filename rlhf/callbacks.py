"""Progress callbacks shared by every trainer, and cancellation.

Contract (docs/architecture.md): a trainer calls `callback(event)` with
`{"step": 3, "total": 20, "progress": 0.15, "message": "...", "metrics": {...}}`; the caller
cancels by raising `Cancelled` from the callback, and the trainer removes partial output.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

Callback = Callable[[dict[str, Any]], None]


class Cancelled(Exception):  # noqa: N818 - the contract's name
    """Raised by a caller's callback to stop a training run; partial artefacts are removed."""


def make_event(step: int, total: int, message: str = "", metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """An event in the contract's shape (metrics made JSON-safe: finite floats only)."""
    clean: dict[str, Any] = {}
    for k, v in (metrics or {}).items():
        if isinstance(v, bool) or v is None or isinstance(v, str):
            clean[k] = v
        else:
            try:
                f = float(v)
            except (TypeError, ValueError):
                continue
            clean[k] = f if math.isfinite(f) else None
    progress = min(1.0, step / total) if total > 0 else 0.0
    return {"step": int(step), "total": int(total), "progress": round(progress, 6), "message": message, "metrics": clean}


def emit(callback: Callback | None, step: int, total: int, message: str = "", metrics: dict[str, Any] | None = None) -> None:
    """Send one event if there is a callback (exceptions, including `Cancelled`, propagate)."""
    if callback is not None:
        callback(make_event(step, total, message, metrics))


class ProgressBridge(TrainerCallback):
    """Forwards a `transformers.Trainer`'s steps and logs to our callback.

    One event per optimiser step (progress only) and one per training log, carrying that log's metrics at
    the step they belong to. (The Trainer logs *after* `on_step_end`, so attaching "the latest metrics" to
    step events sent each step the previous log's numbers and repeated them between logs.)
    `Cancelled` raised by the callback propagates out of `trainer.train()`.
    """

    def __init__(self, callback: Callback | None, message: str = "training") -> None:
        self.callback = callback
        self.message = message
        self.last_metrics: dict[str, Any] = {}

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001 - transformers' signature
        metrics = {k: v for k, v in (logs or {}).items() if k != "epoch"}
        if not metrics or "train_runtime" in metrics:  # the end-of-training summary is not a curve point
            return
        self.last_metrics.update(metrics)
        emit(self.callback, state.global_step, state.max_steps, self.message, metrics)

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        emit(self.callback, state.global_step, state.max_steps, self.message)

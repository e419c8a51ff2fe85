"""`python -m rlhf eval --suite NAME|all ...`: a report card from the command line.

Registered through `rlhf.cli.command` (this module is in `rlhf.cli.PLUGIN_MODULES`). Bad input
(unknown suite, missing adapter or base model) exits with code 2 and a message, before any
model is loaded.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rlhf.cli import command

MAIN_METRICS = ("acc", "acc_norm", "exact_match", "rougeL", "bleu", "chrf", "ece", "win_rate", "toxicity_rate",
                "tokens_per_s")


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--suite", action="append", default=[], metavar="NAME",
                   help="suite name, 'all', or 'tag:<tag>' (repeatable); see --list")
    p.add_argument("--list", action="store_true", help="list the registered suites and exit")
    p.add_argument("--base", default="demo", help="base model id or path (default: demo)")
    p.add_argument("--adapter", default=None, help="adapter directory (default: the base alone)")
    p.add_argument("--limit", type=int, default=None, help="items per suite (per subject for MMLU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", type=Path, default=None, help="write the report card JSON here")
    p.add_argument("--reward-model", default=None, help="reward model directory (compare_reward_model)")
    p.add_argument("--compare-adapter", default=None, help="second version for the comparison suites")
    p.add_argument("--judge", default=None, help="judge model (path or id) for compare_judge")


def format_table(card: dict[str, Any]) -> str:
    """One line per suite: status, the main metrics with their 95 % interval, n and seconds."""
    lines = [f"{'suite':24s} {'status':8s} {'n':>6s} {'sec':>7s}  metrics"]
    for name, r in card["suites"].items():
        if r["status"] != "ok":
            lines.append(f"{name:24s} {r['status']:8s} {'':>6s} {r['seconds']:7.1f}  {r['reason'][:100]}")
            continue
        shown = [k for k in r["metrics"] if k in MAIN_METRICS] or [k for k in r["metrics"] if "/" not in k][:4]
        parts = []
        for k in shown:
            m = r["metrics"][k]
            v = "nan" if m["value"] is None else f"{m['value']:.3f}"
            ci = f" [{m['ci_low']:.3f},{m['ci_high']:.3f}]" if m["ci_low"] is not None and m["ci_high"] is not None else ""
            parts.append(f"{k}={v}{ci}")
        lines.append(f"{name:24s} {r['status']:8s} {r['n']:6d} {r['seconds']:7.1f}  {'  '.join(parts)}")
    lines.append(f"total {card['seconds']:.1f}s")
    return "\n".join(lines)


@command("eval", "run evaluation suites (MMLU, BoolQ, HELM-style, ...) and print a report card", _args)
def cmd_eval(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from rlhf.evals import SUITES, EvalInputError, load_suites, resolve_suites
    from rlhf.evals.lm import EvalContext
    from rlhf.evals.registry import SuiteConfig, run_suites

    load_suites()
    if args.list:
        for name, s in sorted(SUITES.items()):
            print(f"{name:24s} {s.kind:10s} {s.description}")
        return 0
    try:
        if args.limit is not None and args.limit < 1:
            raise EvalInputError("--limit must be a positive number of items")
        names = resolve_suites(args.suite or [])
        if args.out is not None and not args.out.parent.is_dir():
            raise EvalInputError(f"--out directory {args.out.parent} does not exist")
        ctx = EvalContext.create(args.base, args.adapter, reward_model=args.reward_model,
                                 compare_adapter=args.compare_adapter, judge=args.judge, seed=args.seed)
    except EvalInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cfg = SuiteConfig(limit=args.limit, seed=args.seed, batch_size=args.batch_size)
    bar = tqdm(total=len(names), desc="eval", unit="suite", dynamic_ncols=True)

    def progress(event: dict[str, Any]) -> None:
        bar.n = event["index"]
        bar.set_description(event["message"], refresh=False)
        bar.refresh()

    try:
        card = run_suites(names, ctx, cfg, progress)
    finally:
        bar.close()
    print(format_table(card))
    if args.out is not None:
        args.out.write_text(json.dumps(card, indent=2))
        print(f"report card written: {args.out}")
    return 0

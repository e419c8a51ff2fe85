"""`python -m rlhf ...`: build the demo model, train adapters, verify artefacts.

Extension point: a module adds a subcommand with `@command("reward-model train", help=...)`
on a function `(args) -> int` plus an `arguments(parser)` hook via `add_arguments=`; the
modules listed in `PLUGIN_MODULES` are imported (when present) before parsing so their
commands register themselves, e.g. `rlhf.reward` → `reward-model train`, `rlhf.ppo` → `ppo`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlhf import SUBJECTS

PLUGIN_MODULES = ("rlhf.reward", "rlhf.ppo", "rlhf.alternatives", "rlhf.evaluation", "rlhf.evals.cli")


@dataclass
class Command:
    name: str  # "demo-model build" → group "demo-model", action "build"; or a single word
    func: Callable[[argparse.Namespace], int]
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None] | None


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str = "", add_arguments: Callable[[argparse.ArgumentParser], None] | None = None):
    """Register a subcommand (one word, or "group action")."""

    def wrap(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = Command(name, func, help, add_arguments)
        return func

    return wrap


class ProgressBar:
    """A tqdm bar driven by our trainer callback events (see rlhf.callbacks)."""

    def __init__(self, desc: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=0, desc=desc, unit="step", dynamic_ncols=True)

    def __call__(self, event: dict[str, Any]) -> None:
        if event["total"] and self.bar.total != event["total"]:
            self.bar.total = event["total"]
        self.bar.n = event["step"]
        shown = {k: f"{v:.4g}" for k, v in event["metrics"].items() if isinstance(v, float)}
        self.bar.set_postfix(dict(list(shown.items())[:3]), refresh=False)
        self.bar.set_description(event["message"] or self.bar.desc, refresh=False)
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


# ---------------------------------------------------------------------------------------------
# demo-model


def _recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", choices=("default", "tiny"), default="default")


@command("demo-model build", "build the bundled demo model (cached by recipe hash)",
         lambda p: (_recipe_args(p), p.add_argument("--force", action="store_true")))
def cmd_demo_build(args: argparse.Namespace) -> int:
    from rlhf.demo_model import DemoRecipe, build_demo_model, demo_path
    from rlhf.manifest import read_manifest

    recipe = DemoRecipe.named(args.recipe)
    cached = demo_path(recipe).exists() and not args.force
    bar = ProgressBar(f"demo model {recipe.recipe_hash()}")
    started = time.monotonic()
    try:
        path = build_demo_model(recipe, force=args.force, callback=bar)
    finally:
        bar.close()
    metrics = read_manifest(path)["metrics"]
    print(f"{'cache hit' if cached else 'built'}: {path} ({time.monotonic() - started:.1f}s)")
    print(json.dumps({"accuracy": metrics.get("accuracy"), "parameters": metrics.get("parameters")}, indent=2))
    return 0


def _ensure_args(p: argparse.ArgumentParser) -> None:
    _recipe_args(p)
    p.add_argument("--steps", type=int, default=None, help="SFT steps per subject adapter")
    p.add_argument("--sloppy-rate", type=float, default=None,
                   help="fraction of sloppy SFT answers in v1, the flaw the loop fixes (default: DEMO_SLOPPY_RATE)")


@command("demo-model ensure", "make sure the demo model and a v1 adapter per subject exist (make demo)", _ensure_args)
def cmd_demo_ensure(args: argparse.Namespace) -> int:
    from rlhf.adapters import (
        DEMO_SLOPPY_RATE,
        AdapterConfig,
        latest_adapter,
        other_base,
        sloppy_rate_of,
        train_sft,
    )
    from rlhf.demo_model import DemoRecipe, build_demo_model
    from rlhf.paths import adapters_dir

    recipe = DemoRecipe.named(args.recipe)
    bar = ProgressBar("demo model")
    try:
        base = build_demo_model(recipe, callback=bar)
    finally:
        bar.close()
    print(f"base model: {base}")
    from rlhf.models import base_fingerprint

    base_sha = base_fingerprint(base)
    sloppy_rate = DEMO_SLOPPY_RATE if args.sloppy_rate is None else args.sloppy_rate
    for subject in SUBJECTS:
        found = latest_adapter(subject)
        if found is not None:
            if trained_on := other_base(found, base_sha):  # the endpoint would refuse it: say so now, with the fix
                print(f"error: {found} was trained on another build of the base model ({trained_on[:12]}, the "
                      f"base is now {base_sha[:12]}). Move {found.parent.parent} aside (or set TUTOR_MODELS_DIR "
                      f"to a fresh directory) and run this again to train new v1 adapters.", file=sys.stderr)
                return 2
            print(f"{subject}: {found} (present)")
            v1 = found.parent / "v1"
            rate = sloppy_rate_of(v1) if v1.is_dir() else None
            if rate is not None and rate != sloppy_rate:  # an older demo's v1: the loop has less (or more) to fix
                print(f"note: {v1} was trained with sloppy_rate {rate} (now {sloppy_rate}); move "
                      f"{found.parent.parent} aside and run this again to train the current demo's v1 adapters.")
            continue
        config = AdapterConfig(sloppy_rate=sloppy_rate, **({} if args.steps is None else {"steps": args.steps}))
        bar = ProgressBar(f"adapter {subject}")
        try:
            out = train_sft(base, subject, adapters_dir(subject) / "v1", config, bar)
        finally:
            bar.close()
        print(f"{subject}: {out} (trained)")
    return 0


def _eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", default=None, help="base model id or path (default: TUTOR_BASE_MODEL or demo)")
    p.add_argument("--adapter", action="append", default=[], metavar="SUBJECT=PATH",
                   help="evaluate SUBJECT with this adapter (repeatable)")
    p.add_argument("--n", type=int, default=60, help="held-out prompts per subject")
    p.add_argument("--subject", choices=SUBJECTS, action="append", help="limit to these subjects")
    p.add_argument("--temperature", type=float, default=None,
                   help="also sample labeling-pool prompts at this temperature and report the well-formed share")


@command("demo-model eval", "per-subject answer-key accuracy (greedy, held-out prompts)", _eval_args)
def cmd_demo_eval(args: argparse.Namespace) -> int:
    from rlhf.adapters import load_policy
    from rlhf.generation import answer_key_accuracy, well_formed_share
    from rlhf.models import load_base

    if args.temperature is not None and not 0.0 < args.temperature <= 5.0:
        raise SystemExit("--temperature must be in (0, 5]")
    adapters = dict(a.split("=", 1) for a in args.adapter)
    bad = set(adapters) - set(SUBJECTS)
    if bad:
        raise SystemExit(f"unknown subject(s) in --adapter: {', '.join(sorted(bad))}")
    results = {}
    for subject in args.subject or SUBJECTS:
        model, tok = load_base(args.base)
        if subject in adapters:
            model = load_policy(model, adapters[subject])
        r = answer_key_accuracy(model, tok, subject, n=args.n)
        results[subject] = {"accuracy": r["accuracy"], "in_format": r["in_format"], "n": r["n"]}
        line = f"{subject:18s} accuracy {r['accuracy']:.2f}  in-format {r['in_format']:.2f}  (n={r['n']})"
        if args.temperature is not None:
            w = well_formed_share(model, tok, subject, temperature=args.temperature, n=args.n)
            results[subject]["well_formed"] = w["well_formed"]
            line += f"  well-formed at T={args.temperature:g} {w['well_formed']:.2f}"
        print(line)
        for ex in r["examples"][:1]:
            print(f"    Q: {ex['question']}\n    A: {ex['reply']!r}  key={ex['key']!r} ok={ex['correct']}")
    print(json.dumps(results))
    return 0


# ---------------------------------------------------------------------------------------------
# sft, verify


def _sft_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--subject", choices=SUBJECTS, required=True)
    p.add_argument("--method", choices=("lora", "prompt_tuning", "qlora"), default="lora")
    p.add_argument("--base", default=None, help="base model id or path (default: TUTOR_BASE_MODEL or demo)")
    p.add_argument("--out", type=Path, default=None, help="adapter directory (default: next version under var/)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--config", type=Path, default=None, help="JSON file with AdapterConfig fields")


@command("sft", "train a subject adapter with TRL's SFT trainer", _sft_args)
def cmd_sft(args: argparse.Namespace) -> int:
    from rlhf.adapters import AdapterConfig, next_version_dir, train_sft

    data: dict[str, Any] = json.loads(args.config.read_text()) if args.config else {}
    data["method"] = args.method
    if args.steps is not None:
        data["steps"] = args.steps
    config = AdapterConfig.from_dict(data)
    out = args.out or next_version_dir(args.subject)
    bar = ProgressBar(f"SFT {args.subject}")
    try:
        path = train_sft(args.base, args.subject, out, config, bar)
    finally:
        bar.close()
    print(f"adapter written: {path}")
    return 0


@command("verify", "check an artefact's files against its manifest",
         lambda p: p.add_argument("path", type=Path))
def cmd_verify(args: argparse.Namespace) -> int:
    from rlhf.manifest import ArtifactError, artifact_sha256, verify

    try:
        manifest = verify(args.path)
    except ArtifactError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"OK {manifest['kind']} {args.path} sha256={artifact_sha256(args.path, check=False)}")
    return 0


# ---------------------------------------------------------------------------------------------


def load_plugins() -> None:
    """Import the optional modules that register more subcommands (missing ones are skipped)."""
    for name in PLUGIN_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                print(f"warning: {name} not loaded ({exc}); its subcommands are unavailable", file=sys.stderr)
        except Exception as exc:  # a broken plugin must not take the other commands down
            print(f"warning: {name} failed to import ({type(exc).__name__}: {exc}); its subcommands are "
                  "unavailable", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rlhf", description="tutorloop ML core")
    sub = parser.add_subparsers(dest="command", required=True)
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, cmd in sorted(COMMANDS.items()):
        words = name.split()
        if len(words) == 1:
            p = sub.add_parser(words[0], help=cmd.help)
        else:
            if words[0] not in groups:
                g = sub.add_parser(words[0], help=f"{words[0]} commands")
                groups[words[0]] = g.add_subparsers(dest="action", required=True)
            p = groups[words[0]].add_parser(words[1], help=cmd.help)
        if cmd.add_arguments:
            cmd.add_arguments(p)
        p.set_defaults(_func=cmd.func)
    return parser


def quiet_libraries() -> None:
    """Our own tqdm bars show progress; silence the libraries' per-map bars and info logs."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


LIGHT_COMMANDS = ("verify",)  # need neither the plugins nor torch: start fast


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not (argv and argv[0] in LIGHT_COMMANDS):
        load_plugins()
        quiet_libraries()
    args = build_parser().parse_args(argv)
    return int(args._func(args) or 0)

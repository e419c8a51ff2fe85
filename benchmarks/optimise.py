"""Distilled, quantised and pruned variants of the demo model against their source, in one table.

Not a test. Builds every variant from the source (the demo base and each subject's latest adapter, i.e.
v1 as `ensure` makes it, or the promoted one on disk) with `rlhf.optimise`, then measures each in a fresh
process of its own (so resident memory is the variant's alone), through the endpoint's own decode loop
(`serving.engine.BloomRunner`, the adapters applied in fp32 on top of the base):

- size on disk of the base (+ adapters); resident memory: the growth of the process's RSS from just
  before loading the model (torch, transformers and torchao already imported) to after serving;
- tokens/s and p50/p95 request latency with `--concurrency` requests decoding together (greedy,
  exactly `--new-tokens` tokens each: EOS is ignored, so every variant does the same work);
- quality: answer-key accuracy (greedy, 48 tokens, `--n` held-out questions per subject) over the
  four subjects and on mathematics alone (a distilled student is one subject's: its row has only that).

Ratios are to the source measured in the same run.

    .venv/bin/python benchmarks/optimise.py                       # demo model
    .venv/bin/python benchmarks/optimise.py --base-model demo:tiny --n 8 --quick
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

SUBJECTS = ("history", "mathematics", "language", "general_knowledge")


# ---- one variant, measured in its own process: rlhf.optimise.measure (the gate job measures the same way) ----

def run_child(spec: dict) -> dict:
    from rlhf.optimise.measure import MeasureSpec, measure

    out = measure(MeasureSpec(**spec))
    # the table below reads seconds and the per-subject accuracies
    return out | {"accuracy": out["accuracy_by_subject"], "p50_s": out["p50_ms"] / 1000, "p95_s": out["p95_ms"] / 1000,
                  "max_rss_mb": out["rss_mb"]}


# ---- building the variants --------------------------------------------------------------------------

def build(args, work: Path) -> list[dict]:
    from tqdm import tqdm

    from rlhf.adapters import latest_adapter
    from rlhf.models import resolve_base_path
    from rlhf.optimise.common import dir_size
    from rlhf.optimise.distil import DistilConfig, distil
    from rlhf.optimise.prune import PruneConfig, prune
    from rlhf.optimise.quantise import QuantiseConfig, quantise

    base = resolve_base_path(args.base_model)
    adapters = {s: p for s in SUBJECTS if (p := latest_adapter(s, args.adapters_dir)) is not None}
    if not adapters:
        sys.exit(f"no adapters under {args.adapters_dir or 'var/models/adapters'}: run `python -m rlhf ensure` first")
    ad_size = sum(dir_size(p) for p in adapters.values())
    rows = [{"name": "source fp32", "base": str(base), "adapters": {k: str(v) for k, v in adapters.items()},
             "size": dir_size(base) + ad_size, "build_s": 0.0, "notes": ""}]
    steps = ["quantise", "unstructured 30", "unstructured 50", "unstructured 70", "structured 50", "distil layers",
             "distil adapter"]
    if args.quick:
        steps = ["quantise", "unstructured 50", "structured 50", "distil layers"]
    if args.variants:
        steps = [v.strip() for v in args.variants.split(",") if v.strip()]
    bar = tqdm(steps, desc="building variants", unit="variant")
    for step in bar:
        bar.set_postfix_str(step)
        t0 = time.perf_counter()
        if step == "quantise":
            r = quantise(base, work / "q", QuantiseConfig(scheme="int8_weight_only"), adapters=adapters,
                         adapters_out=work / "q-ad")
            size = dir_size(r["base"]) + sum(dir_size(p) for p in r["adapters"].values())
            for scheme in ("int8_weight_only", "dynamic_int8"):
                rows.append({"name": f"int8 {scheme}", "base": r["base"], "adapters": r["adapters"], "size": size,
                             "scheme": scheme, "build_s": time.perf_counter() - t0, "notes": ""})
        elif step.startswith("unstructured"):
            sp = int(step.split()[1]) / 100
            r = prune(base, work / f"u{sp}", PruneConfig(sparsity=sp, recovery_steps=0), adapters=adapters,
                      adapters_out=work / f"u{sp}-ad")
            m = r["metrics"]
            rows.append({"name": f"pruned L1 {sp:.0%}", "base": r["base"], "adapters": r["adapters"],
                         "size": dir_size(r["base"]) + ad_size, "build_s": time.perf_counter() - t0,
                         "notes": f"real sparsity {m['real_sparsity']:.4f}; |w|<1e-3 before: "
                                  f"{m['before_near_zero_0.001']:.2%}, <1% rms: {m['before_near_zero_1pct_rms']:.2%}"})
        elif step == "structured 50":
            cfg = PruneConfig(mode="structured", sparsity=0.5, recovery_steps=args.recovery_steps)
            r0 = prune(base, work / "s-norec", PruneConfig(mode="structured", sparsity=0.5, recovery_steps=0),
                       adapters=adapters, adapters_out=work / "s-norec-ad")
            rows.append({"name": "MLP -50% (no recovery)", "base": r0["base"], "adapters": r0["adapters"],
                         "size": dir_size(r0["base"]) + ad_size, "build_s": time.perf_counter() - t0, "notes": ""})
            t0 = time.perf_counter()
            r = prune(base, work / "s", cfg, adapters=adapters, adapters_out=work / "s-ad")
            am = r["adapter_metrics"]
            rows.append({"name": f"MLP -50% + LoRA {args.recovery_steps} steps", "base": r["base"],
                         "adapters": r["adapters"], "size": dir_size(r["base"]) + ad_size,
                         "build_s": time.perf_counter() - t0,
                         "notes": "held-out loss before->after recovery: " + ", ".join(
                             f"{s[:4]} {v['heldout_loss_before_recovery']:.3f}->{v['heldout_loss_after_recovery']:.3f}"
                             for s, v in am.items())})
        elif step == "distil layers":
            r = distil(base, adapters["mathematics"], work / "student",
                       DistilConfig(steps=args.distil_steps, temperature=args.temperature, alpha=args.alpha))
            m = r["metrics"]
            rows.append({"name": "distilled: every other layer", "base": r["path"], "adapters": {},
                         "size": dir_size(r["path"]), "build_s": time.perf_counter() - t0, "only": "mathematics",
                         "notes": f"maths only; held-out KL {m['heldout_kl_before']:.3f}->{m['heldout_kl_after']:.3f}, "
                                  f"CE {m['heldout_ce_before']:.3f}->{m['heldout_ce_after']:.3f}"})
        elif step == "distil adapter":
            r = distil(base, adapters["mathematics"], work / "student-ad" / "mathematics" / "v2",
                       DistilConfig(mode="adapter", student_rank=2, steps=args.distil_steps,
                                    temperature=args.temperature, alpha=args.alpha), version=2)
            ads = dict(adapters) | {"mathematics": Path(r["path"])}
            m = r["metrics"]
            rows.append({"name": "distilled: maths LoRA r=2", "base": str(base), "adapters": ads,
                         "size": dir_size(base) + sum(dir_size(p) for p in ads.values()),
                         "build_s": time.perf_counter() - t0, "notes": f"maths adapter {dir_size(r['path'])} B vs "
                         f"{dir_size(adapters['mathematics'])} B; held-out KL {m['heldout_kl_before']:.4f}->"
                         f"{m['heldout_kl_after']:.4f}"})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-model", default="demo")
    p.add_argument("--adapters-dir", default=None, help="default: var/models/adapters")
    p.add_argument("--n", type=int, default=30, help="held-out questions per subject for accuracy")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--recovery-steps", type=int, default=30)
    p.add_argument("--distil-steps", type=int, default=150)
    p.add_argument("--temperature", type=float, default=2.0)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--quick", action="store_true", help="fewer variants")
    p.add_argument("--variants", default="", help="comma-separated subset, e.g. 'quantise,unstructured 50'")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args()
    from tqdm import tqdm

    with tempfile.TemporaryDirectory(prefix="optimise-bench-") as tmp:
        rows = build(args, Path(tmp))
        for row in tqdm(rows, desc="measuring", unit="variant"):
            subjects = [row["only"]] if row.get("only") else list(SUBJECTS)
            spec = {"name": row["name"], "base": row["base"], "adapters": row["adapters"], "scheme": row.get("scheme"),
                    "subjects": subjects, "n": args.n, "concurrency": args.concurrency,
                    "new_tokens": args.new_tokens, "rounds": args.rounds, "threads": args.threads}
            row.update(run_child(spec))
    src = rows[0]
    src_mean = statistics.mean(src["accuracy"].values())
    head = (f"{'variant':34} {'size KB':>8} {'x':>5} {'+RSS MB':>7} {'x':>5} {'tok/s':>7} {'x':>5} {'p50 ms':>7} "
            f"{'p95 ms':>7} {'acc4':>5} {'d':>6} {'maths':>5} {'d':>6}")
    print(f"\nbase {args.base_model}; concurrency {args.concurrency}, {args.new_tokens} tokens/request, "
          f"{args.threads} thread(s); accuracy on {args.n} held-out questions/subject (greedy)\n")
    print(head)
    print("-" * len(head))
    for r in rows:
        acc4 = statistics.mean(r["accuracy"].values()) if not r.get("only") else None
        maths = r["accuracy"].get("mathematics")
        print(f"{r['name'][:34]:34} {r['size'] / 1024:8.0f} {r['size'] / src['size']:5.2f} {r['max_rss_mb']:7.1f} "
              f"{r['max_rss_mb'] / max(src['max_rss_mb'], 1e-9):5.2f} {r['tokens_per_s']:7.0f} "
              f"{r['tokens_per_s'] / src['tokens_per_s']:5.2f} {r['p50_s'] * 1000:7.1f} {r['p95_s'] * 1000:7.1f} "
              + (f"{acc4:5.2f} {acc4 - src_mean:+6.2f} " if acc4 is not None else f"{'-':>5} {'':>6} ")
              + f"{maths:5.2f} {maths - src['accuracy']['mathematics']:+6.2f}")
    print()
    for r in rows:
        if r["notes"]:
            print(f"{r['name']}: {r['notes']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2, default=str))


if __name__ == "__main__":
    main()

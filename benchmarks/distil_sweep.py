"""Sweep distillation's temperature T and soft-label weight α on the demo model, to choose DistilConfig's defaults.

Not a test. Distils the subject's teacher (the demo base + the subject's latest adapter) into the default
`layers` student (every other teacher layer) once per (T, α), same seed and data order, then scores every
student on the same held-out set with metrics that do not depend on T or α (distil's own `heldout_kl_*`
is taken at the run's T, so it cannot be compared across temperatures):

- KL(teacher ‖ student) at T = 1 (the distribution the endpoint samples from), over the reference
  answer tokens of `--heldout` held-out corpus questions (`rlhf.corpus.eval_prompts`, never trained on);
- CE of the student on those reference answers (the hard-label loss);
- answer-key accuracy: greedy, 48 tokens, `--n` held-out questions, through the endpoint's own decode loop
  (`rlhf.optimise.measure.measure_here`, in this process: only its accuracy is used here).

The teacher's own CE and accuracy are printed first; "init" is the student before any training.

    .venv/bin/python benchmarks/distil_sweep.py                                   # T in 1,2,4 x alpha in .25,.5,.9
    .venv/bin/python benchmarks/distil_sweep.py --steps 30 --temperatures 1,2 --alphas 0.5
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def heldout_rows(tok, subject: str, n: int) -> list[dict[str, str]]:
    from rlhf.chat import build_prompt
    from rlhf.corpus import eval_prompts

    return [{"prompt": build_prompt(tok, subject, [{"role": "user", "content": it.question}]),
             "completion": it.answer} for it in eval_prompts(subject, n, 3)]


def score(model, teacher, held, pad: int, batch: int = 16) -> dict[str, float]:
    """Mean KL(teacher ‖ model) at T=1 and CE on the reference tokens, weighted by batch (as distil does)."""
    import torch

    from rlhf.optimise.common import collate
    from rlhf.optimise.distil import distillation_loss

    parts = []
    model.eval()
    with torch.no_grad():
        for i in range(0, len(held), batch):
            ids, mask, labels = collate(held[i:i + batch], pad)
            s = model(input_ids=ids, attention_mask=mask).logits
            t = teacher(input_ids=ids, attention_mask=mask).logits
            parts.append(distillation_loss(s, t, labels, 1.0, 0.0)[1])
    return {k: sum(p[k] for p in parts) / len(parts) for k in ("kl", "ce")}


def accuracy(base: str, adapters: dict[str, str], subject: str, n: int, threads: int) -> float:
    from rlhf.optimise.measure import MeasureSpec, measure_here

    spec = MeasureSpec(base=base, adapters=adapters, subjects=[subject], n=n, concurrency=1, new_tokens=1, rounds=1,
                       threads=threads)
    return measure_here(spec)["accuracy"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base-model", default="demo")
    p.add_argument("--adapters-dir", default=None)
    p.add_argument("--subject", default="mathematics")
    p.add_argument("--temperatures", default="1,2,4")
    p.add_argument("--alphas", default="0.25,0.5,0.9")
    p.add_argument("--steps", type=int, default=150, help="distillation steps per run (DistilConfig default: 150)")
    p.add_argument("--heldout", type=int, default=48, help="held-out dialogues for KL and CE")
    p.add_argument("--n", type=int, default=40, help="held-out questions for answer-key accuracy")
    p.add_argument("--seeds", default="0", help="DistilConfig seeds per (T, alpha); the table shows their mean")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args(argv)

    import torch
    from tqdm import tqdm

    from rlhf.adapters import latest_adapter
    from rlhf.models import load_base, resolve_base_path
    from rlhf.optimise.common import encode_pairs
    from rlhf.optimise.distil import DistilConfig, _teacher, distil, student_from_teacher

    torch.set_num_threads(args.threads)
    base = resolve_base_path(args.base_model)
    adapter = latest_adapter(args.subject, args.adapters_dir)
    if adapter is None:
        sys.exit(f"no {args.subject} adapter: run `python -m rlhf demo-model ensure` first")
    temps = [float(t) for t in args.temperatures.split(",")]
    alphas = [float(a) for a in args.alphas.split(",")]

    teacher = _teacher(base, adapter)
    _, tok = load_base(base, device="cpu")
    held = encode_pairs(tok, heldout_rows(tok, args.subject, args.heldout), DistilConfig().max_length)
    pad = tok.pad_token_id
    t_score = score(teacher, teacher, held, pad)
    rows = [{"name": "teacher", "T": None, "alpha": None, "kl": 0.0, "ce": t_score["ce"],
             "acc": accuracy(str(base), {args.subject: str(adapter)}, args.subject, args.n, args.threads), "s": 0.0}]
    init = student_from_teacher(teacher, DistilConfig().layers_for(teacher.config.n_layer))
    rows.append({"name": "init", "T": None, "alpha": None, **score(init, teacher, held, pad), "acc": None, "s": 0.0})
    del init

    seeds = [int(x) for x in args.seeds.split(",")]
    grid = [(t, a, seed) for t in temps for a in alphas for seed in seeds]
    runs = []
    bar = tqdm(grid, desc="distil sweep", unit="run")
    with tempfile.TemporaryDirectory(prefix="distil-sweep-") as tmp:
        for i, (t, a, seed) in enumerate(bar):
            bar.set_postfix_str(f"T={t:g} alpha={a:g} seed={seed}")
            t0 = time.perf_counter()
            cfg = DistilConfig(temperature=t, alpha=a, steps=args.steps, seed=seed)
            out = distil(base, adapter, Path(tmp) / f"s{i}", cfg)
            took = time.perf_counter() - t0
            student, _ = load_base(out["path"], device="cpu")
            runs.append({"T": t, "alpha": a, "seed": seed, **score(student, teacher, held, pad),
                         "acc": accuracy(out["path"], {}, args.subject, args.n, args.threads), "s": took})
            del student
            shutil.rmtree(out["path"], ignore_errors=True)
    for t in temps:
        for a in alphas:
            mine = [r for r in runs if r["T"] == t and r["alpha"] == a]
            rows.append({"name": "student", "T": t, "alpha": a, "runs": mine,
                         **{k: statistics.mean(r[k] for r in mine) for k in ("kl", "ce", "acc", "s")}})

    print(f"\n{args.subject}: teacher {base.name} + {adapter.name}; student = every other layer; {args.steps} steps; "
          f"KL/CE on {len(held)} held-out dialogues; accuracy on {args.n} held-out questions; "
          f"mean of seeds {seeds}")
    head = f"{'run':<10}{'T':>5}{'alpha':>7}{'KL(T=1)':>10}{'CE':>8}{'acc':>7}{'acc per seed':>16}{'train s':>9}"
    print(head + "\n" + "-" * len(head))
    for r in rows:
        acc = "-" if r["acc"] is None else f"{r['acc']:.3f}"
        t = "" if r["T"] is None else f"{r['T']:g}"
        a = "" if r["alpha"] is None else f"{r['alpha']:g}"
        per = " ".join(f"{x['acc']:.2f}" for x in r.get("runs", []))
        print(f"{r['name']:<10}{t:>5}{a:>7}{r['kl']:>10.4f}{r['ce']:>8.4f}{acc:>7}{per:>16}{r['s']:>9.1f}")
    students = [r for r in rows if r["name"] == "student"]
    best_kl = min(students, key=lambda r: r["kl"])
    best_acc = max(students, key=lambda r: (r["acc"], -r["kl"]))
    print(f"\nlowest KL: T={best_kl['T']:g} alpha={best_kl['alpha']:g}; "
          f"best accuracy: T={best_acc['T']:g} alpha={best_acc['alpha']:g}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Evaluation-harness benchmark: one suite (an MMLU subset, 0-shot) through our harness and through
lm-evaluation-harness, on the same model object and the same rows, in one process.

Prints both wall times, both accuracies (they must be equal: same scoring), and the ratio, for
our scorer with and without the shared-prefix KV-cache reuse. Not a test: run by hand,

    .venv/bin/python benchmarks/evaluation.py [--base demo:tiny|demo|PATH] [--adapter PATH] [--per-subject 4]
                                              [--shots 0] [--batch-size 16] [--threads 2]

Both sides get the same loaded torch model (lm-eval's HFLM wraps our instance), so model
loading is outside both timings; lm-eval reads the rows from a custom task YAML on a local
JSONL file written here (its `mmlu` template, same description per subject).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

TEMPLATE = """task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {test}
    dev: {dev}
test_split: test
fewshot_split: dev
fewshot_config:
  sampler: first_n
output_type: multiple_choice
description: "The following are multiple choice questions (with answers) about {subject_text}.\\n\\n"
doc_to_text: "{{{{question.strip()}}}}\\nA. {{{{choices[0]}}}}\\nB. {{{{choices[1]}}}}\\nC. {{{{choices[2]}}}}\\nD. {{{{choices[3]}}}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="demo:tiny")
    ap.add_argument("--adapter", default=None)
    ap.add_argument("--per-subject", type=int, default=4, help="MMLU test rows per subject (10 subjects)")
    ap.add_argument("--shots", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from rlhf.evals.lm import EvalContext, EvalModel
    from rlhf.evals.mc import mc_metrics, mmlu_items, mmlu_rows, mmlu_shots, score_items
    from rlhf.evals.registry import SuiteConfig

    rows, _ = mmlu_rows(args.per_subject, 0)
    shots = mmlu_shots(args.shots) if args.shots else None
    items = mmlu_items(rows, shots)
    model = EvalModel(args.base, args.adapter, seed=0)
    ctx = EvalContext(model)
    print(f"model {model.base_path.name} adapter={args.adapter} | {len(items)} MMLU items, {args.shots}-shot, "
          f"{len(items) * 4} (context, choice) pairs, batch {args.batch_size}, {args.threads} threads")

    model.loglikelihood([(items[0].context, " A")])  # warm-up (first forward pass allocations), untimed
    ours: dict[str, tuple[float, float]] = {}
    for label, share in (("ours (default: shared rows)", None), ("ours (KV reuse per question)", True)):
        t0 = time.perf_counter()
        scored = score_items(ctx, items, SuiteConfig(batch_size=args.batch_size, options={"share_prefix": share}))
        ours[label] = (time.perf_counter() - t0, mc_metrics(scored)[0]["acc"].value)

    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    by_subject: dict[str, list[dict]] = {}
    for r in rows:
        by_subject.setdefault(r["subject"], []).append(r)
    with tempfile.TemporaryDirectory() as tmp:
        tasks = []
        for subject, srows in by_subject.items():
            test, dev = Path(tmp) / f"{subject}.jsonl", Path(tmp) / f"{subject}-dev.jsonl"
            test.write_text("".join(json.dumps(r) + "\n" for r in srows))
            dev.write_text("".join(json.dumps(r) + "\n" for r in (shots or {}).get(subject, srows[:1])))
            task = f"bench_{subject}"
            (Path(tmp) / f"{task}.yaml").write_text(TEMPLATE.format(task=task, test=test, dev=dev,
                                                                    subject_text=subject.replace("_", " ")))
            tasks.append(task)
        lm = HFLM(pretrained=model.model, tokenizer=model.tokenizer, batch_size=args.batch_size, device="cpu")
        from lm_eval.api.instance import Instance

        reqs = [Instance("loglikelihood", {}, (it.context, cont), i)
                for i, it in enumerate(items) for cont in it.continuations()]
        t0 = time.perf_counter()
        direct = lm.loglikelihood(reqs, disable_tqdm=True)
        lm_score_seconds = time.perf_counter() - t0
        k = 0
        direct_ok = []
        for it in items:
            lls = [d[0] for d in direct[k:k + 4]]
            direct_ok.append(max(range(4), key=lls.__getitem__) == it.gold)
            k += 4
        t0 = time.perf_counter()
        out = lm_eval.simple_evaluate(model=lm, tasks=tasks, task_manager=TaskManager(include_path=tmp),
                                      num_fewshot=args.shots, random_seed=0, numpy_random_seed=0,
                                      torch_random_seed=0, verbosity="ERROR")
        lm_seconds = time.perf_counter() - t0
    n_total = sum(len(v) for v in by_subject.values())
    lm_acc = sum(out["results"][f"bench_{s}"]["acc,none"] * len(v) for s, v in by_subject.items()) / n_total

    print(f"{'':28s} {'seconds':>9s} {'acc':>7s} {'vs lm-eval scoring':>19s} {'vs simple_evaluate':>19s}")
    print(f"{'lm-eval simple_evaluate':28s} {lm_seconds:9.2f} {lm_acc:7.4f} {'':>19s} {1.0:19.2f}")
    lm_direct_acc = sum(direct_ok) / len(direct_ok)
    print(f"{'lm-eval HFLM.loglikelihood':28s} {lm_score_seconds:9.2f} {lm_direct_acc:7.4f} {1.0:19.2f}"
          f" {lm_seconds / lm_score_seconds:19.2f}")
    for label, (sec, acc) in ours.items():
        print(f"{label:28s} {sec:9.2f} {acc:7.4f} {lm_score_seconds / sec:19.2f} {lm_seconds / sec:19.2f}")
    same = all(abs(acc - lm_acc) < 1e-9 for _, acc in ours.values()) and abs(lm_direct_acc - lm_acc) < 1e-9

    # Multi-token choices (lm-eval's mmlu_continuation style: the answer texts are the continuations):
    # here one row per choice repeats the whole question 4 times, and KV-cache reuse can pay.
    from rlhf.evals.mc import MCItem

    text_items = [MCItem(it.context, list(r["choices"]), it.gold) for it, r in zip(items, rows, strict=True)]
    print(f"\nmulti-token choices (answer texts as continuations), {len(text_items) * 4} pairs:")
    accs = {}
    for label, share in (("ours (default: row per choice)", False), ("ours (KV reuse per question)", True)):
        t0 = time.perf_counter()
        scored = score_items(ctx, text_items, SuiteConfig(batch_size=args.batch_size, options={"share_prefix": share}))
        sec = time.perf_counter() - t0
        accs[label] = mc_metrics(scored)[0]["acc"].value
        print(f"{label:28s} {sec:9.2f} {accs[label]:7.4f}")
    t0 = time.perf_counter()
    lm.loglikelihood([Instance("loglikelihood", {}, (it.context, cont), i)
                      for i, it in enumerate(text_items) for cont in it.continuations()], disable_tqdm=True)
    print(f"{'lm-eval HFLM.loglikelihood':28s} {time.perf_counter() - t0:9.2f}")
    same = same and len(set(accs.values())) == 1
    print(f"accuracy equal to lm-eval's: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""The closed loop on the demo model: wall time from new preference pairs to a promoted version, and whether
the promoted version is better by the simulated labelers' hidden preference (issue 16's goal).

    .venv/bin/python benchmarks/loop.py [--pairs 500] [--runs 1] [--seed 0] [--subjects all four]
                                        [--json PATH] [--keep] [--base demo]

    # issue 16's goal check: three fresh runs, seeds 0, 1, 2, 500 pairs each, the default settings
    .venv/bin/python benchmarks/loop.py --runs 3 --json var/bench-loop/goal.json

A run is fresh: its own database under ``var/bench-loop/`` (or ``TUTOR_VAR_DIR``), no datasets, no reward
models, the adapters back to v1 (copied from ``var/models/adapters`` when they fit the base, else trained)
and a new endpoint process serving v1. Run ``i`` uses seed ``--seed + i`` for every random source: the
labeling prompt pool (corpus seed ``3 + seed``: 3 at seed 0, the pool of the runs measured before), the
simulated labelers' noise (``random.Random(seed)``), the endpoint's sampling (``FEEDBACK_SEED``), and the
pipeline's ``reward``, ``ppo``, ``alt`` and ``eval`` seeds (the last one draws the gate's held-out
questions). The same seed gives the same pairs: each run prints a digest of its rankings to compare.
``--config`` overrides any of it.

Per run: comparison tasks sampled from the endpoint (K=4), ranked by 2 simulated labelers (the hidden
preference of ``training/simulation.py``, noise 0.1) until the new pairs reach ``--pairs`` (timed: the
pairs phase); then the pipeline in this process with the default configs (``training.pipeline.run_inline``,
timed per step: snapshot → reward model → PPO per subject → gate → canary → promote; the target is
< 10 minutes on 2 CPU cores). Then, not part of the loop, the gate's held-out answers are scored by the
hidden preference, which training never sees. The report keeps one answer per question, so the benchmark
answers the gate's questions again with the gate's config and seed (the same answers: it checks the first
one of each question against the report) to have all ``samples_per_prompt`` answers; ``--stored-answers``
scores only the report's ones.

Per subject: the mean hidden score of the candidate's and of v1's answers; the per-prompt win rate (over
held-out questions, the share where the candidate's mean hidden score over its answers is higher than
v1's, a tie counting half); answer-key accuracy of both and whether the gate found it non-inferior; the
verdict. The summary checks each run against the goal: the candidate beats v1 (a higher mean hidden score)
in at least 3 of 4 subjects (3/4 of the subjects run), a win rate >= 0.60 in each of those, accuracy
non-inferior in all.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 600.0
GOAL_BEATS = 0.75  # the candidate beats v1 in at least 3 of 4 subjects
GOAL_WIN_RATE = 0.60  # per-prompt win rate in each subject it beats v1
POOL_SEED = 3  # the labeling pool's corpus seed at --seed 0
ALL_SUBJECTS = "mathematics,history,language,general_knowledge"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=500)
    ap.add_argument("--subjects", default=ALL_SUBJECTS, help="comma-separated (default: all four)")
    ap.add_argument("--seed", type=int, default=0, help="the first run's seed; run i uses seed + i")
    ap.add_argument("--runs", type=int, default=1, help="fresh runs, one after the other")
    ap.add_argument("--config", default="{}", help="JSON overrides of the pipeline config (merged per section)")
    ap.add_argument("--json", type=Path, help="write the per-run, per-subject results here")
    ap.add_argument("--stored-answers", action="store_true",
                    help="score only the answers the gate's report keeps (one per question), not all of them")
    ap.add_argument("--keep", action="store_true", help="keep the previous benchmark database (one run only)")
    ap.add_argument("--base", default="demo", help='base model: "demo" (default recipe), "demo:tiny", or a path')
    args = ap.parse_args()
    subjects = [s.strip() for s in args.subjects.split(",") if s.strip()]
    if args.runs < 1:
        ap.error("--runs must be >= 1")
    if args.keep and args.runs > 1:
        ap.error("--keep keeps one database: it cannot go with --runs > 1")

    var = Path(os.environ.setdefault("TUTOR_VAR_DIR", str(ROOT / "var" / "bench-loop")))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["FEEDBACK_SEED"] = str(args.seed)  # each run also overrides it (override_settings)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.conf import settings

    from rlhf import SUBJECTS
    from rlhf.models import DEMO_IDS, resolve_base_path

    unknown = [s for s in subjects if s not in SUBJECTS]
    if unknown:
        ap.error(f"unknown subjects {unknown}; expected some of {', '.join(SUBJECTS)}")
    t0 = time.perf_counter()
    if args.base in DEMO_IDS:  # the demo base `make demo` uses (built once, shared): its v1 adapters fit it
        from rlhf.demo_model import DemoRecipe, build_demo_model

        base = build_demo_model(DemoRecipe.named(DEMO_IDS[args.base]), base_dir=ROOT / "var" / "models" / "base")
    else:
        base = resolve_base_path(args.base)
    settings.TUTOR_BASE_MODEL = str(base)
    print(f"demo base model: {base} ({time.perf_counter() - t0:.0f} s to load or build)")

    overrides = json.loads(args.config)
    runs = []
    for i in range(args.runs):
        seed = args.seed + i
        print(f"\n=== run {i + 1}/{args.runs}, seed {seed} ===")
        runs.append(one_run(base, var, subjects, seed, args.pairs, overrides, keep=args.keep,
                            stored_answers=args.stored_answers))
    print_summary(runs, subjects)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"base": str(base), "pairs": args.pairs, "subjects": subjects,
                                         "goal": {"beats_share": GOAL_BEATS, "win_rate": GOAL_WIN_RATE},
                                         "runs": runs}, indent=1))
        print(f"results written to {args.json}")


def one_run(base: Path, var: Path, subjects: list[str], seed: int, pairs: int, overrides: dict, *,
            keep: bool, stored_answers: bool) -> dict[str, Any]:
    """One fresh run: reset, endpoint on v1, pairs (timed), pipeline (timed), hidden-preference scoring."""
    from django.core.management import call_command
    from django.db import connections
    from django.test import override_settings

    from rlhf import SUBJECTS

    adapters = var / "models" / "adapters"
    if not keep:
        connections.close_all()  # the previous run's database file is removed below
        reset_var(var, adapters, SUBJECTS)
    call_command("migrate", verbosity=0)
    ensure_v1(base, adapters, subjects)
    token = secrets.token_urlsafe(16)
    url, proc = start_endpoint(base, adapters, var, token, seed)
    try:
        # the endpoint's sampling seed for the tasks (build_tasks is given it too)
        with override_settings(TUTOR_ENDPOINT_URL=url, TUTOR_ENDPOINT_ADMIN_TOKEN=token, FEEDBACK_SEED=seed):
            t0 = time.perf_counter()
            n_pairs, rankings = make_pairs(subjects, pairs, seed)
            pairs_s = time.perf_counter() - t0
            print(f"pairs phase: {n_pairs} new preference pairs from simulated labelers ({pairs_s:.0f} s), "
                  f"rankings digest {rankings}\n")
            result = run_pipeline(subjects, seed, overrides)
            t0 = time.perf_counter()
            result["subjects"] = score_subjects(result.pop("job_id"), subjects, stored_answers)
            scoring_s = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    result.update(seed=seed, pairs=n_pairs, rankings_digest=rankings,
                  wall_s={"pairs": round(pairs_s, 1), "pipeline": result.pop("total_s"),
                          "scoring": round(scoring_s, 1)})
    print_run(result, subjects)
    return result


def reset_var(var: Path, adapters: Path, subjects: tuple[str, ...]) -> None:
    """A fresh run's state: no database, cache, datasets or reward models; only v1 adapters; no endpoint state."""
    for p in [var / "db.sqlite3", var / "db.sqlite3-wal", var / "db.sqlite3-shm", var / "datasets", var / "cache",
              var / "models" / "reward", adapters / ".endpoint_state.json"]:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    for s in subjects:
        for d in (adapters / s).glob("v*"):
            if d.name != "v1":
                shutil.rmtree(d)


def ensure_v1(base: Path, adapters: Path, subjects: list[str]) -> None:
    """v1 of each subject as `demo-model ensure` makes it, on this very base (the endpoint refuses another build's)."""
    from rlhf.adapters import DEMO_SLOPPY_RATE, AdapterConfig, other_base, sloppy_rate_of, train_sft
    from rlhf.models import base_fingerprint

    base_sha = base_fingerprint(base)

    def fits(path: Path) -> bool:
        return path.is_dir() and other_base(path, base_sha) is None and sloppy_rate_of(path) == DEMO_SLOPPY_RATE

    for s in subjects:
        dest = adapters / s / "v1"
        if fits(dest):
            continue
        shutil.rmtree(dest, ignore_errors=True)
        src = ROOT / "var" / "models" / "adapters" / s / "v1"
        if fits(src):
            shutil.copytree(src, dest)
        else:
            print(f"training v1 of {s} (SFT, not timed)…")
            train_sft(str(base), s, dest, AdapterConfig(sloppy_rate=DEMO_SLOPPY_RATE))


def start_endpoint(base: Path, adapters: Path, var: Path, token: str, seed: int):
    import httpx

    from tests.fixtures.processes import free_port

    port = free_port()
    env = {**os.environ, "TUTOR_ENDPOINT_ADMIN_TOKEN": token}
    log_path = var / f"bench-endpoint-seed{seed}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen([sys.executable, "-m", "serving", "--host", "127.0.0.1", "--port", str(port),
                             "--base-model", str(base), "--adapters-dir", str(adapters)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the endpoint exited; see {log_path}")
        try:
            if httpx.get(url + "/ping", timeout=2).status_code == 200:
                return url, proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)  # polling interval while the endpoint boots
    proc.terminate()
    raise SystemExit("the endpoint did not start in 300 s")


def make_pairs(subjects: list[str], target: int, seed: int) -> tuple[int, str]:
    """Tasks sampled from the endpoint (K=4), ranked by 2 simulated labelers each until ``target`` pairs.

    Returns the number of new pairs and a digest of every ranking submitted (prompt, completions' texts in
    the labeler's order): two runs with the same seed should give the same digest.
    """
    import hashlib
    import random

    from django.contrib.auth import get_user_model
    from tqdm import tqdm

    from feedback.selectors import new_pairs_count
    from feedback.services import add_prompt, build_tasks, next_task, submit_ranking
    from rlhf.corpus import seed_prompts
    from training.simulation import know_items, rank
    from tutor.accounts import create_user

    users = get_user_model().objects
    labelers = [users.filter(username=f"bench-labeler-{i}").first()  # --keep: the previous run's labelers
                or create_user(username=f"bench-labeler-{i}", password="x", role="labeler", validate_password=False)
                for i in range(2)]
    rng = random.Random(seed)
    # a task yields ~6 pairs (K=4, overlap 2, ties give none): add prompts in rounds until the target is met
    per_round = max(4, target // (len(subjects) * 6))
    pool = {s: seed_prompts(s, 3000, seed=POOL_SEED + seed) for s in subjects}
    for items in pool.values():
        know_items(items)  # the hidden preference knows their answer keys, whatever the seed
    used = 0
    digest = hashlib.sha256()
    bar = tqdm(total=target, desc="pairs", unit="pair")
    while new_pairs_count(None) < target and used < 3000:
        for s in subjects:
            for i, it in enumerate(pool[s][used : used + per_round], start=used):
                add_prompt(subject=s, text=it.question, source="seed", source_ref=f"bench:{s}:{i}")
        used += per_round
        build_tasks(limit=10_000, k=4, seed=seed)
        while new_pairs_count(None) < target:
            progressed = False
            for lab in labelers:
                lease = next_task(lab)
                if lease is None:
                    continue
                task = lease.assignment.task
                comps = [{"id": c.pk, "text": c.text} for c in task.completions.all()]
                body = rank(task.subject, task.prompt.text, comps, 0.1, rng)
                submit_ranking(lab, task.pk, body)
                texts = {c["id"]: c["text"] for c in comps}
                digest.update(json.dumps([lab.username, task.prompt.text,
                                          [[texts[cid] for cid in group] for group in body["order"]]]).encode())
                progressed = True
                bar.n = min(target, new_pairs_count(None))
                bar.refresh()
            if not progressed:
                break
        per_round = max(4, per_round // 2)
    bar.close()
    return new_pairs_count(None), digest.hexdigest()[:16]


def merge(base: dict, over: dict) -> dict:
    """``over`` on ``base``, section by section (``--config '{"ppo": {"steps": 10}}'`` keeps the seeds)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(out.get(k), dict) and isinstance(v, dict) else v
    return out


def run_pipeline(subjects: list[str], seed: int, overrides: dict) -> dict[str, Any]:
    from training import pipeline
    from training.pipeline import default_pipeline_config

    n_eval = default_pipeline_config()["eval"]["n_prompts"]
    config = merge({"subjects": subjects, "snapshot": {"scope": "all", "include_imported": False},
                    # every gate question in the report (the first answer of each), seeded like the rest of the run
                    "eval": {"n_samples_shown": n_eval, "seed": seed},
                    "reward": {"seed": seed}, "ppo": {"seed": seed}, "alt": {"seed": seed},
                    # the report card after deploy runs inline too; it is not part of the loop timed here
                    "report_card": {"enabled": False},
                    # judge the canary at once: the loop measures training and the gate, not a live bake
                    "canary": {"min_seconds": 0, "min_answers": 0}}, overrides)
    t0 = time.perf_counter()
    job = pipeline.run_inline(config)
    total = time.perf_counter() - t0
    steps = [{"stage": row["stage"], "jobs": row["jobs"], "seconds": round(row["seconds"] or 0, 1),
              "status": row["status"]} for row in pipeline.describe_stage_durations(job)]
    print(f"{'step':<14}{'jobs':>5}{'wall s':>10}  status")
    for row in steps:
        print(f"{row['stage']:<14}{row['jobs']:>5}{row['seconds']:>10.1f}  {row['status']}")
    print(f"{'total':<14}{'':>5}{total:>10.1f}  pipeline {job.status}: {job.message}")
    print(f"\ntotal / target (10 min): {total / TARGET_S:.2f}  ({'within' if total < TARGET_S else 'OVER'} target)")
    rm = job.result.get("reward_model_accuracy")
    backbone = (job.config.get("reward") or {}).get("backbone")
    print(f"reward model ({backbone}) held-out accuracy: {rm}")
    return {"job_id": job.pk, "pipeline_status": job.status, "pipeline_message": job.message,
            "reward_backbone": backbone, "reward_model_accuracy": rm, "steps": steps, "total_s": round(total, 1)}


def gate_answers(report, stored: bool) -> tuple[list[str], list[list[str]], list[list[str]], int]:
    """The gate's held-out questions and every answer of the candidate and of the baseline to each.

    Returns (questions, candidate answers per question, baseline answers per question, how many of the
    report's answers differ from the regenerated first ones: 0 when the gate's answers were reproduced).
    """
    samples = report.samples or []
    if stored:
        return ([x["question"] for x in samples], [[x["candidate"]] for x in samples],
                [[x["baseline"]] for x in samples], 0)
    import torch

    from rlhf.corpus import eval_prompts
    from rlhf.evaluation import EvalConfig, EvalContext, load_pair
    from training.services import version_base_path

    cfg = EvalConfig.from_dict(report.job.config.get("eval") or {})
    k = cfg.samples_per_prompt
    drawn = eval_prompts(report.candidate.subject, cfg.n_prompts, cfg.seed)  # as evaluate draws them
    questions = [it.question for it in drawn]
    items = [it for it in drawn for _ in range(k)]
    torch.manual_seed(cfg.seed)  # as rlhf.evaluation.evaluate does
    model, tokenizer = load_pair(version_base_path(report.candidate), report.candidate.path, report.baseline.path)
    ctx = EvalContext(model, tokenizer, report.candidate.subject, items, cfg, True)
    cand = [g.text for g in ctx.answers("candidate")]
    base = [g.text for g in ctx.answers("baseline")]
    per_q = lambda xs: [xs[j : j + k] for j in range(0, len(xs), k)]  # noqa: E731
    stored_by_q = {x["question"]: (x["candidate"], x["baseline"]) for x in samples}
    differ = sum(stored_by_q[q] != (c[0], b[0]) for q, c, b in zip(questions, per_q(cand), per_q(base), strict=True)
                 if q in stored_by_q)
    return questions, per_q(cand), per_q(base), differ


def subject_pairs() -> dict[str, int]:
    """The labelers' preference pairs per subject (gold tasks excluded): what each subject's training saw."""
    from django.db.models import Sum

    from feedback.models import Ranking

    rows = (Ranking.objects.filter(task__is_gold=False).values("task__subject")
            .annotate(n=Sum("pair_count")).order_by())
    return {row["task__subject"]: row["n"] or 0 for row in rows}


def score_subjects(job_id: int, subjects: list[str], stored: bool) -> dict[str, dict[str, Any]]:
    """Per subject: hidden preference (mean, per-prompt win rate), answer-key accuracy, verdict."""
    from rlhf.corpus import eval_prompts
    from training.models import EvaluationReport, PolicyVersion
    from training.simulation import hidden_score, know_items, repetition

    out: dict[str, dict[str, Any]] = {s: {"verdict": "no candidate"} for s in subjects}
    pairs_by_subject = subject_pairs()
    reports = EvaluationReport.objects.filter(job__parent_id=job_id).select_related("candidate", "baseline", "job")
    for r in reports.order_by("id"):
        s = r.candidate.subject
        if r.baseline is None:
            out[s] = {"verdict": "no baseline"}
            continue
        cfg = r.job.config.get("eval") or {}
        know_items(eval_prompts(s, int(cfg.get("n_prompts", 64)), int(cfg.get("seed", 0))))
        questions, cand, base, differ = gate_answers(r, stored)
        unknown = 0
        scores: dict[str, list[list[float]]] = {"candidate": [], "baseline": []}  # per question, per answer
        # diagnosis: the hidden score without correctness (format, repetition, length) and the share of
        # answers that repeat themselves (v1's sloppy flaw outside mathematics: the answer said twice)
        style: dict[str, list[float]] = {"candidate": [], "baseline": []}
        repeated: dict[str, list[float]] = {"candidate": [], "baseline": []}
        for q, cs, bs in zip(questions, cand, base, strict=True):
            for which, answers in (("candidate", cs), ("baseline", bs)):
                hs = [hidden_score(s, q, a) for a in answers]
                unknown += sum(not h["known"] for h in hs)
                scores[which].append([h["score"] for h in hs])
                style[which] += [h["score"] - 10.0 * h["correct"] for h in hs if not h["unsafe"]]
                repeated[which] += [float(repetition(a) > 0.2) for a in answers]
        mean = lambda xs: sum(xs) / len(xs) if xs else 0.0  # noqa: E731
        wins = [0.5 if mean(c) == mean(b) else float(mean(c) > mean(b))
                for c, b in zip(scores["candidate"], scores["baseline"], strict=True)]
        n_answers = sum(len(cs) for cs in cand)
        hidden = {w: mean([x for q in scores[w] for x in q]) for w in scores}
        acc = r.suites.get("answer_key_accuracy") or {}
        rwr = r.suites.get("reward_win_rate") or {}
        pv = PolicyVersion.objects.get(pk=r.candidate_id)
        # a candidate the gate refused is retired; one that passed may still be rolled back by its canary
        verdict = {"promoted": "promoted", "retired": "retired" if r.passed else "refused"}.get(pv.status, pv.status)
        out[s] = {
            "candidate": f"v{pv.version}", "baseline": f"v{r.baseline.version}", "gate_passed": r.passed,
            "verdict": verdict, "questions": len(questions), "answers": n_answers,
            "hidden_candidate": round(hidden["candidate"], 3), "hidden_baseline": round(hidden["baseline"], 3),
            "beats_v1": hidden["candidate"] > hidden["baseline"],
            "win_rate": round(sum(wins) / len(wins), 3) if wins else None,
            "accuracy_candidate": acc.get("candidate"), "accuracy_baseline": acc.get("baseline"),
            "accuracy_non_inferior": bool(acc.get("passed")), "rm_win_rate": rwr.get("candidate"),
            "unknown_questions": unknown, "report_answers_not_reproduced": differ,
            "failures": r.failures,
            "style_candidate": round(mean(style["candidate"]), 3), "style_baseline": round(mean(style["baseline"]), 3),
            "repeated_candidate": round(mean(repeated["candidate"]), 3),
            "repeated_baseline": round(mean(repeated["baseline"]), 3),
            "gate_kl": (r.suites.get("kl") or {}).get("candidate"),
            "ppo_final_kl": (pv.metrics or {}).get("final_kl"), "ppo_final_reward": (pv.metrics or {}).get("final_reward"),
            "ppo_final_eos_rate": (pv.metrics or {}).get("final_eos_rate"),
            "train_pairs": pairs_by_subject.get(s),
        }
    return out


def goal_of(run: dict[str, Any], subjects: list[str]) -> dict[str, Any]:
    """Issue 16's goal for one run."""
    rows = run["subjects"]
    improved = [s for s in subjects if rows[s].get("beats_v1")]
    need = math.ceil(GOAL_BEATS * len(subjects))
    win_ok = all((rows[s].get("win_rate") or 0) >= GOAL_WIN_RATE for s in improved)
    acc_ok = all(rows[s].get("accuracy_non_inferior") for s in subjects)
    return {"beats": len(improved), "of": len(subjects), "need": need, "beats_ok": len(improved) >= need,
            "improved": improved, "win_rate_ok": win_ok, "accuracy_ok": acc_ok,
            "met": len(improved) >= need and win_ok and acc_ok}


def _f(x: Any, nd: int = 3) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def print_run(run: dict[str, Any], subjects: list[str]) -> None:
    print(f"\nrun seed {run['seed']}: {run['pairs']} pairs (rankings digest {run['rankings_digest']}), "
          f"reward model accuracy {run['reward_model_accuracy']}; "
          "hidden preference of the gate's held-out answers (win rate: per question, the candidate's mean "
          "over its answers vs v1's; a tie counts half)")
    print(f"{'subject':<18}{'answers':>8}{'hidden cand':>12}{'hidden v1':>10}{'win rate':>9}{'acc cand':>9}"
          f"{'acc v1':>8}  {'non-inf':<8}{'verdict':<13}notes")
    for s in subjects:
        r = run["subjects"][s]
        if "hidden_candidate" not in r:
            print(f"{s:<18}{'':>8}{'':>12}{'':>10}{'':>9}{'':>9}{'':>8}  {'':<8}{r['verdict']}")
            continue
        notes = []
        if r["unknown_questions"]:
            notes.append(f"{r['unknown_questions']} answers to questions unknown to the hidden preference")
        if r["report_answers_not_reproduced"]:
            notes.append(f"{r['report_answers_not_reproduced']} report answers not reproduced")
        print(f"{s:<18}{r['answers']:>8}{_f(r['hidden_candidate']):>12}{_f(r['hidden_baseline']):>10}"
              f"{_f(r['win_rate'], 2):>9}{_f(r['accuracy_candidate']):>9}{_f(r['accuracy_baseline']):>8}  "
              f"{'yes' if r['accuracy_non_inferior'] else 'NO':<8}{r['verdict']:<13}{'; '.join(notes)}")
        if "style_candidate" in r:
            print(f"{'':<18}pairs {r['train_pairs']}, style (hidden - 10 x correct) {_f(r['style_baseline'], 2)} -> "
                  f"{_f(r['style_candidate'], 2)}, answers said twice {_f(r['repeated_baseline'], 2)} -> "
                  f"{_f(r['repeated_candidate'], 2)}, KL to v1 {_f(r['gate_kl'], 2)} (gate), "
                  f"{_f(r['ppo_final_kl'], 2)} (the policy step's last), its last reward {_f(r['ppo_final_reward'], 2)}, "
                  f"EOS rate {_f(r['ppo_final_eos_rate'], 2)}")
    w = run["wall_s"]
    print(f"wall time: pairs {w['pairs']:.0f} s, pipeline {w['pipeline']:.0f} s "
          f"(scoring afterwards, not part of the loop: {w['scoring']:.0f} s)")


def print_summary(runs: list[dict[str, Any]], subjects: list[str]) -> None:
    need = math.ceil(GOAL_BEATS * len(subjects))
    print(f"\n=== issue 16's goal, {len(runs)} run(s): the candidate beats v1 by the hidden preference in >= {need} "
          f"of {len(subjects)} subjects, win rate >= {GOAL_WIN_RATE:.2f} in those, accuracy non-inferior in all ===")
    print(f"{'seed':>5}{'pairs':>7}{'RM acc':>8}{'beats v1':>10}{'win >= .60':>11}{'acc non-inf':>12}{'goal':>6}"
          f"{'pairs s':>9}{'pipeline s':>11}  win rates of improved subjects")
    for run in runs:
        g = run["goal"] = goal_of(run, subjects)
        rates = ", ".join(f"{s} {run['subjects'][s]['win_rate']:.2f}" for s in g["improved"])
        print(f"{run['seed']:>5}{run['pairs']:>7}{_f(run['reward_model_accuracy'], 2):>8}"
              f"{g['beats']:>5}/{g['of']:<4}{'yes' if g['win_rate_ok'] else 'NO':>11}"
              f"{'yes' if g['accuracy_ok'] else 'NO':>12}{'MET' if g['met'] else 'no':>6}"
              f"{run['wall_s']['pairs']:>9.0f}{run['wall_s']['pipeline']:>11.0f}  {rates or '-'}")
    met = sum(run["goal"]["met"] for run in runs)
    print(f"goal met in {met} of {len(runs)} runs: {'MET in every run' if met == len(runs) else 'NOT met'}")


if __name__ == "__main__":
    main()

"""The closed loop's wall time: from 500 new preference pairs to a promoted version, on the demo model.

    .venv/bin/python benchmarks/loop.py [--pairs 500] [--subjects mathematics,history] [--keep]

Set-up (not timed): a fresh database under ``var/bench-loop/`` (or ``TUTOR_VAR_DIR``), the demo base model
and v1 adapters (copied from ``var/models/adapters`` when present, else trained), a real endpoint process,
and comparison tasks sampled from it (K=4) ranked by simulated labelers (the hidden preference of
``training/simulation.py``, noise 0.1) until the new pairs reach ``--pairs``.

Timed: the pipeline run in this process with the default configs (``training.pipeline.run_inline``):
snapshot → reward model → PPO per subject → gate → canary → promote. Printed as a table per step; the
target is < 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 600.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=500)
    ap.add_argument("--subjects", default="mathematics,history")
    ap.add_argument("--config", default="{}", help="JSON overrides of the pipeline config")
    ap.add_argument("--keep", action="store_true", help="keep the previous benchmark database")
    ap.add_argument("--base", default="demo", help='base model: "demo" (default recipe), "demo:tiny", or a path')
    args = ap.parse_args()
    subjects = [s for s in args.subjects.split(",") if s]

    var = Path(os.environ.setdefault("TUTOR_VAR_DIR", str(ROOT / "var" / "bench-loop")))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not args.keep:
        for p in [var / "db.sqlite3", var / "db.sqlite3-wal", var / "db.sqlite3-shm", var / "datasets",
                  var / "models" / "reward"]:
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        for s in subjects:
            for d in (var / "models" / "adapters" / s).glob("v*"):
                if d.name != "v1":
                    shutil.rmtree(d)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    import json

    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", verbosity=0)

    from rlhf.models import DEMO_IDS, resolve_base_path

    t0 = time.perf_counter()
    if args.base in DEMO_IDS:  # the demo base `make demo` uses (built once, shared): its v1 adapters fit it
        from rlhf.demo_model import DemoRecipe, build_demo_model

        base = build_demo_model(DemoRecipe.named(DEMO_IDS[args.base]), base_dir=ROOT / "var" / "models" / "base")
    else:
        base = resolve_base_path(args.base)
    settings.TUTOR_BASE_MODEL = str(base)
    print(f"demo base model: {base} ({time.perf_counter() - t0:.0f} s to load or build)")
    ensure_v1(base, var / "models" / "adapters", subjects)
    token = secrets.token_urlsafe(16)
    endpoint = start_endpoint(base, var / "models" / "adapters", var, token)
    try:
        settings.TUTOR_ENDPOINT_URL, settings.TUTOR_ENDPOINT_ADMIN_TOKEN = endpoint[0], token
        t0 = time.perf_counter()
        n_pairs = make_pairs(subjects, args.pairs)
        print(f"set-up: {n_pairs} new preference pairs from simulated labelers ({time.perf_counter() - t0:.0f} s)\n")
        run_pipeline(subjects, json.loads(args.config))
    finally:
        endpoint[1].terminate()
        endpoint[1].wait(timeout=30)


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


def start_endpoint(base: Path, adapters: Path, var: Path, token: str):
    import httpx

    from tests.fixtures.processes import free_port

    port = free_port()
    env = {**os.environ, "TUTOR_ENDPOINT_ADMIN_TOKEN": token}
    log = open(var / "bench-endpoint.log", "wb")  # noqa: SIM115 - owned by the child
    proc = subprocess.Popen([sys.executable, "-m", "serving", "--host", "127.0.0.1", "--port", str(port),
                             "--base-model", str(base), "--adapters-dir", str(adapters)],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the endpoint exited; see {var / 'bench-endpoint.log'}")
        try:
            if httpx.get(url + "/ping", timeout=2).status_code == 200:
                return url, proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)  # polling interval while the endpoint boots
    proc.terminate()
    raise SystemExit("the endpoint did not start in 300 s")


def make_pairs(subjects: list[str], target: int) -> int:
    """Tasks sampled from the endpoint (K=4), ranked by 2 simulated labelers each until ``target`` pairs."""
    import random

    from django.contrib.auth import get_user_model
    from tqdm import tqdm

    from feedback.selectors import new_pairs_count
    from feedback.services import add_prompt, build_tasks, next_task, submit_ranking
    from rlhf.corpus import seed_prompts
    from training.simulation import rank
    from tutor.accounts import create_user

    users = get_user_model().objects
    labelers = [users.filter(username=f"bench-labeler-{i}").first()  # --keep: the previous run's labelers
                or create_user(username=f"bench-labeler-{i}", password="x", role="labeler", validate_password=False)
                for i in range(2)]
    rng = random.Random(0)
    # a task yields ~6 pairs (K=4, overlap 2, ties give none): add prompts in rounds until the target is met
    per_round = max(4, target // (len(subjects) * 6))
    pool = {s: seed_prompts(s, 3000, seed=3) for s in subjects}
    used = 0
    bar = tqdm(total=target, desc="pairs", unit="pair")
    while new_pairs_count(None) < target and used < 3000:
        for s in subjects:
            for i, it in enumerate(pool[s][used : used + per_round], start=used):
                add_prompt(subject=s, text=it.question, source="seed", source_ref=f"bench:{s}:{i}")
        used += per_round
        build_tasks(limit=10_000, k=4)
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
                progressed = True
                bar.n = min(target, new_pairs_count(None))
                bar.refresh()
            if not progressed:
                break
        per_round = max(4, per_round // 2)
    bar.close()
    return new_pairs_count(None)


def run_pipeline(subjects: list[str], overrides: dict) -> None:
    from training import pipeline
    from training.models import EvaluationReport, PolicyVersion
    from training.pipeline import default_pipeline_config
    from training.simulation import hidden_score

    n_eval = default_pipeline_config()["eval"]["n_prompts"]
    # keep every gate answer in the report, so the hidden preference can score them below
    config = {"subjects": subjects, "snapshot": {"scope": "all", "include_imported": False},
              "eval": {"n_samples_shown": n_eval},
              # the report card after deploy runs inline too; it is not part of the loop timed here
              "report_card": {"enabled": False},
              # judge the canary at once: the loop measures training and the gate, not a live bake
              "canary": {"min_seconds": 0, "min_answers": 0}, **overrides}
    t0 = time.perf_counter()
    job = pipeline.run_inline(config)
    total = time.perf_counter() - t0
    print(f"{'step':<14}{'jobs':>5}{'wall s':>10}  status")
    for row in pipeline.describe_stage_durations(job):
        print(f"{row['stage']:<14}{row['jobs']:>5}{(row['seconds'] or 0):>10.1f}  {row['status']}")
    print(f"{'total':<14}{'':>5}{total:>10.1f}  pipeline {job.status}: {job.message}")
    print(f"\ntotal / target (10 min): {total / TARGET_S:.2f}  ({'within' if total < TARGET_S else 'OVER'} target)")
    rm = job.result.get("reward_model_accuracy")
    print(f"reward model held-out accuracy: {rm}")
    for r in EvaluationReport.objects.filter(job__parent=job).select_related("candidate", "baseline"):
        figures = {k: (round(v.get("candidate") or 0, 3), round(v.get("baseline") or 0, 3)) for k, v in r.suites.items()
                   if "candidate" in v}
        print(f"gate {r.candidate} vs {r.baseline}: {'PASS' if r.passed else 'FAIL'} (candidate, baseline) {figures}")
        # the simulated labelers' hidden preference (never seen by training) on the same held-out answers
        samples = r.samples or []
        if samples:
            hidden = {which: sum(hidden_score(r.candidate.subject, x["question"], x[which])["score"]
                                 for x in samples) / len(samples) for which in ("candidate", "baseline")}
            print(f"  hidden preference, mean over {len(samples)} held-out answers: "
                  f"candidate {hidden['candidate']:.2f}, baseline {hidden['baseline']:.2f}")
    for s in subjects:
        pv = PolicyVersion.objects.filter(subject=s, status="promoted").first()
        print(f"{s}: promoted v{pv.version if pv else '?'}")


if __name__ == "__main__":
    main()

"""Labelers over HTTP: submissions/s and latency percentiles at 10 and 50 concurrent labelers.

    psql -h 127.0.0.1 -U postgres -c 'CREATE DATABASE feedback_bench'      # once; a scratch database
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/feedback_bench .venv/bin/python benchmarks/labeling.py
    ... labeling.py --levels 10 50 --submissions 600 --workers 1

Set-up (not timed): the scratch database is flushed and migrated, ``--tasks`` tasks (K=4, overlap
2) and one token-authenticated labeler per concurrent slot are created, and a real uvicorn web
process (as in the Procfile; ``--workers`` processes) serves the app. Each simulated labeler
loops POST /api/label/next/ → POST /api/label/tasks/<id>/submit/ (as the simulated labelers of
the training loop do). Reported per level: submissions/s, p50/p99 of submit and of next, errors.
Afterwards the rankings in the database are counted against the 201s the clients saw: zero lost.
Target: p99 < 100 ms at 50 concurrent.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def setup(var_dir: Path, n_tasks: int, n_labelers: int) -> list[tuple[int, str]]:
    os.environ.setdefault("TUTOR_VAR_DIR", str(var_dir))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection, transaction
    from rest_framework.authtoken.models import Token

    from feedback.models import SUBJECTS, ComparisonTask, Completion, Prompt
    from tutor.accounts import create_user

    call_command("migrate", verbosity=0)
    if connection.vendor == "postgresql":
        call_command("flush", interactive=False, verbosity=0)
    with transaction.atomic():
        for i in range(n_tasks):
            subject = SUBJECTS[i % 4]
            prompt = Prompt.objects.create(subject=subject, text=f"Benchmark question {i}?", context=[],
                                           normalized_hash=f"bench-{i}", source="seed")
            task = ComparisonTask.objects.create(prompt=prompt, subject=subject, overlap=2, priority=i % 3)
            Completion.objects.bulk_create([Completion(task=task, text=f"reply {j} to question {i}") for j in range(4)])
        labelers = []
        for i in range(n_labelers):
            user = create_user(username=f"bench-lab-{i}", password="x", role="labeler", validate_password=False)
            labelers.append((user.id, Token.objects.create(user=user).key))
    return labelers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_web(workers: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "FEEDBACK_GOLD_RATE": "0", "DEBUG": "true", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1", "--port", str(port),
           "--no-access-log", "--log-level", "warning", "--workers", str(workers)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/accounts/login/", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("the web process exited")
        time.sleep(0.2)  # polling while the server boots
    proc.kill()
    raise RuntimeError("the web process did not start")


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] * 1000


async def labeler(client: httpx.AsyncClient, token: str, quota: list[int], stats: dict) -> None:
    headers = {"Authorization": f"Token {token}"}
    while quota[0] > 0:
        t0 = time.perf_counter()
        r = await client.post("/api/label/next/", headers=headers)
        stats["next"].append(time.perf_counter() - t0)
        if r.status_code != 200:
            stats["errors"].append(f"next {r.status_code}")
            continue
        task = r.json()["task"]
        if task is None:
            return
        quota[0] -= 1
        ids = [c["id"] for c in task["completions"]]
        random.shuffle(ids)
        body = {"order": [[i] for i in ids], "ratings": {str(ids[0]): {"helpfulness": 6}}}
        t0 = time.perf_counter()
        r = await client.post(f"/api/label/tasks/{task['task_id']}/submit/", json=body, headers=headers)
        stats["submit"].append(time.perf_counter() - t0)
        if r.status_code == 201:
            stats["created"] += 1
        else:
            stats["errors"].append(f"submit {r.status_code}: {r.text[:120]}")


async def run_level(url: str, tokens: list[str], submissions: int) -> dict:
    stats = {"next": [], "submit": [], "errors": [], "created": 0}
    quota = [submissions]
    limits = httpx.Limits(max_connections=len(tokens) + 5, max_keepalive_connections=len(tokens) + 5)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(labeler(client, tok, quota, stats) for tok in tokens))
        stats["wall"] = time.perf_counter() - t0
    return stats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--submissions", type=int, default=600, help="submissions per level")
    ap.add_argument("--tasks", type=int, default=1500)
    ap.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (the Procfile runs 1)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-labeling-") as tmp:
        labelers = setup(Path(tmp), args.tasks, sum(args.levels))
        import logging

        logging.getLogger("httpx").setLevel(logging.WARNING)
        from django.db import connection

        from feedback.models import Ranking

        print(f"database: {connection.vendor}; web workers: {args.workers}; cpus: {os.cpu_count()}")
        proc, url = start_web(args.workers)
        try:
            offset, seen_created = 0, 0
            for level in args.levels:
                tokens = [tok for _, tok in labelers[offset:offset + level]]
                offset += level
                s = asyncio.run(run_level(url, tokens, args.submissions))
                seen_created += s["created"]
                print(f"{level:3d} labelers: {s['created'] / s['wall']:7.1f} submissions/s | submit p50 "
                      f"{pct(s['submit'], 50):6.1f} ms p99 {pct(s['submit'], 99):6.1f} ms | next p50 "
                      f"{pct(s['next'], 50):6.1f} ms p99 {pct(s['next'], 99):6.1f} ms | {s['created']} stored, "
                      f"{len(s['errors'])} errors {s['errors'][:2]}")
        finally:
            proc.terminate()
            proc.wait(timeout=20)
        stored = Ranking.objects.count()
        print(f"lost: {seen_created - stored} (clients saw {seen_created} created, database holds {stored})")
        if connection.vendor == "postgresql":
            from django.core.management import call_command

            call_command("flush", interactive=False, verbosity=0)


if __name__ == "__main__":
    main()

"""Soak with faults: labelers (and optionally students) against PostgreSQL + Redis + real processes
while the script kills and restarts parts of the system, then checks that nothing was lost.

    psql -h 127.0.0.1 -U postgres -c 'CREATE DATABASE soak_bench'          # once; a scratch database
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/soak_bench .venv/bin/python benchmarks/soak.py \\
        --seconds 180 --labelers 50 [--students 16 --base-model demo]

Loopback only, bounded in time (``--seconds``) and work (``--tasks``). The script starts, on free ports:
its OWN redis-server (never the shared one: it restarts it), a gunicorn web tier (``--web-concurrency``
uvicorn workers, psycopg pool), one Celery worker, and with ``--students`` > 0 the model endpoint.
Faults, one of each kind at seeded random moments in the middle 80 % of the run:

* ``web``: SIGKILL one gunicorn worker (the arbiter forks a new one);
* ``celery``: SIGKILL the Celery worker while it runs a task (``feedback.update_reliability`` is sent
  just before; acks_late + reject_on_worker_lost put it back on the queue), then start a new worker;
* ``redis``: stop the Redis server and start it again on the same port (cache + broker);
* ``endpoint``: (with students) SIGKILL the endpoint and start it again.

Afterwards: every ranking whose submit got a 201 and every chat message whose stream reached ``done`` is
in the database exactly once; no duplicate (labeler, task) ranking; no task has more rankings than its
overlap; no training version is half-promoted (a version marked promoted whose job failed or was cancelled);
``/healthz`` is green again within ``--heal-seconds`` of each fault (the time is measured and printed). Exit status 1 if any check fails.
Not covered: the Celery kill hits a labeling-quality task, not a training step (a real training job needs
a built demo model and minutes of CPU per step on this machine); see docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.labeling import free_port, setup  # noqa: E402


@dataclass
class Proc:
    name: str
    cmd: list[str]
    env: dict[str, str]
    log: Path
    popen: subprocess.Popen | None = None

    def start(self) -> Proc:
        out = open(self.log, "ab")  # noqa: SIM115 - owned by the child
        self.popen = subprocess.Popen(self.cmd, cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        return self

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.popen and self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)


@dataclass
class Stats:
    created: list[int] = field(default_factory=list)
    messages: list[int] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    faults: list[str] = field(default_factory=list)
    heal: list[float] = field(default_factory=list)

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


def wait_for(predicate, timeout: float, what: str) -> float:
    """Poll until ``predicate()`` is truthy; returns the seconds it took."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            if predicate():
                return time.monotonic() - t0
        except Exception:  # not up yet
            pass
        time.sleep(0.2)  # polling a process that is starting
    raise TimeoutError(f"{what} not ready after {timeout:.0f} s")


def worker_pids(arbiter: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(arbiter)], capture_output=True, text=True)
    return sorted(int(p) for p in out.stdout.split())


async def labeler(client: httpx.AsyncClient, token: str, stop: float, stats: Stats) -> None:
    headers = {"Authorization": f"Token {token}"}
    rnd = random.Random(token)
    while time.monotonic() < stop:
        try:
            r = await client.post("/api/label/next/", headers=headers)
            if r.status_code != 200:
                stats.error(f"next {r.status_code}")
                await asyncio.sleep(0.2)  # back off before retrying a failed request
                continue
            task = r.json()["task"]
            if task is None:
                return
            ids = [c["id"] for c in task["completions"]]
            rnd.shuffle(ids)
            body = {"order": [[i] for i in ids]}
            url = f"/api/label/tasks/{task['task_id']}/submit/"
            for _attempt in range(5):  # a labeler retries a submit that got no answer (idempotent)
                try:
                    r = await client.post(url, json=body, headers=headers)
                except httpx.TransportError:
                    stats.error("submit transport (retried)")
                    await asyncio.sleep(0.2)  # back off before the retry
                    continue
                if r.status_code == 201:
                    stats.created.append(r.json()["ranking"]["ranking_id"])
                elif r.status_code != 200:  # 200 = a retry answered with the stored ranking
                    stats.error(f"submit {r.status_code}")
                break
        except httpx.TransportError as exc:
            stats.error(f"next {type(exc).__name__}")
            await asyncio.sleep(0.2)  # back off: the worker behind this connection may have died


async def student(client: httpx.AsyncClient, token: str, stop: float, stats: Stats) -> None:
    headers = {"Authorization": f"Token {token}", "Accept": "application/jsonlines"}
    while time.monotonic() < stop:
        try:
            made = await client.post("/api/conversations/", json={"subject": "mathematics"}, headers=headers)
            if made.status_code != 201:
                stats.error(f"conversation {made.status_code}")
                await asyncio.sleep(0.5)  # back off
                continue
            conv = made.json()["id"]
            async with client.stream("POST", f"/api/conversations/{conv}/messages/", json={"content": "What is 2+3?"},
                                     headers=headers) as resp:
                if resp.status_code != 200:
                    stats.error(f"message {resp.status_code}")
                    continue
                async for line in resp.aiter_lines():
                    if not line.strip():
                        continue
                    ev = json.loads(line)
                    if ev["event"] == "start":
                        stats.messages.append(ev["user_message"]["id"])
                    elif ev["event"] == "done":
                        stats.messages.append(ev["message"]["id"])
                    elif ev["event"] == "error":
                        stats.error("stream error event (retryable)")
        except httpx.TransportError as exc:
            stats.error(f"chat {type(exc).__name__}")
            await asyncio.sleep(0.2)  # back off


async def time_to_green(url: str, limit: float) -> float:
    """Seconds until /healthz answers 200 (-1 if not within ``limit``)."""
    t0 = time.monotonic()
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() - t0 < limit:
            try:
                if (await client.get(f"{url}/healthz")).status_code == 200:
                    return time.monotonic() - t0
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.25)  # polling the health check
    return -1.0


def healthy(url: str) -> bool:
    return httpx.get(f"{url}/healthz", timeout=5).status_code == 200


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=180)
    ap.add_argument("--labelers", type=int, default=50)
    ap.add_argument("--students", type=int, default=0, help="chatting students (needs the endpoint)")
    ap.add_argument("--base-model", default="demo", help="the endpoint's base model (with --students)")
    ap.add_argument("--tasks", type=int, default=3000)
    ap.add_argument("--web-concurrency", type=int, default=3)
    ap.add_argument("--heal-seconds", type=float, default=60, help="/healthz must be green within this")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        print("soak: set DATABASE_URL=postgres://... (a scratch database: it is flushed)")
        return 2
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        print("soak: redis-server is not installed (apt-get install redis-server)")
        return 2
    rnd = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    redis_port = free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    os.environ.update({"REDIS_URL": redis_url, "TUTOR_VAR_DIR": str(tmp / "var")})
    redis = Proc("redis", [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no", "--dir", str(tmp)], dict(os.environ), tmp / "redis.log").start()
    wait_for(lambda: subprocess.run(["redis-cli", "-p", str(redis_port), "ping"], capture_output=True).returncode == 0,
             30, "redis")
    procs: dict[str, Proc] = {"redis": redis}
    stats = Stats()
    ok = True
    try:
        labelers = setup(tmp, args.tasks, args.labelers)
        import logging

        logging.getLogger("httpx").setLevel(logging.WARNING)
        students = []
        env = {**os.environ, "FEEDBACK_GOLD_RATE": "0", "PYTHONUNBUFFERED": "1", "DB_POOL_MAX_SIZE": "4"}
        if args.students:
            port = free_port()
            endpoint = Proc("endpoint", [sys.executable, "-m", "serving", "--port", str(port), "--base-model",
                                         args.base_model, "--log-level", "warning"], env, tmp / "endpoint.log").start()
            procs["endpoint"] = endpoint
            env["TUTOR_ENDPOINT_URL"] = f"http://127.0.0.1:{port}"
            wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200, 900,
                     "the endpoint")
            from rest_framework.authtoken.models import Token

            from tutor.accounts import create_user

            for i in range(args.students):
                user = create_user(username=f"soak-student-{i}", password="x", role="student", validate_password=False)
                students.append(Token.objects.create(user=user).key)
        else:
            env["HEALTHZ_CHECK_ENDPOINT"] = "false"
        web_port = free_port()
        web_env = {**env, "WEB_BIND": f"127.0.0.1:{web_port}", "WEB_CONCURRENCY": str(args.web_concurrency),
                   "WEB_LOG_LEVEL": "warning"}
        procs["web"] = Proc("web", [sys.executable, "-m", "gunicorn", "-c", "config/gunicorn_conf.py",
                                    "config.asgi:application"], web_env, tmp / "web.log").start()
        worker_cmd = [sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel", "INFO",
                      "--concurrency", "1", "--hostname", f"soak-{os.getpid()}@localhost"]
        procs["celery"] = Proc("celery", worker_cmd, env, tmp / "celery.log").start()
        url = f"http://127.0.0.1:{web_port}"
        boot = wait_for(lambda: healthy(url), 180, "/healthz green at start")
        print(f"soak: up in {boot:.1f} s (web {args.web_concurrency} workers, redis :{redis_port}, "
              f"{args.labelers} labelers, {args.students} students, {args.seconds:.0f} s)", flush=True)

        kinds = ["web", "celery", "redis"] + (["endpoint"] if args.students else [])
        moments = sorted(rnd.uniform(0.1, 0.9) * args.seconds for _ in kinds)
        rnd.shuffle(kinds)
        plan = list(zip(moments, kinds, strict=True))

        async def faults(start: float) -> None:
            for at, kind in plan:
                await asyncio.sleep(max(0.0, start + at - time.monotonic()))
                t = time.monotonic() - start
                if kind == "web":
                    pids = worker_pids(procs["web"].popen.pid)
                    os.kill(pids[0], signal.SIGKILL)
                    stats.faults.append(f"{t:6.1f} s SIGKILL web worker {pids[0]}")
                elif kind == "celery":
                    from config.celery import app

                    app.send_task("feedback.update_reliability")
                    await asyncio.sleep(0.5)  # let the worker pick it up, then kill it mid-task
                    procs["celery"].kill()
                    procs["celery"] = Proc("celery", worker_cmd, env, tmp / "celery.log").start()
                    stats.faults.append(f"{t:6.1f} s SIGKILL Celery worker (a task in flight), started a new one")
                elif kind == "redis":
                    procs["redis"].kill(signal.SIGTERM)
                    await asyncio.sleep(2)  # Redis stays down for 2 s
                    procs["redis"] = Proc("redis", redis.cmd, redis.env, redis.log).start()
                    stats.faults.append(f"{t:6.1f} s Redis stopped for 2 s and restarted")
                elif kind == "endpoint":
                    old = procs["endpoint"]
                    old.kill()
                    procs["endpoint"] = Proc("endpoint", old.cmd, old.env, old.log).start()
                    stats.faults.append(f"{t:6.1f} s SIGKILL endpoint, started again")
                healed = await time_to_green(url, args.heal_seconds)
                stats.heal.append(healed)
                stats.faults[-1] += f"; /healthz green {healed:.1f} s later" if healed >= 0 else \
                    f"; /healthz NOT green within {args.heal_seconds:.0f} s"
                print("fault:", stats.faults[-1], flush=True)

        async def run() -> None:
            start = time.monotonic()
            stop = start + args.seconds
            limits = httpx.Limits(max_connections=args.labelers + args.students + 5)
            async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
                await asyncio.gather(faults(start), *(labeler(client, tok, stop, stats) for _, tok in labelers),
                                     *(student(client, tok, stop, stats) for tok in students))

        t0 = time.monotonic()
        asyncio.run(run())
        heal = wait_for(lambda: healthy(url), args.heal_seconds, "/healthz green after the faults")
        wall = time.monotonic() - t0
        print(f"soak: {wall:.0f} s, {len(stats.created)} rankings ({len(stats.created) / wall:.1f}/s), "
              f"{len(stats.messages)} chat messages; /healthz green {heal:.1f} s after the run "
              f"(limit {args.heal_seconds:.0f} s)")
        print("errors seen by clients (retried or counted):", stats.errors or "none")
        if any(h < 0 for h in stats.heal):
            print(f"soak: /healthz was not green within {args.heal_seconds:.0f} s after a fault")
            ok = False
        ok = check(stats) and ok
    except Exception as exc:
        print(f"soak: FAILED: {exc}")
        ok = False
    finally:
        for p in procs.values():
            p.kill(signal.SIGTERM)
        shutil.rmtree(tmp, ignore_errors=True)
    print("soak:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


def check(stats: Stats) -> bool:
    """Exactly-once and overlap checks against the database; prints each."""
    from django.db.models import Count, F

    from feedback.models import ComparisonTask, Ranking
    from tutor.models import Message

    stored = set(Ranking.objects.values_list("id", flat=True))
    lost = sorted(set(stats.created) - stored)
    dup_seen = len(stats.created) - len(set(stats.created))
    dup_db = Ranking.objects.values("labeler", "task").annotate(n=Count("id")).filter(n__gt=1).count()
    over = ComparisonTask.objects.annotate(n=Count("rankings")).filter(n__gt=F("overlap")).count()
    msgs = set(Message.objects.filter(id__in=stats.messages).values_list("id", flat=True))
    lost_msgs = sorted(set(stats.messages) - msgs)
    half = half_promoted()
    print(f"rankings: clients saw {len(stats.created)} created, database holds {len(stored)}; lost {len(lost)}, "
          f"duplicated {dup_seen + dup_db}, over-labeled tasks {over}")
    print(f"chat messages acknowledged {len(stats.messages)}, lost {len(lost_msgs)}; half-promoted versions {half}")
    print("fault log:")
    for line in stats.faults:
        print("  " + line)
    return not (lost or dup_seen or dup_db or over or lost_msgs or half)


def half_promoted() -> int:
    """Versions marked promoted whose training job failed or was cancelled (0 when training never ran)."""
    from training.models import Job, PolicyVersion

    return PolicyVersion.objects.filter(status=PolicyVersion.Status.PROMOTED,
                                        job__status__in=[Job.Status.FAILED, Job.Status.CANCELLED]).count()


if __name__ == "__main__":
    sys.exit(main())

"""Soak with faults: labelers (and optionally students) against PostgreSQL + Redis + real processes
while the script kills and restarts parts of the system, then checks that nothing was lost.

    psql -h 127.0.0.1 -U postgres -c 'CREATE DATABASE soak_bench'          # once; a scratch database
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/soak_bench .venv/bin/python benchmarks/soak.py \\
        --seconds 180 --labelers 50 [--students 16] [--base-model demo|DIR --adapters DIR]

Loopback only, bounded in time (``--seconds``; the load goes on until the last fault is over and checked)
and work (``--tasks``, ``--train-steps``). The script starts, on free ports: its OWN redis-server (never the
shared one: it restarts it), a gunicorn web tier (``--web-concurrency`` uvicorn workers, psycopg pool), one
Celery worker, and with ``--students`` > 0 the model endpoint. The model is ``--base-model`` (a directory, or ``demo``: the demo model already built under
``<var>/models/base``; the soak never builds one) with the ``<subject>/v1`` adapters of ``--adapters``
(default ``<var>/models/adapters``), copied into the soak's own models directory and registered as the
promoted v1 of each subject. Faults, one of each kind at seeded random moments in the middle 80 % of the run:

* ``web``: SIGKILL one gunicorn worker (the arbiter forks a new one);
* ``celery``: with a model, a real training step: a prune job with a LoRA recovery fine-tune of
  ``--train-steps`` steps is launched (in the first half of the run) through
  ``training.optimise.launch_optimise``; once its Job row is
  ``running`` and has reported a recovery step (polled), the Celery worker is SIGKILLed mid-step and a new one
  started; the soak then calls the reaper (``training.services.reap_dead_jobs``; the soak's processes run with
  ``TRAINING_JOB_STALE_SECONDS=--stale-seconds`` and a 1 s heartbeat) until the job is terminal. Without a
  model (or ``--train-steps 0``) the worker is killed while it runs ``feedback.update_reliability`` instead;
* ``redis``: stop the Redis server and start it again on the same port (cache + broker);
* ``endpoint``: (with students) SIGKILL the endpoint and start it again.

Afterwards: every ranking whose submit got a 201 and every chat message whose stream reached ``done`` is
in the database exactly once; no duplicate (labeler, task) ranking; no task has more rankings than its
overlap; the killed training job ended ``failed`` (reaped) or was retried to ``succeeded``, no version of it is
left ``training``, and no version is half-promoted (promoted while its job did not succeed); the endpoint
(with students) routes each subject to the version the database lists as promoted; no half-written artefact
is left in the models directory (complete but unreferenced ones, and ``.tmp-*`` leftovers, are listed);
``/healthz`` is green again within ``--heal-seconds`` of each fault (the time is measured and printed).
Exit status 1 if any check fails. Results: docs/web-tier.md.
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
from collections.abc import Callable
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
    training_job: int | None = None  # the job the celery fault killed mid-step


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


async def labeler(client: httpx.AsyncClient, token: str, running: Callable[[], bool], stats: Stats) -> None:
    headers = {"Authorization": f"Token {token}"}
    rnd = random.Random(token)
    while running():
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


async def student(client: httpx.AsyncClient, token: str, running: Callable[[], bool], stats: Stats) -> None:
    auth = {"Authorization": f"Token {token}"}
    headers = {**auth, "Accept": "application/jsonlines"}  # the stream only: the JSON API answers 406 to it
    while running():
        try:
            made = await client.post("/api/conversations/", json={"subject": "mathematics"}, headers=auth)
            if made.status_code != 201:
                stats.error(f"conversation {made.status_code}")
                await asyncio.sleep(0.5)  # back off
                continue
            conv = made.json()["id"]
            async with client.stream("POST", f"/api/conversations/{conv}/messages/", json={"content": "What is 2+3?"},
                                     headers=headers) as resp:
                if resp.status_code != 200:
                    stats.error(f"message {resp.status_code}")
                    wait = resp.headers.get("Retry-After", "")  # 429: the per-student chat rate limit
                    await asyncio.sleep(min(5.0, float(wait)) if wait.isdigit() else 0.5)  # back off
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


async def time_to_green(url: str, limit: float) -> tuple[float, dict[str, int]]:
    """Seconds until /healthz answers 200 (-1 if not within ``limit``), and how many polls saw each check red
    (which part was slow to heal)."""
    t0 = time.monotonic()
    red: dict[str, int] = {}
    async with httpx.AsyncClient(timeout=5) as client:
        while time.monotonic() - t0 < limit:
            try:
                resp = await client.get(f"{url}/healthz")
                if resp.status_code == 200:
                    return time.monotonic() - t0, red
                try:
                    failing = [k for k, v in resp.json()["checks"].items() if v != "ok"]
                except (ValueError, KeyError, AttributeError):
                    failing = [f"status {resp.status_code}"]
            except httpx.TransportError:
                failing = ["web unreachable"]
            for name in failing:
                red[name] = red.get(name, 0) + 1
            await asyncio.sleep(0.25)  # polling the health check
    return -1.0, red


def healthy(url: str) -> bool:
    return httpx.get(f"{url}/healthz", timeout=5).status_code == 200


SUBJECTS = ("history", "mathematics", "language", "general_knowledge")


@dataclass
class Model:
    base: Path  # the base model directory
    adapters: Path  # <subject>/v1 adapters for it
    subjects: list[str]


def find_model(base: str, adapters: Path | None) -> Model | str:
    """The model to serve and train, or why there is none. Looked up in the caller's var directory (before
    the soak points TUTOR_VAR_DIR at its own); "demo" is only found, never built (that takes minutes)."""
    from rlhf.models import DEMO_IDS
    from rlhf.paths import adapters_dir

    if base in DEMO_IDS:
        from rlhf.demo_model import DemoRecipe, demo_path

        path = demo_path(DemoRecipe.named(DEMO_IDS[base]))
    else:
        path = Path(base).expanduser().resolve()
    if not (path / "config.json").is_file():
        return f"no built base model at {path} (`make demo-model`, or --base-model DIR)"
    root = (adapters or adapters_dir()).expanduser().resolve()
    subjects = [s for s in SUBJECTS if (root / s / "v1" / "manifest.json").is_file()]
    if not subjects:
        return f"no <subject>/v1 adapters under {root} (--adapters DIR)"
    return Model(path, root, subjects)


def kill_in_training_step(procs: dict[str, Proc], worker: Proc, subject: str, steps: int, ready_seconds: float,
                          start: float, stats: Stats) -> str:
    """Launch a prune job (its LoRA recovery is the training loop) through the project's service, wait until
    its Job row is running and has reported a recovery step, SIGKILL the worker, start a new one."""
    from django.db import connection

    from training.models import Job, PolicyVersion
    from training.optimise import launch_optimise

    try:
        source = PolicyVersion.objects.get(subject=subject, version=1)
        t_launch = time.monotonic()
        job = launch_optimise(source, "prune", {"mode": "unstructured", "sparsity": 0.5, "recovery_steps": steps},
                              gate=False)
        stats.training_job = job.pk
        step = None
        while time.monotonic() - t_launch < ready_seconds:
            job.refresh_from_db(fields=["status", "metrics", "error"])
            if job.is_terminal:
                raise RuntimeError(f"training job #{job.pk} ended {job.status} before a recovery step: "
                                   f"{job.error[-300:]}")
            done = [r.get("step") for r in job.metrics or [] if "recovery_loss" in r]
            if job.status == Job.Status.RUNNING and done:
                step = done[-1]
                break
            time.sleep(0.1)  # readiness poll of the Job row (progress is written every 0.25 s)
        if step is None:
            raise TimeoutError(f"training job #{job.pk} reported no recovery step within {ready_seconds:.0f} s")
        t_ready = time.monotonic()
        procs["celery"].kill()
        t_kill = time.monotonic()
        procs["celery"] = Proc("celery", worker.cmd, worker.env, worker.log).start()
        return (f"{t_launch - start:6.1f} s launched job #{job.pk} (prune of {subject} v1, {steps} LoRA recovery "
                f"steps); running, recovery step {step}/{steps} reported {t_ready - t_launch:.1f} s later; "
                f"SIGKILL Celery worker in a training step at {t_kill - start:.1f} s, started a new one")
    finally:
        connection.close()


def training_outcome(job_id: int, t_kill: float, limit: float) -> str:
    """Call the reaper until the killed job is terminal (failed, or retried to the end); describe it."""
    from django.db import connection

    from training.models import Job, PolicyVersion
    from training.services import reap_dead_jobs

    try:
        reaped = False
        job = Job.objects.get(pk=job_id)
        while time.monotonic() - t_kill < limit:
            reaped = job_id in reap_dead_jobs() or reaped
            job.refresh_from_db()
            if job.is_terminal:
                break
            time.sleep(0.5)  # polling the Job row until its heartbeat is stale (or a retry finishes)
        after = time.monotonic() - t_kill
        versions = ", ".join(f"v{v} {s}" for v, s in PolicyVersion.objects.filter(job_id=job_id)
                             .order_by("version").values_list("version", "status")) or "none"
        how = "reaped" if reaped else f"attempt {job.attempts}"
        return (f"job #{job_id} {job.status} {after:.1f} s after the kill ({how}: {job.error or job.message}); "
                f"its versions: {versions}")
    finally:
        connection.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=180)
    ap.add_argument("--labelers", type=int, default=50)
    ap.add_argument("--students", type=int, default=0, help="chatting students (needs the endpoint and a model)")
    ap.add_argument("--base-model", default="demo", help="a model directory, or 'demo': the built demo model")
    ap.add_argument("--adapters", type=Path, default=None, help="<subject>/v1 adapters (default <var>/models/adapters)")
    ap.add_argument("--train-steps", type=int, default=200,
                    help="recovery steps of the training job the celery fault kills (0: kill a labeling task)")
    ap.add_argument("--train-ready-seconds", type=float, default=240, help="the job must report a step within this")
    ap.add_argument("--stale-seconds", type=float, default=10,
                    help="TRAINING_JOB_STALE_SECONDS of the soak: a job with no heartbeat this long is reaped")
    ap.add_argument("--tasks", type=int, default=3000)
    ap.add_argument("--web-concurrency", type=int, default=3)
    ap.add_argument("--heal-seconds", type=float, default=60, help="/healthz must be green within this")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep-logs", type=Path, default=None, help="copy the processes' logs here at the end")
    args = ap.parse_args(argv)
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        print("soak: set DATABASE_URL=postgres://... (a scratch database: it is flushed)")
        return 2
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        print("soak: redis-server is not installed (apt-get install redis-server)")
        return 2
    model = find_model(args.base_model, args.adapters) if args.students or args.train_steps > 0 else "not needed"
    if isinstance(model, str):
        if args.students:
            print(f"soak: students need a model: {model}")
            return 2
        print(f"soak: no training job in the celery fault: {model}")
    rnd = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    redis_port = free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    os.environ.update({"REDIS_URL": redis_url, "TUTOR_VAR_DIR": str(tmp / "var")})
    models_dir = tmp / "models"
    endpoint_port = free_port()
    if isinstance(model, Model):
        for subject in model.subjects:  # the soak's own registry: v1 of each subject, promoted at set-up
            shutil.copytree(model.adapters / subject / "v1", models_dir / "adapters" / subject / "v1")
        os.environ.update({"TUTOR_MODELS_DIR": str(models_dir), "TUTOR_BASE_MODEL": str(model.base),
                           "TUTOR_ENDPOINT_URL": f"http://127.0.0.1:{endpoint_port}",
                           "TUTOR_ENDPOINT_ADMIN_TOKEN": f"soak-{random.Random(args.seed).getrandbits(64):x}",
                           "TUTOR_DEPLOY_TARGET": "local", "TRAINING_HEARTBEAT_SECONDS": "1",
                           "TRAINING_JOB_STALE_SECONDS": str(args.stale_seconds), "TRAINING_PROGRESS_INTERVAL": "0.25"})
    train = isinstance(model, Model) and args.train_steps > 0
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
        if isinstance(model, Model):
            from training.services import ensure_initial_versions

            ensure_initial_versions()
        students = []
        env = {**os.environ, "FEEDBACK_GOLD_RATE": "0", "PYTHONUNBUFFERED": "1", "DB_POOL_MAX_SIZE": "4"}
        if args.students:
            endpoint = Proc("endpoint", [sys.executable, "-m", "serving", "--port", str(endpoint_port), "--base-model",
                                         str(model.base), "--adapters-dir", str(models_dir / "adapters"),
                                         "--log-level", "warning"], env, tmp / "endpoint.log").start()
            procs["endpoint"] = endpoint
            wait_for(lambda: httpx.get(f"http://127.0.0.1:{endpoint_port}/ping", timeout=2).status_code == 200, 900,
                     "the endpoint")
            from rest_framework.authtoken.models import Token

            from tutor.accounts import create_user
            from tutor.services import ensure_subjects

            ensure_subjects()  # the set-up's flush emptied the migration-seeded subjects
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
        from django.db import connection

        connection.close()  # the fault threads open their own
        print(f"soak: up in {boot:.1f} s (web {args.web_concurrency} workers, redis :{redis_port}, "
              f"{args.labelers} labelers, {args.students} students, {args.seconds:.0f} s"
              + (f", training kill: {args.train_steps}-step prune job on {model.base.name})" if train else ")"),
              flush=True)

        kinds = ["web", "celery", "redis"] + (["endpoint"] if args.students else [])
        rnd.shuffle(kinds)
        # the training job is launched at its moment and killed once it reports a step (seconds later on a busy
        # machine): launched in the first half, so the kill lands while the load still runs
        plan = sorted((rnd.uniform(0.1, 0.5 if kind == "celery" and train else 0.9) * args.seconds, kind)
                      for kind in kinds)

        def heal_text(healed: float, red: dict[str, int]) -> str:
            text = f"; /healthz green {healed:.1f} s later" if healed >= 0 else \
                f"; /healthz NOT green within {args.heal_seconds:.0f} s"
            return text + (" (red meanwhile: " + ", ".join(f"{k} x{n}" for k, n in red.items()) + ")" if red else "")

        async def training_fault(start: float, index: int) -> None:
            """The celery fault with a model; it runs beside the other faults (the job takes a while to step)."""
            line = await asyncio.to_thread(kill_in_training_step, procs, Proc("celery", worker_cmd, env,
                                           tmp / "celery.log"), model.subjects[0], args.train_steps,
                                           args.train_ready_seconds, start, stats)
            t_kill = time.monotonic()
            # the reaper fails the job once its heartbeat is stale; the load and the other faults go on meanwhile
            outcome = asyncio.create_task(asyncio.to_thread(training_outcome, stats.training_job, t_kill,
                                                            args.stale_seconds + 60 + args.train_steps))
            healed, red = await time_to_green(url, args.heal_seconds)
            stats.heal.append(healed)
            stats.faults[index] = line + heal_text(healed, red)
            print("fault:", stats.faults[index], flush=True)
            text = await outcome
            stats.faults[index] += "; " + text
            print("fault outcome:", text, flush=True)

        async def faults(start: float) -> None:
            try:
                await fault_plan(start)
            finally:
                faults_done.set()  # also on an error: the load must not wait for faults that will not come

        async def fault_plan(start: float) -> None:
            background = []
            for at, kind in plan:
                await asyncio.sleep(max(0.0, start + at - time.monotonic()))
                t = time.monotonic() - start
                if kind == "celery" and train:
                    stats.faults.append(f"{t:6.1f} s training job launched (in progress)")
                    background.append(asyncio.create_task(training_fault(start, len(stats.faults) - 1)))
                    continue
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
                healed, red = await time_to_green(url, args.heal_seconds)
                stats.heal.append(healed)
                stats.faults[-1] += heal_text(healed, red)
                print("fault:", stats.faults[-1], flush=True)
            await asyncio.gather(*background)

        faults_done = asyncio.Event()

        async def run() -> None:
            start = time.monotonic()
            stop = start + args.seconds

            def running() -> bool:  # the load runs --seconds, and on until every fault is over and checked
                return time.monotonic() < stop or not faults_done.is_set()

            limits = httpx.Limits(max_connections=args.labelers + args.students + 5)
            async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
                await asyncio.gather(faults(start), *(labeler(client, tok, running, stats) for _, tok in labelers),
                                     *(student(client, tok, running, stats) for tok in students))

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
        ok = check(stats, models_dir if isinstance(model, Model) else None, bool(args.students),
                   args.heal_seconds) and ok
    except Exception as exc:
        print(f"soak: FAILED: {type(exc).__name__}: {exc}")
        ok = False
    finally:
        for p in procs.values():
            p.kill(signal.SIGTERM)
        if args.keep_logs:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for log in tmp.glob("*.log"):
                shutil.copy2(log, args.keep_logs / log.name)
        shutil.rmtree(tmp, ignore_errors=True)
    print("soak:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


def check(stats: Stats, models_dir: Path | None, students: bool, heal_seconds: float) -> bool:
    """Exactly-once, overlap, training and serving checks against the database; prints each."""
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
    half, stuck = half_promoted(), stuck_training()
    print(f"rankings: clients saw {len(stats.created)} created, database holds {len(stored)}; lost {len(lost)}, "
          f"duplicated {dup_seen + dup_db}, over-labeled tasks {over}")
    print(f"chat messages acknowledged {len(stats.messages)}, lost {len(lost_msgs)}; half-promoted versions {half}, "
          f"versions left training by a finished job {stuck}")
    ok = not (lost or dup_seen or dup_db or over or lost_msgs or half or stuck)
    if students and not stats.messages:
        print("chat: no message was acknowledged: the chat path was not exercised  <-- FAIL")
        ok = False
    if stats.training_job is not None:
        ok = check_training_job(stats.training_job) and ok
    if students:
        ok = check_endpoint(heal_seconds) and ok
    if models_dir is not None:
        ok = check_artefacts(models_dir) and ok
    print("fault log:")
    for line in stats.faults:
        print("  " + line)
    return ok


def half_promoted() -> int:
    """Versions marked promoted whose training job did not succeed (0 when training never ran)."""
    from training.models import Job, PolicyVersion

    return PolicyVersion.objects.filter(status=PolicyVersion.Status.PROMOTED, job__isnull=False).exclude(
        job__status=Job.Status.SUCCEEDED).count()


def stuck_training() -> int:
    """Versions still ``training`` although their job is over (or gone): nothing would ever finish them."""
    from training.models import Job, PolicyVersion

    return PolicyVersion.objects.filter(status=PolicyVersion.Status.TRAINING).exclude(
        job__status__in=[Job.Status.QUEUED, Job.Status.RUNNING]).count()


def check_training_job(job_id: int) -> bool:
    """The killed job ended failed (reaped) or succeeded (retried); none of its versions is training or promoted."""
    from training.models import Job, PolicyVersion

    job = Job.objects.get(pk=job_id)
    versions = dict(PolicyVersion.objects.filter(job=job).values_list("version", "status"))
    bad = {v: s for v, s in versions.items() if s in (PolicyVersion.Status.TRAINING, PolicyVersion.Status.PROMOTED)
           or (job.status == Job.Status.FAILED and s != PolicyVersion.Status.FAILED)}
    fine = job.status in (Job.Status.FAILED, Job.Status.SUCCEEDED) and not bad
    print(f"training job #{job.pk} killed mid-step: {job.status} after {job.attempts} attempt(s); its versions "
          + (", ".join(f"v{v} {s}" for v, s in sorted(versions.items())) or "none")
          + f"; left training or promoted: {len(bad)}" + ("" if fine else "  <-- FAIL"))
    return fine


def check_endpoint(heal_seconds: float) -> bool:
    """The endpoint routes each subject to the version the database lists as promoted."""
    from training.models import PolicyVersion
    from training.services import get_deployer

    state: dict = {}

    def read() -> bool:
        state.update(get_deployer().state())
        return True

    wait_for(read, heal_seconds, "the endpoint's admin state")
    promoted = dict(PolicyVersion.objects.filter(status=PolicyVersion.Status.PROMOTED).values_list("subject", "version"))
    served = {s: (state.get(s) or {}).get("promoted") for s in promoted}
    differ = {s: (v, served[s]) for s, v in promoted.items() if served[s] != v}
    print("endpoint serves the promoted versions: " + ", ".join(f"{s} v{served[s]}" for s in sorted(served))
          + f"; disagreements with the database {len(differ)}" + (f" {differ}  <-- FAIL" if differ else ""))
    return not differ


def check_artefacts(models_dir: Path) -> bool:
    """No half-written artefact in the models directory; complete unreferenced ones and temp dirs are listed."""
    import re

    from rlhf.manifest import ArtifactError, verify
    from training.models import PolicyVersion, RewardModelVersion

    referenced = {str(Path(p).resolve()) for row in PolicyVersion.objects.values_list("path", "base_path")
                  for p in row if p} | {str(Path(p).resolve()) for p in
                                        RewardModelVersion.objects.values_list("path", flat=True) if p}
    half, orphans, temps = [], [], []
    for d in sorted(p for p in models_dir.rglob("*") if p.is_dir()):
        rel = d.relative_to(models_dir)
        if any(part.startswith((".tmp-", ".old-")) for part in rel.parts[:-1]):
            continue
        if d.name.startswith((".tmp-", ".old-")):
            temps.append(str(rel))
        elif (d / "manifest.json").is_file():
            try:
                verify(d)
            except ArtifactError as exc:
                half.append(f"{rel} ({exc})")
                continue
            if str(d.resolve()) not in referenced:
                orphans.append(str(rel))
        elif d.name == "base" or re.fullmatch(r"v\d+", d.name):
            half.append(f"{rel} (no manifest)")
    print(f"artefacts: half-written {len(half)}" + (f" {half}  <-- FAIL" if half else "")
          + f"; complete but referenced by no version {len(orphans)}" + (f" {orphans}" if orphans else "")
          + f"; temp leftovers {len(temps)}" + (f" {temps}" if temps else ""))
    return not half


if __name__ == "__main__":
    sys.exit(main())

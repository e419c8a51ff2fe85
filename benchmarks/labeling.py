"""Labelers over HTTP: the old single-process web tier against the production one, in one run.

    psql -h 127.0.0.1 -U postgres -c 'CREATE DATABASE feedback_bench'      # once; a scratch database
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/feedback_bench .venv/bin/python benchmarks/labeling.py
    ... labeling.py --levels 10 50 --submissions 600 --setups old new --web-concurrency 5 --seconds 60

Set-ups (each on a freshly flushed and seeded database, not timed):

* ``old``: one uvicorn process (``uvicorn config.asgi:application``, the Procfile's ``web`` of today), no pool;
* ``new``: gunicorn with ``--web-concurrency`` uvicorn workers and a psycopg pool of ``--pool`` connections
  per worker (``config/gunicorn_conf.py``, Procfile.prod ``web-prod``);
* ``granian`` (``--setups old new granian``): the same ASGI application, workers and pool served by Granian
  (Rust HTTP server, ``--interface asginl``), the other server the issue names; it is not a dependency of the
  project: ``.venv/bin/pip install 'granian>=2,<3'`` first (the set-up says so when it is missing).

``--tasks`` tasks (K=4, overlap 2) and one token-authenticated labeler per concurrent slot are created.
Each simulated labeler loops POST /api/label/next/ -> POST /api/label/tasks/<id>/submit/ (as the
simulated labelers of the training loop do) until the level's ``--submissions`` are spent or
``--seconds`` pass. Per level: submissions/s, p50/p99 of submit and of next, errors; afterwards the
ranking ids the clients saw in 201s are checked against the database: lost (a 201 with no row),
duplicated (two rows for one labeler and task) and over-labeled tasks (more rankings than overlap).
The last table prints new/old ratios. Target: at 50 labelers p99 < 100 ms, >= 3x old submissions/s.

Two paces (``--think``, one row each; several values run one after the other on the same server):

* ``--think 0`` (the default, as before): **saturation**. A closed loop with no think time: each labeler
  sends its next request the moment the previous one returns, so N labelers = N requests always in
  flight, and the latency is mostly queueing (Little's law: p50 ~ N / throughput). It measures the
  tier's capacity (submissions/s), not what a labeler waits.
* ``--think S``: **a human pace**. Each labeler pauses a random time of mean S seconds (``--think-dist``:
  exponential, or uniform on [S/2, 3S/2]; seeded by ``--seed`` and the labeler) after a ``next`` answer
  before it submits (reading and ranking) and after a ``submit`` before its next ``next``, and starts at a
  random moment in its first pause. The offered load is about N / S requests/s (printed with the
  measured rate); the latencies are what each click sees at that load. S = 5 is faster than anybody
  ranks four completions (tens of seconds), so it overstates the load of N real labelers.

Per row also: where the machine's cores went, in CPU ms per submission (``/proc``): the web tier (the
server and all its descendants), PostgreSQL (its live processes plus the exited backends the postmaster
reaped), and this load generator itself; then the cores they kept busy and the whole machine's busy cores
(``/proc/stat``). These do not depend on how busy the machine is, unlike the latencies, and they bound
the throughput: on C cores, submissions/s <= C / (web + database + load generator CPU per submission).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def setup(var_dir: Path, n_tasks: int, n_labelers: int) -> list[tuple[int, str]]:
    """Flush (PostgreSQL) and seed tasks + labelers; returns (user id, token) per labeler."""
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
    call_command("flush", interactive=False, verbosity=0)  # each set-up starts from the same empty tables
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
    if connection.vendor == "postgresql":
        # Statistics, as a deployment's tables have them. Freshly seeded tables have none until autovacuum's next
        # round (up to a minute): the planner then takes the 1,000-task queue for one row and nests loops over it
        # (the labeler's progress query: 4.9 ms instead of 0.4), which inflated the first level's database CPU.
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    connection.close()
    return labelers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def web_command(setup_name: str, port: int, workers: int, app: str = "config.asgi:application"
                ) -> tuple[list[str], dict[str, str]]:
    """The command line and extra environment of one set-up (``app``: the ASGI application to serve)."""
    if setup_name == "old":
        return ([sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port",
                 str(port), "--no-access-log", "--log-level", "warning"], {"DB_POOL_MAX_SIZE": "0"})
    if setup_name == "granian":
        # asginl: Django's ASGI handler refuses lifespan scopes; one blocking thread is what Granian runs
        # sync code on (none here: Django hops to its own thread pool, config/asgi_handler.py)
        return ([sys.executable, "-m", "granian", "--interface", "asginl", "--workers", str(workers), "--host",
                 "127.0.0.1", "--port", str(port), "--no-ws", "--loop", "uvloop", "--log-level", "warning",
                 "--no-access-log", app], {})
    return ([sys.executable, "-m", "gunicorn", "-c", "config/gunicorn_conf.py", app],
            {"WEB_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": str(workers), "WEB_LOG_LEVEL": "warning"})


def check_setup(name: str) -> None:
    """Exit with how to install a server the set-up needs and this venv lacks."""
    if name == "granian":
        import importlib.util

        if importlib.util.find_spec("granian") is None:
            raise SystemExit("the granian set-up needs Granian, which is not a dependency of the project: "
                             ".venv/bin/pip install 'granian>=2,<3' (or leave granian out of --setups)")


def start_web(setup_name: str, workers: int, pool: int, app: str = "config.asgi:application",
              production: bool = False) -> tuple[subprocess.Popen, str]:
    """Start one set-up; ``production``: ``DEBUG=false`` as deployed (no query log, no static finders), plain
    HTTP on loopback (``SECURE_SSL_REDIRECT=false``: a TLS proxy would sit in front)."""
    import secrets

    port = free_port()
    cmd, extra = web_command(setup_name, port, workers, app)
    mode = ({"DEBUG": "false", "SECRET_KEY": secrets.token_urlsafe(50), "SECURE_SSL_REDIRECT": "false"}
            if production else {"DEBUG": "true"})
    env = {**os.environ, "FEEDBACK_GOLD_RATE": "0", "PYTHONUNBUFFERED": "1", "DB_POOL_MAX_SIZE": str(pool),
           **mode, **extra}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:  # any answer from Django (401: no token) means it serves; pages need collectstatic without DEBUG
            if httpx.get(f"{url}/api/label/stats/", timeout=2).status_code < 500:
                return proc, url
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("the web process exited")
        time.sleep(0.2)  # polling while the server boots
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError("the web process did not start")


def stop_web(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3 onwards), or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return [text[text.index("(") + 1:text.rindex(")")]] + text.rsplit(")", 1)[1].split()


def descendants(root: int) -> list[int]:
    """The process and all its descendants, through every thread's children (Granian forks from a Rust
    thread, gunicorn from its main thread)."""
    seen, todo = [], [root]
    while todo:
        pid = todo.pop()
        seen.append(pid)
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError):
                    todo += [int(c) for c in (task / "children").read_text().split()]
    return seen


def _ticks(fields: list[str] | None, reaped: bool = False) -> int:
    if fields is None:
        return 0
    # fields[0] is comm; utime, stime, cutime, cstime are stat fields 14-17 (here 12-15)
    return int(fields[12]) + int(fields[13]) + ((int(fields[14]) + int(fields[15])) if reaped else 0)


def cpu_seconds(root: int) -> float:
    """User + system CPU of a server process and its descendants (gunicorn's or Granian's workers), from /proc.

    The per-submission CPU cost does not depend on how busy the machine is, unlike the latencies."""
    return sum(_ticks(_stat(pid)) for pid in descendants(root)) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_seconds() -> float:
    """CPU of the local PostgreSQL server: its live processes, plus what the postmaster has reaped of
    exited backends (a connection per request ends its backend), 0 when it is not on this machine."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat(int(entry.name))
        if fields is None or fields[0] != "postgres":
            continue
        parent = _stat(int(fields[2]))
        total += _ticks(fields, reaped=parent is None or parent[0] != "postgres")
    return total / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle (/proc/stat), to show what else ran meanwhile."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values[:8]) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))] * 1000


def pause(rnd: random.Random, think: float, dist: str) -> float:
    """One think time of mean ``think`` seconds (0: none)."""
    if think <= 0:
        return 0.0
    return rnd.expovariate(1 / think) if dist == "exp" else rnd.uniform(think / 2, think * 3 / 2)


async def think_then(rnd: random.Random, think: float, dist: str, deadline: float) -> bool:
    """Sleep one think time (the labeler reading and ranking); False when the level's time is up meanwhile."""
    wait = pause(rnd, think, dist)
    if wait:
        await asyncio.sleep(wait)  # the simulated human's pace, not synchronisation
    return time.monotonic() < deadline


async def labeler(client: httpx.AsyncClient, token: str, quota: list[int], deadline: float, stats: dict,
                  bar: tqdm, think: float = 0.0, dist: str = "exp", seed: int = 0) -> None:
    headers = {"Authorization": f"Token {token}"}
    rnd = random.Random(f"{seed}:{token}")
    if think > 0:  # labelers arrive spread over their first pause, not all in the same millisecond
        await asyncio.sleep(rnd.uniform(0, think))
    while quota[0] > 0 and time.monotonic() < deadline:
        t0 = time.perf_counter()
        try:
            r = await client.post("/api/label/next/", headers=headers)
        except httpx.TransportError as exc:  # counted, and the labeler carries on (its lease resumes)
            stats["errors"].append(f"next {type(exc).__name__}")
            continue
        stats["next"].append(time.perf_counter() - t0)
        stats["last"] = time.perf_counter()
        if r.status_code != 200:
            stats["errors"].append(f"next {r.status_code}")
            continue
        task = r.json()["task"]
        if task is None:
            return
        quota[0] -= 1
        ids = [c["id"] for c in task["completions"]]
        rnd.shuffle(ids)
        body = {"order": [[i] for i in ids], "ratings": {str(ids[0]): {"helpfulness": 6}}}
        if not await think_then(rnd, think, dist, deadline):
            return  # the lease stays held, as a labeler who closes the tab mid-task
        t0 = time.perf_counter()
        try:
            r = await client.post(f"/api/label/tasks/{task['task_id']}/submit/", json=body, headers=headers)
        except httpx.TransportError as exc:  # no answer seen: not counted as stored (nor as lost)
            stats["errors"].append(f"submit {type(exc).__name__}")
            continue
        stats["submit"].append(time.perf_counter() - t0)
        stats["last"] = time.perf_counter()
        if r.status_code == 201:
            stats["created"].append(r.json()["ranking"]["ranking_id"])
            bar.update()
        else:
            stats["errors"].append(f"submit {r.status_code}: {r.text[:120]}")
        if not await think_then(rnd, think, dist, deadline):
            return


def labeler_client(url: str, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    """One keep-alive connection per simulated labeler, as each browser has its own.

    One client shared by 50 labelers cost the load generator 13-17 ms of CPU per submission (httpcore scans
    its pool on every request), a third of what the server under test got on a 2-core machine."""
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    return httpx.AsyncClient(base_url=url, timeout=60, limits=limits, headers=headers)


async def run_level(url: str, tokens: list[str], submissions: int, seconds: float, label: str,
                    think: float = 0.0, dist: str = "exp", seed: int = 0) -> dict:
    stats = {"next": [], "submit": [], "errors": [], "created": []}
    quota = [submissions]
    with tqdm(total=submissions, desc=label, unit="sub", leave=False) as bar:
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(labeler_client(url)) for _ in tokens]
            t0 = stats["last"] = time.perf_counter()
            deadline = time.monotonic() + seconds
            await asyncio.gather(*(labeler(client, tok, quota, deadline, stats, bar, think, dist, seed)
                                   for client, tok in zip(clients, tokens, strict=True)))
            # up to the last answer: a labeler's final think, cut short by the deadline, is not measured time
            stats["wall"] = max(1e-9, stats["last"] - t0)
    return stats


def integrity(created_ids: list[int]) -> dict:
    """Lost / duplicated / over-labeled, from the database against what the clients saw."""
    from django.db.models import Count, F

    from feedback.models import ComparisonTask, Ranking

    stored = set(Ranking.objects.values_list("id", flat=True))
    dup = (Ranking.objects.values("labeler", "task").annotate(n=Count("id")).filter(n__gt=1).count())
    over = ComparisonTask.objects.annotate(n=Count("rankings")).filter(n__gt=F("overlap")).count()
    return {"seen": len(created_ids), "stored": len(stored), "lost": len(set(created_ids) - stored),
            "duplicated": dup + (len(created_ids) - len(set(created_ids))), "over_labeled": over}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--levels", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--submissions", type=int, default=600, help="submissions per level (at most)")
    ap.add_argument("--seconds", type=float, default=60, help="time cap per level")
    ap.add_argument("--tasks", type=int, default=1500)
    ap.add_argument("--setups", nargs="+", choices=["old", "new", "granian"], default=["old", "new"])
    ap.add_argument("--web-concurrency", type=int, default=None,
                    help="workers of the new and granian set-ups (default: config/gunicorn_conf.py's 2 x cores + 1)")
    ap.add_argument("--pool", type=int, default=4, help="psycopg pool size per worker (new and granian set-ups)")
    ap.add_argument("--think", type=float, nargs="+", default=[0.0],
                    help="mean think time (s) before each submit and each next; 0 = saturation (closed loop, no "
                         "pause: the default, as the numbers before); several values = one row each")
    ap.add_argument("--think-dist", choices=["exp", "uniform"], default="exp",
                    help="think time distribution: exponential of that mean, or uniform on [mean/2, 3 mean/2]")
    ap.add_argument("--seed", type=int, default=0, help="seeds the think times and the rankings")
    ap.add_argument("--asgi-app", default="config.asgi:application",
                    help="the ASGI application every set-up serves (e.g. to compare a handler variant)")
    ap.add_argument("--production-settings", action="store_true",
                    help="serve with DEBUG=false as deployed (default: DEBUG=true, as the numbers before)")
    args = ap.parse_args()
    for name in args.setups:
        check_setup(name)
    from config.gunicorn_conf import default_workers

    workers = args.web_concurrency or default_workers()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    results: dict[tuple[str, float, int], dict] = {}
    for think in args.think:
        for level in args.levels:
            print(f"offered load, think {think:g} s, {level} labelers: " + (
                f"saturation: a closed loop, {level} requests always in flight (no pause between requests)"
                if think <= 0 else
                f"~{level / think:.1f} requests/s (~{level / (2 * think):.1f} submissions/s): each labeler "
                f"pauses a mean {think:g} s ({args.think_dist}) before each submit and each next"), flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-labeling-") as tmp:
        for name in args.setups:
            labelers = setup(Path(tmp), args.tasks, sum(args.levels) * len(args.think))
            from django.db import connection

            desc = "1 uvicorn process, no pool" if name == "old" else \
                f"{'gunicorn' if name == 'new' else 'granian'}, {workers} " \
                f"{'uvicorn ' if name == 'new' else ''}workers, pool {args.pool}/worker"
            print(f"== {name}: {desc}; DEBUG={not args.production_settings}; database {connection.vendor}; "
                  f"cpus {os.cpu_count()}; "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
            proc, url = start_web(name, workers, 0 if name == "old" else args.pool, args.asgi_app,
                                  args.production_settings)
            created: list[int] = []
            try:
                offset = 0
                for think in args.think:
                    for level in args.levels:
                        tokens = [tok for _, tok in labelers[offset:offset + level]]
                        offset += level
                        cpu0, db0, gen0, busy0 = (cpu_seconds(proc.pid), postgres_cpu_seconds(),
                                                  time.process_time(), machine_busy_seconds())
                        s = asyncio.run(run_level(url, tokens, args.submissions, args.seconds,
                                                  f"{name} think {think:g} x{level}", think, args.think_dist,
                                                  args.seed))
                        per = 1000 / max(1, len(s["created"]))
                        s["cpu_ms"] = (cpu_seconds(proc.pid) - cpu0) * per
                        s["db_ms"] = (postgres_cpu_seconds() - db0) * per
                        s["gen_ms"] = (time.process_time() - gen0) * per
                        s["busy_s"] = machine_busy_seconds() - busy0
                        s["load"] = os.getloadavg()[0]
                        created += s["created"]
                        s["rate"] = len(s["created"]) / s["wall"]
                        s["req_rate"] = (len(s["next"]) + len(s["submit"])) / s["wall"]
                        results[(name, think, level)] = s
                        mode = "saturation" if think <= 0 else f"think {think:g} s"
                        print(f"{mode:>12} {level:3d} labelers: {s['rate']:7.1f} submissions/s "
                              f"({s['req_rate']:.1f} req/s) | submit p50 "
                              f"{pct(s['submit'], 50):6.1f} ms p99 {pct(s['submit'], 99):7.1f} ms | next p50 "
                              f"{pct(s['next'], 50):6.1f} ms p99 {pct(s['next'], 99):7.1f} ms | "
                              f"web CPU {s['cpu_ms']:.1f} ms/submission | "
                              f"{len(s['created'])} stored in {s['wall']:.1f} s, {len(s['errors'])} errors "
                              f"{s['errors'][:2]} | load {s['load']:.1f}", flush=True)
                        total_ms = s["cpu_ms"] + s["db_ms"] + s["gen_ms"]
                        print(f"{'':>12} CPU ms/submission: web {s['cpu_ms']:.1f}, PostgreSQL {s['db_ms']:.1f}, "
                              f"load generator {s['gen_ms']:.1f}; cores busy: these "
                              f"{total_ms * max(1, len(s['created'])) / 1000 / s['wall']:.2f}, machine "
                              f"{s['busy_s'] / s['wall']:.2f} of {os.cpu_count()}; ceiling at this CPU cost "
                              f"{os.cpu_count() * 1000 / total_ms:.0f} submissions/s", flush=True)
            finally:
                stop_web(proc)
            check = integrity(created)
            print(f"   integrity: clients saw {check['seen']} created, database holds {check['stored']}; "
                  f"lost {check['lost']}, duplicated {check['duplicated']}, over-labeled tasks "
                  f"{check['over_labeled']}", flush=True)
        for other in [name for name in ("new", "granian") if name in args.setups and "old" in args.setups]:
            print(f"== {other} / old (same run)")
            for think in args.think:
                for level in args.levels:
                    o, n = results[("old", think, level)], results[(other, think, level)]
                    mode = "saturation" if think <= 0 else f"think {think:g} s"
                    print(f"{mode:>12} {level:3d} labelers: submissions/s x{n['rate'] / o['rate']:.2f} | submit p99 "
                          f"{pct(o['submit'], 99):.0f} -> {pct(n['submit'], 99):.0f} ms | next p99 "
                          f"{pct(o['next'], 99):.0f} -> {pct(n['next'], 99):.0f} ms | web CPU "
                          f"{o['cpu_ms']:.1f} -> {n['cpu_ms']:.1f} ms/submission")
        from django.db import connection

        if connection.vendor == "postgresql":
            from django.core.management import call_command

            call_command("flush", interactive=False, verbosity=0)


if __name__ == "__main__":
    main()

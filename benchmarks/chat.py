"""Chat latency under load: N concurrent simulated students, web (Django) hop vs. endpoint direct.

Starts its own processes like `make demo` does (an endpoint, a uvicorn web process on a fresh
SQLite database in a temporary var dir), or uses running ones (``--endpoint-url``). For each
concurrency level every student sends ``--asks`` questions one after another, streamed:

* web:    POST /api/conversations/<id>/messages/ (Accept: application/jsonlines) → Django → endpoint
* direct: serving.client.AsyncEndpointClient.stream with the same messages and max_new_tokens

and reports p50/p95 time to first token and to the full answer, and the ratio web/direct.

    .venv/bin/python benchmarks/chat.py --base-model demo            # the bundled demo model
    .venv/bin/python benchmarks/chat.py --base-model var/models/base/demo-<hash> --adapters-dir ...
    .venv/bin/python benchmarks/chat.py --endpoint-url http://127.0.0.1:8080 --levels 1 8 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
# the project first: benchmarks/serving.py (this directory, sys.path[0]) would shadow the serving package
sys.path.insert(0, str(ROOT))
from benchmarks.labeling import cpu_seconds  # noqa: E402

QUESTIONS = [
    ("mathematics", "What is 12 + 30?"),
    ("history", "Who crossed the Alps with elephants?"),
    ("language", "What is the plural of mouse?"),
    ("general_knowledge", "What is the capital of France?"),
]


@dataclass
class Sample:
    ttft: float  # seconds to the first token
    total: float  # seconds to the complete answer
    tokens: int


@dataclass
class Result:
    samples: list[Sample] = field(default_factory=list)
    errors: int = 0
    cpu_ms: float | None = None  # web process CPU per question (web path only)

    def pct(self, attr: str, q: float) -> float:
        values = sorted(getattr(s, attr) for s in self.samples)
        if not values:
            return float("nan")
        if len(values) == 1:
            return values[0]
        return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{what} did not come up within {timeout:.0f}s")


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def prepare_database(env: dict[str, str], students: int) -> list[tuple[str, list[int]]]:
    """Migrate a fresh database and create students, each with a token and one conversation per
    subject; returns ``[(token, [conversation ids in QUESTIONS order])]``."""
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, env=env, check=True)
    script = (
        "import json\n"
        "from rest_framework.authtoken.models import Token\n"
        "from tutor import services\n"
        "from tutor.accounts import create_user\n"
        f"subjects = {[s for s, _ in QUESTIONS]!r}\n"
        "out = []\n"
        f"run = {uuid.uuid4().hex[:6]!r}\n"
        f"for i in range({students}):\n"
        "    u = create_user(username=f'bench-{run}-{i}', password='bench-pass-1', role='student', validate_password=False)\n"
        "    out.append([Token.objects.create(user=u).key,\n"
        "                [services.start_conversation(u, s).pk for s in subjects]])\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([sys.executable, "manage.py", "shell", "-c", script], cwd=ROOT, env=env, check=True,
                          capture_output=True, text=True)
    return [tuple(x) for x in json.loads(done.stdout.strip().splitlines()[-1])]


async def ask_web(http: httpx.AsyncClient, token: str, subject: str, question: str) -> Sample:
    """One question in a fresh conversation (created untimed), so both paths send one turn."""
    made = await http.post("/api/conversations/", json={"subject": subject},
                           headers={"Authorization": f"Token {token}"})
    made.raise_for_status()
    conv = made.json()["id"]
    t0 = time.perf_counter()
    ttft = None
    tokens = 0
    async with http.stream("POST", f"/api/conversations/{conv}/messages/", json={"content": question},
                           headers={"Authorization": f"Token {token}", "Accept": "application/jsonlines"}) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"web answered {resp.status_code}: {(await resp.aread())[:200]!r}")
        async for line in resp.aiter_lines():
            if not line.strip():
                continue
            ev = json.loads(line)
            if ev["event"] == "token":
                tokens += 1
                if ttft is None:
                    ttft = time.perf_counter() - t0
            elif ev["event"] == "error":
                raise RuntimeError(ev["error"])
    total = time.perf_counter() - t0
    return Sample(ttft if ttft is not None else total, total, tokens)


async def ask_direct(client, question: str, subject: str, routing_key: str, max_new_tokens: int) -> Sample:
    t0 = time.perf_counter()
    ttft = None
    tokens = 0
    async for ev in client.stream(messages=[{"role": "user", "content": question}], subject=subject,
                                  routing_key=routing_key, max_new_tokens=max_new_tokens):
        if "token" in ev:
            tokens += 1
            if ttft is None:
                ttft = time.perf_counter() - t0
    total = time.perf_counter() - t0
    return Sample(ttft if ttft is not None else total, total, tokens)


async def run_level(mode: str, level: int, asks: int, students: list, web_url: str, endpoint_url: str,
                    max_new_tokens: int) -> Result:
    from serving.client import AsyncEndpointClient

    result = Result()
    bar = tqdm(total=level * asks, desc=f"{mode:6} x{level:<2}", leave=False)
    limits = httpx.Limits(max_connections=level + 4)
    async with httpx.AsyncClient(base_url=web_url, timeout=120, limits=limits) as http, \
            AsyncEndpointClient(endpoint_url, timeout=120) as direct:

        async def student(i: int) -> None:
            token, convs = students[i]
            for k in range(asks):
                q = (i + k) % len(QUESTIONS)
                subject, question = QUESTIONS[q]
                try:
                    if mode == "web":
                        sample = await ask_web(http, token, subject, question)
                    else:
                        sample = await ask_direct(direct, question, subject, f"conversation-{convs[q]}",
                                                  max_new_tokens)
                    result.samples.append(sample)
                except Exception as exc:  # count and keep going: one failure should not hide the rest
                    result.errors += 1
                    tqdm.write(f"{mode} x{level}: {exc}")
                bar.update(1)

        await asyncio.gather(*(student(i) for i in range(level)))
    bar.close()
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levels", type=int, nargs="+", default=[1, 8, 16])
    p.add_argument("--asks", type=int, default=4, help="questions per student per level")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--base-model", default="demo", help="'demo' or a model directory (ignored with --endpoint-url)")
    p.add_argument("--adapters-dir", type=Path, default=None, help="<dir>/<subject>/v<N>/ adapters for the endpoint")
    p.add_argument("--endpoint-url", default=None, help="use a running endpoint instead of starting one")
    p.add_argument("--threads", type=int, default=None, help="endpoint torch threads")
    p.add_argument("--database-url", default=None, help="e.g. postgres://... (default: SQLite in a temp dir)")
    p.add_argument("--redis-url", default=None, help="cache/broker for the web process (default: embedded)")
    p.add_argument("--web-concurrency", type=int, default=0,
                   help="serve the web tier with gunicorn and this many uvicorn workers (0: one uvicorn process)")
    p.add_argument("--asgi-app", default="config.asgi:application",
                   help="the ASGI application the web process serves (e.g. a wrapper that logs per-request spans)")
    args = p.parse_args()

    var = Path(tempfile.mkdtemp(prefix="tutorloop-bench-"))
    env = {**os.environ, "TUTOR_VAR_DIR": str(var), "PYTHONUNBUFFERED": "1", "HEALTHZ_CHECK_ENDPOINT": "false",
           "TUTOR_MESSAGE_RATE": "100000/min", "TUTOR_MAX_NEW_TOKENS": str(args.max_new_tokens),
           "DEBUG": "true", "LOG_LEVEL": "WARNING"}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    if args.database_url:
        env["DATABASE_URL"] = args.database_url
    if args.redis_url:
        env["REDIS_URL"] = args.redis_url
    procs: list[subprocess.Popen] = []
    try:
        endpoint_url = args.endpoint_url
        if endpoint_url is None:
            port = free_port()
            cmd = [sys.executable, "-m", "serving", "--port", str(port), "--base-model", args.base_model,
                   "--log-level", "warning"]
            cmd += ["--adapters-dir", str(args.adapters_dir)] if args.adapters_dir else []
            cmd += ["--threads", str(args.threads)] if args.threads else []
            procs.append(start(cmd, env, var / "endpoint.log"))
            endpoint_url = f"http://127.0.0.1:{port}"
            print(f"starting the endpoint on {args.base_model} ...", flush=True)
            wait_http(f"{endpoint_url}/ping", procs[-1], "the endpoint", 900)
        env["TUTOR_ENDPOINT_URL"] = endpoint_url
        students = prepare_database(env, max(args.levels))
        web_port = free_port()
        if args.web_concurrency:  # the production web tier (config/gunicorn_conf.py, Procfile.prod)
            web_env = {**env, "WEB_BIND": f"127.0.0.1:{web_port}", "WEB_CONCURRENCY": str(args.web_concurrency),
                       "WEB_LOG_LEVEL": "warning"}
            procs.append(start([sys.executable, "-m", "gunicorn", "-c", "config/gunicorn_conf.py",
                                args.asgi_app], web_env, var / "web.log"))
        else:  # one uvicorn process, as `make demo`
            procs.append(start([sys.executable, "-m", "uvicorn", args.asgi_app, "--host", "127.0.0.1",
                                "--port", str(web_port), "--no-access-log", "--log-level", "warning"], env,
                               var / "web.log"))
        web_proc = procs[-1]
        web_url = f"http://127.0.0.1:{web_port}"
        wait_http(f"{web_url}/accounts/login/", procs[-1], "the web process", 120)

        # warm up both paths (model caches, Django imports, first DB connections)
        asyncio.run(run_level("direct", 1, 2, students, web_url, endpoint_url, args.max_new_tokens))
        asyncio.run(run_level("web", 1, 2, students, web_url, endpoint_url, args.max_new_tokens))

        rows = []
        load = [os.getloadavg()[0]]
        for level in args.levels:
            # alternate the order so drift on a shared machine does not favour one path
            direct = asyncio.run(run_level("direct", level, args.asks, students, web_url, endpoint_url,
                                           args.max_new_tokens))
            cpu0 = cpu_seconds(web_proc.pid)
            web = asyncio.run(run_level("web", level, args.asks, students, web_url, endpoint_url,
                                        args.max_new_tokens))
            web.cpu_ms = (cpu_seconds(web_proc.pid) - cpu0) * 1000 / max(1, len(web.samples))
            rows.append((level, web, direct))
            load.append(os.getloadavg()[0])

        print(f"\nchat latency, {args.asks} streamed questions per student, max_new_tokens={args.max_new_tokens}, "
              f"endpoint {endpoint_url} ({args.base_model if args.endpoint_url is None else 'external'}), "
              f"database {'SQLite' if not args.database_url else args.database_url.split(':')[0]}, "
              f"load average {min(load):.1f}-{max(load):.1f} while measuring")
        head = (f"{'students':>8} | {'path':6} | {'ttft p50':>9} {'ttft p95':>9} | {'full p50':>9} {'full p95':>9}"
                f" | {'tok/ans':>7} | err | web CPU/question")
        print(head)
        print("-" * len(head))
        for level, web, direct in rows:
            for name, r in (("web", web), ("direct", direct)):
                toks = statistics.mean(s.tokens for s in r.samples) if r.samples else 0
                print(f"{level:>8} | {name:6} | {r.pct('ttft', 50) * 1e3:7.0f}ms {r.pct('ttft', 95) * 1e3:7.0f}ms | "
                      f"{r.pct('total', 50) * 1e3:7.0f}ms {r.pct('total', 95) * 1e3:7.0f}ms | {toks:7.1f} | {r.errors:3}"
                      + (f" | {r.cpu_ms:.1f} ms (with its untimed conversation create)" if r.cpu_ms is not None else ""))
            print(f"{'':>8} | ratio  | {web.pct('ttft', 50) / direct.pct('ttft', 50):8.2f}x "
                  f"{web.pct('ttft', 95) / direct.pct('ttft', 95):8.2f}x | "
                  f"{web.pct('total', 50) / direct.pct('total', 50):8.2f}x "
                  f"{web.pct('total', 95) / direct.pct('total', 95):8.2f}x |  (web / direct)")
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                os.killpg(proc.pid, 15)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, 9)
        shutil.rmtree(var, ignore_errors=True)


if __name__ == "__main__":
    main()

"""Side by side with Label Studio: the same ranking tasks, the same number of concurrent annotators.

    psql -h 127.0.0.1 -U postgres -c 'CREATE DATABASE ls_bench'       # Label Studio's own database
    psql -h 127.0.0.1 -U postgres -c 'CREATE DATABASE feedback_bench' # ours (flushed)
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/feedback_bench .venv/bin/python benchmarks/label_studio.py \\
        --annotators 10 50 --seconds 60 [--ls-database ls_bench]

1. Label Studio is installed into its own virtualenv under ``var/label-studio/venv`` (``pip install
   label-studio``, nothing shared with ours; skipped if already there) and started on PostgreSQL as its
   docs say (``DJANGO_DB=default`` + ``POSTGRE_NAME/USER/PASSWORD/HOST/PORT``), with an admin user and API
   token (``label-studio start --username --password --user-token``).
2. A ranking project (``<List>`` + ``<Ranker>``, Label Studio's LLM-ranking template) gets the same tasks as
   ours: a prompt and four replies each.
3. N concurrent annotators drive it through its REST API the way our load generator drives ours: "next"
   (``GET /api/projects/<id>/next``) then "submit" (``POST /api/tasks/<id>/annotations/``). Label Studio
   Community has no per-annotator token API without e-mail invitations, so all annotators share the admin
   token and each takes its own slice of task ids (its "next" call is still made and timed).
4. Ours runs in the same process (benchmarks/labeling.py's ``new`` set-up) with the same N.

Printed per N: submissions/s, submit and next p50/p99, errors, for both, and the ratios. When Label
Studio cannot be installed, started or driven, the script says which step failed and why (exit 2).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.labeling import free_port, labeler_client, pct, run_level, setup, start_web, stop_web  # noqa: E402

LS_DIR = ROOT / "var" / "label-studio"
LS_USER = "bench@example.org"
LABEL_CONFIG = """<View>
  <Text name="prompt" value="$prompt"/>
  <List name="answers" value="$items" title="Replies"/>
  <Ranker name="rank" toName="answers"/>
</View>"""


class Unavailable(Exception):
    """Label Studio could not be installed, started or driven here; the message says why."""


def install(pip_spec: str, timeout: float) -> Path:
    venv = LS_DIR / "venv"
    exe = venv / "bin" / "label-studio"
    if exe.exists():
        return exe
    LS_DIR.mkdir(parents=True, exist_ok=True)
    log = LS_DIR / "install.log"
    print(f"installing {pip_spec} into {venv} (log: {log}) ...", flush=True)
    with open(log, "ab") as out:
        if subprocess.run([sys.executable, "-m", "venv", str(venv)], stdout=out, stderr=out).returncode:
            raise Unavailable(f"python -m venv failed (see {log})")
        try:
            rc = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", pip_spec], stdout=out, stderr=out,
                                timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            raise Unavailable(f"pip install {pip_spec} did not finish in {timeout:.0f} s (see {log})") from None
    if rc or not exe.exists():
        tail = log.read_text(errors="replace")[-800:]
        raise Unavailable(f"pip install {pip_spec} failed (exit {rc}); last lines of {log}:\n{tail}")
    return exe


def start_label_studio(exe: Path, db: str, token: str, timeout: float) -> tuple[subprocess.Popen, str]:
    pg = urlsplit(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/x"))
    port = free_port()
    env = {**os.environ, "DJANGO_DB": "default", "POSTGRE_NAME": db, "POSTGRE_USER": pg.username or "postgres",
           "POSTGRE_PASSWORD": pg.password or "", "POSTGRE_HOST": pg.hostname or "127.0.0.1",
           "POSTGRE_PORT": str(pg.port or 5432), "LABEL_STUDIO_BASE_DATA_DIR": str(LS_DIR / "data"),
           "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true", "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": ""}
    for key in ("DATABASE_URL", "DJANGO_SETTINGS_MODULE", "TUTOR_VAR_DIR", "REDIS_URL"):
        env.pop(key, None)
    log = open(LS_DIR / "server.log", "ab")  # noqa: SIM115 - owned by the child
    cmd = [str(exe), "start", "--no-browser", "--host", "127.0.0.1", "--port", str(port),
           "--username", LS_USER, "--password", secrets.token_urlsafe(12), "--user-token", token]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise Unavailable(f"label-studio start exited with {proc.returncode} (see {LS_DIR / 'server.log'})")
        try:
            if httpx.get(f"{url}/health", timeout=3).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(1)  # polling while it migrates and boots
    os.killpg(proc.pid, signal.SIGKILL)
    raise Unavailable(f"label-studio did not answer /health within {timeout:.0f} s (see {LS_DIR / 'server.log'})")


def connect(db: str):
    """An autocommit connection to Label Studio's database, on the server DATABASE_URL names."""
    import psycopg

    pg = urlsplit(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/x"))
    return psycopg.connect(host=pg.hostname or "127.0.0.1", port=pg.port or 5432, user=pg.username or "postgres",
                           password=pg.password or None, dbname=db, autocommit=True)


def enable_legacy_tokens(db: str, token: str) -> str:
    """Label Studio >= 1.17 starts with legacy API tokens off (its personal access tokens are JWTs to refresh).
    An admin turns them on in Organization -> API token settings; the benchmark owns the database, so it sets
    the same flag there (`jwt_auth_jwtsettings.legacy_api_tokens_enabled`). Returns the admin's token: the one
    `--user-token` set when the user was first created (a later start keeps it)."""
    import psycopg

    with connect(db) as conn:
        with contextlib.suppress(psycopg.errors.UndefinedTable):  # older Label Studio: legacy tokens only
            conn.execute("UPDATE jwt_auth_jwtsettings SET legacy_api_tokens_enabled = true")
        row = conn.execute("SELECT t.key FROM authtoken_token t JOIN htx_user u ON u.id = t.user_id "
                           "WHERE u.email = %s", (LS_USER,)).fetchone()
    return row[0] if row else token


def analyze(db: str) -> None:
    with connect(db) as conn:
        conn.execute("ANALYZE")


def make_project(url: str, token: str, n_tasks: int) -> tuple[int, list[int]]:
    headers = {"Authorization": f"Token {token}"}
    with httpx.Client(base_url=url, headers=headers, timeout=120) as c:
        r = c.post("/api/projects", json={"title": f"tutorloop ranking {int(time.time())}",
                                           "label_config": LABEL_CONFIG})
        if r.status_code == 401:
            raise Unavailable("Label Studio refused the legacy API token (401): this version may need "
                              "personal access tokens enabled in the organisation settings")
        if r.status_code >= 300:
            raise Unavailable(f"creating the ranking project failed: {r.status_code} {r.text[:300]}")
        project = r.json()["id"]
        tasks = [{"data": {"prompt": f"Benchmark question {i}?",
                           "items": [{"id": f"r{j}", "title": f"reply {j}", "body": f"reply {j} to question {i}"}
                                     for j in range(4)]}} for i in range(n_tasks)]
        r = c.post(f"/api/projects/{project}/import", json=tasks)
        if r.status_code >= 300:
            raise Unavailable(f"importing tasks failed: {r.status_code} {r.text[:300]}")
        ids: list[int] = []
        page = 1
        while True:
            r = c.get("/api/tasks", params={"project": project, "page": page, "page_size": 500, "fields": "all"})
            if r.status_code != 200:
                break
            body = r.json()
            items = body.get("tasks", body) if isinstance(body, dict) else body
            if not items:
                break
            ids += [t["id"] for t in items]
            page += 1
        if not ids:
            raise Unavailable("could not list the imported tasks")
        return project, sorted(ids)


async def ls_annotator(client: httpx.AsyncClient, project: int, mine: list[int], deadline: float, stats: dict) -> None:
    rnd = random.Random(mine[0] if mine else 0)
    for task_id in mine:
        if time.monotonic() > deadline:
            return
        t0 = time.perf_counter()
        r = await client.get(f"/api/projects/{project}/next")
        stats["next"].append(time.perf_counter() - t0)
        if r.status_code not in (200, 404):
            stats["errors"].append(f"next {r.status_code}")
        order = [f"r{j}" for j in range(4)]
        rnd.shuffle(order)
        result = [{"from_name": "rank", "to_name": "answers", "type": "ranker", "value": {"ranker": {"rank": order}}}]
        t0 = time.perf_counter()
        r = await client.post(f"/api/tasks/{task_id}/annotations/", json={"result": result})
        stats["submit"].append(time.perf_counter() - t0)
        if r.status_code == 201:
            stats["created"].append(r.json().get("id"))
        else:
            stats["errors"].append(f"submit {r.status_code}: {r.text[:100]}")


async def ls_level(url: str, token: str, project: int, task_ids: list[int], n: int, per: int, seconds: float) -> dict:
    stats = {"next": [], "submit": [], "errors": [], "created": []}
    slices = [task_ids[i * per:(i + 1) * per] for i in range(n)]
    async with contextlib.AsyncExitStack() as stack:  # one connection per annotator, as ours (labeler_client)
        slices = [s for s in slices if s]
        clients = [await stack.enter_async_context(labeler_client(url, {"Authorization": f"Token {token}"}))
                   for _ in slices]
        t0 = time.perf_counter()
        deadline = time.monotonic() + seconds
        await asyncio.gather(*(ls_annotator(client, project, s, deadline, stats)
                               for client, s in zip(clients, slices, strict=True)))
        stats["wall"] = time.perf_counter() - t0
    return stats


def line(name: str, n: int, s: dict) -> str:
    rate = len(s["created"]) / s["wall"]
    s["rate"] = rate
    return (f"{name:12} {n:3d} annotators: {rate:7.1f} submissions/s | submit p50 {pct(s['submit'], 50):6.1f} "
            f"p99 {pct(s['submit'], 99):7.1f} ms | next p50 {pct(s['next'], 50):6.1f} p99 {pct(s['next'], 99):7.1f} "
            f"ms | {len(s['created'])} stored, {len(s['errors'])} errors {s['errors'][:2]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--annotators", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--per-annotator", type=int, default=12, help="tasks each annotator submits (at most)")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--ls-database", default="ls_bench", help="Label Studio's PostgreSQL database (must exist)")
    ap.add_argument("--pip-spec", default="label-studio>=1.13,<2")
    ap.add_argument("--install-timeout", type=float, default=1800)
    ap.add_argument("--web-concurrency", type=int, default=None)
    args = ap.parse_args()
    if not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        print("label_studio: set DATABASE_URL=postgres://... for our side (a scratch database: it is flushed)")
        return 2
    n_tasks = max(args.annotators) * args.per_annotator * 2
    token = secrets.token_hex(20)
    ls_results: dict[int, dict] = {}
    proc = None
    try:
        exe = install(args.pip_spec, args.install_timeout)
        proc, url = start_label_studio(exe, args.ls_database, token, timeout=900)
        token = enable_legacy_tokens(args.ls_database, token)
        for n in args.annotators:
            project, ids = make_project(url, token, n * args.per_annotator)
            analyze(args.ls_database)  # statistics for its fresh tables too, as ours get (labeling.setup)
            ls_results[n] = asyncio.run(ls_level(url, token, project, ids, n, args.per_annotator, args.seconds))
            print(line("Label Studio", n, ls_results[n]), flush=True)
    except Unavailable as exc:
        print(f"label_studio: Label Studio could not be compared here: {exc}")
        return 2
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    import tempfile

    from config.gunicorn_conf import default_workers

    workers = args.web_concurrency or default_workers()
    with tempfile.TemporaryDirectory(prefix="bench-ls-") as tmp:
        labelers = setup(Path(tmp), n_tasks, sum(args.annotators))
        logging.getLogger("httpx").setLevel(logging.WARNING)  # Django's logging config logs every request
        web, ours_url = start_web("new", workers, 4)
        try:
            offset = 0
            for n in args.annotators:
                tokens = [tok for _, tok in labelers[offset:offset + n]]
                offset += n
                ours = asyncio.run(run_level(ours_url, tokens, n * args.per_annotator, args.seconds, f"ours x{n}"))
                print(line("tutorloop", n, ours))
                theirs = ls_results[n]
                print(f"{'ratio':12} {n:3d} annotators: throughput x{ours['rate'] / max(theirs['rate'], 1e-9):.2f}, "
                      f"submit p99 {pct(theirs['submit'], 99) / max(pct(ours['submit'], 99), 1e-9):.2f}x lower")
        finally:
            stop_web(web)
    return 0


if __name__ == "__main__":
    sys.exit(main())

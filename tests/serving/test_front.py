"""The HTTP front and the model worker in two processes (`python -m serving --model-process`, serving.front).

Real processes both: the front on TCP, the worker behind it on a Unix socket. What must hold across the
boundary: the same answers as a single-process endpoint, streaming, a killed worker restarted (in-flight
streams told so, new requests 503 + Retry-After, never a hang), hot swaps surviving the restart, and the
worker's 429 back-pressure reaching the client.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.fixtures.endpoint import install_adapters, start_endpoint
from tests.serving.test_endpoint import LONG, TOKEN_LIMIT, post, republish, wait_until

ARGS = ["--threads", "1", "--model-process", "--max-new-tokens-limit", str(TOKEN_LIMIT)]
GREEDY = {"prompt": "When did the war end?", "subject": "history", "parameters": {"max_new_tokens": 12,
                                                                                 "temperature": 0}}


@pytest.fixture
def front(tiny_base_path, tiny_adapters, tmp_path):
    adapters_dir = tmp_path / "adapters"
    install_adapters({s: Path(p) for s, p in tiny_adapters.items()}, adapters_dir)
    with start_endpoint(tiny_base_path, adapters_dir, tmp_path / "var", admin_token="front-token", args=ARGS) as s:
        yield s


def worker_pid(url: str) -> int:
    return httpx.get(url + "/ping").json()["front"]["pid"]


def test_answers_and_streams_like_one_process(front, tiny_base_path, tiny_adapters, tmp_path):
    ping = httpx.get(front.url + "/ping").json()
    assert ping["status"] == "ok" and ping["front"]["channel"].startswith("unix:") and ping["adapters"] == 4
    assert ping["front"]["pid"] != front.process.pid  # the model lives in another process
    via_front = post(front.url, GREEDY).json()["outputs"][0]
    single_dir = tmp_path / "single"
    install_adapters({s: Path(p) for s, p in tiny_adapters.items()}, single_dir)
    with start_endpoint(tiny_base_path, single_dir, tmp_path / "var1", args=["--threads", "1"]) as single:
        direct = post(single.url, GREEDY).json()["outputs"][0]
    assert via_front["text"] == direct["text"] and via_front["adapter"] == direct["adapter"]
    with httpx.stream("POST", front.url + "/invocations", json=GREEDY, headers={"Accept": "text/event-stream"},
                      timeout=60) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1]["done"] and events[-1]["outputs"][0]["text"] == direct["text"]
    assert "tutor_endpoint_worker_ready 1" in httpx.get(front.url + "/metrics").text
    assert httpx.get(front.url + "/admin/adapters").status_code == 401  # the worker's admin API, as it is


def test_a_killed_worker_is_restarted_and_nobody_hangs(front):
    client = front.client()
    # a hot swap before the crash: v2 (a copy of v1) promoted for history
    republish(front.adapters_dir / "history" / "v1", front.adapters_dir / "history" / "v2", "history", 2)
    client.load_adapter("history", 2, front.adapters_dir / "history" / "v2")
    client.set_routing("history", 2)
    pid = worker_pid(front.url)
    long = {**GREEDY, "parameters": {"max_new_tokens": LONG, "min_new_tokens": LONG}}
    with httpx.stream("POST", front.url + "/invocations", json=long, headers={"Accept": "application/jsonlines"},
                      timeout=60) as r:
        lines = r.iter_lines()
        next(lines)  # the stream is running
        os.kill(pid, signal.SIGKILL)
        rest = [json.loads(line) for line in lines if line]
    assert "model worker stopped mid-answer" in rest[-1]["error"]
    r = post(front.url, GREEDY)  # down or loading: told to retry, at once
    statuses = [r.status_code]
    deadline = time.monotonic() + 120
    while r.status_code != 200 and time.monotonic() < deadline:
        assert r.status_code == 503 and r.headers["retry-after"] == "1", r.text
        time.sleep(0.2)  # the client's own retry pause
        r = post(front.url, GREEDY)
        statuses.append(r.status_code)
    assert statuses[0] == 503 and r.status_code == 200, statuses
    assert r.json()["outputs"][0]["adapter"] == {"subject": "history", "version": 2}  # the swap survived
    ping = httpx.get(front.url + "/ping").json()["front"]
    assert ping["restarts"] == 1 and ping["pid"] != pid and ping["last_exit"] == -signal.SIGKILL


def test_backpressure_crosses_the_boundary(tiny_base_path, tiny_adapters, tmp_path):
    adapters_dir = tmp_path / "adapters"
    install_adapters({"history": Path(tiny_adapters["history"])}, adapters_dir)
    with start_endpoint(tiny_base_path, adapters_dir, tmp_path / "var",
                        args=[*ARGS, "--max-batch-size", "1", "--max-queue", "1"]) as small:
        body = {"prompt": "Go on.", "subject": "history",
                "parameters": {"max_new_tokens": LONG, "min_new_tokens": LONG, "temperature": 1}}
        hdr = {"Accept": "application/jsonlines"}
        with httpx.Client(timeout=60) as a, httpx.Client(timeout=60) as b, \
                a.stream("POST", small.url + "/invocations", json=body, headers=hdr) as running:
            lines = running.iter_lines()
            next(lines)  # this request holds the only batch slot
            with b.stream("POST", small.url + "/invocations", json=body, headers=hdr):
                wait_until(lambda: httpx.get(small.url + "/ping").json().get("waiting") == 1, what="a queued request")
                r = post(small.url, body)
                assert r.status_code == 429 and "queue is full" in r.json()["error"]
                assert r.headers["retry-after"] == "1"

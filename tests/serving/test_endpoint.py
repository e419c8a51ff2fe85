"""The endpoint over real HTTP: a `python -m serving` process on the tiny demo model + tiny adapters."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from serving.client import AsyncEndpointClient, EndpointClient, EndpointError
from tests.fixtures.endpoint import install_adapters, start_endpoint

SUBJECTS = ("history", "mathematics", "language", "general_knowledge")
TOKEN_LIMIT = 20000  # the test servers allow long generations so that requests stay in flight
LONG = TOKEN_LIMIT  # a generation that outlives any test step (tens of seconds on the tiny model)
QUESTION = [{"role": "user", "content": "When did the Second World War end?"}]


def wait_until(predicate, timeout: float = 20.0, what: str = "condition"):
    """Poll `predicate` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def metric(url: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus sample's values (matching the given labels) from /metrics."""
    total = 0.0
    for line in httpx.get(url + "/metrics").text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def post(url: str, body, headers=None, timeout: float = 60.0) -> httpx.Response:
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return httpx.post(url + "/invocations", content=data, headers=headers or {}, timeout=timeout)


def republish(src: Path, dest: Path, subject: str, version: int) -> Path:
    """A copy of an adapter artefact under a new version number (same weights, fresh manifest)."""
    from rlhf.manifest import read_manifest, write_artifact

    manifest = read_manifest(src)

    def populate(tmp: Path) -> None:
        for rel in manifest["files"]:
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src / rel, tmp / rel)

    return write_artifact(dest, "adapter", populate, base_model=manifest.get("base_model"),
                          base_model_sha256=manifest.get("base_model_sha256"),
                          extra={"subject": subject, "version": version, "method": manifest.get("method", "lora")})


@pytest.fixture(scope="module")
def server(endpoint_server):
    return endpoint_server


@pytest.fixture(scope="module")
def admin(server) -> EndpointClient:
    with server.client() as c:
        yield c


# ---- the contract --------------------------------------------------------------------------------

def test_ping_reports_ready(server):
    r = httpx.get(server.url + "/ping")
    assert r.status_code == 200
    assert r.json()["status"] == "ok"
    assert r.json()["adapters"] == 4


def test_invocation_answers_json_with_adapter_usage_and_timings(server):
    r = post(server.url, {"messages": QUESTION, "subject": "history",
                          "parameters": {"max_new_tokens": 12, "temperature": 0}})
    assert r.status_code == 200, r.text
    body = r.json()
    (out,) = body["outputs"]
    assert out["adapter"] == {"subject": "history", "version": 1}
    assert isinstance(out["text"], str) and 1 <= out["tokens"] <= 12
    assert out["finish_reason"] in ("length", "stop")
    assert body["usage"]["completion_tokens"] == out["tokens"]
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + out["tokens"]
    assert body["timings"]["time_to_first_token_ms"] > 0
    assert body["timings"]["total_ms"] >= body["timings"]["time_to_first_token_ms"]


@pytest.mark.parametrize("accept", ["application/jsonlines", "text/event-stream"])
def test_streaming_sends_tokens_then_done(server, accept):
    body = {"messages": [{"role": "user", "content": "Tell me about grammar."}],
            "adapter": {"subject": "language", "version": 1},
            "parameters": {"max_new_tokens": 16, "min_new_tokens": 8, "temperature": 0}}
    events = []
    with httpx.stream("POST", server.url + "/invocations", json=body, headers={"Accept": accept}, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith(accept)
        for line in r.iter_lines():
            if accept == "text/event-stream":
                if not line:
                    continue
                assert line.startswith("data: ")
                line = line[6:]
            if line:
                events.append(json.loads(line))
    *tokens, done = events
    assert done["done"] is True
    assert tokens and all(set(e) == {"index", "token"} and e["index"] == 0 for e in tokens)
    assert "".join(e["token"] for e in tokens) == done["outputs"][0]["text"]
    # and the stream is the same generation as the JSON answer (greedy)
    again = post(server.url, body).json()
    assert again["outputs"][0]["text"] == done["outputs"][0]["text"]


def test_n_completions_are_sampled_and_reproducible_with_a_seed(server):
    body = {"messages": [{"role": "user", "content": "Explain fractions."}], "subject": "mathematics",
            "parameters": {"n": 4, "max_new_tokens": 12, "min_new_tokens": 6, "temperature": 1.0, "seed": 7}}
    first = post(server.url, body).json()
    assert len(first["outputs"]) == 4
    texts = [o["text"] for o in first["outputs"]]
    assert len(set(texts)) > 1, "n sampled completions should differ"
    assert all(o["adapter"] == {"subject": "mathematics", "version": 1} for o in first["outputs"])
    assert first["usage"]["completion_tokens"] == sum(o["tokens"] for o in first["outputs"])
    second = post(server.url, body).json()
    assert [o["text"] for o in second["outputs"]] == texts


def test_stop_string_truncates(server):
    base = {"messages": [{"role": "user", "content": "Tell me a story."}], "subject": "history",
            "parameters": {"max_new_tokens": 20, "min_new_tokens": 20, "temperature": 0}}
    full = post(server.url, base).json()["outputs"][0]
    assert len(full["text"]) >= 4, full  # min_new_tokens=20 guarantees something to cut
    stop = full["text"][2:4]
    cut = post(server.url, {**base, "parameters": {**base["parameters"], "stop": [stop]}}).json()["outputs"][0]
    assert cut["finish_reason"] == "stop"
    assert cut["text"] == full["text"][: full["text"].index(stop)]


@pytest.mark.parametrize(("body", "status", "message"), [
    ("{not json", 400, "malformed JSON"),
    ([1, 2], 400, "must be a JSON object"),
    ({"prompt": "hi"}, 400, "'subject' (a string) or 'adapter' is required"),
    ({"prompt": "hi", "messages": QUESTION, "subject": "history"}, 400, "exactly one of 'messages' or 'prompt'"),
    ({"prompt": "hi", "subject": "astrology"}, 404, "unknown subject 'astrology'"),
    ({"prompt": "hi", "adapter": {"subject": "history", "version": 99}}, 404, "history v99 is not loaded"),
    ({"prompt": "hi", "subject": "history", "parameters": {"max_new_tokens": TOKEN_LIMIT + 1}}, 400,
     f"max_new_tokens must be between 1 and {TOKEN_LIMIT}"),
    ({"prompt": "hi", "subject": "history", "parameters": {"temperature": "hot"}}, 400, "temperature must be a number"),
    ({"prompt": "hi", "subject": "history", "parameters": {"beam": 4}}, 400, "unknown parameter(s): beam"),
    ({"prompt": "word " * 3000, "subject": "history"}, 413, "the limit is 1024"),
    ({"messages": [{"role": "wizard", "content": "x"}], "subject": "history"}, 400, "role"),
])
def test_bad_input_gets_a_clear_error(server, body, status, message):
    r = post(server.url, body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_oversized_body_is_413(server):
    r = post(server.url, json.dumps({"prompt": "x" * (1 << 20), "subject": "history"}))
    assert r.status_code == 413
    assert "limit" in r.json()["error"]


def test_admin_api_needs_the_token(server):
    assert httpx.get(server.url + "/admin/adapters").status_code == 401
    r = httpx.get(server.url + "/admin/adapters", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and "token" in r.json()["error"]
    with EndpointClient(server.url, admin_token="wrong") as c, pytest.raises(EndpointError) as err:
        c.list_adapters()
    assert err.value.status == 401


# ---- batching --------------------------------------------------------------------------------------

def test_mixed_adapter_batch_gives_the_same_greedy_tokens_as_alone(server):
    prompts = ["Hi.", "What is seven times eight, please?", "Name a verb.", "Who built the pyramids of Giza?"]
    jobs = [(s, p) for s in SUBJECTS for p in prompts[:2]] + [(s, prompts[(i + 2) % 4]) for i, s in enumerate(SUBJECTS)]

    def run(job):
        subject, prompt = job
        r = post(server.url, {"messages": [{"role": "user", "content": prompt}], "subject": subject,
                              "parameters": {"max_new_tokens": 24, "min_new_tokens": 12, "temperature": 0}})
        assert r.status_code == 200, r.text
        return r.json()["outputs"][0]

    alone = [run(j) for j in jobs]  # one at a time: batch size 1
    steps_before = metric(server.url, "tutor_endpoint_batch_size_count")
    singles_before = metric(server.url, "tutor_endpoint_batch_size_bucket", le="1.0")
    with ThreadPoolExecutor(len(jobs)) as pool:
        together = list(pool.map(run, jobs))
    steps = metric(server.url, "tutor_endpoint_batch_size_count") - steps_before
    singles = metric(server.url, "tutor_endpoint_batch_size_bucket", le="1.0") - singles_before
    assert steps > singles, "the concurrent requests never shared a decode step"
    assert [(o["text"], o["tokens"]) for o in together] == [(o["text"], o["tokens"]) for o in alone]
    assert {o["adapter"]["subject"] for o in together} == set(SUBJECTS)


def test_lora_output_matches_peft_reference(server, tiny_base_path, tiny_adapters):
    """The server's batched LoRA maths equals PEFT's own model on the same adapter."""
    import torch
    from peft import PeftModel

    from rlhf.models import load_base

    model, tok = load_base(tiny_base_path, device="cpu")
    peft = PeftModel.from_pretrained(model, str(tiny_adapters["mathematics"])).eval()
    from rlhf.chat import build_prompt

    messages = [{"role": "user", "content": "What is seven times eight?"}]
    ids = tok(build_prompt(tok, "mathematics", messages), return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        gen = peft.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, min_new_tokens=8,
                            do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    expected = tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
    got = post(server.url, {"messages": messages, "subject": "mathematics",
                            "parameters": {"max_new_tokens": 16, "min_new_tokens": 8, "temperature": 0}}).json()
    assert expected.strip()
    assert got["outputs"][0]["text"] == expected
    assert got["usage"]["prompt_tokens"] == ids.shape[1]


def test_prompt_tuning_adapter_is_served_in_the_shared_batch(server, admin, tiny_base_path, tmp_path):
    """A prompt-tuning adapter loaded at run time answers like PEFT's own (uncached) forward pass."""
    import torch
    from peft import PromptTuningConfig, TaskType, get_peft_model

    from rlhf.manifest import write_artifact
    from rlhf.models import load_base

    model, tok = load_base(tiny_base_path, device="cpu")
    torch.manual_seed(3)
    peft = get_peft_model(model, PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4)).eval()
    with torch.no_grad():
        peft.prompt_encoder["default"].embedding.weight.normal_(std=1.0)
    path = write_artifact(tmp_path / "language" / "v7", "adapter", lambda d: peft.save_pretrained(str(d)),
                          extra={"subject": "language", "version": 7, "method": "prompt_tuning"})
    assert admin.load_adapter("language", 7, path)["adapter"]["method"] == "prompt_tuning"
    try:
        prompt = "Name a verb."
        seq = tok(prompt)["input_ids"]
        n_prompt = len(seq)
        with torch.inference_mode():
            for step in range(10):
                logits = peft(input_ids=torch.tensor([seq]), attention_mask=torch.ones(1, len(seq), dtype=torch.long))
                last = logits.logits[0, -1]
                if step < 6:
                    last[tok.eos_token_id] = float("-inf")
                nxt = int(last.argmax())
                if nxt == tok.eos_token_id:
                    break
                seq.append(nxt)
        expected = tok.decode(seq[n_prompt:], skip_special_tokens=True)
        body = {"prompt": prompt, "adapter": {"subject": "language", "version": 7},
                "parameters": {"max_new_tokens": 10, "min_new_tokens": 6, "temperature": 0}}
        lora_body = {"prompt": "Name a noun.", "subject": "history", "parameters": {"max_new_tokens": 10, "temperature": 0}}
        with ThreadPoolExecutor(4) as pool:
            outs = list(pool.map(lambda b: post(server.url, b).json()["outputs"][0], [body, lora_body, body, lora_body]))
        assert expected.strip()
        assert outs[0]["text"] == expected and outs[2]["text"] == expected
        assert outs[0]["adapter"] == {"subject": "language", "version": 7}
    finally:
        admin.unload_adapter("language", 7)


# ---- adapters: verification, hot swap, canary ------------------------------------------------------

def test_tampered_adapter_is_refused(server, admin, tiny_adapters, tmp_path):
    bad = tmp_path / "history-v5"
    shutil.copytree(tiny_adapters["history"], bad)
    weights = bad / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    before = admin.list_adapters()
    with pytest.raises(EndpointError) as err:
        admin.load_adapter("history", 5, bad)
    assert err.value.status == 422
    assert "verification failed" in err.value.message and "SHA-256" in err.value.message
    assert admin.list_adapters()["adapters"] == before["adapters"]
    with pytest.raises(EndpointError) as err:
        admin.load_adapter("history", 5, tmp_path / "missing")
    assert err.value.status == 400


def test_hot_swap_under_load_loses_nothing(server, admin, tiny_adapters, tmp_path):
    body = {"prompt": "Who built the pyramids of Giza?", "subject": "history",
            "parameters": {"max_new_tokens": 1500, "min_new_tokens": 1500, "temperature": 0}}
    reference = post(server.url, body).json()["outputs"][0]
    v2 = republish(Path(tiny_adapters["history"]), tmp_path / "history" / "v2", "history", 2)
    n_old = 10
    started = threading.Barrier(n_old + 1, timeout=60)
    results: list[dict] = []

    def stream_one() -> None:
        first = True
        with httpx.stream("POST", server.url + "/invocations", json=body,
                          headers={"Accept": "application/jsonlines"}, timeout=60) as r:
            for line in r.iter_lines():
                if not line:
                    continue
                if first:
                    started.wait()  # every old request is decoding before the swap begins
                    first = False
                event = json.loads(line)
                if event.get("done") or "error" in event:
                    results.append(event)

    threads = [threading.Thread(target=stream_one) for _ in range(n_old)]
    for t in threads:
        t.start()
    try:
        started.wait()
        admin.load_adapter("history", 2, v2)
        admin.set_routing("history", promoted=2)
        unloaded = admin.unload_adapter("history", 1)
        new = post(server.url, {**body, "parameters": {"max_new_tokens": 5, "temperature": 0}}).json()
        assert new["outputs"][0]["adapter"] == {"subject": "history", "version": 2}
        for t in threads:
            t.join(60)
        assert len(results) == n_old and all(e.get("done") for e in results), results
        for e in results:  # finished on the version they started on, uncorrupted
            assert e["outputs"][0]["adapter"] == {"subject": "history", "version": 1}
            assert e["outputs"][0]["text"] == reference["text"]
        assert unloaded["draining"] is True
        wait_until(lambda: not admin.list_adapters()["draining"], what="v1 to drain")
        with pytest.raises(EndpointError) as err:
            admin.generate(prompt="hi", subject="history", version=1, max_new_tokens=2)
        assert err.value.status == 404
    finally:  # restore v1 as the promoted version for the other tests
        for t in threads:
            t.join(60)
        v1_back = republish(Path(tiny_adapters["history"]), tmp_path / "history" / "v1", "history", 1)
        if not any(a["version"] == 1 and a["subject"] == "history" for a in admin.list_adapters()["adapters"]):
            admin.load_adapter("history", 1, v1_back)
        admin.set_routing("history", promoted=1)
        admin.unload_adapter("history", 2)


def test_canary_routing_is_sticky_per_routing_key(server, admin, tiny_adapters, tmp_path):
    v3 = republish(Path(tiny_adapters["general_knowledge"]), tmp_path / "gk" / "v3", "general_knowledge", 3)
    admin.load_adapter("general_knowledge", 3, v3)
    with pytest.raises(EndpointError) as err:
        admin.set_routing("general_knowledge", promoted=1, candidate=4, candidate_share=0.5)
    assert err.value.status == 404
    admin.set_routing("general_knowledge", promoted=1, candidate=3, candidate_share=0.5)
    try:
        def version_for(key: str) -> int:
            out = admin.generate(prompt="hi", subject="general_knowledge", routing_key=key, max_new_tokens=1)
            return out["outputs"][0]["adapter"]["version"]

        chosen = {f"conversation-{i}": version_for(f"conversation-{i}") for i in range(24)}
        assert set(chosen.values()) == {1, 3}
        assert all(version_for(k) == v for k, v in list(chosen.items())[:8])
        with pytest.raises(EndpointError) as err:
            admin.unload_adapter("general_knowledge", 3)
        assert err.value.status == 409
    finally:
        admin.set_routing("general_knowledge", promoted=1)
        admin.unload_adapter("general_knowledge", 3)


# ---- flow control ----------------------------------------------------------------------------------

def test_client_disconnect_frees_its_slot(server):
    def running() -> int:
        return httpx.get(server.url + "/ping").json()["running"]

    wait_until(lambda: running() == 0, what="an idle endpoint")
    body = {"prompt": "Go on forever.", "subject": "language", "parameters": {"max_new_tokens": LONG, "min_new_tokens": LONG, "temperature": 1}}
    with httpx.stream("POST", server.url + "/invocations", json=body, headers={"Accept": "application/jsonlines"},
                      timeout=60) as r:
        lines = r.iter_lines()  # keep a reference: a collected iterator closes the response
        first = json.loads(next(lines))
        assert set(first) == {"index", "token"}, first
        assert running() == 1
    wait_until(lambda: running() == 0, timeout=10, what="the slot to be freed after the disconnect")
    wait_until(lambda: metric(server.url, "tutor_endpoint_requests_total", status="499") >= 1, what="499 counted")


def test_metrics_are_prometheus_text(server):
    post(server.url, {"prompt": "hi", "subject": "history", "parameters": {"max_new_tokens": 3}})
    r = httpx.get(server.url + "/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for name in ("tutor_endpoint_requests_total", "tutor_endpoint_generated_tokens_total",
                 "tutor_endpoint_tokens_per_second", "tutor_endpoint_queue_depth",
                 "tutor_endpoint_batch_size_bucket", "tutor_endpoint_time_to_first_token_seconds_bucket"):
        assert name in text, name
    assert metric(server.url, "tutor_endpoint_generated_tokens_total", subject="history", version="1") >= 3


def test_overload_answers_429_and_token_file_is_private(tiny_base_path, tiny_adapters, tmp_path):
    adapters_dir = tmp_path / "adapters"
    install_adapters({"history": Path(tiny_adapters["history"])}, adapters_dir)
    with start_endpoint(tiny_base_path, adapters_dir, tmp_path / "var",
                        args=["--threads", "1", "--max-batch-size", "1", "--max-queue", "1",
                              "--max-new-tokens-limit", str(TOKEN_LIMIT)]) as small:
        token_file = small.var_dir / "endpoint_admin_token"
        assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
        assert httpx.get(small.url + "/admin/adapters",
                         headers={"Authorization": f"Bearer {small.admin_token}"}).status_code == 200
        body = {"prompt": "Go on.", "subject": "history", "parameters": {"max_new_tokens": LONG, "min_new_tokens": LONG, "temperature": 1}}
        hdr = {"Accept": "application/jsonlines"}
        with httpx.Client(timeout=60) as a, httpx.Client(timeout=60) as b, \
                a.stream("POST", small.url + "/invocations", json=body, headers=hdr) as running:
            lines = running.iter_lines()  # keep a reference: a collected iterator closes the response
            next(lines)  # this request occupies the only batch slot
            with b.stream("POST", small.url + "/invocations", json=body, headers=hdr):
                wait_until(lambda: httpx.get(small.url + "/ping").json()["waiting"] == 1, what="a queued request")
                r = post(small.url, body)
                assert r.status_code == 429
                assert "queue is full" in r.json()["error"] and r.headers["retry-after"] == "1"
        wait_until(lambda: httpx.get(small.url + "/ping").json()["running"] == 0, what="the slots to be freed")


# ---- the client ------------------------------------------------------------------------------------

def test_sync_client_generate_stream_and_errors(server):
    with server.client(timeout=30) as c:
        assert c.ping()["status"] == "ok"
        out = c.generate(messages=QUESTION, subject="history", max_new_tokens=6, temperature=0)
        events = list(c.stream(messages=QUESTION, subject="history", max_new_tokens=6, temperature=0))
        assert events[-1]["done"] and events[-1]["outputs"][0]["text"] == out["outputs"][0]["text"]
        with pytest.raises(EndpointError) as err:
            c.generate(prompt="hi", subject="astrology")
        assert err.value.status == 404 and "astrology" in err.value.message
        with pytest.raises(EndpointError) as err:
            list(c.stream(prompt="hi", subject="history", max_new_tokens=0))
        assert err.value.status == 400


def test_client_retries_connect_errors_then_gives_up():
    from tests.fixtures.endpoint import free_port

    url = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with EndpointClient(url, retries=2, backoff=0.01, timeout=2) as c, pytest.raises(EndpointError) as err:
        c.ping()
    assert err.value.status == 0 and "cannot reach" in err.value.message
    assert time.monotonic() - t0 < 5


def test_async_client_streams_concurrently(server):
    async def main():
        async with AsyncEndpointClient(server.url, admin_token=server.admin_token) as c:
            assert (await c.ping())["status"] == "ok"

            async def one(subject):
                events = [e async for e in c.stream(prompt="Hello.", subject=subject, max_new_tokens=5, temperature=0)]
                return events[-1]

            dones = await asyncio.gather(*(one(s) for s in SUBJECTS))
            listed = await c.list_adapters()
            return dones, listed

    dones, listed = asyncio.run(main())
    assert [d["outputs"][0]["adapter"]["subject"] for d in dones] == list(SUBJECTS)
    assert {a["subject"] for a in listed["adapters"]} == set(SUBJECTS)

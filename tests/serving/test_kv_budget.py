"""The KV-cache budget: beyond `TUTOR_ENDPOINT_KV_BUDGET_MB` new requests get 429 (413 if one alone is too big)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.fixtures.endpoint import install_adapters, start_endpoint
from tests.serving.test_endpoint import post, wait_until

LONG = 20000  # stays in flight for the whole test (tens of seconds on the tiny model)
# The tiny demo model (2 layers, hidden 64, fp32) holds 2 * 2 * 64 * 4 = 1 KiB of KV cache per position:
# one LONG request (~20,000 positions, rounded up to the 64-position growth chunk) reserves ~19.6 MiB.
BUDGET_MB = 25


def test_kv_budget_refuses_with_429_then_admits_again(tiny_base_path, tiny_adapters, tmp_path):
    adapters_dir = tmp_path / "adapters"
    install_adapters({"history": Path(tiny_adapters["history"])}, adapters_dir)
    with start_endpoint(tiny_base_path, adapters_dir, tmp_path / "var", env={"TUTOR_ENDPOINT_KV_BUDGET_MB": str(BUDGET_MB)},
                        args=["--threads", "1", "--max-new-tokens-limit", str(LONG)]) as ep:
        def ping() -> dict:
            return httpx.get(ep.url + "/ping").json()

        assert ping()["kv_reserved_bytes"] == 0
        long = {"prompt": "Go on.", "subject": "history",
                "parameters": {"max_new_tokens": LONG, "min_new_tokens": LONG, "temperature": 1}}
        short = {"prompt": "Hi", "subject": "history", "parameters": {"max_new_tokens": 4}}

        too_big = post(ep.url, {**long, "parameters": {**long["parameters"], "n": 2}})
        assert too_big.status_code == 413, too_big.text
        assert "KV cache" in too_big.json()["error"] and "budget" in too_big.json()["error"]
        assert ping()["kv_reserved_bytes"] == 0  # refused: nothing reserved, nothing queued

        with httpx.Client(timeout=60) as a, a.stream("POST", ep.url + "/invocations", json=long,
                                                     headers={"Accept": "application/jsonlines"}) as running:
            lines = running.iter_lines()  # keep a reference: a collected iterator closes the response
            assert set(json.loads(next(lines))) == {"index", "token"}
            reserved = ping()["kv_reserved_bytes"]
            assert 19 * 2**20 < reserved <= BUDGET_MB * 2**20
            r = post(ep.url, short)  # even a tiny request: the padded batch would exceed the budget
            assert r.status_code == 429, r.text
            assert "KV-cache budget is full" in r.json()["error"] and r.headers["retry-after"] == "1"
            assert ping()["kv_reserved_bytes"] == reserved
        # the client went away: its reservation is released with its batch row
        wait_until(lambda: ping()["kv_reserved_bytes"] == 0, what="the KV reservation to be released")
        ok = post(ep.url, short)
        assert ok.status_code == 200 and ok.json()["outputs"][0]["tokens"] >= 1
        assert ping()["kv_reserved_bytes"] == 0

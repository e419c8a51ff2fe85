"""Endpoint throughput and time to first token: our continuous-batching server vs a naive one.

Not a test. Both servers run as real processes on the same base model and the same four subject
LoRA adapters, and the same async clients stream from them over HTTP:

- **naive**: one request at a time behind a lock — `set_adapter(subject)` then HF `generate`
  (streaming through a `BaseStreamer`), i.e. what a first version of the endpoint would do;
- **ours**: `python -m serving` (continuous batching, mixed-adapter batches, own KV cache).

Every request generates exactly `--new-tokens` tokens (`min_new_tokens` = `max_new_tokens`), so
tokens/s compare like with like. Prints tokens/s, p50/p95 time to first token and the ratio at each
concurrency (1, 8, 32 clients by default; clients round-robin over the 4 subject adapters), and how
busy ours' decode loop was.

    .venv/bin/python benchmarks/serving.py                   # demo model (tiny if the default is not built)
    .venv/bin/python benchmarks/serving.py --base-model bloom-560m --new-tokens 16 --requests-per-client 1
    .venv/bin/python benchmarks/serving.py --base-model bloom-560m:8192   # bloom-560m shape, 8k vocabulary

`bloom-560m[-L<layers>][:<vocab>]` is a seeded random-weight BLOOM of bloom-560m's shape
(`rlhf.shaped_base`, built once under `<var>/models/base`), its adapters r=16 on all four
projections.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

SUBJECTS = ("history", "mathematics", "language", "general_knowledge")


# ---- the naive baseline server ---------------------------------------------------------------------

def naive_server(base: str, adapters_dir: str, port: int, threads: int, device: str = "cpu") -> None:
    """HF generate per request, one at a time: `set_adapter` + `generate` under a lock."""
    import torch
    import uvicorn
    from peft import PeftModel
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route
    from transformers.generation.streamers import BaseStreamer

    from rlhf.chat import build_prompt
    from rlhf.models import load_base

    torch.set_num_threads(threads)
    model, tok = load_base(base, device=device)
    peft = None
    for subject in SUBJECTS:
        path = str(Path(adapters_dir) / subject / "v1")
        if peft is None:
            peft = PeftModel.from_pretrained(model, path, adapter_name=subject)
        else:
            peft.load_adapter(path, adapter_name=subject)
    peft.eval()
    lock = threading.Lock()

    class QueueStreamer(BaseStreamer):
        def __init__(self, loop, queue):
            self.loop, self.queue, self.prompt_seen = loop, queue, False

        def put(self, value):
            if not self.prompt_seen:  # generate() first puts the prompt
                self.prompt_seen = True
                return
            for t in value.reshape(-1).tolist():
                self.loop.call_soon_threadsafe(self.queue.put_nowait, t)

        def end(self):
            self.loop.call_soon_threadsafe(self.queue.put_nowait, None)

    def run(subject, ids, params, streamer):
        with lock, torch.inference_mode():
            peft.set_adapter(subject)
            peft.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                          max_new_tokens=params["max_new_tokens"], min_new_tokens=params.get("min_new_tokens", 0),
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, streamer=streamer)

    async def invocations(request):
        body = await request.json()
        subject = body["subject"]
        ids = tok(build_prompt(tok, subject, body["messages"]), return_tensors="pt")["input_ids"].to(model.device)
        loop, queue = asyncio.get_running_loop(), asyncio.Queue()
        task = asyncio.ensure_future(asyncio.to_thread(run, subject, ids, body["parameters"],
                                                       QueueStreamer(loop, queue)))

        async def stream():
            out = []
            while (t := await queue.get()) is not None:
                out.append(t)
                yield json.dumps({"index": 0, "token": tok.decode([t])}) + "\n"
            await task
            yield json.dumps({"done": True, "outputs": [{"text": tok.decode(out), "tokens": len(out)}]}) + "\n"

        return StreamingResponse(stream(), media_type="application/jsonlines")

    async def ping(request):
        return JSONResponse({"status": "ok"})

    app = Starlette(routes=[Route("/ping", ping), Route("/invocations", invocations, methods=["POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# ---- setup -----------------------------------------------------------------------------------------

def default_shaped(work: Path) -> tuple[str, str]:
    """A random-weight BLOOM with the default demo recipe's shape (speed does not depend on training).

    Uses the tiny demo tokenizer; the vocabulary is the recipe's, padded ids simply never decode.
    """
    import shutil as _shutil

    from transformers import BloomConfig, BloomForCausalLM

    from rlhf.demo_model import DemoRecipe, build_demo_model

    recipe, tiny = DemoRecipe(), Path(build_demo_model(DemoRecipe.tiny()))
    out = work / "default-shaped"
    out.mkdir(parents=True)
    for f in tiny.iterdir():
        if f.name.startswith("tokenizer") or f.name.endswith(".jinja"):
            _shutil.copy(f, out / f.name)
    cfg = BloomConfig(vocab_size=recipe.vocab_size, hidden_size=recipe.hidden_size, n_layer=recipe.n_layer,
                      n_head=recipe.n_head, bos_token_id=1, eos_token_id=1, pad_token_id=0)
    BloomForCausalLM(cfg).eval().save_pretrained(out)
    return str(out), (f"random weights in the default demo recipe's shape (hidden {recipe.hidden_size}, "
                      f"{recipe.n_layer} layers, {recipe.n_head} heads, vocab {recipe.vocab_size})")


def pick_base(requested: str | None, work: Path) -> tuple[str, str]:
    """(path, description): the default demo model if built, else the tiny recipe (built if needed)."""
    from rlhf.demo_model import DemoRecipe, build_demo_model, demo_path

    if requested == "default-shaped":
        return default_shaped(work)
    if requested and requested.startswith("bloom-560m"):
        from dataclasses import replace

        from rlhf.paths import var_dir
        from rlhf.shaped_base import BloomShape, ensure_shaped_base

        name, _, vocab = requested.partition(":")
        shape = replace(BloomShape.named(name), init_std=0.1)
        if vocab:
            shape = replace(shape, vocab_size=int(vocab))
        path = ensure_shaped_base(shape, build_demo_model(DemoRecipe.tiny()), var_dir() / "models" / "base")
        return str(path), (f"random weights, {name} shape ({shape.n_layer} layers, hidden {shape.hidden_size}, "
                           f"{shape.n_head} heads, vocab {shape.vocab_size}; {shape.parameters / 1e6:.0f} M parameters)")
    if requested:
        return requested, requested
    default = demo_path(DemoRecipe())
    if (default / "manifest.json").is_file():
        return str(default), f"demo model, default recipe ({default.name})"
    tiny = build_demo_model(DemoRecipe.tiny())
    return str(tiny), f"demo model, TINY recipe ({Path(tiny).name}; the default recipe is not built here)"


def make_adapters(base: str, root: Path, r: int = 8, targets: tuple[str, ...] = ("query_key_value",)) -> None:
    """A random (non-zero) LoRA adapter per subject, as verified artefacts (speed does not need training).

    One copy of the base in memory: each adapter is added, saved and unloaded again.
    """
    from rlhf.models import base_fingerprint, load_base
    from rlhf.shaped_base import save_random_lora

    base_sha = base_fingerprint(base)
    model, _ = load_base(base, device="cpu")
    for i, subject in enumerate(SUBJECTS):
        save_random_lora(model, root / subject / "v1", r=r, target_modules=list(targets), seed=i,
                         manifest={"base_model": base, "base_model_sha256": base_sha,
                                   "extra": {"subject": subject, "version": 1, "method": "lora"}})
    del model


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, deadline_s: float = 300) -> None:
    import httpx

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url + "/ping", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {deadline_s} s")


# ---- the load generator ----------------------------------------------------------------------------

@dataclass
class Result:
    tokens: int
    ttft: float
    total: float
    server_ttft: float | None  # what the server measured (handler start to first token), if it says


async def client_loop(url: str, idx: int, n_requests: int, new_tokens: int, prompts: dict) -> list[Result]:
    """One client: `n_requests` streamed requests in a row, on one keep-alive connection.

    Reads the stream as raw bytes (first chunk = first token; the last line carries the counts),
    so that the load generator, which shares the machine's CPUs with the server, stays cheap.
    """
    import httpx

    from serving.client import invocation_body

    subject = SUBJECTS[idx % len(SUBJECTS)]
    out = []
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        for j in range(n_requests):
            question = prompts[subject][(idx + j) % len(prompts[subject])]
            body = invocation_body([{"role": "user", "content": question}], subject=subject,
                                   max_new_tokens=new_tokens, min_new_tokens=new_tokens, temperature=0)
            t0 = time.perf_counter()
            ttft = None
            buf = bytearray()
            async with client.stream("POST", "/invocations", json=body,
                                     headers={"Accept": "application/jsonlines"}) as response:
                response.raise_for_status()
                async for chunk in response.aiter_bytes():
                    if ttft is None:
                        ttft = time.perf_counter() - t0
                    buf += chunk
            last = json.loads(bytes(buf).rstrip(b"\n").rsplit(b"\n", 1)[-1])
            server_ttft = (last.get("timings") or {}).get("time_to_first_token_ms")
            out.append(Result(tokens=last["outputs"][0]["tokens"], ttft=ttft or 0.0, total=time.perf_counter() - t0,
                              server_ttft=server_ttft / 1000 if server_ttft is not None else None))
    return out


def load(url: str, clients: int, n_requests: int, new_tokens: int, prompts: dict) -> dict:
    async def main():
        t0 = time.perf_counter()
        per_client = await asyncio.gather(*(client_loop(url, i, n_requests, new_tokens, prompts)
                                            for i in range(clients)))
        return [r for rs in per_client for r in rs], time.perf_counter() - t0

    results, wall = asyncio.run(main())
    ttfts = sorted(r.ttft for r in results)
    tokens = sum(r.tokens for r in results)
    server = sorted(r.server_ttft for r in results if r.server_ttft is not None)
    extra = {}
    if server:
        extra = {"server_ttft_p50_ms": 1000 * statistics.median(server),
                 "server_ttft_p95_ms": 1000 * server[min(len(server) - 1, int(round(0.95 * (len(server) - 1))))]}
    return {**extra,
        "requests": len(results), "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall,
        "ttft_p50_ms": 1000 * statistics.median(ttfts),
        "ttft_p95_ms": 1000 * ttfts[min(len(ttfts) - 1, int(round(0.95 * (len(ttfts) - 1))))],
    }


def step_stats(url: str) -> dict:
    """Decode-step totals from the endpoint's /metrics (where the decode thread spends its time)."""
    import httpx

    out = {"sum": 0.0, "count": 0.0, "batch": 0.0}
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("tutor_endpoint_decode_step_seconds_sum"):
            out["sum"] = float(line.split()[-1])
        elif line.startswith("tutor_endpoint_decode_step_seconds_count"):
            out["count"] = float(line.split()[-1])
        elif line.startswith("tutor_endpoint_batch_size_sum"):
            out["batch"] = float(line.split()[-1])
    return out


def memory_mib(pid: int) -> dict[str, float]:
    """Resident memory now and at its peak (VmRSS / VmHWM from /proc), in MiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, kb = line.split()[:2]
                out[key.rstrip(":")] = int(kb) / 1024
    return out


def start(cmd: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "wb") as f:
        return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=f, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--clients", default="1,8,32", help="comma-separated concurrencies, each run on both servers")
    p.add_argument("--requests-per-client", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--base-model", default=None,
                   help="a model directory, 'default-shaped' (random weights, default recipe's shape), or "
                        "'bloom-560m[-L<layers>][:<vocab>]'; default: the default demo model if built, else the tiny one")
    p.add_argument("--threads", type=int, default=1, help="torch threads in each server (same for both)")
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--naive-max-clients", type=int, default=None,
                   help="run the naive server only up to this concurrency (it is slow at real shapes)")
    p.add_argument("--server-args", default="", help="extra flags for `python -m serving` (A/B experiments)")
    p.add_argument("--front", action="store_true",
                   help="also run ours with the model in its own process (--model-process: HTTP front + model worker)")
    p.add_argument("--naive-device", default="cpu", help="device of the naive server (give ours `--server-args '--device cuda'`)")
    a = p.parse_args()
    concurrencies = [int(c) for c in a.clients.split(",")]

    from tqdm import tqdm

    from rlhf.corpus import seed_prompts

    prompts = {s: [it.question for it in seed_prompts(s, 16)] for s in SUBJECTS}
    work = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    procs: list[subprocess.Popen] = []
    try:
        base, described = pick_base(a.base_model, work)
        adapters = work / "adapters"
        big = (a.base_model or "").startswith("bloom-560m")
        make_adapters(base, adapters, **({"r": 16, "targets": ("query_key_value", "dense", "dense_h_to_4h",
                                                                "dense_4h_to_h")} if big else {}))
        env = {**os.environ, "TUTOR_VAR_DIR": str(work / "var"), "TUTOR_ENDPOINT_ADMIN_TOKEN": "bench"}
        print(f"base model: {described}\nCPU threads per server: {a.threads}; os.cpu_count()={os.cpu_count()}")
        print(f"load: {concurrencies} concurrent streaming clients x {a.requests_per_client} requests, "
              f"{a.new_tokens} new tokens each, 4 subject LoRA adapters (round-robin), greedy\n")
        results: dict[tuple[str, int], dict] = {}
        bar = tqdm(total=(3 if a.front else 2) * len(concurrencies), desc="runs", file=sys.stderr)

        mem: dict[str, dict] = {}
        variants = [("ours", [])] + ([("ours+front", ["--model-process"])] if a.front else [])
        for name, extra in variants:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            ours = start([sys.executable, "-m", "serving", "--port", str(port), "--base-model", base,
                          "--adapters-dir", str(adapters), "--threads", str(a.threads), "--log-level", "warning",
                          "--max-new-tokens-limit", str(max(512, a.new_tokens)), *a.server_args.split(), *extra],
                         env, work / f"{name}.log")
            procs.append(ours)
            wait_ready(url, ours, deadline_s=900)
            pids = {"": ours.pid}
            if extra:  # the front's model worker is its own process: its memory is the model's
                import httpx

                pids = {" front": ours.pid, " worker": httpx.get(url + "/ping").json()["front"]["pid"]}
            mem[name] = {f"after load{k}": memory_mib(pid) for k, pid in pids.items()}
            load(url, 4, 1, 4, prompts)  # warm-up
            for c in concurrencies:
                before = step_stats(url)
                r = results[(name, c)] = load(url, c, a.requests_per_client, a.new_tokens, prompts)
                after = step_stats(url)
                steps, busy = after["count"] - before["count"], after["sum"] - before["sum"]
                r["decode_busy_pct"] = 100 * busy / r["wall_s"]
                r["mean_batch"] = (after["batch"] - before["batch"]) / max(steps, 1)
                r["mean_step_ms"] = 1000 * busy / max(steps, 1)
                bar.update()
            mem[name] |= {f"after the runs{k}": memory_mib(pid) for k, pid in pids.items()}
            stop(ours)

        if not a.skip_naive:
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            naive = start([sys.executable, __file__, "--naive-server", base, str(adapters), str(port), str(a.threads),
                           a.naive_device],
                          env, work / "naive.log")
            procs.append(naive)
            wait_ready(url, naive, deadline_s=900)
            mem["naive"] = {"after load": memory_mib(naive.pid)}
            load(url, 4, 1, 4, prompts)
            for c in concurrencies:
                if a.naive_max_clients is None or c <= a.naive_max_clients:
                    results[("naive", c)] = load(url, c, a.requests_per_client, a.new_tokens, prompts)
                bar.update()
            mem["naive"]["after the runs"] = memory_mib(naive.pid)
            stop(naive)
        bar.close()

        print("| server | clients | requests | tokens | wall s | tok/s | TTFT p50 / p95 (client) ms "
              "| TTFT p50 / p95 (server) ms | decode loop busy | mean batch | ours/naive tok/s |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: |")
        for (name, c), r in results.items():
            server = (f"{r['server_ttft_p50_ms']:.0f} / {r['server_ttft_p95_ms']:.0f}"
                      if "server_ttft_p95_ms" in r else "–")
            busy = f"{r['decode_busy_pct']:.0f}%" if "decode_busy_pct" in r else "–"
            batch = f"{r['mean_batch']:.1f}" if "mean_batch" in r else "–"
            ratio = ""
            if name.startswith("ours") and ("naive", c) in results:
                ratio = f"**{r['tokens_per_s'] / results[('naive', c)]['tokens_per_s']:.1f}x**"
            print(f"| {name} | {c} | {r['requests']} | {r['tokens']} | {r['wall_s']:.2f} | {r['tokens_per_s']:.1f} "
                  f"| {r['ttft_p50_ms']:.0f} / {r['ttft_p95_ms']:.0f} | {server} | {busy} | {batch} | {ratio} |")
        for name, m in mem.items():
            print(f"{name} server memory: " + "; ".join(f"{k}: RSS {v['VmRSS']:.0f} MiB, peak {v['VmHWM']:.0f} MiB"
                                                        for k, v in m.items()))
        print(f"\nload average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print(json.dumps({f"{n}@{c}": r for (n, c), r in results.items()}))
    finally:
        for proc in procs:
            if proc.poll() is None:
                stop(proc)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--naive-server":
        naive_server(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
    else:
        main()

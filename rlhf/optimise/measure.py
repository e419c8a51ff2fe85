"""Size, resident memory, throughput, latency and answer-key accuracy of one version, in its own process.

Why a child process: resident memory is only the variant's own when nothing else was loaded in the
process, and a quantised or pruned base must not share torch state with the source measured beside it.
The gate for an optimised variant (``training.optimise``) and ``benchmarks/optimise.py`` measure through
this one function, so the studio's comparison and the benchmark's table mean the same thing.

What is measured, through the endpoint's own decode loop (``serving.engine.BloomRunner``, adapters applied
in fp32 on top of the base):
- size on disk of the base plus the adapters;
- resident memory: the growth of the process's RSS from just before loading the model (torch and
  transformers already imported) to after serving;
- tokens/s and p50/p95 request latency with `concurrency` requests decoding together (greedy, exactly
  `new_tokens` tokens each, EOS ignored so every variant does the same work);
- answer-key accuracy: greedy, 48 tokens, `n` held-out corpus questions per subject.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rlhf.optimise.common import OptimiseError, dir_size


@dataclass
class MeasureSpec:
    base: str
    adapters: dict[str, str] = field(default_factory=dict)  # subject -> adapter dir ({} = the bare base)
    subjects: list[str] = field(default_factory=lambda: ["mathematics"])
    n: int = 16  # held-out questions per subject
    concurrency: int = 4
    new_tokens: int = 32
    rounds: int = 3
    threads: int = 1
    scheme: str | None = None  # benchmark only: run an int8 artefact with another quantisation scheme
    name: str = ""

    def __post_init__(self) -> None:
        if self.n < 1 or self.concurrency < 1 or self.new_tokens < 1 or self.rounds < 1 or self.threads < 1:
            raise OptimiseError("n, concurrency, new_tokens, rounds and threads must be positive")
        if not self.subjects:
            raise OptimiseError("measure at least one subject")


def greedy(runner: Any, prompts: list[list[int]], slots: list[int], max_new: int, eos: int,
           stop_at_eos: bool = True) -> tuple[list[list[int]], list[float]]:
    """Greedy decode of one batch; (token lists, seconds at which each row finished)."""
    import torch

    t0 = time.perf_counter()
    logits, cache = runner.prefill(prompts, slots, max_new)
    out: list[list[int]] = [[] for _ in prompts]
    done_at: list[float | None] = [None] * len(prompts)
    slot_t = torch.tensor(slots)
    for step in range(max_new):
        if not stop_at_eos:  # fixed work: never pick EOS
            logits = logits.clone()
            logits[:, eos] = float("-inf")
        tok = logits.argmax(-1)
        for i, t in enumerate(tok.tolist()):
            if done_at[i] is None:
                out[i].append(t)
                if (stop_at_eos and t == eos) or step == max_new - 1:
                    done_at[i] = time.perf_counter() - t0
        if all(d is not None for d in done_at):
            break
        logits = runner.decode(tok, cache, slot_t)
    return [o[:-1] if o and o[-1] == eos else o for o in out], [d or 0.0 for d in done_at]


def _rss_mb() -> float:
    """Resident memory now (VmRSS), in MB."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def measure_here(spec: MeasureSpec) -> dict[str, Any]:
    """Load the version as the endpoint does, then quality, throughput and memory (call in a fresh process)."""
    import torch

    torch.set_num_threads(spec.threads)
    torch.manual_seed(0)
    import transformers.models.bloom.modeling_bloom  # noqa: F401 - imported before the memory baseline

    from rlhf.chat import build_prompt
    from rlhf.corpus import check_answer, eval_prompts
    from rlhf.models import load_base, load_tokenizer
    from rlhf.optimise.quantise import _torchao, load_quantised
    from serving.engine import BloomRunner

    _torchao()
    rss0 = _rss_mb()
    t_load = time.perf_counter()
    if spec.scheme:
        model, tok = load_quantised(spec.base, scheme=spec.scheme), load_tokenizer(spec.base)
    else:
        model, tok = load_base(spec.base, device="cpu")
    runner = BloomRunner(model)
    slots: dict[str, int] = {}
    for i, (subject, path) in enumerate(sorted(spec.adapters.items()), start=1):
        runner.install(i, runner.read_adapter(Path(path)))
        slots[subject] = i
    load_s = time.perf_counter() - t_load
    eos = tok.eos_token_id

    def encode(subject: str, question: str) -> list[int]:
        text = build_prompt(tok, subject, [{"role": "user", "content": question}])
        return tok(text, add_special_tokens=False)["input_ids"]

    acc = {}
    for s in spec.subjects:
        items = eval_prompts(s, spec.n, 0)
        outs, _ = greedy(runner, [encode(s, it.question) for it in items], [slots.get(s, 0)] * len(items), 48, eos)
        acc[s] = sum(check_answer(s, it.key, tok.decode(o, skip_special_tokens=True))
                     for it, o in zip(items, outs, strict=True)) / len(items)
    # throughput at a fixed concurrency, requests round-robin over the subjects
    c, subjects = spec.concurrency, spec.subjects
    prompts, pslots = [], []
    for j in range(c):
        s = subjects[j % len(subjects)]
        prompts.append(encode(s, eval_prompts(s, c, 1)[j // len(subjects)].question))
        pslots.append(slots.get(s, 0))
    greedy(runner, prompts, pslots, spec.new_tokens, eos, stop_at_eos=False)  # warm-up
    lat: list[float] = []
    tokens, wall = 0, 0.0
    for _ in range(spec.rounds):
        t0 = time.perf_counter()
        outs, done = greedy(runner, prompts, pslots, spec.new_tokens, eos, stop_at_eos=False)
        wall += time.perf_counter() - t0
        lat += done
        tokens += sum(len(o) for o in outs)
    q = statistics.quantiles(lat, n=20) if len(lat) > 1 else lat * 19
    base_bytes = dir_size(spec.base)
    adapter_bytes = sum(dir_size(p) for p in spec.adapters.values())
    return {"accuracy_by_subject": acc, "accuracy": statistics.mean(acc.values()), "n_questions": spec.n,
            "tokens_per_s": tokens / wall, "p50_ms": statistics.median(lat) * 1000, "p95_ms": q[18] * 1000,
            "load_s": load_s, "rss_mb": _rss_mb() - rss0, "rss_before_load_mb": rss0,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "size_bytes": base_bytes + adapter_bytes, "base_bytes": base_bytes, "adapter_bytes": adapter_bytes,
            "concurrency": spec.concurrency, "new_tokens": spec.new_tokens, "rounds": spec.rounds,
            "threads": spec.threads}


def measure(spec: MeasureSpec, timeout: float = 1800) -> dict[str, Any]:
    """`measure_here` in a fresh Python process (one thread unless `spec.threads` says otherwise)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(spec.threads))
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.run([sys.executable, "-m", "rlhf.optimise.measure", json.dumps(asdict(spec))],
                          capture_output=True, text=True, env=env, cwd=root, timeout=timeout)
    if proc.returncode != 0:
        raise OptimiseError(f"measuring {spec.name or spec.base} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(measure_here(MeasureSpec(**json.loads(sys.argv[1])))))

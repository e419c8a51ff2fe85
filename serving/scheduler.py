"""Continuous batching: one background decode loop over every in-flight sequence.

The loop (a dedicated thread, so the asyncio event loop only does HTTP):

1. run queued admin commands (install/uninstall adapters) — between steps, never during one;
2. admit waiting requests while the batch has room, prefill them together (one forward pass,
   each row with its own adapter), sample their first token, and append their KV rows to the
   running cache;
3. one decode step for the whole running batch (mixed adapters in one forward pass), sample,
   hand the tokens to the event loop (one `call_soon_threadsafe` per step);
4. drop finished and cancelled sequences from the batch.

A request with `n > 1` is prefilled once and its KV rows are copied `n` times.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from serving.engine import CACHE_CHUNK, BatchCache, BloomRunner
from serving.metrics import Metrics
from serving.registry import AdapterVersion, Registry

log = logging.getLogger("serving.scheduler")


class QueueFull(Exception):
    """The waiting queue is at its bound: the caller answers 429."""


class KVBudgetFull(QueueFull):
    """Admitting the request would take the KV cache past its configured budget: 429, retry later."""


class TooLargeForBudget(ValueError):
    """The request alone needs more KV cache than the whole budget: 413, retrying cannot help."""


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    min_new_tokens: int = 0  # end-of-sequence is suppressed before this many tokens
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int | None = None
    n: int = 1
    stop: tuple[str, ...] = ()


@dataclass(eq=False)
class Sequence:
    """One completion being generated; its events go to `queue` on the event loop."""

    index: int
    adapter: AdapterVersion
    params: SamplingParams
    queue: asyncio.Queue
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    cancelled: bool = False
    finished: bool = False
    kv_len: int = 0  # cache positions reserved for it (prompt + virtual tokens + max_new_tokens)


@dataclass(eq=False)
class Group:
    """A request: one prompt, `n` sequences that share its prefill."""

    prompt_ids: list[int]
    seqs: list[Sequence]
    loop: asyncio.AbstractEventLoop
    submitted: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None

    @property
    def cancelled(self) -> bool:
        return all(s.cancelled for s in self.seqs)


class Scheduler:
    def __init__(self, runner: BloomRunner, registry: Registry, metrics: Metrics, eos_token_id: int | None,
                 max_batch_size: int = 64, max_queue: int = 128, max_prefill_tokens: int = 8192,
                 kv_budget_bytes: int | None = None):
        self.runner, self.registry, self.metrics = runner, registry, metrics
        self.eos = eos_token_id
        self.kv_budget_bytes = kv_budget_bytes
        self.kv_bytes_per_token = runner.kv_bytes_per_token()
        self._kv_rows: Counter[int] = Counter()  # reserved length -> sequences (waiting + running)
        self.max_batch_size, self.max_queue, self.max_prefill_tokens = max_batch_size, max_queue, max_prefill_tokens
        self.waiting: deque[Group] = deque()
        self.active: list[Sequence] = []  # aligned with the rows of self.cache
        self.cache: BatchCache | None = None
        self.commands: deque[tuple[Callable[[], Any], concurrent.futures.Future]] = deque()
        self.cond = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, name="decode-loop", daemon=True)
        self._rng = random.Random()

    # ---- called from the event loop -------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self.cond:
            self._stop = True
            self.cond.notify_all()
        self._thread.join(timeout=10)

    def submit(self, prompt_ids: list[int], adapter: AdapterVersion, params: SamplingParams,
               queue: asyncio.Queue) -> Group:
        """Queue a request (raises QueueFull); its events arrive on `queue`."""
        seqs = []
        for i in range(params.n):
            gen = None
            if params.temperature > 0:
                gen = torch.Generator().manual_seed(
                    params.seed + i if params.seed is not None else self._rng.getrandbits(63))
            seqs.append(Sequence(index=i, adapter=adapter, params=params, queue=queue, generator=gen))
        group = Group(prompt_ids=prompt_ids, seqs=seqs, loop=asyncio.get_running_loop())
        self._event_loop = group.loop
        kv_len = len(prompt_ids) + params.max_new_tokens
        if adapter.slot in self.runner.prompt_embeddings:
            kv_len += self.runner.prompt_embeddings[adapter.slot].shape[0]
        with self.cond:
            if len(self.waiting) >= self.max_queue:
                raise QueueFull(f"the endpoint queue is full ({self.max_queue} waiting requests); retry later")
            self._reserve_kv(kv_len, params.n)
            for s in seqs:
                s.kv_len = kv_len
            self.waiting.append(group)
            self.registry.retain(adapter, params.n - 1)  # one reference per sequence
            self.metrics.queue_depth.set(len(self.waiting))
            self.cond.notify()
        return group

    def run_command(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run `fn` on the decode thread between two steps (adapter install/uninstall)."""
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self.cond:
            self.commands.append((fn, fut))
            self.cond.notify()
        return fut

    def cancel(self, group: Group) -> None:
        """The client went away: its sequences leave the batch at the next step boundary."""
        for s in group.seqs:
            s.cancelled = True
        with self.cond:
            self.cond.notify()

    def load(self) -> dict[str, int]:
        return {"waiting": len(self.waiting), "running": len(self.active), "kv_reserved_bytes": self.kv_reserved_bytes()}

    # ---- KV-cache budget ------------------------------------------------------------------------
    def _kv_bytes(self, rows: int, longest: int) -> int:
        """Cache bytes of `rows` sequences in the right-padded batch layout: every row is as long as
        the longest (rounded up to the growth chunk), so that is what the budget must count."""
        return rows * CACHE_CHUNK * math.ceil(longest / CACHE_CHUNK) * self.kv_bytes_per_token

    def kv_reserved_bytes(self) -> int:
        rows = sum(self._kv_rows.values())
        return self._kv_bytes(rows, max(self._kv_rows)) if rows else 0

    def _reserve_kv(self, kv_len: int, n: int) -> None:
        """Count `n` sequences of `kv_len` positions against the budget, or refuse (call under `cond`).

        Why at submit and for waiting requests too: a request accepted now is one the endpoint has
        promised to run; refusing early with 429 is what keeps the process from running out of memory
        later, in the middle of a decode step.
        """
        if self.kv_budget_bytes is not None:
            alone = self._kv_bytes(n, kv_len)
            if alone > self.kv_budget_bytes:
                raise TooLargeForBudget(
                    f"this request needs {alone / 2**20:.1f} MiB of KV cache ({n} x {kv_len} positions); "
                    f"the endpoint's budget is {self.kv_budget_bytes / 2**20:.1f} MiB: ask for fewer tokens")
            rows = sum(self._kv_rows.values()) + n
            longest = max(kv_len, max(self._kv_rows, default=0))
            if self._kv_bytes(rows, longest) > self.kv_budget_bytes:
                raise KVBudgetFull(
                    f"the KV-cache budget is full ({self.kv_reserved_bytes() / 2**20:.1f} of "
                    f"{self.kv_budget_bytes / 2**20:.1f} MiB reserved by running and waiting requests); retry later")
        self._kv_rows[kv_len] += n

    def _unreserve_kv(self, kv_len: int) -> None:
        with self.cond:
            self._kv_rows[kv_len] -= 1
            if self._kv_rows[kv_len] <= 0:
                del self._kv_rows[kv_len]

    # ---- the decode thread ----------------------------------------------------------------------
    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self.cond:
                while not (self._stop or self.commands or self.waiting or self.active):
                    self.cond.wait()
                if self._stop:
                    break
                commands = list(self.commands)
                self.commands.clear()
            for fn, fut in commands:
                try:
                    fut.set_result(fn())
                except BaseException as exc:  # handed to the caller
                    fut.set_exception(exc)
            try:
                self._admit()
                if self.active:
                    self._step()
                    time.sleep(0)  # hand the GIL to the event loop between steps (HTTP I/O, new requests)
            except Exception as exc:  # never let one bad batch kill the endpoint: fail its requests
                log.exception("decode step failed")
                self._fail_all(f"generation failed: {exc}")

    def _admit(self) -> None:
        groups: list[Group] = []
        with self.cond:
            room, tokens = self.max_batch_size - len(self.active), 0
            while self.waiting:
                g = self.waiting[0]
                if g.cancelled:
                    self.waiting.popleft()
                    self._finish_group_cancelled(g)
                    continue
                if len(g.seqs) > room or (groups and tokens + len(g.prompt_ids) > self.max_prefill_tokens):
                    break
                self.waiting.popleft()
                groups.append(g)
                room -= len(g.seqs)
                tokens += len(g.prompt_ids)
            self.metrics.queue_depth.set(len(self.waiting))
        if not groups:
            return
        try:
            self._prefill(groups)
        except Exception as exc:  # fail these requests, keep the running batch going
            log.exception("prefill failed")
            seqs = [s for g in groups for s in g.seqs]
            for s in seqs:
                s.finished = True
                self._release(s)
            self._event_loop.call_soon_threadsafe(
                _deliver, [(s.queue, ("error", s.index, f"generation failed: {exc}")) for s in seqs])

    def _prefill(self, groups: list[Group]) -> None:
        reserve = max(s.params.max_new_tokens for g in groups for s in g.seqs)
        logits, cache = self.runner.prefill([g.prompt_ids for g in groups], [g.seqs[0].adapter.slot for g in groups],
                                            reserve=min(reserve, 64))
        logits = logits.cpu()
        counts = [len(g.seqs) for g in groups]
        if any(c > 1 for c in counts):
            cache = self.runner.repeat_rows(cache, counts)
            logits = logits.repeat_interleave(torch.tensor(counts), dim=0)
        seqs = [s for g in groups for s in g.seqs]
        first = self._sample(logits, seqs)
        now = time.monotonic()
        for g in groups:
            g.first_token_at = now
            av = g.seqs[0].adapter
            self.metrics.ttft.labels(av.subject, str(av.version)).observe(now - g.submitted)
        self.cache = self.runner.merge(self.cache, cache)
        self.active.extend(seqs)
        self._emit(seqs, first)

    def _step(self) -> None:
        keep = [i for i, s in enumerate(self.active) if not (s.finished or s.cancelled)]
        if len(keep) < len(self.active):
            self._drop(keep)
        if not self.active:
            return
        t0 = time.perf_counter()
        tokens = torch.tensor([s.tokens[-1] for s in self.active], dtype=torch.long)
        slots = torch.tensor([s.adapter.slot for s in self.active], dtype=torch.long)
        logits = self.runner.decode(tokens, self.cache, slots)
        nxt = self._sample(logits.cpu(), self.active)
        self.metrics.step_seconds.observe(time.perf_counter() - t0)
        self.metrics.batch_size.observe(len(self.active))
        self._emit(self.active, nxt)
        keep = [i for i, s in enumerate(self.active) if not (s.finished or s.cancelled)]
        if len(keep) < len(self.active):
            self._drop(keep)

    def _drop(self, keep: list[int]) -> None:
        kept = set(keep)
        leaving = [s for i, s in enumerate(self.active) if i not in kept]
        self.cache = self.runner.keep(self.cache, keep) if self.cache is not None else None
        self.active = [self.active[i] for i in keep]
        self.metrics.running.set(len(self.active))
        for s in leaving:
            self._release(s)

    def _release(self, s: Sequence) -> None:
        if s.kv_len:
            self._unreserve_kv(s.kv_len)
            s.kv_len = 0
        freed = self.registry.release(s.adapter)
        if freed is not None:  # the last request on an unloaded version: free its slot now
            self.runner.uninstall(freed.slot)
            self.registry.free_slot_of(freed)

    def _finish_group_cancelled(self, g: Group) -> None:
        for s in g.seqs:
            self._release(s)

    def _emit(self, seqs: list[Sequence], tokens: list[int]) -> None:
        """Record each sequence's new token, decide if it finished, and post the events in one call."""
        events: list[tuple[asyncio.Queue, tuple]] = []
        per_adapter: dict[tuple[str, int | None], int] = {}
        for s, t in zip(seqs, tokens, strict=True):
            if s.cancelled:
                s.finished = True
                continue
            key = (s.adapter.subject, s.adapter.version)
            if self.eos is not None and t == self.eos:
                s.finished = True
                events.append((s.queue, ("done", s.index, "stop")))
                continue
            s.tokens.append(t)
            per_adapter[key] = per_adapter.get(key, 0) + 1
            events.append((s.queue, ("token", s.index, t)))
            if len(s.tokens) >= s.params.max_new_tokens:
                s.finished = True
                events.append((s.queue, ("done", s.index, "length")))
        for (subject, version), n in per_adapter.items():
            self.metrics.add_tokens(subject, version, n)
        self.metrics.record_step(sum(per_adapter.values()))
        self.metrics.running.set(len(self.active))
        if events:
            self._event_loop.call_soon_threadsafe(_deliver, events)

    def _fail_all(self, message: str) -> None:
        events = [(s.queue, ("error", s.index, message)) for s in self.active if not s.finished]
        for s in self.active:
            s.finished = True
            self._release(s)
        self.active, self.cache = [], None
        self.metrics.running.set(0)
        if events:
            self._event_loop.call_soon_threadsafe(_deliver, events)

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        """Greedy rows by argmax; sampled rows by temperature + nucleus with each sequence's own generator."""
        logits = logits.clone()  # an inference-mode tensor: copy before editing in place
        if self.eos is not None:
            young = [i for i, s in enumerate(seqs) if len(s.tokens) < s.params.min_new_tokens]
            if young:
                logits[torch.tensor(young), self.eos] = float("-inf")
        out = logits.argmax(-1)
        sampled = [i for i, s in enumerate(seqs) if s.params.temperature > 0]
        if sampled:
            idx = torch.tensor(sampled)
            temps = torch.tensor([seqs[i].params.temperature for i in sampled])[:, None]
            top_p = torch.tensor([seqs[i].params.top_p for i in sampled])[:, None]
            probs = torch.softmax(logits[idx] / temps, dim=-1)
            p_sorted, order = probs.sort(dim=-1, descending=True)
            p_sorted = p_sorted.masked_fill(p_sorted.cumsum(-1) - p_sorted > top_p, 0.0)
            cdf = p_sorted.cumsum(-1)
            u = torch.cat([torch.rand(1, generator=seqs[i].generator) for i in sampled])[:, None] * cdf[:, -1:]
            choice = torch.searchsorted(cdf, u).clamp(max=cdf.shape[-1] - 1)
            out[idx] = order.gather(1, choice)[:, 0]
        return out.tolist()


def _deliver(events: list[tuple[asyncio.Queue, tuple]]) -> None:
    for q, ev in events:
        q.put_nowait(ev)

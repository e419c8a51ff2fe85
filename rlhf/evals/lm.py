"""The model under evaluation: log-likelihood scoring and chat generation (see docs/evaluation.md).

Why our own scorer: lm-evaluation-harness's `HFLM` cannot load our verified PEFT adapters on
the offline demo base in-process, so `loglikelihood` implements its semantics exactly — the
context is encoded alone, the continuation is the rest of `encode(context + continuation)`
(trailing context whitespace moved onto the continuation), the model sees
`(context + continuation)[:-1]` and we sum the log-probs of the continuation tokens and check
whether each is the argmax — and tests/rlhf/test_evals_mc.py proves equal scores.

Speed: pairs are scored in right-padded batches, one forward pass per batch; pairs with the
same model input (one-token choices of a question) share a row; the LM head runs only at the
scored positions. Reusing a question's KV cache across its choices is available
(`share_prefix=True`) but off by default: slower here (measured in benchmarks/evaluation.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rlhf.evals.registry import EvalInputError


def _max_length(model: Any, tokenizer: Any) -> int:
    """The context window, found the way lm-eval's HFLM does (config attrs, tokenizer, else 2048)."""
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        v = getattr(model.config, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    mml = getattr(tokenizer, "model_max_length", None)
    if isinstance(mml, int) and 0 < mml < 1_000_000:
        return mml
    return 2048


@dataclass
class Usage:
    """Token counts and wall time, for the efficiency suite."""

    ll_pairs: int = 0
    ll_tokens: int = 0  # tokens run through the model while scoring
    ll_seconds: float = 0.0
    gen_prompts: int = 0
    gen_tokens: int = 0  # generated tokens
    gen_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds per generate() batch

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "latencies"}


class EvalModel:
    """A base model plus an optional PEFT adapter, loaded once, eval mode, seeded."""

    def __init__(self, base: str | os.PathLike[str] = "demo", adapter: str | os.PathLike[str] | None = None,
                 *, seed: int = 0, device: str | None = None, dtype: torch.dtype | None = None) -> None:
        from rlhf.adapters import load_policy
        from rlhf.models import base_fingerprint, load_base, resolve_base_path

        torch.manual_seed(seed)
        self.base_ref = str(base)
        self.base_path = resolve_base_path(base)
        self.base_sha = base_fingerprint(self.base_path)
        model, self.tokenizer = load_base(self.base_path, device=device, dtype=dtype)
        self.adapter_path = Path(adapter).resolve() if adapter is not None else None
        self.adapter_sha = ""
        self.subject: str | None = None
        if self.adapter_path is not None:
            from rlhf.manifest import artifact_sha256, read_manifest

            model = load_policy(model, self.adapter_path)
            self.adapter_sha = artifact_sha256(self.adapter_path, check=False)
            self.subject = read_manifest(self.adapter_path).get("subject")
        self.model = model.eval()
        self.device = next(self.model.parameters()).device
        self.max_length = _max_length(self.model, self.tokenizer)
        self.usage = Usage()
        import inspect

        params = inspect.signature(type(self.model.get_base_model() if hasattr(self.model, "get_base_model")
                                        else self.model).forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.x

    # -- encoding (lm-eval's HFLM._encode_pair) -------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """(context tokens, continuation tokens) exactly as lm-eval splits them."""
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces > 0:
            continuation = context[-n_spaces:] + continuation
            context = context[:-n_spaces]
        if not context:  # lm-eval scores an empty context after the end-of-text token
            prefix = self.tokenizer.eos_token_id if self.tokenizer.bos_token_id is None else self.tokenizer.bos_token_id
            return [prefix], self.encode(continuation)
        whole = self.encode(context + continuation)
        ctx = self.encode(context)
        return ctx, whole[len(ctx):]

    # -- scoring ---------------------------------------------------------------------------------

    @torch.no_grad()
    def loglikelihood(self, pairs: Sequence[tuple[str, str]], batch_size: int = 16,
                      share_prefix: bool | None = None, progress: Any = None) -> list[tuple[float, bool]]:
        """(sum log P(continuation | context), continuation is the greedy one) for each pair.

        Pairs whose model input is identical share one row (one-token choices of a question).
        `share_prefix=True` runs each repeated context once and reuses its KV cache for all its
        continuations; None (default) = False: measured in benchmarks/evaluation.py on this
        project's CPU-sized models it was slower than batched rows even for multi-token choices
        (batch-1 contexts and cache copies cost more than the repeated context). `progress(n_done)`
        is called after each batch.
        """
        started = time.monotonic()
        encoded = [self.encode_pair(c, x) for c, x in pairs]
        for i, (_, cont) in enumerate(encoded):
            if not cont:
                raise ValueError(f"pair {i} has an empty continuation: nothing to score")
        multi: dict[tuple[int, ...], list[int]] = {}
        for i, (ctx, _cont) in enumerate(encoded):
            multi.setdefault(tuple(ctx), []).append(i)
        shared: list[int] = []
        if share_prefix:
            for members in multi.values():
                if len(members) > 1:
                    shared.extend(members)
        rest = sorted(set(range(len(encoded))) - set(shared))
        out: list[tuple[float, bool] | None] = [None] * len(encoded)
        for part, fn in ((shared, self._score_shared), (rest, self._score_batched)):
            if part:
                for i, r in zip(part, fn([encoded[i] for i in part], batch_size, progress), strict=True):
                    out[i] = r
        self.usage.ll_pairs += len(pairs)
        self.usage.ll_seconds += time.monotonic() - started
        return [r for r in out if r is not None]

    def _truncate(self, ctx: list[int], cont: list[int]) -> tuple[list[int], int]:
        """The model input (context + continuation)[:-1], cut from the left to the window, and
        the continuation length (lm-eval's truncation)."""
        whole = (ctx + cont)[-(self.max_length + 1):]
        return whole[:-1], len(cont)

    def _forward_scores(self, spec: list[tuple[int, int, list[int]]], **inputs: Any) -> list[tuple[float, bool]]:
        """Run the model and, for each (row, end, continuation), the continuation's summed log-prob
        at positions [end - len, end) of that row and whether each token is the argmax. Only the
        positions some continuation needs go through the LM head (`logits_to_keep`) and the
        log-softmax: the full logits would be batch x length x vocab."""
        keep = sorted({p for _, end, cont in spec for p in range(end - len(cont), end)})
        logits = self.model(**inputs, logits_to_keep=torch.tensor(keep, device=self.device)).logits
        where = {p: j for j, p in enumerate(keep)}
        out: list[tuple[float, bool]] = []
        for b, end, cont in spec:
            sl = torch.log_softmax(logits[b, [where[p] for p in range(end - len(cont), end)]].float(), dim=-1)
            tgt = torch.tensor(cont, device=sl.device)
            out.append((float(sl.gather(-1, tgt[:, None]).sum()), bool((sl.argmax(-1) == tgt).all())))
        return out

    def _score_batched(self, encoded: list[tuple[list[int], list[int]]], batch_size: int,
                       progress: Any) -> list[tuple[float, bool]]:
        """lm-eval's way: right-padded rows of (context + continuation)[:-1], longest first; pairs
        whose model input is identical (e.g. the one-token choices " A".." D" of a question) share
        one row, as lm-eval's context grouping does."""
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        rows = [self._truncate(*e) for e in encoded]
        unique: dict[tuple[int, ...], list[int]] = {}
        for i, (inp, _) in enumerate(rows):
            unique.setdefault(tuple(inp), []).append(i)
        keys = sorted(unique, key=lambda k: -len(k))
        results: list[tuple[float, bool] | None] = [None] * len(encoded)
        for start in range(0, len(keys), batch_size):
            chunk = keys[start:start + batch_size]
            width = len(chunk[0])
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for b, inp in enumerate(chunk):
                ids[b, :len(inp)] = torch.tensor(inp)
                mask[b, :len(inp)] = 1
            # no attention mask, as lm-eval: right padding cannot reach earlier positions of a causal LM
            self.usage.ll_tokens += int(mask.sum())
            members = [(b, i) for b, k in enumerate(chunk) for i in unique[k]]
            scored = self._forward_scores([(b, len(rows[i][0]), encoded[i][1][-rows[i][1]:]) for b, i in members],
                                          input_ids=ids.to(self.device))
            for (_, i), sc in zip(members, scored, strict=True):
                results[i] = sc
            if progress:
                progress(len(members))
        return [r for r in results if r is not None]

    def _score_shared(self, encoded: list[tuple[list[int], list[int]]], batch_size: int,
                      progress: Any) -> list[tuple[float, bool]]:
        """Group by context: one forward pass over the context (minus its last token), then one
        right-padded batch of `last context token + continuation[:-1]` rows on its KV cache."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (ctx, _) in enumerate(encoded):
            groups.setdefault(tuple(ctx), []).append(i)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        results: list[tuple[float, bool] | None] = [None] * len(encoded)
        for ctx_t, members in groups.items():
            ctx = list(ctx_t)
            longest = max(len(encoded[i][1]) for i in members)
            if len(ctx) + longest > self.max_length + 1 or len(ctx) < 2:  # truncation: fall back
                for i, s in zip(members, self._score_batched([encoded[i] for i in members], batch_size, None),
                                strict=True):
                    results[i] = s
                if progress:
                    progress(len(members))
                continue
            prefix = torch.tensor([ctx[:-1]], device=self.device)
            out = self.model(input_ids=prefix, use_cache=True, logits_to_keep=1)
            past = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
            self.usage.ll_tokens += prefix.shape[1]
            for start in range(0, len(members), batch_size):
                chunk = members[start:start + batch_size]
                rows = [([ctx[-1]] + encoded[i][1][:-1], len(encoded[i][1])) for i in chunk]
                width = max(len(r[0]) for r in rows)
                ids = torch.full((len(rows), width), pad, dtype=torch.long)
                mask = torch.ones((len(rows), prefix.shape[1] + width), dtype=torch.long)
                for b, (inp, _) in enumerate(rows):
                    ids[b, :len(inp)] = torch.tensor(inp)
                    mask[b, prefix.shape[1] + len(inp):] = 0
                cache = _repeat_cache(past, len(rows))
                self.usage.ll_tokens += sum(len(r[0]) for r in rows)
                scored = self._forward_scores([(b, len(r[0]), encoded[i][1])
                                               for b, (r, i) in enumerate(zip(rows, chunk, strict=True))],
                                              input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                              **{self._cache_kwarg: cache}, use_cache=True)
                for i, s in zip(chunk, scored, strict=True):
                    results[i] = s
                if progress:
                    progress(len(chunk))
        return [r for r in results if r is not None]

    # -- generation ------------------------------------------------------------------------------

    def chat_prompt(self, question: str, subject: str | None = None) -> str:
        """The tutor-style prompt for a student question (`rlhf.chat.build_prompt`)."""
        from rlhf.chat import build_prompt

        return build_prompt(self.tokenizer, subject or self.subject or "general_knowledge",
                            [{"role": "user", "content": question}])

    def generate(self, prompts: Sequence[str], max_new_tokens: int = 48, temperature: float = 0.0, seed: int = 0,
                 *, subject: str | None = None, raw: bool = False, batch_size: int = 16) -> list[str]:
        """Replies to student questions, each rendered as the tutor chat prompt for `subject`
        (default: the adapter's subject, else general_knowledge); `raw=True` continues the texts
        as given. Greedy when temperature is 0, else sampled with `seed`."""
        return [g.text for g in self.generate_full(prompts, max_new_tokens, temperature, seed, subject=subject,
                                                   raw=raw, batch_size=batch_size)]

    def generate_full(self, prompts: Sequence[str], max_new_tokens: int = 48, temperature: float = 0.0,
                      seed: int = 0, *, subject: str | None = None, raw: bool = False,
                      batch_size: int = 16) -> list[Any]:
        """As `generate`, returning `rlhf.generation.Generation` (text, tokens, finish_reason)."""
        from rlhf.generation import generate

        texts = list(prompts) if raw else [self.chat_prompt(p, subject) for p in prompts]
        out: list[Any] = []
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            t0 = time.monotonic()
            gens = generate(self.model, self.tokenizer, chunk, max_new_tokens=max_new_tokens,
                            do_sample=temperature > 0, temperature=temperature or 1.0, seed=seed + start,
                            batch_size=batch_size)
            dt = time.monotonic() - t0
            self.usage.latencies.append(dt)
            self.usage.gen_seconds += dt
            self.usage.gen_prompts += len(chunk)
            self.usage.gen_tokens += sum(g.tokens for g in gens)
            out.extend(gens)
        return out

    def describe(self) -> dict[str, Any]:
        return {"base": self.base_ref, "base_path": str(self.base_path), "base_sha": self.base_sha,
                "adapter": str(self.adapter_path) if self.adapter_path else None, "adapter_sha": self.adapter_sha,
                "subject": self.subject}


def _repeat_cache(cache: Any, k: int) -> Any:
    """The prompt's KV cache repeated for k continuation rows (a copy: the forward pass appends)."""
    import copy

    if k == 1:
        return copy.deepcopy(cache)
    if hasattr(cache, "batch_repeat_interleave"):
        c = copy.deepcopy(cache)
        c.batch_repeat_interleave(k)
        return c
    return tuple(tuple(t.repeat_interleave(k, dim=0) for t in layer) for layer in cache)


def check_adapter_path(adapter: str | os.PathLike[str] | None, what: str = "adapter") -> None:
    if adapter is None:
        return
    p = Path(adapter)
    if not p.is_dir():
        raise EvalInputError(f"{what} {p} does not exist (expected an adapter directory with manifest.json)")
    if not (p / "manifest.json").is_file():
        raise EvalInputError(f"{what} {p} has no manifest.json: not an adapter made by this project")


class EvalContext:
    """What a suite gets: the model under test, plus optional reward model / comparison / judge."""

    def __init__(self, model: EvalModel, *, reward_model: str | os.PathLike[str] | None = None,
                 compare_adapter: str | os.PathLike[str] | None = None, judge: str | os.PathLike[str] | None = None,
                 seed: int = 0) -> None:
        self.model = model
        self.reward_model = Path(reward_model) if reward_model is not None else None
        self.compare_adapter = Path(compare_adapter) if compare_adapter is not None else None
        self.judge = Path(judge) if judge is not None and Path(str(judge)).exists() else judge
        self.seed = seed
        self.cache: dict[Any, Any] = {}  # suites share work (e.g. MMLU scores for calibration)
        self._compare: EvalModel | None = None

    @classmethod
    def create(cls, base: str | os.PathLike[str] = "demo", adapter: str | os.PathLike[str] | None = None, *,
               reward_model: str | os.PathLike[str] | None = None,
               compare_adapter: str | os.PathLike[str] | None = None,
               judge: str | os.PathLike[str] | None = None, seed: int = 0) -> EvalContext:
        """Validate the paths (EvalInputError, nothing loaded) and load the model once."""
        from rlhf.models import BaseModelNotAvailable

        check_adapter_path(adapter)
        check_adapter_path(compare_adapter, "compare adapter")
        if reward_model is not None and not Path(reward_model).is_dir():
            raise EvalInputError(f"reward model {reward_model} does not exist")
        try:
            model = EvalModel(base, adapter, seed=seed)
        except BaseModelNotAvailable as exc:
            raise EvalInputError(str(exc)) from exc
        return cls(model, reward_model=reward_model, compare_adapter=compare_adapter, judge=judge, seed=seed)

    @property
    def compare(self) -> EvalModel | None:
        """The comparison version (same base, `compare_adapter`), loaded on first use."""
        if self._compare is None and self.compare_adapter is not None:
            self._compare = EvalModel(self.model.base_path, self.compare_adapter, seed=self.seed)
        return self._compare

    def describe(self) -> dict[str, Any]:
        d = self.model.describe()
        d.update({"reward_model": str(self.reward_model) if self.reward_model else None,
                  "compare_adapter": str(self.compare_adapter) if self.compare_adapter else None,
                  "judge": str(self.judge) if self.judge else None})
        return d


__all__ = ["EvalContext", "EvalModel", "Usage", "check_adapter_path"]

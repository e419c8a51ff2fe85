"""The batched runner against `transformers` `generate` at real shapes: token for token, alone and mixed.

Two shapes: a small BLOOM whose head count (6) is not a power of two (ALiBi's slopes take the
interleaved extra branch there), in the normal suite; and bloom-560m's published shape (24 layers,
hidden 1024, 16 heads, vocabulary 250,880; seeded random weights, the demo tokenizer), marked slow and
heavy: not in the default run (it builds a 2.1 GB base and takes about a minute on 2 cores);
run it with `pytest -m heavy` after changing serving/engine.py or rlhf/shaped_base.py.
Both mix the bare base, two LoRA adapters (different ranks and target modules) and a prompt-tuning
adapter in one batch, with prompts of 7 to 300 tokens (past the demo's 96-token training length,
so ALiBi runs at long positions) and a cache that has to grow during decoding.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlhf.shaped_base import (
    BloomShape,
    build_model,
    ensure_shaped_base,
    save_random_lora,
    save_random_prompt_tuning,
)
from serving.engine import BloomRunner

# Random weights at a larger scale than HF's 0.02 init: with it, a tied-embedding BLOOM just
# repeats its input token whatever the context, and the LoRA deltas vanish, so equality would prove
# little. At this scale tokens depend on context, adapter and position (checked below).
INIT_STD = 0.5
LORA_WIDE = {"r": 16, "target_modules": ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"], "seed": 1,
             "std": 0.2}
LORA_ATTN = {"r": 8, "target_modules": ["query_key_value", "dense"], "seed": 2, "std": 0.2}
N_VIRTUAL = 8
# bloom-560m's configuration. 0.5 at width 1024 and 24 layers is chaotic (attention saturates; fp32 rounding
# differences between any two correct implementations flip tokens); 0.1 still gives context-dependent tokens.
SLOW_SHAPE = BloomShape(init_std=0.1)
SLOW_LORA_STD = 0.05  # delta ~15-20 % of the weights' scale at r=8/16


def prompts_of(tok, lengths: list[int]) -> list[list[int]]:
    """Real tokenised text cut to exact lengths (different text per prompt)."""
    text = ("Students ask about the history of Rome, the rules of algebra, verbs and nouns, and the capitals "
            "of the world; the tutor answers step by step and checks the result. ")
    out = []
    for i, n in enumerate(lengths):
        ids = tok(f"Question {i}: " + text * (n // 8 + 2))["input_ids"]
        assert len(ids) >= n
        out.append(ids[:n])
    return out


def make_adapters(model, root: Path, lora_std: float = 0.2) -> dict[str, Path]:
    """Random adapters; `lora_std` keeps the LoRA delta a fraction of the base weights (a delta larger than
    the weights themselves pushes a wide, deep model into the chaotic regime described at SLOW_SHAPE)."""
    return {
        "lora_wide": save_random_lora(model, root / "lora_wide", **{**LORA_WIDE, "std": lora_std}),
        "lora_attn": save_random_lora(model, root / "lora_attn", **{**LORA_ATTN, "std": lora_std}),
        "prompt": save_random_prompt_tuning(model, root / "prompt", n_virtual=N_VIRTUAL, seed=3),
    }


def runner_greedy(runner: BloomRunner, prompts: list[list[int]], slots: list[int], n: int) -> list[list[int]]:
    logits, cache = runner.prefill(prompts, slots, reserve=2)  # a small reserve: the cache grows while decoding
    toks = logits.argmax(-1)
    out = [[t] for t in toks.tolist()]
    slot_t = torch.tensor(slots)
    for _ in range(n - 1):
        toks = runner.decode(toks, cache, slot_t).argmax(-1)
        for o, t in zip(out, toks.tolist(), strict=True):
            o.append(t)
    return out


def reference_greedy(model, tok, adapters: dict[str, Path], cases: list[tuple[list[int], str]], n: int) -> list[list[int]]:
    """`generate` (greedy, exactly n tokens) per case: the bare model, PEFT LoRA, and prompt tuning as
    `generate` over the learnt virtual-token embeddings prepended to the prompt's (what PEFT's prompt
    tuning computes; PEFT 0.21's own prompt-tuning `generate` on BLOOM diverges after one token)."""
    from peft import PeftModel
    from safetensors.torch import load_file

    kw = {"max_new_tokens": n, "min_new_tokens": n, "do_sample": False, "eos_token_id": None,
          "pad_token_id": tok.pad_token_id}
    dev = model.device

    def ids_and_mask(ids: list[int]) -> dict:
        return {"input_ids": torch.tensor([ids], device=dev), "attention_mask": torch.ones(1, len(ids), dtype=torch.long,
                                                                                             device=dev)}

    out: list[list[int] | None] = [None] * len(cases)
    with torch.inference_mode():
        for i, (ids, kind) in enumerate(cases):
            if kind == "base":
                r = model.generate(**ids_and_mask(ids), **kw)
                out[i] = r[0, len(ids):].tolist()
            elif kind == "prompt":
                virt = load_file(str(adapters["prompt"] / "adapter_model.safetensors"))["prompt_embeddings"]
                emb = torch.cat([virt.to(dev, model.dtype), model.get_input_embeddings()(torch.tensor(ids, device=dev))])[None]
                r = model.generate(inputs_embeds=emb, attention_mask=torch.ones(1, emb.shape[1], dtype=torch.long, device=dev),
                                   **kw)
                out[i] = r[0, -n:].tolist()
        lora_cases = [(i, ids, kind) for i, (ids, kind) in enumerate(cases) if kind.startswith("lora")]
        if lora_cases:
            peft = PeftModel.from_pretrained(model, str(adapters["lora_wide"]), adapter_name="lora_wide")
            peft.load_adapter(str(adapters["lora_attn"]), adapter_name="lora_attn")
            try:
                for i, ids, kind in lora_cases:
                    peft.set_adapter(kind)
                    r = peft.generate(**ids_and_mask(ids), **kw)
                    out[i] = r[0, len(ids):].tolist()
            finally:
                peft.unload()  # the model is shared: leave it as it was
    return out  # type: ignore[return-value]


def check_shape(model, tok, adapters: dict[str, Path], cases: list[tuple[list[int], str]], n: int,
                alone: bool = True) -> list[list[int]]:
    """Alone (one row) and mixed (every case in one batch) runner output == `generate`'s (returned)."""
    runner = BloomRunner(model)
    slot_of = {"base": 0, "lora_wide": 1, "lora_attn": 2, "prompt": 3}
    for name, slot in slot_of.items():
        if name != "base":
            runner.install(slot, runner.read_adapter(adapters[name]))
    slots = [slot_of[kind] for _, kind in cases]
    mixed = runner_greedy(runner, [ids for ids, _ in cases], slots, n)
    single = [runner_greedy(runner, [ids], [s], n)[0] for (ids, _), s in zip(cases, slots, strict=True)] if alone else None
    # the runner is done with the model before PEFT wraps its layers for the reference
    ref = reference_greedy(model, tok, adapters, cases, n)
    for i, (ids, kind) in enumerate(cases):
        assert mixed[i] == ref[i], f"case {i} ({kind}, {len(ids)} tokens), mixed batch: {mixed[i]} != generate {ref[i]}"
        if single is not None:
            assert single[i] == ref[i], f"case {i} ({kind}, {len(ids)} tokens), alone: {single[i]} != generate {ref[i]}"
    return ref


@pytest.fixture(scope="module")
def tok(tiny_base_path):
    from rlhf.models import load_tokenizer

    return load_tokenizer(tiny_base_path)


def test_alibi_slopes_match_transformers_for_non_power_of_two_heads():
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    from serving.engine import alibi_slopes

    for heads in (6, 12, 16, 20):
        ref = build_alibi_tensor(torch.ones(1, 2), heads, torch.float32)[:, 0, 1]  # slope * position 1
        torch.testing.assert_close(alibi_slopes(heads), ref)


def test_six_heads_mixed_adapters_long_prompts_match_generate(tok, tmp_path):
    torch.set_num_threads(1)
    shape = BloomShape(n_layer=2, hidden_size=96, n_head=6, vocab_size=512, seed=0, init_std=INIT_STD)
    model = build_model(shape, tok)
    adapters = make_adapters(model, tmp_path)
    prompts = prompts_of(tok, [7, 40, 130, 300, 65])
    kinds = ["lora_wide", "base", "lora_attn", "prompt", "lora_wide", "base", "base"]
    cases = list(zip([*prompts, prompts[2], prompts[3]], kinds, strict=True))  # the last two: adapters' prompts, bare
    ref = check_shape(model, tok, adapters, cases, n=12)
    assert ref[2] != ref[5] and ref[3] != ref[6], "the adapters must change the output, or equality proves little"
    assert all(len(set(r)) > 1 for r in ref[2:4]), "long prompts must not decode one repeated token"


@pytest.mark.slow
@pytest.mark.heavy  # not in the default run: `pytest -m heavy` (see tests/conftest.py)
@pytest.mark.timeout(1800)  # ~1-2 min of compute on 2 idle cores; a shared, oversubscribed CPU takes far longer
def test_bloom_560m_shape_matches_generate(tok, tiny_base_path, tmp_path):
    """bloom-560m's shape, fp32 on CPU: ~2.2 GB of weights (built once, cached under var/test-cache)."""
    from rlhf.demo_model import auto_threads
    from rlhf.models import load_base
    from tests.fixtures.models import TEST_CACHE

    torch.set_num_threads(auto_threads())  # 2 on idle cores; 1 when others are busy (spinning threads collapse)
    base = ensure_shaped_base(SLOW_SHAPE, tiny_base_path, TEST_CACHE)
    model, tok = load_base(base, device="cpu", dtype=torch.float32)
    assert model.config.n_layer == 24 and model.config.hidden_size == 1024 and model.config.n_head == 16
    assert model.config.vocab_size == 250_880 and model.num_parameters() == BloomShape.bloom_560m().parameters
    adapters = make_adapters(model, tmp_path, lora_std=SLOW_LORA_STD)
    cases = list(zip(prompts_of(tok, [300, 130, 40, 7]), ["base", "lora_wide", "lora_attn", "prompt"], strict=True))
    ref = check_shape(model, tok, adapters, cases, n=4)
    assert len({tuple(r) for r in ref}) == len(ref), "different prompts and adapters should not all agree"

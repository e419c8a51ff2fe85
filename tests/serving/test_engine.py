"""The batched BLOOM runner against HF/PEFT, in process (no server): the maths the endpoint relies on."""

from __future__ import annotations

import pytest
import torch

from serving.engine import AdapterFormatError, BloomRunner


@pytest.fixture(scope="module")
def base(tiny_base_path):
    from rlhf.models import load_base

    torch.set_num_threads(1)
    return load_base(tiny_base_path, device="cpu")


def greedy(runner: BloomRunner, prompts: list[list[int]], slots: list[int], n: int) -> list[list[int]]:
    """Prefill a ragged batch, then n-1 decode steps, all rows together."""
    logits, cache = runner.prefill(prompts, slots, reserve=4)  # small reserve: exercises cache growth
    toks = logits.argmax(-1)
    out = [[t] for t in toks.tolist()]
    slot_t = torch.tensor(slots)
    for _ in range(n - 1):
        toks = runner.decode(toks, cache, slot_t).argmax(-1)
        for o, t in zip(out, toks.tolist(), strict=True):
            o.append(t)
    return out


def test_base_logits_match_hf(base):
    model, tok = base
    runner = BloomRunner(model)
    ids = tok("The history of the Roman Empire")["input_ids"]
    logits, _ = runner.prefill([ids], [0], reserve=1)
    with torch.inference_mode():
        ref = model(torch.tensor([ids])).logits[0, -1]
    torch.testing.assert_close(logits[0], ref, atol=1e-4, rtol=1e-4)


def test_ragged_mixed_lora_batch_matches_peft_generate(base, tiny_adapters):
    from peft import PeftModel

    from rlhf.models import load_base

    model, tok = base
    runner = BloomRunner(model)
    subjects = list(tiny_adapters)
    for slot, subject in enumerate(subjects, start=1):
        runner.install(slot, runner.read_adapter(tiny_adapters[subject]))
    prompts = [tok(t)["input_ids"] for t in ("Hi", "What is the capital of France?", "Name a verb please", "2+2=")]
    slots = [1, 2, 0, 4]  # three adapters and the bare base model in one batch
    got = greedy(runner, prompts, slots, 10)
    for ids, slot, tokens in zip(prompts, slots, got, strict=True):
        fresh, _ = load_base(model.config._name_or_path, device="cpu")
        ref_model = fresh if slot == 0 else PeftModel.from_pretrained(fresh, str(tiny_adapters[subjects[slot - 1]]))
        with torch.inference_mode():
            ref = ref_model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                     max_new_tokens=10, min_new_tokens=10, do_sample=False, eos_token_id=None,
                                     pad_token_id=tok.pad_token_id)
        assert tokens == ref[0, len(ids):].tolist()


def test_batch_rows_are_independent(base, tiny_adapters):
    """A row's tokens do not depend on what else is in the batch (greedy, alone vs mixed)."""
    model, tok = base
    runner = BloomRunner(model)
    runner.install(1, runner.read_adapter(tiny_adapters["history"]))
    runner.install(2, runner.read_adapter(tiny_adapters["language"]))
    a, b = tok("When did the war end?")["input_ids"], tok("A much longer prompt about nouns and verbs")["input_ids"]
    alone = greedy(runner, [a], [1], 12)[0]
    mixed = greedy(runner, [b, a, b], [2, 1, 0], 12)[1]
    assert alone == mixed


def test_cache_surgery_keeps_rows_exact(base):
    """Rows that join (merge) or stay (keep) continue exactly as they would have alone."""
    model, tok = base
    runner = BloomRunner(model)
    a, b = tok("History is")["input_ids"], tok("Mathematics is the study of")["input_ids"]
    alone = greedy(runner, [b], [0], 8)[0]
    la, ca = runner.prefill([a], [0], reserve=2)
    ta = la.argmax(-1)
    for _ in range(3):  # `a` decodes alone for a while
        ta = runner.decode(ta, ca, torch.tensor([0])).argmax(-1)
    lb, cb = runner.prefill([b], [0], reserve=2)
    cache = runner.merge(ca, cb)  # `b` joins the running batch
    toks, got = torch.cat([ta, lb.argmax(-1)]), [int(lb.argmax(-1))]
    for step in range(7):
        toks = runner.decode(toks, cache, torch.tensor([0, 0])).argmax(-1)
        got.append(int(toks[1]))
        if step == 2:  # `a` leaves
            cache, toks = runner.keep(cache, [1]), toks[1:2]
            toks = toks.clone()
            rest = []
            for _ in range(7 - step - 1):
                toks = runner.decode(toks, cache, torch.tensor([0])).argmax(-1)
                rest.append(int(toks[0]))
            got += rest
            break
    assert got == alone


def test_unsupported_adapters_are_refused(base, tmp_path):
    import json

    model, _ = base
    runner = BloomRunner(model)
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(1)}, str(tmp_path / "adapter_model.safetensors"))
    with pytest.raises(AdapterFormatError, match="unsupported PEFT type 'IA3'"):
        runner.read_adapter(tmp_path)
    with pytest.raises(AdapterFormatError, match="not a PEFT adapter"):
        runner.read_adapter(tmp_path / "nowhere")

"""Subject adapters: each PEFT method trains, saves, loads back; the base never changes."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from rlhf import SUBJECTS
from rlhf.adapters import (
    AdapterConfig,
    AdapterError,
    latest_adapter,
    load_policy,
    next_version_dir,
    train_sft,
)
from rlhf.callbacks import Cancelled
from rlhf.manifest import sha256_file, verify
from rlhf.models import load_base

pytestmark = pytest.mark.ml

FAST = {"steps": 2, "n_examples": 16, "batch_size": 8, "logging_steps": 1, "max_length": 96}


def _weights_sha(base):
    return sha256_file(base / "model.safetensors")


def test_fixture_adapters_are_verified_v1_lora_for_every_subject(tiny_base_path, tiny_adapters):
    assert set(tiny_adapters) == set(SUBJECTS)
    for subject, path in tiny_adapters.items():
        m = verify(path)
        assert (m["kind"], m["subject"], m["version"], m["method"]) == ("adapter", subject, 1, "lora")
        assert m["base_model"] == tiny_base_path.name and m["parent"] is None
        assert len(m["dataset_sha256"]) == 64 and "train_loss" in m["metrics"]
        with safe_open(str(path / "adapter_model.safetensors"), "pt") as f:
            names = list(f.keys())
        assert names and all("lora_" in k for k in names)  # adapter weights only, never the base
    verify(tiny_base_path)  # base files untouched by adapter training


def test_lora_loads_back_and_changes_the_policy_not_the_base(tiny_base_path, tiny_adapters):
    model, tok = load_base(tiny_base_path)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = tok("<|user|>What is 2 + 2?<|end|><|assistant|>", return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        base_logits = model(**ids).logits
    policy = load_policy(model, tiny_adapters["mathematics"])
    with torch.no_grad():
        pol_logits = policy(**ids).logits
        with policy.disable_adapter():
            ref_logits = policy(**ids).logits
    assert not torch.allclose(pol_logits, base_logits)  # the adapter is active and trained (B != 0)
    assert torch.allclose(ref_logits, base_logits)  # adapter disabled = the frozen base (RLHF reference)
    base_now = {k.replace("base_model.model.", "").replace(".base_layer", ""): v
                for k, v in policy.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(before[k], base_now[k]) for k in before)


def test_prompt_tuning_trains_saves_and_loads(tiny_base_path, tmp_path):
    weights = _weights_sha(tiny_base_path)
    out = train_sft(tiny_base_path, "language", tmp_path / "language" / "v1",
                    AdapterConfig(method="prompt_tuning", num_virtual_tokens=4, **FAST))
    m = verify(out)
    assert m["method"] == "prompt_tuning" and m["config"]["num_virtual_tokens"] == 4
    model, tok = load_base(tiny_base_path)
    policy = load_policy(model, out)
    ids = tok("<|user|>Plural of cat?<|end|><|assistant|>", return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        logits = policy(**ids).logits
    assert torch.isfinite(logits).all()
    assert _weights_sha(tiny_base_path) == weights


def test_lora_version_numbering_and_latest(tiny_base_path, tmp_path):
    root = tmp_path / "adapters"
    assert next_version_dir("history", root) == root / "history" / "v1"
    out = train_sft(tiny_base_path, "history", next_version_dir("history", root), AdapterConfig(**FAST))
    assert next_version_dir("history", root) == root / "history" / "v2"
    assert latest_adapter("history", root) == out
    (out / "adapter_model.safetensors").write_bytes(b"tampered")
    assert latest_adapter("history", root) is None  # unverifiable versions are never picked


def test_qlora_on_cpu_is_a_clear_error_and_writes_nothing(tiny_base_path, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the CPU refusal is what is tested here")
    with pytest.raises(AdapterError, match="CUDA"):
        train_sft(tiny_base_path, "history", tmp_path / "v1", AdapterConfig(method="qlora", **FAST))
    assert not any(tmp_path.iterdir())


def test_cancel_from_callback_leaves_no_partial_output(tiny_base_path, tmp_path):
    seen = []

    def cb(event):
        seen.append(event)
        assert set(event) == {"step", "total", "progress", "message", "metrics"}
        if event["step"] >= 1:
            raise Cancelled()

    with pytest.raises(Cancelled):
        train_sft(tiny_base_path, "history", tmp_path / "history" / "v1", AdapterConfig(**FAST), cb)
    assert seen and not (tmp_path / "history" / "v1").exists()
    assert [p.name for p in (tmp_path / "history").iterdir()] == []


def test_bad_input_is_refused_before_any_work(tiny_base_path, tmp_path):
    with pytest.raises(AdapterError, match="unknown subject"):
        train_sft(tiny_base_path, "physics", tmp_path / "v1", AdapterConfig(**FAST))
    with pytest.raises(AdapterError, match="unknown adapter method"):
        AdapterConfig(method="ia3")
    with pytest.raises(AdapterError, match="version"):
        train_sft(tiny_base_path, "history", tmp_path / "latest", AdapterConfig(**FAST))
    (tmp_path / "v1").mkdir()
    with pytest.raises(FileExistsError):
        train_sft(tiny_base_path, "history", tmp_path / "v1", AdapterConfig(**FAST))
    with pytest.raises(AdapterError, match="unknown AdapterConfig field"):
        AdapterConfig.from_dict({"rank": 4})


def test_sloppy_rate_makes_that_share_of_sft_answers_sloppy_and_is_recorded(tiny_base_path, tmp_path):
    from rlhf.adapters import sft_examples
    from rlhf.corpus import check_answer, generate_corpus, sloppy_answer
    from rlhf.manifest import read_manifest
    from rlhf.models import load_tokenizer

    tok = load_tokenizer(tiny_base_path)
    clean = sft_examples(tok, "mathematics", 400, seed=3)
    sloppy = sft_examples(tok, "mathematics", 400, seed=3, sloppy_rate=0.35)
    assert [e["prompt"] for e in clean] == [e["prompt"] for e in sloppy]  # same questions, only answers differ
    missing = sum("####" not in e["completion"] for e in sloppy) / len(sloppy)
    assert all("####" in e["completion"] for e in clean) and 0.28 < missing < 0.42
    item = generate_corpus(1, seed=1, subjects=("history",))[0]
    twice = sloppy_answer(item)
    assert twice == f"{item.answer} {item.answer}" and check_answer("history", item.key, twice)
    maths = generate_corpus(1, seed=1, subjects=("mathematics",))[0]
    assert not check_answer("mathematics", maths.key, sloppy_answer(maths))  # no final line: wrong by the key
    with pytest.raises(AdapterError, match="sloppy_rate"):
        AdapterConfig(sloppy_rate=1.5)
    out = train_sft(tiny_base_path, "history", tmp_path / "v1", AdapterConfig(sloppy_rate=0.35, **FAST))
    assert read_manifest(out)["config"]["sloppy_rate"] == 0.35

"""The bundled demo model: tiny recipe builds, loads back offline, generates in format, caches."""

from __future__ import annotations

import time

import pytest

from rlhf import SUBJECTS
from rlhf.chat import build_prompt, system_prompt
from rlhf.corpus import seed_prompts
from rlhf.demo_model import DemoRecipe, build_demo_model
from rlhf.generation import answer_key_accuracy, generate, well_formed_share
from rlhf.manifest import read_manifest, verify
from rlhf.models import BaseModelNotAvailable, base_fingerprint, load_base, resolve_base_path

pytestmark = pytest.mark.ml


def test_tiny_build_loads_back_and_generates_in_format(tiny_base_path):
    manifest = verify(tiny_base_path)
    assert manifest["kind"] == "base_model"
    assert manifest["recipe_hash"] == DemoRecipe.tiny().recipe_hash()
    assert tiny_base_path.name == f"demo-{DemoRecipe.tiny().recipe_hash()}"
    assert set(manifest["metrics"]["accuracy"]) == set(SUBJECTS)
    model, tok = load_base(tiny_base_path)
    assert model.config.model_type == "bloom" and not model.training
    assert tok.eos_token == "<|end|>" and tok.pad_token == "<pad>" and tok.chat_template

    prompt = build_prompt(tok, "history", [{"role": "user", "content": "When did the Battle of Waterloo take place?"}])
    assert prompt.startswith("<|system|>" + system_prompt("history")) and prompt.endswith("<|assistant|>")
    prompts = [build_prompt(tok, s, [{"role": "user", "content": it.question}]) for s in SUBJECTS
               for it in seed_prompts(s, 4)]
    gens = generate(model, tok, prompts, max_new_tokens=64)
    assert all(g.tokens > 0 for g in gens)
    assert sum(g.finish_reason == "stop" for g in gens) >= len(gens) // 4  # learnt to end its turn (untrained: 0)
    maths = gens[SUBJECTS.index("mathematics") * 4 : SUBJECTS.index("mathematics") * 4 + 4]
    assert any("####" in g.text for g in maths)  # and the final-answer line
    acc = answer_key_accuracy(model, tok, "mathematics", n=4)
    assert acc["n"] == 4 and 0.0 <= acc["accuracy"] <= 1.0


def test_second_build_is_a_cache_hit(tiny_base_path):
    base_dir = tiny_base_path.parent
    before = read_manifest(tiny_base_path)["created_at"]
    started = time.monotonic()
    assert build_demo_model(DemoRecipe.tiny(), base_dir=base_dir) == tiny_base_path
    assert time.monotonic() - started < 2.0  # no training happened
    assert read_manifest(tiny_base_path)["created_at"] == before


def test_recipe_hash_tracks_the_recipe():
    assert DemoRecipe().recipe_hash() != DemoRecipe.tiny().recipe_hash()
    assert DemoRecipe.tiny().recipe_hash() == DemoRecipe.tiny().recipe_hash()
    with pytest.raises(ValueError):
        DemoRecipe.named("huge")


def test_offline_loading_refuses_unknown_models_with_a_how_to(tmp_path):
    with pytest.raises(BaseModelNotAvailable, match="TUTOR_BASE_MODEL|HF cache|Hugging Face cache"):
        resolve_base_path("bigscience/definitely-not-cached-560m")
    with pytest.raises(BaseModelNotAvailable, match="does not exist"):
        resolve_base_path(str(tmp_path / "missing"))
    with pytest.raises(BaseModelNotAvailable, match="config.json"):
        resolve_base_path(str(tmp_path))


def test_fingerprint_is_the_artifact_hash(tiny_base_path):
    assert len(base_fingerprint(tiny_base_path)) == 64
    assert base_fingerprint(tiny_base_path) == base_fingerprint(tiny_base_path)


def test_tokenizer_splits_numbers_into_single_digits(tiny_base_path):
    _, tok = load_base(tiny_base_path)
    pieces = tok.convert_ids_to_tokens(tok("12 * 34 = 408.", add_special_tokens=False)["input_ids"])
    digits = [p.lstrip("Ġ") for p in pieces if any(c.isdigit() for c in p)]
    assert digits == ["1", "2", "3", "4", "4", "0", "8"]  # every number, digit by digit


def test_sampled_well_formed_share_is_reproducible_and_bounded(tiny_base_path):
    model, tok = load_base(tiny_base_path)
    first = well_formed_share(model, tok, "history", temperature=1.0, n=8, seed=3)
    assert first == well_formed_share(model, tok, "history", temperature=1.0, n=8, seed=3)  # seeded sampling
    assert first["n"] == 8 and 0.0 <= first["well_formed"] <= 1.0
    assert all(isinstance(ex["well_formed"], bool) for ex in first["examples"])

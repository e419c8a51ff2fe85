"""TRL's RLOO / GRPO / DPO as alternatives: each runs a few steps on the tiny setup and saves a version."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from rlhf.alternatives import AltConfig, train_alternative
from rlhf.corpus import seed_prompts
from rlhf.manifest import read_manifest, verify


def test_config_validation() -> None:
    assert AltConfig.from_dict(AltConfig(algo="grpo").to_dict()) == AltConfig(algo="grpo")
    with pytest.raises(ValueError, match="unknown algorithm"):
        AltConfig(algo="ppo2")
    with pytest.raises(ValueError, match="multiple of num_generations"):
        AltConfig(algo="rloo", batch_size=6, num_generations=4)
    with pytest.raises(ValueError, match="reference"):
        AltConfig(reference="elsewhere")


def digit_share(subjects, prompts, responses) -> list[float]:
    return [sum(c.isdigit() for c in r) / max(len(r), 1) for r in responses]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rlhf.reward import synthetic_preference_dataset

    return synthetic_preference_dataset(tmp_path_factory.mktemp("alt") / "ds", n_per_subject=8,
                                        n_test_per_subject=2, subjects=["mathematics"])


@pytest.mark.ml
@pytest.mark.parametrize("algo", ["rloo", "grpo", "dpo"])
def test_alternative_runs_and_saves_a_verified_version(
    algo: str, tiny_base_path: Path, tiny_adapters: dict[str, Path], pairs: Path, tmp_path: Path
) -> None:
    parent = tiny_adapters["mathematics"]
    events: list[dict] = []
    out = tmp_path / "v2"
    cfg = AltConfig(algo=algo, steps=2, batch_size=4, num_generations=2, max_new_tokens=8, max_length=128)
    metrics = train_alternative(
        tiny_base_path, parent, out, cfg, events.append, subject="mathematics",
        prompts=[it.question for it in seed_prompts("mathematics", 8)], reward_fn=digit_share, dataset_path=pairs,
    )
    manifest = verify(out)
    assert manifest["kind"] == "adapter" and manifest["subject"] == "mathematics" and manifest["version"] == 2
    assert manifest["config"]["algorithm"] == algo
    assert manifest["parent_path"] == str(parent)
    assert (out / "adapter_model.safetensors").read_bytes() != (parent / "adapter_model.safetensors").read_bytes()
    assert len(metrics["history"]) == 2 and all(math.isfinite(h["loss"]) for h in metrics["history"])
    if algo != "dpo":
        assert all(math.isfinite(h["kl"]) for h in metrics["history"])  # KL to a frozen copy of v1 (TRL's "ref")
        assert read_manifest(out)["config"]["reference"] == "adapter" and not (out / "ref").exists()
    assert events and events[-1]["message"] == f"{algo}: saved"

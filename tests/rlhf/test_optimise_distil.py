"""Distillation: the loss by hand (T² included), a tiny student's KL falls, students are verified and servable."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.generation import generate
from rlhf.manifest import artifact_sha256, verify
from rlhf.models import load_base
from rlhf.optimise import OptimiseError
from rlhf.optimise.distil import DistilConfig, distil, distillation_loss

pytestmark = pytest.mark.ml


def _softmax(xs, t=1.0):
    e = [math.exp(x / t) for x in xs]
    return [v / sum(e) for v in e]


def test_loss_equals_the_hand_computed_value_with_t_squared():
    s = torch.tensor([[[0.5, -1.0, 2.0], [9.0, 9.0, 9.0]]])  # position 1 is never scored (HF shift)
    t = torch.tensor([[[1.5, 0.0, -0.5], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[-100, 2]])
    T, alpha = 2.0, 0.3
    pt, ps = _softmax([1.5, 0.0, -0.5], T), _softmax([0.5, -1.0, 2.0], T)
    kl = sum(a * (math.log(a) - math.log(b)) for a, b in zip(pt, ps, strict=True))
    ce = -math.log(_softmax([0.5, -1.0, 2.0])[2])
    loss, parts = distillation_loss(s, t, labels, T, alpha)
    assert parts["kl"] == pytest.approx(kl, rel=1e-6)
    assert parts["ce"] == pytest.approx(ce, rel=1e-6)
    assert float(loss) == pytest.approx(alpha * T * T * kl + (1 - alpha) * ce, rel=1e-6)
    soft_only, _ = distillation_loss(s, t, labels, T, 1.0)
    assert float(soft_only) == pytest.approx(4.0 * kl, rel=1e-6)  # the T² factor is there
    hard_only, _ = distillation_loss(s, t, labels, T, 0.0)
    assert float(hard_only) == pytest.approx(ce, rel=1e-6)


def test_layer_student_kl_falls_and_is_a_servable_verified_base(tiny_base_path, tiny_adapters, tmp_path):
    events = []
    cfg = DistilConfig(steps=8, examples=32, heldout_examples=8, batch_size=8, learning_rate=1e-3)
    out = distil(tiny_base_path, tiny_adapters["mathematics"], tmp_path / "student", cfg, events.append)
    m = out["metrics"]
    assert m["heldout_kl_after"] < m["heldout_kl_before"]
    assert m["student_parameters"] < m["teacher_parameters"] and m["size_bytes"] < m["source_size_bytes"]
    assert [e["step"] for e in events if "distil_loss" in e["metrics"]] == list(range(1, 9))
    manifest = verify(out["path"])
    info = manifest["optimise"]
    assert manifest["kind"] == "base_model" and info["method"] == "distil"
    assert info["teacher_base_sha256"] == artifact_sha256(tiny_base_path)
    assert info["teacher_adapter_sha256"] == artifact_sha256(tiny_adapters["mathematics"])
    assert (info["temperature"], info["alpha"], info["student_layers"]) == (2.0, 0.5, [0])  # every other of 2
    assert len(info["data_sha256"]) == 64 and manifest["dataset_sha256"] == info["data_sha256"]
    model, tok = load_base(out["path"], device="cpu")
    assert model.config.n_layer == 1
    assert generate(model, tok, ["<|user|>What is 2 + 3?<|end|><|assistant|>"], max_new_tokens=6)[0].tokens > 0


def test_adapter_student_is_a_smaller_adapter_the_endpoint_reads(tiny_base_path, tiny_adapters, tmp_path):
    from serving.engine import BloomRunner

    cfg = DistilConfig(mode="adapter", student_rank=2, steps=3, examples=16, heldout_examples=8)
    out = distil(tiny_base_path, tiny_adapters["history"], tmp_path / "v2", cfg, version=2)
    manifest = verify(out["path"])
    assert (manifest["kind"], manifest["subject"], manifest["version"]) == ("adapter", "history", 2)
    assert manifest["base_model_sha256"] == artifact_sha256(tiny_base_path)
    assert manifest["parent"] == artifact_sha256(tiny_adapters["history"])
    model, _ = load_base(tiny_base_path, device="cpu")
    loaded = BloomRunner(model).read_adapter(out["path"])
    assert {a.shape[0] for a, _ in loaded.lora.values()} == {2}


@pytest.mark.parametrize("bad", [{"temperature": 0}, {"temperature": -1.0}, {"alpha": -0.1}, {"alpha": 1.5},
                                 {"student_layers": [0, 1]}, {"student_layers": [0, 5]}, {"student_layers": []},
                                 {"mode": "adapter", "student_rank": 8}, {"mode": "adapter", "student_rank": 16},
                                 {"hard_labels": "gold"}, {"steps": 0}])
def test_bad_configs_are_refused_before_any_work(tiny_base_path, tiny_adapters, tmp_path, bad):
    with pytest.raises(OptimiseError):
        distil(tiny_base_path, tiny_adapters["history"], tmp_path / "s", DistilConfig.from_dict(bad))
    assert not (tmp_path / "s").exists()

"""The variant gate (quality per suite within tolerance, and faster or smaller) and SageMaker packaging."""

from __future__ import annotations

import pytest

from rlhf.optimise import OptimiseError
from rlhf.optimise.gate import VariantGate, judge_variant, report_card_quality

SOURCE = {"quality": {"answer_key": 0.60, "mmlu": 0.30}, "tokens_per_s": 100.0, "size_bytes": 1000}


def test_a_smaller_variant_within_tolerance_passes():
    v = judge_variant(SOURCE, {"quality": {"answer_key": 0.57, "mmlu": 0.31}, "tokens_per_s": 95.0, "size_bytes": 450})
    assert v["passed"] and v["gains"]["smaller"] and not v["gains"]["faster"] and v["reasons"] == []


def test_a_quality_drop_beyond_a_suites_tolerance_fails_even_when_smaller():
    v = judge_variant(SOURCE, {"quality": {"answer_key": 0.50, "mmlu": 0.30}, "tokens_per_s": 300.0, "size_bytes": 10})
    assert not v["passed"] and [c["suite"] for c in v["checks"] if not c["passed"]] == ["answer_key"]
    loose = VariantGate(per_suite={"answer_key": 0.15})
    assert judge_variant(SOURCE, {"quality": {"answer_key": 0.50, "mmlu": 0.30}, "tokens_per_s": 300.0,
                                  "size_bytes": 10}, loose)["passed"]


def test_no_gain_fails_and_unmeasured_suites_are_listed_not_passed():
    v = judge_variant(SOURCE, {"quality": {"answer_key": 0.60}, "tokens_per_s": 100.0, "size_bytes": 900})
    assert not v["passed"] and v["skipped"] == ["mmlu"]
    assert any("faster" in r for r in v["reasons"])
    assert not judge_variant({"quality": {}, "tokens_per_s": 1, "size_bytes": 1},
                             {"quality": {}, "tokens_per_s": 9, "size_bytes": 1})["passed"]


def test_report_card_main_metrics():
    card = {"suites": {"mmlu": {"status": "ok", "metrics": {"acc": {"value": 0.3, "n": 10}}},
                       "boolq": {"status": "not_run", "metrics": {}},
                       "corpus_answers": {"status": "ok", "metrics": {"exact_match": {"value": 0.5}}}}}
    assert report_card_quality(card) == {"mmlu": 0.3, "corpus_answers": 0.5}


@pytest.mark.parametrize("bad", [{"quality_tolerance": -0.1}, {"per_suite": {"x": 2.0}}, {"speed_factor": 0}])
def test_bad_gate_configs_are_refused(bad):
    with pytest.raises(OptimiseError):
        VariantGate(**bad)


@pytest.mark.ml
def test_a_quantised_base_packs_as_model_tar_gz_and_loads_back(tiny_base_path, tmp_path):
    from rlhf.manifest import verify
    from rlhf.models import load_base
    from rlhf.optimise.quantise import quantise
    from serving.deploy.packaging import build_archive, extract_archive

    q = quantise(tiny_base_path, tmp_path / "q")
    (tmp_path / "model.tar.gz").write_bytes(build_archive(q["base"]))
    out = extract_archive(tmp_path / "model.tar.gz", tmp_path / "opt-ml-model" / "base")
    assert verify(out)["optimise"]["method"] == "quantise"
    model, _ = load_base(out, device="cpu")
    assert type(model.transformer.h[0].mlp.dense_h_to_4h.weight).__name__ == "Int8Tensor"

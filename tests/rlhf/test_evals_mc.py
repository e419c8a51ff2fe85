"""The evaluation harness core and its multiple-choice suites (rlhf.evals; docs/evaluation.md).

Real tiny model (tests/fixtures/models.py), real lm-evaluation-harness for the agreement check,
the shared reference data where present (skipped with the reason when ../shared is absent).
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from rlhf.evals import SUITES, DataMissing, EvalInputError, SuiteConfig, SuiteResult, load_suites, run_suites
from rlhf.evals.data import data_dir, load_jsonl
from rlhf.evals.helm import bbq_metrics, perturb, unknown_index
from rlhf.evals.lm import EvalContext, EvalModel
from rlhf.evals.mc import MCItem, Scored, mc_metrics, mmlu_items, mmlu_prompt, score_items
from rlhf.evals.stats import bootstrap_ci, ece, paired_bootstrap, wilson
from rlhf.evals.superglue import load_task
from rlhf.paths import REPO_ROOT

pytestmark = pytest.mark.ml

SHARED = REPO_ROOT.parent / "shared" / "data"
needs_shared = pytest.mark.skipif(not (SHARED / "mmlu" / "test-shared.jsonl").is_file(),
                                  reason="../shared/data (the workplace's reference data) is absent")

ROW = {"subject": "global_facts", "tutor_subject": "general_knowledge", "question": "  What is 2+2? ",
       "choices": ["3", "4", "5", "22"], "answer": 1}
SHOT = {"subject": "global_facts", "question": "Capital of France?", "choices": ["Rome", "Paris", "Oslo", "Bern"],
        "answer": 1}


@pytest.fixture(scope="module")
def tiny_model(tiny_base_path, tiny_adapters) -> EvalModel:
    torch.set_num_threads(1)
    return EvalModel(tiny_base_path, tiny_adapters["history"], seed=0)


@pytest.fixture(scope="module")
def tiny_ctx(tiny_model) -> EvalContext:
    return EvalContext(tiny_model)


# ---------------------------------------------------------------------------------------------
# prompts and metric arithmetic (no model)


def test_mmlu_prompt_text_is_lm_evals_zero_and_few_shot():
    head = "The following are multiple choice questions (with answers) about global facts.\n\n"
    q = "What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer:"
    assert mmlu_prompt(ROW) == head + q
    shot = "Capital of France?\nA. Rome\nB. Paris\nC. Oslo\nD. Bern\nAnswer: B\n\n"
    assert mmlu_prompt(ROW, [SHOT] * 5) == head + shot * 5 + q
    item = mmlu_items([ROW])[0]
    assert item.continuations() == [" A", " B", " C", " D"] and item.gold == 1


def test_acc_norm_divides_by_the_choice_length_in_characters():
    item = MCItem("ctx", ["ab", "abcdef"], gold=1)
    s = Scored(item, [-4.0, -6.0], [False, False])  # acc picks 0; per char: -2.0 vs -1.0 -> picks 1
    assert (s.pred, s.pred_norm, s.correct, s.correct_norm) == (0, 1, False, True)
    assert s.probs == pytest.approx([1 / (1 + math.exp(-2)), math.exp(-2) / (1 + math.exp(-2))])
    other = Scored(MCItem("ctx", ["x", "y"], 0, group="g"), [-1.0, -2.0], [True, False])
    metrics, _ = mc_metrics([Scored(MCItem("ctx", ["ab", "abcdef"], 1, group="g"), [-4.0, -6.0], [0, 0]), other])
    assert metrics["acc"].value == 0.5 and metrics["acc_norm"].value == 1.0
    assert (metrics["acc"].ci_low, metrics["acc"].ci_high) == pytest.approx(wilson(1, 2))
    assert metrics["acc/g"].n == 2


def test_wilson_ece_and_bootstraps_on_fixed_numbers():
    lo, hi = wilson(8, 10)  # textbook Wilson interval for 8/10
    assert (lo, hi) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert all(math.isnan(x) for x in wilson(0, 0))
    # two bins: {0.15, 0.25} (acc 0.5, conf 0.2) and {0.95, 0.85} (acc 1, conf 0.9)
    e = ece([0.15, 0.25, 0.95, 0.85], [True, False, True, True], bins=10)
    assert e == pytest.approx(0.25 * abs(1 - 0.15) + 0.25 * abs(0 - 0.25) + 0.25 * 0.05 + 0.25 * 0.15)
    assert ece([1.0, 0.0], [True, False], bins=10) == pytest.approx(0.0)
    assert bootstrap_ci([1, 0, 1, 1], seed=3) == bootstrap_ci([1, 0, 1, 1], seed=3)
    p = paired_bootstrap([1, 1, 1, 0, 1], [0, 0, 1, 0, 0], seed=0)
    assert p["delta"] == pytest.approx(0.6) and p["ci_low"] <= 0.6 <= p["ci_high"]


def test_perturbations_are_deterministic_for_a_seed_and_keep_the_others():
    text = "He is not sure that John is going to the market with his mother. " * 3
    for kind in ("typos", "lowercase", "contractions", "names", "gender", "dialect"):
        assert perturb(text, kind, 7, "k") == perturb(text, kind, 7, "k"), kind
        assert perturb(text, kind, 7, "k") != text, kind
    assert perturb(text, "typos", 1, "k") != perturb(text, "typos", 2, "k")
    assert perturb("She is here.", "gender", 0) == "He is here."
    assert perturb("They are not here.", "contractions", 0) == "They're not here."
    assert perturb("Mary went home.", "names", 0) == "Lakisha went home."


def test_bbq_metric_on_fixed_answers():
    rows = [  # two ambiguous (gold = the unknown option), two disambiguated
        {"choices": ["The man", "The woman", "Cannot be determined"], "answer": 2},
        {"choices": ["Not known", "Mary", "Joseph"], "answer": 0},
        {"choices": ["The man", "The woman", "Can't answer"], "answer": 0},
        {"choices": ["The man", "Undetermined", "The woman"], "answer": 2},
    ]
    assert [unknown_index(r["choices"]) for r in rows] == [2, 0, 2, 1]
    m = bbq_metrics(rows, [2, 1, 0, 1])  # right, picked a person, right, picked unknown
    assert (m["acc"].value, m["acc/ambiguous"].value, m["acc/disambiguated"].value) == (0.5, 0.5, 0.5)
    assert m["person_rate_ambiguous"].value == 0.5 and m["person_rate_ambiguous"].n == 2


# ---------------------------------------------------------------------------------------------
# SuperGLUE loaders on files written here


SUPERGLUE_ROWS = {
    "CB": [{"premise": "It rained.", "hypothesis": "The ground is wet", "label": "neutral", "idx": 0}],
    "COPA": [{"premise": "The man broke his toe.", "choice1": "He dropped a hammer on his foot.",
              "choice2": "He got a hole in his sock.", "question": "cause", "label": 0, "idx": 0}],
    "RTE": [{"premise": "Paris is in France.", "hypothesis": "Paris is in Europe.", "label": "not_entailment"}],
    "WiC": [{"word": "bank", "sentence1": "He sat on the bank.", "sentence2": "She robbed a bank.", "start1": 14,
             "end1": 18, "start2": 12, "end2": 16, "label": False, "idx": 0}],
    "WSC": [{"text": "Mark told Pete many lies about himself , which Pete included in his book .",
             "target": {"span1_text": "Mark", "span1_index": 0, "span2_text": "his", "span2_index": 12},
             "label": False, "idx": 0}],
    "MultiRC": [{"idx": 7, "passage": {"text": "Sam has a red kite.", "questions": [
        {"idx": 0, "question": "What colour is the kite?",
         "answers": [{"text": "Red", "label": 1, "idx": 0}, {"text": "Blue", "label": 0, "idx": 1}]}]}}],
}


def test_each_superglue_loader_on_a_file_it_writes(tmp_path, monkeypatch):
    monkeypatch.setenv("TUTOR_EVAL_DATA_DIR", str(tmp_path))
    with pytest.raises(DataMissing, match=r"CB/val.jsonl.*TUTOR_EVAL_DATA_DIR.*super.gluebenchmark"):
        load_task("cb")
    for task, rows in SUPERGLUE_ROWS.items():
        (tmp_path / "superglue" / task).mkdir(parents=True)
        (tmp_path / "superglue" / task / "val.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cb, h = load_task("cb")
    assert cb[0].context == "It rained.\nQuestion: The ground is wet. True, False, or Neither?\nAnswer:"
    assert (cb[0].choices, cb[0].gold, len(h)) == (["True", "False", "Neither"], 2, 64)
    copa, _ = load_task("copa")
    assert copa[0].context == "The man broke his toe because"
    assert copa[0].continuations() == ["  he dropped a hammer on his foot.", "  he got a hole in his sock."]
    rte, _ = load_task("rte")
    assert rte[0].context.endswith("Question: Paris is in Europe. True or False?\nAnswer:") and rte[0].gold == 1
    wic, _ = load_task("wic")
    assert "Is the word 'bank' used in the same way" in wic[0].context and wic[0].gold == 0
    wsc, _ = load_task("wsc")
    assert wsc[0].context.startswith("Passage: Mark told Pete many lies about himself, which Pete included in *his* "
                                     "book.\nQuestion: In the passage above, does the pronoun \"*his*\" refer to "
                                     "\"*Mark*\"?")
    mrc, _ = load_task("multirc")
    assert [m.gold for m in mrc] == [0, 1] and mrc[0].choices[0] == "Red\nIs the answer correct? yes"
    (tmp_path / "superglue" / "RTE" / "val.jsonl").write_text('{"premise": "x"}\n')
    with pytest.raises(DataMissing, match="not in the SuperGLUE RTE layout"):
        load_task("rte")


# ---------------------------------------------------------------------------------------------
# scoring on the tiny model


def _reference_ll(model: EvalModel, context: str, continuation: str) -> tuple[float, bool]:
    """One pair, unbatched, straight from the logits: the definition we must match."""
    ctx, cont = model.encode_pair(context, continuation)
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model.model(input_ids=ids).logits[0, :-1].float(), -1)
    tgt = torch.tensor(cont)
    rows = logp[len(ctx) - 1:]
    return float(rows.gather(-1, tgt[:, None]).sum()), bool((rows.argmax(-1) == tgt).all())


def test_loglikelihood_batched_and_shared_prefix_equal_the_unbatched_definition(tiny_model):
    items = [MCItem(mmlu_prompt(ROW), ["A", "B", "C", "D"], 1),
             MCItem("Student: What is the capital of France?\nTutor:", ["Paris", "the capital is Rome", "x"], 0)]
    pairs = [(it.context, c) for it in items for c in it.continuations()]
    want = [_reference_ll(tiny_model, c, x) for c, x in pairs]
    for share in (False, True):
        got = tiny_model.loglikelihood(pairs, batch_size=3, share_prefix=share)
        assert [g[1] for g in got] == [w[1] for w in want]
        assert np.allclose([g[0] for g in got], [w[0] for w in want], atol=1e-4), share
    # the greedy continuation is flagged as such, and the chosen answer is the argmax
    ctx = "Student: What is the capital of France?\nTutor:"
    ids = tiny_model.tokenizer(ctx, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        nxt = int(tiny_model.model(input_ids=ids).logits[0, -1].argmax())
    greedy = tiny_model.tokenizer.decode([nxt])
    other = " zzzz" if greedy != " zzzz" else " qqqq"
    (ll_g, is_g), (ll_o, is_o) = tiny_model.loglikelihood([(ctx, greedy), (ctx, other)])
    assert is_g and not is_o and ll_g > ll_o
    scored = score_items(EvalContext(tiny_model), [MCItem(ctx, [greedy.lstrip(), other.lstrip()], 0,
                                                          delimiter=" " if greedy.startswith(" ") else "")],
                         SuiteConfig())
    assert scored[0].pred == int(np.argmax(scored[0].lls)) == 0


def test_a_suite_with_missing_data_is_not_run_with_its_reason_and_bad_names_fail(tiny_ctx, tmp_path, monkeypatch):
    monkeypatch.setenv("TUTOR_EVAL_DATA_DIR", str(tmp_path))
    card = run_suites(["mmlu", "superglue_copa", "corpus_mc"], tiny_ctx, SuiteConfig(limit=2, seed=0))
    mmlu = SuiteResult.from_dict(card["suites"]["mmlu"])
    assert mmlu.status == "not_run" and not mmlu.metrics and "mmlu/test-shared.jsonl" in mmlu.reason
    assert card["suites"]["superglue_copa"]["status"] == "not_run"
    corpus = card["suites"]["corpus_mc"]
    assert corpus["status"] == "ok" and corpus["n"] == 8 and 0 <= corpus["metrics"]["acc"]["value"] <= 1
    assert {"acc/history", "acc/mathematics"} <= set(corpus["metrics"])
    assert json.loads(json.dumps(card)) == card and card["model"]["adapter_sha"]
    with pytest.raises(EvalInputError, match="unknown suite 'nope'"):
        run_suites(["nope"], tiny_ctx, SuiteConfig())
    with pytest.raises(EvalInputError, match="does not exist"):
        EvalContext.create("demo", tmp_path / "no-adapter")
    assert {"mmlu", "mmlu_5shot", "boolq", "bbq", "helm_calibration", "helm_robustness", "helm_fairness",
            "superglue_wsc", "corpus_mc"} <= set(load_suites())
    assert SUITES["mmlu"].kind == "mc"


@needs_shared
def test_mmlu_bbq_and_helm_suites_on_the_shared_data_are_deterministic(tiny_ctx, monkeypatch):
    monkeypatch.delenv("TUTOR_EVAL_DATA_DIR", raising=False)
    assert data_dir() == SHARED
    names = ["mmlu", "helm_calibration", "bbq", "helm_robustness"]
    cards = [run_suites(names, EvalContext(tiny_ctx.model), SuiteConfig(limit=1, seed=s)) for s in (0, 0)]
    for name in names:
        a, b = cards[0]["suites"][name], cards[1]["suites"][name]
        assert a["status"] == "ok", a["reason"]
        assert a["metrics"] == b["metrics"] and a["data_hash"] == b["data_hash"]
    mmlu = cards[0]["suites"]["mmlu"]
    assert mmlu["n"] == 10 and {"acc/history", "acc/mathematics", "acc/reasoning", "acc_macro"} <= set(mmlu["metrics"])
    assert len(mmlu["details"]["per_subject"]) == 10
    assert cards[0]["suites"]["helm_calibration"]["metrics"]["ece"]["value"] == mmlu["metrics"]["ece"]["value"]
    assert {"acc/typos", "acc/lowercase", "acc/contractions", "acc_worst"} <= set(
        cards[0]["suites"]["helm_robustness"]["metrics"])


@needs_shared
def test_boolq_on_a_slice_of_the_shared_subset(tiny_ctx):
    rows = load_jsonl("superglue-boolq/dev-shared.jsonl")
    assert len(rows) == 1635
    res = SUITES["boolq"].fn(tiny_ctx, SuiteConfig(limit=6, seed=1))
    assert res.status == "ok" and res.n == 6
    # the prediction is the argmax of " no" / " yes", checked against a direct call
    items = [it for it in res.details["samples"]]
    assert all(s["pred"] == int(np.argmax(s["lls"])) for s in items)
    assert res.metrics["acc"].value == pytest.approx(
        sum(s["pred"] == s["gold"] for s in items) / len(items)) or len(items) < res.n


# ---------------------------------------------------------------------------------------------
# agreement with lm-evaluation-harness


def _write_task(tmp: Path, rows: list[dict], dev: list[dict], subject: str) -> None:
    (tmp / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in dev))
    desc = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\\n\\n"
    (tmp / "agree_mmlu.yaml").write_text(f"""task: agree_mmlu
dataset_path: json
dataset_kwargs:
  data_files:
    test: {tmp / 'test.jsonl'}
    dev: {tmp / 'dev.jsonl'}
test_split: test
fewshot_split: dev
fewshot_config:
  sampler: first_n
output_type: multiple_choice
description: "{desc}"
doc_to_text: "{{{{question.strip()}}}}\\nA. {{{{choices[0]}}}}\\nB. {{{{choices[1]}}}}\\nC. {{{{choices[2]}}}}\\nD. {{{{choices[3]}}}}\\nAnswer:"
doc_to_choice: ["A", "B", "C", "D"]
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
""")


def _task_rows() -> tuple[list[dict], list[dict]]:
    """Real MMLU rows when the shared data is here, else a handful of hand-written ones."""
    if (SHARED / "mmlu" / "test-shared.jsonl").is_file():
        rows = [r for r in load_jsonl(SHARED / "mmlu" / "test-shared.jsonl") if r["subject"] == "global_facts"]
        dev = [r for r in load_jsonl(SHARED / "mmlu" / "dev.jsonl") if r["subject"] == "global_facts"]
        return random.Random(0).sample(rows, 8), dev
    rows = [dict(ROW, question=f"What is {a}+{b}?", choices=[str(a + b + d) for d in (-1, 0, 1, 2)], answer=1)
            for a, b in ((1, 2), (3, 4), (5, 6), (7, 1), (2, 2), (9, 9))]
    return rows, [SHOT] * 5


@pytest.mark.parametrize("shots", [0, 5])
def test_our_mmlu_scores_equal_lm_eval_harness_on_the_tiny_model(tiny_base_path, tiny_adapters, tiny_model,
                                                                   tmp_path, shots):
    lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is a dev dependency (pip install -e .[dev])")
    from lm_eval.tasks import TaskManager

    rows, dev = _task_rows()
    _write_task(tmp_path, rows, dev, rows[0]["subject"])
    out = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={tiny_base_path},peft={tiny_adapters['history']},dtype=float32",
        tasks=["agree_mmlu"], task_manager=TaskManager(include_path=str(tmp_path)), num_fewshot=shots,
        batch_size=4, device="cpu", log_samples=True, random_seed=0, numpy_random_seed=0, torch_random_seed=0)
    samples = sorted(out["samples"]["agree_mmlu"], key=lambda s: s["doc_id"])
    theirs_ll = [[r[0][0] for r in s["resps"]] for s in samples]
    theirs_prompt = [s["arguments"][0][0] if isinstance(s["arguments"][0], (list, tuple))
                     else s["arguments"]["gen_args_0"]["arg_0"] for s in samples]

    shot_rows = {rows[0]["subject"]: dev[:shots]} if shots else None
    items = mmlu_items(rows, shot_rows)
    assert [it.context for it in items] == theirs_prompt  # the prompt text, character for character
    scored = score_items(EvalContext(tiny_model), items, SuiteConfig(batch_size=4))
    assert np.allclose([s.lls for s in scored], theirs_ll, atol=2e-4)
    metrics, _ = mc_metrics(scored)
    assert metrics["acc"].value == pytest.approx(out["results"]["agree_mmlu"]["acc,none"])
    assert metrics["acc_norm"].value == pytest.approx(out["results"]["agree_mmlu"]["acc_norm,none"])


def test_cli_bad_input_exits_2_with_a_message_before_loading(tiny_base_path, tmp_path, capsys):
    from rlhf.cli import main

    assert main(["eval", "--suite", "nope", "--base", str(tiny_base_path)]) == 2
    assert "unknown suite 'nope'" in capsys.readouterr().err
    assert main(["eval", "--suite", "mmlu", "--base", str(tiny_base_path), "--adapter", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", "--suite", "mmlu", "--base", str(tmp_path / "no-base")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_writes_a_report_card(tiny_base_path, tiny_adapters, tmp_path, capsys):
    from rlhf.cli import main

    out = tmp_path / "card.json"
    assert main(["eval", "--suite", "corpus_mc", "--suite", "superglue_cb", "--base", str(tiny_base_path),
                 "--adapter", str(tiny_adapters["language"]), "--limit", "2", "--out", str(out)]) == 0
    card = json.loads(out.read_text())
    assert card["suites"]["corpus_mc"]["status"] == "ok" and card["model"]["subject"] == "language"
    printed = capsys.readouterr().out
    assert "corpus_mc" in printed and "acc=" in printed and "not_run" in printed

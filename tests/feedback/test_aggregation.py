"""Pairs from rankings (ties, weights), snapshot content hash, split, idempotency."""

from __future__ import annotations

import json

import pytest
from datasets import load_from_disk

from feedback import selectors, services
from feedback.aggregation import build_pairs, content_hash, pair_count, ranking_pairs
from feedback.models import DatasetSnapshot, LabelerStats
from feedback.quality import gold_agreement, kendall_tau, krippendorff_alpha, reliability_from

from .conftest import make_labeler, make_task

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_gold(settings):
    settings.FEEDBACK_GOLD_RATE = 0.0


def test_pair_counts_with_ties():
    assert pair_count([[1], [2], [3], [4]]) == 6
    assert pair_count([[1, 2], [3], [4]]) == 5
    assert pair_count([[1, 2, 3, 4]]) == 0
    assert ranking_pairs([[1], [2, 3], [4]]) == [(1, 2), (1, 3), (2, 4), (3, 4), (1, 4)] or \
        sorted(ranking_pairs([[1], [2, 3], [4]])) == [(1, 2), (1, 3), (1, 4), (2, 4), (3, 4)]


def _ranked_fixture():
    """Two tasks, two labelers; labeler b ties two replies and disagrees on one pair."""
    t1, t2 = make_task(k=4), make_task(k=3, subject="history")
    a, b = make_labeler(), make_labeler()
    c1 = list(t1.completions.order_by("id").values_list("id", flat=True))
    c2 = list(t2.completions.order_by("id").values_list("id", flat=True))
    plan = [(a, t1, [[c] for c in c1]),                           # 6 pairs
            (b, t1, [[c1[1]], [c1[0]], [c1[2], c1[3]]]),          # 5 pairs, one reversed
            (a, t2, [[c2[0]], [c2[1]], [c2[2]]]),                 # 3
            (b, t2, [c2])]                                        # all tied: 0
    for lab, task, order in plan:
        assert services.next_task(lab).task == task
        services.submit_ranking(lab, task.id, {"order": order})
    LabelerStats.objects.create(labeler=b, reliability=0.25)
    return t1, t2, a, b, c1


def test_pairs_weights_and_disagreements_kept():
    t1, t2, a, b, c1 = _ranked_fixture()
    assert selectors.new_pairs_count() == 14
    splits, meta = build_pairs()
    rows = splits["train"].to_pylist() + splits["test"].to_pylist()
    assert len(rows) == 14 and meta["ranking_pairs"] == 14
    texts = dict(t1.completions.values_list("id", "text"))
    ab = [r for r in rows if (r["chosen"], r["rejected"]) == (texts[c1[0]], texts[c1[1]])]
    ba = [r for r in rows if (r["chosen"], r["rejected"]) == (texts[c1[1]], texts[c1[0]])]
    assert [r["weight"] for r in ab] == [1.0] and [r["weight"] for r in ba] == [0.25]  # both kept, weighted
    assert not [r for r in rows if {r["chosen"], r["rejected"]} == {texts[c1[2]], texts[c1[3]]}
                and r["weight"] == 0.25]  # b's tie gave no pair
    assert {r["subject"] for r in rows} == {"mathematics", "history"}
    assert all(json.loads(r["context"])[0] == {"role": "user", "content": "hi"} for r in rows)
    assert all(r["source"].startswith("ranking:") for r in rows)
    last = max(r.id for r in b.fb_rankings.all())
    assert selectors.new_pairs_count(since=last) == 0


def test_snapshot_hash_stable_idempotent_and_split_by_prompt(datasets_dir):
    _ranked_fixture()
    for i in range(30):  # enough prompts for both splits
        t = make_task(k=2, overlap=1, text=f"prompt number {i}")
        lab = make_labeler()
        services.next_task(lab)
        services.submit_ranking(lab, t.id, {"order": [[c] for c in t.completions.values_list("id", flat=True)]})
    s1 = services.create_snapshot()
    s2 = services.create_snapshot()
    assert s1.pk == s2.pk and DatasetSnapshot.objects.count() == 1  # same content → no-op
    dd = load_from_disk(s1.path)
    assert set(dd) == {"train", "test"} and dd["train"].num_rows + dd["test"].num_rows == 14 + 30
    assert set(dd["train"]["prompt"]).isdisjoint(dd["test"]["prompt"])
    assert dd["test"].num_rows > 0 and dd["train"].column_names == [
        "prompt", "context", "chosen", "rejected", "weight", "subject", "source"]
    assert s1.sha256 in s1.path and s1.first_ranking_id and s1.last_ranking_id >= s1.first_ranking_id
    assert sum(c["train"] + c["test"] for c in s1.counts.values()) == s1.rows
    # a new weight changes the content → a new snapshot
    LabelerStats.objects.update(reliability=0.5)
    s3 = services.create_snapshot()
    assert s3.sha256 != s1.sha256
    # rebuilding the pairs from the database again gives the same hash
    LabelerStats.objects.update(reliability=0.25)
    assert content_hash(build_pairs()[0]) == s1.sha256
    assert services.create_snapshot().pk == s1.pk


def test_since_limits_rankings(datasets_dir):
    _ranked_fixture()
    first = services.create_snapshot()
    snap = services.create_snapshot(since_ranking_id=first.last_ranking_id, include_imported=False)
    assert snap.rows == 0 and snap.first_ranking_id is None


def test_quality_measures():
    assert kendall_tau([[1], [2], [3]], [[1], [2], [3]]) == pytest.approx(1.0)
    assert kendall_tau([[1], [2], [3]], [[3], [2], [1]]) == pytest.approx(-1.0)
    assert gold_agreement([[1], [2], [3]], [[1], [2], [3]]) == (3.0, 3)
    assert gold_agreement([[1, 2], [3]], [[1], [2], [3]]) == (2.5, 3)
    same = {1: {10: [[1], [2], [3]], 11: [[1], [2], [3]]}, 2: {10: [[4], [5], [6]], 11: [[4], [5], [6]]}}
    assert krippendorff_alpha(same) == pytest.approx(1.0)
    bad = reliability_from({"gold_credit": 0.0, "gold_pairs": 30, "gold_tasks": 5, "tau_sum": -10, "tau_n": 10})[2]
    good = reliability_from({"gold_credit": 30.0, "gold_pairs": 30, "gold_tasks": 5, "tau_sum": 10, "tau_n": 10})[2]
    assert good == 1.0 and bad < 0.2


def test_update_reliability_from_gold(settings):
    gold = make_task(k=3, overlap=1)
    ref, good, bad = make_labeler(), make_labeler(), make_labeler()
    services.next_task(ref)
    ids = list(gold.completions.order_by("id").values_list("id", flat=True))
    services.set_gold(services.submit_ranking(ref, gold.id, {"order": [[i] for i in ids]}).ranking.id)
    settings.FEEDBACK_GOLD_RATE = 1.0
    for lab, order in ((good, ids), (bad, ids[::-1])):
        lease = services.next_task(lab)
        assert lease.task.is_gold
        services.submit_ranking(lab, gold.id, {"order": [[i] for i in order]})
    services.update_reliability()
    g, b = LabelerStats.objects.get(labeler=good), LabelerStats.objects.get(labeler=bad)
    assert g.gold_accuracy == 1.0 and b.gold_accuracy == 0.0 and g.reliability > b.reliability


# The content hash of the fixed data set below. It must be the same on SQLite and PostgreSQL
# (CI runs this file on both): database ids and key order never reach the hash.
GOLDEN_SHA256 = "53eacd6ca4a375e691ed67c06ea24e5ba919b8841ed1a2c84de9b978db5052c6"


def test_snapshot_hash_is_the_same_on_every_database(datasets_dir, tmp_path):
    from feedback.models import Prompt

    path = tmp_path / "fixed.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"prompt": [{"content": "hi", "role": "user"}, {"content": "hello", "role": "assistant"},
                    {"role": "user", "content": "What is 7 x 6?"}],
         "chosen": [{"role": "assistant", "content": "42"}], "rejected": [{"role": "assistant", "content": "36"}],
         "subject": "mathematics", "weight": 0.75},
        {"prompt": "Who painted the Mona Lisa?", "chosen": "Leonardo da Vinci", "rejected": "Picasso",
         "subject": "history"},
    ]) + "\n")
    services.import_preferences(path)
    lab_a, lab_b = make_labeler(), make_labeler()
    LabelerStats.objects.create(labeler=lab_b, reliability=0.4)
    for i in range(3):
        prompt, _ = services.add_prompt(subject="language", text=f"Plural of word {i}?", source="seed",
                                        context=[{"content": "earlier", "role": "user"}])
        task = services.create_task(prompt=prompt, completions=[f"form {i}{c}" for c in "abcd"], overlap=2)
        ids = {c.text[-1]: c.id for c in task.completions.all()}
        for lab, order in ((lab_a, [["a"], ["b"], ["c", "d"]]), (lab_b, [["b"], ["a"], ["c"], ["d"]])):
            assert services.next_task(lab).task == task
            services.submit_ranking(lab, task.id, {"order": [[ids[x] for x in g] for g in order]})
    assert Prompt.objects.count() == 3
    snap = services.create_snapshot()
    assert snap.rows == 2 + 3 * (5 + 6)
    assert snap.sha256 == GOLDEN_SHA256

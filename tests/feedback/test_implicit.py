"""Students' thumbs and regenerations become preference pairs of their own source (feedback/implicit.py).

Built through the real chat services (messages, regenerations, ratings) and the real snapshot; no endpoint is
needed because answers are saved with ``tutor.services.save_answer`` as the chat does after a reply.
"""

from __future__ import annotations

import pytest
from datasets import concatenate_datasets, load_from_disk

from feedback import services
from feedback.implicit import source_kind
from tests.feedback.conftest import make_labeler
from tutor import services as chat
from tutor.accounts import create_user

pytestmark = pytest.mark.django_db


def _student(name: str, consent: bool = True):
    user = create_user(username=name, password="x", role="student", validate_password=False)
    chat.set_consent(user, consent)
    return user


def _turn(conv, question: str, answers: list[str]):
    """The student asks; the tutor answers; each further answer is a regeneration (the last one is kept)."""
    if not hasattr(conv, "subject"):  # a student: a new conversation per question (no context)
        conv = chat.start_conversation(conv, "mathematics")
    q = chat.post_user_message(conv, question)
    return [chat.save_answer(q, chat.Answer(text=a, adapter={"subject": "mathematics", "version": 1})) for a in answers]


def _rows(snap) -> list[dict]:
    dd = load_from_disk(snap.path)
    return sorted(concatenate_datasets([dd["train"], dd["test"]]).to_list(), key=lambda r: r["source"])


def _implicit(snap) -> list[dict]:
    return [r for r in _rows(snap) if source_kind(r["source"]) in ("thumbs", "regeneration")]


def _classroom():
    """Two consenting students: a regeneration, thumbs on the same question from both, and cases that give none."""
    chat.ensure_subjects()
    ada, bob = _student("ada"), _student("bob")
    c1, c2 = ada, bob  # each question in a conversation of its own
    regen = _turn(c1, "What is 7 times 8?", ["7 times 8 is 54.", "7 times 8 is 56."])  # kept the second
    up = _turn(c1, "What is 3 + 4?", ["3 + 4 = 7."])[0]
    chat.rate_message(ada, up, 1)
    down = _turn(c2, "what is 3 + 4", ["3 + 4 = 8."])[0]  # the same prompt, normalised
    chat.rate_message(bob, down, -1, reasons=["wrong"])
    vague = _turn(c2, "What is 9 - 2?", ["9 - 2 = 6.", "9 - 2 = 7."])
    chat.rate_message(bob, vague[0], -1)  # the replaced answer, thumbs-down without a reason
    contra = _turn(c1, "What is 2 + 2?", ["2 + 2 = 4.", "2 + 2 = 5."])
    chat.rate_message(ada, contra[1], -1, reasons=["wrong"])  # kept, but disliked: no pair from the regeneration
    lone = _turn(c1, "What is 10 / 2?", ["10 / 2 = 5."])[0]
    chat.rate_message(ada, lone, 1)  # a thumbs-up alone makes no pair
    return {"ada": ada, "bob": bob, "regen": regen, "up": up, "down": down, "vague": vague, "contra": contra}


def test_thumbs_and_regenerations_become_weighted_pairs(datasets_dir, settings):
    settings.FEEDBACK_IMPLICIT_WEIGHT_THUMBS = 0.5
    settings.FEEDBACK_IMPLICIT_WEIGHT_REGENERATION = 0.3
    settings.FEEDBACK_IMPLICIT_VAGUE_FACTOR = 0.75
    c = _classroom()
    snap = services.create_snapshot()
    got = {(r["source"], r["chosen"], r["rejected"], r["weight"]) for r in _implicit(snap)}
    regen, vague, contra = c["regen"], c["vague"], c["contra"]
    assert got == {
        (f"regeneration:{regen[1].pk}>{regen[0].pk}", "7 times 8 is 56.", "7 times 8 is 54.", 0.3),
        (f"thumbs:{c['up'].pk}>{c['down'].pk}", "3 + 4 = 7.", "3 + 4 = 8.", 0.5),  # "wrong": full thumbs weight
        # the replaced answer's thumbs-down (no reason) makes the regeneration a thumbs pair, weighed as vague
        (f"thumbs:{vague[1].pk}>{vague[0].pk}", "9 - 2 = 7.", "9 - 2 = 6.", 0.375),
        # the kept answer of "2 + 2" was disliked: the replaced one is not "worse" (no pair either way)
    }, got
    assert not any(str(contra[0].pk) in r["source"] for r in _implicit(snap))
    assert snap.source_counts == {"labeler": 0, "imported": 0, "thumbs": 2, "regeneration": 1}
    by_source = {r["source"]: r for r in _implicit(snap)}
    # the prompt is the earliest wording of the question; the subject is the conversation's
    assert by_source[f"thumbs:{c['up'].pk}>{c['down'].pk}"]["prompt"] == "What is 3 + 4?"
    assert {r["subject"] for r in by_source.values()} == {"mathematics"}


def test_non_consenting_students_give_no_pairs(datasets_dir):
    chat.ensure_subjects()
    eve = _student("eve", consent=False)
    ada = _student("ada")
    c_eve = chat.start_conversation(eve, "mathematics")
    c_ada_private = chat.start_conversation(ada, "mathematics", consent_override=False)  # ada opted this one out
    for user, conv in ((eve, c_eve), (ada, c_ada_private)):
        answers = _turn(conv, "What is 6 + 6?", ["6 + 6 = 11.", "6 + 6 = 12."])
        chat.rate_message(user, answers[1], 1)
        chat.rate_message(user, answers[0], -1, reasons=["wrong"])
    snap = services.create_snapshot()
    assert _implicit(snap) == []
    assert snap.source_counts["thumbs"] == snap.source_counts["regeneration"] == 0
    # consent given later: the same feedback now counts
    chat.set_consent(eve, True)
    assert services.create_snapshot().source_counts["thumbs"] == 1


def test_a_switched_off_source_gives_no_pairs(datasets_dir, settings):
    c = _classroom()
    services.set_source_enabled("thumbs", False, user=c["ada"])
    snap = services.create_snapshot()
    # no thumbs pair; the regeneration the thumbs agreed with is a plain regeneration pair (no reason factor)
    got = {(r["source"], r["weight"]) for r in _implicit(snap)}
    regen, vague = c["regen"], c["vague"]
    assert got == {(f"regeneration:{regen[1].pk}>{regen[0].pk}", 0.3), (f"regeneration:{vague[1].pk}>{vague[0].pk}", 0.3)}
    assert snap.source_counts["thumbs"] == 0 and snap.source_counts["regeneration"] == 2
    # the setting is the hard switch: regenerations not listed → none at all, whatever the admin's switch says
    services.set_source_enabled("thumbs", True)
    settings.FEEDBACK_SOURCES = ["labeler", "imported", "thumbs"]
    snap = services.create_snapshot()
    assert snap.source_counts["regeneration"] == 0 and snap.source_counts["thumbs"] == 2
    with pytest.raises(ValueError, match="unknown feedback source"):
        services.set_source_enabled("gossip", False)


def test_implicit_pairs_a_labeler_already_gave_are_dropped(datasets_dir):
    c = _classroom()
    # a labeler ranked the same two answers to the same prompt, in the same order
    prompt, _ = services.add_prompt(subject="mathematics", text="What is 3 + 4?", source="seed")
    task = services.create_task(prompt=prompt, completions=["3 + 4 = 7.", "3 + 4 = 8."], overlap=1)
    labeler = make_labeler()
    lease = services.next_task(labeler)
    ids = list(task.completions.order_by("id").values_list("id", flat=True))
    services.submit_ranking(labeler, lease.assignment.task.pk, {"order": [[ids[0]], [ids[1]]]})
    snap = services.create_snapshot()
    rows = _rows(snap)
    same = [r for r in rows if r["prompt"] == "What is 3 + 4?" and r["chosen"] == "3 + 4 = 7."]
    assert [source_kind(r["source"]) for r in same] == ["labeler"]  # once, as the labeler's pair
    assert snap.source_counts == {"labeler": 1, "imported": 0, "thumbs": 1, "regeneration": 1}
    assert c["up"].pk not in [int(r["source"].split(":")[1].split(">")[0]) for r in _implicit(snap)]


def test_new_scope_takes_only_new_feedback(datasets_dir):
    c = _classroom()
    first = services.create_snapshot()
    assert first.last_message_id and first.last_rating_id
    since = {"message_id": first.last_message_id, "rating_id": first.last_rating_id}
    # nothing new from the students: no implicit pair again (the snapshot has no pair at all)
    again = services.create_snapshot(since_ranking_id=first.last_ranking_id, implicit_since=since)
    assert again.rows == 0
    # a new thumbs-down on an old answer is new evidence: its pair comes in the next snapshot
    chat.rate_message(c["ada"], c["regen"][0], -1, reasons=["wrong"])
    snap = services.create_snapshot(since_ranking_id=first.last_ranking_id, implicit_since=since)
    regen = c["regen"]
    assert [(r["source"], r["weight"]) for r in _implicit(snap)] == [(f"thumbs:{regen[1].pk}>{regen[0].pk}", 0.5)]


def test_student_names_are_masked_in_implicit_pairs(datasets_dir):
    chat.ensure_subjects()
    ada = _student("ada")
    conv = chat.start_conversation(ada, "mathematics")
    answers = _turn(conv, "I am ada. What is 5 + 5?", ["ada, 5 + 5 = 11.", "ada, 5 + 5 = 10."])
    chat.rate_message(ada, answers[1], 1)
    (row,) = _implicit(services.create_snapshot())
    assert "ada" not in (row["prompt"] + row["chosen"] + row["rejected"]).lower()
    assert "[name]" in row["prompt"]


def test_the_schedule_counts_students_feedback_at_its_weight(datasets_dir, settings):
    """Beat's trigger: implicit pairs count toward the new-pairs threshold, at their training weight."""
    from feedback.selectors import new_implicit_pairs
    from training.services import maybe_trigger_pipeline

    _classroom()
    implicit, weight = new_implicit_pairs(None)
    assert implicit >= 2 and 0 < weight < implicit  # each counts at its (lower) weight, not as a whole pair
    r = maybe_trigger_pipeline(100)
    assert r.started is None
    assert r.reason == (f"{weight:g} new pairs (0 from labelers, {implicit} from students' feedback weighing "
                        f"{weight:g}) < 100")
    settings.FEEDBACK_SOURCES = ["labeler", "imported"]  # the students' sources switched off: nothing new
    assert maybe_trigger_pipeline(1).reason == "0 new pairs < 1"


def test_the_trigger_counts_only_what_is_new_with_a_bounded_number_of_queries(datasets_dir):
    """Beat's count reads only the prompts new evidence touches, yet counts what reading everything counts:
    new thumbs against an old answer to the same prompt, a new rating on an old regeneration, a new
    regeneration, and an old answer of a student who consented since; a fixed number of queries."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from feedback.implicit import collect, enabled_sources, watermark
    from feedback.selectors import latest_snapshot, new_implicit_pairs

    c = _classroom()
    dan = _student("dan", consent=False)
    late = _turn(dan, "What is 6 * 6?", ["6 * 6 = 36."])[0]
    chat.rate_message(dan, late, 1)
    for i in range(12):  # history the count must not read again
        ups = _turn(c["ada"], f"What is {i} + 100?", [f"{i + 100}", f"{i + 101}"])
        chat.rate_message(c["ada"], ups[1], 1)
    services.create_snapshot()
    last = latest_snapshot()
    since = {"message_id": last.last_message_id, "rating_id": last.last_rating_id}

    def old_way() -> tuple[int, float]:
        pairs = collect(since, watermark(), enabled_sources())
        return len(pairs), float(sum(p.weight for p in pairs))

    assert new_implicit_pairs(last) == old_way() == (0, 0.0)
    cy = _student("cy")
    down = _turn(cy, "WHAT  is 3 + 4", ["3 + 4 = 9."])[0]  # another wording of an old prompt: pairs with ada's 👍
    chat.rate_message(cy, down, -1, reasons=["wrong"])
    chat.rate_message(c["ada"], c["regen"][0], -1)  # an old regeneration, a new 👎: a thumbs pair now
    _turn(cy, "What is 12 / 4?", ["12 / 4 = 4.", "12 / 4 = 3."])  # a new regeneration
    chat.set_consent(dan, True)  # his old 👍 counts now, against a new 👎
    down2 = _turn(cy, "what is 6 * 6?", ["6 * 6 = 35."])[0]
    chat.rate_message(cy, down2, -1)
    expected = old_way()
    assert expected[0] == 4
    with CaptureQueriesContext(connection) as first:
        assert new_implicit_pairs(last) == expected
    with CaptureQueriesContext(connection) as again:  # the keys are memoised: the next tick reads as little
        assert new_implicit_pairs(last) == expected
    assert len(first) <= 8 and len(again) <= 8, [q["sql"] for q in first.captured_queries]
    for i in range(12, 40):  # more history after a new snapshot: the same number of queries
        ups = _turn(c["ada"], f"What is {i} + 100?", [f"{i + 100}", f"{i + 101}"])
        chat.rate_message(c["ada"], ups[1], 1)
    services.create_snapshot()
    last = latest_snapshot()
    since = {"message_id": last.last_message_id, "rating_id": last.last_rating_id}
    new_implicit_pairs(last)  # memoises the keys of the history added since the last tick
    down3 = _turn(cy, "what is 3 + 4", ["3 + 4 = 6."])[0]
    chat.rate_message(cy, down3, -1, reasons=["wrong"])
    expected = old_way()
    with CaptureQueriesContext(connection) as later:
        assert new_implicit_pairs(last) == expected != (0, 0.0)
    assert len(later) == len(again)

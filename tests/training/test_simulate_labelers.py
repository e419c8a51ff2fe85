"""``manage.py simulate_labelers`` ranks every open task through the labeler HTTP API of a real web server."""

from __future__ import annotations

import pytest
from django.core.management import call_command

from feedback.models import ComparisonTask, Ranking
from feedback.services import add_prompt, create_task
from rlhf.corpus import seed_prompts

pytestmark = [pytest.mark.django_db(transaction=True)]


def test_every_task_gets_its_overlap_of_rankings_with_the_preference(web_server):
    items = seed_prompts("mathematics", 6, seed=5)
    for i, it in enumerate(items):
        prompt, _ = add_prompt(subject="mathematics", text=it.question, source="seed", source_ref=f"t:{i}")
        create_task(prompt=prompt, completions=[items[(i + 1) % 6].answer, it.answer, "I do not know."], overlap=2)
    call_command("simulate_labelers", n=3, noise=0.0, url=web_server.info["url"])
    assert Ranking.objects.count() == 12
    assert set(ComparisonTask.objects.values_list("state", flat=True)) == {"complete"}
    for r in Ranking.objects.select_related("task__prompt"):
        best = r.task.completions.get(pk=r.order[0][0])
        key = next(it.key for it in items if it.question == r.task.prompt.text)
        assert f"#### {key}" in best.text  # the correct answer ranked first (noise 0)


def test_in_turn_labelers_give_the_same_rankings_on_a_replay(web_server):
    """--in-turn: who ranks which task, and with which noise, is fixed by the seed (a replayable loop)."""
    from feedback.models import Assignment

    items = seed_prompts("mathematics", 8, seed=9)
    for i, it in enumerate(items):
        prompt, _ = add_prompt(subject="mathematics", text=it.question, source="seed", source_ref=f"r:{i}")
        # near calls (two wrong answers of different length) so that the noise decides some orders
        create_task(prompt=prompt, overlap=2, completions=[
            items[(i + 1) % 8].answer, items[(i + 2) % 8].answer + " Done.", it.answer, "I do not know."])

    def run() -> list[tuple[str, int, list]]:
        call_command("simulate_labelers", n=3, noise=0.5, url=web_server.info["url"], seed=4, in_turn=True)
        out = sorted((r.labeler.username, r.task_id, [sorted(g) for g in r.order])
                     for r in Ranking.objects.select_related("labeler"))
        Ranking.objects.all().delete()
        Assignment.objects.all().delete()
        ComparisonTask.objects.update(state="open", submitted_count=0)
        return out

    first = run()
    assert len(first) == 16
    assert run() == first

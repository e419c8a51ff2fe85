"""A labeler ranks a task with the keyboard only, submits, and gets the next one (real uvicorn,
headless Chromium)."""

from __future__ import annotations

import pytest

from feedback.models import Assignment, Ranking
from tests.fixtures.browser import login
from tests.fixtures.processes import start_web_server, subprocess_env

from .conftest import make_login_user, make_task


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_keyboard_only_ranking(page, output_dir, settings):
    first, second = make_task(k=3, priority=2), make_task(k=3, priority=1)
    lab = make_login_user("kb-labeler", "kb-pass-1234")
    web = start_web_server(subprocess_env(FEEDBACK_GOLD_RATE="0"))
    try:
        url = web.info["url"]
        login(page, url, "kb-labeler", "kb-pass-1234")
        page.goto(f"{url}/label/")
        page.wait_for_selector(".completion:focus")
        assert page.locator("#task-prompt").inner_text().endswith(first.prompt.text)
        assert "[email]" not in page.content() and "kb-labeler" in page.content()  # own name in the top bar only
        # keyboard only: A → rank 1, B → rank 2, C → rank 2 (a tie)
        page.keyboard.press("1")
        page.keyboard.press("ArrowDown")
        page.keyboard.press("2")
        page.keyboard.press("ArrowDown")
        page.keyboard.press("3")
        page.keyboard.press("ArrowLeft")  # one rank better: 3 → 2
        assert page.locator("#bucket-2 .completion").count() == 2
        assert page.locator("#bucket-1 .completion").count() == 1
        page.screenshot(path=str(output_dir / "ranked.png"))
        page.keyboard.press("Control+Enter")
        page.wait_for_selector(f"text=Saved task {first.id}")
        page.wait_for_function(
            "text => document.querySelector('#task-prompt') && document.querySelector('#task-prompt').innerText.endsWith(text)",
            arg=second.prompt.text)
        assert page.locator("#done-today").inner_text() == "1"
        page.screenshot(path=str(output_dir / "next.png"))
    finally:
        web.stop()
    ranking = Ranking.objects.get(labeler=lab)
    shown = Assignment.objects.get(labeler=lab, task=first).shown_order
    assert ranking.task_id == first.id and ranking.order == [[shown[0]], sorted(shown[1:])]
    assert ranking.shown_order == shown

"""A student chats in headless Chromium: real uvicorn web process + real endpoint (tiny model)."""

from __future__ import annotations

import pytest

from tests.fixtures.browser import login
from tests.fixtures.processes import start_web_server, subprocess_env, wait_until
from tests.tutor.conftest import PASSWORD, make_user
from tests.tutor.peers import BrokenPeer
from tutor.models import Conversation, Message, Rating

pytestmark = [pytest.mark.browser, pytest.mark.slow]

# Counts text/child changes inside the streaming answer (it is replaced when the answer is done),
# and records how many happened before the first complete answer appeared.
OBSERVE = """() => {
  window.__streamUpdates = 0;
  new MutationObserver((muts) => {
    for (const m of muts) {
      const el = m.target.nodeType === 1 ? m.target : m.target.parentElement;
      if (el && el.closest('.msg-assistant.streaming')) window.__streamUpdates++;
    }
  }).observe(document.getElementById('chat-log'), {subtree: true, childList: true, characterData: true});
}"""


def tab_to(page, selector: str, limit: int = 60) -> None:
    """Press Tab until the focused element matches ``selector`` (keyboard-only navigation)."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if page.evaluate("(s) => document.activeElement && document.activeElement.matches(s)", selector):
            return
    raise AssertionError(f"Tab never reached {selector}")


def test_student_chats_rates_regenerates_and_finds_history(transactional_db, endpoint_server, page, output_dir):
    make_user("gina")
    # greedy: the same multi-token answer every run (a sampled one is sometimes a single token)
    web = start_web_server(subprocess_env(TUTOR_ENDPOINT_URL=endpoint_server.url, TUTOR_MAX_NEW_TOKENS="40",
                                          TUTOR_CHAT_TEMPERATURE="0"))
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        base = web.info["url"]
        login(page, base, "gina", PASSWORD)
        page.click("button.subject-card[data-subject=mathematics]")
        page.wait_for_selector("#composer-input")
        page.evaluate(OBSERVE)

        page.fill("#composer-input", "What is 12 + 30?")
        page.press("#composer-input", "Enter")  # Enter sends
        answer = page.wait_for_selector("li.turn .msg-assistant[data-id]:not(.superseded)")
        conv = Conversation.objects.get(student__username="gina")
        first = Message.objects.get(conversation=conv, role="assistant")
        assert first.tokens and first.tokens >= 2, first.content  # something to stream
        # painted incrementally, not all at once
        assert page.evaluate("window.__streamUpdates") >= 2, (first.tokens, first.content)
        policy = answer.query_selector(".policy").inner_text()
        assert policy.startswith("mathematics v")
        assert first.policy_version == policy and first.content.strip()
        assert page.inner_text(".chat-title") == "What is 12 + 30?"

        answer.query_selector("[data-copy]").click()
        page.wait_for_selector(f".msg-assistant[data-id='{first.id}'] [data-copy]:text('Copied')")

        # rate: thumbs down with a reason and a comment, then change to thumbs up
        page.click(f"form[data-rate='{first.id}'] button.thumb[value='-1']")
        page.wait_for_selector(f"form[data-rate='{first.id}'] .rate-more[open]")
        page.check(f"form[data-rate='{first.id}'] input[value=unclear]")
        page.fill(f"form[data-rate='{first.id}'] textarea", "too short")
        page.click(f"form[data-rate='{first.id}'] .save-rating")
        wait_until(lambda: Rating.objects.filter(message=first, comment="too short").exists(), 10, "the rating")
        rating = Rating.objects.get(message=first)
        assert (rating.value, rating.reasons, rating.adapter_version) == (-1, ["unclear"], first.adapter_version)
        page.click(f"form[data-rate='{first.id}'] button.thumb[value='1']")
        wait_until(lambda: Rating.objects.get(message=first).value == 1, 10, "the changed rating")
        page.wait_for_selector(f"form[data-rate='{first.id}'] button.thumb[value='1'][aria-pressed=true]")
        assert page.get_attribute(f"form[data-rate='{first.id}'] button.thumb[value='-1']", "aria-pressed") == "false"

        # regenerate: both answers kept, the new one is current
        page.click("form[data-regenerate] button")
        page.wait_for_selector("text=answer 2 of 2 · current")
        assert page.inner_text("details.earlier summary") == "1 earlier answer"
        assert list(Message.objects.filter(role="assistant").values_list("is_current", flat=True)
                    .order_by("id")) == [False, True]

        # history after a reload
        page.goto(f"{base}/chat/history/")
        page.click("text=What is 12 + 30?")
        page.wait_for_selector("text=answer 2 of 2 · current")
        page.click("details.earlier summary")  # show the replaced answer too
        page.screenshot(path=str(output_dir / "chat.png"), full_page=True)
        page.goto(f"{base}/chat/history/?q=12")
        assert page.is_visible("table.history >> text=What is 12 + 30?")

        # keyboard only: pick a subject, ask, and rate with Tab/Enter
        page.goto(f"{base}/chat/")
        tab_to(page, "button.subject-card[data-subject=language]")
        page.keyboard.press("Enter")
        page.wait_for_selector("#composer-input:focus")
        page.keyboard.type("Spell the word necessary.")
        page.keyboard.press("Enter")
        page.wait_for_selector("li.turn .msg-assistant[data-id]")
        tab_to(page, "button.thumb[value='1']")
        page.keyboard.press("Enter")
        lang = Message.objects.get(conversation__subject__slug="language", role="assistant")
        wait_until(lambda: Rating.objects.filter(message=lang, value=1).exists(), 10, "the keyboard rating")
        page.screenshot(path=str(output_dir / "chat-keyboard.png"))
    finally:
        web.stop()
    assert not errors, errors


def test_stop_keeps_the_partial_answer(transactional_db, page):
    """Stop aborts the fetch; uvicorn tells Django the client left; what arrived is saved, marked
    incomplete, and shown as such. The endpoint here stalls after two tokens (see BrokenPeer)."""
    make_user("hugo")
    peer = BrokenPeer("stall")
    web = start_web_server(subprocess_env(TUTOR_ENDPOINT_URL=peer.url))
    try:
        login(page, web.info["url"], "hugo", PASSWORD)
        page.click("button.subject-card[data-subject=history]")
        page.fill("#composer-input", "Who crossed the Alps?")
        page.click("#send-btn")
        page.wait_for_selector(".msg-assistant.streaming >> text=Hannibal")
        assert page.is_visible("#stop-btn") and page.is_disabled("#send-btn")
        page.click("#stop-btn")
        wait_until(lambda: Message.objects.filter(role="assistant").exists(), 15, "the partial answer")
        answer = Message.objects.get(role="assistant")
        assert (answer.content, answer.status, answer.error) == ("Hannibal", "incomplete", "stopped by the student")
        page.wait_for_selector(f".msg-assistant.incomplete[data-id='{answer.id}']")
        assert "stopped by the student" in page.inner_text(".msg-assistant.incomplete")
        assert page.is_hidden("#stop-btn") and page.is_enabled("#send-btn")

        # the renderer escapes HTML before adding its Markdown subset and readable math
        html = page.evaluate("""() => tutorMarkdown('<img src=x onerror=alert(1)> **4** and `x<y`\\n\\n'
                                               + '- $\\\\frac{1}{2} + x^2 \\\\times 3$')""")
        assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html
        assert "<strong>4</strong>" in html and "<code>x&lt;y</code>" in html and "<ul><li>" in html
        assert 'class="frac"' in html and "<sup>2</sup>" in html and "×" in html
    finally:
        web.stop()

"""The chat page as a user tries it, in a real browser (Debian's chromium, driven by
Playwright) against the real stack of tests/test_chat_page_guards.py (daphne, the llm and
safety workers as processes, the fake LLM over HTTP): a reply visibly growing, stop,
regenerate and the alternatives, edit, a reload mid-stream, Markdown and code, a failed reply's
retry, a rate limit in words, the alternate greetings, the shortcuts, the themes and a phone's
screen.

Screenshots go to $TEST_ARTIFACTS_DIR when it names a directory (docs/screenshots/ holds the
committed ones), else to the test's tmp_path."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.test import Client

from fake_llm import FakeLLMServer, Script
from messages_app import limits
from messages_app.models import LimitOverride, Message
from messages_app.services import conversation_create
from tests import test_chat_page_guards as guards
from tests.factories import CharacterFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

stack = guards.stack  # daphne + workers, module-scoped
browser = guards.browser  # headless chromium, module-scoped

LONG = " ".join(f"word{i}" for i in range(120)) + "."
MESSAGE = '[data-testid="message"]'
REPLY = MESSAGE + '[data-role="assistant"]'
USER = MESSAGE + '[data-role="user"]'


def shot(page: Any, name: str, tmp_path: Path) -> None:
    where = os.environ.get("TEST_ARTIFACTS_DIR")
    folder = Path(where) if where else tmp_path
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"))


def open_chat(
    stack: str,
    browser: Any,
    *,
    greeting: str = "Ahoy! What brings you aboard?",
    viewport: dict[str, int] | None = None,
    color_scheme: str = "light",
    conversation: Any = None,
    user: Any = None,
    init_script: str | None = None,
) -> tuple[Any, Any, Any, list[str]]:
    """A logged-in page on a new conversation: (page, user, conversation, page errors)."""
    if user is None:
        user = UserFactory(username=f"chat-{time.monotonic_ns()}")
    if conversation is None:
        character: Any = CharacterFactory(name="Captain Page", greeting=greeting)
        conversation = conversation_create(owner=user, character=character)
    client = Client()
    client.force_login(user)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    context = browser.new_context(
        viewport=viewport or {"width": 1200, "height": 800},
        color_scheme=color_scheme,
        reduced_motion="reduce",
    )
    context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": cookie, "url": stack}])
    if init_script:
        context.add_init_script(init_script)
    page = context.new_page()
    page.set_default_timeout(20_000)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("dialog", lambda dialog: errors.append("dialog: " + dialog.message))
    page.goto(f"{stack}/#conversation-{conversation.pk}")
    page.wait_for_selector('[data-testid="connection-status"][data-state="open"]')
    return page, user, conversation, errors


@pytest.fixture
def chat(stack: str, browser: Any, fake_llm_server: FakeLLMServer) -> Iterator[Any]:
    """(page, user, conversation) on a desktop-sized window; no script error may happen."""
    fake_llm_server.clear()
    page, user, conversation, errors = open_chat(stack, browser)
    yield page, user, conversation
    page.context.close()
    assert errors == []


def send(page: Any, text: str) -> Any:
    """Send `text`; the locator of its reply, once the reply is on the page."""
    before = page.locator(REPLY).count()
    page.fill('[data-testid="composer"]', text)
    page.press('[data-testid="composer"]', "Enter")
    page.wait_for_function(
        "([selector, n]) => document.querySelectorAll(selector).length > n", arg=[REPLY, before]
    )
    return page.locator(REPLY).nth(before)


def last_reply(page: Any) -> Any:
    return page.locator(REPLY).last


def wait_status(locator: Any, status: str) -> None:
    locator.and_(locator.page.locator(f'[data-status="{status}"]')).wait_for()


def text_of(locator: Any) -> str:
    return str(locator.locator('[data-testid="message-content"]').inner_text())


def follow_without_gap(reply: Any, text: str) -> int:
    """While `reply` streams, what it shows is always a start of `text` (no gap, no repeat);
    the number of samples taken."""
    samples = 0
    while reply.get_attribute("data-status") == "streaming":
        shown = text_of(reply).strip()
        if reply.get_attribute("data-status") != "streaming":
            break
        assert text.startswith(shown), shown[-80:]
        samples += 1
        reply.page.wait_for_timeout(50)
    return samples


def test_a_reply_grows_as_it_streams_and_send_waits_for_it(chat, fake_llm_server, tmp_path):
    page, _, _ = chat
    fake_llm_server.push(Script.from_text(LONG, token_interval=0.03))
    reply = send(page, "Tell me a long story")
    wait_status(reply, "streaming")
    lengths: list[int] = []
    while reply.get_attribute("data-status") == "streaming" and len(lengths) < 400:
        lengths.append(len(text_of(reply)))
        if len(set(lengths)) == 2:
            # While it streams: Send is off and the page says why; Stop is offered.
            assert page.locator('[data-testid="send"]').is_disabled()
            assert "Send is off" in page.locator('[data-testid="composer-hint"]').inner_text()
            assert page.locator('[data-testid="stop"]').is_visible()
            assert reply.locator('[data-testid="message-status"]').inner_text() == "Writing…"
            shot(page, "streaming", tmp_path)
        page.wait_for_timeout(40)
    distinct = sorted(set(lengths))
    assert len(distinct) >= 4, lengths  # seen growing, not appearing at once
    wait_status(reply, "completed")
    assert text_of(reply) == LONG
    assert not page.locator('[data-testid="stop"]').is_visible()
    page.fill('[data-testid="composer"]', "Thanks")
    assert page.locator('[data-testid="send"]').is_enabled()
    assert page.locator('[data-testid="composer-hint"]').is_hidden()


def test_stop_and_escape_stop_a_reply_which_keeps_its_text(chat, fake_llm_server):
    page, _, _ = chat
    for how in ("button", "escape"):
        fake_llm_server.push(Script.from_text(LONG, token_interval=0.1))
        reply = send(page, f"Go on ({how})")
        wait_status(reply, "streaming")
        page.wait_for_function(
            "el => el.textContent.length > 20",
            arg=reply.locator('[data-testid="message-content"]').element_handle(),
        )
        if how == "button":
            page.click('[data-testid="stop"]')
        else:
            page.keyboard.press("Escape")  # focus is in the message box
        wait_status(reply, "cancelled")
        assert reply.locator('[data-testid="message-status"]').inner_text() == "Stopped"
        kept = text_of(reply)
        assert kept and LONG.startswith(kept.rstrip("\n").rstrip()[:20])
        assert len(kept) < len(LONG)
        assert page.locator('[data-testid="send"]').is_disabled()  # empty box, nothing to send
        page.fill('[data-testid="composer"]', "x")
        assert page.locator('[data-testid="send"]').is_enabled()
        page.fill('[data-testid="composer"]', "")


def test_regenerate_then_move_between_the_two_replies_in_place(chat, fake_llm_server, tmp_path):
    page, _, _ = chat
    fake_llm_server.push(Script.from_text("The first answer."))
    wait_status(send(page, "Question"), "completed")
    fake_llm_server.push(Script.from_text("The second answer."))
    page.click(f'{REPLY} >> nth=-1 >> [data-testid="regenerate"]')
    reply = last_reply(page)
    page.locator(REPLY, has_text="The second answer.").wait_for()
    wait_status(reply, "completed")
    # The new reply replaced the old one in the thread: greeting, question, reply.
    assert page.locator(MESSAGE).count() == 3
    label = reply.locator('[data-testid="branch-label"]')
    assert label.inner_text() == "2/2"
    shot(page, "branches", tmp_path)
    reply.locator('[data-testid="branch-prev"]').click()
    page.locator(REPLY, has_text="The first answer.").wait_for()
    assert page.locator(MESSAGE).count() == 3
    assert last_reply(page).locator('[data-testid="branch-label"]').inner_text() == "1/2"
    assert "The second answer." not in page.locator('[data-testid="messages"]').inner_text()
    # The arrow keys, as in SillyTavern (focus outside the message box).
    page.locator('[data-testid="messages"]').focus()
    page.keyboard.press("ArrowRight")
    page.locator(REPLY, has_text="The second answer.").wait_for()
    page.keyboard.press("ArrowLeft")
    page.locator(REPLY, has_text="The first answer.").wait_for()
    # Reloaded, the page says which alternative it shows.
    page.reload()
    page.locator(REPLY, has_text="The first answer.").wait_for()
    assert last_reply(page).locator('[data-testid="branch-label"]').inner_text() == "1/2"


def test_edit_and_resend_makes_a_branch_and_the_old_one_stays(chat, fake_llm_server):
    page, _, _ = chat
    fake_llm_server.push(Script.from_text("About cats."))
    wait_status(send(page, "Tell me about cats"), "completed")
    fake_llm_server.push(Script.from_text("About dogs."))
    user = page.locator(USER).last
    user.locator('[data-testid="edit"]').click()
    box = user.locator('[data-testid="edit-text"]')
    assert box.input_value() == "Tell me about cats"
    box.fill("Tell me about dogs")
    user.locator('[data-testid="edit-save"]').click()
    page.locator(REPLY, has_text="About dogs.").wait_for()
    wait_status(last_reply(page), "completed")
    edited = page.locator(USER).last
    assert text_of(edited) == "Tell me about dogs"
    assert edited.locator('[data-testid="branch-label"]').inner_text() == "2/2"
    assert page.locator(MESSAGE).count() == 3
    edited.locator('[data-testid="branch-prev"]').click()
    page.locator(REPLY, has_text="About cats.").wait_for()
    assert text_of(page.locator(USER).last) == "Tell me about cats"


def test_a_reload_in_the_middle_of_a_reply_resumes_without_gap_or_repeat(chat, fake_llm_server):
    page, _, _ = chat
    fake_llm_server.push(Script.from_text(LONG, token_interval=0.04))
    reply = send(page, "A long one please")
    wait_status(reply, "streaming")
    page.wait_for_function(
        "el => el.textContent.length > 60",
        arg=reply.locator('[data-testid="message-content"]').element_handle(),
    )
    page.reload()
    reply = last_reply(page)
    wait_status(reply, "streaming")  # still being written, and followed
    assert follow_without_gap(reply, LONG) > 3
    wait_status(reply, "completed")
    assert text_of(reply) == LONG


# Keeps the page's sockets reachable, so a test can drop one as a network would.
TRACK_SOCKETS = """
(() => {
  const Real = window.WebSocket;
  const sockets = (window.__sockets = []);
  class Tracked extends Real {
    constructor(url, protocols) {
      super(url, protocols);
      sockets.push(this);
    }
  }
  window.WebSocket = Tracked;
})();
"""


def test_a_dropped_connection_mid_reply_reconnects_and_resumes(stack, browser, fake_llm_server):
    fake_llm_server.clear()
    page, _, _, errors = open_chat(stack, browser, init_script=TRACK_SOCKETS)
    try:
        fake_llm_server.push(Script.from_text(LONG, token_interval=0.04))
        reply = send(page, "Keep going")
        wait_status(reply, "streaming")
        page.wait_for_function(
            "el => el.textContent.length > 40",
            arg=reply.locator('[data-testid="message-content"]').element_handle(),
        )
        assert page.evaluate("window.__sockets.length") == 1
        page.evaluate("window.__sockets[0].close(4000)")  # a drop, not one of the final codes
        page.wait_for_function("window.__sockets.length === 2")  # reconnected
        assert follow_without_gap(reply, LONG) > 3
        wait_status(reply, "completed")
        assert text_of(reply) == LONG
        status = page.locator('[data-testid="connection-status"]')
        assert status.get_attribute("data-state") == "open"
        assert errors == []
    finally:
        page.context.close()


MARKDOWN = """# Knots

Here is **bold**, *italic* and `inline code`.

- a bowline
- a clove hitch

```python
def tie(knot):
    return f"tied {knot}"
```

<script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">
[a link](javascript:window.pwned=3) and [a safe one](https://example.com/).
"""


def test_markdown_and_code_are_rendered_sanitized_and_copyable(chat, fake_llm_server, tmp_path):
    page, _, _ = chat
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    fake_llm_server.push(Script.from_text(MARKDOWN, token_interval=0.04))
    reply = send(page, "Show me some Markdown")
    # Rendered as it streams: the heading and the list show before the reply ends.
    page.wait_for_function(
        "el => el.dataset.status === 'streaming' && el.querySelector('.content h1')"
        " && el.querySelector('.content li')",
        arg=reply.element_handle(),
    )
    wait_status(reply, "completed")
    content = reply.locator('[data-testid="message-content"]')
    assert content.locator("h1").inner_text() == "Knots"
    assert content.locator("strong").inner_text() == "bold"
    assert content.locator("li").count() == 2
    code = content.locator("pre code")
    code.locator(".hljs-keyword", has_text="def").wait_for()  # highlighted
    assert "return" in code.inner_text()
    # Hostile parts: nothing runs, no image loads, the javascript: link has no href.
    assert content.locator("script, img, [onerror]").count() == 0
    assert "<img src=x" in content.inner_text()
    assert page.evaluate("window.pwned") is None
    links = content.locator("a")
    hrefs = [links.nth(i).get_attribute("href") for i in range(links.count())]
    assert "https://example.com/" in hrefs
    assert not any(h and h.lower().startswith("javascript:") for h in hrefs)
    # Copy a code block, then the whole message.
    reply.locator('[data-testid="copy-code"]').click()
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.startswith("def tie(knot):")
    reply.locator('[data-testid="copy"]').click()
    assert page.evaluate("navigator.clipboard.readText()") == MARKDOWN
    # Details: timings and tokens in a popover, not in the status line.
    reply.locator('[data-testid="details"]').click()
    details = reply.locator('[data-testid="details-body"]').inner_text()
    assert "Tokens" in details and "Total time" in details
    shot(page, "markdown", tmp_path)
    assert "ms" not in reply.locator('[data-testid="message-meta"]').inner_text()


def test_a_failed_reply_says_so_and_retry_writes_another(chat, fake_llm_server):
    page, _, _ = chat
    fake_llm_server.push(Script(tokens=[], fault="http_500"))
    reply = send(page, "Hello?")
    wait_status(reply, "failed")
    assert reply.locator('[data-testid="message-status"]').inner_text() == "Couldn't finish"
    assert "Couldn't finish" in reply.locator('[data-testid="message-error"]').inner_text()
    fake_llm_server.push(Script.from_text("Here I am."))
    reply.locator('[data-testid="retry"]').click()
    page.locator(REPLY, has_text="Here I am.").wait_for()
    wait_status(last_reply(page), "completed")
    assert last_reply(page).locator('[data-testid="branch-label"]').inner_text() == "2/2"


def test_a_rate_limit_says_slow_down_and_when(chat, fake_llm_server, tmp_path):
    page, user, _ = chat
    # Windows follow the clock: both sends must fall in one minute.
    left = 60 - time.time() % 60
    if left < limits.LIMITS_CACHE_SECONDS + 25:
        time.sleep(left + 0.5)
    LimitOverride.objects.create(user=user, per_minute=1)
    time.sleep(limits.LIMITS_CACHE_SECONDS + 0.2)
    fake_llm_server.push(Script.from_text("Fine."))
    wait_status(send(page, "One"), "completed")
    page.fill('[data-testid="composer"]', "Two")
    page.press('[data-testid="composer"]', "Enter")
    banner = page.locator('[data-testid="banner"][data-kind="rate-limited"]')
    banner.wait_for()
    assert re.search(r"Slow down: you can send again in \d+ s\.", banner.inner_text())
    assert page.locator('[data-testid="send"]').is_disabled()
    assert page.locator(f'{USER}[data-status="failed"] [data-testid="retry"]').is_visible()
    shot(page, "rate-limited", tmp_path)


def test_alternate_greetings_are_swipes_on_the_first_message(stack, browser, fake_llm_server):
    user: Any = UserFactory(username=f"greet-{time.monotonic_ns()}")
    character: Any = CharacterFactory(name="Captain Swipe", greeting="Ahoy!")
    conversation = conversation_create(owner=user, character=character)
    # Another greeting: a sibling root (what a character with alternate_greetings gets).
    Message.objects.create(
        conversation=conversation, parent=None, depth=0, role="assistant", content="Avast!"
    )
    page, _, _, errors = open_chat(stack, browser, conversation=conversation, user=user)
    try:
        first = page.locator(REPLY).first
        assert first.locator('[data-testid="branch-label"]').inner_text() == "1/2"
        first.locator('[data-testid="branch-next"]').click()
        page.locator(REPLY, has_text="Avast!").wait_for()
        assert page.locator(MESSAGE).count() == 1
        label = page.locator(REPLY).first.locator('[data-testid="branch-label"]')
        assert label.inner_text() == "2/2"
        # The chat goes on from the greeting chosen.
        fake_llm_server.push(Script.from_text("Aye."))
        send(page, "Hello")
        page.locator(REPLY, has_text="Aye.").wait_for()
        assert text_of(page.locator(REPLY).first) == "Avast!"
        assert errors == []
    finally:
        page.context.close()


def test_shortcuts_help_and_a_theme_that_is_remembered(stack, browser, tmp_path):
    page, _, _, errors = open_chat(stack, browser, color_scheme="dark")
    try:
        background = "getComputedStyle(document.body).backgroundColor"
        assert page.evaluate(background) == "rgb(18, 21, 28)"  # the system's dark
        shot(page, "dark", tmp_path)
        page.locator('[data-testid="messages"]').focus()
        page.keyboard.press("?")
        overlay = page.locator('[data-testid="shortcuts-overlay"]')
        overlay.wait_for()
        assert "Stop the reply" in overlay.inner_text()
        shot(page, "shortcuts", tmp_path)
        page.keyboard.press("Escape")
        overlay.wait_for(state="hidden")
        toggle = page.locator('[data-testid="theme-toggle"]')
        toggle.click()  # system -> light
        assert toggle.inner_text() == "Theme: light"
        assert page.evaluate(background) == "rgb(244, 245, 248)"
        page.reload()
        page.wait_for_selector('[data-testid="connection-status"][data-state="open"]')
        assert page.evaluate(background) == "rgb(244, 245, 248)"
        assert errors == []
    finally:
        page.context.close()


def test_a_phone_screen_shows_the_message_box_without_scrolling(
    stack, browser, fake_llm_server, tmp_path
):
    fake_llm_server.clear()
    page, _, _, errors = open_chat(stack, browser, viewport={"width": 375, "height": 667})
    try:
        for testid in ("composer", "send", "chat-title"):
            box = page.locator(f'[data-testid="{testid}"]').bounding_box()
            assert box is not None and box["y"] >= 0 and box["y"] + box["height"] <= 667, testid
            assert box["x"] >= 0 and box["x"] + box["width"] <= 375, testid
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        assert not page.locator('[data-testid="show-characters"]').is_visible()
        fake_llm_server.push(Script.from_text("Small screens are fine."))
        wait_status(send(page, "Hello from a phone"), "completed")
        shot(page, "mobile", tmp_path)
        page.click('[data-testid="sidebar-toggle"]')
        page.locator('[data-testid="show-characters"]').wait_for()
        shot(page, "mobile-sidebar", tmp_path)
        page.keyboard.press("Escape")
        page.locator('[data-testid="show-characters"]').wait_for(state="hidden")
        assert errors == []
    finally:
        page.context.close()


NAMELESS = """
() => Array.from(document.querySelectorAll('button, textarea, input, select, summary, a[href]'))
  .filter((el) => el.offsetParent !== null)
  .filter((el) => {
    const labelled = el.getAttribute('aria-label') || el.getAttribute('aria-labelledby')
      || (el.labels && el.labels.length) || el.getAttribute('title');
    return !labelled && !(el.textContent || '').trim() && !el.getAttribute('placeholder');
  })
  .map((el) => el.outerHTML.slice(0, 120))
"""


def test_every_control_has_a_name_and_the_keyboard_focus_shows(chat, fake_llm_server):
    page, _, _ = chat
    fake_llm_server.push(Script.from_text("Named and focused."))
    wait_status(send(page, "Hello"), "completed")
    assert page.evaluate(NAMELESS) == []
    page.locator('[data-testid="composer"]').focus()
    for _ in range(6):
        page.keyboard.press("Shift+Tab")
        outline = page.evaluate(
            "(() => { const s = getComputedStyle(document.activeElement);"
            " return [document.activeElement.tagName, s.outlineStyle, s.outlineWidth]; })()"
        )
        assert outline[1] != "none" and outline[2] != "0px", outline


def test_older_messages_load_above_and_keep_the_place(stack, browser):
    user: Any = UserFactory(username=f"older-{time.monotonic_ns()}")
    character: Any = CharacterFactory(name="Captain Long", greeting="Ahoy!")
    conversation = conversation_create(owner=user, character=character)
    parent: Any = conversation.active_leaf  # the greeting
    for i in range(60):
        parent = Message.objects.create(
            conversation=conversation,
            parent=parent,
            depth=parent.depth + 1,
            role="user" if i % 2 == 0 else "assistant",
            content=f"Line {i}",
            status="completed",
        )
    conversation.active_leaf = parent
    conversation.save(update_fields=["active_leaf"])
    page, _, _, errors = open_chat(stack, browser, conversation=conversation, user=user)
    try:
        assert page.locator(MESSAGE).count() == 50
        assert text_of(page.locator(MESSAGE).last) == "Line 59"
        older = page.locator('[data-testid="load-older"]')
        older.scroll_into_view_if_needed()
        first = page.locator(MESSAGE, has_text="Line 10").first
        top = first.bounding_box()["y"]
        older.click()
        page.wait_for_function(
            "([s, n]) => document.querySelectorAll(s).length === n", arg=[MESSAGE, 61]
        )
        assert text_of(page.locator(MESSAGE).first) == "Ahoy!"
        # What was on the screen stays where it was; the older messages are above it.
        assert abs(first.bounding_box()["y"] - top) < 40
        assert older.is_hidden()
        assert errors == []
    finally:
        page.context.close()

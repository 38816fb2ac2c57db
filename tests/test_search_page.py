"""The chat page's search box in a real browser (Debian's chromium, driven by Playwright)
against daphne as a process: a search lists highlighted hits, escaped, and a hit opens its
conversation."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.test import Client

from fake_llm import FakeLLMServer
from messages_app.models import Message
from messages_app.services import conversation_create
from messageservice.embedded import free_port
from tests import test_chat_page_guards as page_guards
from tests.factories import CharacterFactory, UserFactory
from tests.helpers import ROOT, worker_env
from tests.test_chat_page_guards import APP, _wait_http

pytestmark = pytest.mark.django_db(transaction=True)

browser = page_guards.browser  # the headless chromium fixture, module-scoped


@pytest.fixture(scope="module")
def web(django_db_setup: Any, fake_llm_server: FakeLLMServer) -> Iterator[str]:
    """daphne on this run's database and Redis; the web root URL."""
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=worker_env(fake_llm_server),
        check=True,
        timeout=120,
    )
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), APP],
        cwd=ROOT,
        env=worker_env(fake_llm_server, LOG_LEVEL="WARNING"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_the_search_box_lists_highlighted_escaped_hits_and_opens_their_conversation(
    web: str, browser: Any, tmp_path: Any
):
    user: Any = UserFactory(username=f"searcher-{time.monotonic_ns()}")
    one: Any = CharacterFactory(name="Captain One")
    two: Any = CharacterFactory(name="Captain Two")
    first = conversation_create(owner=user, character=one)
    second = conversation_create(owner=user, character=two)
    # On the conversation's active branch, which the page shows.
    reply = Message.objects.create(
        conversation=second,
        parent=second.active_leaf,
        depth=1,
        role="assistant",
        content="Look: <img src=x onerror=alert(1)> The lighthouse keeper waves.",
    )
    second.active_leaf = reply
    second.save(update_fields=["active_leaf"])
    Message.objects.create(conversation=first, role="user", content="Nothing to see here.")
    client = Client()
    client.force_login(user)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    context = browser.new_context()
    context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": cookie, "url": web}])
    page = context.new_page()
    page.set_default_timeout(20_000)
    dialogs: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    try:
        page.goto(f"{web}/#conversation-{first.pk}")
        page.wait_for_selector('[data-testid="connection-status"][data-state="open"]')
        page.fill('[data-testid="search-input"]', "lighthouse")
        page.click('[data-testid="search-submit"]')
        hit = page.locator('[data-testid="search-hit"]')
        hit.wait_for()
        assert hit.count() == 1
        snippet = hit.locator('[data-testid="search-snippet"]')
        assert snippet.locator("mark").inner_text() == "lighthouse"
        assert snippet.locator("img").count() == 0
        assert "<img src=x onerror=alert(1)>" in snippet.inner_text()
        assert page.locator('[data-testid="search-status"]').inner_text() == "1 message"
        page.screenshot(path=str(tmp_path / "search.png"))
        hit.click()
        page.wait_for_url(f"**/#conversation-{second.pk}")
        page.locator('[data-testid="message-content"]', has_text="lighthouse keeper").wait_for()
        assert page.locator('[data-testid="chat-title"]').inner_text() != "No conversation open"
        page.fill('[data-testid="search-input"]', "nothingmatchesthis")
        page.press('[data-testid="search-input"]', "Enter")
        page.locator('[data-testid="search-status"]', has_text="No messages found.").wait_for()
        assert page.locator('[data-testid="search-hit"]').count() == 0
        assert dialogs == []
    finally:
        context.close()

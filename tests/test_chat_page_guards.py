"""The chat page in a real browser (Debian's chromium, driven by Playwright) against a real
stack: daphne, the llm worker and the safety worker as processes, the fake LLM over HTTP.
It must say, in plain words, that a message was blocked, that a reply was stopped and hidden,
that a rate limit holds and until when, and that the account is banned."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from django.conf import settings
from django.db import connections
from django.test import Client
from django.utils import timezone

from fake_llm import FakeLLMServer, Script
from messages_app import limits
from messages_app.models import LimitOverride
from messages_app.moderation import user_ban
from messages_app.services import conversation_create
from messageservice.embedded import free_port
from tests.factories import CharacterFactory, UserFactory
from tests.helpers import ROOT, start_worker_process, worker_env
from tests.test_safety_worker import INSULT, WorkerProcess

pytestmark = pytest.mark.django_db(transaction=True)

CHROMIUM = "/usr/bin/chromium"
APP = "messageservice.asgi:application"
CLEAN_REPLY = "Ahoy! The sea is calm today."
BAD_REPLY = (
    "Fine, I will answer. You are a worthless stupid idiot, shut up. "
    + " ".join(f"word{i}" for i in range(80))
    + "."
)
GUARDS = {"ENABLE_CONTENT_FILTERING": "true", "ENABLE_RATE_LIMITS": "true"}


def _wait_http(url: str, proc: subprocess.Popen[bytes], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status in (200, 503):
                    return
        except OSError:
            pass
        assert proc.poll() is None, "the process exited"
        assert time.monotonic() < deadline, f"{url} did not answer"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def stack(
    django_db_setup: Any,
    fake_llm_server: FakeLLMServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """daphne, the llm worker and the safety worker on this run's database and Redis, with
    both guards on; the web root URL."""
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=worker_env(fake_llm_server),
        check=True,
        timeout=120,
    )
    safety = WorkerProcess(tmp_path_factory.mktemp("page") / "safety.log", **GUARDS).start()
    worker = start_worker_process(fake_llm_server, **GUARDS)
    port = free_port()
    web = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), APP],
        cwd=ROOT,
        env=worker_env(fake_llm_server, LOG_LEVEL="WARNING", **GUARDS),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        safety.ready()
        _wait_http(f"http://127.0.0.1:{port}/health", web)
        yield f"http://127.0.0.1:{port}"
    finally:
        for proc in (web, worker):
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        safety.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if shutil.which("chromium") is None:
        pytest.fail("chromium is not installed (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop running in this thread, which Django takes
    # for an async context; the tests' ORM calls are plain sync code (pytest-django's advice).
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            chromium = playwright.chromium.launch(
                executable_path=CHROMIUM,
                args=[
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                ],
            )
            yield chromium
            chromium.close()
    finally:
        del os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"]


@pytest.fixture
def chat(stack: str, browser: Any, fake_llm_server: FakeLLMServer) -> Iterator[Any]:
    """A new user, logged in, with the chat page open on a new conversation: (page, user)."""
    fake_llm_server.clear()
    user: Any = UserFactory(username=f"page-{time.monotonic_ns()}")
    character: Any = CharacterFactory(name="Captain Page", greeting="Ahoy!")
    conversation = conversation_create(owner=user, character=character)
    client = Client()
    client.force_login(user)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    context = browser.new_context()
    context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": cookie, "url": stack}])
    page = context.new_page()
    page.set_default_timeout(20_000)
    page.goto(f"{stack}/#conversation-{conversation.pk}")
    page.wait_for_selector('[data-testid="connection-status"][data-state="open"]')
    yield page, user
    context.close()


def _send(page: Any, text: str) -> None:
    page.fill('[data-testid="composer"]', text)
    page.press('[data-testid="composer"]', "Enter")


def test_a_blocked_message_is_shown_blocked_in_plain_words(chat):
    page, _ = chat
    _send(page, INSULT)
    message = page.locator('[data-testid="message"][data-role="user"][data-status="blocked"]')
    message.wait_for()
    notice = message.locator('[data-testid="message-error"]').inner_text()
    assert "blocked by the content filter" in notice.lower()
    assert "harassment" in notice
    assert message.locator('[data-testid="message-content"]').inner_text() == INSULT
    # Its reply ended with it, blocked and empty: it is not shown; the greeting alone is.
    hidden_reply = page.locator(
        '[data-testid="message"][data-role="assistant"][data-status="blocked"]'
    )
    hidden_reply.wait_for(state="attached")
    assert not hidden_reply.is_visible()
    assert page.locator('[data-testid="message"][data-role="assistant"]:visible').count() == 1


def test_a_stopped_reply_is_hidden_with_a_notice(chat, fake_llm_server):
    page, _ = chat
    fake_llm_server.push(Script.from_text(BAD_REPLY, token_interval=0.01))
    _send(page, "Say something")
    reply = page.locator('[data-testid="message"][data-role="assistant"][data-status="blocked"]')
    reply.wait_for()
    notice = reply.locator('[data-testid="message-error"]').inner_text()
    assert "stopped and hidden by the content filter" in notice
    assert reply.locator('[data-testid="message-content"]').inner_text() == ""
    assert "idiot" not in page.locator('[data-testid="messages"]').inner_text()


def test_a_rate_limit_says_which_and_counts_down(chat, fake_llm_server):
    page, user = chat
    # Windows are fixed (they follow the clock): both sends must fall in one hour.
    left = 3600 - time.time() % 3600
    if left < 25:
        time.sleep(left + 0.5)
    LimitOverride.objects.create(user=user, per_hour=1)
    # Each process holds the overrides for LIMITS_CACHE_SECONDS: a change applies after that.
    time.sleep(limits.LIMITS_CACHE_SECONDS + 0.2)
    fake_llm_server.push(Script.from_text(CLEAN_REPLY))
    _send(page, "Hello")
    page.locator('[data-testid="message"][data-role="assistant"][data-status="completed"]').nth(
        1
    ).wait_for()
    _send(page, "Hello again")
    banner = page.locator('[data-testid="banner"][data-kind="rate-limited"]')
    banner.wait_for()
    text = banner.inner_text()
    assert "limit of messages per hour" in text
    # The hour window ends at the full hour: seconds within 2 minutes of it, else minutes.
    assert re.search(r"Slow down: you can send again in \d+ (s|min)\.", text), text
    assert page.locator('[data-testid="send"]').is_disabled()
    failed = page.locator('[data-testid="message"][data-role="user"][data-status="failed"]')
    assert "sending limit" in failed.locator('[data-testid="message-error"]').inner_text()


def test_a_ban_closes_the_page_with_its_end_and_reason(chat, stack):
    page, user = chat
    until = timezone.now() + timedelta(hours=2)

    def ban() -> None:
        # In a thread of its own: the ban tells open sockets through the channel layer
        # (async_to_sync), which cannot run beside Playwright's loop in this thread.
        try:
            user_ban(user, until=until, permanent=False, reason="spamming other users", actor=None)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(ban).result()
    banner = page.locator('[data-testid="banner"][data-kind="banned"]')
    banner.wait_for()
    text = banner.inner_text()
    assert "suspended until" in text and "spamming other users" in text
    assert page.locator('[data-testid="composer"]').is_disabled()
    # Loaded afresh, the page says the same.
    page.reload()
    page.locator('[data-testid="banner"][data-kind="banned"]').wait_for()
    assert "spamming other users" in page.locator('[data-testid="banner"]').inner_text()

"""The safety client on its own: timeouts with no worker, deadlines, Redis errors, key names,
and what importing it costs a daphne process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import Any

import pytest
import redis
from django.conf import settings

from messages_app.safety import client
from messages_app.safety.client import SafetyUnavailable, acheck, submit
from messages_app.safety.worker import SafetyWorker
from messageservice import embedded, redis_clients
from tests.test_safety_worker import INSULT, KIND, ROOT


def _seems_alive() -> None:
    """As a running worker does: its alive key (no worker answers here)."""
    redis.Redis.from_url(settings.REDIS_URL).set(client.alive_key(), "local", ex=60)


def test_with_no_worker_running_a_check_fails_at_once():
    redis.Redis.from_url(settings.REDIS_URL).delete(client.alive_key())
    started = time.monotonic()
    with pytest.raises(SafetyUnavailable, match="no safety worker is running"):
        submit(INSULT)
    assert time.monotonic() - started < 1  # not the 2 s default timeout, nor the 5 s asked


async def test_with_no_worker_running_an_async_check_fails_at_once():
    await asyncio.to_thread(redis.Redis.from_url(settings.REDIS_URL).delete, client.alive_key())
    started = time.monotonic()
    with pytest.raises(SafetyUnavailable, match="no safety worker is running"):
        await acheck(INSULT, timeout=5)
    assert time.monotonic() - started < 1  # not the 2 s default timeout, nor the 5 s asked


def test_with_no_answer_a_check_fails_within_its_timeout():
    _seems_alive()
    started = time.monotonic()
    with pytest.raises(SafetyUnavailable, match="no verdict"):
        submit(INSULT).result(timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 1.5


async def test_with_no_answer_an_async_check_fails_within_its_timeout():
    await asyncio.to_thread(_seems_alive)
    started = time.monotonic()
    with pytest.raises(SafetyUnavailable, match="no verdict"):
        await acheck(INSULT, timeout=0.3)
    assert 0.3 <= time.monotonic() - started < 1.5


def test_a_request_past_its_deadline_is_answered_with_an_error_not_classified():
    worker = SafetyWorker(backend_name="local")
    _seems_alive()  # this worker runs in the test, not its loop
    late = submit(INSULT, timeout=0.05)
    live = submit(KIND, timeout=30)
    time.sleep(0.1)
    worker.handle(worker._pop())
    with pytest.raises(SafetyUnavailable, match="expired"):
        late.result(timeout=1)
    assert not live.result(timeout=1).flagged
    assert worker.answered == 2


def test_importing_the_client_loads_no_classifier_and_no_openai_sdk():
    code = (
        "import sys, django; django.setup(); import messageservice.asgi;"
        "before = set(sys.modules); import messages_app.safety.client;"
        "heavy = [m for m in sys.modules if m.split('.')[0] in"
        " ('sklearn', 'profanity_check', 'openai', 'joblib', 'scipy', 'numpy')];"
        "print(sorted(heavy), len(set(sys.modules) - before))"
    )
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="messageservice.settings", ENVIRONMENT="test")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert out[0] == "[]", out
    assert int(out[1]) < 10  # the client and its categories module, little else


def test_a_redis_error_on_submit_is_safety_unavailable(settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{embedded.free_port()}/0"
    redis_clients.reset()
    try:
        with pytest.raises(SafetyUnavailable, match="Redis"):
            submit(INSULT)
        with pytest.raises(SafetyUnavailable, match="Redis"):
            asyncio.run(acheck(INSULT, timeout=1))
    finally:
        redis_clients.reset()


def test_the_request_list_is_named_under_the_service_prefix():
    assert client.requests_key() == f"{settings.SERVICE_NAME}:safety:requests"
    pending = submit(KIND)
    assert pending.reply.startswith(f"{settings.SERVICE_NAME}:safety:reply:")
    raw: Any = redis.Redis.from_url(settings.REDIS_URL).lrange(client.requests_key(), 0, -1)
    assert len(raw) == 1 and pending.id.encode() in raw[0]

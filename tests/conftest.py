"""Shared fixtures: real Redis (flushed per test), the fake LLM over HTTP, users and clients."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from asgiref.sync import SyncToAsync
from channels.layers import channel_layers
from django.conf import settings
from django.db import connections
from rest_framework.test import APIClient

from fake_llm import FakeLLMServer
from messages_app.models import Character, Conversation
from messages_app.services import conversation_create
from tests.factories import CharacterFactory, UserFactory
from tests.helpers import session_headers


@pytest.fixture(autouse=True)
def _clean_redis() -> Iterator[None]:
    client: Any = redis.Redis.from_url(settings.REDIS_URL)
    # A safety worker process that outlives a test keeps its presence (its keys are renewed
    # every second anyway): without it, checks would fail fast as if none ran.
    kept = [
        (key, client.get(key), client.pttl(key))
        for key in client.scan_iter(match="*:safety:requests:alive")
    ]
    client.flushdb()
    for key, value, ttl in kept:
        if value is not None and ttl > 0:
            client.set(key, value, px=ttl)
    # Each async test has its own event loop; a channel layer remembers the loop it received
    # on, so every test gets a fresh one, as every daphne process has.
    channel_layers.backends.clear()
    yield
    client.close()
    # Async tests ran ORM calls on asgiref's shared executor thread; close its connection so
    # the test database can be dropped at the end.
    SyncToAsync.single_thread_executor.submit(connections.close_all).result()


@pytest.fixture(scope="session")
def fake_llm_server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as server:
        yield server


@pytest.fixture
def fake_llm(fake_llm_server: FakeLLMServer, settings: Any) -> Iterator[FakeLLMServer]:
    """The fake LLM, with no scripts queued, as the service's LLM_SERVICE_URL."""
    fake_llm_server.clear()
    settings.LLM_SERVICE_URL = fake_llm_server.base_url
    settings.DEFAULT_LLM_PROVIDER = "lmstudio"
    yield fake_llm_server
    fake_llm_server.clear()


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLMServer]:
    """A fake LLM of the module's own, for the tests of the fake and of the providers."""
    with FakeLLMServer() as fake:
        yield fake


@pytest.fixture
def fresh_server(
    server: FakeLLMServer, caplog: pytest.LogCaptureFixture
) -> Iterator[FakeLLMServer]:
    """`server` with nothing queued, which must handle every fault without logging a warning."""
    server.clear()
    caplog.set_level(logging.WARNING)
    yield server
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.fixture
def user(db: None) -> Any:
    return UserFactory(username="alice")


@pytest.fixture
def other_user(db: None) -> Any:
    return UserFactory(username="mallory")


@pytest.fixture
def character(db: None) -> Any:
    return CharacterFactory(name="Captain Test", greeting="Ahoy! I am Captain Test.")


@pytest.fixture
def conversation(user: Any, character: Character) -> Conversation:
    return conversation_create(owner=user, character=character)


@pytest.fixture
def api(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def alice_headers(user: Any) -> list[tuple[bytes, bytes]]:
    return session_headers(user)

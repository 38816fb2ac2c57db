"""Shared fixtures: real Redis (flushed per test), the fake LLM over HTTP, users and clients."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import django_rq
import pytest
import redis
from channels.testing import WebsocketCommunicator
from django.conf import settings
from rest_framework.test import APIClient
from rq import SimpleWorker
from rq.job import Job

from messages_app.models import Character, Conversation
from messages_app.services import conversation_create
from messageservice.asgi import application
from tests.factories import CharacterFactory, UserFactory
from tests.fake_llm import FakeLLMServer, Script

ORIGIN = (b"origin", b"http://localhost")


@pytest.fixture(autouse=True)
def _clean_redis() -> Iterator[None]:
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.flushdb()
    yield
    client.close()


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


@pytest.fixture
def user(db: None) -> Any:
    return UserFactory(username="alice")


@pytest.fixture
def other_user(db: None) -> Any:
    return UserFactory(username="mallory")


@pytest.fixture
def character(db: None) -> Character:
    return CharacterFactory(name="Captain Test", greeting="Ahoy! I am Captain Test.")


@pytest.fixture
def conversation(user: Any, character: Character) -> Conversation:
    return conversation_create(owner=user, character=character)


@pytest.fixture
def api(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


class ThreadWorker(SimpleWorker):
    """A SimpleWorker that can run off the main thread (signal handlers need the main one)."""

    def _install_signal_handlers(self) -> None:
        pass


def run_llm_worker() -> bool:
    """Run every queued `llm` job with a real RQ worker in burst mode, in this process."""
    worker = django_rq.get_worker("llm", worker_class=ThreadWorker)
    return bool(worker.work(burst=True, with_scheduler=False))


def llm_queue_jobs() -> list[Job]:
    return list(django_rq.get_queue("llm").get_jobs())


def ws_communicator(conversation_id: int | str, user: Any | None, **kwargs: Any) -> Any:
    """A websocket client of the real ASGI app, logged in as `user` through a real session."""
    headers = [ORIGIN]
    if user is not None:
        from django.test import Client

        client = Client()
        client.force_login(user)
        cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
        headers.append((b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode()))
    headers.extend(kwargs.pop("extra_headers", []))
    path = kwargs.pop("path", f"/ws/conversations/{conversation_id}/")
    return WebsocketCommunicator(application, path, headers=headers)


async def receive_until(communicator: Any, event_type: str, timeout: float = 10) -> list[dict]:
    """Frames received up to and including the first of `event_type`."""
    frames = []
    while True:
        frame = await communicator.receive_json_from(timeout=timeout)
        json.dumps(frame)
        frames.append(frame)
        if frame["type"] == event_type:
            return frames


__all__ = ["Script", "run_llm_worker", "ws_communicator", "receive_until", "llm_queue_jobs"]

"""Helpers shared by tests: a real RQ burst worker, websocket clients, frame collection."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import django_rq
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.test import Client
from rq.job import Job

from messageservice.asgi import application

ORIGIN = (b"origin", b"http://localhost")
ROOT = Path(__file__).resolve().parent.parent


def run_llm_worker() -> bool:
    """Run every queued `llm` job with the real llm worker (RQ_WORKER_CLASS) in burst mode."""
    worker = django_rq.get_worker("llm")
    return bool(worker.work(burst=True, with_scheduler=False))


async def arun_llm_worker() -> bool:
    """The burst worker in a thread, so that this loop keeps serving the websocket meanwhile."""
    return await asyncio.to_thread(run_llm_worker)


def llm_jobs() -> list[Job]:
    return list(django_rq.get_queue("llm").get_jobs())


def session_headers(user: Any) -> list[tuple[bytes, bytes]]:
    """Origin and session-cookie headers of a logged-in browser. Call from sync code."""
    client = Client()
    client.force_login(user)
    cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
    return [ORIGIN, (b"cookie", f"{settings.SESSION_COOKIE_NAME}={cookie}".encode())]


def communicator(path: str, headers: list[tuple[bytes, bytes]] | None = None) -> Any:
    return WebsocketCommunicator(application, path, headers=headers or [ORIGIN])


async def receive_until(comm: Any, *types: str, timeout: float = 15) -> list[dict[str, Any]]:
    """Frames received up to and including the first whose type is one of `types`."""
    frames = []
    while True:
        frame = await comm.receive_json_from(timeout=timeout)
        json.dumps(frame)
        frames.append(frame)
        if frame["type"] in types:
            return frames


def deltas_of(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in frames if f["type"] == "generation.delta"]


async def start_streaming(
    conversation: Any, headers: Any, text: str = "Go"
) -> tuple[Any, int, Any]:
    """Connect, send a message, start a burst worker in the background;
    (communicator, generation id, worker task)."""
    comm = communicator(f"/ws/conversations/{conversation.pk}/", headers)
    assert (await comm.connect())[0]
    created = await send_message(comm, text)
    worker = asyncio.ensure_future(arun_llm_worker())
    return comm, created[1]["message"]["generation_id"], worker


async def receive_deltas(comm: Any, count: int) -> list[dict[str, Any]]:
    """Frames until `count` deltas have arrived; the deltas."""
    frames: list[dict[str, Any]] = []
    while len(deltas_of(frames)) < count:
        frames.append(await comm.receive_json_from(timeout=10))
    return deltas_of(frames)


async def send_message(comm: Any, content: str, client_id: str = "") -> list[dict[str, Any]]:
    """Send `message.send` and wait for both `message.created` frames: the job is queued then."""
    await comm.send_json_to({"type": "message.send", "content": content, "client_id": client_id})
    return [await comm.receive_json_from(timeout=10) for _ in range(2)]


def worker_env(fake_llm: Any, **extra: str) -> dict[str, str]:
    """Environment for a `manage.py rqworker` subprocess on this test run's database and Redis."""
    return dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="messageservice.settings",
        DATABASE_URL=_database_url(),
        REDIS_URL=settings.REDIS_URL,
        LLM_SERVICE_URL=fake_llm.base_url,
        ENVIRONMENT="test",
        **extra,
    )


def _database_url() -> str:
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    auth = db.get("USER") or ""
    if db.get("PASSWORD"):
        auth += f":{db['PASSWORD']}"
    host, port = db.get("HOST") or "127.0.0.1", db.get("PORT") or 5432
    return f"postgres://{auth}@{host}:{port}/{db['NAME']}"


def start_worker_process(
    fake_llm: Any, *queues: str, redis_url: str | None = None, **env: str
) -> subprocess.Popen[bytes]:
    """A real `manage.py rqworker` process (queue `llm` unless told) for fault tests, with
    short leases and a fast reaper; `env` overrides its settings."""
    full = worker_env(
        fake_llm,
        **{
            "GENERATION_LEASE_SECONDS": "2",
            "REAPER_INTERVAL_SECONDS": "0.5",
            "LLM_RETRY_ATTEMPTS": "0",
            **env,
        },
    )
    if redis_url is not None:
        full["REDIS_URL"] = redis_url
    return subprocess.Popen(
        [sys.executable, "manage.py", "rqworker", *(queues or ("llm",))],
        cwd=ROOT,
        env=full,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def reply_log_key(generation_id: int) -> str:
    """The Redis key of the token log of generation `generation_id`'s reply (sync; the DB)."""
    from messages_app.models import Message
    from messages_app.streams import log_key

    return log_key(Message.objects.get(generation__pk=generation_id).stream_key)

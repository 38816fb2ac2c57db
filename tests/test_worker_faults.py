"""Faults that really happen: a worker killed with SIGKILL, and Redis restarting mid-stream."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings

from fake_llm import Script
from llm_app.models import Generation
from llm_app.reaper import reap_orphans
from messages_app.models import Message
from messageservice.redis_clients import sync_redis
from tests.helpers import (
    arun_llm_worker,
    communicator,
    deltas_of,
    receive_until,
    reply_log_key,
    send_message,
    worker_env,
)

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parent.parent


def _start_worker_process(fake_llm: Any) -> subprocess.Popen[bytes]:
    env = worker_env(fake_llm, GENERATION_LEASE_SECONDS="2", LLM_RETRY_ATTEMPTS="0")
    return subprocess.Popen(
        [sys.executable, "manage.py", "rqworker", "llm"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _until(check: Any, timeout: float = 20) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await sync_to_async(check)():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def _kill_and_reap(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    await asyncio.sleep(settings.GENERATION_LEASE_SECONDS + 0.5)  # the lease runs out
    assert await sync_to_async(reap_orphans)() == 1


async def test_worker_killed_mid_stream_ends_failed_and_every_client_is_told(
    conversation, alice_headers, fake_llm, settings
):
    settings.GENERATION_LEASE_SECONDS = 2
    settings.PARTIAL_SAVE_EVERY_TOKENS = 3
    fake_llm.push(Script.numbered(500, token_interval=0.02))
    comm = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    await comm.connect()
    created = await send_message(comm, "Keep talking")
    generation_id = created[1]["message"]["generation_id"]
    proc = _start_worker_process(fake_llm)
    try:
        key = await sync_to_async(reply_log_key)(generation_id)
        await _until(lambda: int(sync_redis().xlen(key)) >= 10)  # type: ignore[arg-type]
        await _kill_and_reap(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    frames = await receive_until(comm, "generation.failed", timeout=10)
    await comm.disconnect()
    assert frames[-1]["error"]["code"] == "worker_lost"
    reply = await Message.objects.aget(pk=created[1]["message"]["id"])
    assert reply.status == "failed"
    # Nothing the clients saw is lost, nothing is doubled: the text is deltas 1..stream_seq.
    assert reply.stream_seq >= 10
    expected = "".join(f" token{i}" if i > 1 else "token1" for i in range(1, reply.stream_seq + 1))
    assert reply.content == expected
    assert not await Message.objects.filter(status__in=["queued", "streaming"]).aexists()


async def test_worker_killed_before_the_first_token_is_retried_as_a_new_attempt(
    conversation, alice_headers, fake_llm, settings
):
    settings.GENERATION_LEASE_SECONDS = 2
    fake_llm.push(Script.from_text("never arrives", first_token_delay=60))
    comm = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    await comm.connect()
    created = await send_message(comm, "Hello?")
    generation_id = created[1]["message"]["generation_id"]
    proc = _start_worker_process(fake_llm)
    try:
        await _until(
            lambda: Message.objects.filter(
                generation__pk=generation_id, status="streaming"
            ).exists()
        )
        await asyncio.sleep(0.3)
        await _kill_and_reap(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    fake_llm.clear()
    fake_llm.push(Script.from_text("Second attempt reply."))
    await arun_llm_worker()
    frames = await receive_until(comm, "generation.completed", "generation.failed", timeout=10)
    await comm.disconnect()
    types = [f["type"] for f in frames]
    assert "generation.retrying" in types
    assert frames[-1]["type"] == "generation.completed"
    assert "".join(d["text"] for d in deltas_of(frames)) == "Second attempt reply."
    generation = await Generation.objects.aget(pk=generation_id)
    assert generation.attempt == 2


async def test_redis_restart_mid_stream_ends_failed_and_leaves_completed_replies_alone(
    conversation, alice_headers, user, fake_llm, settings, monkeypatch
):
    import django_rq.settings
    from channels.layers import channel_layers

    from messageservice import embedded, redis_clients

    port = embedded.free_port()
    proc = embedded.start_redis(port)
    url = f"redis://127.0.0.1:{port}/0"
    settings.REDIS_URL = url
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [url]},
        }
    }
    # django-rq read RQ_QUEUES at start-up: point the llm queue at this Redis too.
    monkeypatch.setitem(
        django_rq.settings.QUEUES, "llm", {**django_rq.settings.QUEUES["llm"], "URL": url}
    )
    channel_layers.backends.clear()
    redis_clients.reset()
    try:
        comm = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
        await comm.connect()
        fake_llm.push(Script.from_text("A finished reply."))
        done = await send_message(comm, "first")
        await arun_llm_worker()
        await receive_until(comm, "generation.completed")

        fake_llm.push(Script.numbered(300, token_interval=0.02))
        created = await send_message(comm, "second")
        worker = asyncio.ensure_future(arun_llm_worker())
        frames: list[dict] = []
        while len(deltas_of(frames)) < 5:
            frames.append(await comm.receive_json_from(timeout=10))
        embedded.stop(proc)  # Redis goes away mid-stream...
        await asyncio.sleep(0.3)
        proc = embedded.start_redis(port)  # ...and comes back empty
        # RQ's own bookkeeping may fail while Redis is down; the reply must still end.
        await asyncio.wait_for(asyncio.gather(worker, return_exceptions=True), timeout=30)
        with contextlib.suppress(BaseException):
            await comm.disconnect()
        # The client reconnects and resumes: the log is gone with Redis, so it is answered
        # from the database with the final status.
        again = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
        assert (await again.connect())[0]
        generation_id = created[1]["message"]["generation_id"]
        await again.send_json_to(
            {"type": "stream.resume", "generation_id": generation_id, "after_seq": 5}
        )
        answer = await again.receive_json_from(timeout=10)
        await again.disconnect()
    finally:
        embedded.stop(proc)
        channel_layers.backends.clear()
        redis_clients.reset()
    reply = await Message.objects.aget(pk=created[1]["message"]["id"])
    assert reply.status == "failed"
    generation = await Generation.objects.aget(pk=created[1]["message"]["generation_id"])
    assert generation.error_code == "redis_unavailable"
    assert answer["type"] == "generation.failed"
    assert answer["error"]["code"] == "redis_unavailable"
    assert answer["message"]["content"] == reply.content
    finished = await Message.objects.aget(pk=done[1]["message"]["id"])
    assert finished.status == "completed" and finished.content == "A finished reply."

"""Redis going away and coming back: replies end in a defined state and clients are told."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from fake_llm import Script
from llm_app.models import Generation
from messages_app.models import Message
from tests.helpers import (
    arun_llm_worker,
    communicator,
    deltas_of,
    receive_until,
    send_message,
    start_worker_process,
)

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parent.parent


class PrivateRedis:
    """A redis-server of this test's own, which the test stops and starts again."""

    def __init__(self) -> None:
        from messageservice import embedded

        self.embedded = embedded
        self.port = embedded.free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = embedded.start_redis(self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.embedded.stop(self.proc)
            self.proc = None

    def start(self) -> None:
        self.proc = self.embedded.start_redis(self.port)


@pytest.fixture
def private_redis(settings: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[PrivateRedis]:
    """The whole service (queues, channel layer, token logs) on a Redis the test controls."""
    import django_rq.settings
    from channels.layers import channel_layers

    from messageservice import redis_clients

    server = PrivateRedis()
    settings.REDIS_URL = server.url
    settings.CHANNEL_LAYERS = {
        "default": {
            **settings.CHANNEL_LAYERS["default"],
            "CONFIG": {**settings.CHANNEL_LAYERS["default"]["CONFIG"], "hosts": [server.url]},
        }
    }
    # django-rq read RQ_QUEUES at start-up: point the llm queue at this Redis too.
    monkeypatch.setitem(
        django_rq.settings.QUEUES, "llm", {**django_rq.settings.QUEUES["llm"], "URL": server.url}
    )
    channel_layers.backends.clear()
    redis_clients.reset()
    try:
        yield server
    finally:
        server.stop()
        channel_layers.backends.clear()
        redis_clients.reset()


async def test_a_redis_outage_with_every_slot_busy_keeps_the_worker_and_tells_the_clients(
    conversation, alice_headers, fake_llm, private_redis
):
    fake_llm.push(Script.numbered(400, token_interval=0.02))
    fake_llm.push(Script.from_text("The queued reply goes on."))
    comm = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    await comm.connect()
    worker = start_worker_process(
        fake_llm,
        redis_url=private_redis.url,
        MAX_CONCURRENT_REQUESTS="1",
        MAX_CONCURRENT_LLM_REQUESTS="1",
    )
    try:
        streaming = await send_message(comm, "the long one")
        frames: list[dict] = []
        while len(deltas_of(frames)) < 5:
            frames.append(await comm.receive_json_from(timeout=15))
        # Waits in the queue: the worker's only slot is busy.
        await comm.send_json_to({"type": "message.send", "content": "the queued one"})
        while sum(f["type"] == "message.created" for f in frames) < 2:
            frames.append(await comm.receive_json_from(timeout=15))
        queued_id = [f for f in frames if f["type"] == "message.created"][-1]["message"]
        private_redis.stop()
        await asyncio.sleep(3)
        assert worker.poll() is None, "the worker must wait the outage out"
        private_redis.start()
        frames += await receive_until(comm, "generation.failed", timeout=30)
        later = await receive_until(comm, "generation.completed", timeout=30)
        await asyncio.sleep(1)
        assert worker.poll() is None, "the worker must still run after the outage"
    finally:
        worker.kill()
        worker.wait(timeout=10)
        with contextlib.suppress(BaseException):
            await comm.disconnect()
    failed = frames[-1]
    assert failed["generation_id"] == streaming[1]["message"]["generation_id"]
    assert failed["error"]["code"] == "redis_unavailable"
    reply = await Message.objects.aget(pk=streaming[1]["message"]["id"])
    assert reply.status == "failed" and failed["message"]["content"] == reply.content
    done = later[-1]
    assert done["generation_id"] == queued_id["generation_id"]
    assert done["message"]["content"] == "The queued reply goes on."


async def test_a_ws_ticket_while_redis_is_down_is_a_503_in_the_error_shape(api, private_redis):
    private_redis.stop()
    resp = await sync_to_async(api.post)("/api/v1/ws-tickets/")
    assert resp.status_code == 503
    assert resp.json()["error"]["code"] == "redis_unavailable"


async def test_redis_restart_mid_stream_ends_failed_and_leaves_completed_replies_alone(
    conversation, alice_headers, user, fake_llm, private_redis
):
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
        private_redis.stop()  # Redis goes away mid-stream...
        await asyncio.sleep(0.3)
        private_redis.start()  # ...and comes back empty
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
        private_redis.stop()
    reply = await Message.objects.aget(pk=created[1]["message"]["id"])
    assert reply.status == "failed"
    generation = await Generation.objects.aget(pk=created[1]["message"]["generation_id"])
    assert generation.error_code == "redis_unavailable"
    assert answer["type"] == "generation.failed"
    assert answer["error"]["code"] == "redis_unavailable"
    assert answer["message"]["content"] == reply.content
    finished = await Message.objects.aget(pk=done[1]["message"]["id"])
    assert finished.status == "completed" and finished.content == "A finished reply."

"""A worker killed with SIGKILL mid-reply: the replies it held are settled by the service itself.

Nobody calls the reaper here: the restarted (then idle) worker, or any other worker process of
the service, settles them from its keeper thread soon after their lease runs out.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from fake_llm import Script
from llm_app.models import Generation
from messages_app.models import Message
from messageservice.redis_clients import sync_redis
from tests.helpers import (
    communicator,
    deltas_of,
    receive_until,
    reply_log_key,
    send_message,
    start_worker_process,
)

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parent.parent
LEASE = 2
# The bound: settled within 60 s after the lease expires.
SETTLE_BOUND = LEASE + 60


def _start_worker(fake_llm: Any, *queues: str, concurrency: int = 5) -> subprocess.Popen[bytes]:
    return start_worker_process(
        fake_llm,
        *queues,
        GENERATION_LEASE_SECONDS=str(LEASE),
        MAX_CONCURRENT_REQUESTS=str(concurrency),
    )


def _stop(*procs: subprocess.Popen[bytes]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


async def _until(check: Any, timeout: float = 20) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await sync_to_async(check)():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


def _kill(proc: subprocess.Popen[bytes]) -> float:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    return time.monotonic()


def _numbered(count: int) -> str:
    return "".join(f" token{i}" if i > 1 else "token1" for i in range(1, count + 1))


@pytest.mark.parametrize(
    "settled_by",
    [("llm",), ("messages", "analytics", "default")],
    ids=["the-llm-worker-restarted-at-once-then-idle", "another-worker-when-no-llm-worker-runs"],
)
async def test_a_reply_killed_mid_stream_is_failed_with_its_text_and_every_client_told(
    conversation, alice_headers, fake_llm, settings, settled_by
):
    settings.PARTIAL_SAVE_EVERY_TOKENS = 3
    fake_llm.push(Script.numbered(500, token_interval=0.02))
    comm = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    await comm.connect()
    created = await send_message(comm, "Keep talking")
    generation_id = created[1]["message"]["generation_id"]
    first = _start_worker(fake_llm)
    restarted = None
    try:
        key = await sync_to_async(reply_log_key)(generation_id)
        await _until(lambda: int(sync_redis().xlen(key)) >= 10)  # type: ignore[arg-type]
        killed_at = _kill(first)
        # At once; the llm worker then has nothing to do. The `messages` worker is the
        # embedded run's other worker process.
        restarted = _start_worker(fake_llm, *settled_by)
        frames = await receive_until(comm, "generation.failed", timeout=SETTLE_BOUND + 5)
        settled_after = time.monotonic() - killed_at
    finally:
        _stop(first, *([restarted] if restarted else []))
    await comm.disconnect()
    assert settled_after <= SETTLE_BOUND
    failed = frames[-1]
    assert failed["error"]["code"] == "worker_lost"
    reply = await Message.objects.aget(generation__pk=generation_id)
    assert reply.status == "failed" and reply.stream_seq >= 10
    # Every delta the client was sent is kept, and nothing more.
    assert reply.content == _numbered(reply.stream_seq)
    assert failed["message"]["content"] == reply.content
    assert "".join(d["text"] for d in deltas_of(frames)) == reply.content


async def test_a_reply_killed_before_its_first_token_is_generated_again_by_the_restarted_worker(
    conversation, alice_headers, fake_llm
):
    fake_llm.push(Script.from_text("never arrives", first_token_delay=60))
    comm = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    await comm.connect()
    created = await send_message(comm, "Hello?")
    generation_id = created[1]["message"]["generation_id"]
    first = _start_worker(fake_llm)
    restarted = None
    try:
        await _until(
            lambda: Message.objects.filter(
                generation__pk=generation_id, status="streaming"
            ).exists()
        )
        await _until(lambda: len(fake_llm.requests) > 0)
        _kill(first)
        fake_llm.clear()
        fake_llm.push(Script.from_text("Second attempt reply."))
        restarted = _start_worker(fake_llm)
        frames = await receive_until(
            comm, "generation.completed", "generation.failed", timeout=SETTLE_BOUND + 5
        )
    finally:
        _stop(first, *([restarted] if restarted else []))
    await comm.disconnect()
    types = [f["type"] for f in frames]
    assert "generation.retrying" in types
    assert frames[-1]["type"] == "generation.completed", frames[-1]
    assert "".join(d["text"] for d in deltas_of(frames)) == "Second attempt reply."
    generation = await Generation.objects.aget(pk=generation_id)
    assert generation.attempt == 2


async def test_several_replies_killed_at_once_are_all_settled_and_every_client_told(
    user, character, alice_headers, fake_llm
):
    from messages_app.services import conversation_create

    conversations = [
        await sync_to_async(conversation_create)(owner=user, character=character) for _ in range(3)
    ]
    for _ in conversations:
        fake_llm.push(Script.numbered(500, token_interval=0.02))
    comms = []
    generation_ids = []
    for conversation in conversations:
        comm = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
        await comm.connect()
        created = await send_message(comm, "Talk")
        comms.append(comm)
        generation_ids.append(created[1]["message"]["generation_id"])
    first = _start_worker(fake_llm, concurrency=3)
    restarted = None
    try:
        keys = [await sync_to_async(reply_log_key)(g) for g in generation_ids]
        await _until(lambda: all(int(sync_redis().xlen(k)) >= 5 for k in keys))  # type: ignore[arg-type]
        killed_at = _kill(first)
        restarted = _start_worker(fake_llm)
        endings = [
            (await receive_until(comm, "generation.failed", timeout=SETTLE_BOUND + 5))[-1]
            for comm in comms
        ]
        settled_after = time.monotonic() - killed_at
    finally:
        _stop(first, *([restarted] if restarted else []))
    for comm in comms:
        await comm.disconnect()
    assert settled_after <= SETTLE_BOUND
    assert [e["generation_id"] for e in endings] == generation_ids
    assert {e["error"]["code"] for e in endings} == {"worker_lost"}
    assert not await Message.objects.filter(status__in=["queued", "streaming"]).aexists()

"""Graceful shutdown of an llm worker: SIGTERM mid-reply, the replies it runs still complete.

Kubernetes stops a pod with SIGTERM and SIGKILLs it terminationGracePeriodSeconds later
(deploy/k8s/workers-deployment.yaml gives the llm workers longer than MESSAGE_PROCESSING_TIMEOUT,
tests/test_deploy_files.py checks it). On SIGTERM rq's worker takes no new job (warm shutdown)
and LLMWorker.teardown waits for the generation threads in hand: the replies streaming at that
moment end `completed` with their whole text, and the process then exits 0 by itself. A reply
still waiting in the queue is not started by the stopping worker: it stays queued, in
`rq:queue:llm`, for the next worker.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from fake_llm import Script
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
TOKENS = 60
TOKEN_INTERVAL = 0.05  # about 3 s a reply, most of it after the SIGTERM


def _numbered(count: int) -> str:
    return "".join(f" token{i}" if i > 1 else "token1" for i in range(1, count + 1))


async def _until(check: Any, timeout: float = 20) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await sync_to_async(check)():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.05)


async def test_sigterm_lets_the_running_replies_finish_then_the_worker_exits(
    user, character, alice_headers, fake_llm
):
    from messages_app.services import conversation_create

    conversations = [
        await sync_to_async(conversation_create)(owner=user, character=character) for _ in range(3)
    ]
    for _ in conversations:
        fake_llm.push(Script.numbered(TOKENS, token_interval=TOKEN_INTERVAL))
    comms = []
    generation_ids = []
    for conversation in conversations:
        comm = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
        await comm.connect()
        created = await send_message(comm, "Talk")
        comms.append(comm)
        generation_ids.append(created[1]["message"]["generation_id"])
    # Two run at once (MAX_CONCURRENT_REQUESTS=2); the third waits in the queue.
    waiting_comm, waiting_id = comms.pop(), generation_ids.pop()
    worker: subprocess.Popen[bytes] = start_worker_process(
        fake_llm, "llm", MAX_CONCURRENT_REQUESTS="2", GENERATION_LEASE_SECONDS="30"
    )
    try:
        keys = [await sync_to_async(reply_log_key)(g) for g in generation_ids]
        await _until(lambda: all(int(sync_redis().xlen(k)) >= 5 for k in keys))  # type: ignore[arg-type]
        worker.send_signal(signal.SIGTERM)
        terminated_at = time.monotonic()
        # Still running: the replies are not done yet.
        await asyncio.sleep(0.3)
        assert worker.poll() is None, "the worker quit with replies in hand"
        endings = [
            await receive_until(comm, "generation.completed", "generation.failed", timeout=30)
            for comm in comms
        ]
        returncode = await sync_to_async(worker.wait)(timeout=30)
        stopped_after = time.monotonic() - terminated_at
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)
    for comm in [*comms, waiting_comm]:
        await comm.disconnect()
    assert returncode == 0
    waiting = await Message.objects.aget(generation__pk=waiting_id)
    assert waiting.status == "queued", waiting.status
    assert int(sync_redis().llen("rq:queue:llm")) == 1  # type: ignore[arg-type]
    # Well inside the llm pods' grace period (330 s), and about the replies' own length.
    assert stopped_after < 30
    for frames in endings:
        assert frames[-1]["type"] == "generation.completed", frames[-1]
        assert "".join(d["text"] for d in deltas_of(frames)) == _numbered(TOKENS)
    replies = [await Message.objects.aget(generation__pk=g) for g in generation_ids]
    assert [r.status for r in replies] == ["completed", "completed"]
    assert all(r.content == _numbered(TOKENS) for r in replies)

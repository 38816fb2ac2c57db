"""Resume: a client that reconnects gets exactly the deltas it missed, then the live ones;
a reload shows the partial text."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from rest_framework.test import APIClient

from fake_llm import Script
from messages_app.models import Message
from messageservice.redis_clients import sync_redis
from tests.helpers import (
    communicator,
    deltas_of,
    receive_deltas,
    receive_until,
    reply_log_key,
    start_streaming,
)

pytestmark = pytest.mark.django_db(transaction=True)


async def test_resume_on_a_new_connection_replays_exactly_the_missing_deltas_then_live(
    conversation, alice_headers, fake_llm
):
    fake_llm.push(Script.numbered(40, token_interval=0.02))
    comm, generation_id, worker = await start_streaming(conversation, alice_headers)
    first = await receive_deltas(comm, 7)
    await comm.disconnect()
    await asyncio.sleep(0.15)  # deltas keep flowing while nobody listens

    again = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    assert (await again.connect())[0]
    await again.send_json_to(
        {"type": "stream.resume", "generation_id": generation_id, "after_seq": 7}
    )
    frames = await receive_until(again, "generation.completed")
    await again.disconnect()
    await worker
    seqs = [d["seq"] for d in first] + [d["seq"] for d in deltas_of(frames)]
    # Pieces that arrived together may be one delta: the seqs are 1..n, n up to 40.
    assert seqs == list(range(1, len(seqs) + 1)), "no gap, no duplicate, no reordering"
    assert [f["type"] for f in frames].count("generation.completed") == 1
    joined = "".join(d["text"] for d in first + deltas_of(frames))
    saved = await Message.objects.aget(generation__pk=generation_id)
    assert joined == saved.content == "".join(Script.numbered(40).tokens)
    assert saved.stream_seq == len(seqs)


async def test_a_fresh_connection_does_not_get_half_a_stream_without_resume(
    conversation, alice_headers, fake_llm
):
    fake_llm.push(Script.numbered(30, token_interval=0.02))
    comm, generation_id, worker = await start_streaming(conversation, alice_headers)
    await receive_deltas(comm, 3)
    late = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    await late.connect()
    await receive_until(comm, "generation.completed")
    await worker
    # Nothing it could not place: no deltas, no end of a stream it never saw begin.
    assert await late.receive_nothing(timeout=0.3)
    await late.send_json_to({"type": "stream.resume", "generation_id": generation_id})
    frames = await receive_until(late, "generation.completed")
    await comm.disconnect()
    await late.disconnect()
    final = frames[-1]["message"]["seq"]
    assert [d["seq"] for d in deltas_of(frames)] == list(range(1, final + 1))
    assert "".join(d["text"] for d in deltas_of(frames)) == "".join(Script.numbered(30).tokens)


async def test_resume_after_the_end_replays_from_the_log_and_ends_once(
    conversation, alice_headers, fake_llm
):
    fake_llm.push(Script.numbered(12, token_interval=0.01))
    comm, generation_id, worker = await start_streaming(conversation, alice_headers)
    first = await receive_until(comm, "generation.completed")
    await worker
    # Pieces that arrived together are one delta, so count the deltas that were sent.
    sent = deltas_of(first)
    last = sent[-1]["seq"]
    after = max(0, last - 3)
    await comm.send_json_to(
        {"type": "stream.resume", "generation_id": generation_id, "after_seq": after}
    )
    frames = await receive_until(comm, "generation.completed")
    await comm.disconnect()
    replayed = deltas_of(frames)
    assert [d["seq"] for d in replayed] == list(range(after + 1, last + 1))
    assert [d["text"] for d in replayed] == [d["text"] for d in sent[after:]]
    assert frames[-1]["message"]["status"] == "completed"


async def test_resume_after_the_log_expired_answers_with_the_saved_message(
    conversation, alice_headers, fake_llm
):
    fake_llm.push(Script.numbered(5))
    comm, generation_id, worker = await start_streaming(conversation, alice_headers)
    await receive_until(comm, "generation.completed")
    await worker
    key = await sync_to_async(reply_log_key)(generation_id)
    ttl: Any = await sync_to_async(sync_redis().ttl)(key)
    assert ttl >= 600, "the log lives at least 10 minutes after the end"
    await sync_to_async(sync_redis().delete)(key)
    await comm.send_json_to(
        {"type": "stream.resume", "generation_id": generation_id, "after_seq": 2}
    )
    frame = await comm.receive_json_from(timeout=5)
    await comm.disconnect()
    assert frame["type"] == "generation.completed"
    assert frame["message"]["content"] == "token1 token2 token3 token4 token5"


async def test_resume_beyond_the_end_replays_nothing_and_live_deltas_follow(
    conversation, alice_headers, fake_llm
):
    fake_llm.push(Script.numbered(40, token_interval=0.02))
    comm, generation_id, worker = await start_streaming(conversation, alice_headers)
    await receive_deltas(comm, 2)
    await comm.disconnect()
    again = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    await again.connect()
    await again.send_json_to(
        {"type": "stream.resume", "generation_id": generation_id, "after_seq": 10_000}
    )
    frames = await receive_until(again, "generation.completed")
    await again.disconnect()
    await worker
    seqs = [d["seq"] for d in deltas_of(frames)]
    assert seqs, "live deltas follow"
    assert seqs == list(range(seqs[0], 41))
    assert seqs[0] > 2


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "stream.resume", "generation_id": 999999, "after_seq": 0},
        {"type": "stream.resume", "generation_id": "x", "after_seq": 0},
        {"type": "stream.resume", "after_seq": 0},
        {"type": "stream.resume", "generation_id": 1, "after_seq": -3},
        {"type": "generation.cancel", "generation_id": 999999},
    ],
)
async def test_resume_or_cancel_of_an_unknown_generation_is_an_error_frame(
    conversation, alice_headers, frame
):
    comm = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    await comm.connect()
    await comm.send_json_to(frame)
    answer = await comm.receive_json_from(timeout=5)
    assert answer["type"] == "error"
    assert answer["error"]["code"] in {"not_found", "bad_frame"}
    await comm.send_json_to({"type": "ping"})
    assert (await comm.receive_json_from(timeout=5))["type"] == "pong"
    await comm.disconnect()


async def test_resume_of_another_users_generation_is_not_found(
    conversation, alice_headers, other_user, fake_llm
):
    from messages_app.services import conversation_create, message_send

    theirs = await sync_to_async(conversation_create)(
        owner=other_user, character=conversation.character
    )
    result = await sync_to_async(message_send)(
        conversation=theirs, author=other_user, content="secret"
    )
    comm = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    await comm.connect()
    await comm.send_json_to(
        {"type": "stream.resume", "generation_id": result.generation_id, "after_seq": 0}
    )
    assert (await comm.receive_json_from(timeout=5))["error"]["code"] == "not_found"
    await comm.disconnect()


async def test_reload_mid_stream_shows_the_partial_text_over_rest(
    conversation, alice_headers, user, fake_llm, settings
):
    settings.PARTIAL_SAVE_EVERY_TOKENS = 5
    fake_llm.push(Script.numbered(60, token_interval=0.03))
    comm, generation_id, worker = await start_streaming(conversation, alice_headers)
    received = await receive_deltas(comm, 12)
    client = APIClient()
    client.force_authenticate(user)
    page = await sync_to_async(client.get)(f"/api/v1/conversations/{conversation.pk}/messages/")
    reply = page.json()["results"][-1]
    await receive_until(comm, "generation.completed")
    await comm.disconnect()
    await worker
    assert reply["status"] == "streaming"
    assert reply["seq"] >= 5
    full = (await Message.objects.aget(generation__pk=generation_id)).content
    # The saved partial text is exactly the deltas 1..seq: a client resumes after `seq`.
    assert reply["content"] == "".join(
        f" token{i}" if i > 1 else "token1" for i in range(1, reply["seq"] + 1)
    )
    assert full.startswith(reply["content"])
    assert len(received) == 12

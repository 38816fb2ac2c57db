"""Streams that never lose a token: resume, partial text, cancel, retries, fallback, heartbeat."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from rest_framework.test import APIClient

from fake_llm import Script
from llm_app.models import Generation
from messages_app.models import Message
from messageservice.redis_clients import sync_redis
from tests.helpers import (
    arun_llm_worker,
    communicator,
    deltas_of,
    receive_until,
    reply_log_key,
    send_message,
)

pytestmark = pytest.mark.django_db(transaction=True)


def _path(conversation: Any) -> str:
    return f"/ws/conversations/{conversation.pk}/"


async def _start(conversation: Any, headers: Any, text: str = "Go") -> tuple[Any, int, Any]:
    """Connect, send a message, start a worker in the background; (comm, generation id, task)."""
    comm = communicator(_path(conversation), headers)
    assert (await comm.connect())[0]
    created = await send_message(comm, text)
    worker = asyncio.ensure_future(arun_llm_worker())
    return comm, created[1]["message"]["generation_id"], worker


async def _deltas(comm: Any, count: int) -> list[dict]:
    frames: list[dict] = []
    while len(deltas_of(frames)) < count:
        frames.append(await comm.receive_json_from(timeout=10))
    return deltas_of(frames)


async def test_resume_on_a_new_connection_replays_exactly_the_missing_deltas_then_live(
    conversation, alice_headers, fake_llm
):
    fake_llm.push(Script.numbered(40, token_interval=0.02))
    comm, generation_id, worker = await _start(conversation, alice_headers)
    first = await _deltas(comm, 7)
    await comm.disconnect()
    await asyncio.sleep(0.15)  # deltas keep flowing while nobody listens

    again = communicator(_path(conversation), alice_headers)
    assert (await again.connect())[0]
    await again.send_json_to(
        {"type": "stream.resume", "generation_id": generation_id, "after_seq": 7}
    )
    frames = await receive_until(again, "generation.completed")
    await again.disconnect()
    await worker
    seqs = [d["seq"] for d in first] + [d["seq"] for d in deltas_of(frames)]
    assert seqs == list(range(1, 41)), "no gap, no duplicate, no reordering"
    assert [f["type"] for f in frames].count("generation.completed") == 1
    joined = "".join(d["text"] for d in first + deltas_of(frames))
    saved = await Message.objects.aget(generation__pk=generation_id)
    assert joined == saved.content and saved.stream_seq == 40


async def test_a_fresh_connection_does_not_get_half_a_stream_without_resume(
    conversation, alice_headers, fake_llm
):
    fake_llm.push(Script.numbered(30, token_interval=0.02))
    comm, generation_id, worker = await _start(conversation, alice_headers)
    await _deltas(comm, 3)
    late = communicator(_path(conversation), alice_headers)
    await late.connect()
    await receive_until(comm, "generation.completed")
    await worker
    # Nothing it could not place: no deltas, no end of a stream it never saw begin.
    assert await late.receive_nothing(timeout=0.3)
    await late.send_json_to({"type": "stream.resume", "generation_id": generation_id})
    frames = await receive_until(late, "generation.completed")
    await comm.disconnect()
    await late.disconnect()
    assert [d["seq"] for d in deltas_of(frames)] == list(range(1, 31))
    assert frames[-1]["message"]["seq"] == 30


async def test_resume_after_the_end_replays_from_the_log_and_ends_once(
    conversation, alice_headers, fake_llm
):
    fake_llm.push(Script.numbered(12))
    comm, generation_id, worker = await _start(conversation, alice_headers)
    await receive_until(comm, "generation.completed")
    await worker
    await comm.send_json_to(
        {"type": "stream.resume", "generation_id": generation_id, "after_seq": 9}
    )
    frames = await receive_until(comm, "generation.completed")
    await comm.disconnect()
    assert [d["seq"] for d in deltas_of(frames)] == [10, 11, 12]
    assert frames[-1]["message"]["status"] == "completed"


async def test_resume_after_the_log_expired_answers_with_the_saved_message(
    conversation, alice_headers, fake_llm
):
    fake_llm.push(Script.numbered(5))
    comm, generation_id, worker = await _start(conversation, alice_headers)
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
    comm, generation_id, worker = await _start(conversation, alice_headers)
    await _deltas(comm, 2)
    await comm.disconnect()
    again = communicator(_path(conversation), alice_headers)
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
    comm = communicator(_path(conversation), alice_headers)
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
    comm = communicator(_path(conversation), alice_headers)
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
    comm, generation_id, worker = await _start(conversation, alice_headers)
    received = await _deltas(comm, 12)
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


async def test_cancel_over_the_websocket_stops_the_stream_and_keeps_the_text(
    conversation, alice_headers, fake_llm
):
    fake_llm.push(Script.numbered(200, token_interval=0.05))
    comm, generation_id, worker = await _start(conversation, alice_headers)
    await _deltas(comm, 3)
    await comm.send_json_to({"type": "generation.cancel", "generation_id": generation_id})
    frames = await receive_until(comm, "generation.cancelled")
    await worker
    await comm.disconnect()
    # Stopped within about one token interval: at most a couple of deltas after the request.
    assert len(deltas_of(frames)) <= 3
    message = frames[-1]["message"]
    assert message["status"] == "cancelled"
    saved = await Message.objects.aget(generation__pk=generation_id)
    assert saved.status == "cancelled" and saved.content == message["content"]
    assert saved.content.startswith("token1 token2 token3")
    for _ in range(50):  # the server notices the closed connection at its next write
        if fake_llm.active_requests == 0:
            break
        await asyncio.sleep(0.02)
    assert fake_llm.active_requests == 0, "the provider stream was closed"


async def test_cancel_over_rest_and_cancel_of_a_finished_generation_is_409(
    conversation, alice_headers, user, fake_llm
):
    fake_llm.push(Script.numbered(200, token_interval=0.05))
    comm, generation_id, worker = await _start(conversation, alice_headers)
    await _deltas(comm, 2)
    client = APIClient()
    client.force_authenticate(user)
    url = f"/api/v1/generations/{generation_id}/cancel/"
    resp = await sync_to_async(client.post)(url)
    assert resp.status_code == 202
    frames = await receive_until(comm, "generation.cancelled")
    await worker
    await comm.disconnect()
    assert frames[-1]["message"]["status"] == "cancelled"
    again = await sync_to_async(client.post)(url)
    assert again.status_code == 409
    assert again.json()["error"]["code"] == "already_finished"


def test_cancel_of_a_queued_generation_ends_it_and_the_job_does_nothing(api, conversation):
    from tests.helpers import run_llm_worker

    body = api.post(
        f"/api/v1/conversations/{conversation.pk}/messages/", {"content": "hi"}, format="json"
    ).json()
    resp = api.post(f"/api/v1/generations/{body['generation_id']}/cancel/")
    assert resp.status_code == 202 and resp.json()["message"]["status"] == "cancelled"
    run_llm_worker()
    assert Message.objects.get(pk=body["assistant_message"]["id"]).status == "cancelled"
    other = APIClient()
    from tests.factories import UserFactory

    eve: Any = UserFactory(username="eve")
    other.force_authenticate(eve)
    assert other.post(f"/api/v1/generations/{body['generation_id']}/cancel/").status_code == 404


async def test_retry_before_the_first_token_then_success_tells_the_client(
    conversation, alice_headers, fake_llm
):
    fake_llm.push(Script.from_text("x", fault="http_500"))
    fake_llm.push(Script.from_text("Second time lucky."))
    comm, generation_id, worker = await _start(conversation, alice_headers)
    frames = await receive_until(comm, "generation.completed", "generation.failed")
    await worker
    await comm.disconnect()
    types = [f["type"] for f in frames]
    assert "generation.retrying" in types
    assert frames[-1]["type"] == "generation.completed"
    assert "".join(d["text"] for d in deltas_of(frames)) == "Second time lucky."
    generation = await Generation.objects.aget(pk=generation_id)
    attempts = generation.prompt_manifest["provider_attempts"]
    assert [a.get("error") for a in attempts] == ["llm_error", None]


async def test_no_retry_once_tokens_have_streamed(conversation, alice_headers, fake_llm):
    fake_llm.push(Script.from_text("one two three four", fault="cut", fault_after=2))
    fake_llm.push(Script.from_text("must not be used"))
    comm, _generation_id, worker = await _start(conversation, alice_headers)
    frames = await receive_until(comm, "generation.completed", "generation.failed")
    await worker
    await comm.disconnect()
    assert frames[-1]["type"] == "generation.failed"
    assert len(fake_llm.requests) == 1
    assert "must not" not in "".join(d["text"] for d in deltas_of(frames))


async def test_fallback_provider_answers_when_the_first_keeps_failing(
    conversation, alice_headers, fake_llm, settings
):
    settings.LLM_FALLBACK_PROVIDERS = ["anthropic:claude-fake"]
    settings.ANTHROPIC_BASE_URL = fake_llm.url
    settings.ANTHROPIC_API_KEY = "test-key"
    fake_llm.push(Script.from_text("x", fault="http_500", times=3))
    fake_llm.push(Script.from_text("Hello from the fallback."))
    comm, generation_id, worker = await _start(conversation, alice_headers)
    frames = await receive_until(comm, "generation.completed", "generation.failed")
    await worker
    await comm.disconnect()
    assert frames[-1]["type"] == "generation.completed", frames[-1]
    assert frames[-1]["message"]["content"] == "Hello from the fallback."
    assert frames[-1]["message"]["model"] == "claude-fake"
    generation = await Generation.objects.aget(pk=generation_id)
    assert generation.prompt_manifest["provider_used"] == "anthropic"
    assert fake_llm.requests[-1]["model"] == "claude-fake"


async def test_heartbeats_while_waiting_for_the_first_token(
    conversation, alice_headers, fake_llm, settings
):
    settings.GENERATION_HEARTBEAT_SECONDS = 0.1
    fake_llm.push(Script.from_text("Slow start.", first_token_delay=0.6))
    comm, _generation_id, worker = await _start(conversation, alice_headers)
    frames = await receive_until(comm, "generation.completed")
    await worker
    await comm.disconnect()
    types = [f["type"] for f in frames]
    first_delta = types.index("generation.delta")
    assert types[:first_delta].count("generation.heartbeat") >= 2
    assert "generation.heartbeat" not in types[first_delta:]


async def test_first_token_timeout_fails_with_llm_timeout(
    conversation, alice_headers, fake_llm, settings
):
    settings.REQUEST_TIMEOUT_SECONDS = 0.3
    settings.LLM_RETRY_ATTEMPTS = 0
    fake_llm.push(Script.from_text("too late", first_token_delay=2.0))
    comm, _generation_id, worker = await _start(conversation, alice_headers)
    frames = await receive_until(comm, "generation.completed", "generation.failed")
    await worker
    await comm.disconnect()
    assert frames[-1]["type"] == "generation.failed"
    assert frames[-1]["error"]["code"] == "llm_timeout"

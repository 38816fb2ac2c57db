"""The whole path over the websocket: send, real RQ worker, streamed deltas, saved reply."""

from __future__ import annotations

import pytest
from asgiref.sync import sync_to_async

from fake_llm import Script
from llm_app.models import Generation
from messages_app.models import Message
from tests.helpers import (
    arun_llm_worker,
    communicator,
    deltas_of,
    llm_jobs,
    receive_until,
    send_message,
)

pytestmark = pytest.mark.django_db(transaction=True)

REPLY = "Ahoy, sailor! The sea is calm and the stars are bright tonight."


async def test_message_send_streams_deltas_that_join_to_the_saved_reply(
    conversation, alice_headers, fake_llm
):
    fake_llm.push(Script.from_text(REPLY, token_interval=0.002))
    comm = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    connected, _ = await comm.connect()
    assert connected
    created = await send_message(comm, "Hello!", "c-1")
    assert [f["type"] for f in created] == ["message.created", "message.created"]
    assert [f["message"]["role"] for f in created] == ["user", "assistant"]
    assert created[0]["client_id"] == "c-1"
    assert created[1]["message"]["status"] == "queued"

    await arun_llm_worker()
    frames = await receive_until(comm, "generation.completed", "generation.failed")
    await comm.disconnect()

    assert frames[0]["type"] == "generation.started"
    assert frames[-1]["type"] == "generation.completed"
    deltas = deltas_of(frames)
    assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
    assert len(deltas) > 3
    joined = "".join(d["text"] for d in deltas)
    saved = await Message.objects.aget(pk=created[1]["message"]["id"])
    assert joined == saved.content == REPLY
    assert frames[-1]["message"]["content"] == REPLY
    assert saved.status == "completed"
    assert saved.finish_reason == "stop"
    # The LLM's own count; a delta may hold several of its pieces.
    assert saved.completion_tokens == len(Script.from_text(REPLY).tokens) >= len(deltas)
    assert saved.prompt_tokens and saved.prompt_tokens > 0
    assert saved.ttft_ms is not None and saved.total_ms is not None
    assert saved.total_ms >= saved.ttft_ms


async def test_every_client_of_the_conversation_receives_the_stream(
    conversation, alice_headers, fake_llm
):
    fake_llm.push(Script.from_text(REPLY))
    first = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    second = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    assert (await first.connect())[0] and (await second.connect())[0]
    await send_message(first, "Hi both", "x")
    await arun_llm_worker()
    seen = []
    for comm in (first, second):
        frames = await receive_until(comm, "generation.completed")
        seen.append("".join(d["text"] for d in deltas_of(frames)))
        await comm.disconnect()
    assert seen == [REPLY, REPLY]


async def test_repeated_client_id_over_websocket_creates_one_message_and_one_job(
    conversation, alice_headers, fake_llm
):
    comm = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    await comm.connect()
    frame = {"type": "message.send", "content": "Once", "client_id": "dup-1"}
    await comm.send_json_to(frame)
    first = [await comm.receive_json_from(timeout=5) for _ in range(2)]
    await comm.send_json_to(frame)
    again = [await comm.receive_json_from(timeout=5) for _ in range(2)]
    await comm.disconnect()
    assert [f["message"]["id"] for f in first] == [f["message"]["id"] for f in again]
    assert await Message.objects.filter(conversation=conversation, role="user").acount() == 1
    assert len(await sync_to_async(llm_jobs)()) == 1


@pytest.mark.parametrize(
    ("script", "code"),
    [
        (Script.from_text("never sent", fault="http_500", times=3), "llm_error"),
        (Script.from_text("one two three four", fault="stall", stall_after=2), "llm_timeout"),
        (
            Script.from_text("one two three four", fault="malformed", fault_after=2),
            "llm_bad_stream",
        ),
        (Script.from_text("one two three four", fault="cut", fault_after=2), "llm_bad_stream"),
    ],
    ids=["http-500", "stall", "malformed-sse", "cut-mid-stream"],
)
async def test_provider_fault_ends_failed_and_the_client_is_told(
    conversation, alice_headers, fake_llm, script, code
):
    fake_llm.push(script)
    comm = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    await comm.connect()
    await send_message(comm, "Hi", "f")
    await arun_llm_worker()
    frames = await receive_until(comm, "generation.completed", "generation.failed")
    await comm.disconnect()
    failed = frames[-1]
    assert failed["type"] == "generation.failed"
    assert failed["error"]["code"] == code
    reply = await Message.objects.aget(pk=failed["message_id"])
    assert reply.status == "failed"
    # The text streamed before the fault is kept, exactly as the client saw it.
    assert reply.content == "".join(d["text"] for d in deltas_of(frames))
    generation = await Generation.objects.aget(pk=failed["generation_id"])
    assert generation.error_code == code and generation.finished_at is not None


async def test_llm_server_down_ends_failed_with_llm_unavailable(
    conversation, alice_headers, fake_llm, settings
):
    from messageservice.embedded import free_port

    settings.LLM_SERVICE_URL = f"http://127.0.0.1:{free_port()}/v1"
    comm = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    await comm.connect()
    await send_message(comm, "Anyone?")
    await arun_llm_worker()
    frames = await receive_until(comm, "generation.completed", "generation.failed")
    await comm.disconnect()
    assert frames[-1]["type"] == "generation.failed"
    assert frames[-1]["error"]["code"] == "llm_unavailable"
    assert not await Message.objects.filter(status__in=["queued", "streaming"]).aexists()


async def test_reply_longer_than_processing_timeout_fails_with_timeout(
    conversation, alice_headers, fake_llm, settings
):
    # The budget also covers the prompt's token counting and the start's write: room for some
    # deltas on a slow machine, far short of the 5 s stream.
    settings.MESSAGE_PROCESSING_TIMEOUT = 1.5
    fake_llm.push(Script.numbered(50, token_interval=0.1))
    comm = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    await comm.connect()
    await send_message(comm, "Talk a lot")
    await arun_llm_worker()
    frames = await receive_until(comm, "generation.completed", "generation.failed")
    await comm.disconnect()
    assert frames[-1]["type"] == "generation.failed"
    assert frames[-1]["error"]["code"] == "timeout"
    reply = await Message.objects.aget(pk=frames[-1]["message_id"])
    assert reply.status == "failed"
    assert 0 < len(deltas_of(frames)) < 50


async def test_a_job_that_dies_outside_the_loop_still_ends_failed_and_is_announced(
    conversation, alice_headers
):
    from llm_app.jobs import on_generation_job_failure

    comm = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    await comm.connect()
    created = await send_message(comm, "Will the worker survive?")
    [job] = await sync_to_async(llm_jobs)()
    # What RQ calls when the job raised outside run_generation or hit its job timeout.
    error = RuntimeError("work horse died")
    await sync_to_async(on_generation_job_failure)(job, None, RuntimeError, error, None)
    frames = await receive_until(comm, "generation.failed")
    await comm.disconnect()
    assert frames[-1]["error"]["code"] == "worker_error"
    reply = await Message.objects.aget(pk=created[1]["message"]["id"])
    assert reply.status == "failed"
    # Running the job afterwards changes nothing: a finished reply is left alone.
    await arun_llm_worker()
    assert (await Message.objects.aget(pk=reply.pk)).status == "failed"

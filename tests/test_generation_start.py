"""The worker asks the LLM before it marks the reply started; the start still gates every
delta, and a reply cancelled in between is never started, streamed or announced."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from fake_llm import Script
from llm_app.generation import run_generation
from llm_app.models import Generation
from llm_app.providers import close_providers
from messages_app.models import Message
from messages_app.services import message_send, reply_cancel
from messages_app.streams import log_length
from tests.helpers import communicator, deltas_of, receive_until, send_message

pytestmark = pytest.mark.django_db(transaction=True)


async def test_a_reply_cancelled_after_the_llm_was_asked_is_not_started(
    conversation, user, fake_llm
):
    fake_llm.push(Script.numbered(20, first_token_delay=4.0))
    # The fake LLM serves the whole test session; earlier tests may leave requests open.
    open_before = fake_llm.active_requests
    result = await sync_to_async(message_send)(conversation=conversation, author=user, content="q")
    reply = result.assistant_message
    states: list[str] = []

    def cancel_now() -> None:
        # A cancel that lands right after the request went out, before the start is written.
        try:
            states.append(Message.objects.get(pk=reply.pk).status)
            reply_cancel(reply=Message.objects.get(pk=reply.pk))
        finally:
            connections.close_all()

    def asked() -> None:
        thread = threading.Thread(target=cancel_now)
        thread.start()
        thread.join()

    began = time.monotonic()
    try:
        await run_generation(result.generation_id, reply.stream_key.hex, on_asked=asked)
        # It stopped asking as soon as the start failed, not at the first token (4 s).
        assert time.monotonic() - began < 3
    finally:
        await close_providers()
        await sync_to_async(connections.close_all)()
    assert states == ["queued"]  # asked while the reply was still queued
    assert len(fake_llm.requests) == 1
    saved = await Message.objects.select_related("generation").aget(pk=reply.pk)
    assert (saved.status, saved.content, saved.stream_seq) == ("cancelled", "", 0)
    assert (saved.generation.attempt, saved.generation.started_at) == (0, None)
    assert await sync_to_async(log_length)(reply.stream_key) == 0  # nothing streamed
    for _ in range(300):  # and the LLM's stream was closed (the fake notices after its delay)
        if fake_llm.active_requests <= open_before:
            break
        await asyncio.sleep(0.02)
    assert fake_llm.active_requests <= open_before


async def test_an_instant_first_token_still_comes_after_generation_started(
    conversation, alice_headers, fake_llm
):
    # The LLM answers at once: its first token races the start, which must win at the client.
    fake_llm.push(Script.numbered(5, first_token_delay=0.0, token_interval=0.0))
    comm = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    assert (await comm.connect())[0]
    created = await send_message(comm, "now")
    generation_id = created[1]["message"]["generation_id"]
    try:
        await run_generation(generation_id, None)
    finally:
        await close_providers()
        await sync_to_async(connections.close_all)()
    frames = await receive_until(comm, "generation.completed")
    await comm.disconnect()
    assert frames[0]["type"] == "generation.started"
    assert "".join(d["text"] for d in deltas_of(frames)) == "token1 token2 token3 token4 token5"
    generation = await Generation.objects.select_related("message").aget(pk=generation_id)
    assert generation.message.status == "completed" and generation.attempt == 1
    assert generation.started_at is not None and generation.first_token_at is not None
    assert generation.started_at <= generation.first_token_at

"""Deleting a conversation stops its running reply: clients are told, the job ends cleanly."""

from __future__ import annotations

import asyncio

import django_rq
import pytest
from asgiref.sync import sync_to_async
from rest_framework.test import APIClient

from fake_llm import Script
from messages_app.models import Conversation, Message
from tests.helpers import (
    arun_llm_worker,
    communicator,
    deltas_of,
    receive_until,
    run_llm_worker,
    send_message,
)

pytestmark = pytest.mark.django_db(transaction=True)


async def test_deleting_a_conversation_mid_reply_cancels_it_and_closes_its_sockets(
    conversation, alice_headers, user, fake_llm
):
    fake_llm.push(Script.numbered(500, token_interval=0.02))
    comm = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    await comm.connect()
    created = await send_message(comm, "Talk for a long time")
    reply_id = created[1]["message"]["id"]
    worker = asyncio.ensure_future(arun_llm_worker())
    frames: list[dict] = []
    while len(deltas_of(frames)) < 5:
        frames.append(await comm.receive_json_from(timeout=10))
    api = APIClient()
    api.force_authenticate(user)
    resp = await sync_to_async(api.delete)(f"/api/v1/conversations/{conversation.pk}/")
    assert resp.status_code == 204
    frames += await receive_until(comm, "conversation.deleted", timeout=10)
    closed = await comm.receive_output(timeout=5)
    await asyncio.wait_for(worker, timeout=20)
    types = [f["type"] for f in frames]
    assert types.index("generation.cancelled") < types.index("conversation.deleted")
    cancelled = frames[types.index("generation.cancelled")]
    assert cancelled["message"]["id"] == reply_id
    assert cancelled["message"]["finish_reason"] == "conversation_deleted"
    assert closed == {"type": "websocket.close", "code": 4404}
    assert not await Conversation.objects.filter(pk=conversation.pk).aexists()
    assert not await Message.objects.filter(pk=reply_id).aexists()
    failed = await sync_to_async(lambda: django_rq.get_queue("llm").failed_job_registry.count)()
    assert failed == 0, "the job must end without an error"
    # The provider stream was closed, not left running to its end (the fake notices at its
    # next write).
    for _ in range(250):
        if fake_llm.active_requests == 0:
            break
        await asyncio.sleep(0.02)
    assert fake_llm.active_requests == 0


async def test_message_send_on_a_conversation_deleted_meanwhile_is_not_found(
    conversation, alice_headers
):
    comm = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    await comm.connect()
    await Conversation.objects.filter(pk=conversation.pk).adelete()
    await comm.send_json_to({"type": "message.send", "content": "anyone there?"})
    frame = await comm.receive_json_from(timeout=5)
    await comm.disconnect()
    assert frame["type"] == "error" and frame["error"]["code"] == "not_found"
    assert not await Message.objects.filter(role="user").aexists()


def test_deleting_a_conversation_with_a_queued_reply_leaves_its_job_harmless(
    api, conversation, fake_llm
):
    sent = api.post(
        f"/api/v1/conversations/{conversation.pk}/messages/", {"content": "hi"}, format="json"
    ).json()
    assert api.delete(f"/api/v1/conversations/{conversation.pk}/").status_code == 204
    run_llm_worker()
    queue = django_rq.get_queue("llm")
    assert queue.failed_job_registry.count == 0
    assert fake_llm.requests == [], "no LLM call for a deleted conversation"
    assert not Message.objects.filter(pk=sent["assistant_message"]["id"]).exists()

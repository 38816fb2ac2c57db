"""Cancel: over the websocket or REST, a reply stops, keeps its text and every client is told."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from rest_framework.test import APIClient

from fake_llm import Script
from messages_app.models import Message
from tests.helpers import (
    deltas_of,
    receive_deltas,
    receive_until,
    start_streaming,
)

pytestmark = pytest.mark.django_db(transaction=True)


async def test_cancel_over_the_websocket_stops_the_stream_and_keeps_the_text(
    conversation, alice_headers, fake_llm
):
    fake_llm.push(Script.numbered(200, token_interval=0.25))
    comm, generation_id, worker = await start_streaming(conversation, alice_headers)
    await receive_deltas(comm, 3)
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
    for _ in range(250):  # the server notices the closed connection at its next write
        if fake_llm.active_requests == 0:
            break
        await asyncio.sleep(0.02)
    assert fake_llm.active_requests == 0, "the provider stream was closed"


async def test_cancel_over_rest_and_cancel_of_a_finished_generation_is_409(
    conversation, alice_headers, user, fake_llm
):
    fake_llm.push(Script.numbered(200, token_interval=0.05))
    comm, generation_id, worker = await start_streaming(conversation, alice_headers)
    await receive_deltas(comm, 2)
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

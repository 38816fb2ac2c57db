"""Who gets in and what they see: sessions, websocket login and tickets, other users' data.

JWTs are in tests/test_auth_tokens.py; revocation in tests/test_auth_revocation.py.
"""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from messages_app.services import conversation_create
from tests.helpers import ORIGIN, communicator, session_headers
from tests.test_auth_tokens import assert_error

pytestmark = pytest.mark.django_db(transaction=True)


def test_session_login_opens_the_api_and_the_chat_page(user, client):
    assert client.get("/").status_code == 302
    client.login(username="alice", password="pw-123456")
    assert client.get("/api/v1/conversations/").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and b"chat/app.js" in page.content


def test_another_users_conversation_is_404_over_rest(conversation, other_user):
    client = APIClient()
    client.force_authenticate(other_user)
    base = f"/api/v1/conversations/{conversation.pk}"
    assert_error(client.get(f"{base}/"), 404, "not_found")
    assert_error(client.get(f"{base}/messages/"), 404, "not_found")
    assert_error(client.post(f"{base}/messages/", {"content": "hi"}, format="json"), 404)
    assert_error(client.delete(f"{base}/"), 404)
    greeting_id = conversation.active_leaf_id
    assert_error(
        client.post(f"/api/v1/messages/{greeting_id}/feedback/", {"rating": 1}, format="json"),
        404,
    )


async def test_another_users_conversation_is_not_found_over_the_websocket(conversation, other_user):
    from asgiref.sync import sync_to_async

    headers = await sync_to_async(session_headers)(other_user)
    comm = communicator(f"/ws/conversations/{conversation.pk}/", headers)
    connected, _ = await comm.connect()
    assert connected
    frame = await comm.receive_json_from(timeout=5)
    assert frame == {
        "type": "error",
        "error": {"code": "not_found", "message": frame["error"]["message"]},
    }
    assert (await comm.receive_output(timeout=5))["code"] == 4404
    await comm.disconnect()


async def test_websocket_without_login_is_told_and_closed(conversation):
    comm = communicator(f"/ws/conversations/{conversation.pk}/")
    await comm.connect()
    frame = await comm.receive_json_from(timeout=5)
    assert frame["error"]["code"] == "not_authenticated"
    assert (await comm.receive_output(timeout=5))["code"] == 4401
    await comm.disconnect()


async def test_cross_origin_websocket_handshake_is_refused(conversation, alice_headers):
    headers = [h for h in alice_headers if h[0] != b"origin"] + [
        (b"origin", b"http://evil.example")
    ]
    comm = communicator(f"/ws/conversations/{conversation.pk}/", headers)
    connected, _ = await comm.connect()
    assert not connected
    await comm.disconnect()


def _ticket_for(user) -> str:
    client = APIClient()
    client.force_authenticate(user)
    resp = client.post("/api/v1/ws-tickets/")
    assert resp.status_code == 201
    assert 0 < resp.json()["expires_in"] <= 60
    return resp.json()["ticket"]


async def test_websocket_ticket_works_once(conversation, user):
    from asgiref.sync import sync_to_async

    ticket = await sync_to_async(_ticket_for)(user)
    path = f"/ws/conversations/{conversation.pk}/?ticket={ticket}"
    comm = communicator(path, [ORIGIN])
    assert (await comm.connect())[0]
    await comm.send_json_to({"type": "ping"})
    assert await comm.receive_json_from(timeout=5) == {"type": "pong"}
    await comm.disconnect()

    replay = communicator(path, [ORIGIN])
    await replay.connect()
    frame = await replay.receive_json_from(timeout=5)
    assert frame["error"]["code"] == "not_authenticated"
    await replay.disconnect()


async def test_ticket_of_another_user_does_not_open_my_conversation(conversation, other_user):
    from asgiref.sync import sync_to_async

    ticket = await sync_to_async(_ticket_for)(other_user)
    comm = communicator(f"/ws/conversations/{conversation.pk}/?ticket={ticket}", [ORIGIN])
    await comm.connect()
    assert (await comm.receive_json_from(timeout=5))["error"]["code"] == "not_found"
    await comm.disconnect()


def test_users_list_only_their_own_conversations(conversation, other_user, character):
    mine = conversation_create(owner=other_user, character=character)
    client = APIClient()
    client.force_authenticate(other_user)
    ids = [c["id"] for c in client.get("/api/v1/conversations/").json()["results"]]
    assert ids == [mine.pk]

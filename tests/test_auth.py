"""Auth: our JWTs, the auth service's JWTs, sessions, websocket tickets, and who sees what."""

from __future__ import annotations

import time

import jwt
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from messages_app.services import conversation_create
from tests.helpers import ORIGIN, communicator, session_headers

pytestmark = pytest.mark.django_db(transaction=True)


def _token(**claims):
    payload = {"sub": "alice", "exp": int(time.time()) + 300, **claims}
    return jwt.encode(payload, settings.JWT_SECRET_KEY, algorithm="HS256")


def _assert_error(response, status, code=None):
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"} and {"code", "message", "details"} <= set(body["error"])
    if code:
        assert body["error"]["code"] == code


def test_password_login_gives_tokens_that_open_the_api(user):
    client = APIClient()
    resp = client.post(
        "/api/v1/auth/token/", {"username": "alice", "password": "pw-123456"}, format="json"
    )
    assert resp.status_code == 200
    tokens = resp.json()
    claims = jwt.decode(tokens["access"], settings.JWT_SECRET_KEY, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {tokens['access']}")
    assert client.get("/api/v1/conversations/").status_code == 200
    refreshed = client.post("/api/v1/auth/token/refresh/", {"refresh": tokens["refresh"]})
    assert refreshed.status_code == 200 and refreshed.json()["access"]


def test_wrong_password_is_401_in_the_error_shape(user):
    resp = APIClient().post(
        "/api/v1/auth/token/", {"username": "alice", "password": "nope"}, format="json"
    )
    _assert_error(resp, 401)


def test_token_from_the_auth_service_provisions_its_subject_as_a_user(db):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {_token(sub='auth-service-user-42')}")
    assert client.get("/api/v1/conversations/").status_code == 200
    assert get_user_model().objects.filter(username="auth-service-user-42").exists()


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        jwt.encode({"sub": "alice", "exp": int(time.time()) + 300}, "wrong-key" * 4, "HS256"),
        "expired",
        "refresh",
        "no-sub",
    ],
    ids=["garbage", "wrong-key", "expired", "refresh-token", "no-subject"],
)
def test_bad_or_expired_token_is_401(user, token):
    if token == "expired":
        token = _token(exp=int(time.time()) - 60)
    elif token == "refresh":
        token = _token(token_type="refresh")
    elif token == "no-sub":
        token = jwt.encode({"exp": int(time.time()) + 60}, settings.JWT_SECRET_KEY, "HS256")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    _assert_error(client.get("/api/v1/conversations/"), 401, "authentication_failed")


def test_no_credentials_is_401(db):
    _assert_error(APIClient().get("/api/v1/conversations/"), 401, "not_authenticated")


def test_session_login_opens_the_api_and_the_chat_page(user, client):
    assert client.get("/").status_code == 302
    client.login(username="alice", password="pw-123456")
    assert client.get("/api/v1/conversations/").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and b"chat.js" in page.content


def test_another_users_conversation_is_404_over_rest(conversation, other_user):
    client = APIClient()
    client.force_authenticate(other_user)
    base = f"/api/v1/conversations/{conversation.pk}"
    _assert_error(client.get(f"{base}/"), 404, "not_found")
    _assert_error(client.get(f"{base}/messages/"), 404, "not_found")
    _assert_error(client.post(f"{base}/messages/", {"content": "hi"}, format="json"), 404)
    _assert_error(client.delete(f"{base}/"), 404)
    greeting_id = conversation.active_leaf_id
    _assert_error(
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

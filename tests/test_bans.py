"""Bans: a banned user gets 403 `banned` with the end time on the REST API and is refused and
disconnected on the websocket (4403); login still works; an unban or an expired ban restores
access."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from asgiref.sync import sync_to_async
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from messages_app import moderation
from messages_app.models import Message, UserStanding
from messages_app.services import conversation_create
from tests.helpers import communicator, session_headers
from tests.moderation_helpers import make_moderator
from tests.test_auth_tokens import assert_error, bearer, login

pytestmark = pytest.mark.django_db(transaction=True)


def ban(user, *, hours: float | None = 2, reason: str = "spamming") -> None:
    until = timezone.now() + timedelta(hours=hours) if hours is not None else None
    moderation.user_ban(
        user, until=until, permanent=hours is None, reason=reason, actor=make_moderator()
    )


def assert_banned(response, *, permanent: bool = False, reason: str = "spamming") -> dict:
    assert_error(response, 403, "banned")
    details = response.json()["error"]["details"]
    assert details["permanent"] is permanent and details["reason"] == reason
    if permanent:
        assert details["until"] is None
    else:
        until = datetime.fromisoformat(details["until"].replace("Z", "+00:00"))
        assert until > timezone.now()
    return details


# --- REST ------------------------------------------------------------------------------------


def test_a_banned_user_gets_403_banned_with_the_end_time_everywhere_in_the_api(api, conversation):
    ban(conversation.owner)
    details = assert_banned(api.get("/api/v1/conversations/"))
    standing = UserStanding.objects.get(pk=conversation.owner.pk)
    until = datetime.fromisoformat(details["until"].replace("Z", "+00:00"))
    assert standing.banned_until is not None
    assert abs((until - standing.banned_until).total_seconds()) < 0.001
    assert_banned(
        api.post(
            f"/api/v1/conversations/{conversation.pk}/messages/", {"content": "hi"}, format="json"
        )
    )
    assert_banned(api.get(f"/api/v1/conversations/{conversation.pk}/messages/"))
    assert_banned(api.post("/api/v1/ws-tickets/"))
    assert_banned(api.get("/api/v1/characters/"))
    assert Message.objects.filter(conversation=conversation).count() == 1  # the greeting only


def test_a_banned_user_can_still_log_in_to_read_why(user):
    ban(user, hours=None, reason="hate speech")
    tokens = login()  # the token endpoint answers 200
    assert_banned(
        bearer(tokens["access"]).get("/api/v1/conversations/"), permanent=True, reason="hate speech"
    )
    refreshed = APIClient().post(
        "/api/v1/auth/token/refresh/", {"refresh": tokens["refresh"]}, format="json"
    )
    assert refreshed.status_code == 200
    session = Client()
    assert (
        session.post("/accounts/login/", {"username": "alice", "password": "pw-123456"}).status_code
        == 302
    )
    assert_banned(session.get("/api/v1/conversations/"), permanent=True, reason="hate speech")


def test_other_users_are_not_affected(user, other_user):
    ban(user)
    client = APIClient()
    client.force_authenticate(other_user)
    assert client.get("/api/v1/conversations/").status_code == 200


def test_an_unban_restores_access(api, user):
    ban(user)
    assert_banned(api.get("/api/v1/conversations/"))
    moderation.user_unban(user, actor=make_moderator(), reason="appeal")
    assert api.get("/api/v1/conversations/").status_code == 200


def test_an_expired_ban_is_not_enforced(api, user):
    ban(user)
    UserStanding.objects.filter(pk=user.pk).update(
        banned_until=timezone.now() - timedelta(seconds=1)
    )
    assert api.get("/api/v1/conversations/").status_code == 200


def test_anonymous_requests_stay_401(db):
    assert_error(APIClient().get("/api/v1/conversations/"), 401)


# --- websocket ---------------------------------------------------------------------------------


async def _open(conversation, user):
    headers = await sync_to_async(session_headers)(user)
    comm = communicator(f"/ws/conversations/{conversation.pk}/", headers)
    assert (await comm.connect())[0]
    await comm.send_json_to({"type": "ping"})
    assert await comm.receive_json_from(timeout=5) == {"type": "pong"}
    return comm


async def _assert_closed_as_banned(comm, *, permanent: bool = False):
    frame = await comm.receive_json_from(timeout=5)
    assert frame["type"] == "error" and frame["error"]["code"] == "banned", frame
    details = frame["error"]["details"]
    assert details["permanent"] is permanent and details["reason"] == "spamming"
    assert (details["until"] is None) is permanent
    assert (await comm.receive_output(timeout=5)) == {"type": "websocket.close", "code": 4403}
    await comm.disconnect()


async def test_a_banned_user_is_refused_at_connect_with_4403(conversation, user):
    await sync_to_async(ban)(user)
    headers = await sync_to_async(session_headers)(user)
    comm = communicator(f"/ws/conversations/{conversation.pk}/", headers)
    assert (await comm.connect())[0]
    await _assert_closed_as_banned(comm)


async def test_a_ban_closes_the_open_sockets_of_that_user_only(
    conversation, user, other_user, character
):
    theirs = await sync_to_async(conversation_create)(owner=other_user, character=character)
    mine = await _open(conversation, user)
    second = await _open(conversation, user)
    other = await _open(theirs, other_user)
    await sync_to_async(ban)(user, hours=None)
    await _assert_closed_as_banned(mine, permanent=True)
    await _assert_closed_as_banned(second, permanent=True)
    await other.send_json_to({"type": "ping"})
    assert await other.receive_json_from(timeout=5) == {"type": "pong"}
    await other.disconnect()


async def test_after_an_unban_the_websocket_connects_again(conversation, user):
    await sync_to_async(ban)(user)
    await sync_to_async(moderation.user_unban)(user, actor=None, reason="")
    comm = await _open(conversation, user)
    await comm.disconnect()


@pytest.mark.parametrize("hours", [2, None])
def test_the_send_service_itself_refuses_a_banned_author_and_saves_nothing(
    user, conversation, settings, hours
):
    """Whatever the way in (a socket that was open before the ban reached it, say), the send
    reads the author's ban in its own locking statement: Banned, nothing saved, nothing
    counted."""
    from messages_app import limits
    from messages_app.errors import Banned
    from messages_app.services import message_send

    settings.ENABLE_RATE_LIMITS = True
    ban(user, hours=hours)
    before = Message.objects.count()
    with pytest.raises(Banned) as raised:
        message_send(conversation=conversation, author=user, content="hello")
    assert raised.value.details["permanent"] is (hours is None)
    assert Message.objects.count() == before
    assert limits.usage(user)["minute"] == 0


def test_an_expired_ban_does_not_stop_the_send_service(user, conversation, fake_llm):
    from messages_app.services import message_send

    ban(user)
    UserStanding.objects.filter(user=user).update(
        banned_until=timezone.now() - timedelta(seconds=1)
    )
    result = message_send(conversation=conversation, author=user, content="hello")
    assert result.created

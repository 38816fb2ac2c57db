"""A deleted or deactivated user's tokens stop working and never bring the account back; a
password change ends the tokens issued before it; open websockets of such users are closed."""

from __future__ import annotations

from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth import get_user_model
from django.utils import timezone
from rest_framework.test import APIClient

from messages_app.models import DeletedAccount, subject_digest
from tests.factories import UserFactory
from tests.helpers import communicator, session_headers
from tests.test_auth_tokens import assert_error, bearer, external_token, login

pytestmark = pytest.mark.django_db(transaction=True)

User = get_user_model()


def refresh(token: str):
    return APIClient().post("/api/v1/auth/token/refresh/", {"refresh": token})


def usernames() -> list[str]:
    return list(User.objects.order_by("username").values_list("username", flat=True))


# --- deleted users ---------------------------------------------------------------------------


def test_access_token_of_a_deleted_user_is_401_and_no_account_is_created(user):
    tokens = login()
    user.delete()
    assert_error(bearer(tokens["access"]).get("/api/v1/conversations/"), 401)
    assert usernames() == []


def test_refresh_token_of_a_deleted_user_is_401_not_500_and_no_account_is_created(user):
    tokens = login()
    user.delete()
    assert_error(refresh(tokens["refresh"]), 401, "authentication_failed")
    assert usernames() == []


def test_our_tokens_do_not_open_a_new_account_of_the_same_name(user):
    tokens = login()
    user.delete()
    UserFactory(username="alice")  # someone else, later, under the same name
    assert_error(bearer(tokens["access"]).get("/api/v1/conversations/"), 401)
    assert_error(refresh(tokens["refresh"]), 401)


def test_auth_service_token_issued_before_the_deletion_does_not_recreate_the_account(db):
    token = external_token(sub="svc-user")
    assert bearer(token).get("/api/v1/conversations/").status_code == 200
    User.objects.get(username="svc-user").delete()
    assert DeletedAccount.objects.filter(subject_sha256=subject_digest("svc-user")).exists()
    assert_error(bearer(token).get("/api/v1/conversations/"), 401, "authentication_failed")
    assert usernames() == []


def test_a_tombstone_keeps_no_username(db):
    User.objects.create_user(username="private-name").delete()
    (tombstone,) = DeletedAccount.objects.all()
    assert "private-name" not in str(vars(tombstone))


def test_auth_service_token_issued_after_the_deletion_provisions_the_subject_again(db):
    User.objects.create_user(username="svc-user").delete()
    # The auth service still vouches for the subject with a token issued after the deletion
    # (beyond the clock-skew leeway).
    DeletedAccount.objects.update(deleted_at=timezone.now() - timedelta(minutes=1))
    assert bearer(external_token(sub="svc-user")).get("/api/v1/conversations/").status_code == 200
    assert usernames() == ["svc-user"]


def test_a_second_deletion_moves_the_tombstone_forward(db):
    User.objects.create_user(username="svc-user").delete()
    DeletedAccount.objects.update(deleted_at=timezone.now() - timedelta(minutes=1))
    token = external_token(sub="svc-user")
    assert bearer(token).get("/api/v1/conversations/").status_code == 200
    User.objects.get(username="svc-user").delete()
    assert_error(bearer(token).get("/api/v1/conversations/"), 401)
    assert usernames() == []


# --- deactivated users -------------------------------------------------------------------------


def test_tokens_of_a_deactivated_user_are_401(user):
    tokens = login()
    external = external_token(sub="alice")
    User.objects.filter(pk=user.pk).update(is_active=False)
    assert_error(bearer(tokens["access"]).get("/api/v1/conversations/"), 401)
    assert_error(bearer(external).get("/api/v1/conversations/"), 401)
    assert_error(refresh(tokens["refresh"]), 401, "authentication_failed")
    assert usernames() == ["alice"]


# --- password changes --------------------------------------------------------------------------


def test_changing_the_password_ends_the_refresh_and_access_tokens_issued_before(user):
    old = login()
    user.set_password("a-new-password-42")
    user.save()
    assert_error(refresh(old["refresh"]), 401, "authentication_failed")
    assert_error(bearer(old["access"]).get("/api/v1/conversations/"), 401)
    new = login(password="a-new-password-42")
    assert refresh(new["refresh"]).status_code == 200
    assert bearer(new["access"]).get("/api/v1/conversations/").status_code == 200


def test_saving_the_user_without_a_password_change_keeps_the_tokens(user):
    tokens = login()
    user.first_name = "Alice"
    user.save()
    assert refresh(tokens["refresh"]).status_code == 200


def test_a_token_issued_under_a_previous_secret_key_survives_a_rotation(user, settings):
    tokens = login()
    settings.SECRET_KEY_FALLBACKS = [settings.SECRET_KEY]
    settings.SECRET_KEY = "a-new-django-secret-key-for-rotation-0123456789"
    assert refresh(tokens["refresh"]).status_code == 200


# --- open websockets ---------------------------------------------------------------------------


async def _open(conversation, user):
    headers = await sync_to_async(session_headers)(user)
    comm = communicator(f"/ws/conversations/{conversation.pk}/", headers)
    assert (await comm.connect())[0]
    await comm.send_json_to({"type": "ping"})
    assert await comm.receive_json_from(timeout=5) == {"type": "pong"}
    return comm


async def _assert_closed_as_unauthenticated(comm):
    frame = await comm.receive_json_from(timeout=5)
    assert frame["type"] == "error"
    assert frame["error"]["code"] == "not_authenticated"
    assert (await comm.receive_output(timeout=5)) == {"type": "websocket.close", "code": 4401}
    await comm.disconnect()


def _deactivate(user) -> None:
    user.is_active = False
    user.save()


async def test_open_websocket_of_a_deactivated_user_gets_an_error_and_is_closed_4401(
    conversation, user
):
    comm = await _open(conversation, user)
    await sync_to_async(_deactivate)(user)
    await _assert_closed_as_unauthenticated(comm)


async def test_open_websocket_of_a_deleted_user_gets_an_error_and_is_closed_4401(
    conversation, user
):
    comm = await _open(conversation, user)
    await sync_to_async(user.delete)()
    await _assert_closed_as_unauthenticated(comm)


async def test_deactivating_one_user_leaves_other_users_websockets_open(
    conversation, user, other_user, character
):
    from messages_app.services import conversation_create

    theirs = await sync_to_async(conversation_create)(owner=other_user, character=character)
    mine = await _open(conversation, user)
    other = await _open(theirs, other_user)
    await sync_to_async(_deactivate)(other_user)
    await _assert_closed_as_unauthenticated(other)
    await mine.send_json_to({"type": "ping"})
    assert await mine.receive_json_from(timeout=5) == {"type": "pong"}
    await mine.disconnect()

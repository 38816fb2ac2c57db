"""JWTs: ours from /api/v1/auth/token/, and the external auth service's (same key, `sub` = user).

tests/test_auth_revocation.py covers tokens of deleted, deactivated and re-passworded users.
"""

from __future__ import annotations

import time

import jwt
import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from messages_app.accounts.auth import subject_max_length

pytestmark = pytest.mark.django_db(transaction=True)

User = get_user_model()


def external_token(**claims):
    """A token as the auth service signs it: `sub`, `iat`, `exp`, nothing of ours."""
    now = int(time.time())
    payload = {"sub": "alice", "iat": now, "exp": now + 300, **claims}
    return jwt.encode(payload, settings.JWT_SECRET_KEY, algorithm="HS256")


def bearer(token: str, scheme: str = "Bearer") -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"{scheme} {token}")
    return client


def login(username: str = "alice", password: str = "pw-123456") -> dict[str, str]:  # noqa: S107
    resp = APIClient().post(
        "/api/v1/auth/token/", {"username": username, "password": password}, format="json"
    )
    assert resp.status_code == 200, resp.content
    return resp.json()


def assert_error(response, status, code=None):
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"} and {"code", "message", "details"} <= set(body["error"])
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert not body["error"]["message"].startswith("{"), "a dict leaked into the message"
    if code:
        assert body["error"]["code"] == code


# --- our tokens ------------------------------------------------------------------------------


def test_password_login_gives_a_pair_that_opens_the_api_and_refreshes(user):
    tokens = login()
    claims = jwt.decode(tokens["access"], settings.JWT_SECRET_KEY, algorithms=["HS256"])
    assert claims["sub"] == "alice"
    assert claims["token_type"] == "access"
    client = bearer(tokens["access"])
    assert client.get("/api/v1/conversations/").status_code == 200
    refreshed = APIClient().post("/api/v1/auth/token/refresh/", {"refresh": tokens["refresh"]})
    assert refreshed.status_code == 200
    assert bearer(refreshed.json()["access"]).get("/api/v1/conversations/").status_code == 200


def test_the_bearer_scheme_is_case_insensitive(user):
    access = login()["access"]
    assert bearer(access, scheme="bearer").get("/api/v1/conversations/").status_code == 200


def test_wrong_password_is_401_in_the_error_shape(user):
    resp = APIClient().post(
        "/api/v1/auth/token/", {"username": "alice", "password": "nope"}, format="json"
    )
    assert_error(resp, 401)


def test_our_access_token_is_refused_as_a_refresh_token_and_the_reverse(user):
    tokens = login()
    assert_error(
        APIClient().post("/api/v1/auth/token/refresh/", {"refresh": tokens["access"]}),
        401,
        "authentication_failed",
    )
    assert_error(bearer(tokens["refresh"]).get("/api/v1/conversations/"), 401)


def test_an_external_token_cannot_be_refreshed_here(user):
    assert_error(
        APIClient().post("/api/v1/auth/token/refresh/", {"refresh": external_token()}), 401
    )


def test_a_garbage_refresh_token_is_401_with_a_readable_message(db):
    resp = APIClient().post("/api/v1/auth/token/refresh/", {"refresh": "not-a-jwt"})
    assert_error(resp, 401, "authentication_failed")
    assert resp.json()["error"]["details"] == {"reason": "token_not_valid"}


# --- the auth service's tokens -----------------------------------------------------------------


def test_token_from_the_auth_service_provisions_its_subject_as_a_user_without_a_password(db):
    client = bearer(external_token(sub="auth-service-user-42"))
    assert client.get("/api/v1/conversations/").status_code == 200
    assert client.get("/api/v1/conversations/").status_code == 200
    (user,) = User.objects.filter(username="auth-service-user-42")
    assert not user.has_usable_password()


def test_auth_service_token_with_an_access_token_type_and_jti_works_too(db):
    client = bearer(external_token(sub="typed", token_type="access", jti="abc"))
    assert client.get("/api/v1/conversations/").status_code == 200


def test_a_subject_longer_than_the_username_field_is_refused_not_cut(db):
    limit = subject_max_length()
    client = bearer(external_token(sub="s" * (limit + 5)))
    resp = client.get("/api/v1/conversations/")
    assert_error(resp, 401, "authentication_failed")
    assert str(limit) in resp.json()["error"]["message"]
    # Two long subjects sharing their first `limit` characters do not share an account.
    other = bearer(external_token(sub="s" * (limit + 6)))
    assert_error(other.get("/api/v1/conversations/"), 401)
    assert not User.objects.exists()


def test_a_subject_of_exactly_the_username_length_is_provisioned(db):
    limit = subject_max_length()
    assert bearer(external_token(sub="s" * limit)).get("/api/v1/conversations/").status_code == 200
    assert User.objects.filter(username="s" * limit).exists()


def test_an_auth_service_token_living_longer_than_the_cap_is_refused(db, settings):
    settings.JWT_EXTERNAL_MAX_LIFETIME_MINUTES = 60
    now = int(time.time())
    long_lived = external_token(sub="longlived", iat=now, exp=now + 61 * 60)
    resp = bearer(long_lived).get("/api/v1/conversations/")
    assert_error(resp, 401, "authentication_failed")
    assert "60 minutes" in resp.json()["error"]["message"]
    at_the_cap = external_token(sub="atthecap", iat=now, exp=now + 60 * 60)
    assert bearer(at_the_cap).get("/api/v1/conversations/").status_code == 200
    assert list(User.objects.values_list("username", flat=True)) == ["atthecap"]


def test_an_auth_service_token_without_iat_is_refused_since_its_lifetime_is_unknown(db):
    token = jwt.encode(
        {"sub": "no-iat", "exp": int(time.time()) + 60}, settings.JWT_SECRET_KEY, "HS256"
    )
    assert_error(bearer(token).get("/api/v1/conversations/"), 401, "authentication_failed")
    assert not User.objects.exists()


def test_our_claims_on_a_token_do_not_let_it_provision_a_user(db):
    # Shaped like ours (issuer and fingerprint) but naming a user that does not exist.
    token = external_token(
        sub="ghost", iss="message-service", pwd_fingerprint="0" * 32, token_type="access", jti="x"
    )
    assert_error(bearer(token).get("/api/v1/conversations/"), 401)
    assert not User.objects.filter(username="ghost").exists()


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        "wrong-key",
        "expired",
        "refresh",
        "no-sub",
        "empty-sub",
        "number-sub",
        "issued-in-the-future",
    ],
)
def test_bad_or_expired_token_is_401(user, token):
    now = int(time.time())
    token = {
        "not-a-jwt": "not-a-jwt",
        "wrong-key": jwt.encode({"sub": "alice", "iat": now, "exp": now + 300}, "k" * 40),
        "expired": external_token(iat=now - 120, exp=now - 60),
        "refresh": external_token(token_type="refresh"),
        "no-sub": jwt.encode({"iat": now, "exp": now + 60}, settings.JWT_SECRET_KEY),
        "empty-sub": external_token(sub=""),
        "number-sub": external_token(sub=42),
        "issued-in-the-future": external_token(iat=now + 600, exp=now + 900),
    }[token]
    assert_error(bearer(token).get("/api/v1/conversations/"), 401, "authentication_failed")
    assert list(User.objects.values_list("username", flat=True)) == ["alice"]


def test_no_credentials_is_401(db):
    assert_error(APIClient().get("/api/v1/conversations/"), 401, "not_authenticated")

"""Login throttling (django-axes on the Redis cache): wrong passwords per username and per
client address, on the token endpoint, the session login and the admin login."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from axes.helpers import get_cache
from django.contrib.auth.hashers import MD5PasswordHasher
from django.test import AsyncClient, Client
from rest_framework.test import APIClient

from messages_app.accounts.throttle import client_address
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "pw-123456"  # the factories' test password
LIMIT = 3
TOKEN_URL = "/api/v1/auth/token/"
LOGIN_URL = "/accounts/login/"
ADMIN_LOGIN_URL = "/admin/login/"


class CountingHasher(MD5PasswordHasher):
    """The test hasher, counting how often a password is hashed."""

    calls = 0

    def encode(self, password: str, salt: str) -> str:
        CountingHasher.calls += 1
        return super().encode(password, salt)


@pytest.fixture(autouse=True)
def _limits(settings: Any) -> None:
    settings.LOGIN_FAILURE_LIMIT = LIMIT
    settings.LOGIN_COOLOFF_SECONDS = 60


@pytest.fixture
def alice(db: None) -> Any:
    return UserFactory(username="alice")


def token(username: str, password: str, addr: str = "10.0.0.1", **extra: Any) -> Any:
    return APIClient().post(
        TOKEN_URL,
        {"username": username, "password": password},
        format="json",
        REMOTE_ADDR=addr,
        **extra,
    )


def session_login(
    username: str, password: str, addr: str = "10.0.0.1", url: str = LOGIN_URL
) -> Any:
    return Client().post(url, {"username": username, "password": password}, REMOTE_ADDR=addr)


def assert_throttled(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 429, resp.content
    assert 0 < int(resp["Retry-After"]) <= 60
    body = resp.json()
    assert body == {
        "error": {
            "code": "login_throttled",
            "message": "Too many failed login attempts. Try again later.",
            "details": {"retry_after": int(resp["Retry-After"])},
        }
    }
    return body


def assert_form_throttled(resp: Any) -> None:
    assert resp.status_code == 429, resp.content
    assert 0 < int(resp["Retry-After"]) <= 60
    assert b'data-testid="login-throttled"' in resp.content
    assert b"Too many failed login attempts. Try again later." in resp.content


# --- the token endpoint -------------------------------------------------------------------------


def test_token_endpoint_locks_a_username_after_the_limit_even_for_the_right_password(
    alice: Any,
) -> None:
    for _ in range(LIMIT - 1):
        assert token("alice", "wrong").status_code == 401
    assert_throttled(token("alice", "wrong"))  # the failure that reaches the limit

    assert_throttled(token("alice", PASSWORD))
    # Per username: another address does not help.
    assert_throttled(token("alice", PASSWORD, addr="10.9.9.9"))
    # Other usernames from another address are not concerned.
    UserFactory(username="bob")
    assert token("bob", PASSWORD, addr="10.9.9.9").status_code == 200


def test_token_endpoint_locks_an_address_that_guesses_at_many_usernames(alice: Any) -> None:
    for n in range(LIMIT):
        resp = token(f"someone{n}", "wrong", addr="10.0.0.7")
    assert_throttled(resp)

    assert_throttled(token("alice", PASSWORD, addr="10.0.0.7"))
    assert token("alice", PASSWORD, addr="10.0.0.8").status_code == 200


def test_the_answer_is_the_same_for_an_unknown_username_and_the_password_is_hashed_either_way(
    alice: Any, settings: Any
) -> None:
    settings.PASSWORD_HASHERS = ["tests.test_login_throttle.CountingHasher"]
    known, unknown = [], []
    for _ in range(LIMIT + 1):
        CountingHasher.calls = 0
        known.append((token("alice", "wrong", addr="10.0.1.1"), CountingHasher.calls))
        CountingHasher.calls = 0
        unknown.append((token("nobody", "wrong", addr="10.0.1.2"), CountingHasher.calls))

    for (k, k_hashes), (u, u_hashes) in zip(known, unknown, strict=True):
        assert (k.status_code, _without_wait(k.json())) == (u.status_code, _without_wait(u.json()))
        # The wait counts down from each client's own lockout, a few milliseconds apart: it may
        # cross a second between the two, which says nothing about the username.
        assert (k.get("Retry-After") is None) == (u.get("Retry-After") is None)
        if k.status_code == 429:
            assert abs(int(k["Retry-After"]) - int(u["Retry-After"])) <= 1
        # The same work: one hash before the lockout (Django's dummy hash for unknown users),
        # none once locked out.
        assert k_hashes == u_hashes
    assert [k.status_code for k, _ in known] == [401] * (LIMIT - 1) + [429, 429]
    assert [h for _, h in known] == [1] * LIMIT + [0]


def _without_wait(body: dict[str, Any]) -> dict[str, Any]:
    details = body.get("error", {}).get("details")
    if isinstance(details, dict):
        details.pop("retry_after", None)
    return body


def test_retry_after_is_rounded_up_so_a_client_that_waits_it_is_not_refused(
    alice: Any,
) -> None:
    for _ in range(LIMIT):
        resp = token("alice", "wrong")
    assert resp.status_code == 429
    # Leave 2.4 s on every lockout counter (username and address). Redis's TTL would round that
    # to 2 s, and a client retrying after 2 s would be refused again.
    redis = get_cache()._cache.get_client(write=True)
    counters = list(redis.scan_iter("*axes-*"))
    assert len(counters) == 2
    for key in counters:
        assert redis.pexpire(key, 2400)

    resp = token("alice", PASSWORD)  # a failure during the lockout leaves the counters' TTL
    assert_throttled(resp)
    assert resp["Retry-After"] == "3"

    time.sleep(3)
    assert token("alice", PASSWORD).status_code == 200


def test_after_the_cooloff_the_right_password_works_again(alice: Any, settings: Any) -> None:
    settings.LOGIN_COOLOFF_SECONDS = 3
    for _ in range(LIMIT):
        resp = token("alice", "wrong")
    assert resp.status_code == 429
    assert resp["Retry-After"] == "3"
    assert token("alice", PASSWORD).status_code == 429

    time.sleep(3.1)

    assert token("alice", PASSWORD).status_code == 200


def test_a_success_clears_the_usernames_failures_but_not_the_addresss(alice: Any) -> None:
    UserFactory(username="bob")
    for _ in range(LIMIT - 1):
        assert token("alice", "wrong", addr="10.0.2.1").status_code == 401
    assert token("alice", PASSWORD, addr="10.0.2.2").status_code == 200

    # alice's count starts again: LIMIT - 1 more failures do not lock her.
    for _ in range(LIMIT - 1):
        assert token("alice", "wrong", addr="10.0.2.3").status_code == 401
    assert token("alice", PASSWORD, addr="10.0.2.3").status_code == 200

    # 10.0.2.1's failures stay, whoever logs in from it: one more locks the address.
    assert token("bob", PASSWORD, addr="10.0.2.1").status_code == 200
    assert_throttled(token("carol", "wrong", addr="10.0.2.1"))
    assert_throttled(token("bob", PASSWORD, addr="10.0.2.1"))


def test_a_username_spelled_like_an_address_does_not_count_against_that_address(
    alice: Any,
) -> None:
    for _ in range(LIMIT):
        token("10.0.3.3", "wrong", addr="10.0.3.1")
    assert token("alice", PASSWORD, addr="10.0.3.3").status_code == 200


async def test_token_endpoint_lockout_through_the_asgi_stack(alice: Any) -> None:
    """daphne runs the middleware chain asynchronously (axes' async path)."""
    client = AsyncClient()
    body = {"username": "alice", "password": "wrong"}
    for _ in range(LIMIT):
        resp = await client.post(
            TOKEN_URL, body, content_type="application/json", REMOTE_ADDR="10.0.4.1"
        )
    assert_throttled(resp)
    resp = await client.post(
        TOKEN_URL,
        {"username": "alice", "password": PASSWORD},
        content_type="application/json",
        REMOTE_ADDR="10.0.4.2",
    )
    assert_throttled(resp)


# --- the session login and the admin login ------------------------------------------------------


def test_session_login_locks_a_username_with_a_message_on_the_form(alice: Any) -> None:
    for _ in range(LIMIT - 1):
        resp = session_login("alice", "wrong")
        assert resp.status_code == 200
        assert b"Please enter a correct username and password" in resp.content
    assert_form_throttled(session_login("alice", "wrong"))

    resp = session_login("alice", PASSWORD, addr="10.9.9.9")
    assert_form_throttled(resp)
    assert "_auth_user_id" not in resp.wsgi_request.session


def test_session_login_locks_an_address(alice: Any) -> None:
    for n in range(LIMIT):
        resp = session_login(f"someone{n}", "wrong", addr="10.0.5.1")
    assert_form_throttled(resp)
    assert_form_throttled(session_login("alice", PASSWORD, addr="10.0.5.1"))
    resp = session_login("alice", PASSWORD, addr="10.0.5.2")
    assert resp.status_code == 302


def test_session_login_answers_an_unknown_username_as_a_known_one(alice: Any) -> None:
    for _ in range(LIMIT + 1):
        known = session_login("alice", "wrong", addr="10.0.6.1")
        unknown = session_login("nobody", "wrong", addr="10.0.6.2")
        assert known.status_code == unknown.status_code
        assert _same_page(known, unknown)
    assert known.status_code == 429


def _same_page(known: Any, unknown: Any) -> bool:
    """The pages differ only in the echoed username and the CSRF token."""

    def strip(resp: Any, name: bytes) -> bytes:
        text = re.sub(rb'name="csrfmiddlewaretoken" value="[^"]+"', b"", resp.content)
        return text.replace(name, b"USERNAME")

    return strip(known, b"alice") == strip(unknown, b"nobody")


def test_failures_count_across_the_token_endpoint_and_the_session_login(alice: Any) -> None:
    assert token("alice", "wrong").status_code == 401
    assert session_login("alice", "wrong").status_code == 200
    assert_throttled(token("alice", "wrong"))
    assert_form_throttled(session_login("alice", PASSWORD))


def test_admin_login_is_throttled_too(db: None) -> None:
    UserFactory(username="root", is_staff=True, is_superuser=True)
    for _ in range(LIMIT):
        resp = session_login("root", "wrong", url=ADMIN_LOGIN_URL)
    assert_form_throttled(resp)
    assert_form_throttled(session_login("root", PASSWORD, url=ADMIN_LOGIN_URL))


# --- the client address -------------------------------------------------------------------------


def test_x_forwarded_for_is_believed_only_from_a_trusted_proxy(alice: Any, settings: Any) -> None:
    # Not trusted: a client cannot escape the address rule by inventing X-Forwarded-For.
    for n in range(LIMIT):
        resp = token(f"x{n}", "wrong", addr="10.0.7.1", HTTP_X_FORWARDED_FOR=f"192.0.2.{n}")
    assert_throttled(resp)

    settings.TRUSTED_PROXIES = ["172.16.0.0/12"]
    # Behind the proxy, each client is its own address: the right-most untrusted hop.
    for n in range(LIMIT):
        resp = token(
            f"y{n}", "wrong", addr="172.16.0.5", HTTP_X_FORWARDED_FOR="6.6.6.6, 198.51.100.7"
        )
    assert_throttled(resp)
    assert (
        token("alice", PASSWORD, addr="172.16.0.5", HTTP_X_FORWARDED_FOR="198.51.100.8").status_code
        == 200
    )
    # The spoofed left-most entry was never the address that was locked.
    assert token("alice", PASSWORD, addr="6.6.6.6").status_code == 200


class _Request:
    def __init__(self, meta: dict[str, str]) -> None:
        self.META = meta


@pytest.mark.parametrize(
    ("remote", "forwarded", "expected"),
    [
        ("203.0.113.9", "1.1.1.1", "203.0.113.9"),
        ("10.1.2.3", "1.1.1.1, 2.2.2.2", "2.2.2.2"),
        ("10.1.2.3", "1.1.1.1, 2.2.2.2, 10.0.0.9", "2.2.2.2"),
        ("10.1.2.3", "", "10.1.2.3"),
        ("10.1.2.3", "1.1.1.1, garbage", "10.1.2.3"),
        ("10.1.2.3", "10.0.0.1, 10.0.0.2", "10.1.2.3"),
        ("::1", "2001:db8::5", "2001:db8::5"),
    ],
)
def test_client_address(settings: Any, remote: str, forwarded: str, expected: str) -> None:
    settings.TRUSTED_PROXIES = ["10.0.0.0/8", "::1"]
    meta = {"REMOTE_ADDR": remote, "HTTP_X_FORWARDED_FOR": forwarded}
    assert client_address(_Request(meta)) == expected

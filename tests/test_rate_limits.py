"""Per-user rate limits and quotas (messages_app.limits): exact under concurrency, every window
and cap, overrides, and what REST and the websocket answer. Real Redis, real workers."""

from __future__ import annotations

import math
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from django.conf import settings as django_settings
from django.contrib.auth.models import Group
from django.db import connections
from rest_framework.test import APIClient

from fake_llm import Script
from messages_app import limits
from messages_app.models import LimitOverride, Message
from messages_app.services import conversation_create
from messageservice import redis_clients
from tests.helpers import communicator, llm_jobs, run_llm_worker, send_message

pytestmark = pytest.mark.django_db(transaction=True)

ROOMY = {
    "MAX_MESSAGES_PER_MINUTE": 1000,
    "MAX_MESSAGES_PER_HOUR": 1000,
    "MAX_MESSAGES_PER_DAY": 1000,
    "MAX_REPLIES_IN_FLIGHT": 1000,
    "DAILY_TOKEN_QUOTA": 0,
}


def away_from_a_minute_boundary(margin: float = 8.0) -> None:
    """Windows are fixed and follow the clock: a test's sends must not straddle a minute."""
    left = 60 - time.time() % 60
    if left < margin:
        time.sleep(left + 0.05)


@pytest.fixture
def limited(settings: Any) -> Any:
    """Rate limits on, every limit roomy unless the test tightens it (then `limits.forget()`)."""
    settings.ENABLE_RATE_LIMITS = True
    for name, value in ROOMY.items():
        setattr(settings, name, value)
    limits.forget()
    away_from_a_minute_boundary()
    yield settings
    limits.forget()


def _url(conversation: Any) -> str:
    return f"/api/v1/conversations/{conversation.pk}/messages/"


def _send(api: APIClient, conversation: Any, text: str = "hi", **extra: Any) -> Any:
    return api.post(_url(conversation), {"content": text, **extra}, format="json")


def _user_messages(conversation: Any) -> int:
    return Message.objects.filter(conversation=conversation, role="user").count()


def _limit_keys() -> list[bytes]:
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    try:
        return list(client.scan_iter(f"{django_settings.SERVICE_NAME}:limits:*"))
    finally:
        client.close()


# --- exactness ----------------------------------------------------------------------------


def _post(user: Any, conversation_id: int, n: int) -> int:
    client = APIClient()
    client.force_authenticate(user)
    try:
        return client.post(
            f"/api/v1/conversations/{conversation_id}/messages/",
            {"content": f"message {n}", "client_id": f"c{n}"},
            format="json",
        ).status_code
    finally:
        connections.close_all()


def test_thirty_concurrent_sends_against_a_limit_of_seven_admit_exactly_seven(
    user, character, limited
):
    limited.MAX_MESSAGES_PER_MINUTE = 7
    rooms = [conversation_create(owner=user, character=character) for _ in range(3)]
    jobs_before = len(llm_jobs())
    with ThreadPoolExecutor(max_workers=10) as pool:
        statuses = list(
            pool.map(lambda n: _post(user, rooms[n % 3].pk, n), range(30)),
        )
    assert Counter(statuses) == {202: 7, 429: 23}
    assert sum(_user_messages(room) for room in rooms) == 7
    assert (
        Message.objects.filter(conversation__in=rooms, role="assistant", status="queued").count()
        == 7
    )
    assert len(llm_jobs()) - jobs_before == 7
    assert limits.usage(user)["minute"] == 7
    assert limits.usage(user)["in_flight"] == 7


# --- windows ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "window"),
    [
        ("MAX_MESSAGES_PER_MINUTE", "minute"),
        ("MAX_MESSAGES_PER_HOUR", "hour"),
        ("MAX_MESSAGES_PER_DAY", "day"),
    ],
)
def test_each_window_refuses_the_send_over_it_and_names_itself(
    api, conversation, limited, setting, window
):
    setattr(limited, setting, 2)
    assert [_send(api, conversation).status_code for _ in range(2)] == [202, 202]
    refused = _send(api, conversation)
    assert refused.status_code == 429
    details = refused.json()["error"]["details"]
    assert details["limit"] == window
    assert details["limit_value"] == 2
    size = {"minute": 60, "hour": 3600, "day": 86400}[window]
    assert 0 < details["retry_after"] <= size
    # The window lifts at its clock boundary.
    assert abs(details["retry_after"] - (size - time.time() % size)) < 2
    assert _user_messages(conversation) == 2


def test_a_minute_refusal_burns_nothing_of_the_hour_and_day_budgets(api, conversation, limited):
    limited.MAX_MESSAGES_PER_MINUTE = 2
    limited.MAX_MESSAGES_PER_HOUR = 4
    limited.MAX_MESSAGES_PER_DAY = 5
    statuses = [_send(api, conversation).status_code for _ in range(7)]
    assert statuses == [202, 202] + [429] * 5
    used = limits.usage(conversation.owner)
    assert (used["minute"], used["hour"], used["day"]) == (2, 2, 2)
    # Had the five refusals counted in the hour, it would be spent now.
    limited.MAX_MESSAGES_PER_MINUTE = 100
    limits.forget()
    statuses = [_send(api, conversation).status_code for _ in range(3)]
    assert statuses == [202, 202, 429]
    assert _send(api, conversation).json()["error"]["details"]["limit"] == "hour"
    assert limits.usage(conversation.owner)["day"] == 4


def test_several_limits_over_at_once_name_the_one_that_lifts_last(api, conversation, limited):
    limited.MAX_MESSAGES_PER_MINUTE = 1
    limited.MAX_MESSAGES_PER_DAY = 1
    assert _send(api, conversation).status_code == 202
    details = _send(api, conversation).json()["error"]["details"]
    assert details["limit"] == "day"


# --- in flight ----------------------------------------------------------------------------


def _end_completed(api: Any, sent: dict[str, Any], fake_llm: Any) -> None:
    fake_llm.push(Script.from_text("Done."))
    run_llm_worker()


def _end_failed(api: Any, sent: dict[str, Any], fake_llm: Any) -> None:
    fake_llm.push(Script.from_text("x", fault="http_500"))
    run_llm_worker()


def _end_cancelled(api: Any, sent: dict[str, Any], fake_llm: Any) -> None:
    assert api.post(f"/api/v1/generations/{sent['generation_id']}/cancel/").status_code == 202


@pytest.mark.parametrize(
    ("end", "status"),
    [(_end_completed, "completed"), (_end_failed, "failed"), (_end_cancelled, "cancelled")],
)
def test_the_in_flight_slot_frees_when_the_reply_ends(
    api, conversation, fake_llm, limited, end, status
):
    limited.MAX_REPLIES_IN_FLIGHT = 1
    limited.LLM_RETRY_ATTEMPTS = 0
    sent = _send(api, conversation).json()
    refused = _send(api, conversation)
    assert refused.status_code == 429
    details = refused.json()["error"]["details"]
    assert details["limit"] == "in_flight"
    assert details["limit_value"] == 1
    assert 0 < details["retry_after"] <= limits.IN_FLIGHT_RETRY_SECONDS
    end(api, sent, fake_llm)
    assert Message.objects.get(pk=sent["assistant_message"]["id"]).status == status
    assert limits.usage(conversation.owner)["in_flight"] == 0
    assert _send(api, conversation).status_code == 202
    assert _user_messages(conversation) == 2


def test_the_slot_of_a_reply_whose_worker_died_expires(api, conversation, limited):
    limited.MAX_REPLIES_IN_FLIGHT = 1
    limited.MESSAGE_PROCESSING_TIMEOUT = 1.5
    limited.RATE_LIMIT_SLOT_MARGIN_SECONDS = 1.0
    # No worker ever runs this reply, and nothing releases its slot.
    assert _send(api, conversation).status_code == 202
    refused = _send(api, conversation).json()["error"]["details"]
    assert refused["limit"] == "in_flight"
    assert refused["retry_after"] <= 2.5
    time.sleep(2.6)
    assert _send(api, conversation).status_code == 202


# --- token quota --------------------------------------------------------------------------


def test_the_daily_token_quota_counts_prompt_and_completion_tokens_when_a_reply_ends(
    api, conversation, fake_llm, limited
):
    limited.DAILY_TOKEN_QUOTA = 10_000
    fake_llm.push(Script.from_text("One two three four five."))
    sent = _send(api, conversation).json()
    assert limits.usage(conversation.owner)["tokens"] == 0  # counted when it ends
    run_llm_worker()
    reply = Message.objects.get(pk=sent["assistant_message"]["id"])
    assert reply.status == "completed"
    used = (reply.prompt_tokens or 0) + (reply.completion_tokens or 0)
    assert reply.prompt_tokens and reply.completion_tokens
    assert limits.usage(conversation.owner)["tokens"] == used
    # Below the quota: admitted. At it: refused until the UTC day ends.
    limited.DAILY_TOKEN_QUOTA = used + 1
    assert _send(api, conversation).status_code == 202
    limited.DAILY_TOKEN_QUOTA = used
    refused = _send(api, conversation)
    assert refused.status_code == 429
    details = refused.json()["error"]["details"]
    assert details == {
        "limit": "tokens",
        "retry_after": details["retry_after"],
        "limit_value": used,
    }
    assert abs(details["retry_after"] - (86400 - time.time() % 86400)) < 2
    assert _user_messages(conversation) == 2


# --- overrides ----------------------------------------------------------------------------


def _admitted_of(api: APIClient, conversation: Any, tries: int) -> int:
    return sum(_send(api, conversation).status_code == 202 for _ in range(tries))


def test_a_user_override_replaces_the_default(api, user, conversation, limited):
    limited.MAX_MESSAGES_PER_MINUTE = 5
    LimitOverride.objects.create(user=user, per_minute=2)
    assert _admitted_of(api, conversation, 4) == 2


def test_a_group_override_replaces_the_default(api, user, conversation, limited):
    limited.MAX_MESSAGES_PER_MINUTE = 1
    group = Group.objects.create(name="premium")
    user.groups.add(group)
    LimitOverride.objects.create(group=group, per_minute=3, note="paying")
    assert _admitted_of(api, conversation, 5) == 3


def test_the_users_override_wins_over_the_groups(api, user, conversation, limited):
    group = Group.objects.create(name="premium")
    user.groups.add(group)
    LimitOverride.objects.create(group=group, per_minute=5, per_hour=3)
    LimitOverride.objects.create(user=user, per_minute=2)
    assert limits.limits_for(user).per_minute == 2
    assert limits.limits_for(user).per_hour == 3  # null on the user's row: the group's
    assert limits.limits_for(user).per_day == 1000  # null everywhere: the default
    assert _admitted_of(api, conversation, 4) == 2


def test_of_several_groups_the_most_generous_value_wins_and_zero_is_unlimited(
    api, user, conversation, limited
):
    limited.MAX_MESSAGES_PER_MINUTE = 1
    small, large, free = (Group.objects.create(name=n) for n in ("small", "large", "free"))
    user.groups.add(small, large)
    LimitOverride.objects.create(group=small, per_minute=2)
    LimitOverride.objects.create(group=large, per_minute=4)
    LimitOverride.objects.create(group=free, per_minute=0)
    assert _admitted_of(api, conversation, 6) == 4
    user.groups.add(free)
    limits.forget()
    assert limits.limits_for(user).per_minute == 0
    assert _admitted_of(api, conversation, 6) == 6


def test_a_user_override_of_zero_is_unlimited(api, user, conversation, limited):
    limited.MAX_MESSAGES_PER_MINUTE = 1
    limited.MAX_REPLIES_IN_FLIGHT = 1
    LimitOverride.objects.create(user=user, per_minute=0, in_flight=0)
    assert _admitted_of(api, conversation, 8) == 8


def test_an_override_applies_within_the_cache_time(api, user, conversation, limited):
    limited.MAX_MESSAGES_PER_MINUTE = 1
    assert _send(api, conversation).status_code == 202
    assert _send(api, conversation).status_code == 429
    LimitOverride.objects.create(user=user, per_minute=3)
    time.sleep(limits.LIMITS_CACHE_SECONDS + 0.1)
    assert _send(api, conversation).status_code == 202


# --- what clients see ---------------------------------------------------------------------


def test_a_rest_refusal_is_429_in_the_error_shape_with_the_four_headers(api, conversation, limited):
    limited.MAX_MESSAGES_PER_MINUTE = 1
    assert _send(api, conversation).status_code == 202
    refused = _send(api, conversation, "again")
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert error["code"] == "rate_limited"
    assert error["message"]
    assert set(error["details"]) == {"limit", "retry_after", "limit_value"}
    assert error["details"]["limit"] == "minute"
    assert error["details"]["limit_value"] == 1
    retry_after = error["details"]["retry_after"]
    assert isinstance(retry_after, float)
    assert 0 < retry_after <= 60
    assert refused["Retry-After"] == str(math.ceil(retry_after))
    assert refused["RateLimit-Limit"] == "1"
    assert refused["RateLimit-Remaining"] == "0"
    assert refused["RateLimit-Reset"] == str(math.ceil(retry_after))
    assert _user_messages(conversation) == 1
    assert len(llm_jobs()) == 1


async def test_the_websocket_answers_a_limited_send_with_a_rate_limited_frame_and_stays_open(
    conversation, alice_headers, limited
):
    limited.MAX_MESSAGES_PER_MINUTE = 1
    comm = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    assert (await comm.connect())[0]
    try:
        created = await send_message(comm, "first")
        assert [f["type"] for f in created] == ["message.created", "message.created"]
        await comm.send_json_to({"type": "message.send", "content": "second"})
        frame = await comm.receive_json_from(timeout=10)
        assert set(frame) == {"type", "retry_after", "limit"}
        assert frame["type"] == "rate_limited"
        assert frame["limit"] == "minute"
        assert 0 < frame["retry_after"] <= 60
        await comm.send_json_to({"type": "ping"})
        assert await comm.receive_json_from(timeout=10) == {"type": "pong"}
        assert await comm.receive_nothing(timeout=0.2)
    finally:
        await comm.disconnect()
    assert await Message.objects.filter(conversation=conversation, role="user").acount() == 1


def test_regenerate_and_edit_count_as_sends(api, conversation, limited):
    limited.MAX_MESSAGES_PER_MINUTE = 3
    sent = _send(api, conversation).json()
    reply_id = sent["assistant_message"]["id"]
    user_message_id = sent["user_message"]["id"]
    assert api.post(f"/api/v1/messages/{reply_id}/regenerate/").status_code == 202
    edit = api.patch(f"/api/v1/messages/{user_message_id}/", {"content": "new"}, format="json")
    assert edit.status_code == 202
    assert limits.usage(conversation.owner)["minute"] == 3
    count = Message.objects.filter(conversation=conversation).count()
    jobs = len(llm_jobs())
    regenerate = api.post(f"/api/v1/messages/{reply_id}/regenerate/")
    assert regenerate.status_code == 429
    assert regenerate.json()["error"]["code"] == "rate_limited"
    assert "Retry-After" in regenerate
    edit = api.patch(f"/api/v1/messages/{user_message_id}/", {"content": "newer"}, format="json")
    assert edit.status_code == 429
    assert _send(api, conversation).status_code == 429
    assert Message.objects.filter(conversation=conversation).count() == count
    assert len(llm_jobs()) == jobs


def test_an_idempotent_repeat_is_not_counted_and_still_answers_at_the_limit(
    api, conversation, limited
):
    limited.MAX_MESSAGES_PER_MINUTE = 2
    first = _send(api, conversation, client_id="c1")
    assert first.status_code == 202
    for _ in range(3):
        repeat = _send(api, conversation, client_id="c1")
        assert repeat.status_code == 202
        assert repeat.json() == first.json()
    assert limits.usage(conversation.owner)["minute"] == 1
    assert limits.usage(conversation.owner)["in_flight"] == 1
    assert _send(api, conversation, "second", client_id="c2").status_code == 202
    # At the limit: a repeat still gets its first result, a new send is refused.
    assert _send(api, conversation, client_id="c1").json() == first.json()
    assert _send(api, conversation, "third", client_id="c3").status_code == 429
    assert _user_messages(conversation) == 2
    assert len(llm_jobs()) == 2


def test_a_send_that_fails_after_its_admission_is_refunded(api, conversation, limited):
    limited.MAX_MESSAGES_PER_MINUTE = 1
    missing = _send(api, conversation, parent_id=10**9)
    assert missing.status_code == 404
    greeting = conversation.active_leaf_id
    sent = _send(api, conversation, parent_id=greeting).json()
    bad_parent = _send(api, conversation, parent_id=sent["user_message"]["id"])
    assert bad_parent.status_code == 429  # the one admitted send is spent
    used = limits.usage(conversation.owner)
    assert (used["minute"], used["in_flight"]) == (1, 1)
    limited.MAX_MESSAGES_PER_MINUTE = 5
    limits.forget()
    bad_parent = _send(api, conversation, parent_id=sent["user_message"]["id"])
    assert bad_parent.json()["error"]["code"] == "bad_parent"
    used = limits.usage(conversation.owner)
    assert (used["minute"], used["in_flight"]) == (1, 1)


def test_with_redis_down_a_send_fails_503_and_saves_nothing(api, conversation, limited):
    limited.REDIS_URL = "redis://127.0.0.1:9/0"
    redis_clients.reset()
    try:
        refused = _send(api, conversation)
    finally:
        limited.REDIS_URL = django_settings.REDIS_URL
        redis_clients.reset()
    assert refused.status_code == 503
    assert refused.json()["error"]["code"] == "redis_unavailable"
    assert _user_messages(conversation) == 0


def test_with_rate_limits_off_everything_is_admitted_and_nothing_recorded(
    api, conversation, limited
):
    limited.ENABLE_RATE_LIMITS = False
    limited.MAX_MESSAGES_PER_MINUTE = 1
    limited.MAX_REPLIES_IN_FLIGHT = 1
    assert [_send(api, conversation).status_code for _ in range(5)] == [202] * 5
    assert _limit_keys() == []


def test_every_limits_key_is_namespaced_and_expires(api, conversation, fake_llm, limited):
    fake_llm.push(Script.from_text("Done."))
    _send(api, conversation)
    run_llm_worker()
    _send(api, conversation)
    keys = _limit_keys()
    assert len(keys) == 5  # three windows, the in-flight set, today's tokens
    client = redis.Redis.from_url(django_settings.REDIS_URL)
    try:
        for key in keys:
            assert key.startswith(f"{django_settings.SERVICE_NAME}:limits:{{".encode())
            ttl = int(client.ttl(key))  # type: ignore[arg-type]
            assert 0 < ttl <= 2 * 86400 + 1, key
    finally:
        client.close()

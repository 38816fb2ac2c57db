"""GET /api/v1/analytics/usage/: groupings, who sees what, and the bad-input table."""

from __future__ import annotations

import math
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from analytics_app import histograms
from analytics_app.events import events_key
from analytics_app.worker import AnalyticsWorker
from messageservice.redis_clients import sync_redis
from tests.analytics_history import COUNTERS, _empty, build_history, expected_rows
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db
URL = "/api/v1/analytics/usage/"
KEY_FIELD = {"hour": "hour", "day": "day", "user": "user_id", "character": "character_id"}
KEY_FIELD["model"] = "model"


@pytest.fixture
def history():
    history = build_history(exchanges=120, hours=50)
    sync_redis().rpush(events_key(), *history.events)
    worker = AnalyticsWorker()
    while worker.step():
        pass
    return history


def client_of(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def staff(db):
    return client_of(UserFactory(username="an-staff", is_staff=True))


def grouped(interval: str, keys: tuple[str, ...], user_id: int | None = None) -> dict:
    """The reference rows of `interval` merged by `keys`, from the messages in plain Python."""
    groups: dict[tuple, dict[str, Any]] = defaultdict(_empty)
    for (kind, start, user, character, model), row in expected_rows().items():
        if kind != interval or (user_id is not None and user != user_id):
            continue
        parts = {"hour": start, "day": start, "user": user, "character": character, "model": model}
        group = groups[tuple(parts[k] for k in keys)]
        for name in COUNTERS:
            group[name] += row[name]
        for code, n in row["failures"].items():
            group["failures"][code] += n
        group["ttft"] += row["ttft"]
        group["total"] += row["total"]
    return groups


def nearest_rank(samples: list[int], p: float) -> int | None:
    return sorted(samples)[math.ceil(p * len(samples)) - 1] if samples else None


def assert_metrics(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert {n: got[n] for n in COUNTERS} == {n: want[n] for n in COUNTERS}
    assert got["failures"] == dict(want["failures"])
    for name, samples in (("ttft_ms", want["ttft"]), ("total_ms", want["total"])):
        for p, label in ((0.5, "p50"), (0.95, "p95")):
            exact = nearest_rank(samples, p)
            value = got[name][label]
            if exact is None:
                assert value is None
            else:
                # The bucket of the exact percentile, reported at its middle.
                assert value == histograms.bucket_value(histograms.bucket_of(exact))
                assert abs(value - exact) <= 0.045 * (exact + 1) + 0.5


def span(history) -> dict[str, str]:
    start = history.start.date()
    return {"from": start.isoformat(), "to": (start + timedelta(days=4)).isoformat()}


@pytest.mark.parametrize(
    "group_by",
    ["day,character,model", "day", "hour,user", "model", "user,character", "day,user,model"],
)
def test_staff_get_every_users_rows_grouped_as_asked(history, staff, group_by):
    response = staff.get(URL, {**span(history), "group_by": group_by})
    assert response.status_code == 200, response.json()
    body = response.json()
    keys = tuple(group_by.split(","))
    interval = "hour" if "hour" in keys else "day"
    assert body["interval"] == interval and body["group_by"] == list(keys)
    want = grouped(interval, keys)
    assert len(body["rows"]) == len(want)
    seen = []
    for row in body["rows"]:
        key = []
        for k in keys:
            if k == "hour":
                key.append(datetime.fromisoformat(row["hour"]))
            elif k == "day":
                key.append(datetime.fromisoformat(row["day"] + "T00:00:00+00:00"))
            elif k == "user":
                key.append(row["user_id"])
                assert row["username"].startswith("an-user-")
            elif k == "character":
                key.append(row["character_id"])
                assert row["character_name"].startswith("An Character ")
            else:
                key.append(row["model"])
        present = set(row) & {"hour", "day", "user_id", "character_id", "model"}
        assert present == {KEY_FIELD[k] for k in keys}
        assert_metrics(row, want[tuple(key)])
        seen.append(tuple(key))
    assert seen == sorted(seen)  # by time, then keys
    assert_metrics(body["totals"], grouped(interval, ())[()])


def test_hours_are_iso_datetimes_in_utc(history, staff):
    body = staff.get(URL, {**span(history), "group_by": "hour,character"}).json()
    assert all({"hour", "character_id", "character_name"} <= set(r) for r in body["rows"])
    assert all(not {"day", "user_id", "model"} & set(r) for r in body["rows"])
    assert body["rows"][0]["hour"].endswith("Z")


def test_a_user_sees_only_their_own_rows_whatever_user_they_ask_for(history):
    alice, bob = history.users[0], history.users[1]
    client = client_of(alice)
    own = client.get(URL, {**span(history), "group_by": "day,user"}).json()
    assert {r["user_id"] for r in own["rows"]} == {alice.pk}
    assert_metrics(own["totals"], grouped("day", (), user_id=alice.pk)[()])
    asked = client.get(URL, {**span(history), "group_by": "day,user", "user": bob.pk}).json()
    assert asked == own


def test_staff_may_ask_for_one_users_rows(history, staff):
    bob = history.users[1]
    body = staff.get(URL, {**span(history), "group_by": "day,user", "user": bob.pk}).json()
    assert {r["user_id"] for r in body["rows"]} == {bob.pk}
    assert_metrics(body["totals"], grouped("day", (), user_id=bob.pk)[()])


def test_the_defaults_are_the_last_30_days_by_day(history, staff):
    body = staff.get(URL).json()
    assert body["interval"] == "day" and body["group_by"] == ["day"]
    end = datetime.fromisoformat(body["to"])
    assert end - datetime.fromisoformat(body["from"]) == timedelta(days=30)
    assert end > timezone.now() and end.hour == 0
    assert_metrics(body["totals"], grouped("day", ())[()])


@pytest.mark.parametrize(
    "params",
    [
        {"from": "yesterday"},
        {"to": "2026-13-01"},
        {"from": "2026-01-10", "to": "2026-01-10"},
        {"from": "2026-01-10", "to": "2026-01-09"},
        {"group_by": "week"},
        {"group_by": "day,hour"},
        {"group_by": "day,model,model"},
        {"group_by": "hour", "from": "2026-01-01", "to": "2026-02-02"},
        {"group_by": "day", "from": "2025-01-01", "to": "2026-01-03"},
        {"user": "abc"},
    ],
)
def test_bad_input_is_a_400_in_the_error_shape(staff, params):
    response = staff.get(URL, params)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid" and error["message"] and error["details"]


def test_the_longest_ranges_allowed_pass(staff):
    hourly = staff.get(URL, {"group_by": "hour", "from": "2026-01-01", "to": "2026-02-01"})
    daily = staff.get(URL, {"from": "2025-01-01", "to": "2026-01-02"})
    assert hourly.status_code == daily.status_code == 200
    assert hourly.json()["rows"] == [] and hourly.json()["totals"]["ttft_ms"] == {
        "p50": None,
        "p95": None,
    }


def test_anonymous_callers_get_401(db):
    response = APIClient().get(URL)
    assert response.status_code == 401 and response.json()["error"]["code"] == "not_authenticated"


def test_the_usage_api_is_in_the_openapi_schema(staff):
    schema = staff.get("/api/schema/", {"format": "json"}).json()
    operation = schema["paths"]["/api/v1/analytics/usage/"]["get"]
    assert {p["name"] for p in operation["parameters"]} >= {"from", "to", "group_by", "user"}
    assert {"200", "400"} <= set(operation["responses"])

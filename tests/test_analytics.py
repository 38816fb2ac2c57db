"""Usage rollups: the worker's batch path and the backfill give exactly the rows recomputed
from the messages in plain Python; twice gives the same rows; an interrupted backfill resumes;
feedback, flags, moderation and deletions reach the rows through their events."""

from __future__ import annotations

import io
import json
import math
from datetime import timedelta
from typing import Any

import pytest
from django.core.management import call_command
from django.utils import timezone

from analytics_app import histograms, rollups
from analytics_app.events import events_key
from analytics_app.models import FillState, UsageRow
from analytics_app.worker import AnalyticsWorker, processing_key
from messages_app import services
from messages_app.models import Conversation, Message
from messageservice.redis_clients import sync_redis
from tests.analytics_history import (
    assert_rows_match_history,
    build_history,
    row_contents,
)

pytestmark = pytest.mark.django_db


def drain(worker: AnalyticsWorker) -> int:
    steps = 0
    while worker.step():
        steps += 1
    return steps


def message_hours() -> set[Any]:
    return {rollups.floor_hour(t) for t in Message.objects.values_list("created_at", flat=True)}


def backfill(*args: str) -> str:
    out = io.StringIO()
    call_command("analytics_backfill", *args, stdout=out)
    return out.getvalue()


@pytest.fixture
def history():
    return build_history()


def test_the_worker_batches_give_exactly_the_rows_recomputed_from_the_messages(history):
    sync_redis().rpush(events_key(), *history.events)
    worker = AnalyticsWorker(batch_size=7)
    steps = drain(worker)
    assert steps == -(-len(history.events) // 7)
    assert sync_redis().llen(events_key()) == 0
    assert sync_redis().exists(processing_key(worker.worker_id)) == 0
    assert_rows_match_history()
    # The history has what the test means to cover.
    rows = list(UsageRow.objects.filter(interval="day"))
    assert sum(r.failed for r in rows) > 5 and sum(r.cancelled for r in rows) > 3
    assert sum(r.blocked for r in rows) > 3 and sum(r.flagged for r in rows) > 5
    assert sum(r.thumbs_up for r in rows) > 3 and sum(r.thumbs_down for r in rows) > 0
    assert {code for r in rows for code in r.failures} >= {"provider_error", "timeout", "error"}
    assert len({r.model for r in rows}) == 3 and len({r.user_id for r in rows}) == 3
    assert sum(r.replies for r in rows) > sum(r.user_messages for r in rows) > 100
    assert len({r.start for r in UsageRow.objects.filter(interval="day")}) >= 3


def test_the_same_events_twice_give_the_same_rows(history):
    sync_redis().rpush(events_key(), *history.events)
    drain(AnalyticsWorker(batch_size=50))
    first = row_contents()
    sync_redis().rpush(events_key(), *history.events, *history.events)
    drain(AnalyticsWorker(batch_size=13))
    assert row_contents() == first
    assert_rows_match_history()


def test_the_backfill_gives_the_same_rows_and_a_rerun_changes_nothing(history):
    out = backfill()
    assert "hours recomputed" in out
    assert_rows_match_history()
    state = FillState.objects.get(name=rollups.MAIN)
    assert state.state == "done" and state.end_time == rollups.fill_to_default()
    first = row_contents()
    assert " 0 hours recomputed" in backfill()
    assert "hours recomputed" in backfill("--force")
    assert row_contents() == first


def test_the_fill_pass_catches_events_that_were_lost(history):
    # No event at all reached the worker: its fill pass closes the hours all the same.
    worker = AnalyticsWorker()
    assert worker.fill_pass() > 10
    assert_rows_match_history()


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("where", ["after-an-hour-committed", "inside-an-hour"])
def test_an_interrupted_backfill_resumes_where_it_stopped(history, monkeypatch, where):
    real = rollups.hour_recompute
    calls: list[Any] = []

    def failing(start):
        calls.append(start)
        if len(calls) == 12 and where == "inside-an-hour":
            raise Interrupted  # killed before the hour's transaction committed
        real(start)
        if len(calls) == 12:
            raise Interrupted  # killed after the hour committed, before its state was saved

    monkeypatch.setattr(rollups, "hour_recompute", failing)
    with pytest.raises(Interrupted):
        backfill()
    state = FillState.objects.get(name=rollups.MAIN)
    assert state.state == "started" and state.end_time == calls[-1] + timedelta(hours=1)
    monkeypatch.setattr(rollups, "hour_recompute", real)
    done = rollups.fill()
    # The rerun starts again with the unfinished hour, and then does the rest once.
    assert done + 11 == len(message_hours())
    assert_rows_match_history()


def test_a_range_backfill_is_resumable_and_done_once_unless_forced(history, monkeypatch):
    start = history.start + timedelta(hours=10)
    end = history.start + timedelta(hours=30)
    args = ("--from", start.isoformat(), "--to", end.isoformat())
    sync_redis().rpush(events_key(), *history.events)
    drain(AnalyticsWorker())
    UsageRow.objects.filter(start__gte=start, start__lt=end, interval="hour").delete()
    real = rollups.hour_recompute
    calls: list[Any] = []

    def failing(hour):
        calls.append(hour)
        if len(calls) == 5:
            raise Interrupted
        real(hour)

    monkeypatch.setattr(rollups, "hour_recompute", failing)
    with pytest.raises(Interrupted):
        backfill(*args)
    monkeypatch.setattr(rollups, "hour_recompute", real)
    out = backfill(*args)
    assert_rows_match_history()
    in_range = {h for h in message_hours() if start <= h < end}
    assert f": {len(in_range) - 4} hours recomputed" in out  # from the unfinished 5th hour on
    assert " 0 hours recomputed" in backfill(*args)
    assert " 0 hours recomputed" not in backfill(*args, "--force")
    assert_rows_match_history()


def test_feedback_through_the_api_reaches_the_row_of_the_rated_reply(
    api, user, character, django_capture_on_commit_callbacks
):
    conversation = services.conversation_create(owner=user, character=character)
    user_message = Message.objects.create(
        conversation=conversation, role="user", author=user, content="Hi", parent=None
    )
    reply = Message.objects.create(
        conversation=conversation, role="assistant", parent=user_message, model="m", depth=1
    )
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(f"/api/v1/messages/{reply.pk}/feedback/", {"rating": -1}, format="json")
    assert response.status_code == 201
    drain(AnalyticsWorker())
    row = UsageRow.objects.get(interval="hour", user=user)
    assert (row.thumbs_down, row.thumbs_up, row.replies, row.user_messages) == (1, 0, 1, 1)
    with django_capture_on_commit_callbacks(execute=True):
        api.post(f"/api/v1/messages/{reply.pk}/feedback/", {"rating": 1}, format="json")
    drain(AnalyticsWorker())
    row = UsageRow.objects.get(interval="day", user=user)
    assert (row.thumbs_down, row.thumbs_up) == (0, 1)


def test_a_deleted_conversation_leaves_the_rows_once_its_hours_are_recomputed(
    history, django_capture_on_commit_callbacks
):
    sync_redis().rpush(events_key(), *history.events)
    drain(AnalyticsWorker())
    conversation = Conversation.objects.filter(messages__role="user").distinct().first()
    assert conversation is not None
    before = sum(UsageRow.objects.filter(interval="day").values_list("user_messages", flat=True))
    gone = conversation.messages.filter(role="user").count()
    with django_capture_on_commit_callbacks(execute=True):
        services.conversation_delete(conversation=conversation)
    assert sync_redis().llen(events_key()) == 1
    drain(AnalyticsWorker())
    after = sum(UsageRow.objects.filter(interval="day").values_list("user_messages", flat=True))
    assert after == before - gone
    assert_rows_match_history()


def test_a_moderators_approval_clears_the_flag_and_the_block_in_the_rows(
    history, django_capture_on_commit_callbacks
):
    from messages_app import moderation

    sync_redis().rpush(events_key(), *history.events)
    drain(AnalyticsWorker())
    blocked = Message.objects.filter(status="blocked").select_related("conversation").first()
    assert blocked is not None and blocked.safety_flagged
    with_messages = {"blocked": Message.objects.filter(status="blocked").count()}
    with django_capture_on_commit_callbacks(execute=True):
        moderation._messages_approve([blocked.pk], timezone.now())
    assert sync_redis().llen(events_key()) == 1
    drain(AnalyticsWorker())
    assert Message.objects.filter(status="blocked").count() == with_messages["blocked"] - 1
    assert_rows_match_history()


def test_malformed_events_are_dropped_and_the_batch_acked(history, caplog):
    sync_redis().rpush(events_key(), b"not json", json.dumps({"u": "x"}), *history.events[:3])
    drain(AnalyticsWorker())
    assert "malformed event" in caplog.text
    assert sync_redis().llen(events_key()) == 0


def test_a_batch_that_fails_on_the_database_stays_for_the_next_step(history, monkeypatch):
    from django.db import OperationalError

    sync_redis().rpush(events_key(), *history.events[:5])
    worker = AnalyticsWorker(batch_size=100)

    def broken(buckets):
        raise OperationalError("the database went away")

    monkeypatch.setattr(rollups, "buckets_recompute", broken)
    with pytest.raises(OperationalError):
        worker.step()
    assert sync_redis().llen(processing_key(worker.worker_id)) == 5
    monkeypatch.undo()
    assert worker.step() and not worker.step()
    assert UsageRow.objects.exists()


def test_histogram_percentiles_are_within_their_resolution():
    samples = [0, 1, 2, 3, 50, 51, 70, 100, 999, 1000, 1001, 4000, 65000, 600_000, 7, 7, 7]
    for p in (0.5, 0.95, 1.0):
        exact = sorted(samples)[math.ceil(p * len(samples)) - 1]  # nearest rank
        got = histograms.percentile(histograms.of_samples(samples), p)
        assert got is not None
        assert abs(got - exact) <= 0.045 * (exact + 1) + 0.5, (p, got, exact)
    halves = histograms.of_samples(samples[:5]), histograms.of_samples(samples[5:])
    assert histograms.merge_into(*halves) == histograms.of_samples(samples)
    assert histograms.percentile({}, 0.5) is None

"""Recompute usage rows from the messages tables, bucket by bucket, and fill whole hours.

`buckets_recompute` replaces the hourly rows of given (user, hour) buckets and the daily rows
of their days, in one transaction: running it twice gives the same rows. `fill`
closes whole hours from the fill state's `end_time` (Zulip's FillState) so that rows whose
events were lost are right once their hour is filled. Every recomputation holds the row lock of
the main fill state, so workers, the fill pass and the backfill never write one bucket at once.

What counts where (docs/analytics.md):
- the user of a row is the conversation's owner; its character the conversation's character;
- a user message counts in the hour of its `created_at`, under the model of its first reply;
- a reply (an assistant message with a parent: greetings have none) counts in the hour of its
  own `created_at`, under its `model`, whatever its status now (`replies` includes any still
  queued or streaming); tokens are the replies' tokens; failures are counted by
  `Generation.error_code`, else `finish_reason`, else "unknown";
- `blocked` counts replies that ended blocked (an input block ends its reply blocked too);
  `flagged` counts messages, user messages and replies, that carry the safety flag;
- TTFT and total time are sampled from completed replies;
- thumbs count on the rated reply's row.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Count, F, OuterRef, Q, QuerySet, Subquery, Sum, Value
from django.db.models.functions import Coalesce, TruncHour
from django.utils import timezone

from analytics_app import histograms
from analytics_app.models import FillState, UsageRow
from messages_app.models import Feedback, Message

logger = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
# The fill state of the worker's fill pass and of the plain backfill; its row is also the lock.
MAIN = "usage"

COUNTERS = (
    "user_messages",
    "replies",
    "completed",
    "failed",
    "cancelled",
    "blocked",
    "flagged",
    "prompt_tokens",
    "completion_tokens",
    "thumbs_up",
    "thumbs_down",
)

Key = tuple[int, int, str]  # user, character, model


@dataclass
class Metrics:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    failures: dict[str, int] = field(default_factory=dict)
    ttft_hist: dict[str, int] = field(default_factory=dict)
    total_hist: dict[str, int] = field(default_factory=dict)

    def merge(self, row: UsageRow | Metrics) -> None:
        for name in COUNTERS:
            self.counts[name] += (
                row.counts[name] if isinstance(row, Metrics) else getattr(row, name)
            )
        histograms.merge_into(self.failures, row.failures)
        histograms.merge_into(self.ttft_hist, row.ttft_hist)
        histograms.merge_into(self.total_hist, row.total_hist)

    def row(self, interval: str, start: datetime, key: Key) -> UsageRow:
        return UsageRow(
            interval=interval,
            start=start,
            user_id=key[0],
            character_id=key[1],
            model=key[2],
            failures=self.failures,
            ttft_hist=self.ttft_hist,
            total_hist=self.total_hist,
            **self.counts,
        )


def floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def floor_day(moment: datetime) -> datetime:
    return floor_hour(moment).replace(hour=0)


# --- computing one hour --------------------------------------------------------------------


def _in_hour(start: datetime, user_ids: Collection[int] | None) -> QuerySet[Message]:
    messages = Message.objects.filter(created_at__gte=start, created_at__lt=start + HOUR)
    if user_ids is not None:
        messages = messages.filter(conversation__owner_id__in=list(user_ids))
    return messages.order_by()


def _replies(messages: QuerySet[Message]) -> QuerySet[Message]:
    return messages.filter(role=Message.Role.ASSISTANT, parent__isnull=False)


_KEYS = ("conversation__owner_id", "conversation__character_id", "model")


def _key(row: dict[str, Any], model: str = "model") -> Key:
    return (row["conversation__owner_id"], row["conversation__character_id"], row[model] or "")


def hour_compute(start: datetime, user_ids: Collection[int] | None = None) -> dict[Key, Metrics]:
    """The hourly rows of the hour starting at `start` (of `user_ids` only, if given), straight
    from the messages tables: counts and tokens by GROUP BY, times from the samples."""
    metrics: dict[Key, Metrics] = defaultdict(Metrics)
    messages = _in_hour(start, user_ids)
    first_reply_model = Subquery(
        Message.objects.filter(parent=OuterRef("pk"), role=Message.Role.ASSISTANT)
        .order_by("id")
        .values("model")[:1]
    )
    for row in (
        messages.filter(role=Message.Role.USER)
        .annotate(reply_model=Coalesce(first_reply_model, Value("")))
        .values("conversation__owner_id", "conversation__character_id", "reply_model")
        .annotate(n=Count("id"), flagged=Count("id", filter=Q(safety_flagged=True)))
    ):
        counts = metrics[_key(row, "reply_model")].counts
        counts["user_messages"] += row["n"]
        counts["flagged"] += row["flagged"]
    replies = _replies(messages)
    status = Message.Status
    for row in replies.values(*_KEYS).annotate(
        n=Count("id"),
        completed=Count("id", filter=Q(status=status.COMPLETED)),
        failed=Count("id", filter=Q(status=status.FAILED)),
        cancelled=Count("id", filter=Q(status=status.CANCELLED)),
        blocked=Count("id", filter=Q(status=status.BLOCKED)),
        flagged=Count("id", filter=Q(safety_flagged=True)),
        prompt=Sum("prompt_tokens"),
        completion=Sum("completion_tokens"),
    ):
        counts = metrics[_key(row)].counts
        counts["replies"] += row["n"]
        for name in ("completed", "failed", "cancelled", "blocked", "flagged"):
            counts[name] += row[name]
        counts["prompt_tokens"] += row["prompt"] or 0
        counts["completion_tokens"] += row["completion"] or 0
    for row in (
        replies.filter(status=status.FAILED)
        .values(*_KEYS, "generation__error_code", "finish_reason")
        .annotate(n=Count("id"))
    ):
        code = row["generation__error_code"] or row["finish_reason"] or "unknown"
        histograms.merge_into(metrics[_key(row)].failures, {code: row["n"]})
    samples: dict[Key, tuple[list[int], list[int]]] = defaultdict(lambda: ([], []))
    for owner, character, model, ttft, total in replies.filter(
        Q(ttft_ms__isnull=False) | Q(total_ms__isnull=False), status=status.COMPLETED
    ).values_list(*_KEYS, "ttft_ms", "total_ms"):
        ttfts, totals = samples[(owner, character, model or "")]
        if ttft is not None:
            ttfts.append(ttft)
        if total is not None:
            totals.append(total)
    for key, (ttfts, totals) in samples.items():
        metrics[key].ttft_hist = histograms.of_samples(ttfts)
        metrics[key].total_hist = histograms.of_samples(totals)
    feedback = Feedback.objects.filter(message__in=replies.values("pk")).order_by()
    for row in feedback.values(
        owner=F("message__conversation__owner_id"),
        character=F("message__conversation__character_id"),
        reply_model=F("message__model"),
    ).annotate(up=Count("id", filter=Q(rating=1)), down=Count("id", filter=Q(rating=-1))):
        counts = metrics[(row["owner"], row["character"], row["reply_model"] or "")].counts
        counts["thumbs_up"] += row["up"]
        counts["thumbs_down"] += row["down"]
    return dict(metrics)


# --- replacing rows --------------------------------------------------------------------------


def _lock() -> None:
    """Inside a transaction: take the row lock that serialises every rollup write."""
    state_main()
    FillState.objects.select_for_update().filter(name=MAIN).first()


def _hour_replace(start: datetime, user_ids: Collection[int] | None) -> set[int]:
    """Inside the lock: replace the hourly rows of the hour (of `user_ids`); the users whose
    rows changed or may have (their daily rows are due)."""
    computed = hour_compute(start, user_ids)
    old = UsageRow.objects.filter(interval=UsageRow.Interval.HOUR, start=start)
    if user_ids is not None:
        old = old.filter(user_id__in=list(user_ids))
    touched = set(old.values_list("user_id", flat=True)) | {key[0] for key in computed}
    old.delete()
    UsageRow.objects.bulk_create(
        metrics.row(UsageRow.Interval.HOUR, start, key) for key, metrics in computed.items()
    )
    return touched


def _day_replace(day: datetime, user_ids: Collection[int]) -> None:
    """Inside the lock: the daily rows of `day` for `user_ids`, merged from their hourly rows."""
    if not user_ids:
        return
    merged: dict[Key, Metrics] = defaultdict(Metrics)
    for row in UsageRow.objects.filter(
        interval=UsageRow.Interval.HOUR,
        start__gte=day,
        start__lt=day + DAY,
        user_id__in=list(user_ids),
    ):
        merged[(row.user_id, row.character_id, row.model)].merge(row)
    UsageRow.objects.filter(
        interval=UsageRow.Interval.DAY, start=day, user_id__in=list(user_ids)
    ).delete()
    UsageRow.objects.bulk_create(
        metrics.row(UsageRow.Interval.DAY, day, key) for key, metrics in merged.items()
    )


def buckets_recompute(buckets: Iterable[tuple[int, datetime]]) -> int:
    """Recompute the hourly rows of the (user id, hour start) `buckets` and the daily rows of
    their days, in one transaction (a batch's worth). Returns the number of hours recomputed."""
    by_hour: dict[datetime, set[int]] = defaultdict(set)
    for user_id, moment in buckets:
        by_hour[floor_hour(moment)].add(user_id)
    by_day: dict[datetime, set[int]] = defaultdict(set)
    with transaction.atomic():
        _lock()
        for start in sorted(by_hour):
            by_day[floor_day(start)] |= _hour_replace(start, by_hour[start]) | by_hour[start]
        for day in sorted(by_day):
            _day_replace(day, by_day[day])
    return len(by_hour)


def hour_recompute(start: datetime) -> None:
    """Recompute every row of the hour starting at `start`, and the affected daily rows."""
    with transaction.atomic():
        _lock()
        touched = _hour_replace(start, None)
        _day_replace(floor_day(start), touched)


# --- the fill state ----------------------------------------------------------------------------


def epoch() -> datetime:
    """Where filling starts on a fresh installation: the hour of the first message."""
    first = Message.objects.order_by("created_at").values_list("created_at", flat=True).first()
    return floor_hour(first or timezone.now())


def state_main() -> FillState:
    state = FillState.objects.filter(name=MAIN).first()
    if state is None:
        state, _ = FillState.objects.get_or_create(
            name=MAIN, defaults={"end_time": epoch(), "state": FillState.State.DONE}
        )
    return state


def fill_to_default(now: datetime | None = None) -> datetime:
    """The end of the last hour that may be closed now: ANALYTICS_FILL_DELAY_SECONDS after an
    hour ends, its replies have ended (or their reaper ended them)."""
    now = now or timezone.now()
    return floor_hour(now - timedelta(seconds=settings.ANALYTICS_FILL_DELAY_SECONDS))


def _hours_with_data(start: datetime, end: datetime) -> set[datetime]:
    """Hours in [start, end) that have messages or rows (the others have nothing to do)."""
    hours = {
        floor_hour(h)
        for h in Message.objects.filter(created_at__gte=start, created_at__lt=end)
        .annotate(h=TruncHour("created_at"))
        .values_list("h", flat=True)
        .distinct()
        .order_by()
    }
    hours |= {
        floor_hour(h)
        for h in UsageRow.objects.filter(
            interval=UsageRow.Interval.HOUR, start__gte=start, start__lt=end
        )
        .values_list("start", flat=True)
        .distinct()
        .order_by()
    }
    return hours


CHUNK = timedelta(days=7)


def _state_set(state: FillState, end_time: datetime, value: str) -> None:
    state.end_time, state.state = end_time, value
    FillState.objects.filter(pk=state.pk).update(
        end_time=end_time, state=value, last_modified=timezone.now()
    )


def fill(
    name: str = MAIN,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    on_hour: Callable[[datetime], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> int:
    """Fill the hours of the fill state `name` up to `end` (default: fill_to_default()), from
    its `end_time` (created at `start`, or at the first message's hour). Resumable: the state
    records each hour once it is filled; a state left `started` redoes that hour. Returns the
    hours recomputed. `on_hour(hour)` runs after each (tests interrupt a backfill with it);
    `should_stop()` ends the fill early between hours (the worker's SIGTERM)."""
    if name == MAIN:
        state = state_main()
    else:
        state, _ = FillState.objects.get_or_create(
            name=name, defaults={"end_time": start or epoch(), "state": FillState.State.DONE}
        )
    end = floor_hour(end or fill_to_default())
    current = state.end_time
    if state.state == FillState.State.STARTED:
        current -= HOUR  # the hour ending at end_time was not finished: redo it
    done = 0
    while current < end:
        if should_stop is not None and should_stop():
            break
        chunk_end = min(current + CHUNK, end)
        with_data = _hours_with_data(current, chunk_end)
        while current < chunk_end:
            if current in with_data:
                _state_set(state, current + HOUR, FillState.State.STARTED)
                hour_recompute(current)
                _state_set(state, current + HOUR, FillState.State.DONE)
                done += 1
                if on_hour is not None:
                    on_hour(current)
                if should_stop is not None and should_stop():
                    return done
            current += HOUR
        _state_set(state, current, FillState.State.DONE)
        if done:
            logger.info("analytics fill %s: filled to %s (%d hours)", name, current, done)
    return done

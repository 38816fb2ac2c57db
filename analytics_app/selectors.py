"""Reads of the usage rollups: the rows of the usage API (and of the staff dashboard)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib.auth import get_user_model

from analytics_app import histograms
from analytics_app.models import UsageRow
from analytics_app.rollups import COUNTERS, Metrics
from messages_app.models import Character

TIME_KEYS = ("hour", "day")
GROUP_KEYS = ("hour", "day", "user", "character", "model")


@dataclass(frozen=True)
class UsageQuery:
    start: datetime
    end: datetime  # exclusive
    interval: str  # hour | day
    group_by: Sequence[str]
    user_id: int | None  # None: every user (staff only)


def metrics_dict(metrics: Metrics) -> dict[str, Any]:
    """A row's metrics in the API's shape: counters, failures, and percentiles merged from the
    histograms (their resolution: analytics_app.histograms)."""
    body: dict[str, Any] = dict(metrics.counts)
    body["failures"] = dict(sorted(metrics.failures.items()))
    body["ttft_ms"] = {
        "p50": histograms.percentile(metrics.ttft_hist, 0.50),
        "p95": histograms.percentile(metrics.ttft_hist, 0.95),
    }
    body["total_ms"] = {
        "p50": histograms.percentile(metrics.total_hist, 0.50),
        "p95": histograms.percentile(metrics.total_hist, 0.95),
    }
    return {name: body[name] for name in METRIC_ORDER}


METRIC_ORDER = (
    "user_messages",
    "replies",
    "completed",
    "failed",
    "cancelled",
    "blocked",
    "flagged",
    "prompt_tokens",
    "completion_tokens",
    "failures",
    "ttft_ms",
    "total_ms",
    "thumbs_up",
    "thumbs_down",
)


def usage(query: UsageQuery) -> dict[str, Any]:
    """The usage rows of `query`: rollup rows whose bucket starts in [start, end), merged by
    the group keys, ordered by time then keys; and their totals."""
    rows = UsageRow.objects.filter(
        interval=query.interval, start__gte=query.start, start__lt=query.end
    )
    if query.user_id is not None:
        rows = rows.filter(user_id=query.user_id)
    by_time = any(k in TIME_KEYS for k in query.group_by)
    by_user, by_character = "user" in query.group_by, "character" in query.group_by
    by_model = "model" in query.group_by
    groups: dict[tuple[Any, ...], Metrics] = defaultdict(Metrics)
    totals = Metrics()
    fields = ("start", "user_id", "character_id", "model", *COUNTERS)
    for row in rows.only(*fields, "failures", "ttft_hist", "total_hist").order_by():
        key = (
            row.start if by_time else None,
            row.user_id if by_user else None,
            row.character_id if by_character else None,
            row.model if by_model else None,
        )
        groups[key].merge(row)
        totals.merge(row)
    users: dict[int, str] = {}
    characters: dict[int, str] = {}
    if by_user:
        ids = {k[1] for k in groups}
        users = dict(
            get_user_model()._default_manager.filter(pk__in=ids).values_list("pk", "username")
        )
    if by_character:
        ids = {k[2] for k in groups}
        characters = dict(Character.objects.filter(pk__in=ids).values_list("pk", "name"))
    out = []
    for key in sorted(groups, key=lambda k: tuple("" if v is None else v for v in k)):
        start, user_id, character_id, model = key
        item: dict[str, Any] = {}
        if start is not None:
            item[query.interval] = (
                start.date().isoformat()
                if query.interval == UsageRow.Interval.DAY
                else start.isoformat().replace("+00:00", "Z")
            )
        if user_id is not None:
            item["user_id"], item["username"] = user_id, users.get(user_id, "")
        if character_id is not None:
            item["character_id"] = character_id
            item["character_name"] = characters.get(character_id, "")
        if model is not None:
            item["model"] = model
        item.update(metrics_dict(groups[key]))
        out.append(item)
    return {
        "from": query.start.isoformat().replace("+00:00", "Z"),
        "to": query.end.isoformat().replace("+00:00", "Z"),
        "interval": query.interval,
        "group_by": list(query.group_by),
        "rows": out,
        "totals": metrics_dict(totals),
    }

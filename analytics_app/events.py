"""Events for the analytics worker: which (user, hour) buckets to recompute.

An event is a small JSON object RPUSHed onto `{SERVICE_NAME}:analytics:events`:
`{"m": message id or null, "u": the conversation owner's id, "t": [epoch seconds, ...]}`, one
time per bucket to recompute (a message's `created_at`). The worker recomputes the buckets from
the database, so an event carries no numbers: a repeated event changes nothing, a lost one is
caught when the fill pass closes its hour (analytics_app.rollups.fill).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models.functions import TruncHour

from messageservice.redis_clients import sync_redis

logger = logging.getLogger(__name__)


def events_key() -> str:
    return f"{settings.SERVICE_NAME}:analytics:events"


def encode(owner_id: int, times: Iterable[datetime], message_id: int | None = None) -> bytes:
    # Whole seconds, rounded down: enough for the hour, and never into the next one.
    event = {"m": message_id, "u": owner_id, "t": [math.floor(t.timestamp()) for t in times]}
    return json.dumps(event, separators=(",", ":")).encode()


def push(*events: bytes) -> None:
    """RPUSH `events` in one round trip. Never raises: a lost event waits for the fill pass."""
    if not events:
        return
    try:
        sync_redis().rpush(events_key(), *events)
    except Exception:
        logger.warning(
            "analytics: %d event(s) not queued; the fill pass will count them", len(events)
        )


def _push_on_commit(*events: bytes) -> None:
    transaction.on_commit(lambda: push(*events))


def reply_finished(message: Any) -> None:
    """A reply reached a terminal status (hooks.reply_finished, after commit): one RPUSH, no SQL.
    The worker adds the bucket of the reply's user message (whose model is the reply's)."""
    push(encode(message.conversation.owner_id, [message.created_at], message.pk))


def message_changed(message: Any) -> None:
    """Inside or outside a transaction: `message` (conversation loaded) was flagged, rated or
    otherwise changed in a way the rollups count; its bucket is recomputed after commit."""
    _push_on_commit(encode(message.conversation.owner_id, [message.created_at], message.pk))


def messages_changed(message_ids: Iterable[int]) -> None:
    """The same for messages known by id (moderators' decisions): one query for their buckets."""
    from messages_app.models import Message

    rows = Message.objects.filter(pk__in=list(message_ids)).values_list(
        "pk", "conversation__owner_id", "created_at"
    )
    _push_on_commit(*(encode(owner, [created], pk) for pk, owner, created in rows))


def conversation_deleting(conversation: Any) -> None:
    """Before `conversation` is deleted (inside the deleting transaction): after commit, the
    hours that held its messages are recomputed without them."""
    from messages_app.models import Message

    hours = (
        Message.objects.filter(conversation=conversation)
        .annotate(h=TruncHour("created_at"))
        .values_list("h", flat=True)
        .distinct()
        .order_by()
    )
    times = list(hours)
    if times:
        _push_on_commit(encode(conversation.owner_id, times))

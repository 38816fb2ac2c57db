"""Content safety in the message flow: the input check of a send, and what a verdict does.

The classifier runs in the safety worker (messages_app.safety); this module only asks it and
acts on the answer: a flagged message is marked, queued for the moderators, and announced
(`safety.flagged`). No classifier is loaded here.
"""

from __future__ import annotations

import logging

import redis
from django.conf import settings
from django.db import transaction

from messages_app import events
from messages_app.broadcast import send_event
from messages_app.errors import Unavailable
from messages_app.models import Message
from messages_app.moderation import review_record
from messages_app.safety.categories import Verdict
from messages_app.safety.client import PendingCheck, SafetyUnavailable, submit

logger = logging.getLogger(__name__)


def input_check_start(content: str) -> PendingCheck | None:
    """Send a user's text to the safety worker; the answer is read by input_verdict, so the
    classification overlaps the caller's database work. None when filtering is off."""
    if not settings.ENABLE_CONTENT_FILTERING:
        return None
    try:
        return submit(content, kind="input")
    except (SafetyUnavailable, redis.RedisError) as exc:
        _unchecked(exc)
        return None


def input_verdict(pending: PendingCheck | None) -> Verdict | None:
    """The verdict on a started input check; None when there is none. A check that cannot
    be answered in SAFETY_TIMEOUT_SECONDS raises Unavailable (503 `safety_unavailable`), or
    lets the message through when SAFETY_ON_ERROR is `allow`."""
    if pending is None:
        return None
    try:
        return pending.result()
    except (SafetyUnavailable, redis.RedisError) as exc:
        _unchecked(exc)
        return None


def _unchecked(exc: Exception) -> None:
    if settings.SAFETY_ON_ERROR == "allow":
        logger.warning("input check unavailable (%s); the message goes through unchecked", exc)
        return None
    logger.warning("input check unavailable (%s); the send is refused", exc)
    raise Unavailable(
        "The content check is unavailable; nothing was saved. Try again.",
        code="safety_unavailable",
    ) from exc


def input_blocks(verdict: Verdict | None) -> bool:
    return verdict is not None and verdict.flagged and settings.SAFETY_INPUT_ACTION == "block"


def safety_record(message: Message, verdict: Verdict, *, source: str, blocked: bool) -> None:
    """Inside the transaction that saves `message`: mark it flagged with the verdict's
    categories and scores, put it in the moderators' queue, and after commit tell the
    conversation's clients `safety.flagged`."""
    message.safety_flagged = True
    message.safety_categories = list(verdict.categories)
    message.safety_scores = dict(verdict.scores)
    Message.objects.filter(pk=message.pk).update(
        safety_flagged=True,
        safety_categories=message.safety_categories,
        safety_scores=message.safety_scores,
    )
    review_record(message, source=source, verdict=verdict, blocked=blocked)
    conversation = message.conversation
    event = events.safety_flagged(message_id=message.pk, categories=message.safety_categories)
    transaction.on_commit(lambda: send_event(conversation, event))

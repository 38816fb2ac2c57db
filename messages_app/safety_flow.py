"""Content safety in the message flow: the input check of a send, and what a verdict does.

The classifier runs in the safety worker (messages_app.safety); this module asks it and acts
on the answer. No classifier is loaded here.

A send hands its text to the safety worker first (`input_check_start`, one LPUSH) and is
saved and queued without waiting: the check runs while the reply's generation starts, and
the generation releases no delta before the verdict, kept in the reply's gate, lets it
(llm_app.input_gate). The web side then settles the check (`input_settle`): a blocked
message is marked `blocked`, its reply ends `blocked` with no text, the moderators get it,
and the client gets 422 / an `error` frame `content_blocked`. Whichever of the web and the
generation sees a blocking verdict first applies it; the other finds it applied.
"""

from __future__ import annotations

import logging
from uuid import UUID

import redis
from django.conf import settings
from django.db import transaction

from analytics_app import events as analytics_events
from messages_app import events
from messages_app.broadcast import send_event
from messages_app.errors import ContentBlocked, Unavailable
from messages_app.models import Message, ReviewItem
from messages_app.moderation import review_record
from messages_app.replies import ReplyEnd, reply_end, reply_engine
from messages_app.safety.categories import Verdict
from messages_app.safety.client import PendingCheck, SafetyUnavailable, gate_key, submit

logger = logging.getLogger(__name__)

INPUT_BLOCKED_TEXT = "The message was blocked by the content filter; it was not answered."
UNCHECKED_TEXT = "The content check is unavailable; the message was not sent. Try again."


def input_check_start(content: str, *, gate: UUID) -> PendingCheck | None:
    """Send a user's text to the safety worker, its answer to be kept in the gate of the
    reply with stream key `gate` too. None when filtering is off. When the check cannot even
    be asked (Redis), SAFETY_ON_ERROR decides: reject raises Unavailable before anything is
    saved; allow lets the message through unchecked."""
    if not settings.ENABLE_CONTENT_FILTERING:
        return None
    try:
        return submit(content, kind="input", gate=gate_key(gate.hex))
    except (SafetyUnavailable, redis.RedisError) as exc:
        if settings.SAFETY_ON_ERROR == "allow":
            logger.warning("input check unavailable (%s); the message goes unchecked", exc)
            return None
        raise Unavailable(UNCHECKED_TEXT, code="safety_unavailable") from exc


def input_blocks(verdict: Verdict) -> bool:
    return verdict.flagged and settings.SAFETY_INPUT_ACTION == "block"


def input_settle(
    *,
    user_message: Message,
    reply: Message | None,
    verdict: Verdict | None,
    error: Exception | None = None,
) -> None:
    """The web side of a send's input check, once its verdict (or its failure) is known:
    apply it, and raise what the client is told: ContentBlocked (422), or Unavailable (503
    `safety_unavailable`) when the check went unanswered and SAFETY_ON_ERROR is reject."""
    if verdict is None:
        if settings.SAFETY_ON_ERROR == "allow":
            logger.warning("input check unavailable (%s); the message went unchecked", error)
            return
        logger.warning("input check unavailable (%s); the send is refused", error)
        input_unchecked_apply(user_message.pk, reply.pk if reply is not None else None)
        raise Unavailable(UNCHECKED_TEXT, code="safety_unavailable")
    blocked = input_verdict_apply(user_message.pk, reply.pk if reply is not None else None, verdict)
    if blocked:
        raise input_blocked_error(user_message.pk, verdict.categories)
    # Flagged and sent on: the caller's copy shows it.
    user_message.refresh_from_db(fields=["status", "safety_flagged", "safety_categories"])


def input_wait_and_settle(
    check: PendingCheck | None, *, user_message: Message, reply: Message | None
) -> None:
    """input_settle after waiting for the check (sync: REST views). Nothing when there is no
    check, or when its verdict flags nothing."""
    if check is None:
        return
    try:
        verdict = check.result()
    except SafetyUnavailable as exc:
        input_settle(user_message=user_message, reply=reply, verdict=None, error=exc)
        return
    if verdict.flagged:
        input_settle(user_message=user_message, reply=reply, verdict=verdict)


def input_blocked_error(message_id: int, categories: list[str]) -> ContentBlocked:
    return ContentBlocked(
        "The message was blocked by the content filter; it was not sent.",
        details={"categories": list(categories), "message_id": message_id},
    )


def input_verdict_apply(user_message_id: int, reply_id: int | None, verdict: Verdict) -> bool:
    """Apply a flagging verdict on a user message (idempotent): it is marked, queued for the
    moderators and announced; with SAFETY_INPUT_ACTION=block it becomes `blocked` and its
    reply ends `blocked` without text (its generation is stopped). True if blocked."""
    if not verdict.flagged:
        return False
    block = input_blocks(verdict)
    with transaction.atomic():
        message = (
            Message.objects.select_for_update(of=("self",))
            .select_related("conversation")
            .filter(pk=user_message_id)
            .first()
        )
        if message is None:
            return block  # deleted with its conversation
        if not message.safety_flagged:
            if block:
                message.status = Message.Status.BLOCKED
                Message.objects.filter(pk=message.pk).update(status=Message.Status.BLOCKED)
            safety_record(message, verdict, source=ReviewItem.Source.INPUT, blocked=block)
        elif message.status == Message.Status.BLOCKED:
            block = True  # applied before (by the other side); settle the same way
        ended = None
        if block and reply_id is not None:
            ended = reply_end(
                message_id=reply_id,
                end=ReplyEnd(
                    status=Message.Status.BLOCKED,
                    finish_reason="input_blocked",
                    error_code="content_blocked",
                    error_message=INPUT_BLOCKED_TEXT,
                ),
            )
    if ended is not None:
        reply_engine().cancel(ended)  # stop its generation, if it runs
    return block


def input_unchecked_apply(user_message_id: int, reply_id: int | None) -> None:
    """The check of a user message went unanswered and SAFETY_ON_ERROR is reject: the
    message is marked `failed` (not sent), its reply ends `failed` (`safety_unavailable`)."""
    with transaction.atomic():
        Message.objects.filter(pk=user_message_id).exclude(status=Message.Status.BLOCKED).update(
            status=Message.Status.FAILED, finish_reason="safety_unavailable"
        )
        ended = None
        if reply_id is not None:
            ended = reply_end(
                message_id=reply_id,
                end=ReplyEnd(
                    status=Message.Status.FAILED,
                    error_code="safety_unavailable",
                    error_message=UNCHECKED_TEXT,
                ),
            )
    if ended is not None:
        reply_engine().cancel(ended)


def safety_record(message: Message, verdict: Verdict, *, source: str, blocked: bool) -> None:
    """Inside a transaction: mark `message` flagged with the verdict's categories and
    scores, put it in the moderators' queue, and after commit tell the conversation's clients
    `safety.flagged`."""
    message.safety_flagged = True
    message.safety_categories = list(verdict.categories)
    message.safety_scores = dict(verdict.scores)
    Message.objects.filter(pk=message.pk).update(
        safety_flagged=True,
        safety_categories=message.safety_categories,
        safety_scores=message.safety_scores,
    )
    review_record(message, source=source, verdict=verdict, blocked=blocked)
    analytics_events.message_changed(message)
    conversation = message.conversation
    event = events.safety_flagged(message_id=message.pk, categories=message.safety_categories)
    transaction.on_commit(lambda: send_event(conversation, event))

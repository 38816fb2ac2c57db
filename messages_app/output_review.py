"""The content check of a reply after it ended, where it did not run inline.

With SAFETY_OUTPUT_MODE=after every finished reply with text is checked here, by the message
processor; with the inline checks, a reply whose end no live check saw is (the safety worker
was down or late, or the reply was cancelled mid-sentence). Such replies are saved with
`output_review` set (llm_app.output_safety.review_after_end).

A reply that the check flags is blocked after the fact, with what users see of a reply the
live checks stopped: it becomes `blocked`, its text is hidden from REST and from every event
(kept for the moderators), its token log is deleted so no resume replays it, it joins the
moderators' queue, and its clients get `safety.flagged`, then `generation.failed` with code
`content_blocked` and the message. Every step can run twice with the same result.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from analytics_app import events as analytics_events
from messages_app import events, streams
from messages_app.broadcast import send_event
from messages_app.models import Message, ReviewItem
from messages_app.safety.categories import Verdict
from messages_app.safety.client import submit
from messages_app.safety_flow import safety_record

logger = logging.getLogger(__name__)

OUTPUT_BLOCKED_TEXT = "The reply was blocked by the content filter."
# What a check after the fact may block: any ended reply with text a user was shown.
_REVIEWABLE = (Message.Status.COMPLETED, Message.Status.CANCELLED, Message.Status.FAILED)


def output_review(reply: Message) -> bool:
    """Check the whole text of the ended `reply` (its `output_review` set) and apply the
    verdict; True if it blocked the reply. Raises SafetyUnavailable when no verdict came (the
    review stays due: the caller tries again later). With content filtering off, or nothing
    to check, the review is just marked done."""
    if (
        not settings.ENABLE_CONTENT_FILTERING
        or reply.status not in _REVIEWABLE
        or not reply.content.strip()
    ):
        _review_done(reply)
        return False
    verdict = submit(reply.content, kind="output").result()
    if not verdict.flagged:
        _review_done(reply)
        return False
    return output_block_after(reply.pk, verdict)


def _review_done(reply: Message) -> None:
    Message.objects.filter(pk=reply.pk, output_review=True).update(output_review=False)
    reply.output_review = False


def output_block_after(reply_id: int, verdict: Verdict) -> bool:
    """Block the ended reply `reply_id` after the fact, as `verdict` (flagged) says; True if
    it was blocked now. Nothing when it is gone, already blocked or reviewed meanwhile (a
    second run), or was not waiting for this review."""
    with transaction.atomic():
        message = (
            Message.objects.select_for_update(of=("self",))
            .select_related("conversation", "generation")
            .filter(pk=reply_id, role=Message.Role.ASSISTANT)
            .first()
        )
        if message is None or not message.output_review or message.status not in _REVIEWABLE:
            return False
        message.status = Message.Status.BLOCKED
        message.finish_reason = "blocked"
        message.output_review = False
        message.updated_at = timezone.now()
        message.save(update_fields=["status", "finish_reason", "output_review", "updated_at"])
        generation = getattr(message, "generation", None)
        if generation is not None:
            # Its generation says why, as for a reply the live checks stopped.
            generation.error_code = "content_blocked"
            generation.error_message = OUTPUT_BLOCKED_TEXT
            generation.save(update_fields=["error_code", "error_message"])
        # The review item, the message's safety fields and `safety.flagged` (after commit).
        safety_record(message, verdict, source=ReviewItem.Source.OUTPUT, blocked=True)
        transaction.on_commit(lambda: _announce_block(message))
    logger.info("reply %s blocked after it ended: %s", reply_id, ", ".join(verdict.categories))
    return True


def _announce_block(message: Message) -> None:
    # Its text is for the moderators: no resume may replay it.
    streams.log_delete(message.stream_key)
    send_event(
        message.conversation,
        events.generation_ended(message, code="content_blocked", text=OUTPUT_BLOCKED_TEXT),
    )
    try:
        # Its analytics bucket counts it blocked now, no longer completed.
        analytics_events.reply_finished(message)
    except Exception:
        logger.exception("reply %s: analytics event after the block failed", message.pk)

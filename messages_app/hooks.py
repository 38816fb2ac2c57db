"""Domain hooks: what the rest of the service does when something in a conversation happens.

`reply_finished` is the one place that learns a reply has ended, whichever way it ended; it
runs after the end state is committed. Features that act on finished replies (output safety
review, analytics rollups, metrics) are called from here and from nowhere else.
"""

from __future__ import annotations

import logging

from django.conf import settings

from messages_app import limits
from messages_app.models import Message

logger = logging.getLogger("messages_app.replies")


def reply_finished(message_id: int) -> None:
    """A reply reached a terminal status (committed). Never raises into its caller.

    Frees the reply's in-flight slot and adds its prompt and completion tokens to its
    conversation owner's daily usage (one query by primary key, one Redis round trip)."""
    rate_limits = settings.ENABLE_RATE_LIMITS
    if not rate_limits and not logger.isEnabledFor(logging.INFO):
        return
    try:
        row = (
            Message.objects.filter(pk=message_id)
            .values(
                "conversation_id",
                "conversation__owner_id",
                "stream_key",
                "status",
                "finish_reason",
                "prompt_tokens",
                "completion_tokens",
                "total_ms",
            )
            .first()
        )
        if row is None:
            # Deleted with its conversation: its slot expires (messages_app.limits).
            logger.info("reply %s finished with its conversation deleted", message_id)
            return
        if rate_limits:
            limits.reply_ended(
                row["conversation__owner_id"],
                row["stream_key"].hex,
                (row["prompt_tokens"] or 0) + (row["completion_tokens"] or 0),
            )
        logger.info(
            "reply %s finished: %s (%s), %s tokens in %s ms, conversation %s",
            message_id,
            row["status"],
            row["finish_reason"] or "-",
            row["completion_tokens"],
            row["total_ms"],
            row["conversation_id"],
        )
    except Exception:
        logger.exception("reply_finished(%s) failed", message_id)

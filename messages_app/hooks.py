"""Domain hooks: what the rest of the service does when something in a conversation happens.

`reply_finished` is the one place that learns a reply has ended, whichever way it ended; it
runs after the end state is committed. Features that act on finished replies (output safety
review, analytics rollups, metrics) are called from here and from nowhere else.
"""

from __future__ import annotations

import logging

from messages_app.models import Message

logger = logging.getLogger("messages_app.replies")


def reply_finished(message_id: int) -> None:
    """A reply reached a terminal status (committed). Never raises into its caller."""
    if not logger.isEnabledFor(logging.INFO):
        return
    try:
        row = (
            Message.objects.filter(pk=message_id)
            .values("conversation_id", "status", "finish_reason", "completion_tokens", "total_ms")
            .first()
        )
        if row is None:
            logger.info("reply %s finished with its conversation deleted", message_id)
            return
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

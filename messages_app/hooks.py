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


def reply_finished(message: Message) -> None:
    """A reply reached a terminal status (committed): `message` as saved, with its
    conversation loaded (it may have been deleted since). Never raises into its caller.

    Frees the reply's in-flight slot and adds its prompt and completion tokens to its
    conversation owner's daily usage (one Redis round trip, no query)."""
    try:
        if settings.ENABLE_RATE_LIMITS:
            limits.reply_ended(
                message.conversation.owner_id,
                message.stream_key.hex,
                (message.prompt_tokens or 0) + (message.completion_tokens or 0),
            )
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "reply %s finished: %s (%s), %s tokens in %s ms, conversation %s",
                message.pk,
                message.status,
                message.finish_reason or "-",
                message.completion_tokens,
                message.total_ms,
                message.conversation_id,
            )
    except Exception:
        logger.exception("reply_finished(%s) failed", message.pk)

"""Domain hooks: what the rest of the service does when something in a conversation happens.

`reply_finished` is the one place that learns a reply has ended, whichever way it ended; it
runs after the end state is committed. Features that act on finished replies are called from
here and from nowhere else:
- the rate limiter frees the reply's in-flight slot and counts its tokens (messages_app.limits);
- metrics count it in the process that ended it (messageservice.metrics);
- the message processor (queue `messages`) post-processes it: title, output review
  (messages_app.postprocess);
- the analytics worker rolls it up with the next batch (analytics_app.events).
Each step is guarded on its own: one failing never stops the others, nor the caller.
"""

from __future__ import annotations

import logging

from django.conf import settings

from analytics_app import events as analytics_events
from messages_app import limits, postprocess
from messages_app.models import Message
from messageservice import metrics

logger = logging.getLogger("messages_app.replies")


def reply_finished(message: Message, code: str = "") -> None:
    """A reply reached a terminal status (committed): `message` as saved, with its
    conversation loaded (it may have been deleted since); `code` the error code it ended with
    (ReplyEnd.error_code), which its loaded generation may not hold yet. Never raises into its
    caller."""
    if settings.ENABLE_RATE_LIMITS:
        try:
            limits.reply_ended(
                message.conversation.owner_id,
                message.stream_key.hex,
                (message.prompt_tokens or 0) + (message.completion_tokens or 0),
            )
        except Exception:
            logger.exception("reply_finished(%s): rate limits failed", message.pk)
    try:
        metrics.reply_finished(message, code)
    except Exception:
        logger.exception("reply_finished(%s): metrics failed", message.pk)
    for name, step in (
        ("post-processing", postprocess.reply_finished),
        ("analytics", analytics_events.reply_finished),
    ):
        try:
            step(message)
        except Exception:
            logger.exception("reply_finished(%s): %s failed", message.pk, name)
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

"""Post-processing of finished replies on queue `messages` (issue 10). Skeleton."""

from __future__ import annotations

from messages_app.models import Message


def reply_finished(message: Message) -> None:
    """Queue the post-processing of a finished reply (the message processor's job)."""

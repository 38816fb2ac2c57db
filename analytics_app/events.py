"""Reply-finished events for the analytics worker (issue 10). Skeleton."""

from __future__ import annotations

from typing import Any


def reply_finished(message: Any) -> None:
    """Hand a finished reply to the analytics worker's next batch."""

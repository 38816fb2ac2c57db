"""The one way real-time events leave the service: to a conversation's channel-layer group.

An event dict is the websocket frame itself; its dotted `type` also names the consumer handler.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction

logger = logging.getLogger(__name__)


def conversation_group(conversation_id: int) -> str:
    return f"conversation.{conversation_id}"


def checked_event(event: dict[str, Any]) -> dict[str, Any]:
    # Tests turn this on so that a payload that cannot cross the wire fails where it is made.
    if getattr(settings, "EVENTS_JSON_ROUNDTRIP", False):
        return dict(json.loads(json.dumps(event)))
    return event


async def asend_event(conversation_id: int, event: dict[str, Any]) -> None:
    """Send now, from async code (the generation loop). Only call after the data is committed."""
    layer = get_channel_layer()
    assert layer is not None
    await layer.group_send(conversation_group(conversation_id), checked_event(event))


def send_event(conversation_id: int, *events: dict[str, Any]) -> None:
    """Send now, in order, from sync code (one hop to the event loop for all of them).

    A channel-layer failure is logged, not raised: the data is saved already.
    """

    async def send_all() -> None:
        for event in events:
            await asend_event(conversation_id, event)

    try:
        async_to_sync(send_all)()
    except Exception:
        logger.exception(
            "could not announce %s to conversation %s", events[0]["type"], conversation_id
        )


def send_event_on_commit(conversation_id: int, event: dict[str, Any]) -> None:
    """Announce once the surrounding transaction commits, so no client sees unsaved data."""
    transaction.on_commit(lambda: send_event(conversation_id, event))

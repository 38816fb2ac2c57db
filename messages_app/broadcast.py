"""The one way real-time events leave the service: to a conversation's channel-layer group.

Announce only what is committed. A failure to announce (Redis down) never undoes saved data:
the event is retried in the background for ANNOUNCE_RETRY_SECONDS, so clients that stay
connected through a short Redis outage still hear how their reply ended.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

from messages_app.events import Event
from messages_app.models import Conversation
from messageservice import logs
from messageservice.channel_layer import group_publisher

logger = logging.getLogger(__name__)


def conversation_group(conversation: Conversation) -> str:
    """The group every client of `conversation` listens on (named by its random channel key)."""
    return f"conversation.{conversation.channel_key.hex}"


def checked_event(event: Event) -> Event:
    # Tests turn this on so that a payload that cannot cross the wire fails where it is made.
    if getattr(settings, "EVENTS_JSON_ROUNDTRIP", False):
        return dict(json.loads(json.dumps(event)))
    return event


async def asend_event(group: str, event: Event) -> None:
    """Send now, from async code. Raises when the channel layer cannot be reached."""
    layer = get_channel_layer()
    assert layer is not None
    await layer.group_send(group, checked_event(event))


async def asend_or_retry(group: str, *events: Event) -> None:
    """Send now, in order; if Redis is unreachable, keep retrying in the background."""
    for index, event in enumerate(events):
        try:
            await asend_event(group, event)
        except Exception:
            logger.warning("could not announce %s; retrying in the background", event["type"])
            _retry_later(group, list(events[index:]))
            return


def publish_in(pipeline: Any, conversation: Conversation, *events: Event) -> bool:
    """Add the PUBLISH of each event to `conversation`'s group to a sync Redis `pipeline`
    (of the channel layer's Redis), so they leave in the caller's round trip. False, adding
    nothing, when the channel layer is not one that can be published to directly."""
    group = conversation_group(conversation)
    publisher = group_publisher(get_channel_layer(), group)
    if publisher is None:
        return False
    channel, serialize = publisher
    for event in events:
        pipeline.publish(channel, serialize(checked_event(event)))
    return True


def send_event(conversation: Conversation, *events: Event) -> None:
    """Send now, in order, from sync code (one hop to an event loop for all of them).

    A channel-layer failure is logged and retried in the background, never raised.
    """
    group = conversation_group(conversation)

    async def send_all() -> None:
        for event in events:
            await asend_event(group, event)

    try:
        async_to_sync(send_all)()
    except Exception:
        logger.warning("could not announce %s; retrying in the background", events[0]["type"])
        _retry_later(group, list(events))


def _retry_later(group: str, events: list[Event]) -> None:
    threading.Thread(
        target=_retry, args=(group, events, logs.carried()), name="announce-retry", daemon=True
    ).start()


def _retry(group: str, events: list[Event], ids: dict[str, Any]) -> None:
    with logs.bind(**ids):  # a new thread starts with no ids
        _retry_for_a_while(group, events)


def _retry_for_a_while(group: str, events: list[Event]) -> None:
    deadline = time.monotonic() + settings.ANNOUNCE_RETRY_SECONDS
    delay = 0.5
    while time.monotonic() < deadline:
        time.sleep(delay)
        delay = min(delay * 2, 5.0)
        try:
            asyncio.run(_send_fresh(group, events))
        except Exception:  # noqa: S112 - still down: try again after the next delay
            continue
        logger.info("announced %s after a retry", events[0]["type"])
        return
    logger.error("gave up announcing %s to %s", events[0]["type"], group)


async def _send_fresh(group: str, events: list[Event]) -> None:
    # A private loop in this thread; the channel layer drops its connections when it closes.
    for event in events:
        await asend_event(group, event)

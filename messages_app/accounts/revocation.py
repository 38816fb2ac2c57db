"""Account events for open websockets: every connection of a user joins that user's group."""

from __future__ import annotations

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from messages_app import events

logger = logging.getLogger(__name__)


def account_group(user_id: int) -> str:
    """The channel-layer group that every websocket of `user_id` joins."""
    return f"account.{user_id}"


def account_revoked_send(*, user_id: int, reason: str) -> None:
    """Tell every open websocket of `user_id` to close (the consumer answers 4401).

    Best effort: called after commit, when the account change is already saved; if the
    channel layer is down the failure is logged, and sockets close when they next reconnect.
    """
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(account_group(user_id), events.account_revoked(reason))
    except Exception:
        logger.warning("could not close the websockets of user %s", user_id, exc_info=True)

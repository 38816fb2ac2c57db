"""The channel layer: channels-redis's pub/sub layer, with a prompt receiver.

Every use of channels-redis private internals is in this module, and
tests/test_channel_layer_internals.py fails if an upgrade changes them.

Upstream, a process's receiver that has no subscription polls every 100 ms for one to appear,
so the first events after a process's first (or only) group_add wait up to 100 ms: a user
alone on a daphne process sees that on every new conversation. Here the receiver is woken by
the subscription itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from channels_redis.pubsub import (
    RedisPubSubChannelLayer,
    RedisPubSubLoopLayer,
    RedisSingleShardConnection,
)

from messageservice import logs

logger = logging.getLogger(__name__)


def group_publisher(layer: Any, group: str) -> tuple[str, Any] | None:
    """(pub/sub channel, serializer) to PUBLISH a message to `group` directly, so that one
    pipeline can hold it with other commands; None for any layer but ours."""
    if not isinstance(layer, PromptPubSubChannelLayer):
        return None
    return layer.group_channel(group), layer.serialize


# How long one read of the subscription waits before the receiver loops (upstream: 0.1 s).
# Each empty wake-up costs CPU in every web process at rest: 3.4 ms/s at 0.1 s on the 2-core
# machine of bench/RESULTS.md. A message ends the wait at once, whatever this is.
RECEIVE_TIMEOUT_SECONDS = 1.0

# Put in every local channel when the receiver gets Redis back after losing it: pub/sub
# messages published meanwhile are gone, so consumers catch up from the token log and the DB.
RECONNECTED = {"type": "layer.reconnected"}


class _PromptShard(RedisSingleShardConnection):
    def __init__(self, host: Any, channel_layer: Any) -> None:
        super().__init__(host, channel_layer)
        self._subscribed = asyncio.Event()
        self._lost = False

    async def subscribe(self, channel: str) -> None:
        await super().subscribe(channel)
        self._subscribed.set()

    async def _do_receiving(self) -> None:
        # The receiver serves every consumer of the process; it was started by one of them.
        logs.detach()
        while True:
            try:
                if self._pubsub and self._pubsub.subscribed:
                    message = await self._pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=RECEIVE_TIMEOUT_SECONDS
                    )
                    if self._lost:
                        # redis-py reconnected and subscribed again before this read.
                        self._lost = False
                        logger.warning("channel layer: Redis is back; clients catch up")
                        self._tell_local_channels(RECONNECTED)
                    self._receive_message(message)
                else:
                    self._subscribed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._subscribed.wait(), timeout=0.1)
            except (TimeoutError, asyncio.CancelledError, GeneratorExit):
                raise
            except Exception as exc:
                if not self._lost:
                    logger.warning("channel layer: lost Redis (%s); reconnecting", exc)
                self._lost = True
                await asyncio.sleep(0.5)

    def _tell_local_channels(self, message: dict[str, Any]) -> None:
        layer = self.channel_layer  # the loop's RedisPubSubLoopLayer
        data = layer.channel_layer.serialize(message)
        for queue in layer.channels.values():
            queue.put_nowait(data)


class PromptPubSubChannelLayer(RedisPubSubChannelLayer):
    def group_channel(self, group: str) -> str:
        """The Redis pub/sub channel that channels-redis publishes `group`'s messages on."""
        # Upstream: RedisPubSubLoopLayer._get_group_channel_name, "<prefix>__group__<group>".
        return f"{self._kwargs.get('prefix', 'asgi')}__group__{group}"

    def _get_layer(self) -> RedisPubSubLoopLayer:
        loop = asyncio.get_running_loop()
        layer = self._layers.get(loop)
        if layer is None:
            layer = super()._get_layer()
            layer._shards = [_PromptShard(shard.host, layer) for shard in layer._shards]
        return layer

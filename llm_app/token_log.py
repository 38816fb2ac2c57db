"""The durable token log: every delta of a generation, `{seq, text}`, in a Redis Stream.

Entry ids are `<seq>-0`, so Redis itself refuses a duplicate or out-of-order append, and
"everything after seq n" is one XRANGE. The log outlives the generation by
TOKEN_LOG_TTL_SECONDS (at least 10 minutes), for clients that resume late.
"""

from __future__ import annotations

from typing import Any

import redis
from channels.layers import get_channel_layer
from channels_redis.pubsub import RedisPubSubChannelLayer  # the base of ours
from django.conf import settings

from messageservice.redis_clients import async_redis, sync_redis


def log_key(generation_id: int) -> str:
    return f"{settings.SERVICE_NAME}:gen:{generation_id}:tokens"


def group_publisher(group: str) -> tuple[str, Any] | None:
    """(pub/sub channel, serializer) of the Redis pub/sub channel layer for `group`, or None
    for any other layer. Lets a delta's log append and its fan-out share one round trip."""
    layer = get_channel_layer()
    if not isinstance(layer, RedisPubSubChannelLayer):
        return None
    # channels-redis names a group's pub/sub channel "<prefix>__group__<group>".
    prefix = layer._kwargs.get("prefix", "asgi")
    return f"{prefix}__group__{group}", layer.serialize


async def log_append(
    generation_id: int,
    seq: int,
    text: str,
    *,
    publisher: tuple[str, Any] | None = None,
    event: dict[str, Any] | None = None,
) -> None:
    """Append delta `seq`; with a `publisher` (from group_publisher), publish `event` in the
    same round trip. The append comes first, so a resume never misses a delta sent live."""
    client = async_redis()
    key = log_key(generation_id)
    async with client.pipeline(transaction=False) as pipe:
        pipe.xadd(key, {"t": text}, id=f"{seq}-0")
        if seq == 1:
            # Bound the life of a log whose writer dies before it can set the final expiry.
            pipe.expire(
                key, int(settings.MESSAGE_PROCESSING_TIMEOUT) + settings.TOKEN_LOG_TTL_SECONDS
            )
        if publisher is not None and event is not None:
            channel, serialize = publisher
            pipe.publish(channel, serialize(event))
        await pipe.execute()


async def log_seal(generation_id: int) -> None:
    """The generation ended: keep its log for TOKEN_LOG_TTL_SECONDS more."""
    await async_redis().expire(log_key(generation_id), settings.TOKEN_LOG_TTL_SECONDS)


async def log_read_after(
    generation_id: int, after_seq: int, upto_seq: int | None = None
) -> list[tuple[int, str]] | None:
    """Deltas with after_seq < seq <= upto_seq, in order; None when the log no longer exists."""
    client = async_redis()
    key = log_key(generation_id)
    end = f"{upto_seq}-0" if upto_seq is not None else "+"
    entries = await client.xrange(key, min=f"({after_seq}-0" if after_seq > 0 else "-", max=end)
    if not entries and not await client.exists(key):
        return None
    return [(int(entry_id.split(b"-")[0]), fields[b"t"].decode()) for entry_id, fields in entries]


async def log_last_seq(generation_id: int) -> int | None:
    """The newest seq in the log, 0 for an empty one; None when the log does not exist."""
    entries = await async_redis().xrevrange(log_key(generation_id), count=1)
    if entries:
        return int(entries[0][0].split(b"-")[0])
    return None


def log_read_sync(generation_id: int) -> list[tuple[int, str]]:
    """The whole log, from sync code; empty when it is gone or Redis cannot be reached."""
    try:
        entries: Any = sync_redis().xrange(log_key(generation_id))
    except redis.RedisError:
        return []
    return [(int(entry_id.split(b"-")[0]), fields[b"t"].decode()) for entry_id, fields in entries]

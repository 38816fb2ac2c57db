"""The durable token log of a reply, and the one helper that appends to it and publishes.

Every delta of a reply, `{seq, text}`, goes to a Redis Stream whose entry ids are `<seq>-0`, so
Redis itself refuses a duplicate or out-of-order append, and "everything after seq n" is one
XRANGE. The log is named by the reply's random `stream_key`, never by a database id, so a reset
or restored database, or two installations on one Redis, cannot meet each other's logs. It
outlives the reply by TOKEN_LOG_TTL_SECONDS (at least 10 minutes) for clients that resume late.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any
from uuid import UUID

import redis
from channels.layers import get_channel_layer
from django.conf import settings

from messages_app import events
from messages_app.broadcast import asend_event, checked_event, conversation_group
from messages_app.models import Message
from messageservice.channel_layer import group_publisher
from messageservice.redis_clients import async_redis, sync_redis


def reply_key(stream_key: UUID, suffix: str) -> str:
    """The Redis key `suffix` of the reply with `stream_key` (token log, lease, cancel flag…)."""
    return f"{settings.SERVICE_NAME}:reply:{stream_key.hex}:{suffix}"


def log_key(stream_key: UUID) -> str:
    return reply_key(stream_key, "tokens")


# KEYS[1] = the token log; ARGV = seq, text, first-delta TTL, pub/sub channel ("" = none),
# the serialized event. The append comes first and a refused one (a seq already logged)
# aborts the script, so a delta is never published without its log entry.
_APPEND_AND_PUBLISH = """
redis.call('XADD', KEYS[1], ARGV[1] .. '-0', 't', ARGV[2])
if ARGV[1] == '1' then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
if ARGV[4] ~= '' then
  redis.call('PUBLISH', ARGV[4], ARGV[5])
end
return 1
"""


class DeltaPublisher:
    """Appends the deltas of one reply to its log and publishes each to the conversation.

    Made once per stream: the group's pub/sub channel is resolved here, so each delta costs
    one Redis command (a script: XADD, then PUBLISH). The append comes first, so a client that
    resumes from the log never misses a delta that was already sent live.
    """

    def __init__(self, reply: Message, *, generation_id: int) -> None:
        self.generation_id = generation_id
        self.key = log_key(reply.stream_key)
        self.group = conversation_group(reply.conversation)
        self.publisher = group_publisher(get_channel_layer(), self.group)
        self.first_ttl = int(settings.MESSAGE_PROCESSING_TIMEOUT) + settings.TOKEN_LOG_TTL_SECONDS
        self.script = _append_script(async_redis())

    async def publish(self, seq: int, text: str) -> None:
        event = checked_event(
            events.generation_delta(generation_id=self.generation_id, seq=seq, text=text)
        )
        channel, payload = ("", b"")
        if self.publisher is not None:
            channel, serialize = self.publisher
            payload = serialize(event)
        await self.script(keys=[self.key], args=[seq, text, self.first_ttl, channel, payload])
        if self.publisher is None:
            await asend_event(self.group, event)


_scripts: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _append_script(client: Any) -> Any:
    """The append-and-publish script, registered once per asyncio Redis client."""
    script = _scripts.get(client)
    if script is None:
        script = _scripts[client] = client.register_script(_APPEND_AND_PUBLISH)
    return script


def log_seal(stream_key: UUID) -> None:
    """The reply ended: keep its log for TOKEN_LOG_TTL_SECONDS more (sync; best effort)."""
    # On failure the log still expires by the bound set with its first delta.
    with contextlib.suppress(redis.RedisError):
        sync_redis().expire(log_key(stream_key), settings.TOKEN_LOG_TTL_SECONDS)


def log_delete(stream_key: UUID) -> None:
    """The reply was blocked: its log goes at once (sync; best effort, it expires anyway)."""
    with contextlib.suppress(redis.RedisError):
        sync_redis().delete(log_key(stream_key))


async def log_read_after(
    stream_key: UUID, after_seq: int, upto_seq: int | None = None
) -> list[tuple[int, str]] | None:
    """Deltas with after_seq < seq <= upto_seq, in order; None when the log no longer exists."""
    client = async_redis()
    key = log_key(stream_key)
    end = f"{upto_seq}-0" if upto_seq is not None else "+"
    entries = await client.xrange(key, min=f"({after_seq}-0" if after_seq > 0 else "-", max=end)
    if not entries and not await client.exists(key):
        return None
    return [(int(entry_id.split(b"-")[0]), fields[b"t"].decode()) for entry_id, fields in entries]


async def log_last_seq(stream_key: UUID) -> int | None:
    """The newest seq in the log, 0 for an empty one; None when the log does not exist."""
    entries = await async_redis().xrevrange(log_key(stream_key), count=1)
    if entries:
        return int(entries[0][0].split(b"-")[0])
    return None


def log_read_sync(stream_key: UUID) -> list[tuple[int, str]]:
    """The whole log, from sync code; empty when it is gone or Redis cannot be reached."""
    try:
        entries: Any = sync_redis().xrange(log_key(stream_key))
    except redis.RedisError:
        return []
    return [(int(entry_id.split(b"-")[0]), fields[b"t"].decode()) for entry_id, fields in entries]


def log_length(stream_key: UUID) -> int:
    """How many deltas the log holds (sync; raises when Redis cannot be reached)."""
    return int(sync_redis().xlen(log_key(stream_key)))  # type: ignore[arg-type]

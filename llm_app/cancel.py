"""Cancelling a running generation: a Redis flag plus a pub/sub nudge to whichever worker runs it.

The flag covers a cancel that lands before the worker subscribed; the message wakes a running
generation at once, so the provider stream stops within a token interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from uuid import UUID

from django.conf import settings

from messages_app.streams import reply_key
from messageservice import logs
from messageservice.redis_clients import async_redis, sync_redis

logger = logging.getLogger(__name__)


def _channel() -> str:
    return f"{settings.SERVICE_NAME}:gen-cancel"


def _flag(stream_key: UUID) -> str:
    return reply_key(stream_key, "cancel")


def cancel_signal(stream_key: UUID) -> None:
    """Ask the worker running the reply with `stream_key` to stop (sync; from services)."""
    ttl = int(settings.MESSAGE_PROCESSING_TIMEOUT) + 60
    with sync_redis().pipeline(transaction=True) as pipe:
        pipe.set(_flag(stream_key), 1, ex=ttl)
        pipe.publish(_channel(), stream_key.hex)
        pipe.execute()


class CancelWatcher:
    """One subscription per event loop; hands out an asyncio.Event per watched generation."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def watch(self, stream_key: UUID) -> asyncio.Event:
        if self._task is None or self._task.done():
            self._ready.clear()
            self._task = asyncio.create_task(self._listen())
            await self._ready.wait()
        event = self._events.setdefault(stream_key.hex, asyncio.Event())
        if await async_redis().exists(_flag(stream_key)):
            event.set()
        return event

    def unwatch(self, stream_key: UUID) -> None:
        self._events.pop(stream_key.hex, None)

    async def _listen(self) -> None:
        logs.detach()  # one listener for the generations of the loop
        pubsub = async_redis().pubsub()
        try:
            await pubsub.subscribe(_channel())
            self._ready.set()
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                with contextlib.suppress(ValueError, AttributeError):
                    event = self._events.get(message["data"].decode())
                    if event is not None:
                        event.set()
        except Exception:
            # A lost subscription must not hold up generations; the flag is still checked.
            logger.exception("cancel listener stopped")
            self._ready.set()
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task


_watchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, CancelWatcher] = (
    weakref.WeakKeyDictionary()
)


def cancel_watcher() -> CancelWatcher:
    loop = asyncio.get_running_loop()
    watcher = _watchers.get(loop)
    if watcher is None:
        watcher = _watchers[loop] = CancelWatcher()
    return watcher


async def close_cancel_watcher() -> None:
    watcher = _watchers.pop(asyncio.get_running_loop(), None)
    if watcher is not None:
        await watcher.aclose()

"""Shared Redis clients: one sync client per process, one asyncio client per event loop.

A fresh connection per job or per request costs a round trip and a socket; these are reused.
"""

from __future__ import annotations

import asyncio
import weakref
from functools import cache

import redis
import redis.asyncio as aredis
from django.conf import settings

_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[str, aredis.Redis]] = (
    weakref.WeakKeyDictionary()
)


@cache
def _sync_client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, health_check_interval=30)


def sync_redis() -> redis.Redis:
    return _sync_client(settings.REDIS_URL)


def async_redis() -> aredis.Redis:
    """The client of the running event loop (asyncio connections belong to one loop)."""
    loop = asyncio.get_running_loop()
    url = settings.REDIS_URL
    cached = _async_clients.get(loop)
    if cached is None or cached[0] != url:
        cached = (url, aredis.Redis.from_url(url, health_check_interval=30))
        _async_clients[loop] = cached
    return cached[1]


def reset() -> None:
    """Forget cached clients (tests that point REDIS_URL elsewhere)."""
    _sync_client.cache_clear()
    _async_clients.clear()

"""Shared Redis clients: one sync client per process, one asyncio client per event loop; and
the one place where a client is built from REDIS_URL, which may name a plain Redis or a
Sentinel set.

A fresh connection per job or per request costs a round trip and a socket; these are reused.

REDIS_URL forms (docs/scaling.md):
- `redis://[[user]:password@]host:port/db` (and `rediss://`, `unix://`): one Redis;
- `redis+sentinel://[[user]:password@]host1:26379[,host2:26379...]/service_name[/db]`: the
  primary that the Sentinels name for `service_name`, asked again whenever a connection to it
  fails (the form of the `limits` library and others). The password is the Redis one; the
  Sentinels' own, if they have one, is `?sentinel_password=...`.

Every Redis client of the service comes from here: `client_from_url` / `async_client_from_url`
(the shared clients below, the safety and analytics workers, the health checks),
`channel_layer_host` (channels-redis), `rq_queue_config` (django-rq) and `CACHE_POOL_CLASS`
(Django's Redis cache).
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass, field
from functools import cache
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import redis
import redis.asyncio as aredis
import redis.asyncio.sentinel as asentinel
import redis.sentinel
from django.conf import settings

SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")


@dataclass(frozen=True)
class SentinelURL:
    """What a `redis+sentinel://` URL names."""

    sentinels: list[tuple[str, int]]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    ssl: bool = False
    sentinel_kwargs: dict[str, Any] = field(default_factory=dict)

    def connection_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the connections to the primary."""
        kwargs: dict[str, Any] = {"db": self.db}
        if self.username:
            kwargs["username"] = self.username
        if self.password:
            kwargs["password"] = self.password
        if self.ssl:
            kwargs["ssl"] = True
        return kwargs


def parse_sentinel_url(url: str) -> SentinelURL | None:
    """The Sentinel set `url` names; None for any other URL."""
    parts = urlsplit(url)
    if parts.scheme not in SENTINEL_SCHEMES:
        return None
    netloc = parts.netloc
    username = password = None
    if "@" in netloc:
        auth, netloc = netloc.rsplit("@", 1)
        user, _, secret = auth.partition(":")
        username, password = unquote(user) or None, unquote(secret) or None
    sentinels = []
    for item in netloc.split(","):
        host, _, port = item.strip().rpartition(":") if ":" in item else (item, "", "26379")
        host = host.strip("[]")
        if not host:
            raise ValueError(f"REDIS_URL: a Sentinel without a host in {url!r}")
        sentinels.append((host, int(port or 26379)))
    path = [unquote(p) for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise ValueError(
            "REDIS_URL: a Sentinel URL is redis+sentinel://host:port[,host:port]/service_name[/db]"
        )
    db = int(path[1]) if len(path) == 2 else 0
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    sentinel_kwargs: dict[str, Any] = {"socket_timeout": 2, "socket_connect_timeout": 2}
    if query.get("sentinel_password"):
        sentinel_kwargs["password"] = query["sentinel_password"]
    if query.get("sentinel_username"):
        sentinel_kwargs["username"] = query["sentinel_username"]
    return SentinelURL(
        sentinels=sentinels,
        service_name=path[0],
        db=db,
        username=username,
        password=password,
        ssl=parts.scheme.startswith("rediss"),
        sentinel_kwargs=sentinel_kwargs,
    )


def client_from_url(url: str, **kwargs: Any) -> redis.Redis:
    """A sync client of the Redis `url` names: for a Sentinel set, of its current primary."""
    spec = parse_sentinel_url(url)
    if spec is None:
        return redis.Redis.from_url(url, **kwargs)
    sentinel = redis.sentinel.Sentinel(spec.sentinels, sentinel_kwargs=spec.sentinel_kwargs)
    return sentinel.master_for(spec.service_name, **spec.connection_kwargs(), **kwargs)


def async_client_from_url(url: str, **kwargs: Any) -> aredis.Redis:
    """The asyncio client of the Redis `url` names (see client_from_url)."""
    spec = parse_sentinel_url(url)
    if spec is None:
        return aredis.Redis.from_url(url, **kwargs)
    sentinel = asentinel.Sentinel(spec.sentinels, sentinel_kwargs=spec.sentinel_kwargs)
    return sentinel.master_for(spec.service_name, **spec.connection_kwargs(), **kwargs)


def channel_layer_host(url: str) -> Any:
    """One entry of channels-redis's `hosts`: the URL, or the Sentinel form it documents."""
    spec = parse_sentinel_url(url)
    if spec is None:
        return url
    return {
        "sentinels": spec.sentinels,
        "master_name": spec.service_name,
        "sentinel_kwargs": spec.sentinel_kwargs,
        **spec.connection_kwargs(),
    }


def rq_queue_config(url: str, **extra: Any) -> dict[str, Any]:
    """One RQ_QUEUES entry of django-rq: URL, or SENTINELS and MASTER_NAME."""
    spec = parse_sentinel_url(url)
    if spec is None:
        return {"URL": url, **extra}
    return {
        "SENTINELS": spec.sentinels,
        "MASTER_NAME": spec.service_name,
        "DB": spec.db,
        "USERNAME": spec.username,
        "PASSWORD": spec.password,
        "SENTINEL_KWARGS": spec.sentinel_kwargs,
        "CONNECTION_KWARGS": {"ssl": True} if spec.ssl else {},
        **extra,
    }


class SentinelAwarePool(redis.ConnectionPool):
    """Django's RedisCache pool class (CACHES OPTIONS `pool_class`): builds a Sentinel pool for
    a `redis+sentinel://` LOCATION, a plain pool otherwise."""

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> Any:
        spec = parse_sentinel_url(url)
        if spec is None:
            return redis.ConnectionPool.from_url(url, **kwargs)
        sentinel = redis.sentinel.Sentinel(spec.sentinels, sentinel_kwargs=spec.sentinel_kwargs)
        return redis.sentinel.SentinelConnectionPool(
            spec.service_name, sentinel, **spec.connection_kwargs(), **kwargs
        )


CACHE_POOL_CLASS: str = "messageservice.redis_clients.SentinelAwarePool"

_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[str, aredis.Redis]] = (
    weakref.WeakKeyDictionary()
)


@cache
def _sync_client(url: str) -> redis.Redis:
    return client_from_url(url, health_check_interval=30)


def sync_redis() -> redis.Redis:
    return _sync_client(settings.REDIS_URL)


def async_redis() -> aredis.Redis:
    """The client of the running event loop (asyncio connections belong to one loop)."""
    loop = asyncio.get_running_loop()
    url = settings.REDIS_URL
    cached = _async_clients.get(loop)
    if cached is None or cached[0] != url:
        cached = (url, async_client_from_url(url, health_check_interval=30))
        _async_clients[loop] = cached
    return cached[1]


def reset() -> None:
    """Forget cached clients (tests that point REDIS_URL elsewhere)."""
    _sync_client.cache_clear()
    _async_clients.clear()

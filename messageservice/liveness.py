"""Which worker processes are alive, by kind: a Redis sorted set per kind of worker.

Every long-running worker process calls `beat(kind, worker_id)` at least every
`LIVENESS_TTL_SECONDS / 3` seconds; the member's score is the time until which it counts as
alive. `alive(kind)` counts the members whose time has not passed (the `workers_alive` metric,
read at scrape time). A worker that stops cleanly calls `gone`; one that dies drops out when its
time passes.
"""

from __future__ import annotations

import time

from django.conf import settings

from messageservice.redis_clients import sync_redis

KINDS = ("llm", "messages", "analytics", "safety")
LIVENESS_TTL_SECONDS = 30.0


def _key(kind: str) -> str:
    return f"{settings.SERVICE_NAME}:workers:{kind}"


def beat(kind: str, worker_id: str, ttl: float = LIVENESS_TTL_SECONDS) -> None:
    now = time.time()
    pipe = sync_redis().pipeline(transaction=False)
    pipe.zadd(_key(kind), {worker_id: now + ttl})
    pipe.zremrangebyscore(_key(kind), "-inf", now)
    pipe.expire(_key(kind), int(ttl) * 4)
    pipe.execute()


def gone(kind: str, worker_id: str) -> None:
    sync_redis().zrem(_key(kind), worker_id)


def alive_counts() -> dict[str, int]:
    """Kind -> number of live workers (one round trip)."""
    now = time.time()
    pipe = sync_redis().pipeline(transaction=False)
    for kind in KINDS:
        pipe.zcount(_key(kind), now, "+inf")
    return dict(zip(KINDS, (int(n) for n in pipe.execute()), strict=True))

"""The analytics worker's loop: take events in batches, recompute their buckets, ack; close
whole hours with the fill pass. Run by `manage.py analytics_worker`.

Reliable hand-over: a Lua script moves up to BATCH_SIZE_FOR_ANALYTICS events from the events
list to this worker's processing list in one atomic step; they leave it (the ack) only once
their buckets are recomputed and committed. A worker that dies leaves its batch there; every
worker, at start and with each fill pass, takes over the processing lists whose owner's
liveness key has expired, so nothing is lost. Recomputing is idempotent: a batch processed
twice gives the same rows, so nothing is counted twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from datetime import UTC, datetime

import redis
from django.conf import settings
from django.db import DatabaseError, close_old_connections

from analytics_app import rollups
from analytics_app.events import events_key
from messages_app.models import Message
from messageservice import liveness, metrics
from messageservice.redis_clients import client_from_url

logger = logging.getLogger(__name__)

POP_BLOCK_SECONDS = 1
BACKOFF_FIRST_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 5.0
# A processing list's owner proves it is alive with this key, renewed every loop.
OWNER_TTL_SECONDS = 30

# KEYS[1] events, KEYS[2] processing; ARGV[1] count. Moves the oldest events, in order.
_TAKE = """
local items = redis.call('LRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
if #items > 0 then
  redis.call('LTRIM', KEYS[1], #items, -1)
  redis.call('RPUSH', KEYS[2], unpack(items))
end
return items
"""


def processing_key(worker_id: str) -> str:
    return f"{events_key()}:processing:{worker_id}"


def owner_key(worker_id: str) -> str:
    return f"{events_key()}:owner:{worker_id}"


def buckets_of(raws: list[bytes]) -> set[tuple[int, datetime]]:
    """The (user id, hour) buckets the events name, plus those of replies' user messages (the
    model of a user message is its first reply's). Malformed events are dropped (logged)."""
    buckets: set[tuple[int, datetime]] = set()
    message_ids: list[int] = []
    for raw in raws:
        try:
            event = json.loads(raw)
            owner = int(event["u"])
            for t in event["t"]:
                buckets.add((owner, rollups.floor_hour(datetime.fromtimestamp(float(t), UTC))))
            if event.get("m") is not None:
                message_ids.append(int(event["m"]))
        except (ValueError, KeyError, TypeError, OverflowError, OSError):
            logger.warning("analytics worker: dropped a malformed event %r", raw[:200])
    if message_ids:
        for owner, created in Message.objects.filter(
            pk__in=message_ids, role=Message.Role.ASSISTANT, parent__isnull=False
        ).values_list("conversation__owner_id", "parent__created_at"):
            buckets.add((owner, rollups.floor_hour(created)))
    return buckets


class AnalyticsWorker:
    def __init__(self, *, batch_size: int | None = None, worker_id: str | None = None) -> None:
        self.batch_size = batch_size or settings.BATCH_SIZE_FOR_ANALYTICS
        # host:pid: a worker restarted with the same pid (a container's) resumes its own
        # processing list at once; see adopt_orphans for the others.
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.key = events_key()
        self.processing = processing_key(self.worker_id)
        self.redis = client_from_url(
            settings.REDIS_URL,
            socket_timeout=POP_BLOCK_SECONDS + 5,
            socket_connect_timeout=2,
            health_check_interval=30,
        )
        self.take = self.redis.register_script(_TAKE)
        self.stopping = threading.Event()
        self.processed = 0
        self.next_fill = 0.0

    # --- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until stop(); Redis and database failures are logged and retried."""
        metrics.start_worker_exporter("analytics")
        backoff = BACKOFF_FIRST_SECONDS
        logger.info(
            "analytics worker ready: %s, batches of %d from %s",
            self.worker_id,
            self.batch_size,
            self.key,
        )
        while not self.stopping.is_set():
            try:
                self.beat()
                # A connection the database dropped (or one too old) is replaced, as Django
                # does around each request.
                close_old_connections()
                if time.monotonic() >= self.next_fill:
                    self.adopt_orphans()
                    self.fill_pass()
                    self.next_fill = time.monotonic() + settings.ANALYTICS_FILL_INTERVAL_SECONDS
                self.step(block=POP_BLOCK_SECONDS)
                backoff = BACKOFF_FIRST_SECONDS
            except redis.RedisError as exc:
                logger.warning(
                    "analytics worker: Redis failed (%s); retrying in %.1f s", exc, backoff
                )
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
            except DatabaseError as exc:
                # The batch stays in the processing list: the next step takes it again.
                logger.warning(
                    "analytics worker: database failed (%s); retrying in %.1f s", exc, backoff
                )
                close_old_connections()
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
            except Exception:
                # A bug must not kill the worker: the batch is kept and retried, loudly.
                logger.exception("analytics worker: a batch failed; retrying in %.1f s", backoff)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
        with contextlib.suppress(redis.RedisError):
            liveness.gone("analytics", self.worker_id)
            self.redis.delete(owner_key(self.worker_id))
        logger.info("analytics worker: stopped after %d events", self.processed)

    def stop(self) -> None:
        self.stopping.set()

    def beat(self) -> None:
        liveness.beat("analytics", self.worker_id)
        self.redis.set(owner_key(self.worker_id), "1", ex=OWNER_TTL_SECONDS)

    # --- batches ------------------------------------------------------------------------------

    def step(self, block: int = 0) -> bool:
        """Process the batch in this worker's processing list (left by a failed step), or take
        a new one, waiting up to `block` seconds for a first event. False when there was
        nothing to do."""
        raws: list[bytes] = self.redis.lrange(self.processing, 0, -1)  # type: ignore[assignment]
        if not raws and block:
            # BLMOVE (Redis 6.2) rather than polling: the first event wakes the worker at once.
            first = self.redis.blmove(self.key, self.processing, block, "LEFT", "RIGHT")
            if first is None:
                return False
            raws = [first]  # type: ignore[list-item]
            if self.batch_size > 1:
                raws += self.take(keys=[self.key, self.processing], args=[self.batch_size - 1])
        elif not raws:
            raws = self.take(keys=[self.key, self.processing], args=[self.batch_size])
        if not raws:
            return False
        self.handle(raws)
        self.redis.delete(self.processing)  # the ack
        self.processed += len(raws)
        return True

    def handle(self, raws: list[bytes]) -> None:
        started = time.perf_counter()
        buckets = buckets_of(raws)
        hours = rollups.buckets_recompute(buckets)
        logger.debug(
            "analytics worker: %d events, %d buckets in %d hours, %.0f ms",
            len(raws),
            len(buckets),
            hours,
            (time.perf_counter() - started) * 1000,
        )

    def adopt_orphans(self) -> int:
        """Move the batches of dead workers (processing lists whose owner key expired) back to
        the front of the events list. Returns how many events were taken back."""
        taken = 0
        for key in self.redis.scan_iter(match=f"{self.key}:processing:*", count=100):
            name = key.decode() if isinstance(key, bytes) else str(key)
            worker_id = name.removeprefix(f"{self.key}:processing:")
            if worker_id == self.worker_id or not _dead(worker_id, self.redis):
                continue
            while self.redis.lmove(name, self.key, "RIGHT", "LEFT") is not None:
                taken += 1
        if taken:
            logger.warning("analytics worker: took back %d events of dead workers", taken)
        return taken

    def fill_pass(self) -> int:
        last_beat = time.monotonic()

        def on_hour(_hour: datetime) -> None:
            nonlocal last_beat
            if time.monotonic() - last_beat >= 5:
                self.beat()
                last_beat = time.monotonic()

        return rollups.fill(on_hour=on_hour, should_stop=self.stopping.is_set)


def _dead(worker_id: str, client: redis.Redis) -> bool:
    """Whether the worker `worker_id` (host:pid) is gone: its owner key expired, or it ran on
    this host and its process no longer exists."""
    if not client.exists(owner_key(worker_id)):
        return True
    host, _, pid = worker_id.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False

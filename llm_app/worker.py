"""The `llm` worker: one process streams up to MAX_CONCURRENT_REQUESTS generations at once.

Design. Plain RQ runs one job per process (a forked work horse per job). Generation is I/O
bound: a worker mostly waits on the LLM and Redis. So this worker, RQ's `WORKER_CLASS` (the
seed's `python manage.py rqworker llm` picks it up with no flags), keeps RQ's queue semantics
(dequeue, started/finished/failed registries, callbacks, job timeouts) but:
- runs each job in a thread of its own instead of a forked horse, up to MAX_CONCURRENT_REQUESTS;
- runs every generation coroutine on one shared event loop, so Redis, channel-layer and HTTP
  connection pools are made once per process, not once per job;
- takes a job off the queue only when it also holds one of MAX_CONCURRENT_LLM_REQUESTS global
  slots (a Redis sorted set of leases), so what exceeds the global cap waits in the queue;
- keeps going through a Redis outage: its own Redis calls (slot waits, heartbeats, suspension
  checks) log and retry instead of ending the process;
- runs a keeper thread that renews the slot leases of running jobs and reaps generations whose
  worker died (llm_app.reaper) every REAPER_INTERVAL_SECONDS, even while idle in a dequeue.
  As every rqworker of the service uses this class, orphans are settled even when no llm
  worker runs. The keeper also beats the process's liveness (messageservice.liveness, kind
  from the queues: llm, messages, analytics), and the process serves its own metrics on
  METRICS_PORT (messageservice.metrics): jobs run in threads of this one process, so one
  in-memory registry holds every count (a forked horse per job would take its counts with it).
- puts the jobs of its queues that RQ scheduled (a retry after an interval: the message
  processor's jobs) back on their queue when due, from that keeper thread too, instead of
  RQ's scheduler, which is a process forked beside the worker (`--with-scheduler`).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import copy
import logging
import threading
import time
import uuid
from typing import Any

import redis
import uvloop
from django.conf import settings
from django.db import connections
from rq import SimpleWorker
from rq.scheduler import RQScheduler
from rq.timeouts import TimerDeathPenalty
from rq.utils import as_text

from messageservice import liveness, logs, metrics
from messageservice.redis_clients import sync_redis

logger = logging.getLogger(__name__)

_job_thread = threading.local()


def shared_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop of the GenerationWorker running the current job's thread, if any."""
    return getattr(_job_thread, "loop", None)


def started_generation() -> concurrent.futures.Future[None] | None:
    """The current job's generation, if the worker already started it on its loop."""
    return getattr(_job_thread, "generation", None)


GENERATE_REPLY = "llm_app.jobs.generate_reply"
# The longest RQ's bookkeeping of a job waits for its generation to have asked the LLM.
ASKED_WAIT_SECONDS = 2.0
# At most this many more jobs are taken in one wake-up (bounded by the free slots too).
PREFETCH_MAX = 16


def job_log_ids(job: Any) -> dict[str, Any]:
    """The ids to bind on a job's log lines: those its meta carries (logs.carried), and the
    generation's own id for a generation job."""
    ids = logs.from_meta(job.meta)
    if job.func_name == GENERATE_REPLY and job.args:
        ids["generation_id"] = job.args[0]
    return ids


class _WorkerLog(logging.LoggerAdapter):
    """RQ's logger, less RQ's INFO line of a dequeue ("llm: <description> (<job id>)"): it is
    logged in the main loop before the job's ids are known, and not at all for a prefetched
    job. execute_job logs it instead, for every job, with the ids."""

    @property
    def level(self) -> int:  # RQ reads it for its scheduler
        return self.logger.level

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        if (
            level == logging.INFO
            and msg == "%s: %s (%s)"
            and len(args) == 3
            and "Job OK" not in str(args[1])
        ):
            return
        super().log(level, msg, *args, **kwargs)


def _start_loop() -> tuple[asyncio.AbstractEventLoop, threading.Thread]:
    # uvloop: a cheaper loop for the many small reads and writes of streaming.
    loop = uvloop.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="generation-loop", daemon=True)
    thread.start()
    return loop, thread


async def _close_loop_resources() -> None:
    from llm_app.cancel import close_cancel_watcher
    from llm_app.providers import close_providers

    await close_providers()
    await close_cancel_watcher()


# KEYS[1] = slots zset; ARGV = now, lease seconds, limit, token. Returns 1 when a slot is taken.
_ACQUIRE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), ARGV[4])
  return 1
end
return 0
"""

# As _ACQUIRE for up to #ARGV - 3 tokens (ARGV[4..]); returns how many, the first ones, it took.
_ACQUIRE_MANY = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local n = math.min(tonumber(ARGV[3]) - redis.call('ZCARD', KEYS[1]), #ARGV - 3)
for i = 1, n do
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), ARGV[3 + i])
end
return math.max(n, 0)
"""


class GlobalSlots:
    """A cluster-wide counting semaphore in Redis with leases, so a dead worker frees its slots.

    A slot's lease is GENERATION_LEASE_SECONDS, like a generation's: both say "my worker lives".
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.key = f"{settings.SERVICE_NAME}:llm-slots"
        self.lease_seconds = settings.GENERATION_LEASE_SECONDS
        self._acquire = sync_redis().register_script(_ACQUIRE)
        self._acquire_many = sync_redis().register_script(_ACQUIRE_MANY)

    def try_acquire(self) -> str | None:
        token = uuid.uuid4().hex
        taken = self._acquire(
            keys=[self.key], args=[time.time(), self.lease_seconds, self.limit, token]
        )
        return token if taken else None

    def try_acquire_many(self, count: int) -> list[str]:
        """Up to `count` slots at once (one round trip); their tokens."""
        tokens = [uuid.uuid4().hex for _ in range(count)]
        taken = self._acquire_many(
            keys=[self.key], args=[time.time(), self.lease_seconds, self.limit, *tokens]
        )
        return tokens[: int(taken)]

    def renew(self, tokens: list[str]) -> None:
        if tokens:
            deadline = time.time() + self.lease_seconds
            sync_redis().zadd(self.key, dict.fromkeys(tokens, deadline), xx=True)

    def release(self, token: str) -> None:
        sync_redis().zrem(self.key, token)


class GenerationWorker(SimpleWorker):
    """RQ worker running many generation jobs at once; see the module docstring."""

    death_penalty_class = TimerDeathPenalty

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("maintenance_interval", 30)
        super().__init__(*args, **kwargs)
        self.log = _WorkerLog(self.log, {})  # type: ignore[assignment]
        self.concurrency = max(1, settings.MAX_CONCURRENT_REQUESTS)
        self._local = threading.BoundedSemaphore(self.concurrency)
        # The global LLM cap concerns the llm queue only; other queues just get the threads.
        self._global: GlobalSlots | None = (
            GlobalSlots(settings.MAX_CONCURRENT_LLM_REQUESTS)
            if "llm" in self.queue_names()
            else None
        )
        self._tokens: dict[int, str] = {}
        self._held: str | None = None
        # Jobs taken with the one a dequeue woke up for, each with its slots already held.
        self._prefetched: collections.deque[tuple[Any, Any, str | None]] = collections.deque()
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._keeper_stop = threading.Event()
        # The worker kind of liveness and metrics: the first of its queues that names one.
        self.kind: str | None = next(
            (kind for kind in ("llm", "messages", "analytics") if kind in self.queue_names()),
            None,
        )
        self._scheduler: RQScheduler | None = None

    # --- the work loop ---------------------------------------------------------------------
    def work(self, *args: Any, **kwargs: Any) -> bool:
        metrics.start_worker_exporter(self.kind or "rq")
        loop, thread = _start_loop()
        self._loop = loop
        self._keeper_stop.clear()
        keeper = threading.Thread(target=self._keep, name="worker-keeper", daemon=True)
        keeper.start()
        try:
            return bool(super().work(*args, **kwargs))
        finally:
            self._keeper_stop.set()
            keeper.join(timeout=10)
            self._release_scheduler()
            self._return_prefetched()
            self._wait_for_jobs()
            asyncio.run_coroutine_threadsafe(_close_loop_resources(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            keeper.join(timeout=10)
            if self.kind is not None:
                try:
                    liveness.gone(self.kind, self.name)
                except redis.RedisError as exc:
                    logger.warning("worker: could not unregister its liveness (%s)", exc)

    def _wait_for_jobs(self) -> None:
        while True:
            with self._lock:
                threads = list(self._threads)
            if not threads:
                return
            for thread in threads:
                thread.join(timeout=1)
                self.heartbeat()

    def _keep(self) -> None:
        """The keeper thread: beat liveness, renew running jobs' slot leases, reap orphans.
        It wakes at least every LIVENESS_TTL_SECONDS / 3 (10 s)."""
        from llm_app.reaper import reap_orphans

        interval = max(0.5, settings.REAPER_INTERVAL_SECONDS)
        renew_every = max(
            0.5,
            min(
                interval,
                settings.GENERATION_LEASE_SECONDS / 3,
                liveness.LIVENESS_TTL_SECONDS / 3,
            ),
        )
        next_reap = time.monotonic()
        while True:
            try:
                if self.kind is not None:
                    liveness.beat(self.kind, self.name)
                self._renew_slots()
                self._enqueue_scheduled()
                if time.monotonic() >= next_reap:
                    next_reap = time.monotonic() + interval
                    reap_orphans()
            except redis.RedisError as exc:
                logger.warning("worker keeper: Redis unavailable (%s); retrying", exc)
            except Exception:
                logger.exception("worker keeper: reaping orphaned generations failed")
            finally:
                connections.close_all()
            wait = max(0.0, min(renew_every, next_reap - time.monotonic()))
            if self._keeper_stop.wait(max(wait, 0.1)):
                return

    def _enqueue_scheduled(self) -> None:
        """Queue the due scheduled jobs of this worker's queues, holding RQ's scheduler lock of
        each queue (one worker at a time does it; another takes over within RQ's fallback
        period when the holder dies)."""
        scheduler = self._scheduler
        if scheduler is None:
            scheduler = self._scheduler = RQScheduler(
                self.queues, connection=self.connection, serializer=self.serializer
            )
        if scheduler.should_reacquire_locks:
            scheduler.acquire_locks()
        if scheduler.acquired_locks:
            scheduler.heartbeat()
            scheduler.enqueue_scheduled_jobs()

    def _release_scheduler(self) -> None:
        if self._scheduler is not None and self._scheduler.acquired_locks:
            try:
                self._scheduler.release_locks()
            except redis.RedisError as exc:
                logger.warning("scheduler locks: Redis unavailable (%s)", exc)

    def _wait_for_slot(self) -> bool:
        """Hold one local and one global slot; False if a stop was requested meanwhile.

        Redis errors while waiting (an outage) are waited out here, not raised: RQ would end the
        worker on them."""
        while not self._local.acquire(timeout=1):
            self.heartbeat()
            if self._stop_requested:
                return False
        if self._global is None:
            return True
        while True:
            try:
                token = self._global.try_acquire()
            except redis.RedisError as exc:
                logger.warning("waiting for an LLM slot: Redis unavailable (%s)", exc)
                token = None
                time.sleep(1.0)
            if token is not None:
                self._held = token
                return True
            self.heartbeat()
            if self._stop_requested:
                self._local.release()
                return False
            time.sleep(0.05)

    def _renew_slots(self) -> None:
        with self._lock:
            tokens = list(self._tokens.values())
        if self._global is not None:
            self._global.renew(tokens)

    def heartbeat(self, *args: Any, **kwargs: Any) -> None:
        # RQ calls this outside its Redis-retry paths; an outage must not end the worker.
        try:
            super().heartbeat(*args, **kwargs)
        except redis.RedisError as exc:
            logger.warning("worker heartbeat: Redis unavailable (%s)", exc)

    def check_for_suspension(self, burst: bool) -> None:
        try:
            super().check_for_suspension(burst)
        except redis.ConnectionError as exc:
            logger.warning("suspension check: Redis unavailable (%s)", exc)
            time.sleep(1.0)

    def dequeue_job_and_maintain_ttl(self, timeout: Any, max_idle_time: Any = None) -> Any:
        if self._prefetched:
            job, queue, self._held = self._prefetched.popleft()
            return job, queue
        if not self._wait_for_slot():
            return None
        try:
            result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
        except BaseException:
            self._release_held()
            raise
        if result is None:
            self._release_held()
        else:
            self._prefetch(result[1])
        return result

    def _prefetch(self, queue: Any) -> None:
        """After a wake-up: take the jobs already waiting in `queue` too, as many as there are
        free local and global slots, in two round trips (the moves, the job hashes) instead of
        a dequeue each. They go to RQ's intermediate queue, as a dequeue moves them, so a
        worker that dies with them is covered by RQ's maintenance; they run at once.

        Only for a worker of one queue: RQ itself uses (and empties) the intermediate queue
        only then."""
        if len(self.queues) != 1:
            return
        local = 0
        while local < PREFETCH_MAX and self._local.acquire(blocking=False):
            local += 1
        if not local:
            return
        tokens: list[str | None] = []
        taken = 0
        try:
            if self._global is None:
                tokens = [None] * local
            else:
                tokens = list(self._global.try_acquire_many(local))
            ids: list[Any] = []
            if tokens:
                intermediate = queue.intermediate_queue.key
                with self.connection.pipeline(transaction=False) as pipe:
                    for _ in tokens:
                        pipe.lmove(queue.key, intermediate)
                    ids = [job_id for job_id in pipe.execute() if job_id is not None]
            jobs = self.job_class.fetch_many(
                [as_text(job_id) for job_id in ids],
                connection=self.connection,
                serializer=self.serializer,
            )
            for job in jobs:
                if job is not None:
                    job.redis_server_version = self.get_redis_server_version()
                    self._prefetched.append((job, queue, tokens.pop()))
                    taken += 1
        except redis.RedisError as exc:
            logger.warning("taking more jobs at once: Redis unavailable (%s)", exc)
        finally:
            for token in tokens:  # the slots no job came for
                if token is not None and self._global is not None:
                    with contextlib.suppress(redis.RedisError):
                        self._global.release(token)
            for _ in range(local - taken):
                self._local.release()

    def _return_prefetched(self) -> None:
        """Stopping: put the jobs taken ahead but not started back at the head of their
        queue, and free their slots."""
        while self._prefetched:
            job, queue, token = self._prefetched.pop()
            try:
                with self.connection.pipeline() as pipe:
                    pipe.lrem(queue.intermediate_queue.key, 1, job.id)
                    pipe.lpush(queue.key, job.id)
                    pipe.execute()
                if token is not None and self._global is not None:
                    self._global.release(token)
            except redis.RedisError as exc:
                # RQ's maintenance moves it back from the intermediate queue later.
                logger.warning("could not give back job %s (%s)", job.id, exc)
            self._local.release()

    def _release_held(self) -> None:
        if self._held is not None and self._global is not None:
            self._global.release(self._held)
            self._held = None
        self._local.release()

    def execute_job(self, job: Any, queue: Any) -> None:
        """Start the job in its own thread and return at once for the next one.

        A generation job's coroutine is started on the loop right here, before RQ's own
        bookkeeping for the job (in the job's thread), so the LLM is asked without waiting
        for it; the job then waits for that coroutine."""
        generation = None
        asked = threading.Event()
        ids = job_log_ids(job)
        if job.func_name == GENERATE_REPLY and self._loop is not None:
            from llm_app.generation import run_generation

            # Bound inside the coroutine: its task on the loop's thread does not see this
            # thread's context. Every task it starts copies it from there.
            generation = asyncio.run_coroutine_threadsafe(
                logs.bound(run_generation(*job.args, on_asked=asked.set), **ids), self._loop
            )
            generation.add_done_callback(lambda _: asked.set())
        else:
            asked.set()
        token, self._held = self._held, None
        # A shallow copy gives the thread its own per-job bookkeeping (execution, current job)
        # while it shares this worker's connection, queues and registries.
        runner = copy.copy(self)
        with logs.bind(**ids):
            # In place of RQ's line of the dequeue (_WorkerLog), with the reply's ids.
            self.log.info("%s: %s (%s) taken", queue.name, job.description, job.id)
        thread = threading.Thread(
            target=self._run,
            args=(runner, job, queue, token, generation, asked, ids),
            name=f"job-{job.id}",
            daemon=True,
        )
        with self._lock:
            self._threads.add(thread)
            if token is not None:
                self._tokens[id(thread)] = token
        thread.start()

    def _run(
        self,
        runner: GenerationWorker,
        job: Any,
        queue: Any,
        token: str | None,
        generation: concurrent.futures.Future[None] | None,
        asked: threading.Event,
        ids: dict[str, Any],
    ) -> None:
        # Every line of the job (RQ's too: Job OK, a failure) carries the job's ids.
        with logs.bind(**ids):
            # The job's coroutine runs on this worker's loop (jobs.generate_reply looks it up).
            _job_thread.loop = self._loop
            _job_thread.generation = generation
            try:
                # RQ's bookkeeping (about 2 ms of CPU a job) waits until the LLM has been asked, so
                # in a burst every request goes out before the bookkeeping of any job competes.
                asked.wait(timeout=ASKED_WAIT_SECONDS)
                runner.prepare_execution(job)
                runner.perform_job(job, queue)
            except Exception:
                logger.exception("job %s crashed outside its own error handling", job.id)
            finally:
                current = threading.current_thread()
                with self._lock:
                    self._threads.discard(current)
                    self._tokens.pop(id(current), None)
                if token is not None and self._global is not None:
                    with contextlib.suppress(Exception):
                        self._global.release(token)
                self._local.release()

    def teardown(self) -> None:
        # Let running generations finish (warm shutdown) before the worker unregisters.
        self._wait_for_jobs()
        try:
            super().teardown()
        except redis.RedisError as exc:
            # Redis is down while the worker stops: it cannot unregister, but its pub/sub
            # thread must still stop rather than retry for as long as the process lives.
            logger.warning("worker teardown: Redis unavailable (%s)", exc)
            if self.pubsub_thread is not None:
                self.pubsub_thread.stop()
                self.pubsub_thread.join(timeout=3)

    def _install_signal_handlers(self) -> None:
        # Signal handlers can only be installed from the main thread; tests run workers in
        # threads, where the process's own handling stays in place.
        if threading.current_thread() is threading.main_thread():
            super()._install_signal_handlers()

    def run_maintenance_tasks(self) -> None:
        try:
            super().run_maintenance_tasks()
        except redis.RedisError as exc:
            logger.warning("worker maintenance: Redis unavailable (%s)", exc)

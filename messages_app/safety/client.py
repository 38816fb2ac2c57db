"""Ask the safety worker for a verdict, over Redis. Used by daphne and the llm worker.

Protocol: a check is a JSON request `{id, text, kind, reply, deadline}` LPUSHed onto one list
(`requests_key()`); the safety worker pops requests in batches and RPUSHes `{id, verdict}` or
`{id, error}` onto the request's `reply` list, which expires shortly after. The sync side
(`submit` / `PendingCheck.result`) has a reply list per check and BLPOPs it. The async side
(`acheck`) has one reply list per event loop, read by one dispatcher task that hands each
answer to its waiter, so N concurrent checks hold one Redis connection in BLPOP, not N.

Every running worker keeps `alive_key()` set; a check finds it in the same round trip as
its LPUSH and fails at once without it, so an outage of the safety workers costs a sender no
wait.

This module imports no classifier (no scikit-learn, no openai): it must stay cheap to import.
It does not look at ENABLE_CONTENT_FILTERING; callers decide whether to check at all.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
import weakref
from typing import Any

import redis
from django.conf import settings

from messages_app.safety.categories import Verdict
from messageservice import logs
from messageservice.redis_clients import async_redis, sync_redis

KINDS = ("input", "output")
# A gate (see gate_key) outlives its send by this long: longer than any queue wait it covers.
GATE_TTL_SECONDS = 900
# What a gate holds until the safety worker's answer replaces it.
GATE_PENDING = b"pending"
# How long the async dispatcher blocks in one BLPOP before it looks again.
_DISPATCH_BLOCK_SECONDS = 5
# Answers taken at once by the async dispatcher after a BLPOP, when several checks wait.
_DISPATCH_BATCH = 100


class SafetyUnavailable(Exception):
    """No verdict: the safety worker did not answer in time, Redis failed, or the backend
    failed (the worker answered with an error)."""


def requests_key() -> str:
    """The Redis list of waiting check requests (LPUSH by clients, popped by the worker)."""
    return f"{settings.SERVICE_NAME}:safety:requests"


def alive_key() -> str:
    """Set by every running safety worker, expiring about 15 s after the last one stopped:
    with none, a check fails at once instead of waiting for its timeout."""
    return f"{requests_key()}:alive"


def reply_key(name: str) -> str:
    """A Redis list that answers are pushed onto (per sync check, or per event loop)."""
    return f"{settings.SERVICE_NAME}:safety:reply:{name}"


def gate_key(stream_key_hex: str) -> str:
    """The gate of a reply whose user message is being checked: the reply's generation
    releases no delta before the verdict kept here lets it (llm_app.input_gate). The send
    sets it to GATE_PENDING (SET NX, so an answer that came first is kept); the safety worker
    writes the answer."""
    return f"{settings.SERVICE_NAME}:reply:{stream_key_hex}:input-check"


def _request(
    check_id: str, text: str, kind: str, reply: str, deadline: float, gate: str = ""
) -> str:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    body: dict[str, Any] = {
        "id": check_id,
        "text": text,
        "kind": kind,
        "reply": reply,
        "deadline": deadline,
    }
    if gate:
        body["gate"] = gate
    return json.dumps(body, separators=(",", ":"))


def answer_verdict(raw: bytes | str) -> Verdict:
    """The verdict of a safety worker's answer (as kept in a gate); SafetyUnavailable for an
    error answer."""
    return _verdict(raw)


def _verdict(raw: bytes | str, check_id: str | None = None) -> Verdict:
    try:
        answer = json.loads(raw)
        if check_id is not None and answer.get("id") != check_id:
            raise SafetyUnavailable(f"answer for another check: {answer.get('id')!r}")
        if "error" in answer:
            raise SafetyUnavailable(f"safety worker: {answer['error']}")
        return Verdict.from_dict(answer["verdict"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SafetyUnavailable(f"malformed answer from the safety worker: {exc}") from exc


class PendingCheck:
    """A check handed to the safety worker; `result()` waits for its verdict."""

    def __init__(self, check_id: str, reply: str, deadline: float) -> None:
        self.id = check_id
        self.reply = reply
        # Wall-clock time after which the worker drops the request (shared across processes).
        self.deadline = deadline

    def result(self, timeout: float | None = None) -> Verdict:
        """The verdict; SafetyUnavailable on timeout, Redis error or backend error.

        Waits `timeout` seconds, by default until the deadline set at submit()
        (SAFETY_TIMEOUT_SECONDS after it), so work done between the two counts against it.
        """
        wait = self.deadline - time.time() if timeout is None else timeout
        try:
            if wait > 0:
                item: Any = sync_redis().blpop([self.reply], timeout=wait)
                raw = None if item is None else item[1]
            else:
                raw = sync_redis().lpop(self.reply)
        except redis.RedisError as exc:
            raise SafetyUnavailable(f"Redis: {exc}") from exc
        if raw is None:
            raise SafetyUnavailable(f"no verdict from the safety worker within {wait:.2f} s")
        return _verdict(raw, self.id)

    async def aresult(self) -> Verdict:
        """result(), awaited: the event loop (a websocket consumer's) serves on meanwhile."""
        wait = self.deadline - time.time()
        try:
            client: Any = async_redis()
            if wait > 0:
                # BLPOP takes whole or fractional seconds; 0 would mean "for ever".
                item: Any = await client.blpop([self.reply], timeout=max(wait, 0.01))
                raw = None if item is None else item[1]
            else:
                raw = await client.lpop(self.reply)
        except redis.RedisError as exc:
            raise SafetyUnavailable(f"Redis: {exc}") from exc
        if raw is None:
            raise SafetyUnavailable("no verdict from the safety worker in time")
        return _verdict(raw, self.id)


def submit(
    text: str, *, kind: str = "input", timeout: float | None = None, gate: str = ""
) -> PendingCheck:
    """Hand `text` to the safety worker (one LPUSH) and return at once.

    The worker drops the request unanswered-with-error once `timeout` (default
    SAFETY_TIMEOUT_SECONDS) has passed. With `gate` (a gate_key), the answer is also kept
    there. SafetyUnavailable if Redis fails.
    """
    check_id = uuid.uuid4().hex
    reply = reply_key(check_id)
    wait = settings.SAFETY_TIMEOUT_SECONDS if timeout is None else timeout
    deadline = time.time() + wait
    payload = _request(check_id, text, kind, reply, deadline, gate)
    try:
        with sync_redis().pipeline(transaction=False) as pipe:
            pipe.lpush(requests_key(), payload)
            pipe.exists(alive_key())
            _, alive = pipe.execute()
    except redis.RedisError as exc:
        raise SafetyUnavailable(f"Redis: {exc}") from exc
    if not alive:
        # Left in the list: a worker that starts answers it "expired" (nobody waits).
        raise SafetyUnavailable("no safety worker is running")
    return PendingCheck(check_id, reply, deadline)


class _Dispatcher:
    """Reads the answers of one event loop's checks from its reply list and wakes each waiter.

    Runs only while some check waits: it exits when the last waiter is answered, and is
    cancelled when the last one gives up, so an idle process holds no connection in BLPOP.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self.key = reply_key(uuid.uuid4().hex)
        self.waiting: dict[str, asyncio.Future[Verdict]] = {}
        self.task: asyncio.Task[None] | None = None

    def wait_for(self, check_id: str) -> asyncio.Future[Verdict]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Verdict] = loop.create_future()
        self.waiting[check_id] = future
        if self.task is None or self.task.done():
            self.task = loop.create_task(self._run(), name="safety-dispatcher")
        return future

    def give_up(self, check_id: str) -> None:
        self.waiting.pop(check_id, None)
        if not self.waiting and self.task is not None and not self.task.done():
            self.task.cancel()
            self.task = None

    async def _run(self) -> None:
        logs.detach()  # one dispatcher for the checks of every request of the loop
        try:
            while self.waiting:
                item = await self.client.blpop([self.key], timeout=_DISPATCH_BLOCK_SECONDS)
                if item is None:
                    continue
                raws = [item[1]]
                if len(self.waiting) > 1:
                    raws += await self.client.lpop(self.key, _DISPATCH_BATCH) or []
                for raw in raws:
                    self._answer(raw)
        except redis.RedisError as exc:
            self._fail_all(SafetyUnavailable(f"Redis: {exc}"))
        finally:
            if self.task is asyncio.current_task():
                self.task = None

    def _answer(self, raw: bytes) -> None:
        try:
            check_id = json.loads(raw)["id"]
        except (ValueError, KeyError, TypeError):
            return  # not ours to interpret; no waiter can be told
        future = self.waiting.pop(check_id, None)
        if future is None or future.done():
            return  # its waiter gave up
        try:
            future.set_result(_verdict(raw))
        except SafetyUnavailable as exc:
            future.set_exception(exc)

    def _fail_all(self, exc: SafetyUnavailable) -> None:
        waiting, self.waiting = self.waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(exc)


_dispatchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Dispatcher] = (
    weakref.WeakKeyDictionary()
)


def _dispatcher() -> _Dispatcher:
    loop = asyncio.get_running_loop()
    client = async_redis()
    dispatcher = _dispatchers.get(loop)
    if dispatcher is None or dispatcher.client is not client:
        dispatcher = _dispatchers[loop] = _Dispatcher(client)
    return dispatcher


async def acheck(text: str, *, kind: str = "output", timeout: float | None = None) -> Verdict:
    """The verdict on `text`; SafetyUnavailable after `timeout` (default
    SAFETY_TIMEOUT_SECONDS), on a Redis error or a backend error."""
    wait = settings.SAFETY_TIMEOUT_SECONDS if timeout is None else timeout
    dispatcher = _dispatcher()
    check_id = uuid.uuid4().hex
    payload = _request(check_id, text, kind, dispatcher.key, time.time() + wait)
    future = dispatcher.wait_for(check_id)
    try:
        async with dispatcher.client.pipeline(transaction=False) as pipe:
            pipe.lpush(requests_key(), payload)
            pipe.exists(alive_key())
            _, alive = await pipe.execute()
        if not alive:
            raise SafetyUnavailable("no safety worker is running")
        return await asyncio.wait_for(future, wait)
    except redis.RedisError as exc:
        raise SafetyUnavailable(f"Redis: {exc}") from exc
    except TimeoutError:
        raise SafetyUnavailable(f"no verdict from the safety worker within {wait:.2f} s") from None
    finally:
        if not future.done() or future.cancelled():
            dispatcher.give_up(check_id)

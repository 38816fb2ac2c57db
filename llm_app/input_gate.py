"""The input gate of a generation: no delta of a reply goes out before the content check of
the user message it answers has passed.

The send hands the message to the safety worker and queues the reply without waiting; the
worker's answer is kept in the reply's gate (messages_app.safety.client.gate_key), which the
send set to "pending". The generation reads the gate while the LLM computes its first token
(so the check costs the reply no time), and waits there before the first delta only if the
answer is late. No gate: nothing to wait for (a regenerated reply, filtering off).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis
from django.conf import settings

from messages_app.models import Message
from messages_app.safety.categories import Verdict
from messages_app.safety.client import GATE_PENDING, SafetyUnavailable, answer_verdict, gate_key
from messageservice.redis_clients import async_redis

# While the answer is late, the gate is read again this often.
POLL_SECONDS = 0.005


class InputBlocked(Exception):
    """The user message this reply answers was blocked by the content filter."""

    def __init__(self, verdict: Verdict) -> None:
        super().__init__(", ".join(verdict.categories))
        self.verdict = verdict


class InputUnchecked(Exception):
    """The check of the user message went unanswered and SAFETY_ON_ERROR is reject."""


async def input_gate(reply: Message) -> Verdict | None:
    """The verdict on the user message `reply` answers, once the safety worker has given it;
    None when there is no gate. InputUnchecked when no answer comes within
    SAFETY_TIMEOUT_SECONDS (plus a second, the send's own wait) and SAFETY_ON_ERROR is reject;
    None then with allow."""
    key = gate_key(reply.stream_key.hex)
    client: Any = async_redis()
    deadline = time.monotonic() + settings.SAFETY_TIMEOUT_SECONDS + 1.0
    try:
        while True:
            raw = await client.get(key)
            if raw is None:
                return None
            if raw != GATE_PENDING:
                return answer_verdict(raw)
            if time.monotonic() >= deadline:
                raise SafetyUnavailable("no answer from the safety worker in time")
            await asyncio.sleep(POLL_SECONDS)
    except (SafetyUnavailable, redis.RedisError) as exc:
        if settings.SAFETY_ON_ERROR == "allow":
            return None
        raise InputUnchecked(str(exc)) from exc


def gate_for(reply: Message) -> asyncio.Future[Verdict | None] | None:
    """Start reading the reply's gate (None when content filtering is off)."""
    if not settings.ENABLE_CONTENT_FILTERING:
        return None
    return asyncio.ensure_future(input_gate(reply))

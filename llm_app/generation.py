"""The orchestration of one generation: load, start, build the prompt, stream, end.

The provider attempts live in llm_app.attempts, the database changes in llm_app.state. Every
path out of `run_generation` ends the reply through messages_app.replies.reply_end, which tells
the clients: `generation.completed`, `.failed` or `.cancelled`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
import weakref
from collections.abc import Callable
from datetime import datetime
from typing import Any

import redis
from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections
from django.utils import timezone

from llm_app.attempts import Cancelled, NotStarted, Progress, stream_unless_cancelled
from llm_app.input_gate import InputBlocked, InputUnchecked, gate_for
from llm_app.lease import renew_lease
from llm_app.models import Generation
from llm_app.output_safety import Blocked, OutputMonitor
from llm_app.prompts import history_limit, prompt_build
from llm_app.providers import ProviderError
from llm_app.state import (
    generation_finish,
    generation_load_with_history,
    generation_save_partial,
    generation_start_many,
)
from messages_app import events
from messages_app.broadcast import asend_event, conversation_group
from messages_app.models import Message
from messages_app.safety_flow import (
    INPUT_BLOCKED_TEXT,
    UNCHECKED_TEXT,
    input_unchecked_apply,
    input_verdict_apply,
)
from messages_app.selectors import Turn
from messageservice import logs

logger = logging.getLogger(__name__)

_save_partial = sync_to_async(generation_save_partial)

# The one read before the LLM is asked runs on threads of its own, so it never queues behind
# the writes (starts, partial saves, ends) of the other generations on the worker's one
# database thread; in a burst that queue is long.
_READS = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="generation-read")


def _load_on_read_thread(
    generation_id: int, stream_key: str | None
) -> tuple[Generation, list[Turn]] | None:
    close_old_connections()  # as channels does around its database hops
    try:
        return generation_load_with_history(
            generation_id, stream_key, history_limit=history_limit(settings.LLM_CONTEXT_TOKENS)
        )
    finally:
        close_old_connections()


_load = sync_to_async(_load_on_read_thread, thread_sensitive=False, executor=_READS)


async def _begin_into(
    ready: asyncio.Future[bool], generation: Generation, taken_at: datetime
) -> None:
    try:
        ready.set_result(await _begin(generation, taken_at))
    except asyncio.CancelledError:
        ready.cancel()
        raise
    except Exception as exc:
        ready.set_exception(exc)


class _Starts:
    """The starts of the generations of one event loop, written in batches: whatever starts
    are waiting when the database thread is free go in one transaction (a burst of replies
    would otherwise queue one commit each behind the others' writes)."""

    def __init__(self) -> None:
        self.waiting: list[tuple[Generation, datetime, asyncio.Future[bool]]] = []
        self.writer: asyncio.Task[None] | None = None

    async def start(self, generation: Generation, taken_at: datetime) -> bool:
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.waiting.append((generation, taken_at, done))
        if self.writer is None or self.writer.done():
            self.writer = asyncio.ensure_future(self._write())
        return await done

    async def _write(self) -> None:
        logs.detach()  # one writer for the starts of many generations
        while self.waiting:
            batch, self.waiting = self.waiting, []
            try:
                started = await _start_many([(g, t) for g, t, _ in batch])
            except Exception as exc:
                for _, _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for generation, _, done in batch:
                if not done.done():
                    done.set_result(generation.pk in started)


_start_many = sync_to_async(generation_start_many)
_starts: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Starts] = weakref.WeakKeyDictionary()


def _loop_starts() -> _Starts:
    loop = asyncio.get_running_loop()
    starts = _starts.get(loop)
    if starts is None:
        starts = _starts[loop] = _Starts()
    return starts


async def _begin(generation: Generation, taken_at: datetime) -> bool:
    """Mark the reply streaming and announce `generation.started`; False if it is no longer
    queued. Runs while the LLM computes its first token."""
    if not await _loop_starts().start(generation, taken_at):
        return False
    reply = generation.message
    await asend_event(
        conversation_group(reply.conversation),
        events.generation_started(
            generation_id=generation.pk, message_id=reply.pk, attempt=generation.attempt
        ),
    )
    logger.info(
        "generation %s started: reply %s, attempt %s, %s %s",
        generation.pk,
        reply.pk,
        generation.attempt,
        generation.provider,
        generation.model,
    )
    return True


async def run_generation(
    generation_id: int,
    stream_key: str | None = None,
    *,
    on_asked: Callable[[], None] | None = None,
) -> None:
    """Run one generation to a terminal status. Safe to call twice: a finished one is left
    alone. `stream_key` is the reply's, as the job was queued; a mismatch means the job is
    another database's, and nothing is done. `on_asked` is called once the LLM has been
    asked (the worker holds its own bookkeeping for the job back until then).

    The LLM is asked first: one database read (the generation and its history), the prompt,
    and the request goes out; marking the reply started and announcing it run meanwhile, and
    no delta is published before they are done (Progress.ready)."""
    taken_at = timezone.now()
    loaded = await _load(generation_id, stream_key)
    if loaded is None:
        logger.warning("generation %s is not this database's; nothing to do", generation_id)
        return
    generation, history = loaded
    reply = generation.message
    if reply.status != Message.Status.QUEUED:
        logger.info("generation %s is not queued any more; skipped", generation_id)
        return
    progress = Progress(saved_at=time.monotonic(), monitor=OutputMonitor.for_reply())
    # Resolved by the start (_begin), which runs once the LLM has been asked; no delta or
    # event of this generation reaches the clients before it.
    ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    progress.ready = ready
    tasks: list[asyncio.Future[Any]] = []

    def asked() -> None:
        if not tasks:
            tasks.append(asyncio.ensure_future(_begin_into(ready, generation, taken_at)))
            progress.gate = gate_for(reply)
            tasks.append(asyncio.ensure_future(renew_lease(reply.stream_key)))
            if on_asked is not None:
                on_asked()

    try:
        await _generate(generation, history, progress, asked)
    finally:
        for task in tasks[1:]:
            task.cancel()  # the lease
        if progress.gate is not None and not progress.gate.done():
            progress.gate.cancel()  # the reply ended before its first delta


async def _generate(
    generation: Generation, history: list[Turn], progress: Progress, asked: Callable[[], None]
) -> None:
    reply = generation.message
    status, code, text = Message.Status.COMPLETED, "", ""
    blocked_by = None
    try:
        async with asyncio.timeout(settings.MESSAGE_PROCESSING_TIMEOUT):
            prompt = await prompt_build(
                character=reply.conversation.character,
                history=history,
                provider=generation.provider,
                model=generation.model,
                context_tokens=settings.LLM_CONTEXT_TOKENS,
                max_tokens=int(generation.params["max_tokens"]),
            )
            # Saved with the end state (one write, off the path to the first token).
            generation.prompt_manifest = {
                **prompt.manifest,
                "provider": generation.provider,
                "model": generation.model,
                "params": generation.params,
            }
            await stream_unless_cancelled(generation, prompt, progress, _save_partial, asked=asked)
        if progress.finish_reason is None:
            status, code = Message.Status.FAILED, "llm_bad_stream"
            text = "The LLM stream ended without finishing the reply."
    except NotStarted:
        pass
    except Cancelled:
        status = Message.Status.CANCELLED
    except Blocked as exc:
        status, code, blocked_by = Message.Status.BLOCKED, "content_blocked", exc.verdict
        text = "The reply was stopped by the content filter."
    except InputBlocked as exc:
        # The message it answers was blocked: that ends this reply too (blocked, no text).
        assert reply.parent_id is not None, "a reply always answers a message"
        await sync_to_async(input_verdict_apply)(reply.parent_id, reply.pk, exc.verdict)
        status, code, text = Message.Status.BLOCKED, "content_blocked", INPUT_BLOCKED_TEXT
    except InputUnchecked:
        assert reply.parent_id is not None, "a reply always answers a message"
        await sync_to_async(input_unchecked_apply)(reply.parent_id, reply.pk)
        status, code, text = Message.Status.FAILED, "safety_unavailable", UNCHECKED_TEXT
    except ProviderError as exc:
        status, code, text = Message.Status.FAILED, exc.code, exc.message
    except TimeoutError:
        status, code = Message.Status.FAILED, "timeout"
        text = f"The reply took longer than {settings.MESSAGE_PROCESSING_TIMEOUT:g} s."
    except redis.RedisError:
        logger.exception("generation %s lost Redis", generation.pk)
        status, code, text = Message.Status.FAILED, "redis_unavailable", "Redis was unavailable."
    except Exception:
        logger.exception("generation %s crashed", generation.pk)
        status, code, text = Message.Status.FAILED, "internal_error", "The reply failed."
    asked()  # the start, if the stream ended before it was made
    # Whatever happened, the end comes after the start (and its announcement).
    try:
        await progress.wait_ready()
    except NotStarted:
        logger.info("generation %s is not queued any more; skipped", generation.pk)
        return
    except redis.RedisError:
        logger.exception("generation %s could not announce its start", generation.pk)
        status, code, text = Message.Status.FAILED, "redis_unavailable", "Redis was unavailable."
    except Exception:
        logger.exception("generation %s could not start", generation.pk)
        status, code, text = Message.Status.FAILED, "internal_error", "The reply failed."
    await sync_to_async(generation_finish)(
        generation, progress, status, error_code=code, error_message=text, verdict=blocked_by
    )

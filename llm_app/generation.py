"""The generation loop: stream the provider's reply to the conversation and save how it ended.

Every delta is appended to the generation's token log (Redis Stream) and then fanned out to the
conversation's group with the same `seq`. Every path out of `run_generation` leaves the message
in a terminal status and tells the clients: `generation.completed`, `.failed` or `.cancelled`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis
from asgiref.sync import async_to_sync, sync_to_async
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from llm_app.cancel import cancel_watcher
from llm_app.lease import renew_lease
from llm_app.models import Generation
from llm_app.prompts import Prompt, prompt_build
from llm_app.providers import ChatRequest, ProviderError, provider_for
from llm_app.token_log import group_publisher, log_append, log_read_sync, log_seal
from messages_app.events import asend_event, checked_event, conversation_group
from messages_app.models import Message
from messages_app.serializers import message_data

logger = logging.getLogger(__name__)


@dataclass
class _Progress:
    parts: list[str] = field(default_factory=list)
    seq: int = 0
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    first_token_at: datetime | None = None
    saved_seq: int = 0
    saved_at: float = 0.0
    attempts: list[dict[str, Any]] = field(default_factory=list)
    provider: str = ""
    model: str = ""

    @property
    def text(self) -> str:
        return "".join(self.parts)


class _Cancelled(Exception):
    pass


def _load(generation_id: int) -> Generation | None:
    return (
        Generation.objects.select_related(
            "message", "message__conversation", "message__conversation__character"
        )
        .filter(pk=generation_id)
        .first()
    )


def _start(generation: Generation) -> bool:
    """Move the reply from queued to streaming; False if it is no longer queued."""
    now = timezone.now()
    message = generation.message
    updated = Message.objects.filter(pk=message.pk, status=Message.Status.QUEUED).update(
        status=Message.Status.STREAMING, updated_at=now
    )
    if not updated:
        return False
    Generation.objects.filter(pk=generation.pk).update(started_at=now, attempt=F("attempt") + 1)
    generation.started_at = now
    generation.attempt += 1
    message.status = Message.Status.STREAMING
    return True


def _save_partial(message_id: int, text: str, seq: int) -> None:
    Message.objects.filter(pk=message_id, status=Message.Status.STREAMING).update(
        content=text, stream_seq=seq, updated_at=timezone.now()
    )


def _ms(start: datetime | None, end: datetime | None) -> int | None:
    if start is None or end is None:
        return None
    return max(0, int((end - start).total_seconds() * 1000))


def _finish(
    generation: Generation,
    progress: _Progress,
    status: str,
    *,
    error_code: str = "",
    error_message: str = "",
) -> Message:
    """Save the end state. Only a reply still streaming is changed (a cancel may have won)."""
    now = timezone.now()
    message = generation.message
    with transaction.atomic():
        locked = Message.objects.select_for_update().get(pk=message.pk)
        if locked.is_terminal:
            return locked
        message.content = progress.text
        message.stream_seq = progress.seq
        message.status = status
        message.finish_reason = progress.finish_reason or (
            "cancelled" if status == Message.Status.CANCELLED else "error" if error_code else ""
        )
        message.model = progress.model or message.model
        message.prompt_tokens = progress.prompt_tokens
        message.completion_tokens = progress.completion_tokens
        message.queued_ms = _ms(generation.enqueued_at, generation.started_at)
        message.ttft_ms = _ms(generation.started_at, progress.first_token_at)
        message.total_ms = _ms(generation.started_at, now)
        message.save(
            update_fields=[
                "content",
                "stream_seq",
                "status",
                "finish_reason",
                "model",
                "prompt_tokens",
                "completion_tokens",
                "queued_ms",
                "ttft_ms",
                "total_ms",
                "updated_at",
            ]
        )
        generation.first_token_at = progress.first_token_at
        generation.finished_at = now
        generation.error_code = error_code
        generation.error_message = error_message
        generation.prompt_manifest = {
            **generation.prompt_manifest,
            "attempt": generation.attempt,
            "provider_attempts": progress.attempts,
            "provider_used": progress.provider,
            "model_used": progress.model,
            "ttft_ms": message.ttft_ms,
            "total_ms": message.total_ms,
            "finish_reason": message.finish_reason,
            "status": status,
            "deltas": progress.seq,
        }
        generation.save(
            update_fields=[
                "first_token_at",
                "finished_at",
                "error_code",
                "error_message",
                "prompt_manifest",
            ]
        )
    return message


def end_event(generation_id: int, message: Message, code: str = "", text: str = "") -> dict:
    """The terminal event for a finished reply, as sent live and on a late resume."""
    data = message_data(message)
    if message.status == Message.Status.COMPLETED:
        return {"type": "generation.completed", "generation_id": generation_id, "message": data}
    if message.status == Message.Status.CANCELLED:
        return {"type": "generation.cancelled", "generation_id": generation_id, "message": data}
    generation = getattr(message, "generation", None)
    code = code or (generation.error_code if generation else "") or "failed"
    text = text or (generation.error_message if generation else "") or "The reply failed."
    return {
        "type": "generation.failed",
        "generation_id": generation_id,
        "message_id": message.pk,
        "message": data,
        "error": {"code": code, "message": text},
    }


async def _announce(conversation_id: int, event: dict[str, Any]) -> None:
    try:
        await asend_event(conversation_id, event)
    except redis.RedisError:
        # The saved state stands; a client that reconnects gets it through resume or REST.
        logger.warning("could not announce %s: Redis unavailable", event["type"])


def _candidates(generation: Generation) -> list[tuple[str, str]]:
    """(provider, model) in the order to try: the generation's, then LLM_FALLBACK_PROVIDERS."""
    chosen = [(generation.provider, generation.model)]
    for entry in settings.LLM_FALLBACK_PROVIDERS:
        name, _, model = entry.partition(":")
        candidate = (name.strip(), model.strip() or settings.DEFAULT_MODEL)
        if candidate not in chosen:
            chosen.append(candidate)
    return chosen


async def _first(iterator: Any, generation: Generation) -> Any:
    """The first chunk within REQUEST_TIMEOUT_SECONDS, with heartbeats to the clients meanwhile."""
    started = time.monotonic()
    deadline = started + settings.REQUEST_TIMEOUT_SECONDS
    task = asyncio.ensure_future(iterator.__anext__())
    try:
        while True:
            wait = min(settings.GENERATION_HEARTBEAT_SECONDS, deadline - time.monotonic())
            done, _ = await asyncio.wait({task}, timeout=max(wait, 0))
            if done:
                return task.result()
            if time.monotonic() >= deadline:
                raise ProviderError("llm_timeout", "The LLM sent no token in time.", retryable=True)
            await _announce(
                generation.message.conversation_id,
                {
                    "type": "generation.heartbeat",
                    "generation_id": generation.pk,
                    "waiting_ms": int((time.monotonic() - started) * 1000),
                },
            )
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def _stream_once(
    generation: Generation, provider_name: str, request: ChatRequest, progress: _Progress
) -> None:
    message = generation.message
    conversation_id = message.conversation_id
    provider = provider_for(provider_name)
    interval = settings.PARTIAL_SAVE_INTERVAL_SECONDS
    every = settings.PARTIAL_SAVE_EVERY_TOKENS
    # Resolved once per stream: the token loop below is the hottest path of the service.
    publisher = group_publisher(conversation_group(conversation_id))
    iterator = provider.stream(request).__aiter__()
    try:
        chunk = await _first(iterator, generation)
        while True:
            if chunk.prompt_tokens is not None:
                progress.prompt_tokens = chunk.prompt_tokens
                progress.completion_tokens = chunk.completion_tokens
            if chunk.finish_reason:
                progress.finish_reason = chunk.finish_reason
            if chunk.text:
                if progress.first_token_at is None:
                    progress.first_token_at = timezone.now()
                progress.seq += 1
                progress.parts.append(chunk.text)
                event = {
                    "type": "generation.delta",
                    "generation_id": generation.pk,
                    "seq": progress.seq,
                    "text": chunk.text,
                }
                # Log first, then fan out (one pipeline): a client that resumes from the log
                # never misses a delta that was already sent live.
                if publisher is not None:
                    await log_append(
                        generation.pk,
                        progress.seq,
                        chunk.text,
                        publisher=publisher,
                        event=checked_event(event),
                    )
                else:
                    await log_append(generation.pk, progress.seq, chunk.text)
                    await asend_event(conversation_id, event)
                now = time.monotonic()
                due = now - progress.saved_at >= interval
                if due or progress.seq - progress.saved_seq >= every:
                    progress.saved_seq, progress.saved_at = progress.seq, now
                    await sync_to_async(_save_partial)(message.pk, progress.text, progress.seq)
            try:
                chunk = await iterator.__anext__()
            except StopAsyncIteration:
                return
    finally:
        with contextlib.suppress(BaseException):
            await iterator.aclose()  # type: ignore[attr-defined]


async def _stream(generation: Generation, prompt: Prompt, progress: _Progress) -> None:
    """Try the provider, retrying before the first token, then each fallback provider.

    Once a token has streamed there is no retry: that would send the client text twice.
    """
    params = generation.params
    last_error: ProviderError | None = None
    for provider_name, model in _candidates(generation):
        request = ChatRequest(
            model=model,
            messages=prompt.messages,
            temperature=float(params["temperature"]),
            max_tokens=int(params["max_tokens"]),
        )
        for attempt in range(settings.LLM_RETRY_ATTEMPTS + 1):
            progress.provider, progress.model = provider_name, model
            try:
                await _stream_once(generation, provider_name, request, progress)
                progress.attempts.append({"provider": provider_name, "model": model, "ok": True})
                return
            except ProviderError as exc:
                progress.attempts.append(
                    {"provider": provider_name, "model": model, "error": exc.code}
                )
                if progress.seq > 0:
                    raise
                last_error = exc
                if not exc.retryable or attempt == settings.LLM_RETRY_ATTEMPTS:
                    break
                await _announce(
                    generation.message.conversation_id,
                    {
                        "type": "generation.retrying",
                        "generation_id": generation.pk,
                        "attempt": attempt + 2,
                        "provider": provider_name,
                        "error": {"code": exc.code, "message": exc.message},
                    },
                )
                await asyncio.sleep(settings.LLM_RETRY_BACKOFF_SECONDS * 2**attempt)
    assert last_error is not None
    raise last_error


async def _stream_unless_cancelled(
    generation: Generation, prompt: Prompt, progress: _Progress
) -> None:
    watcher = cancel_watcher()
    cancelled = await watcher.watch(generation.pk)
    try:
        if cancelled.is_set():
            raise _Cancelled
        work = asyncio.ensure_future(_stream(generation, prompt, progress))
        stop = asyncio.ensure_future(cancelled.wait())
        try:
            await asyncio.wait({work, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (work, stop):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
        if not work.cancelled() and work.exception() is None:
            return
        if stop.done() and not stop.cancelled():
            raise _Cancelled
        work.result()
    finally:
        watcher.unwatch(generation.pk)


async def run_generation(generation_id: int) -> None:
    """Run one generation to a terminal status. Safe to call twice: a finished one is left alone."""
    generation = await sync_to_async(_load)(generation_id)
    if generation is None:
        logger.warning("generation %s no longer exists; nothing to do", generation_id)
        return
    if not await sync_to_async(_start)(generation):
        logger.info("generation %s is not queued any more; skipped", generation_id)
        return
    message = generation.message
    conversation_id = message.conversation_id
    progress = _Progress(saved_at=time.monotonic())
    status, code, text = Message.Status.COMPLETED, "", ""
    lease = asyncio.ensure_future(renew_lease(generation.pk))
    try:
        await asend_event(
            conversation_id,
            {
                "type": "generation.started",
                "generation_id": generation.pk,
                "message_id": message.pk,
                "attempt": generation.attempt,
            },
        )
        async with asyncio.timeout(settings.MESSAGE_PROCESSING_TIMEOUT):
            prompt = await prompt_build(
                conversation=message.conversation,
                reply=message,
                provider=generation.provider,
                model=generation.model,
                context_tokens=settings.LLM_CONTEXT_TOKENS,
                max_tokens=int(generation.params["max_tokens"]),
            )
            generation.prompt_manifest = {
                **prompt.manifest,
                "provider": generation.provider,
                "model": generation.model,
                "params": generation.params,
                "attempt": generation.attempt,
            }
            # Saved with the end state (one write, off the path to the first token).
            await _stream_unless_cancelled(generation, prompt, progress)
        if progress.finish_reason is None:
            status, code = Message.Status.FAILED, "llm_bad_stream"
            text = "The LLM stream ended without finishing the reply."
    except _Cancelled:
        status = Message.Status.CANCELLED
    except ProviderError as exc:
        status, code, text = Message.Status.FAILED, exc.code, exc.message
    except TimeoutError:
        status, code = Message.Status.FAILED, "timeout"
        text = f"The reply took longer than {settings.MESSAGE_PROCESSING_TIMEOUT:g} s."
    except redis.RedisError:
        logger.exception("generation %s lost Redis", generation_id)
        status, code, text = Message.Status.FAILED, "redis_unavailable", "Redis was unavailable."
    except Exception:
        logger.exception("generation %s crashed", generation_id)
        status, code, text = Message.Status.FAILED, "internal_error", "The reply failed."
    finally:
        lease.cancel()
    saved = await sync_to_async(_finish)(
        generation, progress, status, error_code=code, error_message=text
    )
    with contextlib.suppress(redis.RedisError):
        await log_seal(generation.pk)
    await _announce(
        conversation_id, await sync_to_async(end_event)(generation.pk, saved, code, text)
    )


def generation_fail_stale(generation_id: int, *, code: str, text: str) -> bool:
    """Mark a generation failed from outside its loop (its job died) and tell the clients.

    The partial text saved so far is kept. Returns False when it had already ended.
    """
    generation = _load(generation_id)
    if generation is None or generation.message.is_terminal:
        return False
    message = generation.message
    progress = _Progress(parts=[message.content], seq=message.stream_seq)
    logged = log_read_sync(generation.pk)
    if len(logged) > message.stream_seq:
        # The log holds every delta the clients were sent; the database only the last save.
        progress = _Progress(parts=[text for _, text in logged], seq=len(logged))
    failed = Message.Status.FAILED
    saved = _finish(generation, progress, failed, error_code=code, error_message=text)
    if saved.status != Message.Status.FAILED:
        return False
    async_to_sync(_announce)(message.conversation_id, end_event(generation.pk, saved, code, text))
    return True

"""The provider side of a generation: attempts, retries with backoff, fallback providers,
heartbeats while the first token is awaited, and the race against a cancel.

Every delta goes out through messages_app.streams.DeltaPublisher (token log, then fan-out).
Nothing here touches the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.utils import timezone

from llm_app.cancel import cancel_watcher
from llm_app.input_gate import InputBlocked
from llm_app.models import Generation
from llm_app.output_safety import Blocked, OutputMonitor
from llm_app.prompts import Prompt
from llm_app.providers import ChatRequest, ProviderError, provider_for
from messages_app import events
from messages_app.broadcast import asend_event, conversation_group
from messages_app.events import Event
from messages_app.safety.categories import Verdict
from messages_app.safety_flow import input_blocks
from messages_app.streams import DeltaPublisher

logger = logging.getLogger(__name__)


@dataclass
class Progress:
    """What a generation has streamed so far, and how its attempts went."""

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
    # The generation's start (database + `generation.started`), which runs while the LLM is
    # asked: nothing of this generation reaches the clients before it is done.
    ready: asyncio.Future[bool] | None = None
    # The live content checks (None when content filtering is off).
    monitor: OutputMonitor | None = None
    # The input check's verdict on the user message (llm_app.input_gate), read while the LLM
    # thinks: no delta goes out before it passed.
    gate: asyncio.Future[Verdict | None] | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)

    async def wait_gate(self) -> None:
        """Return once the input check passed; InputBlocked or InputUnchecked otherwise."""
        if self.gate is not None:
            verdict = await self.gate
            if verdict is not None and input_blocks(verdict):
                raise InputBlocked(verdict)
            self.gate = None

    async def wait_ready(self) -> None:
        """Return once the generation has started; NotStarted if it could not start."""
        if self.ready is not None:
            if not await self.ready:
                raise NotStarted
            self.ready = None


class Cancelled(Exception):
    """The reply was cancelled while it streamed."""


class NotStarted(Exception):
    """The reply was no longer queued when its worker took it up (cancelled, or taken over)."""


def storable(text: str) -> str:
    """`text` with what no database column can hold (U+0000, lone surrogates) replaced by
    U+FFFD, so the log, the clients and the saved reply all carry the same text."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text)
    return text


async def announce(generation: Generation, event: Event) -> None:
    """Best effort, for events whose loss costs nothing lasting (heartbeats, retries)."""
    try:
        await asend_event(conversation_group(generation.message.conversation), event)
    except Exception:
        logger.warning("could not announce %s", event["type"])


def candidates(generation: Generation) -> list[tuple[str, str]]:
    """(provider, model) in the order to try: the generation's, then LLM_FALLBACK_PROVIDERS."""
    chosen = [(generation.provider, generation.model)]
    for entry in settings.LLM_FALLBACK_PROVIDERS:
        name, _, model = entry.partition(":")
        candidate = (name.strip(), model.strip() or settings.DEFAULT_MODEL)
        if candidate not in chosen:
            chosen.append(candidate)
    return chosen


async def first_chunk(iterator: Any, generation: Generation, progress: Progress) -> Any:
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
            waiting_ms = int((time.monotonic() - started) * 1000)
            await progress.wait_ready()
            await announce(
                generation,
                events.generation_heartbeat(generation_id=generation.pk, waiting_ms=waiting_ms),
            )
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


async def stream_once(
    generation: Generation,
    provider_name: str,
    request: ChatRequest,
    progress: Progress,
    save_partial: Any,
) -> None:
    """One attempt: stream the provider's reply, publishing and saving as it grows."""
    message = generation.message
    provider = provider_for(provider_name)
    interval = settings.PARTIAL_SAVE_INTERVAL_SECONDS
    every = settings.PARTIAL_SAVE_EVERY_TOKENS or None
    # Made once per stream: the token loop below is the hottest path of the service.
    publisher = DeltaPublisher(message, generation_id=generation.pk)
    monitor = progress.monitor
    iterator = provider.stream(request).__aiter__()
    try:
        chunk = await first_chunk(iterator, generation, progress)
        while True:
            if chunk.prompt_tokens is not None:
                progress.prompt_tokens = chunk.prompt_tokens
                progress.completion_tokens = chunk.completion_tokens
            if chunk.finish_reason:
                progress.finish_reason = chunk.finish_reason
            if chunk.text:
                if progress.first_token_at is None:
                    progress.first_token_at = timezone.now()
                    await progress.wait_ready()
                    await progress.wait_gate()
                text = storable(chunk.text)
                progress.seq += 1
                progress.parts.append(text)
                await publisher.publish(progress.seq, text)
                if progress.seq == 1:  # logged once the first delta is out, not before it
                    _log_first_token(generation, provider_name, progress)
                if monitor is not None:
                    monitor.after_delta(progress.seq, text, progress.parts)
                now = time.monotonic()
                due = now - progress.saved_at >= interval
                if due or (every and progress.seq - progress.saved_seq >= every):
                    progress.saved_seq, progress.saved_at = progress.seq, now
                    await save_partial(message.pk, progress.text, progress.seq)
            try:
                chunk = await iterator.__anext__()
            except StopAsyncIteration:
                return
    finally:
        with contextlib.suppress(BaseException):
            await iterator.aclose()  # type: ignore[attr-defined]


def _log_first_token(generation: Generation, provider_name: str, progress: Progress) -> None:
    if logger.isEnabledFor(logging.INFO) and progress.first_token_at is not None:
        waited = progress.first_token_at - generation.enqueued_at
        logger.info(
            "generation %s: first token from %s %s, %d ms after it was queued",
            generation.pk,
            provider_name,
            progress.model,
            waited.total_seconds() * 1000,
        )


async def stream_with_fallback(
    generation: Generation, prompt: Prompt, progress: Progress, save_partial: Any
) -> None:
    """Try the provider, retrying before the first token, then each fallback provider.

    Once a token has streamed there is no retry: that would send the client text twice.
    """
    params = generation.params
    last_error: ProviderError | None = None
    for provider_name, model in candidates(generation):
        request = ChatRequest.from_params(model=model, messages=prompt.messages, params=params)
        for attempt in range(settings.LLM_RETRY_ATTEMPTS + 1):
            progress.provider, progress.model = provider_name, model
            try:
                await stream_once(generation, provider_name, request, progress, save_partial)
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
                await progress.wait_ready()
                await announce(
                    generation,
                    events.generation_retrying(
                        generation_id=generation.pk,
                        attempt=attempt + 2,
                        provider=provider_name,
                        code=exc.code,
                        message=exc.message,
                    ),
                )
                await asyncio.sleep(settings.LLM_RETRY_BACKOFF_SECONDS * 2**attempt)
    assert last_error is not None
    raise last_error


async def stream_unless_cancelled(
    generation: Generation,
    prompt: Prompt,
    progress: Progress,
    save_partial: Any,
    *,
    asked: Callable[[], None] = lambda: None,
) -> None:
    """stream_with_fallback, stopped (and the provider stream closed) by a cancel: raises
    Cancelled then; or by a live content check that flags the reply: raises Blocked. Once
    the stream has ended, the whole reply is checked (Blocked). `asked` is called once the
    stream has had its first turn on the loop (over a kept-alive connection, the request is
    then written)."""
    stream_key = generation.message.stream_key
    watcher = cancel_watcher()
    # The LLM is asked first; the rest (the caller's bookkeeping, the cancel flag) is done
    # while it thinks.
    work = asyncio.ensure_future(stream_with_fallback(generation, prompt, progress, save_partial))
    try:
        await asyncio.sleep(0)
        asked()
        cancelled = await watcher.watch(stream_key)
    except BaseException:
        work.cancel()
        with contextlib.suppress(BaseException):
            await work
        raise
    monitor = progress.monitor
    try:
        stop = asyncio.ensure_future(cancelled.wait())
        stoppers: set[asyncio.Future[Any]] = {stop}
        if monitor is not None:
            stoppers.add(asyncio.ensure_future(monitor.tripped.wait()))
        # The start, if it is still being written: a reply that could not start (cancelled
        # while queued) stops asking the LLM at once, not at its first token.
        # Waited on even when it is already done: a start that failed while the cancel
        # watcher was being set up must stop the stream at once too.
        start = progress.ready
        waiting: set[asyncio.Future[Any]] = {work, *stoppers}
        if start is not None:
            waiting.add(start)
        try:
            while True:
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if start in done and not done & {work, *stoppers}:
                    waiting.discard(start)
                    if not start.cancelled() and start.exception() is None and start.result():
                        continue  # started: stream on
                break
        finally:
            for task in (work, *stoppers):
                if not task.done():
                    task.cancel()
                    with contextlib.suppress(BaseException):
                        await task
        if not work.cancelled() and work.exception() is None:
            if monitor is not None:
                await monitor.final(progress.seq, progress.parts)
            return
        if stop.done() and not stop.cancelled():
            raise Cancelled
        if monitor is not None and monitor.verdict is not None:
            raise Blocked(monitor.verdict)
        if work.cancelled() and start is not None:
            await progress.wait_ready()  # raises NotStarted, or why it could not start
        work.result()
    finally:
        watcher.unwatch(stream_key)
        if monitor is not None:
            await monitor.close()

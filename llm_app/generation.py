"""The generation loop: stream the provider's reply to the conversation and save how it ended.

Every path out of `run_generation` leaves the message in a terminal status and tells the
clients: `generation.completed` or `generation.failed`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from llm_app.models import Generation
from llm_app.prompts import prompt_build
from llm_app.providers import ChatRequest, ProviderError, get_provider
from messages_app.events import asend_event
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

    @property
    def text(self) -> str:
        return "".join(self.parts)


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
    generation.started_at = now
    generation.attempt += 1
    generation.save(update_fields=["started_at", "attempt"])
    message.status = Message.Status.STREAMING
    return True


def _save_partial(message_id: int, text: str) -> None:
    Message.objects.filter(pk=message_id, status=Message.Status.STREAMING).update(
        content=text, updated_at=timezone.now()
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
        message.status = status
        message.finish_reason = progress.finish_reason or ("error" if error_code else "")
        message.prompt_tokens = progress.prompt_tokens
        message.completion_tokens = progress.completion_tokens
        message.queued_ms = _ms(generation.enqueued_at, generation.started_at)
        message.ttft_ms = _ms(generation.started_at, progress.first_token_at)
        message.total_ms = _ms(generation.started_at, now)
        message.save(
            update_fields=[
                "content",
                "status",
                "finish_reason",
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
        generation.save(
            update_fields=["first_token_at", "finished_at", "error_code", "error_message"]
        )
    return message


async def _announce_end(generation: Generation, message: Message, code: str, text: str) -> None:
    conversation_id = message.conversation_id
    if message.status == Message.Status.COMPLETED:
        event = {"type": "generation.completed", "generation_id": generation.pk}
        event["message"] = await sync_to_async(message_data)(message)
    elif message.status == Message.Status.CANCELLED:
        event = {"type": "generation.cancelled", "generation_id": generation.pk}
        event["message"] = await sync_to_async(message_data)(message)
    else:
        event = {
            "type": "generation.failed",
            "generation_id": generation.pk,
            "message_id": message.pk,
            "error": {"code": code or "failed", "message": text or "The reply failed."},
        }
    await asend_event(conversation_id, event)


async def _stream(generation: Generation, progress: _Progress) -> None:
    message = generation.message
    conversation = message.conversation
    prompt = await sync_to_async(prompt_build)(
        conversation=conversation,
        reply=message,
        context_tokens=settings.LLM_CONTEXT_TOKENS,
        max_tokens=int(generation.params["max_tokens"]),
    )
    generation.prompt_manifest = {
        **prompt.manifest,
        "provider": generation.provider,
        "model": generation.model,
        "params": generation.params,
    }
    await sync_to_async(generation.save)(update_fields=["prompt_manifest"])
    request = ChatRequest(
        model=generation.model,
        messages=prompt.messages,
        temperature=float(generation.params["temperature"]),
        max_tokens=int(generation.params["max_tokens"]),
    )
    provider = get_provider(generation.provider)
    interval = settings.PARTIAL_SAVE_INTERVAL_SECONDS
    every = settings.PARTIAL_SAVE_EVERY_TOKENS
    try:
        async for chunk in provider.stream(request):
            if chunk.prompt_tokens is not None:
                progress.prompt_tokens = chunk.prompt_tokens
                progress.completion_tokens = chunk.completion_tokens
            if chunk.finish_reason:
                progress.finish_reason = chunk.finish_reason
            if not chunk.text:
                continue
            if progress.first_token_at is None:
                progress.first_token_at = timezone.now()
            progress.seq += 1
            progress.parts.append(chunk.text)
            await asend_event(
                conversation.pk,
                {
                    "type": "generation.delta",
                    "generation_id": generation.pk,
                    "seq": progress.seq,
                    "text": chunk.text,
                },
            )
            now = time.monotonic()
            if progress.seq - progress.saved_seq >= every or now - progress.saved_at >= interval:
                progress.saved_seq, progress.saved_at = progress.seq, now
                await sync_to_async(_save_partial)(message.pk, progress.text)
    finally:
        await provider.aclose()


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
    await asend_event(
        message.conversation_id,
        {"type": "generation.started", "generation_id": generation.pk, "message_id": message.pk},
    )
    progress = _Progress(saved_at=time.monotonic())
    status, code, text = Message.Status.COMPLETED, "", ""
    try:
        async with asyncio.timeout(settings.MESSAGE_PROCESSING_TIMEOUT):
            await _stream(generation, progress)
        if progress.finish_reason is None:
            status, code = Message.Status.FAILED, "llm_bad_stream"
            text = "The LLM stream ended without finishing the reply."
    except ProviderError as exc:
        status, code, text = Message.Status.FAILED, exc.code, exc.message
    except TimeoutError:
        status, code = Message.Status.FAILED, "timeout"
        text = f"The reply took longer than {settings.MESSAGE_PROCESSING_TIMEOUT:g} s."
    except Exception:
        logger.exception("generation %s crashed", generation_id)
        status, code, text = Message.Status.FAILED, "internal_error", "The reply failed."
    saved = await sync_to_async(_finish)(
        generation, progress, status, error_code=code, error_message=text
    )
    await _announce_end(generation, saved, code, text)


def generation_fail_stale(generation_id: int, *, code: str, text: str) -> None:
    """Mark a generation failed from outside its loop (its job died) and tell the clients."""
    generation = _load(generation_id)
    if generation is None or generation.message.is_terminal:
        return
    saved = _finish(
        generation,
        _Progress(parts=[generation.message.content]),
        Message.Status.FAILED,
        error_code=code,
        error_message=text,
    )
    from asgiref.sync import async_to_sync

    async_to_sync(_announce_end)(generation, saved, code, text)

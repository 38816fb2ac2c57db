"""The database side of a generation: one named service for each change of its state.

Ends go through messages_app.replies.reply_end, the one way a reply ends; the generation's own
record (timings, errors, the prompt manifest) is written in the same transaction.
"""

from __future__ import annotations

import logging
from datetime import datetime
from functools import cache

from django.db import connection, transaction
from django.utils import timezone

from llm_app.attempts import Progress, storable
from llm_app.models import Generation
from llm_app.output_safety import review_after_end
from llm_app.prompts import history_read
from llm_app.services import generation_requeue
from messages_app import events
from messages_app.broadcast import send_event
from messages_app.models import Character, Conversation, Message, ReviewItem
from messages_app.replies import ReplyEnd, reply_end
from messages_app.safety.categories import Verdict
from messages_app.safety_flow import safety_record
from messages_app.selectors import Turn
from messages_app.streams import log_read_sync
from messageservice import rows

logger = logging.getLogger(__name__)


def generation_load(generation_id: int, stream_key: str | None = None) -> Generation | None:
    """The generation with its reply, conversation and character; None if it does not exist,
    or if `stream_key` (from the job) is not its reply's: the job was queued by another
    database (reset, restored, or another installation sharing this Redis)."""
    generation = (
        Generation.objects.select_related(
            "message", "message__conversation", "message__conversation__character"
        )
        .filter(pk=generation_id)
        .first()
    )
    if generation is None:
        return None
    if stream_key is not None and generation.message.stream_key.hex != stream_key:
        logger.warning(
            "job for generation %s names reply %s, which is not this database's; ignored",
            generation_id,
            stream_key,
        )
        return None
    return generation


@cache
def _load_sql(vendor: str) -> str:
    # Identifiers come from the models' metadata; the id is a parameter.
    return (
        f"SELECT {rows.columns(Generation, 'g')}, {rows.columns(Message, 'm')},"  # noqa: S608
        f" {rows.columns(Conversation, 'c')}, {rows.columns(Character, 'ch')}"
        f" FROM {rows.table(Generation)} g"
        f" JOIN {rows.table(Message)} m ON m.id = g.message_id"
        f" JOIN {rows.table(Conversation)} c ON c.id = m.conversation_id"
        f" JOIN {rows.table(Character)} ch ON ch.id = c.character_id"
        " WHERE g.id = %s"
    )


def _generation_load_row(generation_id: int) -> Generation | None:
    """generation_load's query, written once (the ORM compiled the three joins every time)."""
    with connection.cursor() as cursor:
        cursor.execute(_load_sql(connection.vendor), [generation_id])
        row = cursor.fetchone()
    if row is None:
        return None
    values = list(row)
    parts = []
    for model in (Generation, Message, Conversation, Character):
        parts.append(rows.instance(model, values[: rows.width(model)]))
        del values[: rows.width(model)]
    generation, message, conversation, character = parts
    conversation.character = character
    message.conversation = conversation
    generation.message = message
    return generation


def generation_load_with_history(
    generation_id: int, stream_key: str | None, *, history_limit: int
) -> tuple[Generation, list[Turn]] | None:
    """generation_load, and the history its prompt is built from (prompts.history_read), in
    one call: the worker's one database step before it asks the LLM."""
    generation = _generation_load_row(generation_id)
    if generation is None:
        return None
    if stream_key is not None and generation.message.stream_key.hex != stream_key:
        logger.warning(
            "job for generation %s names reply %s, which is not this database's; ignored",
            generation_id,
            stream_key,
        )
        return None
    reply = generation.message
    if reply.status != Message.Status.QUEUED:
        return generation, []
    history = history_read(conversation_id=reply.conversation_id, reply=reply, limit=history_limit)
    return generation, history


@cache
def _start_sql(vendor: str) -> tuple[str, str]:
    # Identifiers come from the models' metadata; values are parameters.
    message = (
        f"UPDATE {rows.table(Message)} SET status = %s, updated_at = %s"  # noqa: S608
        " WHERE id = %s AND status = %s"
    )
    generation = (
        f"UPDATE {rows.table(Generation)} SET started_at = %s, attempt = attempt + 1"  # noqa: S608
        " WHERE id = %s"
    )
    return message, generation


def generation_start_many(items: list[tuple[Generation, datetime]]) -> set[int]:
    """Move each generation's reply from queued to streaming, with `started_at` the time its
    worker took it up, in ONE transaction (in a burst the starts of many generations share one
    commit); the ids of those that started. One not queued any more (cancelled meanwhile) is
    left alone. The instances are updated as the rows."""
    message_sql, generation_sql = _start_sql(connection.vendor)
    started: set[int] = set()
    with transaction.atomic(), connection.cursor() as cursor:
        for generation, taken_at in items:
            at = connection.ops.adapt_datetimefield_value(taken_at)
            cursor.execute(
                message_sql,
                [Message.Status.STREAMING, at, generation.message_id, Message.Status.QUEUED],
            )
            if cursor.rowcount != 1:
                continue
            cursor.execute(generation_sql, [at, generation.pk])
            started.add(generation.pk)
    for generation, taken_at in items:
        if generation.pk in started:
            generation.started_at = taken_at
            generation.attempt += 1
            generation.message.status = Message.Status.STREAMING
    return started


def generation_save_partial(message_id: int, text: str, seq: int) -> None:
    """Save the text streamed so far (only while the reply is still streaming)."""
    Message.objects.filter(pk=message_id, status=Message.Status.STREAMING).update(
        content=text, stream_seq=seq, updated_at=timezone.now()
    )


def _ms(start: datetime | None, end: datetime | None) -> int | None:
    if start is None or end is None:
        return None
    return max(0, int((end - start).total_seconds() * 1000))


def generation_finish(
    generation: Generation,
    progress: Progress,
    status: str,
    *,
    error_code: str = "",
    error_message: str = "",
    verdict: Verdict | None = None,
) -> Message | None:
    """End the reply as `status` with what `progress` holds. None if it had already ended (a
    cancel or the reaper won) or its conversation was deleted. `verdict`: the content check
    that blocked the reply; the reply goes to the moderators' queue, and the clients get
    `safety.flagged` before the end event."""
    now = timezone.now()
    end = ReplyEnd(
        status=status,
        content=progress.text,
        seq=progress.seq,
        finish_reason=progress.finish_reason or "",
        error_code=error_code,
        error_message=error_message,
        model=progress.model,
        prompt_tokens=progress.prompt_tokens,
        completion_tokens=progress.completion_tokens,
        queued_ms=_ms(generation.enqueued_at, generation.started_at),
        ttft_ms=_ms(generation.started_at, progress.first_token_at),
        total_ms=_ms(generation.started_at, now),
        output_review=(
            verdict is None
            and status != Message.Status.BLOCKED
            and review_after_end(progress.monitor, progress.seq)
        ),
    )

    def record(message: Message) -> None:
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
        if verdict is not None:
            safety_record(message, verdict, source=ReviewItem.Source.OUTPUT, blocked=True)

    return reply_end(message_id=generation.message_id, end=end, record=record)


def generation_fail_stale(generation_id: int, *, code: str, text: str) -> bool:
    """Fail a generation from outside its loop (its worker or job died); clients are told.

    Keeps every delta the clients were sent: the token log holds them all, the database only
    the last partial save. Returns False when it had already ended.
    """
    generation = generation_load(generation_id)
    if generation is None or generation.message.is_terminal:
        return False
    message = generation.message
    progress = Progress(parts=[message.content], seq=message.stream_seq)
    logged = log_read_sync(message.stream_key)
    if len(logged) > message.stream_seq:
        # Logs written by an older worker may hold text the database refuses.
        progress = Progress(parts=[storable(text) for _, text in logged], seq=len(logged))
    progress.model = message.model
    failed = generation_finish(
        generation, progress, Message.Status.FAILED, error_code=code, error_message=text
    )
    return failed is not None


def generation_requeue_orphan(generation: Generation, reason: str) -> bool:
    """Queue an orphaned generation that streamed nothing again, as its next attempt; clients
    get `generation.retrying`. False if it is no longer queued or streaming."""
    message = generation.message
    updated = Message.objects.filter(
        pk=message.pk, status__in=[Message.Status.STREAMING, Message.Status.QUEUED]
    ).update(status=Message.Status.QUEUED, content="", stream_seq=0, updated_at=timezone.now())
    if not updated:
        return False
    generation_requeue(generation)
    send_event(
        message.conversation,
        events.generation_retrying(
            generation_id=generation.pk,
            attempt=generation.attempt + 1,
            code=reason,
            message="The reply is being generated again.",
        ),
    )
    return True

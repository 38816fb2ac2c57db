"""The reply lifecycle: how a queued assistant reply is generated and how it ends.

- `reply_end` is the one service through which every reply ends: completed, failed, cancelled,
  blocked, worker lost, stale job, or conversation deleted. After commit it announces the
  terminal event, seals the token log and calls the domain hook `hooks.reply_finished`.
- The generation itself is the engine's business (llm_app). messages_app never imports it: it
  talks to the `ReplyEngine` that llm_app registers when Django starts (see llm_app.apps).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any, Protocol

from django.db import transaction
from django.utils import timezone

from messages_app import events, hooks, streams
from messages_app.broadcast import send_event
from messages_app.models import Conversation, Message
from messageservice import logs


class ReplyEngine(Protocol):
    """What messages_app needs from whatever generates replies."""

    def model_for(self, conversation: Conversation) -> str:
        """The model a new reply in `conversation` will be generated with (no I/O)."""

    def prepare(self, reply: Message) -> int:
        """Inside the caller's transaction: set up the generation of the queued `reply`;
        returns its generation id."""

    def start(self, reply: Message, pipeline: Any = None) -> None:
        """After commit: queue the generation. Raises if it cannot be queued. With `pipeline`
        (a pipeline of messageservice.redis_clients.sync_redis()), only add the commands to it;
        the caller executes it."""

    def cancel(self, reply: Message) -> None:
        """Ask a running generation to stop; it then ends the reply `cancelled`."""

    def complete(
        self,
        conversation: Conversation,
        messages: list[dict[str, str]],
        *,
        max_tokens: int,
        timeout: float,
    ) -> str:
        """A short completion of `messages` (chat turns: role, content) by the LLM of
        `conversation`'s character, not streamed to anyone, within `timeout` seconds: its
        whole text. Sync; call it outside an event loop. Raises CompletionFailed."""


class CompletionFailed(Exception):
    """ReplyEngine.complete got no answer: the LLM failed, timed out or is unknown."""


_engine: ReplyEngine | None = None


def engine_register(engine: ReplyEngine) -> None:
    global _engine
    _engine = engine


def reply_engine() -> ReplyEngine:
    if _engine is None:
        raise RuntimeError("No reply engine is registered: is llm_app in INSTALLED_APPS?")
    return _engine


@dataclass(frozen=True)
class ReplyEnd:
    """How a reply ended. `content`/`seq` None keep what is saved (nothing more streamed)."""

    status: str
    content: str | None = None
    seq: int | None = None
    finish_reason: str = ""
    error_code: str = ""
    error_message: str = ""
    model: str = ""
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    queued_ms: int | None = None
    ttft_ms: int | None = None
    total_ms: int | None = None
    # Its content check falls to the message processor (Message.output_review).
    output_review: bool = False


_END_FIELDS = [
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
    "output_review",
    "updated_at",
]


def reply_end(
    *,
    message_id: int,
    end: ReplyEnd,
    only_from: Collection[str] = (Message.Status.QUEUED, Message.Status.STREAMING),
    record: Callable[[Message], None] | None = None,
) -> Message | None:
    """End the reply `message_id` as `end` says, if its status is still one of `only_from`.

    Locks the message row, so of two racing ends (a cancel and a completion) exactly one wins.
    `record` runs in the same transaction with the saved message, for the engine's own
    bookkeeping. Returns the saved message, or None when the reply had already ended, was not
    in `only_from`, or no longer exists (its conversation was deleted). After commit: the
    terminal event goes to every client, the token log is sealed, and hooks.reply_finished runs.
    """
    assert end.status not in (Message.Status.QUEUED, Message.Status.STREAMING), end.status
    with transaction.atomic():
        message = (
            Message.objects.select_for_update(of=("self",))
            .select_related("conversation", "generation")
            .filter(pk=message_id)
            .first()
        )
        if message is None or message.status not in only_from:
            return None
        if end.content is not None:
            message.content = end.content
        if end.seq is not None:
            message.stream_seq = end.seq
        message.status = end.status
        message.finish_reason = end.finish_reason or _default_finish_reason(end)
        message.model = end.model or message.model
        message.prompt_tokens = end.prompt_tokens
        message.completion_tokens = end.completion_tokens
        message.queued_ms = end.queued_ms
        message.ttft_ms = end.ttft_ms
        message.total_ms = end.total_ms
        message.output_review = end.output_review
        message.updated_at = timezone.now()
        message.save(update_fields=_END_FIELDS)
        if record is not None:
            record(message)
        transaction.on_commit(lambda: _after_end(message, end))
    return message


def _default_finish_reason(end: ReplyEnd) -> str:
    if end.status == Message.Status.CANCELLED:
        return "cancelled"
    if end.status == Message.Status.BLOCKED:
        return "blocked"
    return "error" if end.error_code else ""


def _after_end(message: Message, end: ReplyEnd) -> None:
    generation = getattr(message, "generation", None)  # loaded by reply_end
    if generation is None:
        _announce_end(message, end)
        return
    with logs.bind(generation_id=generation.pk):
        _announce_end(message, end)


def _announce_end(message: Message, end: ReplyEnd) -> None:
    if message.status == Message.Status.BLOCKED:
        # Its text is for the moderators: no resume may replay it.
        streams.log_delete(message.stream_key)
    else:
        streams.log_seal(message.stream_key)
    send_event(
        message.conversation,
        events.generation_ended(message, code=end.error_code, text=end.error_message),
    )
    hooks.reply_finished(message, end.error_code)

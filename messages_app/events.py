"""The catalogue of server events: every frame the service sends to clients is built here.

An event is the websocket frame itself; its dotted `type` also names the consumer handler that
forwards it (`generation.delta` -> `generation_delta`). The shapes are the contract in
docs/api.md. Sending is messages_app.broadcast's job; this module only builds.
"""

from __future__ import annotations

from typing import Any

from messages_app.models import Conversation, Message
from messages_app.serializers import conversation_data, message_data

Event = dict[str, Any]

TERMINAL_TYPES = frozenset({"generation.completed", "generation.failed", "generation.cancelled"})


def message_created(message: Message, *, siblings: list[int] | None, client_id: str) -> Event:
    return {
        "type": "message.created",
        "message": message_data(message, siblings),
        "client_id": client_id,
    }


def generation_started(*, generation_id: int, message_id: int, attempt: int) -> Event:
    return {
        "type": "generation.started",
        "generation_id": generation_id,
        "message_id": message_id,
        "attempt": attempt,
    }


def generation_delta(*, generation_id: int, seq: int, text: str) -> Event:
    return {"type": "generation.delta", "generation_id": generation_id, "seq": seq, "text": text}


def generation_heartbeat(*, generation_id: int, waiting_ms: int) -> Event:
    return {
        "type": "generation.heartbeat",
        "generation_id": generation_id,
        "waiting_ms": waiting_ms,
    }


def generation_retrying(
    *, generation_id: int, attempt: int, code: str, message: str, provider: str | None = None
) -> Event:
    event: Event = {
        "type": "generation.retrying",
        "generation_id": generation_id,
        "attempt": attempt,
        "error": {"code": code, "message": message},
    }
    if provider is not None:
        event["provider"] = provider
    return event


def generation_ended(message: Message, *, code: str = "", text: str = "") -> Event:
    """The terminal event of a finished reply, as sent live and to a late `stream.resume`.

    `message` has its generation loaded (select_related("generation")); a failure without an
    explicit `code` reports the one saved with the generation.
    """
    generation = getattr(message, "generation", None)
    generation_id = generation.pk if generation is not None else None
    data = message_data(message)
    if message.status == Message.Status.COMPLETED:
        return {"type": "generation.completed", "generation_id": generation_id, "message": data}
    if message.status == Message.Status.CANCELLED:
        return {"type": "generation.cancelled", "generation_id": generation_id, "message": data}
    code = (
        code
        or (generation.error_code if generation is not None else "")
        or ("content_blocked" if message.status == Message.Status.BLOCKED else message.status)
    )
    text = (
        text
        or (generation.error_message if generation is not None else "")
        or ("The reply failed.")
    )
    return {
        "type": "generation.failed",
        "generation_id": generation_id,
        "message_id": message.pk,
        "message": data,
        "error": {"code": code, "message": text},
    }


def safety_flagged(*, message_id: int, categories: list[str]) -> Event:
    """A message crossed the safety threshold: a reply that was stopped (its end event
    follows), or a user message that was flagged or blocked."""
    return {"type": "safety.flagged", "message_id": message_id, "categories": categories}


def conversation_updated(conversation: Conversation) -> Event:
    """The conversation changed on the server's initiative (its automatic title): the
    conversation as REST shows it."""
    return {"type": "conversation.updated", "conversation": conversation_data(conversation)}


def conversation_deleted(*, conversation_id: int) -> Event:
    return {"type": "conversation.deleted", "conversation_id": conversation_id}


def account_revoked(reason: str) -> Event:
    """To the user's own group (not a frame): its sockets answer with an `error` and close 4401."""
    return {"type": "account.revoked", "reason": reason}


def rate_limited(*, retry_after: float, limit: str) -> Event:
    """The answer to a `message.send` over one of the user's limits (nothing was saved)."""
    return {"type": "rate_limited", "retry_after": round(retry_after, 3), "limit": limit}


def error(code: str, message: str, details: dict[str, Any] | None = None) -> Event:
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = details
    return {"type": "error", "error": body}


def pong() -> Event:
    return {"type": "pong"}

"""Single-use websocket tickets kept in Redis, for clients that cannot send cookies."""

from __future__ import annotations

import secrets

from django.conf import settings

from messageservice.redis_clients import async_redis, sync_redis

_PREFIX = "ws-ticket:"


def ticket_issue(*, user_id: int) -> str:
    """A fresh ticket naming `user_id`, valid for WS_TICKET_TTL_SECONDS and for one handshake."""
    ticket = secrets.token_urlsafe(32)
    sync_redis().set(_PREFIX + ticket, str(user_id), ex=settings.WS_TICKET_TTL_SECONDS)
    return ticket


async def ticket_redeem(ticket: str) -> int | None:
    """The user id behind a ticket, consuming it (GETDEL); None if unknown, used or expired."""
    if not ticket or len(ticket) > 128:
        return None
    value = await async_redis().getdel(_PREFIX + ticket)
    return int(value) if value is not None else None

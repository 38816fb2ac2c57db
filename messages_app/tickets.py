"""Single-use websocket tickets kept in Redis, for clients that cannot send cookies."""

from __future__ import annotations

import secrets
from functools import cache

import redis
import redis.asyncio as aredis
from django.conf import settings

_PREFIX = "ws-ticket:"


@cache
def _sync_client() -> redis.Redis:
    return redis.Redis.from_url(settings.REDIS_URL)


def ticket_issue(*, user_id: int) -> str:
    """A fresh ticket naming `user_id`, valid for WS_TICKET_TTL_SECONDS and for one handshake."""
    ticket = secrets.token_urlsafe(32)
    _sync_client().set(_PREFIX + ticket, str(user_id), ex=settings.WS_TICKET_TTL_SECONDS)
    return ticket


async def ticket_redeem(ticket: str) -> int | None:
    """The user id behind a ticket, consuming it; None if unknown, used or expired."""
    if not ticket or len(ticket) > 128:
        return None
    client = aredis.Redis.from_url(settings.REDIS_URL)
    try:
        value = await client.getdel(_PREFIX + ticket)
    finally:
        await client.aclose()
    return int(value) if value is not None else None

"""ASGI middleware: authenticate a websocket by a single-use `?ticket=` when one is given."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs

from channels.db import database_sync_to_async
from channels.middleware import BaseMiddleware
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AnonymousUser

from messages_app.tickets import ticket_redeem


@database_sync_to_async
def _active_user(user_id: int) -> Any:
    return get_user_model().objects.filter(pk=user_id, is_active=True).first() or AnonymousUser()


class TicketAuthMiddleware(BaseMiddleware):
    """Inside AuthMiddlewareStack: a ticket, when present, decides the user (bad -> anonymous)."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        query = parse_qs(scope.get("query_string", b"").decode())
        if "ticket" in query:
            user_id = await ticket_redeem(query["ticket"][0])
            scope = dict(scope, user=await _active_user(user_id) if user_id else AnonymousUser())
        return await super().__call__(scope, receive, send)

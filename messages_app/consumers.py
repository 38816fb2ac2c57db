"""The conversation websocket: authenticate, join the group, hand each frame to a service."""

from __future__ import annotations

import json
import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from messages_app import selectors, services
from messages_app.errors import NotFound, ServiceError
from messages_app.events import conversation_group
from messages_app.models import Conversation
from messages_app.serializers import message_data

logger = logging.getLogger(__name__)

# Application close codes: 4000 + the HTTP status the REST API would give.
CLOSE_UNAUTHORIZED = 4401
CLOSE_NOT_FOUND = 4404
MAX_FRAME_BYTES = 64 * 1024


class ConversationConsumer(AsyncJsonWebsocketConsumer):
    conversation: Conversation
    group: str = ""

    async def connect(self) -> None:
        user = self.scope.get("user")
        await self.accept()
        if user is None or not user.is_authenticated:
            await self._error("not_authenticated", "Log in or use a websocket ticket.")
            await self.close(code=CLOSE_UNAUTHORIZED)
            return
        try:
            conversation_id = int(self.scope["url_route"]["kwargs"]["conversation_id"])
            self.conversation = await database_sync_to_async(selectors.conversation_get)(
                user=user, conversation_id=conversation_id
            )
        except (ValueError, NotFound):
            await self._error("not_found", "No such conversation.")
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.group = conversation_group(self.conversation.pk)
        await self.channel_layer.group_add(self.group, self.channel_name)

    async def disconnect(self, code: int) -> None:
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not self.group:
            return
        if text_data is None or len(text_data) > MAX_FRAME_BYTES:
            await self._error(
                "bad_frame", f"Send JSON text frames of at most {MAX_FRAME_BYTES} bytes."
            )
            return
        try:
            frame = json.loads(text_data)
        except ValueError:
            await self._error("bad_frame", "The frame is not valid JSON.")
            return
        if not isinstance(frame, dict) or not isinstance(frame.get("type"), str):
            await self._error("bad_frame", "A frame is a JSON object with a string `type`.")
            return
        handler = self._handlers.get(frame["type"])
        if handler is None:
            await self._error("unknown_type", f"Unknown frame type {frame['type']!r}.")
            return
        try:
            await handler(self, frame)
        except ServiceError as exc:
            await self.send_json({"type": "error", "error": exc.as_dict()["error"]})
        except Exception:
            logger.exception("websocket frame %s failed", frame["type"])
            await self._error("internal_error", "The frame could not be handled.")

    async def _error(self, code: str, message: str) -> None:
        await self.send_json({"type": "error", "error": {"code": code, "message": message}})

    # --- client frames --------------------------------------------------------------------
    async def _message_send(self, frame: dict[str, Any]) -> None:
        result = await database_sync_to_async(services.message_send)(
            conversation=self.conversation,
            author=self.scope["user"],
            content=frame.get("content"),
            client_id=frame.get("client_id") or "",
        )
        if not result.created:
            # A repeat: the first send was already announced; tell this client again only.
            for message in (result.user_message, result.assistant_message):
                await self.send_json(
                    {
                        "type": "message.created",
                        "message": await database_sync_to_async(message_data)(message),
                        "client_id": result.user_message.client_id,
                    }
                )

    async def _ping(self, frame: dict[str, Any]) -> None:
        await self.send_json({"type": "pong"})

    _handlers = {"message.send": _message_send, "ping": _ping}

    # --- group events: each is already the frame to send ----------------------------------
    async def forward(self, event: dict[str, Any]) -> None:
        await self.send_json(event)

    message_created = forward
    generation_started = forward
    generation_delta = forward
    generation_completed = forward
    generation_failed = forward
    generation_cancelled = forward
    safety_flagged = forward

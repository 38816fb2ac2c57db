"""The conversation websocket: authenticate, join the group, hand each frame to a service.

Delivery of deltas is exact per connection: the consumer remembers the last `seq` it sent for
each generation, drops repeats, fills a gap from the token log, and forwards live deltas only
for generations it follows. It follows a generation that starts while it is connected, or one
the client asks for with `stream.resume`; so a client that reconnects mid-stream gets the
missing deltas first and then the live ones: no gap, no duplicate, no reordering.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from uuid import UUID

import orjson
from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings

from messages_app import events, moderation, selectors, services
from messages_app.accounts.revocation import account_group
from messages_app.broadcast import conversation_group
from messages_app.errors import InvalidInput, NotFound, RateLimited, ServiceError
from messages_app.models import Conversation, Message
from messages_app.safety.client import SafetyUnavailable
from messages_app.safety_flow import input_settle
from messages_app.streams import log_last_seq, log_read_after
from messageservice import logs, metrics

logger = logging.getLogger(__name__)

# Application close codes: 4000 + the HTTP status the REST API would give.
CLOSE_UNAUTHORIZED = 4401
CLOSE_BANNED = 4403
CLOSE_NOT_FOUND = 4404


def _positive_int(frame: dict[str, Any], key: str, *, default: int | None = None) -> int:
    value = frame.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"`{key}` must be a non-negative integer.", code="bad_frame")
    return value


class ConversationConsumer(AsyncJsonWebsocketConsumer):
    conversation: Conversation
    group: str = ""
    user_group: str = ""
    counted: bool = False  # in websocket_connections

    @classmethod
    async def encode_json(cls, content: Any) -> str:
        return orjson.dumps(content).decode()

    async def connect(self) -> None:
        self.sent: dict[int, int] = {}  # generation id -> last seq this client was sent
        self.ended: set[int] = set()  # generations whose terminal event this client got
        # Of those, the ones it got as `blocked`: a reply blocked after its end (the message
        # processor's output review) sends a second end, once, which replaces the first.
        self.withheld: set[int] = set()
        self.stream_keys: dict[int, UUID] = {}  # generation id -> its reply's token log
        user = self.scope.get("user")
        await self.accept()
        self.counted = True
        metrics.websocket_opened()
        if user is None or not user.is_authenticated:
            await self._error("not_authenticated", "Log in or use a websocket ticket.")
            await self.close(code=CLOSE_UNAUTHORIZED)
            return
        # Deactivating or deleting the user closes this socket (account_revoked).
        self.user_group = account_group(user.pk)
        await self.channel_layer.group_add(self.user_group, self.channel_name)
        # Read after joining, as below: a ban committed after the join reaches account_banned.
        ban = await database_sync_to_async(moderation.active_ban)(user.pk)
        if ban is not None:
            await self._banned(ban.as_details())
            return
        try:
            conversation_id = int(self.scope["url_route"]["kwargs"]["conversation_id"])
            # Read after joining the user's group, so a deactivation committed before the
            # join is seen here and one committed after it reaches account_revoked.
            opened = await database_sync_to_async(selectors.conversation_for_socket)(
                user=user, conversation_id=conversation_id
            )
        except (ValueError, NotFound):
            await self._error("not_found", "No such conversation.")
            await self.close(code=CLOSE_NOT_FOUND)
            return
        if opened is None:
            await self._error("not_authenticated", "This account is no longer active.")
            await self.close(code=CLOSE_UNAUTHORIZED)
            return
        self.conversation = opened
        self.group = conversation_group(self.conversation)
        await self.channel_layer.group_add(self.group, self.channel_name)

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels hops to the database thread before every handler to close stale
        connections. Group events (every delta) touch no database here, so they skip that hop
        and never queue behind a slow save; websocket frames keep it."""
        if message["type"].startswith("websocket."):
            await super().dispatch(message)
            return
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def disconnect(self, code: int) -> None:
        if self.counted:
            self.counted = False
            metrics.websocket_closed()
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)
        if self.user_group:
            await self.channel_layer.group_discard(self.user_group, self.channel_name)

    async def account_revoked(self, event: dict[str, Any]) -> None:
        """The user was deactivated or deleted: say so, then close as unauthenticated."""
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)
            self.group = ""  # frames that still arrive are not handled
        await self._error("not_authenticated", "This account is no longer active.")
        await self.close(code=CLOSE_UNAUTHORIZED)

    async def account_banned(self, event: dict[str, Any]) -> None:
        """The user was banned: say until when, then close with 4403."""
        if self.group:
            await self.channel_layer.group_discard(self.group, self.channel_name)
            self.group = ""  # frames that still arrive are not handled
        await self._banned(event["ban"])

    async def _banned(self, details: dict[str, Any]) -> None:
        await self.send_json(events.error("banned", "This account is banned.", details))
        await self.close(code=CLOSE_BANNED)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not self.group:
            return
        # daphne already closes with 1009 on a frame over WS_MAX_MESSAGE_BYTES (its bytes);
        # this guards servers without that limit.
        limit = settings.WS_MAX_MESSAGE_BYTES
        if text_data is None or len(text_data) > limit:
            await self._error("bad_frame", f"Send JSON text frames of at most {limit} bytes.")
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
        # The frame's own request id when the client named it (sanely), else a new one: on
        # every log line of the frame's handling, and carried with a reply it queues.
        request_id = logs.sane_request_id(frame.get("request_id")) or logs.new_request_id()
        with logs.bind(request_id=request_id):
            try:
                await handler(self, frame)
            except ServiceError as exc:
                body = exc.as_dict()["error"]
                await self.send_json(events.error(exc.code, exc.message, body.get("details")))
            except Exception:
                logger.exception("websocket frame %s failed", frame["type"])
                await self._error("internal_error", "The frame could not be handled.")

    async def _error(self, code: str, message: str) -> None:
        await self.send_json(events.error(code, message))

    # --- client frames --------------------------------------------------------------------
    async def _message_send(self, frame: dict[str, Any]) -> None:
        try:
            result = await database_sync_to_async(services.message_send)(
                conversation=self.conversation,
                author=self.scope["user"],
                content=frame.get("content"),
                client_id=frame.get("client_id") or "",
            )
        except RateLimited as exc:
            # The contract's own frame, not an `error`; the connection stays open.
            await self.send_json(events.rate_limited(retry_after=exc.retry_after, limit=exc.limit))
            return
        with logs.bind(generation_id=result.generation_id):
            await self._message_sent(result)

    async def _message_sent(self, result: services.SendResult) -> None:
        if result.check is not None:
            # The check runs while the reply's generation starts (it releases no delta before
            # the verdict); this connection waits for it without holding the database thread.
            verdict, error = None, None
            try:
                verdict = await result.check.aresult()
            except SafetyUnavailable as exc:
                error = exc
            if verdict is None or verdict.flagged:
                await database_sync_to_async(input_settle)(
                    user_message=result.user_message,
                    reply=result.assistant_message,
                    verdict=verdict,
                    error=error,
                )
        if not result.created:
            # A repeat: the first send was already announced; tell this client again only.
            for message in (result.user_message, result.assistant_message):
                event = await database_sync_to_async(events.message_created)(
                    message, siblings=None, client_id=result.user_message.client_id
                )
                await self.send_json(event)

    async def _generation_cancel(self, frame: dict[str, Any]) -> None:
        generation_id = _positive_int(frame, "generation_id")
        with logs.bind(generation_id=generation_id):
            reply = await database_sync_to_async(selectors.reply_get)(
                user=self.scope["user"], generation_id=generation_id
            )
            await database_sync_to_async(services.reply_cancel)(reply=reply)

    async def _stream_resume(self, frame: dict[str, Any]) -> None:
        """Replay the deltas after `after_seq`, then follow the generation live."""
        generation_id = _positive_int(frame, "generation_id")
        after_seq = _positive_int(frame, "after_seq", default=0)
        with logs.bind(generation_id=generation_id):
            await self._resume(generation_id, after_seq)

    async def _resume(self, generation_id: int, after_seq: int) -> None:
        reply = await database_sync_to_async(selectors.reply_get)(
            user=self.scope["user"], generation_id=generation_id
        )
        if reply.conversation_id != self.conversation.pk:
            raise NotFound("No such generation in this conversation.")
        self.stream_keys[generation_id] = reply.stream_key
        last = await log_last_seq(reply.stream_key)
        # Beyond the end: nothing to replay, and the live deltas that follow still arrive.
        self.sent[generation_id] = min(after_seq, last if last is not None else after_seq)
        self.ended.discard(generation_id)
        await self._fill(generation_id, upto=None)
        message = await database_sync_to_async(selectors.message_fresh)(reply.pk)
        if message.is_terminal:
            await self._fill(generation_id, upto=message.stream_seq)
            await self._send_end(generation_id, message)

    async def _ping(self, frame: dict[str, Any]) -> None:
        await self.send_json(events.pong())

    _handlers = {
        "message.send": _message_send,
        "generation.cancel": _generation_cancel,
        "stream.resume": _stream_resume,
        "ping": _ping,
    }

    async def _fill(self, generation_id: int, upto: int | None) -> None:
        """Send the logged deltas after what this client has, up to `upto` (None: all)."""
        sent = self.sent.get(generation_id, 0)
        if upto is not None and upto <= sent:
            return
        stream_key = self.stream_keys.get(generation_id)
        if stream_key is None:
            stream_key = await database_sync_to_async(selectors.reply_stream_key)(
                conversation_id=self.conversation.pk, generation_id=generation_id
            )
            if stream_key is None:
                return
            self.stream_keys[generation_id] = stream_key
        entries = await log_read_after(stream_key, sent, upto)
        for seq, text in entries or []:
            await self.send_json(
                events.generation_delta(generation_id=generation_id, seq=seq, text=text)
            )
            self.sent[generation_id] = seq

    async def _send_end(self, generation_id: int, message: Message) -> None:
        if generation_id in self.ended:
            return
        self.ended.add(generation_id)
        if message.status == Message.Status.BLOCKED:
            self.withheld.add(generation_id)
        await self.send_json(await database_sync_to_async(events.generation_ended)(message))

    # --- group events ---------------------------------------------------------------------
    async def forward(self, event: dict[str, Any]) -> None:
        await self.send_json(event)

    async def message_created(self, event: dict[str, Any]) -> None:
        generation_id = event["message"].get("generation_id")
        if generation_id is not None:
            self.sent.setdefault(generation_id, 0)
        await self.send_json(event)

    async def generation_started(self, event: dict[str, Any]) -> None:
        # A new attempt starts from seq 1 again.
        self.sent[event["generation_id"]] = 0
        self.ended.discard(event["generation_id"])
        await self.send_json(event)

    async def generation_delta(self, event: dict[str, Any]) -> None:
        generation_id, seq = event["generation_id"], event["seq"]
        sent = self.sent.get(generation_id)
        if sent is None or seq <= sent:
            return  # not followed (the client resumes it), or already sent
        if seq > sent + 1:
            await self._fill(generation_id, upto=seq - 1)
        # The hottest send of the service: straight to the server, encoded with orjson.
        await self.base_send({"type": "websocket.send", "text": orjson.dumps(event).decode()})
        self.sent[generation_id] = seq

    async def _generation_end(self, event: dict[str, Any]) -> None:
        generation_id = event["generation_id"]
        blocked = (event.get("message") or {}).get("status") == Message.Status.BLOCKED
        if blocked and generation_id in self.ended:
            if generation_id not in self.withheld:
                # Blocked after it ended: the client drops the text it showed.
                self.withheld.add(generation_id)
                await self.send_json(event)
            return
        if generation_id in self.ended or generation_id not in self.sent:
            # Not followed: a client that wants it resumes it, and gets the end from there,
            # after the deltas it misses, never before them.
            return
        with logs.bind(generation_id=generation_id):
            final_seq = (event.get("message") or {}).get("seq")
            if generation_id in self.sent and final_seq:
                await self._fill(generation_id, upto=final_seq)
            self.ended.add(generation_id)
            if blocked:
                self.withheld.add(generation_id)
            await self.send_json(event)
            logger.debug("sent %s to a client", event["type"])

    generation_completed = _generation_end
    generation_failed = _generation_end
    generation_cancelled = _generation_end
    generation_heartbeat = forward
    generation_retrying = forward
    safety_flagged = forward
    rate_limited = forward
    conversation_updated = forward

    async def layer_reconnected(self, event: dict[str, Any]) -> None:
        """This process's channel layer lost Redis for a while, and the events published
        meanwhile are gone: catch up on every followed reply from its log and the database."""
        if not self.group:
            return  # not (or no longer) serving a conversation
        for generation_id in [g for g in self.sent if g not in self.ended]:
            reply = await database_sync_to_async(selectors.reply_in_conversation)(
                conversation_id=self.conversation.pk, generation_id=generation_id
            )
            if reply is None:
                continue
            self.stream_keys[generation_id] = reply.stream_key
            if reply.is_terminal:
                await self._fill(generation_id, upto=reply.stream_seq)
                await self._send_end(generation_id, reply)
            else:
                await self._fill(generation_id, upto=None)

    async def conversation_deleted(self, event: dict[str, Any]) -> None:
        await self.send_json(event)
        await self.close(code=CLOSE_NOT_FOUND)

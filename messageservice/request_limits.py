"""Size limits enforced inside daphne, before anything is buffered or parsed.

Daphne has neither limit (django/daphne#226). Twisted spools a request body of any size to
a temporary file, then daphne copies all of it, in 8 KiB chunks, into the application's queue
at once, before Django reads a byte; autobahn's websocket message limits default to none.

`install()` (called by messageservice.asgi) replaces daphne's two protocol factories with the
subclasses below; daphne's Server.run() looks them up in `daphne.server` when it starts, after
it has imported the ASGI application. Nothing else of daphne changes.

- HTTP: a body whose Content-Length is over MAX_REQUEST_BODY_BYTES (for the avatar and card
  uploads: their file limit plus the multipart envelope, if that is more) is answered 413 in the
  API's error shape as soon as the headers arrive (and no `100 Continue` is sent); a chunked
  body is answered when it passes the limit. The rest of the body is read and dropped for up
  to LINGER_SECONDS, so that a client that sends it all before reading sees the 413 rather
  than a connection reset, then the connection closes.
- Websocket: a frame, or a fragmented message, over WS_MAX_MESSAGE_BYTES closes the
  connection with 1009 (message too big) when its frame header arrives; its payload is read
  and dropped, never kept. Only incoming messages are limited.

tests/test_request_limits.py runs a real daphne, so a daphne upgrade that moves these names
fails there.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from typing import Any

import daphne.server
from daphne.http_protocol import HTTPFactory, WebRequest
from daphne.ws_protocol import WebSocketFactory, WebSocketProtocol
from django.conf import settings

from messages_app.errors import error_body

logger = logging.getLogger(__name__)

LINGER_SECONDS = 10.0
CLOSE_MESSAGE_TOO_BIG = 1009


# Uploads whose files have limits of their own (AVATAR_MAX_BYTES, CARD_MAX_BYTES): their
# bodies may be as large as the file plus the multipart envelope.
UPLOAD_PATHS = re.compile(rb"^/api/v1/characters/(?:import|[0-9]+/avatar)/?(?:\?|$)")
MULTIPART_MARGIN = 64 * 1024


def body_limit(path: bytes) -> int:
    """The largest request body accepted for `path` (the request target, query included)."""
    limit = settings.MAX_REQUEST_BODY_BYTES
    if UPLOAD_PATHS.match(path):
        files = max(settings.AVATAR_MAX_BYTES, settings.CARD_MAX_BYTES) + MULTIPART_MARGIN
        return max(limit, files)
    return limit


def too_large_response(limit: int) -> bytes:
    """The raw HTTP/1.1 413 answer, with the API's error body, that closes the connection."""
    body = json.dumps(
        error_body(
            "too_large",
            f"The request body is larger than {limit} bytes.",
            {"max_bytes": limit},
        )
    ).encode()
    head = (
        "HTTP/1.1 413 Content Too Large\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return head + body


class LimitedWebRequest(WebRequest):
    """daphne's request, refusing a body over MAX_REQUEST_BODY_BYTES as it arrives."""

    _refused = False
    _received = 0
    _limit = 0
    _linger: asyncio.TimerHandle | None = None

    def gotLength(self, length: int | None) -> None:
        # Twisted's channel has read the request line (its target) before the headers end.
        self._limit = body_limit(getattr(self.channel, "_path", b"") or b"")
        if length is not None and length > self._limit:
            self.content = io.BytesIO()  # Twisted expects a file; nothing is written to it
            self._refuse(length)
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > (self._limit or settings.MAX_REQUEST_BODY_BYTES):
            self.content.close()
            self.content = io.BytesIO()
            self._refuse(None)
            return
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if self._refused:
            # The client has sent the whole body after all, and the answer is out: close.
            self._close()
            return
        super().requestReceived(command, path, version)

    def connectionLost(self, reason: Any) -> None:
        if self._linger is not None:
            self._linger.cancel()
        super().connectionLost(reason)

    def _refuse(self, length: int | None) -> None:
        self._refused = True
        limit = self._limit or settings.MAX_REQUEST_BODY_BYTES
        logger.warning(
            "413: refused a request body of %s bytes (limit %s) from %s",
            length if length is not None else f"over {limit}",
            limit,
            self.getClientAddress(),
        )
        # Twisted answers `Expect: 100-continue` right after gotLength(); the client must
        # not be invited to send a body that is refused.
        self.requestHeaders.removeHeader(b"expect")
        self.channel.transport.write(too_large_response(limit))
        # Twisted runs on daphne's asyncio loop.
        self._linger = asyncio.get_running_loop().call_later(LINGER_SECONDS, self._close)

    def _close(self) -> None:
        if self._linger is not None:
            self._linger.cancel()
        if self.channel is not None and self.channel.transport is not None:
            self.channel.transport.loseConnection()


class LimitedHTTPFactory(HTTPFactory):
    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        protocol.requestFactory = LimitedWebRequest
        return protocol


class LimitedWebSocketProtocol(WebSocketProtocol):
    """daphne's websocket protocol, also limiting a message sent in many frames.

    autobahn's own maxMessagePayloadSize would limit what the server sends as well, so the
    message total is checked here, through the same hook autobahn uses for its limits."""

    def onMessageFrameBegin(self, length: int) -> None:
        super().onMessageFrameBegin(length)
        limit = settings.WS_MAX_MESSAGE_BYTES
        total = self.message_data_total_length
        if not self.failedByMe and 0 < limit < total:
            self.wasMaxMessagePayloadSizeExceeded = True
            self._max_message_size_exceeded(
                total, limit, f"message of {total} bytes exceeds the limit of {limit} bytes"
            )


class LimitedWebSocketFactory(WebSocketFactory):
    protocol = LimitedWebSocketProtocol

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # maxFramePayloadSize limits incoming frames only. failByDrop=False: a refused frame
        # gets a 1009 close frame the client can read, not a bare TCP reset.
        self.setProtocolOptions(maxFramePayloadSize=settings.WS_MAX_MESSAGE_BYTES, failByDrop=False)


def install() -> None:
    """Make daphne's Server build the limited factories (idempotent)."""
    daphne.server.HTTPFactory = LimitedHTTPFactory
    daphne.server.WebSocketFactory = LimitedWebSocketFactory

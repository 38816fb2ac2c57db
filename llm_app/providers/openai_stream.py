"""The body of a streamed OpenAI chat completion, parsed from bytes into StreamChunks.

The wire format is server-sent events (https://html.spec.whatwg.org/#event-stream-interpretation):
lines ended by LF, CRLF or CR; `data:` lines (one optional space after the colon) whose values
make up an event, joined by LF when there are several; a blank line ending the event; `:`
comment lines, `event:` names, and `id:`/`retry:` fields, which are ignored. Each event's data
is one `chat.completion.chunk` JSON object, and `data: [DONE]` ends the stream.

It reads what the openai SDK reads, without its pydantic models: the usage chunk (sent last
when the request asks for `stream_options.include_usage`) and, per choice, the delta's content
and the finish_reason. A data object with a truthy `error` (some servers report a failure
mid-stream that way) or an event named `error` is a failure, as is data that is not a JSON
object or a chunk of the wrong shape. Every failure is raised as a ValueError.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

from llm_app.providers.base import StreamChunk

__all__ = ["ChatStreamParser", "MalformedStream", "StreamErrorEvent"]

# An unfinished line longer than this is not an SSE stream worth buffering.
MAX_LINE_BYTES = 16 * 1024 * 1024

_CR = b"\r"


class MalformedStream(ValueError):
    """The body is not a chat completion stream."""


class StreamErrorEvent(ValueError):
    """The server reported an error inside the stream. `error` is what it sent."""

    def __init__(self, error: Any) -> None:
        message = error.get("message") if isinstance(error, dict) else None
        super().__init__(message if isinstance(message, str) and message else repr(error))
        self.error = error


def _token_count(value: Any) -> int | None:
    return value if type(value) is int else None


class ChatStreamParser:
    """Feed it the body's bytes as they arrive (split anywhere, even inside a UTF-8 character);
    each feed returns the chunks of the events it completed.

    `done` turns true at `data: [DONE]`; what follows is ignored. Call `finish()` at the end of
    the body: an event that no blank line ended is dropped, as the SSE rules (and the SDK) say.
    """

    __slots__ = ("_data", "_event", "_pending", "done")

    def __init__(self) -> None:
        # The unfinished last line, in pieces; a final b"\r" may be the first half of a CRLF.
        self._pending: list[bytes] = []
        # The data lines and the name of the event being read.
        self._data: list[bytes] = []
        self._event = b""
        self.done = False

    def feed(self, chunk: bytes) -> list[StreamChunk]:
        """The chunks of the events that `chunk` completes. Raises ValueError on a failure."""
        if self.done:
            return []
        pending = self._pending
        if pending:
            if b"\n" not in chunk and _CR not in chunk and pending[-1] != _CR:
                # Still inside one long line: keep the pieces, join them once.
                pending.append(chunk)
                if sum(map(len, pending)) > MAX_LINE_BYTES:
                    raise MalformedStream("an SSE line is longer than MAX_LINE_BYTES")
                return []
            pending.append(chunk)
            chunk = b"".join(pending)
            pending.clear()
        held_cr = False
        if _CR in chunk:
            if chunk.endswith(_CR):
                # Decided by the next read: CRLF split in two, or a line ended by CR alone.
                chunk, held_cr = chunk[:-1], True
            chunk = chunk.replace(b"\r\n", b"\n").replace(_CR, b"\n")
        end = chunk.rfind(b"\n")
        rest = chunk[end + 1 :] if end + 1 < len(chunk) else b""
        if rest:
            if len(rest) > MAX_LINE_BYTES:
                raise MalformedStream("an SSE line is longer than MAX_LINE_BYTES")
            pending.append(rest)
        if held_cr:
            pending.append(_CR)
        return self._lines(chunk[:end].split(b"\n")) if end >= 0 else []

    def finish(self) -> list[StreamChunk]:
        """The end of the body: a CR held back ends its line; an unfinished event is dropped."""
        chunks = self.feed(b"\n") if self._pending and self._pending[-1] == _CR else []
        self._pending.clear()
        self._data.clear()
        return chunks

    def _lines(self, lines: list[bytes]) -> list[StreamChunk]:
        out: list[StreamChunk] = []
        data = self._data
        for line in lines:
            if not line:
                if data:
                    payload = data[0] if len(data) == 1 else b"\n".join(data)
                    data.clear()
                    event, self._event = self._event, b""
                    try:
                        self._dispatch(payload, event, out)
                    except ValueError as exc:
                        # The events before it in this read stand: the caller yields them.
                        exc.parsed = out  # type: ignore[attr-defined]
                        raise
                    if self.done:
                        break
                else:
                    self._event = b""
            elif line.startswith(b"data:"):
                data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif line[0] != 58:  # not a ":" comment
                name, _, value = line.partition(b":")
                if value[:1] == b" ":
                    value = value[1:]
                if name == b"data":  # "data" without a colon: an empty data line
                    data.append(value)
                elif name == b"event":
                    self._event = value
                # id, retry and unknown fields mean nothing to a chat completion.
        return out

    def _dispatch(self, payload: bytes, event: bytes, out: list[StreamChunk]) -> None:
        if payload.startswith(b"[DONE]"):
            self.done = True
            return
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            # orjson refuses some JSON that Python's json (the SDK's parser) reads: a lone
            # surrogate escaped in a string ("\\ud800", a character split between tokens), NaN.
            # Invalid UTF-8 and invalid JSON fail here too, with a ValueError.
            obj = json.loads(payload)
        if type(obj) is not dict:
            raise MalformedStream(f"an event's data is not a JSON object: {payload[:200]!r}")
        error = obj.get("error")
        if error or event == b"error":
            raise StreamErrorEvent(error or obj)
        try:
            usage = obj.get("usage")
            if usage is not None:
                out.append(
                    StreamChunk(
                        prompt_tokens=_token_count(usage.get("prompt_tokens")),
                        completion_tokens=_token_count(usage.get("completion_tokens")),
                    )
                )
            choices = obj.get("choices")
            if choices:
                for choice in choices:
                    delta = choice.get("delta")
                    text = delta.get("content") if delta else None
                    finish_reason = choice.get("finish_reason")
                    if text or finish_reason:
                        if (text and type(text) is not str) or (
                            finish_reason and type(finish_reason) is not str
                        ):
                            raise MalformedStream(f"a choice of the wrong shape: {choice!r:.200}")
                        out.append(StreamChunk(text or "", finish_reason or None))
        except (AttributeError, TypeError) as exc:
            raise MalformedStream(f"a chunk of the wrong shape: {payload[:200]!r}") from exc

"""Benchmark clients: the service over REST + websocket, and the fake LLM over raw HTTP.

Every arrival is stamped with time.perf_counter() right after the bytes are read and before any
JSON parsing, the same way for both paths, so their difference is what the service adds.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp

TERMINAL = ("generation.completed", "generation.failed", "generation.cancelled")
# What the guards answer, by websocket code, with their REST status (issue 9). The bench sets
# limits no send can reach and sends harmless text: any of these is a bench failure.
GUARD_STATUS = {
    "rate_limited": 429,
    "content_blocked": 422,
    "safety_unavailable": 503,
    "banned": 403,
    "safety.flagged": None,  # a reply stopped by the live output check
}
REJECTED_HTTP = (403, 422, 429, 503)


def guard_answer(frame: dict[str, Any]) -> str | None:
    """The code of a frame that refuses or stops a send (a `rate_limited` frame, an `error`
    frame's code, `safety.flagged`); None for any other frame."""
    kind = frame.get("type")
    if kind in ("rate_limited", "safety.flagged"):
        return str(kind)
    if kind == "error":
        return str((frame.get("error") or {}).get("code") or "error")
    return None


class BenchError(Exception):
    pass


@dataclass
class StreamRecord:
    """One streamed reply as a client saw it. Times are perf_counter() seconds."""

    kind: str  # "service" or "direct"
    t_send: float = 0.0
    t_created: float | None = None  # the assistant's message.created frame
    t_started: float | None = None  # generation.started
    t_first: float | None = None  # first delta / first content chunk
    t_end: float | None = None
    times: list[float] = field(default_factory=list)
    seqs: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    generation_id: int | None = None
    end_type: str | None = None
    final: dict[str, Any] | None = None  # the terminal frame's message
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    guard: str | None = None  # guard_answer() of a frame that refused or stopped this send

    @property
    def ttft_ms(self) -> float | None:
        return None if self.t_first is None else (self.t_first - self.t_send) * 1000

    def gaps_ms(self) -> list[float]:
        return [(b - a) * 1000 for a, b in zip(self.times, self.times[1:], strict=False)]

    @property
    def text(self) -> str:
        return "".join(self.texts)

    def check(self, expected_tokens: int, expected_text: str) -> list[str]:
        """What is wrong with this stream (empty: every delta arrived, once, in order, and the
        joined text is the script's)."""
        problems = []
        if self.error:
            problems.append(f"error: {self.error}")
        if self.kind == "service":
            if self.end_type != "generation.completed":
                problems.append(f"ended with {self.end_type}")
            if self.seqs != list(range(1, len(self.seqs) + 1)):
                problems.append("seqs not contiguous from 1")
            final = self.final or {}
            if final.get("seq") != len(self.seqs):
                problems.append(f"final seq {final.get('seq')} != {len(self.seqs)} deltas")
            if final.get("content") != self.text:
                problems.append("joined deltas != saved content")
        # The service may join tokens that arrived together into one delta (docs/api.md): only
        # the direct client, one SSE chunk per token, must see every token on its own.
        if self.kind == "direct" and len(self.texts) != expected_tokens:
            problems.append(f"{len(self.texts)} chunks, expected {expected_tokens}")
        if self.kind == "service" and not 0 < len(self.texts) <= expected_tokens:
            problems.append(f"{len(self.texts)} deltas for {expected_tokens} tokens")
        if self.text != expected_text:
            problems.append("text differs from the scripted text")
        return problems

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "ttft_ms": self.ttft_ms,
            "created_ms": _ms(self.t_send, self.t_created),
            "started_ms": _ms(self.t_send, self.t_started),
            "total_ms": _ms(self.t_send, self.t_end),
            "gaps_ms": [round(g, 3) for g in self.gaps_ms()],
            "deltas": len(self.texts),
            "generation_id": self.generation_id,
            "end_type": self.end_type,
            "server_timings": (self.final or {}).get("timings"),
            "error": self.error,
            "notes": self.notes,
            "guard": self.guard,
        }


def _ms(start: float, end: float | None) -> float | None:
    return None if end is None else round((end - start) * 1000, 3)


class ServiceClient:
    """REST (login, tickets) and websocket connections to one daphne."""

    def __init__(self, session: aiohttp.ClientSession, web_url: str, ws_url: str) -> None:
        self.session = session
        self.web_url = web_url
        self.ws_url = ws_url
        self.origin = web_url
        # Refusals met, as "ws <code>" or "HTTP <status> <code>": see count_guard().
        self.rejections: Counter[str] = Counter()

    def count_guard(self, code: str) -> None:
        """Count a websocket answer of a guard (a code of GUARD_STATUS, or any error code)."""
        status = GUARD_STATUS.get(code)
        self.rejections[f"ws {code}" + (f" ({status})" if status else "")] += 1

    def _count_http(self, status: int, body: Any) -> None:
        if status in REJECTED_HTTP:
            code = (body.get("error") or {}).get("code") if isinstance(body, dict) else None
            self.rejections[f"HTTP {status} {code or '?'}"] += 1

    async def login(self, username: str, password: str) -> str:
        async with self.session.post(
            f"{self.web_url}/api/v1/auth/token/",
            json={"username": username, "password": password},
        ) as resp:
            body = await resp.json()
            if resp.status != 200:
                self._count_http(resp.status, body)
                raise BenchError(f"login {username}: HTTP {resp.status} {body}")
            return str(body["access"])

    async def ticket(self, access: str) -> str:
        async with self.session.post(
            f"{self.web_url}/api/v1/ws-tickets/", headers={"Authorization": f"Bearer {access}"}
        ) as resp:
            body = await resp.json()
            if resp.status not in (200, 201):
                self._count_http(resp.status, body)
                raise BenchError(f"ws ticket: HTTP {resp.status} {body}")
            return str(body["ticket"])

    async def connect(
        self, conversation_id: int, access: str, *, ready: bool = True
    ) -> aiohttp.ClientWebSocketResponse:
        """A websocket on the conversation (a new ticket each time). With `ready`, a ping/pong
        round trip first, so the consumer has joined its group before anything is timed."""
        ticket = await self.ticket(access)
        ws = await self.session.ws_connect(
            f"{self.ws_url}/ws/conversations/{conversation_id}/?ticket={ticket}",
            headers={"Origin": self.origin},
            max_msg_size=0,
        )
        if ready:
            await ws.send_str('{"type":"ping"}')
            msg = await ws.receive(timeout=30)
            frame = json.loads(msg.data) if msg.type == aiohttp.WSMsgType.TEXT else None
            if not frame or frame.get("type") != "pong":
                await ws.close()
                raise BenchError(f"websocket not ready: {msg.type} {msg.data!r}")
        return ws


def drop(ws: aiohttp.ClientWebSocketResponse) -> None:
    """Cut the websocket's TCP connection without a close frame (a network drop)."""
    # aiohttp has no public abort for a client websocket.
    connection = ws._response.connection
    if connection is not None and connection.transport is not None:
        connection.transport.abort()
    ws._response.close()


async def service_stream(
    ws: aiohttp.ClientWebSocketResponse,
    content: str,
    client_id: str,
    *,
    go: asyncio.Event | None = None,
    timeout: float = 60.0,
) -> StreamRecord:
    """Send one message.send on `ws` and read until its generation's terminal event."""
    record = StreamRecord(kind="service")
    frame_out = json.dumps({"type": "message.send", "content": content, "client_id": client_id})
    if go is not None:
        await go.wait()
    record.t_send = time.perf_counter()
    try:
        await ws.send_str(frame_out)
        async with asyncio.timeout(timeout):
            while True:
                msg = await ws.receive()
                now = time.perf_counter()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise BenchError(f"websocket {msg.type.name} before the reply ended")
                frame = json.loads(msg.data)
                kind = frame.get("type")
                if kind in ("generation.delta", "generation.started") and (
                    record.generation_id is None
                ):
                    # One conversation per stream: a generation event before our
                    # message.created can only be ours (noted: the frames came out of order).
                    record.generation_id = frame["generation_id"]
                    record.notes.append(f"{kind} before message.created")
                if kind == "generation.delta":
                    if frame["generation_id"] != record.generation_id:
                        continue
                    if record.t_first is None:
                        record.t_first = now
                    record.times.append(now)
                    record.seqs.append(frame["seq"])
                    record.texts.append(frame["text"])
                elif kind == "message.created":
                    message = frame["message"]
                    if message.get("role") == "assistant" and frame.get("client_id") == client_id:
                        record.generation_id = record.generation_id or message.get("generation_id")
                        record.t_created = now
                elif kind == "generation.started":
                    if frame["generation_id"] == record.generation_id:
                        record.t_started = now
                elif kind in TERMINAL:
                    if frame["generation_id"] == record.generation_id:
                        record.t_end = now
                        record.end_type = kind
                        record.final = frame.get("message")
                        return record
                elif kind == "safety.flagged":
                    # The reply was stopped; its end event follows.
                    record.guard = "safety.flagged"
                    record.notes.append("safety.flagged")
                elif kind in ("error", "rate_limited"):
                    record.guard = guard_answer(frame)
                    raise BenchError(f"server sent {frame}")
    except (BenchError, TimeoutError, aiohttp.ClientError, ValueError) as exc:
        record.error = f"{type(exc).__name__}: {exc}"
    return record


async def direct_stream(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    *,
    go: asyncio.Event | None = None,
    timeout: float = 60.0,
) -> StreamRecord:
    """POST a streaming chat completion straight to the LLM and read its SSE chunks."""
    record = StreamRecord(kind="direct")
    if go is not None:
        await go.wait()
    record.t_send = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            async with session.post(
                url, data=body, headers={"Content-Type": "application/json"}
            ) as resp:
                if resp.status != 200:
                    raise BenchError(f"LLM answered HTTP {resp.status}")
                async for line in resp.content:
                    now = time.perf_counter()
                    if not line.startswith(b"data: "):
                        continue
                    payload = line[6:].strip()
                    if payload == b"[DONE]":
                        break
                    chunk = json.loads(payload)
                    for choice in chunk.get("choices") or ():
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            if record.t_first is None:
                                record.t_first = now
                            record.times.append(now)
                            record.texts.append(text)
                record.t_end = time.perf_counter()
                record.end_type = "done"
    except (BenchError, TimeoutError, aiohttp.ClientError, ValueError) as exc:
        record.error = f"{type(exc).__name__}: {exc}"
    return record

"""The OpenAI-compatible provider's own streaming: the SSE parser, the request it sends, its
errors and the closing of its responses.

The parser is checked on its own at every split point of a recorded stream, and the provider
over real HTTP: the fake LLM (compared with the openai SDK path it replaced), and a bare HTTP
server in the test's loop for the byte-level cases the fake does not produce.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import re
import socket
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import aiohttp
import httpx
import openai
import pytest

from fake_llm import FakeLLMServer, Script
from llm_app.providers import openai_compatible
from llm_app.providers.base import ChatRequest, ProviderError, StreamChunk
from llm_app.providers.openai_compatible import (
    OpenAICompatibleProvider,
    coalesce,
    request_body,
    request_options,
)
from llm_app.providers.openai_stream import ChatStreamParser, MalformedStream, StreamErrorEvent

MESSAGES = [{"role": "system", "content": "You are Ada."}, {"role": "user", "content": "Hi ✓"}]
ROOT = Path(__file__).resolve().parent.parent
STOPS = ("\nUser:", "<|im_end|>", "<|im_start|>", "\n\n\n", "###")


Outcome = tuple[list[StreamChunk], ProviderError | None]


def chat_request(**fields: Any) -> ChatRequest:
    return ChatRequest(
        **{"model": "m", "messages": MESSAGES, "temperature": 0.5, "max_tokens": 20, **fields}
    )


# --- A recorded stream, as llama-server and OpenAI send it -------------------------------------

HEAD = '{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"m",'


def event(content: str | None = None, finish: str | None = None, role: bool = False) -> bytes:
    delta: dict[str, Any] = {"role": "assistant", "content": ""} if role else {}
    if content is not None:
        delta["content"] = content
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    body = json.dumps({"choices": [choice]}, ensure_ascii=False, separators=(",", ":"))
    return f"data: {HEAD}{body[1:]}\n\n".encode()


USAGE = (
    f'data: {HEAD}"choices":[],"usage":{{"prompt_tokens":12,"completion_tokens":6,'
    '"total_tokens":18}}\n\n'
).encode()
TOKENS = ["Hé", "llo", " wörld", " 🙂", "!", " ✓"]
STREAM = b"".join(
    [
        event(role=True),
        *(event(token) for token in TOKENS),
        event(finish="stop"),
        USAGE,
        b"data: [DONE]\n\n",
    ]
)
EXPECTED = [
    *(StreamChunk(text=token) for token in TOKENS),
    StreamChunk(finish_reason="stop"),
    StreamChunk(prompt_tokens=12, completion_tokens=6),
]


def parse(*pieces: bytes) -> list[StreamChunk]:
    parser = ChatStreamParser()
    chunks: list[StreamChunk] = []
    for piece in pieces:
        chunks += parser.feed(piece)
    return chunks + parser.finish()


def inside_a_character(data: bytes, offset: int) -> bool:
    """Whether `offset` splits a UTF-8 multibyte character of `data`."""
    return 0 < offset < len(data) and data[offset] & 0xC0 == 0x80


# --- The parser alone ---------------------------------------------------------------------------


def test_the_recorded_stream_parses_into_the_chunks() -> None:
    assert parse(STREAM) == EXPECTED


@pytest.mark.parametrize(
    "stream",
    [STREAM, STREAM.replace(b"\n", b"\r\n"), STREAM.replace(b"\n", b"\r")],
    ids=["lf", "crlf", "cr"],
)
def test_every_split_point_gives_the_same_chunks(stream: bytes) -> None:
    splits_in_characters = 0
    for offset in range(len(stream) + 1):
        assert parse(stream[:offset], stream[offset:]) == EXPECTED, offset
        splits_in_characters += inside_a_character(stream, offset)
    assert splits_in_characters >= 6
    # One byte at a time, and random three-way splits.
    assert parse(*(stream[i : i + 1] for i in range(len(stream)))) == EXPECTED
    rng = random.Random(8)
    for _ in range(300):
        a, b = sorted(rng.sample(range(len(stream) + 1), 2))
        assert parse(stream[:a], stream[a:b], stream[b:]) == EXPECTED, (a, b)


def test_crlf_split_between_reads_is_one_line_end() -> None:
    # data: a + CR | LF + data: b: two data lines of one event, not two events.
    one_event = b'data: {"choices":[{"delta":{"content":"a\\nb"},\r'
    rest = b'\ndata: "finish_reason":null}]}\r\n\r\n'
    assert parse(one_event, rest) == [StreamChunk(text="a\nb")]
    # A CR held back at the end of the body still ends its line.
    assert parse(b'data: {"choices":[{"delta":{"content":"x"}}]}\r\r') == [StreamChunk("x")]


def test_comments_event_names_ids_and_data_without_space() -> None:
    stream = (
        b": keep-alive comment\n\n"
        b":another\n"
        b"event: message\n"
        b"id: 7\n"
        b"retry: 100\n"
        b'data:{"choices":[{"delta":{"content":"no space"}}]}\n\n'
        b"unknown-field: ignored\n"
        b'data:  {"choices":[{"delta":{"content":"two spaces"}}]}\n\n'
        b"data: [DONE]\n\n"
    )
    assert parse(stream) == [StreamChunk("no space"), StreamChunk("two spaces")]


def test_multi_line_data_is_joined_with_newlines() -> None:
    stream = (
        b'data: {"choices":[{"delta":\n'
        b'data: {"content":"multi"},\n'
        b"data\n"  # a data field without a colon: an empty line of data
        b'data: "finish_reason":"length"}]}\n\n'
    )
    assert parse(stream) == [StreamChunk("multi", "length")]


def test_done_ends_the_stream_and_what_follows_is_ignored() -> None:
    parser = ChatStreamParser()
    assert parser.feed(event("a") + b"data: [DONE]\n\n" + event("late") + b"data: {bad\n\n") == [
        StreamChunk("a")
    ]
    assert parser.done
    assert parser.feed(b"data: {more bad\n\n") == []


def test_a_stream_without_done_ends_without_finish_reason() -> None:
    # The caller (llm_app.generation) reports a reply without finish_reason as a broken stream.
    assert parse(event("Half") + event(" way")) == [StreamChunk("Half"), StreamChunk(" way")]
    # An event that no blank line ended is dropped, as the SSE rules and the SDK say.
    assert parse(event("kept") + event(finish="stop")[:-1]) == [StreamChunk("kept")]


def test_a_lone_surrogate_escape_is_read_as_pythons_json_reads_it() -> None:
    # orjson refuses it; the SDK's json did not, and llm_app.attempts replaces it later.
    assert parse(b'data: {"choices":[{"delta":{"content":"a\\ud800b"}}]}\n\n') == [
        StreamChunk("a\ud800b")
    ]


@pytest.mark.parametrize(
    ("data", "failure"),
    [
        (b'data: {"error":{"message":"overloaded","type":"server_error"}}\n\n', StreamErrorEvent),
        (b'event: error\ndata: {"message":"boom"}\n\n', StreamErrorEvent),
        (b"data: {not json\n\n", ValueError),
        (b'data: {"choices":[{"delta":{"content":"\xff"}}]}\n\n', ValueError),
        (b"data: [1, 2]\n\n", MalformedStream),
        (b'data: {"choices":[{"delta":{"content":5}}]}\n\n', MalformedStream),
        (b'data: {"choices":7}\n\n', MalformedStream),
        (b'data: {"choices":["x"]}\n\n', MalformedStream),
    ],
    ids=[
        "error-object",
        "error-event",
        "bad-json",
        "bad-utf8",
        "not-an-object",
        "content-number",
        "choices-number",
        "choice-string",
    ],
)
def test_failures_raise_value_errors(data: bytes, failure: type[ValueError]) -> None:
    parser = ChatStreamParser()
    assert parser.feed(event("ok")) == [StreamChunk("ok")]
    with pytest.raises(failure):
        parser.feed(data)


def test_the_error_object_message_is_kept() -> None:
    with pytest.raises(StreamErrorEvent) as info:
        parse(b'data: {"error":{"message":"model crashed","code":500}}\n\n')
    assert str(info.value) == "model crashed"
    assert info.value.error == {"message": "model crashed", "code": 500}


# --- A bare HTTP server, for byte-exact answers -------------------------------------------------


# The last piece of an answer after which the server closes the connection.
CLOSE = b""


def http_answer(*pieces: bytes, status: int = 200, end: bool = True) -> list[bytes]:
    """A chunked HTTP/1.1 answer whose body is written in `pieces`; `end=False` leaves out the
    terminating chunk and closes the connection: a body cut short."""
    head = b"HTTP/1.1 %d Status\r\nContent-Type: text/event-stream\r\n" % status
    chunks = [b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces if piece]
    return [head + b"Transfer-Encoding: chunked\r\n\r\n", *chunks, b"0\r\n\r\n" if end else CLOSE]


def json_answer(status: int, body: Any) -> list[bytes]:
    data = json.dumps(body).encode()
    head = b"HTTP/1.1 %d Status\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    return [head % (status, len(data)) + data]


class RawServer:
    """An HTTP/1.1 server on the test's own loop: records each request (head, body) and writes
    the scripted answer piece by piece, pausing between pieces so that they are read apart.

    A connection serves requests until the client closes it, unless an answer is cut short.
    """

    def __init__(self, *answers: list[bytes], pause: float = 0.0) -> None:
        self.answers = list(answers)
        self.pause = pause
        self.requests: list[tuple[bytes, bytes]] = []
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def base_url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    def body(self, index: int = -1) -> dict[str, Any]:
        return cast(dict[str, Any], json.loads(self.requests[index][1]))

    def header(self, name: str, index: int = -1) -> str | None:
        found = re.search(rb"(?im)^" + name.encode() + rb":\s*(.*?)\r$", self.requests[index][0])
        return found.group(1).decode() if found else None

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                body = await reader.readexactly(int(length.group(1)) if length else 0)
                self.requests.append((head, body))
                answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
                for piece in answer:
                    writer.write(piece)
                    await writer.drain()
                    if self.pause:
                        await asyncio.sleep(self.pause)
                if answer[-1] is CLOSE:
                    return
        finally:
            writer.close()
            self._tasks.discard(task)


@contextlib.asynccontextmanager
async def provider_for(base_url: str | None, **options: Any) -> AsyncIterator[Any]:
    provider = OpenAICompatibleProvider(
        base_url=base_url, api_key=options.pop("api_key", "k"), timeout=5, **options
    )
    try:
        yield provider
    finally:
        await provider.aclose()


async def collect(provider: Any, request: ChatRequest | None = None) -> Outcome:
    """The chunks a stream yields, and the ProviderError that ended it, if any."""
    chunks: list[StreamChunk] = []
    try:
        async for chunk in provider.stream(request or chat_request()):
            chunks.append(chunk)
    except ProviderError as exc:
        return chunks, exc
    return chunks, None


async def served(
    answer: list[bytes], *, pause: float = 0.0, streams: int = 1
) -> tuple[RawServer, list[Outcome]]:
    """`streams` streams of one provider from a RawServer giving `answer` to every request."""
    async with RawServer(answer, pause=pause) as server, provider_for(server.base_url) as provider:
        return server, [await collect(provider) for _ in range(streams)]


def split_inside_characters(data: bytes) -> list[bytes]:
    """`data` cut inside every multibyte character, inside CRLFs and inside `data:`."""
    cuts = {i for i in range(len(data)) if inside_a_character(data, i)}
    cuts |= {m.start() + 1 for m in re.finditer(rb"\r\n", data)}
    cuts |= {m.start() + 3 for m in re.finditer(rb"data:", data)}
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


async def test_pieces_split_inside_characters_and_crlf_over_http(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = (b": hello\r\n\r\n" + STREAM).replace(b"\n\n", b"\r\n\r\n")
    pieces = split_inside_characters(stream)
    fed: list[bytes] = []

    class Spy(ChatStreamParser):
        def feed(self, chunk: bytes) -> list[StreamChunk]:
            fed.append(chunk)
            return super().feed(chunk)

    monkeypatch.setattr(openai_compatible, "ChatStreamParser", Spy)
    _, [result] = await served(http_answer(*pieces), pause=0.002)
    assert result == (EXPECTED, None)
    # The reads did arrive apart, cut inside characters.
    assert b"".join(fed) == stream
    offsets = [sum(map(len, fed[:i])) for i in range(1, len(fed))]
    assert sum(inside_a_character(stream, offset) for offset in offsets) >= 3


async def test_the_request_is_the_one_the_sdk_sends() -> None:
    """Same URL, auth and body bytes as openai's chat.completions.create(stream=True, ...)."""
    cases = [
        (chat_request(stop=STOPS, repeat_penalty=1.15, frequency_penalty=0.2), False),
        (chat_request(stop=STOPS, repeat_penalty=1.15, presence_penalty=-0.25), True),
        (chat_request(), False),
    ]
    done = http_answer(b"data: [DONE]\n\n")
    async with RawServer(done) as server:
        for request, openai_api in cases:
            async with provider_for(server.base_url, openai_api=openai_api) as provider:
                assert await collect(provider, request) == ([], None)
            sdk = openai.AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0)
            async with sdk:
                stream = await sdk.chat.completions.create(
                    model=request.model,
                    messages=cast(Any, request.messages),
                    stream=True,
                    stream_options={"include_usage": True},
                    **request_options(request, openai_api=openai_api),
                )
                async for _ in stream:
                    pass
            (ours_head, ours), (sdk_head, theirs) = server.requests[-2:]
            assert ours == theirs
            assert ours_head.split(b"\r\n")[0] == sdk_head.split(b"\r\n")[0]
            assert ours_head.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
            for index in (-2, -1):
                assert server.header("authorization", index) == "Bearer k"
                assert server.header("content-type", index) == "application/json"
            assert server.header("accept", -2) == "text/event-stream"
            assert json.loads(ours) == request_body(request, openai_api=openai_api)
    plain, openai_cloud, unset = (json.loads(body) for _, body in server.requests[::2])
    # extra_body is merged into the body, never sent as a key of its own.
    assert plain["repeat_penalty"] == 1.15 and "extra_body" not in plain
    assert plain["stop"] == list(STOPS)
    assert openai_cloud["stop"] == list(STOPS[:4]) and "repeat_penalty" not in openai_cloud
    assert unset == {
        "messages": MESSAGES,
        "model": "m",
        "max_tokens": 20,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.5,
    }


async def test_no_api_key_and_the_openai_base_url_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    async with RawServer(http_answer(b"data: [DONE]\n\n")) as server:
        # No base URL: OPENAI_BASE_URL, as the SDK reads it (else OpenAI's cloud).
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url + "/")
        async with provider_for(None, api_key="") as provider:
            assert await collect(provider) == ([], None)
    assert server.header("authorization") == "Bearer not-needed"
    monkeypatch.delenv("OPENAI_BASE_URL")
    cloud = OpenAICompatibleProvider(base_url=None, api_key="k", timeout=1, openai_api=True)
    assert cloud._url == "https://api.openai.com/v1/chat/completions"
    await cloud.aclose()


def test_coalesce_joins_consecutive_text_and_keeps_the_ends() -> None:
    pieces = [
        StreamChunk(text="a"),
        StreamChunk(text="b"),
        StreamChunk(text="c", finish_reason="stop"),
        StreamChunk(prompt_tokens=3, completion_tokens=3),
    ]
    assert coalesce(pieces) == [
        StreamChunk(text="abc", finish_reason="stop"),
        StreamChunk(prompt_tokens=3, completion_tokens=3),
    ]
    # A finish without text, and text after a finish, stay apart; one chunk stays as it is.
    ended = [StreamChunk(text="a"), StreamChunk(finish_reason="stop"), StreamChunk(text="b")]
    assert coalesce(ended) == ended
    assert coalesce(pieces[:1]) == pieces[:1]


async def test_events_that_arrive_together_are_one_delta_and_apart_are_several() -> None:
    events = [event(f"t{i} ") for i in range(5)]
    together = http_answer(b"".join(events), event(finish="stop"), b"data: [DONE]\n\n")
    _, [(chunks, error)] = await served(together, pause=0.05)
    assert error is None
    assert [c.text for c in chunks if c.text] == ["t0 t1 t2 t3 t4 "]
    apart = http_answer(*events, event(finish="stop"), b"data: [DONE]\n\n")
    _, [(chunks, error)] = await served(apart, pause=0.05)
    assert error is None
    assert [c.text for c in chunks if c.text] == [f"t{i} " for i in range(5)]


async def test_the_usage_chunk_and_a_connection_kept_alive_across_streams() -> None:
    # What follows [DONE] (here a comment, then the end of the chunked body) arrives apart.
    done = STREAM.index(b"data: [DONE]")
    answer = http_answer(STREAM[:done], STREAM[done:], b": bye\n\n")
    server, [first, second] = await served(answer, pause=0.01, streams=2)
    # The events arrived in one piece: their text comes as one chunk (coalesce).
    assert first == second == (coalesce(EXPECTED), None)
    assert EXPECTED[-1] == StreamChunk(prompt_tokens=12, completion_tokens=6)
    # Read to its end after [DONE], the connection went back to the pool.
    assert (len(server.requests), server.connections) == (2, 1)


async def test_a_body_ending_without_done_ends_the_stream_quietly() -> None:
    _, [(chunks, error)] = await served(http_answer(event("Half"), event(" way")), pause=0.05)
    assert error is None
    assert chunks == [StreamChunk("Half"), StreamChunk(" way")]


@pytest.mark.parametrize(
    "failure",
    [
        b'data: {"error":{"message":"CUDA out of memory","type":"server_error"}}\n\n',
        b'event: error\ndata: {"error":{"message":"overloaded"}}\n\n',
        b"data: {not json\n\n",
    ],
    ids=["error-object", "error-event", "bad-json"],
)
async def test_mid_stream_failures_are_bad_streams(failure: bytes) -> None:
    # Read apart or together, the good event before the bad one is yielded.
    answer = http_answer(event("Hel"), failure, event("lo"))
    for pause in (0.05, 0.0):
        _, [(chunks, error)] = await served(answer, pause=pause)
        assert chunks == [StreamChunk("Hel")]
        assert error is not None
        assert (error.code, error.retryable) == ("llm_bad_stream", False)
        assert isinstance(error.__cause__, ValueError)


@pytest.mark.parametrize(
    ("status", "code", "retryable", "message"),
    [
        (500, "llm_error", True, "The LLM answered HTTP 500."),
        (503, "llm_error", True, "The LLM answered HTTP 503."),
        (429, "llm_rate_limited", True, "The LLM is rate limited."),
        (400, "llm_error", False, "The LLM answered HTTP 400."),
        (401, "llm_error", False, "The LLM answered HTTP 401."),
    ],
)
async def test_http_errors(status: int, code: str, retryable: bool, message: str) -> None:
    body = {"error": {"message": f"scripted {status}", "type": "x", "param": None, "code": None}}
    server, [(chunks, error), again] = await served(json_answer(status, body), streams=2)
    assert outcome(again) == ([], (code, retryable))
    assert chunks == [] and error is not None
    assert (error.code, error.retryable, error.message) == (code, retryable, message)
    assert f"scripted {status}".encode() in cast(Any, error.__cause__).body
    # The error body was read: the connection went back to the pool.
    assert server.connections == 1


async def test_a_body_cut_mid_chunk_is_a_bad_stream() -> None:
    answer = http_answer(event("Hel"), event("lo"), end=False)
    answer[-2] = answer[-2][:-9]  # cut inside the last chunk, then close
    _, [(chunks, error)] = await served(answer, pause=0.05)
    assert chunks == [StreamChunk("Hel")]
    assert error is not None and (error.code, error.retryable) == ("llm_bad_stream", False)
    assert isinstance(error.__cause__, aiohttp.ClientPayloadError)


async def test_after_done_the_reply_stands_whatever_the_rest_of_the_body_does() -> None:
    answer = http_answer(event("ok", finish="stop"), b"data: [DONE]\n\n", b"trailing", end=False)
    _, [result] = await served(answer)
    assert result == ([StreamChunk("ok", "stop")], None)


async def test_an_unused_port_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with provider_for(f"http://127.0.0.1:{port}/v1") as provider:
        result = await collect(provider)
    assert outcome(result) == ([], ("llm_unavailable", True))


# --- The fake LLM: the same chunks and errors as the openai SDK path ---------------------------


async def sdk_stream(
    base_url: str, request: ChatRequest, *, timeout: float = 5.0
) -> AsyncIterator[StreamChunk]:
    """The provider's stream() as it was with the openai SDK (before this parser)."""
    client = openai.AsyncOpenAI(
        base_url=base_url,
        api_key="k",
        timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
        max_retries=0,
    )
    try:
        stream = await client.chat.completions.create(
            model=request.model,
            messages=cast(Any, request.messages),
            stream=True,
            stream_options={"include_usage": True},
            **request_options(request, openai_api=False),
        )
        try:
            async for chunk in stream:
                if chunk.usage is not None:
                    yield StreamChunk(
                        prompt_tokens=chunk.usage.prompt_tokens,
                        completion_tokens=chunk.usage.completion_tokens,
                    )
                for choice in chunk.choices:
                    text = choice.delta.content if choice.delta else None
                    if text or choice.finish_reason:
                        yield StreamChunk(text=text or "", finish_reason=choice.finish_reason)
        finally:
            await stream.close()
    except (openai.APITimeoutError, httpx.TimeoutException) as exc:
        raise ProviderError("llm_timeout", "The LLM did not answer in time.") from exc
    except openai.APIConnectionError as exc:
        raise ProviderError("llm_unavailable", "unreachable", retryable=True) from exc
    except openai.RateLimitError as exc:
        raise ProviderError("llm_rate_limited", "The LLM is rate limited.", retryable=True) from exc
    except openai.APIStatusError as exc:
        raise ProviderError(
            "llm_error",
            f"The LLM answered HTTP {exc.status_code}.",
            retryable=exc.status_code >= 500,
        ) from exc
    except (httpx.HTTPError, ValueError, openai.APIError) as exc:
        raise ProviderError("llm_bad_stream", "broken") from exc
    finally:
        await client.close()


class _SDK:
    def __init__(self, base_url: str, timeout: float = 5.0) -> None:
        self.base_url, self.timeout = base_url, timeout

    def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        return sdk_stream(self.base_url, request, timeout=self.timeout)


def outcome(result: Outcome) -> tuple[Any, ...]:
    # Where the text is cut depends on how the events arrived (coalesce), so compare joined.
    chunks, error = result
    return coalesce(chunks), error and (error.code, error.retryable)


SCRIPTS: dict[str, Callable[[], Script]] = {
    "plain": lambda: Script.from_text("Hello there, how are you?"),
    "unicode": lambda: Script(tokens=["Grüß", " dich", " 🙂", "—", "\n", "✓", " 日本語"]),
    "stop": lambda: Script.from_text("Sure.\nUser: and now I talk for the user"),
    "length": lambda: Script.numbered(40),
    "malformed": lambda: Script.numbered(5, fault="malformed", fault_after=2),
    "cut": lambda: Script.numbered(8, fault="cut", fault_after=3),
    "http_500": lambda: Script.from_text("x", fault="http_500"),
    "http_429": lambda: Script.from_text("x", fault="http_429"),
}


@pytest.mark.parametrize("name", SCRIPTS)
async def test_same_chunks_and_errors_as_the_sdk(fresh_server: FakeLLMServer, name: str) -> None:
    request = chat_request(stop=STOPS, max_tokens=30)
    fresh_server.push(SCRIPTS[name]())
    async with provider_for(fresh_server.base_url) as provider:
        ours = await collect(provider, request)
    fresh_server.push(SCRIPTS[name]())
    theirs = await collect(_SDK(fresh_server.base_url), request)
    assert outcome(ours) == outcome(theirs)
    mine, sent = fresh_server.requests
    assert mine == sent
    if name in ("plain", "unicode", "stop", "length"):
        chunks = ours[0]
        assert chunks[-1].prompt_tokens is not None and chunks[-1].completion_tokens
        assert chunks[-2].finish_reason == ("length" if name == "length" else "stop")


async def test_stalls_time_out(fresh_server: FakeLLMServer) -> None:
    fresh_server.push(Script.from_text("never sent", fault="stall"))
    fresh_server.push(Script.numbered(6, fault="stall", stall_after=2))
    provider = OpenAICompatibleProvider(base_url=fresh_server.base_url, api_key="", timeout=1.5)
    try:
        before_headers = await collect(provider)
        mid_stream = await collect(provider)
    finally:
        await provider.aclose()
    assert outcome(before_headers) == ([], ("llm_timeout", False))
    assert outcome(mid_stream) == ([StreamChunk("token1 token2")], ("llm_timeout", False))
    await wait_until_idle(fresh_server)


async def wait_until_idle(server: FakeLLMServer, timeout: float = 2.0) -> None:
    """Until the fake has no request running: it saw the client go away."""
    deadline = time.monotonic() + timeout
    while server.active_requests:
        assert time.monotonic() < deadline, "the server did not see the client leave"
        await asyncio.sleep(0.01)


def record_responses(
    provider: Any, monkeypatch: pytest.MonkeyPatch
) -> list[aiohttp.ClientResponse]:
    """The responses `provider` gets, as they arrive."""
    responses: list[aiohttp.ClientResponse] = []
    session = provider._client()
    post = session.post

    async def recording_post(*args: Any, **kwargs: Any) -> aiohttp.ClientResponse:
        response = await post(*args, **kwargs)
        responses.append(response)
        return response

    monkeypatch.setattr(session, "post", recording_post)
    return responses


async def test_stopping_early_closes_the_response(
    fresh_server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 500 tokens at 20 ms: 10 s of generation the server would carry on with for nobody.
    fresh_server.push(Script.numbered(500, token_interval=0.02))
    async with provider_for(fresh_server.base_url) as provider:
        responses = record_responses(provider, monkeypatch)
        stream = cast(AsyncGenerator[StreamChunk, None], provider.stream(chat_request()))
        assert [(await anext(stream)).text for _ in range(2)] == ["token1", " token2"]
        assert fresh_server.active_requests == 1
        started = time.monotonic()
        await stream.aclose()
        # Closed by the stream itself, not left to the garbage collector.
        assert responses[0].closed
        await wait_until_idle(fresh_server, timeout=5)
    assert time.monotonic() - started < 5  # not the 10 s the generation would take


async def test_cancelling_the_consumer_closes_the_response(
    fresh_server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh_server.push(Script.numbered(500, token_interval=0.02))
    received: list[StreamChunk] = []

    async def consume(provider: Any) -> None:
        async for chunk in provider.stream(chat_request()):
            received.append(chunk)

    async with provider_for(fresh_server.base_url) as provider:
        responses = record_responses(provider, monkeypatch)
        task = asyncio.ensure_future(consume(provider))
        while len(received) < 3:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert responses[0].closed
        await wait_until_idle(fresh_server)


def test_streaming_does_not_import_the_sdk() -> None:
    code = "import sys, llm_app.providers; print(sorted({'openai', 'pydantic'} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"

"""CPU of the OpenAI-compatible provider's streaming: the openai SDK path against the lean one.

`python -m bench.parse_micro`: records a real SSE body from the fake LLM (32 tokens: 35 chunks
with the role chunk, the finish chunk and the usage chunk, then [DONE], read as the network
delivered it), then replays those very bytes, in process and with no network, through:

- parse: an httpx.Response replaying the body, read by the SDK's AsyncStream (SSE decoder and a
  pydantic ChatCompletionChunk per event) or by `aiter_bytes()` and ChatStreamParser, both
  turning it into the provider's StreamChunks as llm_app.providers.openai_compatible does;
- parser alone: ChatStreamParser.feed over the recorded pieces, without httpx;
- whole call: the SDK's `chat.completions.create(stream=True)` (httpx) as the provider made it
  before, against OpenAICompatibleProvider.stream() (aiohttp), both over real HTTP to a fake
  LLM in a process of its own (32 tokens, no delays), so only the client's CPU is counted:
  request building (the SDK's transform of `messages`, the JSON body), the HTTP client,
  parsing; with a short prompt and with a long one.

CPU is `time.process_time()` over `--reps` streams per round; each figure is the median of
`--rounds` rounds. Both paths must give the same chunks, or the script stops.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, cast

import httpx
import openai
from openai.types.chat import ChatCompletionChunk

from fake_llm import FakeLLMServer, Script
from llm_app.providers.base import ChatRequest, StreamChunk
from llm_app.providers.openai_compatible import (
    OpenAICompatibleProvider,
    coalesce,
    request_options,
)
from llm_app.providers.openai_stream import ChatStreamParser

BASE_URL = "http://bench.invalid/v1"
SSE_HEADERS = {"content-type": "text/event-stream"}


def record_body(tokens: int) -> list[bytes]:
    """The fake LLM's SSE body for `tokens` tokens, in the pieces the network delivered."""
    with FakeLLMServer() as server:
        # A small interval, so that the events arrive apart as from a real model.
        server.push(Script.numbered(tokens, token_interval=0.002))
        body = {
            "model": "m",
            "messages": [{"role": "user", "content": "Hi"}],
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        pieces: list[bytes] = []
        with (
            httpx.Client() as client,
            client.stream("POST", f"{server.base_url}/chat/completions", json=body) as response,
        ):
            for piece in response.iter_bytes():
                pieces.append(piece)
    return pieces


class Replay(httpx.AsyncByteStream):
    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece


def replayed(pieces: list[bytes]) -> httpx.Response:
    request = httpx.Request("POST", f"{BASE_URL}/chat/completions")
    return httpx.Response(200, headers=SSE_HEADERS, stream=Replay(pieces), request=request)


def sdk_chunks(chunk: Any) -> list[StreamChunk]:
    """The provider's loop body of the SDK days."""
    out: list[StreamChunk] = []
    if chunk.usage is not None:
        out.append(
            StreamChunk(
                prompt_tokens=chunk.usage.prompt_tokens,
                completion_tokens=chunk.usage.completion_tokens,
            )
        )
    for choice in chunk.choices:
        text = choice.delta.content if choice.delta else None
        if text or choice.finish_reason:
            out.append(StreamChunk(text=text or "", finish_reason=choice.finish_reason))
    return out


async def parse_sdk(client: openai.AsyncOpenAI, pieces: list[bytes]) -> list[StreamChunk]:
    stream = openai.AsyncStream(
        cast_to=ChatCompletionChunk, response=replayed(pieces), client=client
    )
    out: list[StreamChunk] = []
    async for chunk in stream:
        out += sdk_chunks(chunk)
    await stream.close()
    return out


async def parse_lean(pieces: list[bytes]) -> list[StreamChunk]:
    response = replayed(pieces)
    parser = ChatStreamParser()
    out: list[StreamChunk] = []
    async for data in response.aiter_bytes():
        if not parser.done:
            out += parser.feed(data)
    out += parser.finish()
    await response.aclose()
    return out


def parse_alone(pieces: list[bytes]) -> list[StreamChunk]:
    parser = ChatStreamParser()
    out: list[StreamChunk] = []
    for piece in pieces:
        out += parser.feed(piece)
    return out + parser.finish()


async def call_sdk(client: openai.AsyncOpenAI, request: ChatRequest) -> list[StreamChunk]:
    stream = await client.chat.completions.create(
        model=request.model,
        messages=cast(Any, request.messages),
        stream=True,
        stream_options={"include_usage": True},
        **request_options(request, openai_api=False),
    )
    out: list[StreamChunk] = []
    try:
        async for chunk in stream:
            out += sdk_chunks(chunk)
    finally:
        await stream.close()
    return out


async def call_lean(provider: OpenAICompatibleProvider, request: ChatRequest) -> list[StreamChunk]:
    return [chunk async for chunk in provider.stream(request)]


def prompt(messages: int, chars: int) -> list[dict[str, str]]:
    turns = [{"role": "system", "content": "You are Ada, a helpful assistant. " * 4}]
    for i in range(messages - 1):
        text = f"Message {i}: " + "lorem ipsum dolor sit amet, consectetur adipiscing " * 20
        turns.append({"role": "user" if i % 2 else "assistant", "content": text[:chars]})
    return turns


def request_for(messages: list[dict[str, str]]) -> ChatRequest:
    return ChatRequest(
        model="m",
        messages=messages,
        temperature=0.7,
        max_tokens=256,
        stop=("\nUser:", "<|im_end|>"),
        repeat_penalty=1.1,
    )


async def cpu(run: Callable[[], Awaitable[Any]], reps: int, rounds: int) -> float:
    """Median over rounds of the CPU seconds of one run."""
    for _ in range(max(1, reps // 10)):
        await run()
    results = []
    for _ in range(rounds):
        started = time.process_time()
        for _ in range(reps):
            await run()
        results.append((time.process_time() - started) / reps)
    return statistics.median(results)


@contextlib.contextmanager
def fake_llm_process(tokens: int) -> Iterator[str]:
    """A fake LLM in a process of its own (its CPU is not this process's); its base URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "fake_llm", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--tokens", str(tokens), "--first-token-ms", "0", "--interval-ms", "0"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def main(args: argparse.Namespace) -> None:
    pieces = record_body(args.tokens)
    expected = parse_alone(pieces)
    # The events of the body: role chunk, tokens, finish chunk, usage chunk (not [DONE]).
    events = sum(piece.count(b"\n\n") for piece in pieces) - 1
    with fake_llm_process(args.tokens) as base_url:
        await compare(args, pieces, expected, events, base_url)


async def compare(
    args: argparse.Namespace,
    pieces: list[bytes],
    expected: list[StreamChunk],
    events: int,
    base_url: str,
) -> None:
    sdk = openai.AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0)
    lean = OpenAICompatibleProvider(base_url=base_url, api_key="k", timeout=60)
    short = request_for(prompt(3, 200))
    long = request_for(prompt(args.long_messages, 600))
    long_kib = sum(len(m["content"]) for m in long.messages) / 1024

    # Same chunks both ways (text joined as the reads fell), or the comparison means nothing.
    assert await parse_sdk(sdk, pieces) == expected
    assert await parse_lean(pieces) == expected
    for request in (short, long):
        theirs = coalesce(await call_sdk(sdk, request))
        assert theirs == coalesce(await call_lean(lean, request))
        assert "".join(c.text for c in theirs) == "".join(c.text for c in expected)

    reps, rounds = args.reps, args.rounds
    long_reps = max(10, reps // 10)

    async def alone() -> None:
        parse_alone(pieces)

    rows: list[tuple[str, float, float, int]] = [
        (
            "parse (httpx Response replay -> StreamChunks)",
            await cpu(lambda: parse_sdk(sdk, pieces), reps, rounds),
            await cpu(lambda: parse_lean(pieces), reps, rounds),
            events,
        ),
        (
            "parser alone (no httpx; lean only)",
            float("nan"),
            await cpu(alone, reps, rounds),
            events,
        ),
        (
            "whole call over HTTP, short prompt (3 messages)",
            await cpu(lambda: call_sdk(sdk, short), reps, rounds),
            await cpu(lambda: call_lean(lean, short), reps, rounds),
            events,
        ),
        (
            f"whole call over HTTP, long prompt ({len(long.messages)} messages,"
            f" {long_kib:.0f} KiB)",
            await cpu(lambda: call_sdk(sdk, long), long_reps, rounds),
            await cpu(lambda: call_lean(lean, long), long_reps, rounds),
            events,
        ),
    ]
    await sdk.close()
    await lean.aclose()

    body = sum(map(len, pieces))
    print(
        f"Recorded body: {events} events ({len(expected)} StreamChunks), {body} bytes in "
        f"{len(pieces)} reads. {reps} streams per round ({long_reps} with the long prompt), "
        f"median of {rounds} rounds, CPU = time.process_time()."
    )
    print()
    print("| path | SDK µs/stream | lean µs/stream | SDK µs/event | lean µs/event | SDK/lean |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, old, new, count in rows:
        ratio = f"{old / new:.1f}x" if old == old else "-"
        old_stream = f"{old * 1e6:.0f}" if old == old else "-"
        old_event = f"{old * 1e6 / count:.1f}" if old == old else "-"
        print(
            f"| {name} | {old_stream} | {new * 1e6:.0f} | {old_event} | "
            f"{new * 1e6 / count:.1f} | {ratio} |"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=32, help="tokens in the recorded reply")
    parser.add_argument("--reps", type=int, default=1000, help="streams per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--long-messages", type=int, default=200)
    asyncio.run(main(parser.parse_args()))

"""Tests for the fake OpenAI-compatible server, driven through the official openai SDK."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from fake_llm import FakeLLMServer, Script, split_text, tokenize_text

# A module-scoped fake (tests/conftest.py) that must handle every fault without a warning.
pytestmark = pytest.mark.usefixtures("fresh_server")

MESSAGES: list[Any] = [{"role": "user", "content": "Say something."}]
PROJECT_ROOT = Path(__file__).resolve().parent.parent


MakeClient = Callable[..., openai.OpenAI]


@pytest.fixture
def make_client(server: FakeLLMServer) -> Iterator[MakeClient]:
    clients: list[openai.OpenAI] = []

    def factory(**options: Any) -> openai.OpenAI:
        # No retries: a retried request would consume the next script or the default one.
        options.setdefault("max_retries", 0)
        client = openai.OpenAI(base_url=server.base_url, api_key="x", **options)
        clients.append(client)
        return client

    yield factory
    for client in clients:
        client.close()


def http_json(method: str, url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def wait_until_idle(server: FakeLLMServer, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while server.active_requests and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.active_requests == 0


def test_from_text_round_trips() -> None:
    text = "Hello, world!  It's a test\n of tokens. "
    script = Script.from_text(text)
    assert "".join(script.tokens) == text
    assert script.tokens[:3] == ["Hello", ",", " world"]
    assert Script.from_dict(script.to_dict()) == script


def test_stream_joined_deltas_equal_script(server: FakeLLMServer, make_client: MakeClient) -> None:
    text = "The quick brown fox, it jumps over the lazy dog!"
    server.push(Script.from_text(text))
    stream = make_client().chat.completions.create(
        model="fake-model", messages=MESSAGES, stream=True
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_finish_reason_and_usage_with_include_usage(
    server: FakeLLMServer, make_client: MakeClient
) -> None:
    script = Script.from_text("One two three four.")
    server.push(script)
    stream = make_client().chat.completions.create(
        model="fake-model",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert chunks[-1].choices == []
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.completion_tokens == len(script.tokens)
    assert usage.prompt_tokens >= 1
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_max_tokens_cuts_with_finish_reason_length(
    server: FakeLLMServer, make_client: MakeClient
) -> None:
    script = Script.numbered(10)
    server.push(script)
    stream = make_client().chat.completions.create(
        model="fake-model",
        messages=MESSAGES,
        stream=True,
        max_tokens=3,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(script.tokens[:3])
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


def test_non_streaming_completion(server: FakeLLMServer, make_client: MakeClient) -> None:
    server.push(Script.from_text("Not streamed."))
    completion = make_client().chat.completions.create(model="m", messages=MESSAGES)
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "Not streamed."
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == len(
        split_text("Not streamed.")
    )


def test_http_500_raises_internal_server_error(
    server: FakeLLMServer, make_client: MakeClient
) -> None:
    server.push(Script.from_text("never sent", fault="http_500"))
    with pytest.raises(openai.InternalServerError) as info:
        make_client().chat.completions.create(model="m", messages=MESSAGES, stream=True)
    assert info.value.status_code == 500


def test_http_429_raises_rate_limit_error(server: FakeLLMServer, make_client: MakeClient) -> None:
    server.push(Script.from_text("never sent", fault="http_429"))
    with pytest.raises(openai.RateLimitError) as info:
        make_client().chat.completions.create(model="m", messages=MESSAGES, stream=True)
    assert info.value.response.headers["Retry-After"] == "0"


def test_stall_before_headers_times_out(server: FakeLLMServer, make_client: MakeClient) -> None:
    server.push(Script.from_text("never sent", fault="stall"))
    client = make_client(timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    # The stalled handler notices the client left instead of lingering for stall_seconds.
    wait_until_idle(server)


def test_stall_mid_stream_times_out_while_iterating(
    server: FakeLLMServer, make_client: MakeClient
) -> None:
    script = Script.numbered(6, fault="stall", stall_after=2)
    server.push(script)
    client = make_client(timeout=2.0)
    stream = client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    received: list[str] = []
    with pytest.raises((httpx.TimeoutException, openai.APITimeoutError)):
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "".join(script.tokens[:2])
    stream.close()
    wait_until_idle(server)


def test_malformed_chunk_raises_while_iterating(
    server: FakeLLMServer, make_client: MakeClient
) -> None:
    script = Script.numbered(5, fault="malformed", fault_after=2)
    server.push(script)
    stream = make_client().chat.completions.create(model="m", messages=MESSAGES, stream=True)
    received: list[str] = []
    with pytest.raises(ValueError):
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "".join(script.tokens[:2])


def test_cut_ends_stream_early_without_stop(server: FakeLLMServer, make_client: MakeClient) -> None:
    script = Script.numbered(8, fault="cut", fault_after=3)
    server.push(script)
    stream = make_client().chat.completions.create(model="m", messages=MESSAGES, stream=True)
    received: list[str] = []
    finishes: list[str | None] = []
    try:
        for chunk in stream:
            if chunk.choices:
                received.append(chunk.choices[0].delta.content or "")
                finishes.append(chunk.choices[0].finish_reason)
    except (httpx.HTTPError, openai.APIError):
        pass
    text = "".join(received)
    assert len(text) < len(script.text)
    assert text == "".join(script.tokens[:3])
    assert "stop" not in finishes


def test_client_disconnect_mid_stream_is_quiet(
    server: FakeLLMServer, make_client: MakeClient
) -> None:
    server.push(Script.numbered(200, token_interval=0.01))
    stream = make_client().chat.completions.create(model="m", messages=MESSAGES, stream=True)
    for index, _chunk in enumerate(stream):
        if index == 3:
            break
    stream.close()
    wait_until_idle(server)


def test_control_endpoints(server: FakeLLMServer, make_client: MakeClient) -> None:
    client = make_client()

    def ask() -> str | None:
        completion = client.chat.completions.create(model="m", messages=MESSAGES)
        return completion.choices[0].message.content

    queued = http_json("POST", f"{server.url}/_fake/script", {"text": "from http", "times": 2})
    assert queued == {"queued": 1}
    assert [ask(), ask()] == ["from http", "from http"]
    assert ask() == server.state.default_script.text

    recorded = http_json("GET", f"{server.url}/_fake/requests")
    assert len(recorded) == 3
    assert recorded[0]["messages"] == MESSAGES
    assert recorded == server.requests
    http_json("DELETE", f"{server.url}/_fake/requests")
    assert http_json("GET", f"{server.url}/_fake/requests") == []

    http_json("POST", f"{server.url}/_fake/script", [{"tokens": ["a", "b"]}, {"text": "c"}])
    http_json("DELETE", f"{server.url}/_fake/script")
    assert ask() == server.state.default_script.text

    with pytest.raises(urllib.error.HTTPError) as info:
        http_json("POST", f"{server.url}/_fake/script", {"text": "x", "fault": "bogus"})
    assert info.value.code == 400
    info.value.close()


def test_health_models_and_tokenize(server: FakeLLMServer, make_client: MakeClient) -> None:
    assert http_json("GET", f"{server.url}/health") == {"status": "ok"}
    assert [m.id for m in make_client().models.list()] == ["fake-model"]
    tokens = http_json("POST", f"{server.url}/tokenize", {"content": "Hello, big world"})
    assert tokens == {"tokens": tokenize_text("Hello, big world")}
    assert len(tokens["tokens"]) == len(split_text("Hello, big world")) == 4
    assert all(isinstance(t, int) for t in tokens["tokens"])


def test_token_timing_lower_bounds(server: FakeLLMServer, make_client: MakeClient) -> None:
    server.push(Script.numbered(5, first_token_delay=0.05, token_interval=0.02))
    started = time.monotonic()
    stream = make_client().chat.completions.create(model="m", messages=MESSAGES, stream=True)
    arrivals = [
        time.monotonic() - started
        for chunk in stream
        if chunk.choices and chunk.choices[0].delta.content
    ]
    assert len(arrivals) == 5
    assert arrivals[0] >= 0.05
    assert arrivals[-1] >= 0.05 + 4 * 0.02


def test_many_concurrent_streams(server: FakeLLMServer) -> None:
    script = Script.numbered(10, token_interval=0.02, times=50)
    server.push(script)

    async def one(client: openai.AsyncOpenAI) -> str:
        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def run_all() -> list[str]:
        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key="x", max_retries=0
        ) as client:
            return await asyncio.gather(*(one(client) for _ in range(50)))

    assert asyncio.run(run_all()) == [script.text] * 50


def test_cli_serves_until_sigterm() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "fake_llm", "--port", "0", "--tokens", "3"],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("fake LLM listening on http://127.0.0.1:")
        base_url = line.split()[-1]
        with openai.OpenAI(base_url=base_url, api_key="x", max_retries=0) as client:
            completion = client.chat.completions.create(model="m", messages=MESSAGES)
        assert completion.choices[0].message.content == "token1 token2 token3"
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=5)
        assert process.returncode == 0
        assert stderr == ""
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()

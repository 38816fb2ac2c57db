"""AnthropicProvider against the fake LLM's /v1/messages over real HTTP, via the anthropic SDK."""

from __future__ import annotations

import socket

import anthropic
import httpx
import pytest

from fake_llm import FakeLLMServer, Script
from llm_app.providers.anthropic import AnthropicProvider, _status_error, to_anthropic_messages
from llm_app.providers.base import ChatRequest, ProviderError, StreamChunk

# A module-scoped fake (tests/conftest.py) that must handle every fault without a warning.
pytestmark = pytest.mark.usefixtures("fresh_server")

MESSAGES = [
    {"role": "system", "content": "You are Captain Test."},
    {"role": "assistant", "content": "Ahoy!"},
    {"role": "user", "content": "Hello."},
    {"role": "user", "content": "Are you there?"},
    {"role": "system", "content": "Stay in character."},
    {"role": "assistant", "content": "Aye."},
    {"role": "user", "content": "Good."},
]


def request(max_tokens: int = 256) -> ChatRequest:
    return ChatRequest(
        model="claude-test", messages=MESSAGES, temperature=0.7, max_tokens=max_tokens
    )


async def collect(
    base_url: str, chat: ChatRequest | None = None, *, timeout: float = 5.0
) -> list[StreamChunk]:
    # The anthropic SDK appends /v1/messages itself, so it gets the bare server URL.
    provider = AnthropicProvider(api_key="test-key", timeout=timeout, base_url=base_url)
    try:
        return [chunk async for chunk in provider.stream(chat or request())]
    finally:
        await provider.aclose()


def joined(chunks: list[StreamChunk]) -> str:
    return "".join(chunk.text for chunk in chunks)


def finishes(chunks: list[StreamChunk]) -> list[str]:
    return [chunk.finish_reason for chunk in chunks if chunk.finish_reason]


def test_messages_conversion_joins_system_merges_and_starts_with_user() -> None:
    system, messages = to_anthropic_messages(MESSAGES)
    assert system == "You are Captain Test.\n\nStay in character."
    assert messages == [
        {"role": "user", "content": "(conversation start)"},
        {"role": "assistant", "content": "Ahoy!"},
        {"role": "user", "content": "Hello.\n\nAre you there?"},
        {"role": "assistant", "content": "Aye."},
        {"role": "user", "content": "Good."},
    ]
    assert to_anthropic_messages([{"role": "user", "content": "Hi"}]) == (
        None,
        [{"role": "user", "content": "Hi"}],
    )
    # The caller's list is left as it was.
    assert MESSAGES[2] == {"role": "user", "content": "Hello."}


async def test_stream_text_finish_reason_and_usage(server: FakeLLMServer) -> None:
    script = Script.from_text("Ahoy there, matey! The sea is calm today.")
    server.push(script)
    chunks = await collect(server.url)
    assert joined(chunks) == script.text
    assert finishes(chunks) == ["stop"]
    assert chunks[-1].finish_reason == "stop"
    usage = [chunk for chunk in chunks if chunk.completion_tokens is not None]
    assert len(usage) == 1
    assert usage[0].completion_tokens == len(script.tokens)
    assert usage[0].prompt_tokens is not None and usage[0].prompt_tokens >= 1


async def test_request_reaches_fake_in_anthropic_shape(server: FakeLLMServer) -> None:
    server.push(Script.from_text("Aye."))
    await collect(server.url, request(max_tokens=64))
    [body] = server.requests
    assert body["model"] == "claude-test"
    assert body["max_tokens"] == 64
    assert body["temperature"] == 0.7
    assert body["stream"] is True
    assert body["system"] == "You are Captain Test.\n\nStay in character."
    roles = [message["role"] for message in body["messages"]]
    assert roles == ["user", "assistant", "user", "assistant", "user"]
    assert body["messages"][0]["content"] == "(conversation start)"
    assert body["messages"][2]["content"] == "Hello.\n\nAre you there?"


async def test_max_tokens_cut_gives_length(server: FakeLLMServer) -> None:
    script = Script.numbered(10)
    server.push(script)
    chunks = await collect(server.url, request(max_tokens=3))
    assert joined(chunks) == "".join(script.tokens[:3])
    assert finishes(chunks) == ["length"]
    assert [c.completion_tokens for c in chunks if c.completion_tokens is not None] == [3]


@pytest.mark.parametrize(
    ("fault", "code", "retryable"),
    [("http_500", "llm_error", True), ("http_429", "llm_rate_limited", True)],
)
async def test_http_errors(server: FakeLLMServer, fault: str, code: str, retryable: bool) -> None:
    server.push(Script.from_text("never sent", fault=fault))
    with pytest.raises(ProviderError) as info:
        await collect(server.url)
    assert (info.value.code, info.value.retryable) == (code, retryable)
    # No SDK retries: one request, one script.
    assert len(server.requests) == 1


@pytest.mark.parametrize("stall_after", [0, 2])
async def test_stall_times_out(server: FakeLLMServer, stall_after: int) -> None:
    # 0 stalls before the response headers, 2 in the middle of the stream.
    server.push(Script.numbered(5, fault="stall", stall_after=stall_after))
    with pytest.raises(ProviderError) as info:
        await collect(server.url, timeout=0.3)
    assert info.value.code == "llm_timeout"


async def test_malformed_event_is_bad_stream(server: FakeLLMServer) -> None:
    server.push(Script.numbered(5, fault="malformed", fault_after=2))
    with pytest.raises(ProviderError) as info:
        await collect(server.url)
    assert info.value.code == "llm_bad_stream"


@pytest.mark.parametrize("fault_after", [3, 8])
async def test_cut_stream_never_finishes(server: FakeLLMServer, fault_after: int) -> None:
    # 8 cuts after every token but before message_delta/message_stop.
    script = Script.numbered(8, fault="cut", fault_after=fault_after)
    server.push(script)
    try:
        chunks = await collect(server.url)
    except ProviderError as exc:
        assert exc.code == "llm_bad_stream"
    else:
        assert joined(chunks) == "".join(script.tokens[:fault_after])
        assert finishes(chunks) == []


async def test_clean_end_without_message_stop_has_no_finish_reason() -> None:
    # The fake's cut breaks the chunked body; here the body ends cleanly, only too early.
    events = [
        (
            "message_start",
            '{"type":"message_start","message":{"id":"msg_1","type":"message",'
            '"role":"assistant","model":"m","content":[],"stop_reason":null,"stop_sequence":null,'
            '"usage":{"input_tokens":7,"output_tokens":0}}}',
        ),
        (
            "content_block_delta",
            '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Half"}}',
        ),
    ]
    body = "".join(f"event: {name}\ndata: {data}\n\n" for name, data in events)

    def handler(_: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=body, headers={"Content-Type": "text/event-stream"})

    provider = AnthropicProvider(api_key="test-key", timeout=2.0)
    await provider.aclose()
    provider._client = anthropic.AsyncAnthropic(
        api_key="test-key",
        base_url="http://mock",
        max_retries=0,
        http_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
    )
    try:
        chunks = [chunk async for chunk in provider.stream(request())]
    finally:
        await provider.aclose()
    assert joined(chunks) == "Half"
    assert finishes(chunks) == []


async def test_unused_port_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ProviderError) as info:
        await collect(f"http://127.0.0.1:{port}", timeout=2.0)
    assert (info.value.code, info.value.retryable) == ("llm_unavailable", True)


async def test_missing_api_key_fails_without_request(server: FakeLLMServer) -> None:
    provider = AnthropicProvider(api_key="", timeout=2.0, base_url=server.url)
    with pytest.raises(ProviderError) as info:
        [chunk async for chunk in provider.stream(request())]
    await provider.aclose()
    assert info.value.code == "llm_error"
    assert server.requests == []


def test_error_event_inside_stream_is_mapped() -> None:
    # The SDK raises an `error` SSE event with the stream's 200 status.
    response = httpx.Response(200, request=httpx.Request("POST", "http://fake/v1/messages"))
    body = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    error = _status_error(anthropic.APIStatusError("overloaded", response=response, body=body))
    assert (error.code, error.retryable) == ("llm_error", True)


def test_fake_non_streaming_message_and_error_shape(server: FakeLLMServer) -> None:
    server.push(Script.from_text("Not streamed.", fault=None))
    server.push(Script.from_text("never sent", fault="http_500"))
    with anthropic.Anthropic(api_key="x", base_url=server.url, max_retries=0) as client:
        message = client.messages.create(
            model="claude-test", max_tokens=50, messages=[{"role": "user", "content": "Hi"}]
        )
        assert message.content[0].type == "text"
        assert message.content[0].text == "Not streamed."
        assert message.stop_reason == "end_turn"
        assert message.usage.output_tokens == 3
        with pytest.raises(anthropic.InternalServerError) as info:
            client.messages.create(
                model="claude-test", max_tokens=50, messages=[{"role": "user", "content": "Hi"}]
            )
    assert info.value.body == {
        "type": "error",
        "error": {"type": "api_error", "message": "The fake server had an error (scripted)."},
    }

"""llm_app.tokens: /tokenize against the fake LLM over HTTP, the estimate fallback, tiktoken."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from fake_llm import FakeLLMServer, tokenize_text
from llm_app import tokens
from llm_app.tokens import (
    ESTIMATE_COUNTER,
    PER_MESSAGE_OVERHEAD,
    TOKENIZE_COUNTER,
    TokenCount,
    TokenCounter,
    estimate_tokens,
    server_root,
)
from messageservice.embedded import free_port

TEXTS = [
    "Hello there!",
    "How are you doing today, my friend?",
    "",
    "  leading spaces and punctuation... ok?",
    "Ünïcödé wörds, émojis 🙂 and\nnewlines\n",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture(autouse=True)
def _fresh_caches() -> Iterator[None]:
    # Memo, unsupported-server memory and tiktoken loads are process-wide.
    tokens.clear_caches()
    yield
    tokens.clear_caches()


@asynccontextmanager
async def tiny_server(handler: Handler) -> AsyncIterator[str]:
    """An aiohttp server answering every POST /tokenize with handler; yields its /v1 base URL."""
    app = web.Application()
    app.router.add_post("/tokenize", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()


class Hits:
    """Counts requests a tiny server received."""

    def __init__(self) -> None:
        self.count = 0


def counting_client(hits: Hits) -> httpx.AsyncClient:
    async def on_request(request: httpx.Request) -> None:
        hits.count += 1

    return httpx.AsyncClient(event_hooks={"request": [on_request]})


def test_estimate_is_ceil_chars_over_four() -> None:
    assert [estimate_tokens("x" * n) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]
    assert ESTIMATE_COUNTER == "estimate: ceil(chars/4)"
    assert PER_MESSAGE_OVERHEAD == 4


def test_server_root_strips_v1() -> None:
    assert server_root("http://127.0.0.1:8005/v1") == "http://127.0.0.1:8005"
    assert server_root("http://127.0.0.1:8005/v1/") == "http://127.0.0.1:8005"
    assert server_root("http://h:1234") == "http://h:1234"


async def test_tokenize_counts_match_the_fake(fake_llm_server: FakeLLMServer) -> None:
    counter = TokenCounter(
        provider="lmstudio", model="fake-model", base_url=fake_llm_server.base_url
    )
    assert counter.name == TOKENIZE_COUNTER == "llama-server /tokenize"
    for text in TEXTS:
        count = await counter.count(text)
        assert count == TokenCount(len(tokenize_text(text)), TOKENIZE_COUNTER)
    # The fake's pieces are words, not characters/4: the counter really asked the server.
    long_words = " ".join(["extraordinarily"] * 10)
    assert (await counter.count(long_words)).tokens == 10 != estimate_tokens(long_words)


async def test_count_many_keeps_order(fake_llm_server: FakeLLMServer) -> None:
    texts = [f"{'word ' * i}end." for i in range(40)] + TEXTS
    counter = TokenCounter(
        provider="openai_compatible", model="fake-model", base_url=fake_llm_server.base_url
    )
    counts = await counter.count_many(texts)
    assert [c.tokens for c in counts] == [len(tokenize_text(t)) for t in texts]
    assert {c.counter for c in counts} == {TOKENIZE_COUNTER}
    assert await counter.count_many([]) == []


async def test_count_many_is_concurrent_but_bounded() -> None:
    in_flight = 0
    peak = 0

    async def slow_tokenize(request: web.Request) -> web.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        body = await request.json()
        return web.json_response({"tokens": tokenize_text(body["content"])})

    async with tiny_server(slow_tokenize) as base_url:
        counter = TokenCounter(provider="lmstudio", model="m", base_url=base_url)
        texts = [f"text number {i}" for i in range(30)]
        counts = await counter.count_many(texts)
    assert [c.tokens for c in counts] == [3] * 30
    assert 1 < peak <= tokens.TOKENIZE_CONCURRENCY


async def test_memo_avoids_a_second_request(fake_llm_server: FakeLLMServer) -> None:
    hits = Hits()
    async with counting_client(hits) as http:
        counter = TokenCounter(
            provider="lmstudio", model="fake-model", base_url=fake_llm_server.base_url, http=http
        )
        first = await counter.count("The same history, packed again.")
        assert hits.count == 1
        second = await counter.count("The same history, packed again.")
        assert second == first
        assert hits.count == 1
        # Another counter for the same server and model shares the memo; duplicates in one
        # batch are asked once.
        again = TokenCounter(
            provider="lmstudio", model="fake-model", base_url=fake_llm_server.base_url, http=http
        )
        batch = await again.count_many(["The same history, packed again.", "new", "new"])
        assert [c.tokens for c in batch] == [first.tokens, 1, 1]
        assert hits.count == 2
        # A different model behind the same URL is not served from the memo.
        other = TokenCounter(
            provider="lmstudio", model="other", base_url=fake_llm_server.base_url, http=http
        )
        await other.count("The same history, packed again.")
        assert hits.count == 3


async def test_server_without_tokenize_is_estimated_and_not_asked_again(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    hits = 0

    async def not_found(request: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        return web.json_response({"error": "Not Found"}, status=404)

    now = 1000.0
    monkeypatch.setattr(tokens, "_clock", lambda: now)
    caplog.set_level(logging.WARNING, logger="llm_app.tokens")
    async with tiny_server(not_found) as base_url:
        counter = TokenCounter(provider="lmstudio", model="m", base_url=base_url)
        assert counter.name == TOKENIZE_COUNTER
        text = "Thirty-one characters of text.."
        assert await counter.count(text) == TokenCount(8, ESTIMATE_COUNTER)
        assert hits == 1
        assert counter.name == ESTIMATE_COUNTER
        assert len([r for r in caplog.records if "tokenize unusable" in r.message]) == 1

        # Within the window: neither this counter nor a new one for the server asks again.
        now += tokens.UNSUPPORTED_SERVER_TTL_SECONDS - 1
        fresh = TokenCounter(provider="openai_compatible", model="m", base_url=base_url)
        counts = await fresh.count_many(["a", "bb", "ccccc"])
        assert counts == [TokenCount(n, ESTIMATE_COUNTER) for n in (1, 1, 2)]
        assert await counter.count("other text") == TokenCount(3, ESTIMATE_COUNTER)
        assert hits == 1

        # After the window the server gets another chance.
        now += 2
        assert counter.name == TOKENIZE_COUNTER
        assert (await counter.count(text)).counter == ESTIMATE_COUNTER
        assert hits == 2


async def test_many_texts_on_a_server_without_tokenize_stop_early() -> None:
    hits = 0

    async def not_found(request: web.Request) -> web.Response:
        nonlocal hits
        hits += 1
        return web.Response(status=404)

    async with tiny_server(not_found) as base_url:
        counter = TokenCounter(provider="lmstudio", model="m", base_url=base_url)
        counts = await counter.count_many([f"text {i}" for i in range(50)])
    assert {c.counter for c in counts} == {ESTIMATE_COUNTER}
    # Only the first wave of concurrent requests went out.
    assert hits <= tokens.TOKENIZE_CONCURRENCY


async def test_unreachable_server_is_estimated() -> None:
    base_url = f"http://127.0.0.1:{free_port()}/v1"
    counter = TokenCounter(provider="lmstudio", model="m", base_url=base_url)
    assert await counter.count("hello world") == TokenCount(3, ESTIMATE_COUNTER)
    assert counter.name == ESTIMATE_COUNTER


@pytest.mark.parametrize(
    "make_response",
    [
        lambda: web.Response(text="{not json", content_type="application/json"),
        lambda: web.json_response({"count": 3}),
        lambda: web.json_response({"error": "boom"}, status=500),
    ],
    ids=["bad-json", "no-tokens", "http-500"],
)
async def test_bad_answers_are_estimated(make_response: Callable[[], web.Response]) -> None:
    async def answer(request: web.Request) -> web.Response:
        return make_response()

    async with tiny_server(answer) as base_url:
        counter = TokenCounter(provider="lmstudio", model="m", base_url=base_url)
        assert await counter.count("hello world") == TokenCount(3, ESTIMATE_COUNTER)


async def test_one_failure_in_a_batch_estimates_the_whole_batch() -> None:
    async def flaky(request: web.Request) -> web.Response:
        body = await request.json()
        if "boom" in body["content"]:
            return web.Response(status=500)
        return web.json_response({"tokens": tokenize_text(body["content"])})

    async with tiny_server(flaky) as base_url:
        counter = TokenCounter(provider="lmstudio", model="m", base_url=base_url)
        counts = await counter.count_many(["fine text", "boom", "more fine text"])
    assert counts == [
        TokenCount(estimate_tokens(t), ESTIMATE_COUNTER)
        for t in ("fine text", "boom", "more fine text")
    ]


async def test_other_providers_use_the_estimate() -> None:
    for provider, base_url in (("anthropic", "https://api.anthropic.com/v1"), ("lmstudio", None)):
        counter = TokenCounter(provider=provider, model="claude", base_url=base_url)
        assert counter.name == ESTIMATE_COUNTER
        assert await counter.count("x" * 9) == TokenCount(3, ESTIMATE_COUNTER)
        assert await counter.count_many(["", "abcd"]) == [
            TokenCount(0, ESTIMATE_COUNTER),
            TokenCount(1, ESTIMATE_COUNTER),
        ]


def test_openai_counter_names_the_models_encoding() -> None:
    # Names only: reading them loads nothing.
    assert TokenCounter(provider="openai", model="gpt-4o", base_url=None).name == (
        "tiktoken:o200k_base"
    )
    assert TokenCounter(provider="openai", model="gpt-4", base_url=None).name == (
        "tiktoken:cl100k_base"
    )
    assert TokenCounter(provider="openai", model="some-future-model", base_url=None).name == (
        "tiktoken:o200k_base"
    )


async def test_tiktoken_load_failure_falls_back_to_the_estimate(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import tiktoken.registry

    # No cached BPE file, no encodings loaded earlier in this process, and every download goes
    # to a proxy port nobody listens on: the load fails fast, with or without internet.
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(name, dead_proxy)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    caplog.set_level(logging.WARNING, logger="llm_app.tokens")

    counter = TokenCounter(provider="openai", model="gpt-4o", base_url=None)
    assert await counter.count("hello world") == TokenCount(3, ESTIMATE_COUNTER)
    assert await counter.count_many(["abcde", ""]) == [
        TokenCount(2, ESTIMATE_COUNTER),
        TokenCount(0, ESTIMATE_COUNTER),
    ]
    assert counter.name == ESTIMATE_COUNTER
    warnings = [r for r in caplog.records if "tiktoken could not load o200k_base" in r.message]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING


async def test_tiktoken_counts_when_its_encoding_loads() -> None:
    counter = TokenCounter(provider="openai", model="gpt-4o", base_url=None)
    first = await counter.count("Hello, world! <|endoftext|> is plain text here.")
    if first.counter == ESTIMATE_COUNTER:
        pytest.skip(
            "tiktoken cannot load o200k_base here: no internet to download the BPE file and "
            "no TIKTOKEN_CACHE_DIR holding it (the fallback is tested above)"
        )
    import tiktoken

    encoding = tiktoken.get_encoding("o200k_base")
    texts = ["Hello, world!", "", "Ünïcödé 🙂"]
    counts = await counter.count_many(texts)
    assert counts == [
        TokenCount(len(encoding.encode_ordinary(t)), "tiktoken:o200k_base") for t in texts
    ]
    assert first.counter == counter.name == "tiktoken:o200k_base"


async def test_tiktoken_path_with_a_stand_in_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """The success path without the BPE download: one token per UTF-8 byte."""
    import tiktoken

    loaded: list[str] = []

    def byte_encoding(name: str) -> tiktoken.Encoding:
        loaded.append(name)
        return tiktoken.Encoding(
            name=name,
            pat_str=r"\S+|\s+",
            mergeable_ranks={bytes([i]): i for i in range(256)},
            special_tokens={"<|endoftext|>": 256},
        )

    monkeypatch.setattr(tiktoken, "get_encoding", byte_encoding)
    counter = TokenCounter(provider="openai", model="gpt-4", base_url=None)
    texts = ["hello", "", "é🙂", "<|endoftext|>"]
    counts = await counter.count_many(texts)
    # Special-token text counts as the plain text it is, byte by byte.
    assert counts == [TokenCount(n, "tiktoken:cl100k_base") for n in (5, 0, 6, 13)]
    assert counter.name == "tiktoken:cl100k_base"
    # Loaded once per process, shared by new counters.
    other = TokenCounter(provider="openai", model="gpt-3.5-turbo", base_url=None)
    assert await other.count("abc") == TokenCount(3, "tiktoken:cl100k_base")
    assert loaded == ["cl100k_base"]

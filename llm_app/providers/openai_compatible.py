"""OpenAI-compatible streaming chat: LM Studio, llama-server, vLLM, Ollama and OpenAI itself.

The chat call is a plain aiohttp request with an orjson body, and the server-sent events are
parsed here (llm_app.providers.openai_stream), not by the openai SDK, whose SSE decoder and
pydantic model per chunk, and whose recursive transform of `messages` per request, were most
of the worker's CPU per token (bench/parse_micro.py compares the two). The body sent, the
chunks yielded and the errors raised are the SDK path's; the SDK is not imported here.
aiohttp rather than httpx: with its C HTTP parser and no per-read cancel scopes it costs less
than half the CPU per streamed reply, and its pool does not scan every connection per request
(both measured, bench/RESULTS.md).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from llm_app.providers.base import ChatRequest, ProviderError, StreamChunk
from llm_app.providers.openai_stream import ChatStreamParser

# OpenAI's chat API takes at most this many stop sequences.
OPENAI_MAX_STOP = 4
# The openai SDK's default base URL, used when neither the settings nor OPENAI_BASE_URL give one.
OPENAI_BASE_URL = "https://api.openai.com/v1"
# As the openai SDK's connection pool; the provider is kept per event loop (providers/__init__.py).
MAX_CONNECTIONS = 1000
# How much of an error response is read (into the ProviderError's __cause__, for debugging).
ERROR_BODY_LIMIT = 64 * 1024
# How much is read after `data: [DONE]` so that the connection goes back to the pool: the end
# of the chunked body, normally; a server that keeps talking past this gets its connection closed.
DRAIN_LIMIT = 64 * 1024


def request_options(request: ChatRequest, *, openai_api: bool) -> dict[str, Any]:
    """The sampling arguments of `chat.completions.create` for `request`.

    Fields the request leaves unset are not sent. `openai_api` (OpenAI's own cloud) gets only
    OpenAI parameters; other servers (llama-server, LM Studio, vLLM, Ollama) also get
    llama.cpp's `repeat_penalty` through the SDK's `extra_body`, which servers that do not
    know it ignore.
    """
    options: dict[str, Any] = {
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
    }
    if request.stop:
        options["stop"] = list(request.stop[:OPENAI_MAX_STOP] if openai_api else request.stop)
    if request.frequency_penalty is not None:
        options["frequency_penalty"] = request.frequency_penalty
    if request.presence_penalty is not None:
        options["presence_penalty"] = request.presence_penalty
    if not openai_api and request.repeat_penalty is not None:
        options["extra_body"] = {"repeat_penalty": request.repeat_penalty}
    return options


def request_body(request: ChatRequest, *, openai_api: bool) -> dict[str, Any]:
    """The JSON body of the streaming chat call: what the SDK's `chat.completions.create(
    stream=True, stream_options={"include_usage": True}, **request_options(...))` sends, keys
    in the same order (messages, model, the rest by name) and `extra_body` merged in last."""
    options = request_options(request, openai_api=openai_api)
    extra_body = options.pop("extra_body", None)
    options["stream"] = True
    options["stream_options"] = {"include_usage": True}
    body: dict[str, Any] = {"messages": request.messages, "model": request.model}
    body.update(sorted(options.items()))
    if extra_body:
        body.update(extra_body)
    return body


class LLMHTTPStatus(Exception):
    """An error answer, kept as the ProviderError's __cause__: its status and body."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body.decode('utf-8', 'replace')}")
        self.status = status
        self.body = body


def _status_error(status: int) -> ProviderError:
    if status == 429:
        return ProviderError("llm_rate_limited", "The LLM is rate limited.", retryable=True)
    return ProviderError("llm_error", f"The LLM answered HTTP {status}.", retryable=status >= 500)


async def _error_body(response: aiohttp.ClientResponse) -> bytes:
    """The start of an error answer; whatever could be read if reading it fails."""
    body = b""
    try:
        async for data in response.content.iter_any():
            body += data
            if len(body) >= ERROR_BODY_LIMIT:
                break
    except (aiohttp.ClientError, TimeoutError, ValueError):
        pass
    return body[:ERROR_BODY_LIMIT]


def _bad_stream() -> ProviderError:
    return ProviderError("llm_bad_stream", "The LLM stream broke off or was malformed.")


def coalesce(chunks: list[StreamChunk]) -> list[StreamChunk]:
    """The chunks of one network read, with consecutive text pieces joined into one.

    Only what has already arrived together is joined, so no piece ever waits for another: a
    worker keeping up sees one piece per read and publishes each at once; one that falls behind
    publishes the backlog as one delta instead of many (fewer log entries and frames)."""
    if len(chunks) < 2:
        return chunks
    out: list[StreamChunk] = []
    for chunk in chunks:
        last = out[-1] if out else None
        if (
            last is not None
            and chunk.text
            and last.text
            and last.finish_reason is None
            and last.prompt_tokens is None
            and chunk.prompt_tokens is None
        ):
            out[-1] = StreamChunk(text=last.text + chunk.text, finish_reason=chunk.finish_reason)
        else:
            out.append(chunk)
    return out


class OpenAICompatibleProvider:
    name = "openai_compatible"

    def __init__(
        self, *, base_url: str | None, api_key: str, timeout: float, openai_api: bool = False
    ) -> None:
        # openai_api: the server is OpenAI's, which rejects parameters of other servers.
        self._openai_api = openai_api
        # As the SDK: no base_url means OPENAI_BASE_URL, else OpenAI's cloud.
        root = base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_BASE_URL
        self._url = f"{root.rstrip('/')}/chat/completions"
        headers = {
            "Authorization": f"Bearer {api_key or 'not-needed'}",
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
        }
        # The SDK sends these too when they are set.
        for header, variable in (
            ("OpenAI-Organization", "OPENAI_ORG_ID"),
            ("OpenAI-Project", "OPENAI_PROJECT_ID"),
        ):
            value = os.environ.get(variable)
            if value:
                headers[header] = value
        self._headers = headers
        # The read timeout bounds the wait for every chunk, so a stalled stream fails too.
        self._timeout = aiohttp.ClientTimeout(
            total=None, connect=min(timeout, 10.0), sock_read=timeout
        )
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        # One pool per provider (kept per event loop): connections are reused across replies.
        # Made on first use, inside the loop it belongs to.
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self._headers,
                timeout=self._timeout,
                connector=aiohttp.TCPConnector(limit=MAX_CONNECTIONS, limit_per_host=0),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        try:
            content = orjson.dumps(request_body(request, openai_api=self._openai_api))
        except orjson.JSONEncodeError as exc:
            # Text that is not UTF-8 (a lone surrogate): the SDK's json encoding failed with a
            # ValueError, which was reported as a bad stream too.
            raise _bad_stream() from exc
        try:
            response = await self._client().post(self._url, data=content)
        except TimeoutError as exc:  # aiohttp's connect and read timeouts are TimeoutErrors
            raise ProviderError("llm_timeout", "The LLM did not answer in time.") from exc
        except (aiohttp.ClientError, ValueError, OSError) as exc:
            # As the SDK's APIConnectionError: no answer at all (refused, reset, bad URL, ...).
            raise ProviderError(
                "llm_unavailable", "The LLM server cannot be reached.", retryable=True
            ) from exc
        parser = ChatStreamParser()
        complete = False
        try:
            if response.status >= 400:
                status = response.status
                raise _status_error(status) from LLMHTTPStatus(status, await _error_body(response))
            drained = 0
            async for data in response.content.iter_any():
                if parser.done:
                    # Read to the end so that the connection can be reused, within reason.
                    drained += len(data)
                    if drained > DRAIN_LIMIT:
                        break
                    continue
                try:
                    chunks = parser.feed(data)
                except ValueError as exc:
                    # What arrived before the bad event, in the same read, still goes out.
                    for chunk in coalesce(getattr(exc, "parsed", [])):
                        yield chunk
                    raise
                for chunk in coalesce(chunks):
                    yield chunk
            else:
                complete = True
            for chunk in parser.finish():
                yield chunk
        except TimeoutError as exc:
            if not parser.done:
                raise ProviderError("llm_timeout", "The LLM did not answer in time.") from exc
        except (aiohttp.ClientError, ValueError) as exc:
            # A malformed SSE line or a connection cut mid-body. After [DONE] the reply is
            # complete whatever happens to the rest of the body.
            if not parser.done:
                raise _bad_stream() from exc
        finally:
            if complete:
                response.release()  # read to its end: the connection goes back to the pool
            else:
                # Also on cancel or when the consumer stops early: closing the connection
                # stops the LLM generating for nobody.
                response.close()

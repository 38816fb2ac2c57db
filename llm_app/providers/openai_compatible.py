"""OpenAI-compatible streaming chat: LM Studio, llama-server, vLLM, Ollama and OpenAI itself."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import httpx
import openai

from llm_app.providers.base import ChatRequest, ProviderError, StreamChunk

# OpenAI's chat API takes at most this many stop sequences.
OPENAI_MAX_STOP = 4


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


class OpenAICompatibleProvider:
    name = "openai_compatible"

    def __init__(
        self, *, base_url: str | None, api_key: str, timeout: float, openai_api: bool = False
    ) -> None:
        # openai_api: the server is OpenAI's, which rejects parameters of other servers.
        self._openai_api = openai_api
        # The read timeout bounds the wait for every chunk, so a stalled stream fails too.
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key or "not-needed",
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            max_retries=0,
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        try:
            stream = await self._client.chat.completions.create(
                model=request.model,
                messages=cast(Any, request.messages),
                stream=True,
                stream_options={"include_usage": True},
                **request_options(request, openai_api=self._openai_api),
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
                # Also on cancel: closing the response stops the LLM generating for nobody.
                await stream.close()
        except (openai.APITimeoutError, httpx.TimeoutException) as exc:
            raise ProviderError("llm_timeout", "The LLM did not answer in time.") from exc
        except openai.APIConnectionError as exc:
            raise ProviderError(
                "llm_unavailable", "The LLM server cannot be reached.", retryable=True
            ) from exc
        except openai.RateLimitError as exc:
            raise ProviderError(
                "llm_rate_limited", "The LLM is rate limited.", retryable=True
            ) from exc
        except openai.APIStatusError as exc:
            raise ProviderError(
                "llm_error",
                f"The LLM answered HTTP {exc.status_code}.",
                retryable=exc.status_code >= 500,
            ) from exc
        except (httpx.HTTPError, ValueError, openai.APIError) as exc:
            # A malformed SSE line or a connection cut mid-body ends up here.
            raise ProviderError(
                "llm_bad_stream", "The LLM stream broke off or was malformed."
            ) from exc

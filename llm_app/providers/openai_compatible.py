"""OpenAI-compatible streaming chat: LM Studio, llama-server, vLLM, Ollama and OpenAI itself."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import httpx
import openai

from llm_app.providers.base import ChatRequest, ProviderError, StreamChunk


class OpenAICompatibleProvider:
    name = "openai_compatible"

    def __init__(self, *, base_url: str | None, api_key: str, timeout: float) -> None:
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
                temperature=request.temperature,
                max_tokens=request.max_tokens,
                stream=True,
                stream_options={"include_usage": True},
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

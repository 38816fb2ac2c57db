"""Anthropic Messages API streaming chat, through the official anthropic SDK.

Our prompts are OpenAI-shaped (system/user/assistant messages in one list); this module reshapes
them for the Messages API and maps its stream events and stop reasons back to the OpenAI
vocabulary the rest of the service speaks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, cast

import anthropic
import httpx

from llm_app.providers.base import ChatRequest, ProviderError, StreamChunk

# Sent as the first user turn when a conversation opens with the character's greeting.
CONVERSATION_START = "(conversation start)"

# Anthropic stop reasons in OpenAI's finish_reason vocabulary, which generation.py and the
# clients expect. Anything else (tool_use, refusal, pause_turn) is passed through unchanged.
_FINISH_REASONS = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}


def to_anthropic_messages(
    messages: list[dict[str, str]],
) -> tuple[str | None, list[dict[str, str]]]:
    """Split OpenAI-style chat messages into Anthropic's `system` and `messages` parameters.

    The Messages API has no system role, and it rejects a conversation that does not alternate
    user/assistant turns or that does not start with a user turn. So system messages are joined
    into `system`, consecutive messages of the same role are merged (blank line between), and
    when the conversation starts with an assistant message (our conversations open with the
    character's greeting) a user message "(conversation start)" is put before it.
    """
    system_parts: list[str] = []
    turns: list[dict[str, str]] = []
    for message in messages:
        role, content = message.get("role", "user"), message.get("content", "")
        if role == "system":
            if content:
                system_parts.append(content)
            continue
        # Empty text blocks are rejected by the API; an empty turn carries nothing anyway.
        if not content:
            continue
        role = "assistant" if role == "assistant" else "user"
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"] = f"{turns[-1]['content']}\n\n{content}"
        else:
            turns.append({"role": role, "content": content})
    if not turns or turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": CONVERSATION_START})
    system = "\n\n".join(system_parts) if system_parts else None
    return system, turns


def _status_error(exc: anthropic.APIStatusError) -> ProviderError:
    status = exc.status_code
    if status < 400:
        # An `error` event inside a 200 stream (e.g. overloaded_error mid-reply): the SDK raises
        # it with the stream's status, so the error type in the body is all there is to go by.
        body = exc.body if isinstance(exc.body, dict) else {}
        error = body.get("error") if isinstance(body.get("error"), dict) else body
        kind = str(error.get("type", "")) if isinstance(error, dict) else ""
        if kind == "rate_limit_error":
            return ProviderError("llm_rate_limited", "The LLM is rate limited.", retryable=True)
        return ProviderError(
            "llm_error",
            f"The LLM reported {kind or 'an error'} mid-stream.",
            retryable=kind in ("overloaded_error", "api_error"),
        )
    return ProviderError("llm_error", f"The LLM answered HTTP {status}.", retryable=status >= 500)


def _input_tokens(usage: Any, current: int | None) -> int | None:
    # Cached prompt tokens are counted apart from input_tokens, but they are prompt all the same.
    if usage is None or getattr(usage, "input_tokens", None) is None:
        return current
    total = int(usage.input_tokens)
    for extra in ("cache_creation_input_tokens", "cache_read_input_tokens"):
        total += int(getattr(usage, extra, None) or 0)
    return total


class AnthropicProvider:
    name = "anthropic"

    def __init__(self, *, api_key: str, timeout: float, base_url: str | None = None) -> None:
        self._api_key = api_key
        # The read timeout bounds the wait for every event, so a stalled stream fails too.
        # No SDK retries: a retry after tokens were shown would duplicate them.
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=base_url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            max_retries=0,
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]:
        if not self._api_key:
            # The SDK would raise a bare TypeError at request time for a missing key.
            raise ProviderError("llm_error", "No Anthropic API key is configured.")
        system, messages = to_anthropic_messages(request.messages)
        options: dict[str, Any] = {} if system is None else {"system": system}
        # The Messages API rejects stop sequences of only whitespace; it has no penalties.
        stop_sequences = [s for s in request.stop if s.strip()]
        if stop_sequences:
            options["stop_sequences"] = stop_sequences
        prompt_tokens: int | None = None
        stop_reason: str | None = None
        try:
            stream = await self._client.messages.create(
                model=request.model,
                messages=cast(Any, messages),
                temperature=request.temperature,
                max_tokens=request.max_tokens,
                stream=True,
                **options,
            )
            try:
                async for event in stream:
                    if event.type == "message_start":
                        prompt_tokens = _input_tokens(event.message.usage, prompt_tokens)
                    elif event.type == "content_block_delta":
                        # Thinking and tool-input deltas are not part of the visible reply.
                        if event.delta.type == "text_delta" and event.delta.text:
                            yield StreamChunk(text=event.delta.text)
                    elif event.type == "message_delta":
                        stop_reason = event.delta.stop_reason or stop_reason
                        # output_tokens is cumulative; message_delta may also restate input tokens.
                        prompt_tokens = _input_tokens(event.usage, prompt_tokens)
                        yield StreamChunk(
                            prompt_tokens=prompt_tokens,
                            completion_tokens=event.usage.output_tokens,
                        )
                    elif event.type == "message_stop":
                        # Only now is the reply known to be complete: a stream cut before this
                        # yields no finish_reason, which the caller reports as a broken stream.
                        reason = stop_reason or "end_turn"
                        yield StreamChunk(finish_reason=_FINISH_REASONS.get(reason, reason))
            finally:
                # Also on cancel: closing the response stops the LLM generating for nobody.
                await stream.close()
        except (anthropic.APITimeoutError, httpx.TimeoutException) as exc:
            raise ProviderError("llm_timeout", "The LLM did not answer in time.") from exc
        except anthropic.APIConnectionError as exc:
            raise ProviderError(
                "llm_unavailable", "The LLM server cannot be reached.", retryable=True
            ) from exc
        except anthropic.RateLimitError as exc:
            raise ProviderError(
                "llm_rate_limited", "The LLM is rate limited.", retryable=True
            ) from exc
        except anthropic.APIStatusError as exc:
            raise _status_error(exc) from exc
        except (httpx.HTTPError, ValueError, anthropic.APIError) as exc:
            # A malformed SSE line or a connection cut mid-body ends up here.
            raise ProviderError(
                "llm_bad_stream", "The LLM stream broke off or was malformed."
            ) from exc

"""What every LLM provider offers: one streaming chat call that yields text pieces."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol


def _optional_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion. Sampling fields left at their defaults are not sent, so the
    server's own defaults apply; each provider sends only what its API accepts."""

    model: str
    messages: list[dict[str, str]]
    temperature: float
    max_tokens: int
    # The reply ends (finish_reason "stop") before any of these strings.
    stop: tuple[str, ...] = ()
    # OpenAI's penalties (-2..2; llama-server applies them to its last repeat_last_n tokens).
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    # llama.cpp's multiplicative repetition penalty (1.0 = off). Not an OpenAI parameter: sent
    # as an extra body field to OpenAI-compatible servers, never to OpenAI or Anthropic.
    repeat_penalty: float | None = None

    @classmethod
    def from_params(
        cls, *, model: str, messages: list[dict[str, str]], params: dict[str, Any]
    ) -> ChatRequest:
        """The request for a generation's saved `params` (llm_app.services.generation_settings).

        Keys missing from older generations' params fall back to the server's defaults.
        """
        stop = params.get("stop") or ()
        return cls(
            model=model,
            messages=messages,
            temperature=float(params["temperature"]),
            max_tokens=int(params["max_tokens"]),
            stop=(stop,) if isinstance(stop, str) else tuple(str(s) for s in stop if s),
            frequency_penalty=_optional_float(params.get("frequency_penalty")),
            presence_penalty=_optional_float(params.get("presence_penalty")),
            repeat_penalty=_optional_float(params.get("repeat_penalty")),
        )


@dataclass
class StreamChunk:
    """A piece of the reply. The last chunk of a good stream has a finish_reason."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class ProviderError(Exception):
    """The provider failed. `code` reaches the client in `generation.failed`."""

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable


class Provider(Protocol):
    name: str

    def stream(self, request: ChatRequest) -> AsyncIterator[StreamChunk]: ...

    async def aclose(self) -> None: ...

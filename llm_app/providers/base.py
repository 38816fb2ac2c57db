"""What every LLM provider offers: one streaming chat call that yields text pieces."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: list[dict[str, str]]
    temperature: float
    max_tokens: int

    @classmethod
    def from_params(
        cls, *, model: str, messages: list[dict[str, str]], params: dict[str, Any]
    ) -> ChatRequest:
        """The request for a generation's saved `params` (llm_app.services.generation_settings)."""
        return cls(
            model=model,
            messages=messages,
            temperature=float(params["temperature"]),
            max_tokens=int(params["max_tokens"]),
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

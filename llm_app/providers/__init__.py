"""Provider registry: names from DEFAULT_LLM_PROVIDER / Character.provider to implementations."""

from __future__ import annotations

from django.conf import settings

from llm_app.providers.base import ChatRequest, Provider, ProviderError, StreamChunk
from llm_app.providers.openai_compatible import OpenAICompatibleProvider

__all__ = ["PROVIDERS", "ChatRequest", "Provider", "ProviderError", "StreamChunk", "get_provider"]

# lmstudio is the seed's name for the same wire protocol.
PROVIDERS = ("lmstudio", "openai_compatible", "openai")


def get_provider(name: str) -> Provider:
    """A fresh provider client. Raises ProviderError for a name no provider answers to."""
    timeout = settings.REQUEST_TIMEOUT_SECONDS
    if name in ("lmstudio", "openai_compatible"):
        return OpenAICompatibleProvider(
            base_url=settings.LLM_SERVICE_URL, api_key=settings.LLM_API_KEY, timeout=timeout
        )
    if name == "openai":
        return OpenAICompatibleProvider(
            base_url=None, api_key=settings.OPENAI_API_KEY, timeout=timeout
        )
    raise ProviderError("unknown_provider", f"No LLM provider is called {name!r}.")

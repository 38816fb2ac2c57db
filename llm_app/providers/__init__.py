"""Provider registry: names from DEFAULT_LLM_PROVIDER / Character.provider to implementations.

Clients are kept per event loop and reused across generations: one HTTP connection pool per
provider and loop instead of a new one per reply.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref

import httpx
from django.conf import settings

from llm_app.providers.base import ChatRequest, Provider, ProviderError, StreamChunk
from llm_app.providers.openai_compatible import OpenAICompatibleProvider

__all__ = [
    "ChatRequest",
    "Provider",
    "ProviderError",
    "StreamChunk",
    "close_providers",
    "get_provider",
    "provider_for",
    "shared_http",
]

_cache: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, ...], Provider]] = (
    weakref.WeakKeyDictionary()
)


def _config(name: str) -> tuple[str, ...]:
    timeout = str(settings.REQUEST_TIMEOUT_SECONDS)
    # lmstudio is the seed's name for the same wire protocol.
    if name in ("lmstudio", "openai_compatible"):
        return ("openai_compatible", settings.LLM_SERVICE_URL, settings.LLM_API_KEY, timeout)
    if name == "openai":
        return ("openai", "", settings.OPENAI_API_KEY, timeout)
    if name == "anthropic":
        return ("anthropic", settings.ANTHROPIC_BASE_URL, settings.ANTHROPIC_API_KEY, timeout)
    raise ProviderError("unknown_provider", f"No LLM provider is called {name!r}.")


def get_provider(name: str) -> Provider:
    """A new provider client. Raises ProviderError for a name no provider answers to."""
    kind, base_url, api_key, timeout = _config(name)
    if kind == "anthropic":
        from llm_app.providers.anthropic import AnthropicProvider

        return AnthropicProvider(api_key=api_key, timeout=float(timeout), base_url=base_url or None)
    return OpenAICompatibleProvider(
        base_url=base_url or None,
        api_key=api_key,
        timeout=float(timeout),
        openai_api=kind == "openai",
    )


def provider_for(name: str) -> Provider:
    """The running loop's client for `name` (settings are part of the key)."""
    key = _config(name)
    providers = _cache.setdefault(asyncio.get_running_loop(), {})
    provider = providers.get(key)
    if provider is None:
        provider = providers[key] = get_provider(name)
    return provider


_http: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
    weakref.WeakKeyDictionary()
)


def shared_http() -> httpx.AsyncClient:
    """The running loop's plain HTTP client (token counting): one pool, not one per call."""
    loop = asyncio.get_running_loop()
    client = _http.get(loop)
    if client is None or client.is_closed:
        client = _http[loop] = httpx.AsyncClient(
            timeout=2.0, limits=httpx.Limits(max_connections=16, max_keepalive_connections=16)
        )
    return client


async def close_providers() -> None:
    """Close the running loop's clients (before the loop ends)."""
    loop = asyncio.get_running_loop()
    for provider in _cache.pop(loop, {}).values():
        with contextlib.suppress(Exception):
            await provider.aclose()
    http = _http.pop(loop, None)
    if http is not None:
        await http.aclose()

"""Chat sampling (stop strings, penalties, reply length) from the settings to the wire.

generation_settings fills a generation's params, ChatRequest.from_params reads them, and each
provider sends what its API takes: checked on the requests the fake LLM records.
"""

from __future__ import annotations

from typing import Any, cast

import pytest

from fake_llm import FakeLLMServer, Script
from llm_app.providers.anthropic import AnthropicProvider
from llm_app.providers.base import ChatRequest, StreamChunk
from llm_app.providers.openai_compatible import OpenAICompatibleProvider
from llm_app.services import generation_settings
from messages_app.models import Character
from tests.factories import CharacterFactory
from tests.helpers import run_llm_worker

MESSAGES = [{"role": "system", "content": "You are Ada."}, {"role": "user", "content": "Hi"}]
STOPS = ["\nUser:", "<|im_end|>", "<|im_start|>", "\n\n\n", "###"]


def _character(**fields: Any) -> Character:
    character: Any = CharacterFactory(**fields)
    return cast(Character, character)


def _request(**fields: Any) -> ChatRequest:
    return ChatRequest(
        **{"model": "m", "messages": MESSAGES, "temperature": 0.5, "max_tokens": 20, **fields}
    )


async def _stream(provider: Any, request: ChatRequest) -> list[StreamChunk]:
    try:
        return [chunk async for chunk in provider.stream(request)]
    finally:
        await provider.aclose()


def _finish(chunks: list[StreamChunk]) -> list[str]:
    return [c.finish_reason for c in chunks if c.finish_reason]


@pytest.mark.django_db
def test_generation_settings_carry_the_chat_sampling_defaults(settings: Any) -> None:
    settings.DEFAULT_MAX_TOKENS = 180
    settings.MAX_TOKENS_PER_REQUEST = 2048
    settings.DEFAULT_REPEAT_PENALTY = 1.2
    settings.DEFAULT_FREQUENCY_PENALTY = 0.3
    settings.DEFAULT_PRESENCE_PENALTY = 0.0
    settings.DEFAULT_STOP_SEQUENCES = ["\nUser:", "<|im_end|>"]
    params = generation_settings(_character(temperature=None, max_tokens=None))["params"]
    assert params == {
        "temperature": settings.DEFAULT_TEMPERATURE,
        "max_tokens": 180,
        "stop": ["\nUser:", "<|im_end|>"],
        "repeat_penalty": 1.2,
        "frequency_penalty": 0.3,
    }
    # The character's reply length wins, within MAX_TOKENS_PER_REQUEST; so does the default.
    assert generation_settings(_character(max_tokens=64))["params"]["max_tokens"] == 64
    settings.MAX_TOKENS_PER_REQUEST = 100
    assert generation_settings(_character(max_tokens=500))["params"]["max_tokens"] == 100
    assert generation_settings(_character(max_tokens=None))["params"]["max_tokens"] == 100


def test_from_params_maps_every_field_and_reads_older_params() -> None:
    params = {
        "temperature": 0.4,
        "max_tokens": 99,
        "stop": ["\nUser:", "", "<|im_end|>"],
        "repeat_penalty": 1.15,
        "frequency_penalty": 0.5,
        "presence_penalty": -0.25,
    }
    request = ChatRequest.from_params(model="m", messages=MESSAGES, params=params)
    assert request == ChatRequest(
        model="m",
        messages=MESSAGES,
        temperature=0.4,
        max_tokens=99,
        stop=("\nUser:", "<|im_end|>"),
        repeat_penalty=1.15,
        frequency_penalty=0.5,
        presence_penalty=-0.25,
    )
    # Params saved before these fields existed (queued generations): the server's defaults.
    old = ChatRequest.from_params(
        model="m", messages=MESSAGES, params={"temperature": 0.7, "max_tokens": 48}
    )
    assert (old.stop, old.repeat_penalty, old.frequency_penalty, old.presence_penalty) == (
        (),
        None,
        None,
        None,
    )
    assert ChatRequest.from_params(
        model="m", messages=MESSAGES, params={**params, "stop": "END"}
    ).stop == ("END",)


async def test_openai_compatible_servers_get_stop_penalties_and_repeat_penalty(
    fresh_server: FakeLLMServer,
) -> None:
    fresh_server.push(Script.from_text("Hello there.\nUser: and now I talk for the user"))
    provider = OpenAICompatibleProvider(base_url=fresh_server.base_url, api_key="", timeout=5)
    request = _request(stop=tuple(STOPS), repeat_penalty=1.15, frequency_penalty=0.2)
    chunks = await _stream(provider, request)
    [body] = fresh_server.requests
    assert body["stop"] == STOPS
    assert body["repeat_penalty"] == 1.15
    assert body["frequency_penalty"] == 0.2
    assert "presence_penalty" not in body
    assert (body["temperature"], body["max_tokens"]) == (0.5, 20)
    # The reply ends before the stop string, with finish_reason stop.
    assert "".join(c.text for c in chunks) == "Hello there."
    assert _finish(chunks) == ["stop"]


async def test_unset_sampling_fields_are_not_sent(fresh_server: FakeLLMServer) -> None:
    fresh_server.push(Script.from_text("Hi."))
    provider = OpenAICompatibleProvider(base_url=fresh_server.base_url, api_key="", timeout=5)
    await _stream(provider, _request())
    [body] = fresh_server.requests
    for name in ("stop", "repeat_penalty", "frequency_penalty", "presence_penalty"):
        assert name not in body


async def test_openai_gets_only_openai_parameters(fresh_server: FakeLLMServer) -> None:
    """OpenAI's cloud rejects unknown body fields and more than 4 stop strings."""
    fresh_server.push(Script.from_text("Hi."))
    provider = OpenAICompatibleProvider(
        base_url=fresh_server.base_url, api_key="k", timeout=5, openai_api=True
    )
    request = _request(stop=tuple(STOPS), repeat_penalty=1.15, presence_penalty=0.1)
    await _stream(provider, request)
    [body] = fresh_server.requests
    assert body["stop"] == STOPS[:4]
    assert body["presence_penalty"] == 0.1
    assert "repeat_penalty" not in body


def test_provider_openai_is_built_for_openai_only(settings: Any) -> None:
    from llm_app.providers import get_provider

    assert getattr(get_provider("openai"), "_openai_api", None) is True
    assert getattr(get_provider("lmstudio"), "_openai_api", None) is False
    assert getattr(get_provider("openai_compatible"), "_openai_api", None) is False


async def test_anthropic_gets_stop_sequences_without_whitespace_ones(
    fresh_server: FakeLLMServer,
) -> None:
    fresh_server.push(Script.from_text("Aye, captain. ### and more"))
    provider = AnthropicProvider(api_key="k", timeout=5, base_url=fresh_server.url)
    chunks = await _stream(provider, _request(stop=tuple(STOPS), repeat_penalty=1.15))
    [body] = fresh_server.requests
    # Whitespace-only stop sequences are refused by the Messages API; it has no penalties.
    assert body["stop_sequences"] == ["\nUser:", "<|im_end|>", "<|im_start|>", "###"]
    assert not {"stop", "repeat_penalty", "frequency_penalty", "presence_penalty"} & set(body)
    assert "".join(c.text for c in chunks) == "Aye, captain. "
    assert _finish(chunks) == ["stop"]


@pytest.mark.django_db(transaction=True)
def test_a_reply_sends_the_settings_sampling_through_the_service(
    api: Any, conversation: Any, fake_llm: FakeLLMServer, settings: Any
) -> None:
    settings.DEFAULT_MAX_TOKENS = 150
    settings.DEFAULT_REPEAT_PENALTY = 1.15
    settings.DEFAULT_STOP_SEQUENCES = ["\nUser:", "<|im_end|>"]
    fake_llm.push(Script.from_text("Ahoy!\nUser: what next?"))
    url = f"/api/v1/conversations/{conversation.pk}/messages/"
    reply_id = api.post(url, {"content": "hi"}, format="json").json()["assistant_message"]["id"]
    run_llm_worker()
    sent = fake_llm.requests[-1]
    assert (sent["max_tokens"], sent["repeat_penalty"]) == (150, 1.15)
    assert sent["stop"] == ["\nUser:", "<|im_end|>"]
    from messages_app.models import Message

    reply = Message.objects.get(pk=reply_id)
    assert (reply.status, reply.content) == ("completed", "Ahoy!")

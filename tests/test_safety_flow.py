"""Content safety in the message flow, against a real safety worker process (local backend):
input blocked or flagged on REST and the websocket, live output checks that stop a reply,
and what users may and may not see of a blocked reply."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.conf import settings

from fake_llm import Script
from messages_app.models import Message, ReviewItem
from messages_app.safety.client import alive_key
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
    # Its reply was queued with it (the check ran while the generation started) and ended
    # `blocked` with no text; its job, when a worker takes it, never asks the LLM.
    (reply,) = blocked.children.all()
    assert (reply.status, reply.content, reply.finish_reason) == ("blocked", "", "input_blocked")
    run_llm_worker()
    assert fake_llm.requests == []
    item = ReviewItem.objects.get(message=blocked)
    assert (item.source, item.blocked, item.state, item.content) == (
        "input",
        True,
        "pending",
        INSULT,
    )
    # The user's history shows it, marked blocked; its reply shows nothing.
    page = api.get(f"/api/v1/conversations/{conversation.pk}/messages/").json()["results"]
    assert [m["id"] for m in page[-2:]] == [blocked.pk, reply.pk]
    assert page[-2]["status"] == "blocked"
    assert page[-2]["safety"] == {"flagged": True, "categories": ["harassment"]}
    assert (page[-1]["status"], page[-1]["content"]) == ("blocked", "")

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
    assert [m.status for m in edited.children.all()] == ["blocked"]


def test_with_no_safety_worker_running_the_send_is_503_at_once_and_nothing_is_saved(
    api, conversation, filtering, fake_llm
):
    # Another installation's name: no safety worker serves it (none keeps its alive key).
    filtering.SERVICE_NAME = "no-safety-worker-here"
    count = Message.objects.count()
    began = time.monotonic()
    response = _send(api, conversation, "Hello")
    assert time.monotonic() - began < filtering.SAFETY_TIMEOUT_SECONDS, "no wait for a timeout"
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "safety_unavailable"
    assert Message.objects.count() == count
    assert llm_jobs() == []
    filtering.SAFETY_ON_ERROR = "allow"
    assert _send(api, conversation, "Hello").status_code == 202


def test_with_no_answer_in_time_the_send_is_503_and_kept_not_sent(
    api, conversation, filtering, fake_llm
):
    # A worker seems alive for this installation, but none answers its requests.
    filtering.SERVICE_NAME = "silent-safety-worker"
    filtering.SAFETY_TIMEOUT_SECONDS = 0.3
    redis.Redis.from_url(settings.REDIS_URL).set(alive_key(), "local", ex=60)
    response = _send(api, conversation, "Hello")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "safety_unavailable"
    # Kept as not sent: the message `failed`, its reply `failed` with no text, no LLM call.
    sent = Message.objects.get(role="user", content="Hello")
    (reply,) = sent.children.all()
    assert (sent.status, sent.finish_reason) == ("failed", "safety_unavailable")
    assert (reply.status, reply.content) == ("failed", "")
    run_llm_worker()
    assert fake_llm.requests == []
    filtering.SAFETY_ON_ERROR = "allow"
    assert _send(api, conversation, "Hello again").status_code == 202


async def test_a_blocked_input_on_the_websocket_is_an_error_frame_and_a_blocked_message(
    conversation, alice_headers, filtering, fake_llm
):
    comm = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    assert (await comm.connect())[0]
    await comm.send_json_to({"type": "message.send", "content": INSULT, "client_id": "c-9"})
    # The error comes straight to this socket; the rest through the conversation's group, in
    # whichever order.
    frames = [await comm.receive_json_from(timeout=10) for _ in range(5)]
    await comm.disconnect()
    types = sorted(f["type"] for f in frames)
    assert types == [
        "error",
        "generation.failed",
        "message.created",
        "message.created",
        "safety.flagged",
    ]
    by_type = {f["type"]: f for f in frames}
    error = by_type["error"]["error"]
    assert error["code"] == "content_blocked"
    assert error["details"]["categories"] == ["harassment"]
    user_created, reply_created = [f["message"] for f in frames if f["type"] == "message.created"]
    assert user_created["id"] == error["details"]["message_id"]
    assert user_created["client_id"] == "c-9"
    assert by_type["safety.flagged"] == {
        "type": "safety.flagged",
        "message_id": user_created["id"],
        "categories": ["harassment"],
    }
    end = by_type["generation.failed"]
    assert end["error"]["code"] == "content_blocked"
    assert end["message"]["id"] == reply_created["id"]
    assert (end["message"]["status"], end["message"]["content"]) == ("blocked", "")
    saved = await Message.objects.aget(pk=user_created["id"])
    assert saved.status == "blocked"


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


def test_the_generation_itself_holds_back_a_blocked_messages_reply(
    conversation, user, filtering, fake_llm
):
    """Whoever settles first: here no web request waits for the verdict (the send service
    alone), and the worker reads the gate before its first delta. The LLM was asked, but not
    one delta goes out, and the block is applied as the web would have."""
    from messages_app.services import message_send
    from messages_app.streams import log_length

    fake_llm.push(Script.from_text(CLEAN_REPLY))
    result = message_send(conversation=conversation, author=user, content=INSULT)
    assert result.check is not None
    result.check.result()  # the verdict is in the gate now
    run_llm_worker()
    reply = Message.objects.get(pk=result.assistant_message.pk)
    assert (reply.status, reply.content, reply.stream_seq) == ("blocked", "", 0)
    assert log_length(reply.stream_key) == 0
    sent = Message.objects.get(pk=result.user_message.pk)
    assert sent.status == "blocked"
    assert ReviewItem.objects.get(message=sent).blocked


def test_the_gate_waits_for_a_late_verdict_and_gives_up_at_the_timeout(filtering, conversation):
    import asyncio
    import threading

    from llm_app.input_gate import InputUnchecked, input_gate
    from messages_app.safety.categories import judge
    from messages_app.safety.client import GATE_PENDING, gate_key

    reply = conversation.active_leaf  # any message: the gate is named by its stream key
    key = gate_key(reply.stream_key.hex)
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.set(key, GATE_PENDING)
    answer = json.dumps({"id": "x", "verdict": judge({"harassment": 0.99}).as_dict()})
    threading.Timer(0.2, lambda: client.set(key, answer)).start()
    verdict = asyncio.run(input_gate(reply))
    assert verdict is not None and verdict.categories == ["harassment"]

    client.set(key, GATE_PENDING)  # and no answer ever comes
    filtering.SAFETY_TIMEOUT_SECONDS = 0.1
    with pytest.raises(InputUnchecked):
        asyncio.run(input_gate(reply))
    filtering.SAFETY_ON_ERROR = "allow"
    assert asyncio.run(input_gate(reply)) is None
    client.delete(key)
    assert asyncio.run(input_gate(reply)) is None  # no gate: nothing to wait for

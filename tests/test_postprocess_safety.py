"""The output safety review after the fact, by the message processor, against a real safety
worker process (local backend): SAFETY_OUTPUT_MODE=after, inline checks that could not run,
and a job retried until the safety worker is back."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import django_rq
import pytest
import redis
from django.conf import settings

from fake_llm import Script
from messages_app import titles
from messages_app.models import Conversation, Message, ReviewItem
from messages_app.services import message_send
from messages_app.streams import log_key
from messageservice import metrics
from tests.helpers import (
    arun_llm_worker,
    communicator,
    receive_until,
    run_llm_worker,
    send_message,
    start_worker_process,
)
from tests.test_postprocess import run_messages_worker
from tests.test_safety_flow import BAD_REPLY, CLEAN_REPLY
from tests.test_safety_worker import WorkerProcess

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(scope="module")
def safety_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(tmp_path_factory.mktemp("safety") / "worker.log").start()
    try:
        yield worker.ready()
    finally:
        worker.stop()


@pytest.fixture
def processed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The outcomes counted by messages_processed_total (the skeleton function, recorded)."""
    outcomes: list[str] = []
    monkeypatch.setattr(metrics, "message_processed", outcomes.append)
    return outcomes


@pytest.fixture
def filtering(settings: Any, safety_worker: WorkerProcess) -> Any:
    settings.ENABLE_CONTENT_FILTERING = True
    settings.SAFETY_INPUT_ACTION = "block"
    return settings


def _send(api: Any, conversation: Any, content: str) -> dict[str, Any]:
    response = api.post(
        f"/api/v1/conversations/{conversation.pk}/messages/", {"content": content}, format="json"
    )
    assert response.status_code == 202, response.content
    return dict(response.json())


def _wait_for(check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


async def test_after_mode_blocks_an_offending_reply_after_it_ended_as_inline_would(
    conversation, alice_headers, filtering, fake_llm, processed
):
    filtering.SAFETY_OUTPUT_MODE = "after"
    fake_llm.push(Script.from_text(BAD_REPLY))
    comm = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    assert (await comm.connect())[0]
    created = await send_message(comm, "Say something")
    reply_id = created[1]["message"]["id"]
    generation_id = created[1]["message"]["generation_id"]
    await arun_llm_worker()
    ended = await receive_until(comm, "generation.completed", "generation.failed")
    # No live checks: the whole reply streamed and completed.
    assert ended[-1]["type"] == "generation.completed"
    assert ended[-1]["message"]["content"] == BAD_REPLY
    assert (await Message.objects.aget(pk=reply_id)).output_review

    await asyncio.to_thread(run_messages_worker)
    frames = await receive_until(comm, "generation.failed")
    types = [f["type"] for f in frames]
    assert types[-2:] == ["safety.flagged", "generation.failed"]
    assert frames[-2] == {
        "type": "safety.flagged",
        "message_id": reply_id,
        "categories": ["harassment"],
    }
    end = frames[-1]
    assert end["error"]["code"] == "content_blocked"
    assert end["message_id"] == reply_id
    assert end["message"]["status"] == "blocked"
    assert (end["message"]["content"], end["message"]["seq"]) == ("", 0)

    reply = await Message.objects.aget(pk=reply_id)
    assert (reply.status, reply.output_review, reply.safety_flagged) == ("blocked", False, True)
    assert reply.content == BAD_REPLY, "kept for the moderators"
    item = await ReviewItem.objects.aget(message_id=reply_id)
    assert (item.source, item.blocked, item.role, item.content) == (
        "output",
        True,
        "assistant",
        BAD_REPLY,
    )
    # No resume replays the text: the end event alone, without it.
    assert not redis.Redis.from_url(settings.REDIS_URL).exists(log_key(reply.stream_key))
    await comm.send_json_to({"type": "stream.resume", "generation_id": generation_id})
    resumed = await receive_until(comm, "generation.failed")
    await comm.disconnect()
    assert [f["type"] for f in resumed] == ["generation.failed"]
    assert resumed[0]["message"]["content"] == ""
    assert resumed[0]["error"]["code"] == "content_blocked"
    # A blocked reply names no conversation.
    assert (await Conversation.objects.aget(pk=conversation.pk)).title == ""
    assert processed == ["blocked"]


def test_after_mode_rest_hides_the_reply_blocked_after_the_fact(
    api, conversation, filtering, fake_llm, processed
):
    filtering.SAFETY_OUTPUT_MODE = "after"
    fake_llm.push(Script.from_text(BAD_REPLY))
    sent = _send(api, conversation, "Say something")
    run_llm_worker()
    page = api.get(f"/api/v1/conversations/{conversation.pk}/messages/").json()["results"]
    shown = next(m for m in page if m["id"] == sent["assistant_message"]["id"])
    assert (shown["status"], shown["content"]) == ("completed", BAD_REPLY)
    run_messages_worker()
    page = api.get(f"/api/v1/conversations/{conversation.pk}/messages/").json()["results"]
    shown = next(m for m in page if m["id"] == sent["assistant_message"]["id"])
    assert (shown["status"], shown["content"], shown["seq"]) == ("blocked", "", 0)
    assert shown["safety"] == {"flagged": True, "categories": ["harassment"]}
    reply = Message.objects.select_related("generation").get(pk=shown["id"])
    assert reply.generation.error_code == "content_blocked"
    # Run again (a job repeated): nothing changes, nothing is added.
    from messages_app.jobs import done_key, post_process_reply

    redis.Redis.from_url(settings.REDIS_URL).delete(done_key(reply.stream_key.hex))
    post_process_reply(reply.pk, reply.stream_key.hex)
    assert ReviewItem.objects.filter(message=reply).count() == 1
    assert Message.objects.get(pk=reply.pk).status == "blocked"


def test_after_mode_keeps_a_clean_reply_and_titles_by_it(
    api, conversation, filtering, fake_llm, processed
):
    filtering.SAFETY_OUTPUT_MODE = "after"
    fake_llm.push(Script.from_text(CLEAN_REPLY))
    sent = _send(api, conversation, "Tell me about the sea.")
    run_llm_worker()
    fake_llm.push(Script.from_text("The Calm Sea"))
    run_messages_worker()
    reply = Message.objects.get(pk=sent["assistant_message"]["id"])
    assert (reply.status, reply.content, reply.output_review) == (
        "completed",
        CLEAN_REPLY,
        False,
    )
    assert not reply.safety_flagged
    assert not ReviewItem.objects.exists()
    assert Conversation.objects.get(pk=conversation.pk).title == "The Calm Sea"
    assert CLEAN_REPLY in fake_llm.requests[-1]["messages"][1]["content"]
    assert processed == ["completed"]


def test_inline_a_reply_the_live_checks_saw_whole_is_not_reviewed_again(
    api, conversation, filtering, fake_llm, processed
):
    fake_llm.push(Script.from_text(CLEAN_REPLY))
    sent = _send(api, conversation, "Tell me about the sea.")
    run_llm_worker()
    reply = Message.objects.get(pk=sent["assistant_message"]["id"])
    assert (reply.status, reply.output_review) == ("completed", False)


@pytest.mark.parametrize(("text", "status"), [(BAD_REPLY, "blocked"), (CLEAN_REPLY, "completed")])
def test_inline_a_reply_whose_checks_could_not_run_is_reviewed_after_it_ended(
    api, conversation, filtering, fake_llm, processed, text, status
):
    # No safety worker serves this name while the reply streams: every check fails.
    filtering.SAFETY_ON_ERROR = "allow"
    real_name = filtering.SERVICE_NAME
    filtering.SERVICE_NAME = "no-safety-worker-here"
    fake_llm.push(Script.from_text(text))
    sent = _send(api, conversation, "Say something")
    run_llm_worker()
    reply = Message.objects.get(pk=sent["assistant_message"]["id"])
    assert (reply.status, reply.content, reply.output_review) == ("completed", text, True)
    filtering.SERVICE_NAME = real_name  # the safety worker is back
    run_messages_worker()
    reply = Message.objects.get(pk=reply.pk)
    assert (reply.status, reply.output_review) == (status, False)
    assert ReviewItem.objects.filter(message=reply, source="output").exists() == (
        status == "blocked"
    )
    assert processed == [status]


def test_a_job_whose_check_fails_is_retried_until_the_safety_worker_is_back(
    conversation, user, fake_llm, settings, tmp_path
):
    """A real `rqworker messages` process: the check fails (no safety worker), the title is
    made anyway (without the unchecked reply in its prompt), the job is retried after
    POSTPROCESS_RETRY_INTERVALS, and once a safety worker runs the reply is blocked."""
    name = "postprocess-retry"
    settings.SERVICE_NAME = name
    settings.ENABLE_CONTENT_FILTERING = True
    settings.SAFETY_OUTPUT_MODE = "after"
    settings.SAFETY_ON_ERROR = "allow"
    settings.POSTPROCESS_RETRY_INTERVALS = [1, 8, 8]
    fake_llm.push(Script.from_text(BAD_REPLY))
    result = message_send(conversation=conversation, author=user, content="Say something")
    run_llm_worker()
    reply = Message.objects.get(pk=result.assistant_message.pk)
    assert (reply.status, reply.output_review) == ("completed", True)
    fake_llm.push(Script.from_text("A Rude Answer"))
    worker = start_worker_process(
        fake_llm,
        "messages",
        SERVICE_NAME=name,
        ENABLE_CONTENT_FILTERING="true",
        SAFETY_OUTPUT_MODE="after",
    )
    safety = WorkerProcess(tmp_path / "safety.log", SERVICE_NAME=name)
    try:
        job = django_rq.get_queue("messages").fetch_job(f"postprocess-{reply.stream_key.hex}")
        assert job is not None

        def retried() -> bool:
            job.refresh()
            return job.retries_left is not None and job.retries_left < 3

        _wait_for(retried)
        # Titled on the first attempt already, from the user's message alone.
        assert Conversation.objects.get(pk=conversation.pk).title == "A Rude Answer"
        prompt = fake_llm.requests[-1]["messages"][1]["content"]
        assert prompt.startswith("User: Say something") and "idiot" not in prompt
        assert Message.objects.get(pk=reply.pk).status == "completed"

        safety.start().ready()
        _wait_for(lambda: Message.objects.get(pk=reply.pk).status == "blocked")
        _wait_for(lambda: job.refresh() or job.get_status() == "finished")
        assert ReviewItem.objects.filter(message_id=reply.pk, blocked=True).count() == 1
        assert Conversation.objects.get(pk=conversation.pk).title == "A Rude Answer"
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(20)
        if safety.proc is not None:
            safety.stop()


def test_a_title_is_never_made_from_a_blocked_message(conversation, user, db):
    """The prompt and the fallback skip blocked messages."""
    blocked = Message.objects.create(
        conversation=conversation,
        parent=conversation.active_leaf,
        role="user",
        author=user,
        content="something nasty",
        status="blocked",
    )
    reply = Message.objects.create(
        conversation=conversation, parent=blocked, role="assistant", status="completed"
    )
    assert titles._user_message_of(reply) is None
    ok = Message.objects.create(
        conversation=conversation,
        parent=conversation.active_leaf,
        role="user",
        author=user,
        content="A fine question",
    )
    assert titles._user_message_of(reply) == ok

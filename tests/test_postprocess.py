"""The message processor (queue `messages`): automatic titles, idempotent jobs, faults.

Real Redis, the real worker class (in-process, burst) or a real `manage.py rqworker messages`
process, and the fake LLM over HTTP for both the reply and the title."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from typing import Any

import django_rq
import pytest
import redis
from django.conf import settings

from fake_llm import Script
from messages_app import jobs, postprocess, titles
from messages_app.models import Conversation, Message
from messages_app.services import conversation_delete, message_send
from messageservice import metrics
from tests.helpers import (
    ROOT,
    arun_llm_worker,
    communicator,
    receive_until,
    run_llm_worker,
    send_message,
    worker_env,
)

pytestmark = pytest.mark.django_db(transaction=True)

REPLY = "Ahoy! The sea is calm today and the stars are bright. Shall we sail to the isles?"


def run_messages_worker() -> bool:
    """Run every queued `messages` job with the project's worker class, in burst mode."""
    worker = django_rq.get_worker("messages")
    assert type(worker).__name__ == "GenerationWorker"
    return bool(worker.work(burst=True, with_scheduler=False))


@pytest.fixture
def processed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The outcomes counted by messages_processed_total (the skeleton function, recorded)."""
    outcomes: list[str] = []
    monkeypatch.setattr(metrics, "message_processed", outcomes.append)
    return outcomes


def _title_requests(fake_llm: Any) -> list[dict[str, Any]]:
    return [
        r for r in fake_llm.requests if r["messages"][0]["content"] == titles.TITLE_INSTRUCTIONS
    ]


def _exchange(conversation: Conversation, user: Any, fake_llm: Any, text: str) -> Message:
    """Send `text`, let the llm worker answer with REPLY; the reply, as saved."""
    fake_llm.push(Script.from_text(REPLY))
    result = message_send(conversation=conversation, author=user, content=text)
    run_llm_worker()
    reply = Message.objects.get(pk=result.assistant_message.pk)
    assert reply.status == "completed"
    return reply


def test_a_new_conversation_has_no_title_until_its_first_reply(api, character):
    response = api.post("/api/v1/conversations/", {"character_id": character.pk}, format="json")
    assert response.status_code == 201
    assert response.json()["title"] == ""
    named = api.post(
        "/api/v1/conversations/", {"character_id": character.pk, "title": "Mine"}, format="json"
    )
    assert named.json()["title"] == "Mine"


def test_the_end_of_a_reply_queues_one_job_without_sql(
    conversation, user, fake_llm, django_assert_num_queries
):
    reply = _exchange(conversation, user, fake_llm, "Hello")
    (job,) = django_rq.get_queue("messages").get_jobs()
    assert job.id == jobs.job_id(reply.stream_key.hex)
    assert job.func_name == "messages_app.jobs.post_process_reply"
    assert job.args == (reply.pk, reply.stream_key.hex)
    assert job.retries_left == 3
    reply = Message.objects.select_related("conversation").get(pk=reply.pk)
    with django_assert_num_queries(0):
        postprocess.reply_finished(reply)


async def test_the_first_exchange_titles_the_conversation_and_clients_are_told(
    conversation, alice_headers, fake_llm, processed
):
    assert conversation.title == ""
    fake_llm.push(Script.from_text(REPLY))
    fake_llm.push(Script.from_text('**"Sailing the Calm Sea."**\nThis title fits because'))
    comm = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    assert (await comm.connect())[0]
    await send_message(comm, "Where shall we sail tonight?")
    await arun_llm_worker()
    await receive_until(comm, "generation.completed")
    await asyncio.to_thread(run_messages_worker)
    frames = await receive_until(comm, "conversation.updated")
    await comm.disconnect()

    event = frames[-1]
    assert event["conversation"]["title"] == "Sailing the Calm Sea"
    assert event["conversation"]["id"] == conversation.pk
    assert set(event["conversation"]) == {
        "id",
        "character_id",
        "title",
        "active_leaf_id",
        "created_at",
        "last_activity_at",
    }
    saved = await Conversation.objects.aget(pk=conversation.pk)
    assert saved.title == "Sailing the Calm Sea"
    (asked,) = _title_requests(fake_llm)
    assert asked["max_tokens"] == settings.TITLE_MAX_TOKENS
    prompt = asked["messages"][1]["content"]
    assert "Where shall we sail tonight?" in prompt and REPLY in prompt
    assert processed == ["completed"]


def test_the_rest_api_shows_the_title_as_the_event_did(api, conversation, user, fake_llm):
    _exchange(conversation, user, fake_llm, "Hello")
    fake_llm.push(Script.from_text("Greetings at Sea"))
    run_messages_worker()
    body = api.get(f"/api/v1/conversations/{conversation.pk}/").json()
    assert body["title"] == "Greetings at Sea"


def test_a_rename_before_the_job_wins(api, conversation, user, fake_llm, processed):
    _exchange(conversation, user, fake_llm, "Hello")
    renamed = api.patch(
        f"/api/v1/conversations/{conversation.pk}/", {"title": "My voyage"}, format="json"
    )
    assert renamed.status_code == 200
    fake_llm.push(Script.from_text("Greetings at Sea"))
    run_messages_worker()
    assert Conversation.objects.get(pk=conversation.pk).title == "My voyage"
    assert _title_requests(fake_llm) == [], "no LLM call for a titled conversation"
    assert processed == ["completed"]


def test_a_rename_while_the_llm_thinks_wins(api, conversation, user, fake_llm):
    """The title is saved only where the title is still blank."""
    reply = _exchange(conversation, user, fake_llm, "Hello")
    Conversation.objects.filter(pk=conversation.pk).update(title="Renamed meanwhile")
    assert titles.conversation_title_set(conversation.pk, "From the LLM") is None
    reply.conversation.title = ""  # as the job read it before the rename
    fake_llm.push(Script.from_text("From the LLM"))
    assert titles.title_after_reply(reply) is None
    assert Conversation.objects.get(pk=conversation.pk).title == "Renamed meanwhile"


@pytest.mark.parametrize("fault", ["http_500", "unreachable", "useless"])
def test_with_the_llm_failing_the_title_is_the_first_message_shortened(
    conversation, user, fake_llm, settings, processed, fault
):
    text = "Tell me everything about the old lighthouse keeper who lived on the northern cliffs"
    _exchange(conversation, user, fake_llm, text)
    if fault == "unreachable":
        settings.LLM_SERVICE_URL = "http://127.0.0.1:9/v1"
    elif fault == "useless":
        fake_llm.push(Script.from_text('"..."'))
    else:
        fake_llm.push(Script.from_text("x", fault="http_500"))
    run_messages_worker()
    title = Conversation.objects.get(pk=conversation.pk).title
    assert title == "Tell me everything about the old lighthouse keeper who…"
    assert len(title) <= titles.MAX_TITLE_CHARS
    assert processed == ["completed"]
    # The queue goes on: the next conversation's job is processed too.
    other = Conversation.objects.create(owner=user, character=conversation.character)
    settings.LLM_SERVICE_URL = fake_llm.base_url
    _exchange(other, user, fake_llm, "Hi")
    fake_llm.push(Script.from_text("A Short Hello"))
    run_messages_worker()
    assert Conversation.objects.get(pk=other.pk).title == "A Short Hello"


def test_a_stalled_llm_costs_at_most_the_title_timeout(
    conversation, user, fake_llm, settings, processed
):
    settings.TITLE_TIMEOUT_SECONDS = 0.5
    _exchange(conversation, user, fake_llm, "Hello there, captain")
    fake_llm.push(Script.from_text("Never said", fault="stall", stall_seconds=30))
    began = time.monotonic()
    run_messages_worker()
    assert time.monotonic() - began < 5
    assert Conversation.objects.get(pk=conversation.pk).title == "Hello there, captain"


def test_the_job_run_twice_gives_the_same_result(conversation, user, fake_llm, processed):
    reply = _exchange(conversation, user, fake_llm, "Hello")
    # Queued twice (a repeated hook): one job id, and the second run finds the work done.
    postprocess.reply_finished(Message.objects.select_related("conversation").get(pk=reply.pk))
    fake_llm.push(Script.from_text("Greetings at Sea"))
    run_messages_worker()
    assert Conversation.objects.get(pk=conversation.pk).title == "Greetings at Sea"
    assert len(_title_requests(fake_llm)) == 1
    assert processed == ["completed"]
    assert jobs.post_process_reply(reply.pk, reply.stream_key.hex) == "done before"

    # Killed after the work but before it was marked done: the steps find their work done.
    redis.Redis.from_url(settings.REDIS_URL).delete(jobs.done_key(reply.stream_key.hex))
    assert jobs.post_process_reply(reply.pk, reply.stream_key.hex) == "nothing to do"
    assert Conversation.objects.get(pk=conversation.pk).title == "Greetings at Sea"
    assert len(_title_requests(fake_llm)) == 1


def test_only_the_first_completed_reply_titles(conversation, user, fake_llm, processed):
    fake_llm.push(Script.from_text("x", fault="http_500", times=3))  # LLM_RETRY_ATTEMPTS = 2
    result = message_send(conversation=conversation, author=user, content="First try")
    run_llm_worker()
    assert Message.objects.get(pk=result.assistant_message.pk).status == "failed"
    run_messages_worker()
    assert Conversation.objects.get(pk=conversation.pk).title == ""
    _exchange(conversation, user, fake_llm, "Second try")
    fake_llm.push(Script.from_text("Second Time Lucky"))
    run_messages_worker()
    assert Conversation.objects.get(pk=conversation.pk).title == "Second Time Lucky"
    _exchange(conversation, user, fake_llm, "Third message")
    run_messages_worker()
    assert Conversation.objects.get(pk=conversation.pk).title == "Second Time Lucky"
    assert len(_title_requests(fake_llm)) == 1
    assert processed == ["failed", "completed", "completed"]


def test_a_deleted_conversation_makes_the_job_a_no_op(conversation, user, fake_llm, processed):
    reply = _exchange(conversation, user, fake_llm, "Hello")
    conversation_delete(conversation=Conversation.objects.get(pk=conversation.pk))
    run_messages_worker()
    assert _title_requests(fake_llm) == []
    assert processed == []
    assert jobs.post_process_reply(reply.pk, reply.stream_key.hex) == "gone"
    assert django_rq.get_queue("messages").failed_job_registry.count == 0


def test_a_job_of_another_database_does_nothing(conversation, user, fake_llm, processed):
    reply = _exchange(conversation, user, fake_llm, "Hello")
    assert jobs.post_process_reply(reply.pk, "0" * 32) == "gone"
    assert Conversation.objects.get(pk=conversation.pk).title == ""


def test_rqworker_messages_command_processes_the_job(conversation, user, fake_llm):
    """The production path: `manage.py rqworker messages` in its own process."""
    _exchange(conversation, user, fake_llm, "Hello from far away")
    fake_llm.push(Script.from_text("Far Away Hello"))
    run = subprocess.run(
        [sys.executable, "manage.py", "rqworker", "messages", "--burst"],
        cwd=ROOT,
        env=worker_env(fake_llm),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert Conversation.objects.get(pk=conversation.pk).title == "Far Away Hello"


@pytest.mark.parametrize(
    ("raw", "title"),
    [
        ("Sailing the Calm Sea", "Sailing the Calm Sea"),
        ('"Sailing the Calm Sea."', "Sailing the Calm Sea"),
        ("Title: **Stars at Night!**", "Stars at Night"),
        ("\n\n  “Une nuit en mer”  \nbecause it fits", "Une nuit en mer"),
        ("...", ""),
        ("", ""),
        ("a\x00b", "ab"),
        ("word " * 30, ("word " * 12).strip()),
    ],
)
def test_clean_title(raw, title):
    assert titles.clean_title(raw) == title
    assert len(titles.clean_title(raw)) <= titles.MAX_TITLE_CHARS


def test_shorten_cuts_at_a_word_boundary_with_an_ellipsis():
    assert titles.shorten("short  and\nsweet") == "short and sweet"
    long = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu"
    cut = titles.shorten(long, 30)
    assert cut == "alpha beta gamma delta…" and len(cut) <= 30
    assert titles.shorten("x" * 100, 10) == "x" * 9 + "…"

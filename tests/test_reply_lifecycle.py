"""Every way a reply ends goes through messages_app.replies.reply_end, which calls the domain
hook `reply_finished` exactly once, after the end state is committed."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import transaction

from fake_llm import Script
from llm_app.state import generation_fail_stale
from messages_app import hooks
from messages_app.models import Message
from messages_app.replies import ReplyEnd, reply_end
from tests.helpers import run_llm_worker

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def finished(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """(message id, its status as committed when the hook ran), per call of the hook."""
    calls: list[tuple[int, str]] = []
    original = hooks.reply_finished

    def record(message: Message, code: str = "") -> None:
        status = Message.objects.filter(pk=message.pk).values_list("status", flat=True).first()
        calls.append((message.pk, status or "deleted"))
        original(message, code)

    monkeypatch.setattr(hooks, "reply_finished", record)
    return calls


def _send(api: Any, conversation: Any) -> dict[str, Any]:
    url = f"/api/v1/conversations/{conversation.pk}/messages/"
    return api.post(url, {"content": "hi"}, format="json").json()


def test_a_completed_reply_calls_the_hook_once(api, conversation, fake_llm, finished):
    fake_llm.push(Script.from_text("Done."))
    sent = _send(api, conversation)
    run_llm_worker()
    assert finished == [(sent["assistant_message"]["id"], "completed")]


def test_a_failed_reply_calls_the_hook_once(api, conversation, fake_llm, finished, settings):
    settings.LLM_RETRY_ATTEMPTS = 0
    fake_llm.push(Script.from_text("x", fault="http_500"))
    sent = _send(api, conversation)
    run_llm_worker()
    assert finished == [(sent["assistant_message"]["id"], "failed")]


def test_a_cancelled_queued_reply_calls_the_hook_once_and_its_job_adds_nothing(
    api, conversation, fake_llm, finished
):
    sent = _send(api, conversation)
    api.post(f"/api/v1/generations/{sent['generation_id']}/cancel/")
    run_llm_worker()
    assert finished == [(sent["assistant_message"]["id"], "cancelled")]


def test_a_reply_whose_worker_died_calls_the_hook_once(api, conversation, finished):
    sent = _send(api, conversation)
    Message.objects.filter(pk=sent["assistant_message"]["id"]).update(status="streaming")
    assert generation_fail_stale(sent["generation_id"], code="worker_lost", text="gone")
    assert not generation_fail_stale(sent["generation_id"], code="worker_lost", text="again")
    assert finished == [(sent["assistant_message"]["id"], "failed")]


def test_deleting_a_conversation_calls_the_hook_for_its_running_reply(api, conversation, finished):
    sent = _send(api, conversation)
    assert api.delete(f"/api/v1/conversations/{conversation.pk}/").status_code == 204
    assert finished == [(sent["assistant_message"]["id"], "deleted")]


def test_of_two_racing_ends_one_wins_and_the_hook_runs_after_the_commit(
    api, conversation, finished
):
    sent = _send(api, conversation)
    reply_id = sent["assistant_message"]["id"]
    with transaction.atomic():
        first = reply_end(message_id=reply_id, end=ReplyEnd(status="cancelled"))
        assert finished == [], "not before the commit"
    second = reply_end(message_id=reply_id, end=ReplyEnd(status="completed", content="late"))
    assert first is not None and second is None
    assert finished == [(reply_id, "cancelled")]
    assert Message.objects.get(pk=reply_id).content == ""

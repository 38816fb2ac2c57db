"""REST messages: sending (202, idempotent), bad input, history pages, feedback."""

from __future__ import annotations

import pytest
from django.conf import settings

from llm_app.models import Generation
from messages_app.models import Message
from messages_app.services import message_send
from messageservice.embedded import free_port
from tests.helpers import llm_jobs, run_llm_worker

pytestmark = pytest.mark.django_db(transaction=True)


def _messages_url(conversation) -> str:
    return f"/api/v1/conversations/{conversation.pk}/messages/"


def _error(resp, status, code=None):
    assert resp.status_code == status, resp.content
    error = resp.json()["error"]
    assert {"code", "message", "details"} <= set(error)
    if code:
        assert error["code"] == code
    return error


def test_post_message_answers_202_with_both_messages_and_a_queued_job(api, conversation):
    resp = api.post(_messages_url(conversation), {"content": "Hello"}, format="json")
    assert resp.status_code == 202
    body = resp.json()
    assert body["user_message"]["role"] == "user"
    assert body["user_message"]["content"] == "Hello"
    assert body["user_message"]["parent_id"] == conversation.active_leaf_id
    assert body["assistant_message"]["status"] == "queued"
    assert body["assistant_message"]["parent_id"] == body["user_message"]["id"]
    assert body["assistant_message"]["generation_id"] == body["generation_id"]
    for key in ("usage", "timings", "safety", "model", "finish_reason", "created_at"):
        assert key in body["assistant_message"]
    jobs = llm_jobs()
    reply = Message.objects.get(pk=body["assistant_message"]["id"])
    assert [job.args for job in jobs] == [(body["generation_id"], reply.stream_key.hex)]


@pytest.mark.parametrize("how", ["client_id", "Idempotency-Key"])
def test_repeated_post_is_idempotent(api, conversation, how):
    kwargs = {}
    data = {"content": "Only once"}
    if how == "client_id":
        data["client_id"] = "abc-123"
    else:
        kwargs["HTTP_IDEMPOTENCY_KEY"] = "key-123"
    first = api.post(_messages_url(conversation), data, format="json", **kwargs)
    second = api.post(_messages_url(conversation), data, format="json", **kwargs)
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()
    assert Message.objects.filter(conversation=conversation, role="user").count() == 1
    assert Generation.objects.count() == 1
    assert len(llm_jobs()) == 1


def test_empty_content_is_400_and_nothing_is_saved(api, conversation):
    for content in ("", "   \n"):
        resp = api.post(_messages_url(conversation), {"content": content}, format="json")
        _error(resp, 400, "empty_content")
    _error(api.post(_messages_url(conversation), {}, format="json"), 400, "invalid")
    assert Message.objects.filter(role="user").count() == 0
    assert llm_jobs() == []


def test_content_over_max_message_chars_is_413(api, conversation):
    content = "x" * (settings.MAX_MESSAGE_CHARS + 1)
    error = _error(
        api.post(_messages_url(conversation), {"content": content}, format="json"), 413, "too_large"
    )
    assert error["details"]["max_chars"] == settings.MAX_MESSAGE_CHARS
    ok = api.post(
        _messages_url(conversation), {"content": "y" * settings.MAX_MESSAGE_CHARS}, format="json"
    )
    assert ok.status_code == 202


def test_malformed_json_body_is_400_in_the_error_shape(api, conversation):
    resp = api.generic(
        "POST", _messages_url(conversation), "{not json", content_type="application/json"
    )
    _error(resp, 400, "malformed")


def test_unknown_conversation_and_parent_are_404(api, conversation):
    _error(api.get("/api/v1/conversations/999999/messages/"), 404, "not_found")
    resp = api.post(
        _messages_url(conversation), {"content": "hi", "parent_id": 999999}, format="json"
    )
    _error(resp, 404, "not_found")


def test_when_the_queue_is_down_the_send_fails_503_and_nothing_is_saved(
    api, conversation, settings
):
    # The queue's Redis is a port nobody serves.
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    resp = api.post(_messages_url(conversation), {"content": "hi"}, format="json")
    _error(resp, 503, "queue_unavailable")
    assert not Message.objects.filter(role="user").exists()
    assert not Message.objects.filter(status="queued").exists()
    conversation.refresh_from_db()
    assert conversation.active_leaf.role == "assistant"  # still the greeting
    assert conversation.active_leaf.finish_reason == "greeting"


def test_history_pages_walk_the_active_branch_oldest_first(api, conversation, user, fake_llm):
    for i in range(6):
        message_send(conversation=conversation, author=user, content=f"turn {i}")
    run_llm_worker()
    expected = list(
        Message.objects.filter(conversation=conversation)
        .order_by("depth")
        .values_list("id", flat=True)
    )
    assert len(expected) == 13
    pages: list[list[int]] = []
    url = _messages_url(conversation) + "?limit=5"
    while url:
        body = api.get(url).json()
        ids = [m["id"] for m in body["results"]]
        assert ids == sorted(ids, key=expected.index)
        pages.insert(0, ids)
        url = body["next"]
    assert [len(p) for p in pages] == [3, 5, 5]
    assert [i for page in pages for i in page] == expected


def test_history_follows_the_active_branch_not_other_branches(api, conversation, user):
    first = message_send(conversation=conversation, author=user, content="first")
    greeting_id = first.user_message.parent_id
    # A second answer to the greeting: a sibling branch. It becomes the active one.
    branch = message_send(
        conversation=conversation, author=user, content="other branch", parent_id=greeting_id
    )
    ids = [m["id"] for m in api.get(_messages_url(conversation)).json()["results"]]
    assert ids == [greeting_id, branch.user_message.pk, branch.assistant_message.pk]


@pytest.mark.parametrize("params", ["limit=0", "limit=500", "limit=abc", "cursor=!!!"])
def test_bad_page_parameters_are_400(api, conversation, params):
    _error(api.get(_messages_url(conversation) + "?" + params), 400)


def test_feedback_on_a_reply_and_bad_feedback(api, conversation, user, fake_llm):
    result = message_send(conversation=conversation, author=user, content="rate me")
    url = f"/api/v1/messages/{result.assistant_message.pk}/feedback/"
    resp = api.post(url, {"rating": 1, "comment": "nice"}, format="json")
    assert resp.status_code == 201 and resp.json()["rating"] == 1
    resp = api.post(url, {"rating": -1}, format="json")
    assert resp.status_code == 201
    assert result.assistant_message.feedback.get().rating == -1
    _error(api.post(url, {"rating": 5}, format="json"), 400)
    user_url = f"/api/v1/messages/{result.user_message.pk}/feedback/"
    _error(api.post(user_url, {"rating": 1}, format="json"), 400, "not_a_reply")
    _error(api.post("/api/v1/messages/999999/feedback/", {"rating": 1}, format="json"), 404)

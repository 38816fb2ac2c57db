"""REST: conversations, sending (202, idempotent), history pages, feedback, characters, schema."""

from __future__ import annotations

from typing import Any

import pytest
from django.conf import settings
from rest_framework.test import APIClient

from fake_llm import Script
from llm_app.models import Generation
from messages_app.models import Conversation, Message
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


def test_creating_a_conversation_posts_the_greeting_first(api, character):
    resp = api.post("/api/v1/conversations/", {"character_id": character.pk}, format="json")
    assert resp.status_code == 201
    conversation = Conversation.objects.get(pk=resp.json()["id"])
    page = api.get(_messages_url(conversation)).json()["results"]
    assert [(m["role"], m["content"], m["status"]) for m in page] == [
        ("assistant", character.greeting, "completed")
    ]


def test_conversation_with_an_unknown_or_private_character_is_404(api, other_user):
    from tests.factories import CharacterFactory

    private: Any = CharacterFactory(is_public=False, owner=other_user)
    for character_id in (999999, private.pk):
        resp = api.post("/api/v1/conversations/", {"character_id": character_id}, format="json")
        _error(resp, 404, "not_found")


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


def test_characters_are_created_by_users_and_changed_only_by_their_owner(api, other_user):
    resp = api.post(
        "/api/v1/characters/",
        {"name": "Mine", "persona": "p", "greeting": "hi", "temperature": 0.3, "max_tokens": 64},
        format="json",
    )
    assert resp.status_code == 201
    character_id = resp.json()["id"]
    other = APIClient()
    other.force_authenticate(other_user)
    _error(other.get(f"/api/v1/characters/{character_id}/"), 404)
    api.patch(f"/api/v1/characters/{character_id}/", {"is_public": True}, format="json")
    assert other.get(f"/api/v1/characters/{character_id}/").status_code == 200
    _error(other.patch(f"/api/v1/characters/{character_id}/", {"name": "X"}, format="json"), 403)
    bad = api.post("/api/v1/characters/", {"name": "T", "temperature": 9}, format="json")
    _error(bad, 400, "invalid")


def test_character_model_settings_reach_the_llm(api, user, fake_llm):
    from tests.factories import CharacterFactory

    character: Any = CharacterFactory(model="char-model", temperature=0.25, max_tokens=77)
    conversation_id = api.post(
        "/api/v1/conversations/", {"character_id": character.pk}, format="json"
    ).json()["id"]
    fake_llm.push(Script.from_text("ok"))
    api.post(f"/api/v1/conversations/{conversation_id}/messages/", {"content": "hi"}, format="json")
    run_llm_worker()
    sent = fake_llm.requests[-1]
    assert (sent["model"], sent["temperature"], sent["max_tokens"]) == ("char-model", 0.25, 77)


def test_prompt_has_system_prompt_persona_then_greeting_then_history(api, conversation, fake_llm):
    fake_llm.push(Script.from_text("first answer"))
    api.post(_messages_url(conversation), {"content": "question one"}, format="json")
    run_llm_worker()
    fake_llm.push(Script.from_text("second answer"))
    api.post(_messages_url(conversation), {"content": "question two"}, format="json")
    run_llm_worker()
    messages = fake_llm.requests[-1]["messages"]
    character = conversation.character
    assert messages[0]["role"] == "system"
    assert character.system_prompt in messages[0]["content"]
    assert character.persona in messages[0]["content"]
    assert [(m["role"], m["content"]) for m in messages[1:]] == [
        ("assistant", character.greeting),
        ("user", "question one"),
        ("assistant", "first answer"),
        ("user", "question two"),
    ]
    generation = Generation.objects.latest("id")
    assert generation.prompt_manifest["message_ids"][-1] == generation.message.parent_id
    # A short history fits even by its byte count: no tokenizer round trip was needed.
    assert generation.prompt_manifest["token_counter"].startswith("upper bound: UTF-8 bytes")


def test_prompt_is_cut_to_the_budget_oldest_turns_first(
    api, conversation, user, fake_llm, settings
):
    for i in range(5):
        fake_llm.push(Script.from_text(f"answer {i}"))
        message_send(conversation=conversation, author=user, content=f"q{i} " + "words " * 40)
        run_llm_worker()
    settings.LLM_CONTEXT_TOKENS = 250
    conversation.character.max_tokens = 100
    conversation.character.save()
    fake_llm.push(Script.from_text("short"))
    message_send(conversation=conversation, author=user, content="last question")
    run_llm_worker()
    sent = fake_llm.requests[-1]["messages"]
    assert sent[-1] == {"role": "user", "content": "last question"}
    manifest = Generation.objects.latest("id").prompt_manifest
    # Counted by the server's own tokenizer (the fake's /tokenize), not the estimate.
    assert manifest["token_counter"] == "llama-server /tokenize"
    assert manifest["dropped_message_ids"]
    assert manifest["prompt_tokens_counted"] <= 250 - 100
    assert len(sent) == 1 + len(manifest["message_ids"]) < 12
    # The newest turns were kept, the oldest dropped.
    assert max(manifest["dropped_message_ids"]) < min(manifest["message_ids"])


def test_openapi_schema_and_docs_are_served(api):
    schema = api.get("/api/schema/")
    assert schema.status_code == 200
    text = schema.content.decode()
    for path in ("/api/v1/conversations/{conversation_id}/messages/", "/api/v1/ws-tickets/"):
        assert path in text
    assert api.get("/api/docs/").status_code == 200
    browsable = api.get("/api/v1/conversations/", HTTP_ACCEPT="text/html")
    assert browsable.status_code == 200 and b"<html" in browsable.content.lower()


def test_health_and_ready_report_their_checks(client):
    body = client.get("/health").json()
    assert body["status"] == "ok" and body["checks"] == {"database": "ok", "redis": "ok"}
    assert client.get("/ready").json()["checks"]["migrations"] == "ok"


def test_health_is_503_when_redis_is_down(client, settings):
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"
    resp = client.get("/health")
    assert resp.status_code == 503
    assert resp.json()["checks"]["redis"].startswith("error")


def test_the_message_payload_has_exactly_the_fields_the_openapi_schema_documents(
    api, conversation, fake_llm
):
    from messages_app.serializers import MessageSerializer, message_data

    fake_llm.push(Script.from_text("Same shape everywhere."))
    sent = api.post(_messages_url(conversation), {"content": "hi"}, format="json").json()
    run_llm_worker()
    api.post(f"/api/v1/messages/{sent['assistant_message']['id']}/regenerate/")
    documented = set(MessageSerializer().fields)
    schema = api.get("/api/schema/?format=json").json()
    assert set(schema["components"]["schemas"]["Message"]["properties"]) == documented
    for message in Message.objects.select_related("generation").all():
        assert set(message_data(message)) == documented

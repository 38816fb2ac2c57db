"""Regenerate, edit and branches: alternatives are kept, history and prompts follow the branch."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from fake_llm import Script
from messages_app.models import Message
from tests.helpers import llm_jobs, run_llm_worker

pytestmark = pytest.mark.django_db(transaction=True)


def _history(api: APIClient, conversation: Any) -> list[dict]:
    return api.get(f"/api/v1/conversations/{conversation.pk}/messages/").json()["results"]


def _send(api: APIClient, conversation: Any, content: str) -> dict:
    resp = api.post(
        f"/api/v1/conversations/{conversation.pk}/messages/", {"content": content}, format="json"
    )
    assert resp.status_code == 202
    return resp.json()


def test_regenerate_adds_an_assistant_sibling_and_shows_two_of_two(api, conversation, fake_llm):
    fake_llm.push(Script.from_text("First reply."))
    sent = _send(api, conversation, "Tell me something")
    run_llm_worker()
    fake_llm.push(Script.from_text("Second reply."))
    resp = api.post(f"/api/v1/messages/{sent['assistant_message']['id']}/regenerate/")
    assert resp.status_code == 202
    new = resp.json()["assistant_message"]
    assert new["parent_id"] == sent["user_message"]["id"]
    assert new["status"] == "queued" and resp.json()["generation_id"] == new["generation_id"]
    run_llm_worker()
    history = _history(api, conversation)
    last = history[-1]
    assert last["content"] == "Second reply."
    assert last["siblings"] == {
        "ids": [sent["assistant_message"]["id"], new["id"]],
        "position": 2,
        "total": 2,
    }
    # Both replies are kept.
    assert Message.objects.filter(parent_id=sent["user_message"]["id"]).count() == 2
    # The regenerated prompt is the same turn: it does not contain the first reply.
    contents = [m["content"] for m in fake_llm.requests[-1]["messages"]]
    assert "First reply." not in contents and contents[-1] == "Tell me something"


def test_regenerate_on_a_user_message_is_400_and_on_anothers_is_404(
    api, conversation, other_user, fake_llm
):
    sent = _send(api, conversation, "hi")
    resp = api.post(f"/api/v1/messages/{sent['user_message']['id']}/regenerate/")
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "not_a_reply"
    greeting = _history(api, conversation)[0]
    assert api.post(f"/api/v1/messages/{greeting['id']}/regenerate/").status_code == 400
    other = APIClient()
    other.force_authenticate(other_user)
    resp = other.post(f"/api/v1/messages/{sent['assistant_message']['id']}/regenerate/")
    assert resp.status_code == 404
    assert other.post("/api/v1/messages/999999/regenerate/").status_code == 404
    assert len(llm_jobs()) == 1


def test_editing_a_user_message_starts_a_new_branch_and_keeps_the_old(api, conversation, fake_llm):
    fake_llm.push(Script.from_text("About cats."))
    first = _send(api, conversation, "Tell me about cats")
    run_llm_worker()
    fake_llm.push(Script.from_text("More cats."))
    _send(api, conversation, "And more?")
    run_llm_worker()

    fake_llm.push(Script.from_text("About dogs."))
    resp = api.patch(
        f"/api/v1/messages/{first['user_message']['id']}/",
        {"content": "Tell me about dogs"},
        format="json",
    )
    assert resp.status_code == 202
    edited = resp.json()
    assert edited["user_message"]["parent_id"] == first["user_message"]["parent_id"]
    run_llm_worker()
    history = _history(api, conversation)
    assert [m["content"] for m in history[1:]] == ["Tell me about dogs", "About dogs."]
    assert history[1]["siblings"]["position"] == 2 and history[1]["siblings"]["total"] == 2
    # The prompt followed the new branch only.
    contents = [m["content"] for m in fake_llm.requests[-1]["messages"]]
    assert "Tell me about cats" not in contents and "About cats." not in contents

    # Switch back to the old branch: its newest leaf becomes active again.
    resp = api.patch(
        f"/api/v1/conversations/{conversation.pk}/",
        {"active_leaf_id": first["user_message"]["id"]},
        format="json",
    )
    assert resp.status_code == 200
    old = [m["content"] for m in _history(api, conversation)[1:]]
    assert old == ["Tell me about cats", "About cats.", "And more?", "More cats."]


def test_edit_errors(api, conversation, other_user, fake_llm):
    sent = _send(api, conversation, "hi")
    url = f"/api/v1/messages/{sent['user_message']['id']}/"
    assert api.patch(url, {"content": ""}, format="json").status_code == 400
    assert api.patch(url, {"content": "x" * 9000}, format="json").status_code == 413
    assistant_url = f"/api/v1/messages/{sent['assistant_message']['id']}/"
    resp = api.patch(assistant_url, {"content": "rewrite"}, format="json")
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "not_a_user_message"
    other = APIClient()
    other.force_authenticate(other_user)
    assert other.patch(url, {"content": "mine now"}, format="json").status_code == 404
    switch = api.patch(
        f"/api/v1/conversations/{conversation.pk}/", {"active_leaf_id": 999999}, format="json"
    )
    assert switch.status_code == 404

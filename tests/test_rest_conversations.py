"""REST conversations and characters: creating, the greeting, who may see and change what."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from messages_app.models import Character, Conversation

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
    # Public, but others see it only once a moderator approved it.
    _error(other.get(f"/api/v1/characters/{character_id}/"), 404)
    Character.objects.filter(pk=character_id).update(approval=Character.Approval.APPROVED)
    assert other.get(f"/api/v1/characters/{character_id}/").status_code == 200
    _error(other.patch(f"/api/v1/characters/{character_id}/", {"name": "X"}, format="json"), 403)
    bad = api.post("/api/v1/characters/", {"name": "T", "temperature": 9}, format="json")
    _error(bad, 400, "invalid")

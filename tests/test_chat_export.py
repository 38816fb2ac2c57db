"""Alternate greetings as swipes of the first message, the conversation list's search and
fields, and the chat export (Markdown, SillyTavern JSONL) of the active branch."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from rest_framework.test import APIClient

from fake_llm import Script
from messages_app.models import Conversation, Message
from messages_app.services import conversation_create
from tests.factories import CharacterFactory, UserFactory
from tests.helpers import run_llm_worker

pytestmark = pytest.mark.django_db(transaction=True)


def _character(**fields: Any) -> Any:
    return CharacterFactory(**fields)


def _user(**fields: Any) -> Any:
    return UserFactory(**fields)


# SillyTavern's date formats (humanizedISO8601DateTime, getMessageTimeStamp).
ST_CREATE_DATE = re.compile(r"^\d{4}-\d{1,2}-\d{1,2} @\d{2}h \d{2}m \d{2}s \d{2,3}ms$")
ST_SEND_DATE = re.compile(r"^[A-Z][a-z]+ \d{1,2}, \d{4} \d{1,2}:\d{2}(am|pm)$")


@pytest.fixture
def greeter(db: None) -> Any:
    return _character(
        name="Greeter",
        greeting="Hello!",
        alternate_greetings=["Howdy!", "  ", "Good evening."],
    )


def _history(api: APIClient, conversation_id: int) -> list[dict[str, Any]]:
    resp = api.get(f"/api/v1/conversations/{conversation_id}/messages/")
    assert resp.status_code == 200
    return resp.json()["results"]


def _send(api: APIClient, conversation_id: int, content: str) -> dict[str, Any]:
    resp = api.post(
        f"/api/v1/conversations/{conversation_id}/messages/", {"content": content}, format="json"
    )
    assert resp.status_code == 202, resp.content
    return resp.json()


# --- alternate greetings -----------------------------------------------------------------------


def test_alternate_greetings_are_siblings_of_the_greeting_which_is_active(api, greeter):
    resp = api.post("/api/v1/conversations/", {"character_id": greeter.pk}, format="json")
    assert resp.status_code == 201
    conversation_id = resp.json()["id"]
    (first,) = _history(api, conversation_id)
    assert first["content"] == "Hello!" and first["parent_id"] is None
    assert first["siblings"]["total"] == 3 and first["siblings"]["position"] == 1
    assert resp.json()["active_leaf_id"] == first["id"]
    ids = first["siblings"]["ids"]
    texts = dict(Message.objects.filter(pk__in=ids).values_list("id", "content"))
    assert [texts[i] for i in ids] == ["Hello!", "Howdy!", "Good evening."]

    # Switching to the third greeting shows it, as "3 of 3".
    resp = api.patch(
        f"/api/v1/conversations/{conversation_id}/", {"active_leaf_id": ids[2]}, format="json"
    )
    assert resp.status_code == 200 and resp.json()["active_leaf_id"] == ids[2]
    (shown,) = _history(api, conversation_id)
    assert shown["content"] == "Good evening."
    assert shown["siblings"] == {"ids": ids, "position": 3, "total": 3}

    # No greeting can be regenerated.
    for message_id in ids:
        resp = api.post(f"/api/v1/messages/{message_id}/regenerate/")
        assert resp.status_code == 400 and resp.json()["error"]["code"] == "not_a_reply"


def test_the_reply_answers_the_greeting_that_is_shown(api, user, greeter, fake_llm):
    conversation = conversation_create(owner=user, character=greeter)
    howdy = Message.objects.get(conversation=conversation, content="Howdy!")
    api.patch(f"/api/v1/conversations/{conversation.pk}/", {"active_leaf_id": howdy.pk})
    fake_llm.push(Script.from_text("Well hi."))
    sent = _send(api, conversation.pk, "hey")
    run_llm_worker()
    assert sent["user_message"]["parent_id"] == howdy.pk
    prompt = [m["content"] for m in fake_llm.requests[-1]["messages"]]
    assert "Howdy!" in prompt and "Hello!" not in prompt
    history = _history(api, conversation.pk)
    assert [m["content"] for m in history] == ["Howdy!", "hey", "Well hi."]


def test_a_character_with_only_alternate_greetings_starts_with_the_first(api):
    character = _character(greeting="", alternate_greetings=["One", "Two"])
    conversation = conversation_create(owner=_user(), character=character)
    assert conversation.active_leaf is not None and conversation.active_leaf.content == "One"
    assert Message.objects.filter(conversation=conversation, parent=None).count() == 2


def test_greetings_are_edited_as_character_fields(api, user):
    resp = api.post(
        "/api/v1/characters/",
        {"name": "Alt", "greeting": "Hi", "alternate_greetings": ["Yo", "Hey"]},
        format="json",
    )
    assert resp.status_code == 201, resp.content
    assert resp.json()["alternate_greetings"] == ["Yo", "Hey"]
    assert resp.json()["is_owner"] is True and resp.json()["avatar_url"] is None
    resp = api.patch(
        f"/api/v1/characters/{resp.json()['id']}/",
        {"alternate_greetings": "not a list"},
        format="json",
    )
    assert resp.status_code == 400 and "alternate_greetings" in resp.json()["error"]["details"]


# --- the conversation list ----------------------------------------------------------------------


def test_conversations_are_filtered_by_title_or_character_name_ignoring_case(api, user):
    pirate = _character(name="Captain Hook")
    chef = _character(name="Chef Luca")
    a = conversation_create(owner=user, character=pirate, title="Treasure maps")
    b = conversation_create(owner=user, character=chef, title="Pasta night")
    c = conversation_create(owner=user, character=chef, title="")
    conversation_create(owner=_user(username="bob"), character=pirate, title="treasure")

    def ids(q: str) -> set[int]:
        resp = api.get("/api/v1/conversations/", {"q": q})
        assert resp.status_code == 200
        return {row["id"] for row in resp.json()["results"]}

    assert ids("TREASURE") == {a.pk}
    assert ids("hook") == {a.pk}
    assert ids("luca") == {b.pk, c.pk}
    assert ids("pasta") == {b.pk}
    assert ids("") == {a.pk, b.pk, c.pk}
    assert ids("%") == set() and ids("nothing") == set()
    resp = api.get("/api/v1/conversations/", {"q": "x" * 201})
    assert resp.status_code == 400 and resp.json()["error"]["details"]["param"] == "q"


def test_a_conversation_row_has_what_the_list_shows(api, user, character):
    conversation_create(owner=user, character=character)
    row = api.get("/api/v1/conversations/").json()["results"][0]
    assert set(row) == {
        "id",
        "character_id",
        "character",
        "title",
        "active_leaf_id",
        "created_at",
        "last_activity_at",
    }
    assert row["character"] == {"id": character.pk, "name": "Captain Test", "avatar_url": None}


# --- export --------------------------------------------------------------------------------------


@pytest.fixture
def branched(api: APIClient, user: Any, greeter: Any, fake_llm: Any) -> Conversation:
    """Greeting (3 alternatives) -> "Tell me a joke" -> two replies, the second shown."""
    conversation = conversation_create(owner=user, character=greeter, title="Jokes")
    fake_llm.push(Script.from_text("Why did the chicken cross the road?"))
    sent = _send(api, conversation.pk, "Tell me a joke")
    run_llm_worker()
    fake_llm.push(Script.from_text("Knock knock."))
    api.post(f"/api/v1/messages/{sent['assistant_message']['id']}/regenerate/")
    run_llm_worker()
    conversation.refresh_from_db()
    return conversation


def test_jsonl_export_is_sillytaverns_chat_format_with_swipes(api, branched, user):
    resp = api.get(f"/api/v1/conversations/{branched.pk}/export/?format=jsonl")
    assert resp.status_code == 200
    assert resp["Content-Type"].startswith("application/jsonl")
    assert resp["Content-Disposition"] == f'attachment; filename="Jokes-{branched.pk}.jsonl"'
    lines = [json.loads(line) for line in resp.content.decode().splitlines()]
    header, *messages = lines
    assert set(header) == {"user_name", "character_name", "create_date", "chat_metadata"}
    assert header["user_name"] == "alice" and header["character_name"] == "Greeter"
    assert ST_CREATE_DATE.match(header["create_date"]), header["create_date"]
    assert isinstance(header["chat_metadata"], dict)
    assert [(m["name"], m["is_user"], m["mes"]) for m in messages] == [
        ("Greeter", False, "Hello!"),
        ("alice", True, "Tell me a joke"),
        ("Greeter", False, "Knock knock."),
    ]
    for message in messages:
        assert {"name", "is_user", "is_system", "send_date", "mes", "extra"} <= set(message)
        assert message["is_system"] is False and isinstance(message["extra"], dict)
        assert ST_SEND_DATE.match(message["send_date"]), message["send_date"]
    greeting, question, reply = messages
    assert greeting["swipes"] == ["Hello!", "Howdy!", "Good evening."]
    assert greeting["swipe_id"] == 0 and len(greeting["swipe_info"]) == 3
    assert "swipes" not in question
    assert reply["swipes"] == ["Why did the chicken cross the road?", "Knock knock."]
    assert reply["swipe_id"] == 1
    assert reply["swipes"][reply["swipe_id"]] == reply["mes"]


def test_markdown_export_is_the_active_branch(api, branched):
    resp = api.get(f"/api/v1/conversations/{branched.pk}/export/?format=markdown")
    assert resp.status_code == 200 and resp["Content-Type"].startswith("text/markdown")
    assert resp["Content-Disposition"] == f'attachment; filename="Jokes-{branched.pk}.md"'
    text = resp.content.decode()
    assert text.startswith("# Jokes\n")
    assert "### Greeter" in text and "### alice" in text
    assert "Tell me a joke" in text and "Knock knock." in text
    # Other branches are not in it.
    assert "chicken" not in text and "Howdy!" not in text
    assert text.index("Hello!") < text.index("Tell me a joke") < text.index("Knock knock.")
    # Markdown is the default format.
    default = api.get(f"/api/v1/conversations/{branched.pk}/export/")
    assert default.content == resp.content


def test_a_blocked_replys_text_is_not_exported(api, user, character):
    conversation = conversation_create(owner=user, character=character)
    Message.objects.create(
        conversation=conversation,
        parent=conversation.active_leaf,
        depth=1,
        role="user",
        content="hi",
    )
    blocked = Message.objects.create(
        conversation=conversation,
        parent=Message.objects.get(content="hi"),
        depth=2,
        role="assistant",
        content="something awful",
        status="blocked",
    )
    Conversation.objects.filter(pk=conversation.pk).update(active_leaf=blocked)
    for kind in ("markdown", "jsonl"):
        resp = api.get(f"/api/v1/conversations/{conversation.pk}/export/?format={kind}")
        assert resp.status_code == 200 and b"awful" not in resp.content


def test_export_errors(api, conversation, other_user):
    resp = api.get(f"/api/v1/conversations/{conversation.pk}/export/?format=pdf")
    assert resp.status_code == 400 and resp.json()["error"]["details"]["param"] == "format"
    other = APIClient()
    other.force_authenticate(other_user)
    resp = other.get(f"/api/v1/conversations/{conversation.pk}/export/?format=jsonl")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
    assert APIClient().get(f"/api/v1/conversations/{conversation.pk}/export/").status_code == 401


def test_an_empty_conversation_exports_its_header(api, user):
    conversation = conversation_create(owner=user, character=_character(greeting=""))
    resp = api.get(f"/api/v1/conversations/{conversation.pk}/export/?format=jsonl")
    assert resp.status_code == 200 and len(resp.content.decode().splitlines()) == 1


def test_the_chat_export_and_search_are_in_the_openapi_schema(api):
    paths = api.get("/api/schema/?format=json").json()["paths"]
    export = paths["/api/v1/conversations/{id}/export/"]["get"]
    assert set(export["responses"]["200"]["content"]) == {"text/markdown", "application/jsonl"}
    assert any(p["name"] == "format" for p in export["parameters"])
    listing = paths["/api/v1/conversations/"]["get"]
    assert any(p["name"] == "q" for p in listing["parameters"])
    avatar = paths["/api/v1/characters/{id}/avatar/"]
    assert {"post", "delete"} <= set(avatar)

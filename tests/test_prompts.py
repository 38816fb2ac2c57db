"""Prompts: what the LLM is sent, from the character and the branch, within the token budget."""

from __future__ import annotations

from typing import Any

import pytest

from fake_llm import Script
from llm_app.models import Generation
from messages_app.services import message_send
from tests.helpers import run_llm_worker

pytestmark = pytest.mark.django_db(transaction=True)


def _messages_url(conversation) -> str:
    return f"/api/v1/conversations/{conversation.pk}/messages/"


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

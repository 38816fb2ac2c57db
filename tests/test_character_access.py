"""Characters and cost control: the provider/model allowlist for users who are not staff, and
the approval a public character needs before other users see it."""

from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from messages_app.models import Character, Conversation
from tests.factories import CharacterFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

ALLOWED_PROVIDERS = ["", "lmstudio", "openai_compatible"]
ALLOWED_MODELS = ["", "SmolLM2-135M-Instruct"]


@pytest.fixture(autouse=True)
def _allowlist(settings: Any) -> None:
    settings.CHARACTER_ALLOWED_PROVIDERS = ALLOWED_PROVIDERS
    settings.CHARACTER_ALLOWED_MODELS = ALLOWED_MODELS


def _client(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def staff(db: None) -> Any:
    return UserFactory(username="staffer", is_staff=True)


@pytest.fixture
def bob(db: None) -> Any:
    return UserFactory(username="bob")


def _create(client: APIClient, **fields: Any) -> Any:
    return client.post("/api/v1/characters/", {"name": "Pirate", **fields}, format="json")


def _ids(client: APIClient) -> set[int]:
    resp = client.get("/api/v1/characters/")
    assert resp.status_code == 200, resp.content
    return {c["id"] for c in resp.json()["results"]}


# --- the allowlist ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "refused"),
    [
        ({"provider": "openai", "model": "gpt-4o"}, {"provider", "model"}),
        ({"provider": "anthropic"}, {"provider"}),
        # The model alone: the service default provider (or an OpenAI-compatible gateway)
        # would be asked for a paid model.
        ({"model": "gpt-4o"}, {"model"}),
        ({"provider": "lmstudio", "model": "claude-3-5-sonnet"}, {"model"}),
    ],
)
def test_a_user_who_is_not_staff_gets_400_with_the_allowed_values(
    api: APIClient, fields: dict[str, str], refused: set[str]
) -> None:
    resp = _create(api, **fields)

    assert resp.status_code == 400, resp.content
    error = resp.json()["error"]
    assert error["code"] == "invalid"
    assert "not allowed" in error["message"]
    details = error["details"]
    assert details["allowed_providers"] == ALLOWED_PROVIDERS
    assert details["allowed_models"] == ALLOWED_MODELS
    assert {"provider", "model"} & set(details) == refused
    for field in refused:
        assert repr(fields[field]) in details[field][0]
    assert not Character.objects.filter(name="Pirate").exists()


def test_a_user_may_choose_the_allowed_providers_and_models_and_the_service_default(
    api: APIClient,
) -> None:
    for provider, model in [
        ("", ""),
        ("lmstudio", "SmolLM2-135M-Instruct"),
        ("openai_compatible", ""),
    ]:
        resp = _create(api, provider=provider, model=model)
        assert resp.status_code == 201, resp.content
        assert (resp.json()["provider"], resp.json()["model"]) == (provider, model)


def test_staff_may_put_a_character_on_any_provider_and_model(staff: Any) -> None:
    resp = _create(_client(staff), provider="openai", model="gpt-4o")

    assert resp.status_code == 201, resp.content
    assert (resp.json()["provider"], resp.json()["model"]) == ("openai", "gpt-4o")


def test_the_allowlist_follows_the_settings(api: APIClient, settings: Any) -> None:
    settings.CHARACTER_ALLOWED_PROVIDERS = ["openai"]
    settings.CHARACTER_ALLOWED_MODELS = ["gpt-4o-mini"]

    assert _create(api, provider="openai", model="gpt-4o-mini").status_code == 201
    resp = _create(api, provider="", model="")
    assert resp.status_code == 400
    assert resp.json()["error"]["details"]["allowed_models"] == ["gpt-4o-mini"]


def test_an_update_to_a_refused_provider_or_model_is_400_and_changes_nothing(
    api: APIClient, user: Any
) -> None:
    character: Any = CharacterFactory(owner=user, provider="lmstudio", model="")
    url = f"/api/v1/characters/{character.pk}/"

    for body in ({"provider": "openai"}, {"model": "gpt-4o"}, {"name": "X", "model": "gpt-4o"}):
        resp = api.patch(url, body, format="json")
        assert resp.status_code == 400, resp.content
        assert resp.json()["error"]["details"]["allowed_providers"] == ALLOWED_PROVIDERS
    character.refresh_from_db()
    assert (character.name, character.provider, character.model) != ("X", "openai", "gpt-4o")
    assert (character.provider, character.model) == ("lmstudio", "")


def test_an_owner_may_edit_a_character_that_staff_put_outside_the_allowlist_if_the_llm_stays(
    api: APIClient, user: Any
) -> None:
    character: Any = CharacterFactory(
        owner=user, provider="openai", model="gpt-4o", is_public=False
    )
    url = f"/api/v1/characters/{character.pk}/"

    resp = api.patch(url, {"name": "Renamed", "temperature": 0.2}, format="json")
    assert resp.status_code == 200, resp.content
    # Sending the unchanged values back (as a PUT would) is no change either.
    full = {**resp.json(), "persona": "new"}
    resp = api.put(url, {k: v for k, v in full.items() if v is not None}, format="json")
    assert resp.status_code == 200, resp.content
    assert (resp.json()["provider"], resp.json()["model"]) == ("openai", "gpt-4o")

    # Changing one of the two checks the pair that results: gpt-4o on lmstudio is still refused.
    resp = api.patch(url, {"provider": "lmstudio"}, format="json")
    assert resp.status_code == 400
    assert set(resp.json()["error"]["details"]) == {"model", "allowed_providers", "allowed_models"}
    resp = api.patch(url, {"provider": "lmstudio", "model": ""}, format="json")
    assert resp.status_code == 200, resp.content


# --- approval ---------------------------------------------------------------------------------


def test_the_options_list_what_the_caller_may_choose_and_each_is_accepted(
    api: APIClient, settings: Any
) -> None:
    settings.MAX_TOKENS_PER_REQUEST = 1024
    response = api.get("/api/v1/characters/options/")
    assert response.status_code == 200
    options = response.json()
    assert [p["value"] for p in options["providers"]] == ALLOWED_PROVIDERS
    assert options["providers"][0]["label"] == "Service default"
    assert options["models"] == ALLOWED_MODELS
    assert options["max_tokens"] == {"min": 1, "max": 1024}
    assert options["temperature"]["min"] == 0 and options["temperature"]["max"] == 2
    # What the options offer, the server takes; one step beyond them, it refuses.
    for provider in options["providers"]:
        for model in options["models"]:
            created = _create(api, provider=provider["value"], model=model, max_tokens=1024)
            assert created.status_code == 201, created.json()
    assert _create(api, max_tokens=1025).status_code == 400
    assert _create(api, temperature=2.01).status_code == 400


def test_staff_options_offer_every_provider_and_any_model(staff: Any) -> None:
    options = _client(staff).get("/api/v1/characters/options/").json()
    assert [p["value"] for p in options["providers"]] == [v for v, _ in Character.Provider.choices]
    assert options["models"] is None


def test_a_new_public_character_of_a_user_is_pending_and_only_its_owner_sees_it(
    api: APIClient, user: Any, bob: Any
) -> None:
    resp = _create(api, is_public=True, greeting="Arr")
    assert resp.status_code == 201, resp.content
    assert resp.json()["approval"] == "pending"
    character_id = resp.json()["id"]
    other = _client(bob)

    assert character_id in _ids(api)
    assert api.get(f"/api/v1/characters/{character_id}/").json()["approval"] == "pending"
    assert character_id not in _ids(other)
    assert other.get(f"/api/v1/characters/{character_id}/").status_code == 404
    resp = other.post("/api/v1/conversations/", {"character_id": character_id}, format="json")
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"
    # The owner may chat with it while it waits.
    resp = api.post("/api/v1/conversations/", {"character_id": character_id}, format="json")
    assert resp.status_code == 201


def test_an_approved_public_character_is_seen_by_everyone_and_a_rejected_one_by_its_owner(
    api: APIClient, user: Any, bob: Any
) -> None:
    character_id = _create(api, is_public=True).json()["id"]
    other = _client(bob)

    Character.objects.filter(pk=character_id).update(approval=Character.Approval.APPROVED)
    assert character_id in _ids(other)
    assert other.get(f"/api/v1/characters/{character_id}/").json()["approval"] == "approved"
    resp = other.post("/api/v1/conversations/", {"character_id": character_id}, format="json")
    assert resp.status_code == 201

    Character.objects.filter(pk=character_id).update(approval=Character.Approval.REJECTED)
    assert character_id not in _ids(other)
    assert other.get(f"/api/v1/characters/{character_id}/").status_code == 404
    assert api.get(f"/api/v1/characters/{character_id}/").json()["approval"] == "rejected"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "New name"),
        ("description", "new"),
        ("persona", "new"),
        ("greeting", "new"),
        ("example_dialogue", "new"),
        ("system_prompt", "new"),
        ("provider", "openai_compatible"),
        ("model", "SmolLM2-135M-Instruct"),
    ],
)
def test_editing_what_others_read_sends_an_approved_public_character_back_to_review(
    api: APIClient, user: Any, bob: Any, field: str, value: str
) -> None:
    character: Any = CharacterFactory(owner=user, provider="lmstudio", model="")
    url = f"/api/v1/characters/{character.pk}/"
    assert character.pk in _ids(_client(bob))

    resp = api.patch(url, {field: value}, format="json")

    assert resp.status_code == 200, resp.content
    assert resp.json()["approval"] == "pending"
    assert character.pk not in _ids(_client(bob))


def test_other_edits_keep_the_approval_and_an_unchanged_value_is_no_edit(
    api: APIClient, user: Any
) -> None:
    character: Any = CharacterFactory(owner=user, name="Same")
    url = f"/api/v1/characters/{character.pk}/"

    for body in ({"temperature": 0.1, "max_tokens": 50}, {"name": "Same"}, {"is_public": True}):
        resp = api.patch(url, body, format="json")
        assert resp.status_code == 200, resp.content
        assert resp.json()["approval"] == "approved"


def test_making_a_character_public_again_needs_approval_again(api: APIClient, user: Any) -> None:
    character: Any = CharacterFactory(owner=user)
    url = f"/api/v1/characters/{character.pk}/"

    assert api.patch(url, {"is_public": False}, format="json").json()["approval"] == "approved"
    assert api.patch(url, {"is_public": True}, format="json").json()["approval"] == "pending"


def test_a_rejected_character_edited_by_its_owner_is_submitted_again(
    api: APIClient, user: Any
) -> None:
    character: Any = CharacterFactory(owner=user, approval=Character.Approval.REJECTED)
    url = f"/api/v1/characters/{character.pk}/"

    assert api.patch(url, {"persona": "kinder"}, format="json").json()["approval"] == "pending"


def test_staff_characters_and_staff_edits_are_approved(staff: Any, user: Any, bob: Any) -> None:
    admin = _client(staff)
    resp = _create(admin, is_public=True)
    assert resp.json()["approval"] == "approved"
    assert resp.json()["id"] in _ids(_client(bob))

    pending: Any = CharacterFactory(owner=user, approval=Character.Approval.PENDING)
    # Staff see public characters in review, to look at them before deciding.
    assert pending.pk in _ids(admin)
    resp = admin.patch(f"/api/v1/characters/{pending.pk}/", {"persona": "fixed"}, format="json")
    assert resp.json()["approval"] == "approved"
    assert pending.pk in _ids(_client(bob))


def test_existing_conversations_keep_working_while_their_character_is_back_in_review(
    api: APIClient, user: Any, bob: Any, fake_llm: Any
) -> None:
    character: Any = CharacterFactory(owner=user, greeting="Ahoy")
    bob_client = _client(bob)
    resp = bob_client.post("/api/v1/conversations/", {"character_id": character.pk}, format="json")
    assert resp.status_code == 201
    conversation_id = resp.json()["id"]
    carol = _client(UserFactory(username="carol"))

    assert (
        api.patch(
            f"/api/v1/characters/{character.pk}/", {"persona": "changed"}, format="json"
        ).json()["approval"]
        == "pending"
    )

    # bob, who already chats with it, still sees it and keeps chatting; carol does not see it.
    assert character.pk in _ids(bob_client)
    assert bob_client.get(f"/api/v1/characters/{character.pk}/").status_code == 200
    messages_url = f"/api/v1/conversations/{conversation_id}/messages/"
    page = bob_client.get(messages_url).json()["results"]
    assert [m["content"] for m in page] == ["Ahoy"]
    resp = bob_client.post(messages_url, {"content": "Still there?"}, format="json")
    assert resp.status_code == 202, resp.content
    assert character.pk not in _ids(carol)
    resp = carol.post("/api/v1/conversations/", {"character_id": character.pk}, format="json")
    assert resp.status_code == 404

    # Rejected: new conversations and the listing are closed, the existing one is not.
    Character.objects.filter(pk=character.pk).update(approval=Character.Approval.REJECTED)
    assert character.pk not in _ids(bob_client)
    assert bob_client.get(messages_url).status_code == 200
    assert Conversation.objects.filter(pk=conversation_id, owner=bob).exists()

"""Character writes: the providers and models a user who is not staff may choose (cost
control), and the approval a public character needs before other users see it."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import transaction
from PIL import Image

from messages_app.avatars import avatar_delete, avatar_encode, avatar_set
from messages_app.errors import InvalidInput
from messages_app.models import Character

# Changing any of these on a public character sends it back to review.
REVIEWED_FIELDS = (
    "name",
    "description",
    "persona",
    "greeting",
    "example_dialogue",
    "system_prompt",
    "provider",
    "model",
    "personality",
    "scenario",
    "alternate_greetings",
    "creator_notes",
    "tags",
    "creator",
)


def _is_staff(user: Any) -> bool:
    return bool(getattr(user, "is_staff", False))


def character_check_llm_choice(*, user: Any, provider: str, model: str) -> None:
    """Raise InvalidInput (400) unless `user` may put a character on `provider` and `model`.

    Staff may choose anything. Others only what CHARACTER_ALLOWED_PROVIDERS and
    CHARACTER_ALLOWED_MODELS list ("" = the service default). The two are checked together,
    so the details always name both allowlists:
    `{"provider": [msg], "model": [msg], "allowed_providers": [...], "allowed_models": [...]}`,
    with a field key only for a value that is refused.
    """
    if _is_staff(user):
        return
    allowed_providers = list(settings.CHARACTER_ALLOWED_PROVIDERS)
    allowed_models = list(settings.CHARACTER_ALLOWED_MODELS)
    details: dict[str, Any] = {}
    if provider not in allowed_providers:
        details["provider"] = [f"The provider {provider!r} is not allowed."]
    if model not in allowed_models:
        details["model"] = [f"The model {model!r} is not allowed."]
    if details:
        details["allowed_providers"] = allowed_providers
        details["allowed_models"] = allowed_models
        raise InvalidInput(
            "This provider or model is not allowed; choose one of the allowed values.",
            details=details,
        )


def character_llm_options(*, user: Any) -> dict[str, Any]:
    """What `user` may choose for a character's model settings, for the editor: the providers
    (staff: every one), the models (`None` for staff: any name), and the bounds and defaults
    the server applies. The same rules as character_check_llm_choice and the serializer."""
    staff = _is_staff(user)
    providers = [
        {"value": value, "label": str(label)}
        for value, label in Character.Provider.choices
        if staff or value in settings.CHARACTER_ALLOWED_PROVIDERS
    ]
    return {
        "providers": providers,
        "models": None if staff else list(settings.CHARACTER_ALLOWED_MODELS),
        "default_provider": settings.DEFAULT_LLM_PROVIDER,
        "default_model": settings.DEFAULT_MODEL,
        "temperature": {"min": 0.0, "max": 2.0, "default": settings.DEFAULT_TEMPERATURE},
        "max_tokens": {"min": 1, "max": settings.MAX_TOKENS_PER_REQUEST},
    }


def character_create(*, owner: Any, data: dict[str, Any]) -> Character:
    """A new character of `owner` from validated fields. A user who is not staff gets it
    `pending` (public or not: making it public later needs the review anyway); staff's is
    `approved`."""
    character_check_llm_choice(
        user=owner, provider=data.get("provider", ""), model=data.get("model", "")
    )
    approval = Character.Approval.APPROVED if _is_staff(owner) else Character.Approval.PENDING
    return Character.objects.create(**{**data, "owner": owner, "approval": approval})


@transaction.atomic
def character_update(*, character: Character, actor: Any, data: dict[str, Any]) -> Character:
    """Apply validated `data` to `character` on behalf of `actor` (its owner or staff).

    - Provider and model: when either changes, the resulting pair must pass
      character_check_llm_choice; an update that changes neither is not checked, so a
      character that staff put outside the allowlist keeps working when its owner renames it.
    - Approval: when a field of REVIEWED_FIELDS changes, or the character becomes public, it
      goes (back) to `pending` if `actor` is not staff, and becomes `approved` if `actor` is
      staff. Other changes (temperature, max_tokens, making it private) keep its approval.
    """
    changed = {name for name, value in data.items() if getattr(character, name) != value}
    if changed & {"provider", "model"}:
        character_check_llm_choice(
            user=actor,
            provider=data.get("provider", character.provider),
            model=data.get("model", character.model),
        )
    becomes_public = data.get("is_public") is True and not character.is_public
    for name in changed:
        setattr(character, name, data[name])
    if becomes_public or changed & set(REVIEWED_FIELDS):
        character.approval = (
            Character.Approval.APPROVED if _is_staff(actor) else Character.Approval.PENDING
        )
    character.save()
    return character


def _review_again(character: Character, actor: Any) -> None:
    character.approval = (
        Character.Approval.APPROVED if _is_staff(actor) else Character.Approval.PENDING
    )
    character.save(update_fields=["approval", "updated_at"])


@transaction.atomic
def character_avatar_set(*, character: Character, actor: Any, content: bytes) -> Character:
    """Give `character` the avatar `content` (re-encoded by messages_app.avatars) on behalf
    of `actor` (its owner or staff). A public character's new picture goes (back) to review,
    as its reviewed fields do."""
    avatar_set(character=character, content=content)
    if character.is_public:
        _review_again(character, actor)
    return character


@transaction.atomic
def character_avatar_delete(*, character: Character) -> Character:
    return avatar_delete(character=character)


@transaction.atomic
def character_import(
    *, owner: Any, data: dict[str, Any], extras: dict[str, Any], image: Image.Image | None
) -> Character:
    """A new private character of `owner` from a card's validated fields (`data`), keeping
    the card's other data (`extras`) for export. A card PNG's picture becomes its avatar."""
    character = character_create(
        owner=owner, data={**data, "is_public": False, "card_extras": extras}
    )
    if image is not None:
        avatar_set(character=character, content=avatar_encode(image))
    return character

"""Shared set-up of the moderation tests: messages to review, verdicts, a moderator."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from messages_app import moderation
from messages_app.models import Conversation, Message, ReviewItem
from tests.factories import CharacterFactory, UserFactory


@dataclass(frozen=True)
class Verdict:
    """Shaped like messages_app.safety's Verdict: what review_record reads."""

    categories: list[str]
    scores: dict[str, float] = field(default_factory=dict)


def user_message(conversation: Conversation, content: str = "you idiot", **fields: Any) -> Message:
    parent = conversation.messages.order_by("-id").first()
    return Message.objects.create(
        conversation=conversation,
        parent=parent,
        depth=(parent.depth + 1) if parent else 0,
        role=Message.Role.USER,
        author=conversation.owner,
        content=content,
        **fields,
    )


def reply(conversation: Conversation, content: str = "a rude reply", **fields: Any) -> Message:
    parent = conversation.messages.order_by("-id").first()
    return Message.objects.create(
        conversation=conversation,
        parent=parent,
        depth=(parent.depth + 1) if parent else 0,
        role=Message.Role.ASSISTANT,
        content=content,
        **fields,
    )


def queued(
    conversation: Conversation,
    n: int = 1,
    *,
    categories: tuple[str, ...] = ("harassment",),
    score: float = 0.9,
    blocked: bool = True,
) -> list[ReviewItem]:
    """`n` blocked user messages of the conversation's owner, each in the queue."""
    items = []
    for i in range(n):
        message = user_message(
            conversation,
            f"insult number {i}",
            status=Message.Status.BLOCKED if blocked else "completed",
        )
        verdict = Verdict(list(categories), {c: score for c in categories})
        items.append(
            moderation.review_record(message, source="input", verdict=verdict, blocked=blocked)
        )
    return items


def make_moderator(username: str = "mod") -> Any:
    moderator: Any = UserFactory(username=username, is_staff=True)
    moderator.groups.add(moderation.moderators_group_ensure())
    return moderator


def make_user(**fields: Any) -> Any:
    return UserFactory(**fields)


def make_character(**fields: Any) -> Any:
    return CharacterFactory(**fields)


def message_of(item: ReviewItem) -> Message:
    return Message.objects.get(review=item)


def ban_of(user: Any) -> moderation.Ban:
    """The ban in force on `user`; fails the test when there is none."""
    ban = moderation.active_ban(user)
    assert ban is not None
    return ban


def until_of(ban: moderation.Ban) -> datetime:
    assert ban.until is not None
    return ban.until

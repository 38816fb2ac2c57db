"""Reads: what a user may see, and the active branch of a conversation's message tree."""

from __future__ import annotations

from typing import Any

from django.db import connection
from django.db.models import Q, QuerySet

from messages_app.errors import NotFound
from messages_app.models import Character, Conversation, Message

_BRANCH_SQL = """
WITH RECURSIVE branch(id, parent_id, n) AS (
    SELECT id, parent_id, 1 FROM {table} WHERE id = %s AND conversation_id = %s
    UNION ALL
    SELECT m.id, m.parent_id, b.n + 1 FROM {table} m JOIN branch b ON m.id = b.parent_id
    WHERE b.n < %s
)
SELECT id FROM branch
"""


def characters_visible_to(user: Any) -> QuerySet[Character]:
    return Character.objects.filter(Q(is_public=True) | Q(owner=user)).select_related("owner")


def character_get_visible(*, user: Any, character_id: int) -> Character:
    character = characters_visible_to(user).filter(pk=character_id).first()
    if character is None:
        raise NotFound("No such character.")
    return character


def conversations_of(user: Any) -> QuerySet[Conversation]:
    return Conversation.objects.filter(owner=user)


def conversation_get(*, user: Any, conversation_id: int) -> Conversation:
    """The user's own conversation; another user's is as unknown as a missing one (404)."""
    conversation = (
        conversations_of(user).select_related("character").filter(pk=conversation_id).first()
    )
    if conversation is None:
        raise NotFound("No such conversation.")
    return conversation


def message_get(*, user: Any, message_id: int) -> Message:
    message = (
        Message.objects.select_related("conversation", "conversation__character")
        .filter(pk=message_id, conversation__owner=user)
        .first()
    )
    if message is None:
        raise NotFound("No such message.")
    return message


def branch_ids(*, conversation_id: int, leaf_id: int, limit: int) -> list[int]:
    """Ids on the path from `leaf_id` up towards the root, at most `limit`, newest first.

    One index lookup per step, so a page costs O(limit) whatever the conversation's size.
    """
    sql = _BRANCH_SQL.format(table=Message._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(sql, [leaf_id, conversation_id, limit])
        return [row[0] for row in cursor.fetchall()]


def branch_messages(
    *, conversation: Conversation, leaf_id: int | None = None, limit: int = 10_000
) -> list[Message]:
    """Messages of a branch, oldest first, ending at `leaf_id` (default: the active leaf)."""
    leaf_id = leaf_id if leaf_id is not None else conversation.active_leaf_id
    if leaf_id is None:
        return []
    ids = branch_ids(conversation_id=conversation.pk, leaf_id=leaf_id, limit=limit)
    return list(
        Message.objects.filter(pk__in=ids).select_related("generation").order_by("depth", "id")
    )


def branch_page(
    *, conversation: Conversation, before_id: int | None, limit: int
) -> tuple[list[Message], int | None]:
    """A page of the active branch, oldest first, and the cursor for the page before it.

    Without `before_id` this is the newest page. `before_id` must lie on the active branch.
    """
    if before_id is None:
        start = conversation.active_leaf_id
    else:
        start = (
            Message.objects.filter(pk=before_id, conversation=conversation)
            .values_list("parent_id", flat=True)
            .first()
        )
    if start is None:
        return [], None
    messages = branch_messages(conversation=conversation, leaf_id=start, limit=limit)
    older = messages[0].parent_id if messages and len(messages) == limit else None
    return messages, messages[0].pk if older is not None else None

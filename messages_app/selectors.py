"""Reads: what a user may see, and the active branch of a conversation's message tree."""

from __future__ import annotations

from typing import Any, NamedTuple
from uuid import UUID

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


# The same walk, carrying what a prompt needs, so a prompt's history is one query of plain rows.
_TURNS_SQL = """
WITH RECURSIVE branch(id, parent_id, role, status, content, n) AS (
    SELECT id, parent_id, role, status, content, 1 FROM {table}
    WHERE id = %s AND conversation_id = %s
    UNION ALL
    SELECT m.id, m.parent_id, m.role, m.status, m.content, b.n + 1
    FROM {table} m JOIN branch b ON m.id = b.parent_id
    WHERE b.n < %s
)
SELECT id, role, status, content FROM branch ORDER BY n DESC
"""


class Turn(NamedTuple):
    """A message of a branch as a prompt reads it."""

    id: int
    role: str
    status: str
    content: str


_LEAF_SQL = """
WITH RECURSIVE d(id) AS (
    SELECT id FROM {table} WHERE id = %s AND conversation_id = %s
    UNION ALL
    SELECT m.id FROM {table} m JOIN d ON m.parent_id = d.id
)
SELECT MAX(id) FROM d
"""


def characters_visible_to(user: Any) -> QuerySet[Character]:
    """The characters `user` may list, read and start a conversation with.

    - Their own, whatever their approval.
    - Public ones that a moderator approved.
    - Public ones back in review (`pending`, after their owner edited them) that `user`
      already chats with, so the character of an existing conversation does not vanish.
    - Staff: every public one, so that they can look at it before deciding.
    A rejected character is its owner's only. Existing conversations never depend on this
    (conversation_get does not look at the character's approval).
    """
    if getattr(user, "is_staff", False):
        condition = Q(is_public=True) | Q(owner=user)
    else:
        chatted = Conversation.objects.filter(owner=user).values("character_id")
        condition = (
            Q(owner=user)
            | Q(is_public=True, approval=Character.Approval.APPROVED)
            | Q(is_public=True, approval=Character.Approval.PENDING, pk__in=chatted)
        )
    return Character.objects.filter(condition).select_related("owner")


def character_get_visible(*, user: Any, character_id: int) -> Character:
    character = characters_visible_to(user).filter(pk=character_id).first()
    if character is None:
        raise NotFound("No such character.")
    return character


def conversations_of(user: Any) -> QuerySet[Conversation]:
    return Conversation.objects.filter(owner=user)


def conversations_list(*, user: Any, q: str = "") -> QuerySet[Conversation]:
    """The user's conversations with their characters; with `q`, those whose title or
    character name contains it, ignoring case."""
    conversations = conversations_of(user).select_related("character")
    q = q.strip()
    if q:
        conversations = conversations.filter(
            Q(title__icontains=q) | Q(character__name__icontains=q)
        )
    return conversations


def conversation_get(*, user: Any, conversation_id: int) -> Conversation:
    """The user's own conversation; another user's is as unknown as a missing one (404)."""
    conversation = (
        conversations_of(user).select_related("character").filter(pk=conversation_id).first()
    )
    if conversation is None:
        raise NotFound("No such conversation.")
    return conversation


def conversation_for_socket(*, user: Any, conversation_id: int) -> Conversation | None:
    """The user's conversation for a websocket; None when the account is no longer active
    (checked afresh, not from the session). NotFound as conversation_get."""
    conversation = (
        conversations_of(user)
        .select_related("character", "owner")
        .filter(pk=conversation_id)
        .first()
    )
    if conversation is None:
        raise NotFound("No such conversation.")
    return conversation if conversation.owner.is_active else None


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


def branch_turns(*, conversation_id: int, leaf_id: int, limit: int) -> list[Turn]:
    """The last `limit` messages of the branch ending at `leaf_id`, oldest first, as plain
    rows (no model instances): one query whose cost grows with `limit`, not with the
    conversation."""
    sql = _TURNS_SQL.format(table=Message._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(sql, [leaf_id, conversation_id, limit])
        return [Turn(*row) for row in cursor.fetchall()]


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


def reply_get(*, user: Any, generation_id: int) -> Message:
    """The reply that generation `generation_id` fills, if it is the user's own; another
    user's is as unknown as a missing one (404)."""
    reply = (
        Message.objects.select_related("conversation", "generation")
        .filter(generation__pk=generation_id, conversation__owner=user)
        .first()
    )
    if reply is None:
        raise NotFound("No such generation.")
    return reply


def reply_in_conversation(*, conversation_id: int, generation_id: int) -> Message | None:
    """Generation `generation_id`'s reply in this conversation, with its generation loaded."""
    return (
        Message.objects.select_related("generation")
        .filter(generation__pk=generation_id, conversation_id=conversation_id)
        .first()
    )


def reply_stream_key(*, conversation_id: int, generation_id: int) -> UUID | None:
    """The token-log key of generation `generation_id`'s reply in this conversation."""
    key: UUID | None = (
        Message.objects.filter(generation__pk=generation_id, conversation_id=conversation_id)
        .values_list("stream_key", flat=True)
        .first()
    )
    return key


def message_fresh(message_id: int) -> Message:
    return Message.objects.select_related("generation").get(pk=message_id)


def siblings_of(messages: list[Message]) -> dict[int, list[int]]:
    """For each message, the ids of it and its siblings (same parent), oldest first. One query."""
    if not messages:
        return {}
    conversation_ids = {m.conversation_id for m in messages}
    parent_ids = {m.parent_id for m in messages if m.parent_id is not None}
    has_root = any(m.parent_id is None for m in messages)
    rows = Message.objects.filter(conversation_id__in=conversation_ids)
    condition = Q(parent_id__in=parent_ids)
    if has_root:
        condition |= Q(parent__isnull=True)
    by_parent: dict[tuple[int, int | None], list[int]] = {}
    for pk, parent_id, conversation_id in (
        rows.filter(condition).order_by("id").values_list("id", "parent_id", "conversation_id")
    ):
        by_parent.setdefault((conversation_id, parent_id), []).append(pk)
    return {m.pk: by_parent.get((m.conversation_id, m.parent_id), [m.pk]) for m in messages}


def branch_leaf_under(*, conversation: Conversation, message_id: int) -> int:
    """The newest message under `message_id` (itself included): always a leaf, since a child is
    always newer than its parent. Switching to a message shows its latest branch."""
    sql = _LEAF_SQL.format(table=Message._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(sql, [message_id, conversation.pk])
        row = cursor.fetchone()
    if row is None or row[0] is None:
        raise NotFound("No such message in this conversation.")
    return int(row[0])

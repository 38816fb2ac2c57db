"""Chat export: the active branch of a conversation as Markdown, or as JSONL in SillyTavern's
chat format (the file SillyTavern saves per chat and imports with "Import chat").

JSONL: the first line is the chat's header `{"user_name", "character_name", "create_date",
"chat_metadata"}`, then one line per message `{"name", "is_user", "is_system", "send_date",
"mes", "extra"}`. An assistant message with siblings (regenerated replies, alternate
greetings) carries them as SillyTavern's swipes: `swipes` (their texts, oldest first),
`swipe_id` (the one on the branch) and `swipe_info`. Dates are written as SillyTavern writes
them (`create_date` "2024-9-28 @01h 02m 36s 000ms", `send_date` "September 28, 2024
1:02am"), in UTC.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from messages_app.models import Conversation, Message
from messages_app.selectors import branch_messages

MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)


def st_create_date(moment: datetime) -> str:
    """SillyTavern's humanizedISO8601DateTime (its chat files' `create_date`)."""
    return (
        f"{moment.year}-{moment.month}-{moment.day} @{moment.hour:02d}h {moment.minute:02d}m "
        f"{moment.second:02d}s {moment.microsecond // 1000:02d}ms"
    )


def st_send_date(moment: datetime) -> str:
    """SillyTavern's getMessageTimeStamp (its messages' `send_date`): "June 19, 2023 2:20pm"."""
    hour = moment.hour % 12 or 12
    meridiem = "pm" if moment.hour >= 12 else "am"
    day = f"{MONTHS[moment.month - 1]} {moment.day}, {moment.year}"
    return f"{day} {hour}:{moment.minute:02d}{meridiem}"


def _visible_text(message: Message) -> str:
    # A reply the content filter blocked is never given back (as in messages_app.serializers).
    if message.status == Message.Status.BLOCKED and message.role == Message.Role.ASSISTANT:
        return ""
    return message.content


def _user_name(conversation: Conversation) -> str:
    owner = conversation.owner
    return owner.get_username() if owner is not None else "You"


def _branch(conversation: Conversation) -> list[Message]:
    return branch_messages(conversation=conversation)


def _siblings(messages: list[Message]) -> dict[int, list[Message]]:
    """For each assistant message of the branch with siblings: all of them, oldest first."""
    parents = {m.parent_id for m in messages if m.role == Message.Role.ASSISTANT}
    roots = None in parents
    found: dict[int | None, list[Message]] = {}
    query = Message.objects.filter(
        conversation_id=messages[0].conversation_id, role=Message.Role.ASSISTANT
    ).order_by("id")
    for sibling in query.filter(parent_id__in=[p for p in parents if p is not None]):
        found.setdefault(sibling.parent_id, []).append(sibling)
    if roots:
        found[None] = list(query.filter(parent__isnull=True))
    return {
        m.pk: found[m.parent_id]
        for m in messages
        if m.role == Message.Role.ASSISTANT and len(found.get(m.parent_id, [])) > 1
    }


def chat_jsonl(conversation: Conversation) -> str:
    """The active branch in SillyTavern's JSONL chat format (see the module docstring)."""
    character_name = conversation.character.name
    user_name = _user_name(conversation)
    lines: list[dict[str, Any]] = [
        {
            "user_name": user_name,
            "character_name": character_name,
            "create_date": st_create_date(conversation.created_at),
            "chat_metadata": {
                "message_service": {
                    "conversation_id": conversation.pk,
                    "title": conversation.title,
                    "character_id": conversation.character_id,
                }
            },
        }
    ]
    messages = [m for m in _branch(conversation) if m.role != Message.Role.SYSTEM]
    swipes = _siblings(messages) if messages else {}
    for message in messages:
        is_user = message.role == Message.Role.USER
        extra: dict[str, Any] = {"message_service": {"id": message.pk, "status": message.status}}
        if not is_user and message.model:
            extra["model"] = message.model
        line: dict[str, Any] = {
            "name": user_name if is_user else character_name,
            "is_user": is_user,
            "is_system": False,
            "send_date": st_send_date(message.created_at),
            "mes": _visible_text(message),
            "extra": extra,
        }
        alternatives = swipes.get(message.pk)
        if alternatives:
            line["swipe_id"] = [a.pk for a in alternatives].index(message.pk)
            line["swipes"] = [_visible_text(a) for a in alternatives]
            line["swipe_info"] = [
                {"send_date": st_send_date(a.created_at), "extra": {}} for a in alternatives
            ]
        lines.append(line)
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)


def chat_markdown(conversation: Conversation) -> str:
    """The active branch as Markdown: a heading, then each message under its speaker's name."""
    character_name = conversation.character.name
    user_name = _user_name(conversation)
    title = conversation.title or character_name
    out = [
        f"# {title}",
        "",
        f"A conversation with {character_name}, started "
        f"{conversation.created_at:%Y-%m-%d %H:%M} UTC.",
        "",
    ]
    for message in _branch(conversation):
        if message.role == Message.Role.SYSTEM:
            continue
        speaker = user_name if message.role == Message.Role.USER else character_name
        when = f"{message.created_at:%Y-%m-%d %H:%M}"
        status = "" if message.status == Message.Status.COMPLETED else f" ({message.status})"
        out += [f"### {speaker} · {when}{status}", "", _visible_text(message), ""]
    return "\n".join(out).rstrip("\n") + "\n"


def chat_filename(conversation: Conversation, extension: str) -> str:
    name = conversation.title or conversation.character.name
    stem = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in name)
    return f"{stem.strip('_')[:60] or 'chat'}-{conversation.pk}.{extension}"

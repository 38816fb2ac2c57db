"""Prompt assembly: the character first, then the newest turns of the branch that fit the budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from messages_app.models import Character, Conversation, Message
from messages_app.selectors import branch_messages

# A stated estimate, used until a model tokenizer is asked: about 4 characters per token for
# English text, plus a few tokens of chat-template overhead per message.
CHARS_PER_TOKEN = 4
PER_MESSAGE_OVERHEAD = 4
_HISTORY_ROLES = {Message.Role.USER, Message.Role.ASSISTANT}
_HISTORY_STATUSES = {Message.Status.COMPLETED, Message.Status.CANCELLED}


def estimate_tokens(text: str) -> int:
    return -(-len(text) // CHARS_PER_TOKEN) + PER_MESSAGE_OVERHEAD


def system_text(character: Character) -> str:
    parts = [character.system_prompt.strip()]
    if character.persona.strip():
        parts.append(f"You are {character.name}. {character.persona.strip()}")
    else:
        parts.append(f"You are {character.name}.")
    if character.example_dialogue.strip():
        parts.append("Example dialogue:\n" + character.example_dialogue.strip())
    return "\n\n".join(p for p in parts if p)


@dataclass(frozen=True)
class Prompt:
    messages: list[dict[str, str]]
    manifest: dict[str, Any]


def prompt_build(
    *, conversation: Conversation, reply: Message, context_tokens: int, max_tokens: int
) -> Prompt:
    """The messages for the reply `reply`, whose parent is the newest user turn.

    Turns are dropped oldest first until system text + history + max_tokens fit the context.
    """
    character = conversation.character
    system = system_text(character)
    budget = context_tokens - max_tokens - estimate_tokens(system)
    assert reply.parent_id is not None, "a reply always answers a message"
    history = [
        m
        for m in branch_messages(conversation=conversation, leaf_id=reply.parent_id)
        if m.role in _HISTORY_ROLES and (m.status in _HISTORY_STATUSES or m.role == "user")
    ]
    chosen: list[Message] = []
    used = 0
    for message in reversed(history):
        cost = estimate_tokens(message.content)
        if used + cost > budget and chosen:
            break
        chosen.append(message)
        used += cost
    chosen.reverse()
    messages = [{"role": "system", "content": system}] + [
        {"role": m.role, "content": m.content} for m in chosen
    ]
    manifest = {
        "message_ids": [m.pk for m in chosen],
        "dropped_message_ids": [m.pk for m in history[: len(history) - len(chosen)]],
        "system_tokens": estimate_tokens(system),
        "history_tokens": used,
        "budget_tokens": budget,
        "context_tokens": context_tokens,
        "max_tokens": max_tokens,
        "token_counter": f"estimate: ceil(chars/{CHARS_PER_TOKEN}) + {PER_MESSAGE_OVERHEAD}",
    }
    return Prompt(messages=messages, manifest=manifest)

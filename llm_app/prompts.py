"""Prompt assembly: the character first, then the newest turns of the branch that fit the budget.

Budget = the model's context (LLM_CONTEXT_TOKENS) − the reply's max_tokens − the system text.
Tokens are counted with the model's own tokenizer where the server offers one (llama-server
/tokenize; tiktoken for OpenAI models) and with a stated estimate otherwise (llm_app.tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings

from llm_app.providers import shared_http
from llm_app.tokens import PER_MESSAGE_OVERHEAD, TokenCounter
from messages_app.models import Character, Message
from messages_app.selectors import Turn, branch_turns

_HISTORY_ROLES = {Message.Role.USER, Message.Role.ASSISTANT}
_HISTORY_STATUSES = {Message.Status.COMPLETED, Message.Status.CANCELLED}
BYTE_BOUND_COUNTER = "upper bound: UTF-8 bytes (everything fit)"
# History is counted newest first, a batch at a time, until the budget is spent.
_BATCH = 16


def system_text(character: Character) -> str:
    parts = [character.system_prompt.strip()]
    if character.persona.strip():
        parts.append(f"You are {character.name}. {character.persona.strip()}")
    else:
        parts.append(f"You are {character.name}.")
    # Card fields (issue 12), in the order of SillyTavern's default story string.
    if character.personality.strip():
        parts.append(f"{character.name}'s personality: {character.personality.strip()}")
    if character.scenario.strip():
        parts.append(f"Scenario: {character.scenario.strip()}")
    if character.example_dialogue.strip():
        parts.append("Example dialogue:\n" + character.example_dialogue.strip())
    return "\n\n".join(p for p in parts if p)


@dataclass(frozen=True)
class Prompt:
    messages: list[dict[str, str]]
    manifest: dict[str, Any]


def history_limit(context_tokens: int) -> int:
    """How many messages of a branch a prompt reads at most. A message costs at least
    PER_MESSAGE_OVERHEAD tokens, so no more than context / overhead can fit (the newest goes in
    even alone); twice that leaves room for the failed replies that are read and skipped. So
    the read is bounded by the context, not by the conversation's length."""
    fit = max(0, context_tokens) // PER_MESSAGE_OVERHEAD + 1
    return 2 * fit + 2


def history_read(*, conversation_id: int, reply: Message, limit: int) -> list[Turn]:
    """The branch up to the reply's user turn, without failed or unfinished replies, and
    without anything the content filter blocked (sync)."""
    assert reply.parent_id is not None, "a reply always answers a message"
    return [
        m
        for m in branch_turns(conversation_id=conversation_id, leaf_id=reply.parent_id, limit=limit)
        if m.role in _HISTORY_ROLES
        and (
            m.status in _HISTORY_STATUSES
            if m.role != Message.Role.USER
            else m.status != Message.Status.BLOCKED
        )
    ]


def counter_for(provider: str, model: str) -> TokenCounter:
    base_url = settings.LLM_SERVICE_URL if provider in ("lmstudio", "openai_compatible") else None
    return TokenCounter(provider=provider, model=model, base_url=base_url, http=shared_http())


async def prompt_build(
    *,
    character: Character,
    history: list[Turn],
    provider: str,
    model: str,
    context_tokens: int,
    max_tokens: int,
) -> Prompt:
    """The messages for a reply to the end of `history` (history_read); turns are dropped
    oldest first until everything fits."""
    system = system_text(character)
    byte_bound = [len(m.content.encode()) + PER_MESSAGE_OVERHEAD for m in history]
    system_bound = len(system.encode()) + PER_MESSAGE_OVERHEAD
    if system_bound + sum(byte_bound) <= context_tokens - max_tokens:
        # A token covers at least one byte, so UTF-8 bytes bound the count from above: when
        # even the bound fits, everything goes in and no tokenizer needs to be asked. The exact
        # count comes back from the provider as usage.prompt_tokens.
        return _prompt(
            system,
            [(m, cost) for m, cost in zip(history, byte_bound, strict=True)],
            history,
            system_tokens=system_bound,
            budget=context_tokens - max_tokens - system_bound,
            context_tokens=context_tokens,
            max_tokens=max_tokens,
            counter=BYTE_BOUND_COUNTER,
        )
    counter = counter_for(provider, model)
    system_count = await counter.count(system)
    system_tokens = system_count.tokens + PER_MESSAGE_OVERHEAD
    budget = context_tokens - max_tokens - system_tokens
    chosen: list[tuple[Turn, int]] = []
    used = 0
    newest_first = list(reversed(history))
    full = False
    for start in range(0, len(newest_first), _BATCH):
        batch = newest_first[start : start + _BATCH]
        counts = await counter.count_many([m.content for m in batch])
        for message, count in zip(batch, counts, strict=True):
            cost = count.tokens + PER_MESSAGE_OVERHEAD
            # The newest turn always goes in, even alone over budget: the provider decides.
            if used + cost > budget and chosen:
                full = True
                break
            chosen.append((message, cost))
            used += cost
        if full:
            break
    chosen.reverse()
    return _prompt(
        system,
        chosen,
        history,
        system_tokens=system_tokens,
        budget=budget,
        context_tokens=context_tokens,
        max_tokens=max_tokens,
        counter=system_count.counter,
    )


def _prompt(
    system: str,
    chosen: list[tuple[Turn, int]],
    history: list[Turn],
    *,
    system_tokens: int,
    budget: int,
    context_tokens: int,
    max_tokens: int,
    counter: str,
) -> Prompt:
    kept = {m.id for m, _ in chosen}
    used = sum(cost for _, cost in chosen)
    messages = [{"role": "system", "content": system}] + [
        {"role": m.role, "content": m.content} for m, _ in chosen
    ]
    manifest = {
        "message_ids": [m.id for m, _ in chosen],
        "message_tokens": [cost for _, cost in chosen],
        "dropped_message_ids": [m.id for m in history if m.id not in kept],
        "system_tokens": system_tokens,
        "history_tokens": used,
        "prompt_tokens_counted": system_tokens + used,
        "budget_tokens": budget,
        "context_tokens": context_tokens,
        "max_tokens": max_tokens,
        "token_counter": counter,
        "per_message_overhead": PER_MESSAGE_OVERHEAD,
    }
    return Prompt(messages=messages, manifest=manifest)

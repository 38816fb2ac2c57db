"""A realistic message history for the analytics tests, and the usage rows recomputed from it
in plain Python (no ORM aggregation), to compare the rollups with."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from analytics_app import histograms
from analytics_app.events import encode
from analytics_app.models import UsageRow
from llm_app.models import Generation
from messages_app.models import Conversation, Feedback, Message
from tests.factories import CharacterFactory, UserFactory

MODELS = ("small-1", "large-2", "vision-3")
FAIL_CODES = ("provider_error", "timeout", "worker_lost", "")


def floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def _at(message: Message, when: datetime) -> Message:
    Message.objects.filter(pk=message.pk).update(created_at=when)
    message.created_at = when
    return message


@dataclass
class History:
    users: list[Any]
    characters: list[Any]
    conversations: list[Conversation]
    start: datetime
    events: list[bytes] = field(default_factory=list)


def build_history(
    *, seed: int = 10, exchanges: int = 160, hours: int = 60, start: datetime | None = None
) -> History:
    """Users, characters and conversations with user messages and replies of every status
    (failures with codes, cancelled, blocked, still streaming), retries, tokens, times, flags,
    feedback and greetings, spread over `hours` hours from `start` (default: four days ago);
    some replies cross into the next hour. `events` are what the real hooks would queue."""
    rng = random.Random(seed)
    start = floor_hour(start or datetime.now(UTC) - timedelta(days=4))
    users: list[Any] = [UserFactory(username=f"an-user-{i}") for i in range(3)]
    characters: list[Any] = [CharacterFactory(name=f"An Character {i}") for i in range(3)]
    conversations: list[Conversation] = []
    for user in users:
        for character in characters[: 2 + (user.pk % 2)]:
            conversation = Conversation.objects.create(owner=user, character=character)
            greeting = Message.objects.create(
                conversation=conversation,
                role=Message.Role.ASSISTANT,
                content=character.greeting,
                finish_reason="greeting",
            )
            _at(greeting, start)
            conversations.append(conversation)
    history = History(users, characters, conversations, start)
    for n in range(exchanges):
        conversation = rng.choice(conversations)
        when = start + timedelta(seconds=rng.randrange(hours * 3600))
        if n % 17 == 0:  # at the very end of an hour: its reply lands in the next one
            when = floor_hour(when) + timedelta(minutes=59, seconds=59, microseconds=900_000)
        user_message = _at(
            Message.objects.create(
                conversation=conversation,
                role=Message.Role.USER,
                author=conversation.owner,
                content=f"message {n}",
                safety_flagged=rng.random() < 0.1,
            ),
            when,
        )
        for attempt in range(1 if rng.random() < 0.8 else 2):
            reply_at = when + timedelta(milliseconds=rng.randrange(50, 3000) + attempt * 60_000)
            _reply(history, rng, user_message, reply_at, n)
    return history


def _reply(history: History, rng: random.Random, parent: Message, when: datetime, n: int) -> None:
    status = rng.choices(
        [
            Message.Status.COMPLETED,
            Message.Status.FAILED,
            Message.Status.CANCELLED,
            Message.Status.BLOCKED,
            Message.Status.STREAMING,
        ],
        weights=[60, 15, 10, 8, 3],
    )[0]
    model = rng.choice(MODELS)
    fields: dict[str, Any] = {"model": model, "status": status}
    code = ""
    if status in (Message.Status.COMPLETED, Message.Status.CANCELLED):
        fields.update(
            prompt_tokens=rng.randrange(5, 800),
            completion_tokens=rng.randrange(0, 400),
            finish_reason="stop" if status == Message.Status.COMPLETED else "cancelled",
        )
        if status == Message.Status.COMPLETED:
            ttft = rng.choice([0, 1, rng.randrange(20, 4000)])
            fields.update(ttft_ms=ttft, total_ms=ttft + rng.randrange(0, 30_000))
            if rng.random() < 0.1:
                fields.update(ttft_ms=None)  # a provider that reported no first token
    elif status == Message.Status.FAILED:
        code = rng.choice(FAIL_CODES)
        fields.update(finish_reason="error" if code or rng.random() < 0.5 else "")
        fields.update(prompt_tokens=rng.choice([None, 12]), total_ms=rng.randrange(10, 9000))
    elif status == Message.Status.BLOCKED:
        fields.update(finish_reason=rng.choice(["blocked", "input_blocked"]))
    reply = Message.objects.create(
        conversation=parent.conversation,
        parent=parent,
        depth=parent.depth + 1,
        role=Message.Role.ASSISTANT,
        content=f"reply {n}",
        safety_flagged=status == Message.Status.BLOCKED or rng.random() < 0.05,
        **fields,
    )
    _at(reply, when)
    Generation.objects.create(message=reply, provider="lmstudio", model=model, error_code=code)
    owner = parent.conversation.owner
    history.events.append(encode(owner.pk, [when], reply.pk))
    if parent.safety_flagged:
        history.events.append(encode(owner.pk, [parent.created_at], parent.pk))
    if status == Message.Status.COMPLETED and rng.random() < 0.3:
        Feedback.objects.create(message=reply, user=owner, rating=rng.choice([1, 1, -1]))
        history.events.append(encode(owner.pk, [when], reply.pk))


# --- the reference: plain Python over every message -----------------------------------------

COUNTERS = (
    "user_messages",
    "replies",
    "completed",
    "failed",
    "cancelled",
    "blocked",
    "flagged",
    "prompt_tokens",
    "completion_tokens",
    "thumbs_up",
    "thumbs_down",
)


def _empty() -> dict[str, Any]:
    return {
        **dict.fromkeys(COUNTERS, 0),
        "failures": defaultdict(int),
        "ttft": [],
        "total": [],
    }


def expected_rows() -> dict[Any, dict[str, Any]]:
    """Every usage row (hourly and daily) as the definitions in docs/analytics.md give them,
    counted message by message; times as the lists of samples."""
    messages = list(Message.objects.select_related("conversation").order_by("id"))
    generations = {g.message_id: g for g in Generation.objects.all()}
    first_reply_model: dict[int, str] = {}
    for m in messages:
        if m.role == Message.Role.ASSISTANT and m.parent_id is not None:
            first_reply_model.setdefault(m.parent_id, m.model)
    ratings: dict[int, list[int]] = defaultdict(list)
    for f in Feedback.objects.all():
        ratings[f.message_id].append(f.rating)
    hourly: dict[tuple[datetime, int, int, str], dict[str, Any]] = defaultdict(_empty)
    for m in messages:
        owner, character = m.conversation.owner_id, m.conversation.character_id
        hour = floor_hour(m.created_at)
        if m.role == Message.Role.USER:
            row = hourly[(hour, owner, character, first_reply_model.get(m.pk, ""))]
            row["user_messages"] += 1
            row["flagged"] += int(m.safety_flagged)
        elif m.role == Message.Role.ASSISTANT and m.parent_id is not None:
            row = hourly[(hour, owner, character, m.model)]
            row["replies"] += 1
            if m.status in ("completed", "failed", "cancelled", "blocked"):
                row[m.status] += 1
            row["flagged"] += int(m.safety_flagged)
            row["prompt_tokens"] += m.prompt_tokens or 0
            row["completion_tokens"] += m.completion_tokens or 0
            if m.status == Message.Status.FAILED:
                generation = generations.get(m.pk)
                code = (generation.error_code if generation else "") or m.finish_reason
                row["failures"][code or "unknown"] += 1
            if m.status == Message.Status.COMPLETED:
                if m.ttft_ms is not None:
                    row["ttft"].append(m.ttft_ms)
                if m.total_ms is not None:
                    row["total"].append(m.total_ms)
            row["thumbs_up"] += ratings[m.pk].count(1)
            row["thumbs_down"] += ratings[m.pk].count(-1)
    out: dict[Any, dict[str, Any]] = {}
    for (hour, *key), row in hourly.items():
        out[("hour", hour, *key)] = row
        day = out.setdefault(("day", hour.replace(hour=0), *key), _empty())
        for name in COUNTERS:
            day[name] += row[name]
        for code, count in row["failures"].items():
            day["failures"][code] += count
        day["ttft"] += row["ttft"]
        day["total"] += row["total"]
    return out


def assert_rows_match_history() -> None:
    """The usage rows equal the reference exactly: the same keys, the same counters and
    failures, and the histograms of exactly the reference's samples."""
    expected = expected_rows()
    rows = {
        (r.interval, r.start, r.user_id, r.character_id, r.model): r for r in UsageRow.objects.all()
    }
    assert sorted(rows, key=str) == sorted(expected, key=str)
    for key, want in expected.items():
        row = rows[key]
        got = {name: getattr(row, name) for name in COUNTERS}
        assert got == {name: want[name] for name in COUNTERS}, key
        assert row.failures == dict(want["failures"]), key
        assert row.ttft_hist == histograms.of_samples(want["ttft"]), key
        assert row.total_hist == histograms.of_samples(want["total"]), key


def row_contents() -> list[tuple[Any, ...]]:
    """Every row's content (not its id), sorted: equal lists mean the same rollups."""
    fields = [f.name for f in UsageRow._meta.get_fields() if f.name != "id"]
    return sorted(
        (tuple(str(v) for v in values) for values in UsageRow.objects.values_list(*fields)),
    )

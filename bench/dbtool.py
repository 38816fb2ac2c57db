"""The database side of the benchmark: `python -m bench.dbtool seed|verify` with the stack's env.

`seed` also pre-fills long conversations (a real branch of completed messages) for the
history series, which would take minutes to make by chatting.

Runs in its own process (Django set up with the same DATABASE_URL as the service) so that the
orchestrator's event loop never touches the ORM. Answers JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


def _setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "messageservice.settings")
    import django

    django.setup()


def seed(
    users: int,
    conversations: int,
    password: str,
    history: dict[int, int] | None = None,
    tokens: int = 35,
) -> dict[str, Any]:
    """`users` users sharing one password, one public character, `conversations` conversations
    owned round-robin by the users (each starts with the character's greeting), and for each
    `length: count` of `history`, `count` conversations whose next user message will be message
    `length` of the branch (see prefill())."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password

    from messages_app.models import Character
    from messages_app.services import conversation_create

    user_model = get_user_model()
    # One hash for all: hashing is deliberately slow, and these users only need to log in.
    hashed = make_password(password)
    names = [f"bench{i:03d}" for i in range(users)]
    existing = set(user_model.objects.filter(username__in=names).values_list("username", flat=True))
    user_model.objects.bulk_create(
        [user_model(username=name, password=hashed) for name in names if name not in existing]
    )
    owners = list(user_model.objects.filter(username__in=names).order_by("username"))
    character, _ = Character.objects.get_or_create(
        name="Bench",
        defaults={
            "persona": "A concise character used by the streaming benchmark.",
            "greeting": "Hello! I am the benchmark character. Ask me anything.",
            "is_public": True,
            # Others see a public character only once approved (issue 9).
            "approval": Character.Approval.APPROVED,
        },
    )
    made = []
    for i in range(conversations):
        owner = owners[i % len(owners)]
        conversation = conversation_create(owner=owner, character=character)
        made.append({"id": conversation.pk, "user": owner.username})
    prefilled: dict[str, list[dict[str, Any]]] = {}
    for length, count in (history or {}).items():
        prefilled[str(length)] = []
        for i in range(count):
            owner = owners[i % len(owners)]
            conversation = prefill(owner, character, length, tokens)
            prefilled[str(length)].append({"id": conversation.pk, "user": owner.username})
    return {"users": names, "conversations": made, "history": prefilled}


def prefill(owner: Any, character: Any, length: int, tokens: int) -> Any:
    """A conversation whose active branch holds `length` - 1 completed messages, so that the
    next user message is message `length` of the branch: the greeting, then user turns and
    assistant replies alternately, chained by parent with their depth, the last one the active
    leaf. Length 1: no message at all (not even the greeting). Sizes are a real benchmark chat's:
    user turns as long as the benchmark's messages, replies the fake LLM's scripted text."""
    from django.db import transaction
    from django.utils import timezone

    from bench.texts import expected_text, history_content
    from messages_app.models import Conversation, Message

    if length != 1 and length % 2:
        raise SystemExit(f"history length {length}: must be 1 or even (the branch alternates)")
    reply = expected_text(tokens)
    with transaction.atomic():
        conversation = Conversation.objects.create(
            owner=owner, character=character, title=f"history {length}"
        )
        parent: Message | None = None
        now = timezone.now()
        for position in range(1, length):
            if position == 1:
                fields = {"role": Message.Role.ASSISTANT, "content": character.greeting,
                          "finish_reason": "greeting"}  # fmt: skip
            elif position % 2 == 0:
                fields = {"role": Message.Role.USER, "content": history_content(position),
                          "author": owner}  # fmt: skip
            else:
                fields = {"role": Message.Role.ASSISTANT, "content": reply,
                          "finish_reason": "stop", "stream_seq": tokens,
                          "completion_tokens": tokens}  # fmt: skip
            parent = Message.objects.create(
                conversation=conversation,
                parent=parent,
                depth=position - 1,
                status=Message.Status.COMPLETED,
                **fields,
            )
        if parent is not None:
            Conversation.objects.filter(pk=conversation.pk).update(
                active_leaf=parent, last_activity_at=now
            )
    return conversation


def verify(generation_ids: list[int]) -> dict[str, Any]:
    """The saved state of each generation's reply: status, content, stream_seq and timings."""
    from llm_app.models import Generation

    rows = Generation.objects.filter(pk__in=generation_ids).select_related("message")
    answer: dict[str, Any] = {}
    for generation in rows:
        message = generation.message
        answer[str(generation.pk)] = {
            "status": message.status,
            "content": message.content,
            "stream_seq": message.stream_seq,
            "queued_ms": message.queued_ms,
            "ttft_ms": message.ttft_ms,
            "total_ms": message.total_ms,
            "attempt": generation.attempt,
            "error_code": generation.error_code,
        }
    return answer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    seed_parser = sub.add_parser("seed")
    seed_parser.add_argument("--users", type=int, default=10)
    seed_parser.add_argument("--conversations", type=int, default=50)
    seed_parser.add_argument("--password", default="bench-password-0123")
    seed_parser.add_argument(
        "--history",
        default="",
        help="pre-filled conversations, LENGTH:COUNT,... (the next message is number LENGTH)",
    )
    seed_parser.add_argument("--tokens", type=int, default=35, help="tokens of a pre-filled reply")
    sub.add_parser("verify", help="generation ids as a JSON list on stdin")
    args = parser.parse_args(argv)
    _setup()
    if args.command == "seed":
        history = {
            int(length): int(count)
            for length, _, count in (
                item.partition(":") for item in args.history.split(",") if item
            )
        }
        result = seed(args.users, args.conversations, args.password, history, args.tokens)
    else:
        result = verify([int(i) for i in json.load(sys.stdin)])
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The database side of the benchmark: `python -m bench.dbtool seed|verify` with the stack's env.

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


def seed(users: int, conversations: int, password: str) -> dict[str, Any]:
    """`users` users sharing one password, one public character, `conversations` conversations
    owned round-robin by the users (each starts with the character's greeting)."""
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
        },
    )
    made = []
    for i in range(conversations):
        owner = owners[i % len(owners)]
        conversation = conversation_create(owner=owner, character=character)
        made.append({"id": conversation.pk, "user": owner.username})
    return {"users": names, "conversations": made}


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
    sub.add_parser("verify", help="generation ids as a JSON list on stdin")
    args = parser.parse_args(argv)
    _setup()
    if args.command == "seed":
        result = seed(args.users, args.conversations, args.password)
    else:
        result = verify([int(i) for i in json.load(sys.stdin)])
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())

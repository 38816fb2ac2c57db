"""Search over 100,000 messages on PostgreSQL: `python -m bench.search`.

Fills a database of its own (default `search_bench` on the local server; `--database-url`)
with USERS users, each with conversations of user and assistant messages of varied text
(a Zipf-distributed vocabulary: a few very common words, a long tail of rare ones), then times
searches as a user makes them (1-3 words; common, medium, rare and unknown words) through
the selector (messages_app.search.messages_search: ranked page, count, snippets, messages)
and through the API view (in-process, with serialisation), and prints p50/p95/max in ms.

The filled database is kept and reused when it already holds the messages (`--fresh` to
start again). Issue 10's target: p95 under 50 ms.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import sys
import time
from typing import Any

COMMON = [
    "the",
    "be",
    "to",
    "of",
    "and",
    "a",
    "in",
    "that",
    "have",
    "it",
    "for",
    "not",
    "on",
    "with",
    "he",
    "as",
    "you",
    "do",
    "at",
    "this",
    "but",
    "his",
    "by",
    "from",
    "they",
    "we",
    "say",
    "her",
    "she",
    "or",
    "an",
    "will",
    "my",
    "one",
    "all",
    "would",
    "there",
    "their",
    "what",
    "so",
    "up",
    "out",
    "if",
    "about",
    "who",
    "get",
    "which",
    "go",
    "me",
    "when",
    "make",
    "can",
    "like",
    "time",
    "no",
    "just",
    "him",
    "know",
    "take",
    "people",
    "into",
    "year",
    "your",
    "good",
    "some",
    "could",
    "them",
    "see",
    "other",
    "than",
    "then",
    "now",
    "look",
    "only",
    "come",
    "its",
    "over",
    "think",
    "also",
    "back",
    "after",
    "use",
    "two",
    "how",
    "our",
    "work",
    "first",
    "well",
    "way",
    "even",
    "new",
    "want",
    "because",
    "any",
    "these",
    "give",
    "day",
    "most",
    "us",
]
THEMES = [
    "ship",
    "sea",
    "captain",
    "harbour",
    "anchor",
    "sail",
    "storm",
    "island",
    "treasure",
    "map",
    "compass",
    "lighthouse",
    "whale",
    "kraken",
    "pirate",
    "crew",
    "deck",
    "mast",
    "rope",
    "tide",
    "wave",
    "gull",
    "parrot",
    "rum",
    "cannon",
    "voyage",
    "coast",
    "reef",
    "fog",
    "dragon",
    "castle",
    "knight",
    "sword",
    "quest",
    "magic",
    "wizard",
    "forest",
    "river",
    "mountain",
    "village",
    "king",
    "queen",
    "potion",
    "spell",
    "tavern",
    "journey",
    "bridge",
    "tower",
    "scroll",
    "shield",
    "armour",
    "horse",
    "dungeon",
    "riddle",
    "star",
    "moon",
    "planet",
    "rocket",
    "galaxy",
    "robot",
    "signal",
    "station",
    "engine",
    "orbit",
    "comet",
    "asteroid",
    "laser",
    "alien",
    "recipe",
    "bread",
    "cheese",
    "coffee",
    "garden",
    "flower",
    "winter",
    "summer",
    "music",
    "guitar",
    "poem",
    "story",
    "letter",
]
SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ra",
    "tu",
    "ve",
    "shi",
    "no",
    "pa",
    "de",
    "ri",
    "zo",
    "mu",
    "fe",
    "ta",
    "gli",
    "bor",
    "qua",
    "xen",
    "yel",
]


def vocabulary(rng: random.Random, rare: int = 20_000) -> tuple[list[str], list[float]]:
    """Words and cumulative Zipf weights: common English first, then themes, then invented
    rare words."""
    invented: set[str] = set()
    while len(invented) < rare:
        invented.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    words = [*COMMON, *THEMES, *sorted(invented)]
    weights = [1.0 / (rank + 1) ** 1.05 for rank in range(len(words))]
    return words, list(itertools.accumulate(weights))


def sentence(rng: random.Random, words: list[str], cum_weights: list[float], n: int) -> str:
    picked = rng.choices(words, cum_weights=cum_weights, k=n)
    picked[0] = picked[0].capitalize()
    text = " ".join(picked)
    # Some punctuation and markup, as chat text has.
    if rng.random() < 0.05:
        text += " <b>&</b>"
    return text + rng.choice([".", "!", "?", "..."])


def fill(messages: int, users: int, seed: int) -> dict[str, Any]:
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction

    from messages_app.models import Character, Conversation, Message

    User = get_user_model()
    have = Message.objects.count()
    if have >= messages:
        return {"messages": have, "filled": False}
    rng = random.Random(seed)
    words, weights = vocabulary(rng)
    character = Character.objects.create(name="Bench Character", is_public=True)
    owners = [User.objects.get_or_create(username=f"search-bench-{n}")[0] for n in range(users)]
    per_conversation = 250
    batch: list[Any] = []
    made = have
    started = time.perf_counter()
    statuses = ["completed"] * 96 + ["failed", "cancelled", "blocked", "blocked"]
    while made < messages:
        owner = owners[(made // per_conversation) % users]
        conversation = Conversation.objects.create(owner=owner, character=character)
        for n in range(min(per_conversation, messages - made)):
            role = "user" if n % 2 == 0 else "assistant"
            length = rng.randint(4, 30) if role == "user" else rng.randint(20, 160)
            batch.append(
                Message(
                    conversation=conversation,
                    role=role,
                    author=owner if role == "user" else None,
                    content=" ".join(
                        sentence(rng, words, weights, max(3, length // 3)) for _ in range(3)
                    ),
                    status=rng.choice(statuses),
                    depth=n,
                )
            )
            made += 1
        if len(batch) >= 5000 or made >= messages:
            with transaction.atomic():
                Message.objects.bulk_create(batch, batch_size=1000)
            batch = []
            print(f"  {made} messages ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE messages_app_message")
        cursor.execute("ANALYZE messages_app_conversation")
    return {"messages": Message.objects.count(), "filled": True}


def queries(rng: random.Random, count: int) -> list[tuple[str, str]]:
    """(kind, q): common words, theme words, rare words, 2-3 word mixes and unknown words."""
    words, _ = vocabulary(random.Random(7))
    rare = words[len(COMMON) + len(THEMES) + 100 :]
    medium = words[len(COMMON) + len(THEMES) : len(COMMON) + len(THEMES) + 100]
    made: list[tuple[str, str]] = []
    for n in range(count):
        kind = ["common", "theme", "medium", "rare", "two-three words", "unknown"][n % 6]
        if kind == "common":
            q = rng.choice(COMMON[:60])
        elif kind == "theme":
            q = rng.choice(THEMES)
        elif kind == "medium":
            q = rng.choice(medium)
        elif kind == "rare":
            q = rng.choice(rare)
        elif kind == "two-three words":
            q = " ".join(rng.choice(THEMES + medium + COMMON) for _ in range(rng.randint(2, 3)))
        else:
            q = f"zzq{rng.randint(0, 10**6)}"
        made.append((kind, q))
    return made


def _pct(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def _line(name: str, values: list[float]) -> str:
    return (
        f"{name:<18} n={len(values):<4} p50={_pct(values, 50):7.2f} ms  "
        f"p95={_pct(values, 95):7.2f} ms  max={max(values):7.2f} ms"
    )


def run(count: int, users: int, seed: int) -> None:
    from django.contrib.auth import get_user_model
    from django.db import connection
    from rest_framework.test import APIClient

    from messages_app import search

    User = get_user_model()
    owners = list(User.objects.filter(username__startswith="search-bench-").order_by("id"))
    rng = random.Random(seed + 1)
    plan = queries(rng, count)
    for _, q in plan[:12]:  # warm the cache and the connection
        search.messages_search(user=owners[0], query=q)
    selector: dict[str, list[float]] = {}
    hits: dict[str, list[int]] = {}
    for n, (kind, q) in enumerate(plan):
        user = owners[n % len(owners)]
        started = time.perf_counter()
        page = search.messages_search(user=user, query=q, page=1, page_size=20)
        selector.setdefault(kind, []).append((time.perf_counter() - started) * 1000)
        hits.setdefault(kind, []).append(page.count)
    everything = [v for values in selector.values() for v in values]
    print("selector (ranked page of 20 + count + snippets + messages):")
    for kind, values in selector.items():
        counts = sorted(hits[kind])
        print(f"  {_line(kind, values)}  hits p50={counts[len(counts) // 2]} max={counts[-1]}")
    print(f"  {_line('all', everything)}", flush=True)
    api: list[float] = []
    client = APIClient()
    for n, (_, q) in enumerate(plan[: count // 2]):
        client.force_authenticate(owners[n % len(owners)])
        started = time.perf_counter()
        response = client.get("/api/v1/search/messages/", {"q": q}, HTTP_HOST="127.0.0.1")
        api.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.status_code
    print(f"API view in-process (GET, JSON):\n  {_line('all', api)}")
    with connection.cursor() as cursor:
        for label, q in (("rare", plan[3][1]), ("common", plan[0][1])):
            cursor.execute(
                "EXPLAIN (ANALYZE, COSTS OFF) " + search.PG_SEARCH_SQL,
                [q, q, owners[0].pk, 20, 0],
            )
            print(f"EXPLAIN ANALYZE, {label} word {q!r}:")
            for (line,) in cursor.fetchall():
                print(f"    {line}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url",
        default=os.environ.get(
            "SEARCH_BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/search_bench"
        ),
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--queries", type=int, default=600)
    parser.add_argument("--seed", type=int, default=10)
    parser.add_argument("--fresh", action="store_true", help="drop the database first")
    args = parser.parse_args(argv)
    if not args.database_url.startswith(("postgres://", "postgresql://")):
        parser.error("the search benchmark measures PostgreSQL")
    _database(args.database_url, fresh=args.fresh)
    os.environ["DATABASE_URL"] = args.database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "messageservice.settings")
    os.environ.setdefault("ENVIRONMENT", "development")
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    started = time.perf_counter()
    filled = fill(args.messages, args.users, args.seed)
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), count(search_vector), "
            "pg_size_pretty(pg_relation_size('message_search_vector')) FROM messages_app_message"
        )
        rows, indexed, index_size = cursor.fetchone()
    print(
        f"messages: {rows} ({indexed} searchable, GIN index {index_size}); "
        f"{'filled in' if filled['filled'] else 'reused, checked in'} "
        f"{time.perf_counter() - started:.1f} s; {args.users} users"
    )
    run(args.queries, args.users, args.seed)
    return 0


def _database(url: str, *, fresh: bool) -> None:
    """Create the benchmark's database if it is missing (drop it first with `fresh`)."""
    from urllib.parse import urlparse

    import psycopg

    parsed = urlparse(url)
    name = parsed.path.lstrip("/")
    admin = parsed._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        if fresh:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')


if __name__ == "__main__":
    sys.exit(main())

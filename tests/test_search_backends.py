"""Search on each database: the PostgreSQL index in use (EXPLAIN) and its column's contract,
the SQLite FTS5 triggers and their repair, the migration both ways, and tests/test_search.py
run on SQLite in a subprocess when this run is on PostgreSQL (CI), so both engines are held
to the same behaviour."""

# ruff: noqa: S608

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor

from messages_app import search
from messages_app.models import Conversation, Message
from tests.helpers import ROOT

IS_PG = connection.vendor == "postgresql"
IS_SQLITE = connection.vendor == "sqlite"
only_pg = pytest.mark.skipif(not IS_PG, reason="PostgreSQL's tsvector column")
only_sqlite = pytest.mark.skipif(not IS_SQLITE, reason="SQLite's FTS5 table")


def _bulk(conversation: Conversation, texts: list[str], **fields: Any) -> None:
    Message.objects.bulk_create(
        Message(conversation=conversation, role="assistant", content=text, **fields)
        for text in texts
    )


@only_pg
@pytest.mark.django_db(transaction=True)
def test_postgresql_searches_through_the_gin_index(conversation, user):
    """The rows are committed and ANALYZEd (statistics taken inside a test's transaction are
    rolled back with it, and stale ones made the planner prefer the status index). Seq scans
    are switched off in one transaction only (SET LOCAL): with the few thousand rows a test can
    afford, a sequential scan costs about as much as the index, and the planner may pick
    either. What the test shows is that the search's own SQL can use the partial GIN index (its
    predicate follows from `@@`): bench/search.py shows the plan over 100,000 rows without any
    setting."""
    words = ["harbour", "anchor", "sail", "rope", "tide", "gull", "deck", "mast"]
    _bulk(
        conversation,
        [f"{words[n % 8]} {words[(n * 3) % 8]} line {n}" for n in range(3000)]
        + ["the rare kraken"],
        status="completed",
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE messages_app_message")
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("EXPLAIN " + search.PG_SEARCH_SQL, ["kraken", "kraken", user.pk, 20, 0])
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "message_search_vector" in plan, plan
    assert "Bitmap Index Scan" in plan or "Index Scan" in plan, plan


@only_pg
@pytest.mark.django_db
def test_the_vector_is_computed_only_for_searchable_messages(conversation):
    """A streaming reply's partial saves compute no tsvector: the column is NULL until the
    reply ends, and NULL again once it is blocked."""
    reply = Message.objects.create(
        conversation=conversation, role="assistant", content="partial", status="streaming"
    )

    def vector() -> Any:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT search_vector FROM messages_app_message WHERE id = %s", [reply.pk]
            )
            return cursor.fetchone()[0]

    assert vector() is None
    Message.objects.filter(pk=reply.pk).update(content="partial text grows")
    assert vector() is None
    Message.objects.filter(pk=reply.pk).update(status="completed")
    assert "grow" in vector()
    Message.objects.filter(pk=reply.pk).update(status="blocked")
    assert vector() is None


@only_sqlite
@pytest.mark.django_db
def test_sqlite_indexes_only_searchable_rows(conversation):
    Message.objects.create(conversation=conversation, role="user", content="puffin one")
    Message.objects.create(
        conversation=conversation, role="user", content="puffin two", status="blocked"
    )
    streaming = Message.objects.create(
        conversation=conversation, role="assistant", content="puffin", status="streaming"
    )
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT count(*) FROM {search.FTS_TABLE} WHERE {search.FTS_TABLE} MATCH 'puffin'"
        )
        assert cursor.fetchone()[0] == 1
        Message.objects.filter(pk=streaming.pk).update(status="completed")
        cursor.execute(
            f"SELECT count(*) FROM {search.FTS_TABLE} WHERE {search.FTS_TABLE} MATCH 'puffin'"
        )
        assert cursor.fetchone()[0] == 2
        # The index agrees with its content table for every row it holds.
        table = search.FTS_TABLE
        cursor.execute(f"INSERT INTO {table}({table}, rank) VALUES ('integrity-check', 0)")


@only_sqlite
@pytest.mark.django_db
def test_sqlite_triggers_lost_to_a_table_rebuild_are_put_back_and_the_index_refilled(
    conversation, user
):
    first = Message.objects.create(conversation=conversation, role="user", content="a bittern")
    assert not search.ensure_sqlite_index(connection)  # nothing missing after migrate
    with connection.cursor() as cursor:
        for name in ("ai", "ad", "au"):
            cursor.execute(f"DROP TRIGGER messages_app_message_fts_{name}")
    unindexed = Message.objects.create(
        conversation=conversation, role="user", content="another bittern"
    )
    found = search.messages_search(user=user, query="bittern")
    assert [hit.message.pk for hit in found.hits] == [first.pk]
    assert search.ensure_sqlite_index(connection)
    found = search.messages_search(user=user, query="bittern")
    assert sorted(hit.message.pk for hit in found.hits) == sorted([first.pk, unindexed.pk])
    Message.objects.filter(pk=first.pk).update(status="blocked")
    found = search.messages_search(user=user, query="bittern")
    assert [hit.message.pk for hit in found.hits] == [unindexed.pk]


@pytest.mark.django_db(transaction=True)
def test_the_migration_reverses_and_indexes_existing_messages_when_applied(conversation, user):
    message = Message.objects.create(conversation=conversation, role="user", content="an ibis")
    before = [("messages_app", "0006_moderators_group")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    try:
        with connection.cursor() as cursor:
            tables = connection.introspection.table_names(cursor)
            columns = [
                c.name
                for c in connection.introspection.get_table_description(
                    cursor, "messages_app_message"
                )
            ]
        assert search.FTS_TABLE not in tables and "search_vector" not in columns
        Message.objects.filter(pk=message.pk).update(content="an ibis, later")
    finally:
        executor = MigrationExecutor(connection)
        executor.migrate(executor.loader.graph.leaf_nodes())
    found = search.messages_search(user=user, query="ibis")
    assert [hit.message.pk for hit in found.hits] == [message.pk]
    assert "later" in found.hits[0].snippet


@pytest.mark.skipif(IS_SQLITE, reason="this run is the SQLite run")
def test_the_search_tests_pass_on_sqlite_with_fts5(tmp_path):
    """tests/test_search.py and this module, run on a fresh SQLite database (migrated, with
    its FTS5 table), on this run's Redis."""
    env = dict(os.environ)
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'search.sqlite3'}"
    env["TEST_REDIS_URL"] = settings.REDIS_URL
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/test_search.py",
            "tests/test_search_backends.py",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout

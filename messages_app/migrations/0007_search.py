"""Full-text search over messages (messages_app.search), one implementation per database.

PostgreSQL: a generated, stored `search_vector` column (kept out of the model: SQLite, the
embedded default, has no tsvector) and a partial GIN index on it. The vector is NULL unless
the message is searchable (completed, failed or cancelled; never blocked, queued or streaming),
so a streaming reply's partial saves never compute a growing tsvector, and a message that is
blocked later drops out of the index at once.

SQLite: an FTS5 table with external content (the message table), kept by triggers that index
only searchable rows. Django's SQLite schema editor rebuilds a table to alter it, which drops
its triggers: messages_app.search.ensure_sqlite_index runs after every `migrate` and puts them
back (and refills the index when they were missing).
"""

from django.db import migrations

# Frozen here (a migration must not follow later code); messages_app.search holds the same.
SEARCHABLE = ("completed", "failed", "cancelled")
_IN = ", ".join(f"'{status}'" for status in SEARCHABLE)

PG_FORWARD = [
    f"""
    ALTER TABLE messages_app_message ADD COLUMN search_vector tsvector
    GENERATED ALWAYS AS (
        CASE WHEN status IN ({_IN})
        THEN to_tsvector('english'::regconfig, content) || to_tsvector('simple'::regconfig, content)
        END
    ) STORED
    """,
    """
    CREATE INDEX message_search_vector ON messages_app_message
    USING gin (search_vector) WHERE search_vector IS NOT NULL
    """,
]
PG_BACKWARD = [
    "DROP INDEX IF EXISTS message_search_vector",
    "ALTER TABLE messages_app_message DROP COLUMN IF EXISTS search_vector",
]

SQLITE_TABLE = """
CREATE VIRTUAL TABLE IF NOT EXISTS messages_app_message_fts USING fts5(
    content, content='messages_app_message', content_rowid='id',
    tokenize='porter unicode61 remove_diacritics 2'
)
"""
SQLITE_TRIGGERS = [
    f"""
    CREATE TRIGGER IF NOT EXISTS messages_app_message_fts_ai AFTER INSERT ON messages_app_message
    WHEN new.status IN ({_IN}) BEGIN
        INSERT INTO messages_app_message_fts(rowid, content) VALUES (new.id, new.content);
    END
    """,
    f"""
    CREATE TRIGGER IF NOT EXISTS messages_app_message_fts_ad AFTER DELETE ON messages_app_message
    WHEN old.status IN ({_IN}) BEGIN
        INSERT INTO messages_app_message_fts(messages_app_message_fts, rowid, content)
        VALUES ('delete', old.id, old.content);
    END
    """,
    # One trigger for both steps: SQLite runs triggers of one event in no documented order,
    # and the old row must leave the index before the new one enters it.
    f"""
    CREATE TRIGGER IF NOT EXISTS messages_app_message_fts_au
    AFTER UPDATE OF content, status ON messages_app_message BEGIN
        INSERT INTO messages_app_message_fts(messages_app_message_fts, rowid, content)
        SELECT 'delete', old.id, old.content WHERE old.status IN ({_IN});
        INSERT INTO messages_app_message_fts(rowid, content)
        SELECT new.id, new.content WHERE new.status IN ({_IN});
    END
    """,
]
SQLITE_FILL = [
    "INSERT INTO messages_app_message_fts(messages_app_message_fts) VALUES ('delete-all')",
    f"""
    INSERT INTO messages_app_message_fts(rowid, content)
    SELECT id, content FROM messages_app_message WHERE status IN ({_IN})
    """,
]
SQLITE_BACKWARD = [
    "DROP TRIGGER IF EXISTS messages_app_message_fts_ai",
    "DROP TRIGGER IF EXISTS messages_app_message_fts_ad",
    "DROP TRIGGER IF EXISTS messages_app_message_fts_au",
    "DROP TABLE IF EXISTS messages_app_message_fts",
]


def _run(schema_editor, statements):
    for sql in statements:
        schema_editor.execute(sql)


def forward(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        _run(schema_editor, PG_FORWARD)
    elif vendor == "sqlite":
        _run(schema_editor, [SQLITE_TABLE, *SQLITE_TRIGGERS, *SQLITE_FILL])


def backward(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        _run(schema_editor, PG_BACKWARD)
    elif vendor == "sqlite":
        _run(schema_editor, SQLITE_BACKWARD)


class Migration(migrations.Migration):
    dependencies = [("messages_app", "0006_moderators_group")]

    operations = [migrations.RunPython(forward, backward)]

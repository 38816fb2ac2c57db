"""Full-text search of a user's own messages: ranked hits with a highlighted, escaped snippet.

PostgreSQL searches the generated `search_vector` column (GIN index) and SQLite an FTS5 table,
both made by migration 0007_search, which explains what each holds. Only searchable messages
are indexed and found: completed, failed or cancelled ones, never blocked, queued or streaming.
"""

# The SQL here is put together from constants only; user input always goes as a parameter.
# ruff: noqa: S608

from __future__ import annotations

import html
import re
from dataclasses import dataclass
from typing import Any

from django.db import connection
from django.db.backends.base.base import BaseDatabaseWrapper

from messages_app.errors import InvalidInput, Unavailable
from messages_app.models import Message

SEARCHABLE_STATUSES = (
    Message.Status.COMPLETED,
    Message.Status.FAILED,
    Message.Status.CANCELLED,
)
MAX_QUERY_LENGTH = 200
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 50
MAX_PAGE = 1000

# Two private-use characters that none of the page's texts holds mark the hits in the
# database's snippet; the snippet is HTML-escaped, then they become <mark></mark>.
_SENTINEL_FIRST = 0xE000
_HEADLINE_OPTIONS = (
    "StartSel={start}, StopSel={stop}, MaxWords=30, MinWords=12, ShortWord=2, "
    'MaxFragments=2, FragmentDelimiter=" … "'
)
_SNIPPET_TOKENS = 24

FTS_TABLE = "messages_app_message_fts"


@dataclass(frozen=True)
class SearchHit:
    message: Message  # with conversation, its character and generation loaded
    rank: float
    snippet: str  # HTML: escaped text with <mark> around the hits


@dataclass(frozen=True)
class SearchPage:
    count: int
    page: int
    page_size: int
    hits: list[SearchHit]

    @property
    def has_next(self) -> bool:
        return self.page * self.page_size < self.count


def search_query_clean(raw: str | None) -> str:
    """The query to search for, or InvalidInput (400): empty, blank or over MAX_QUERY_LENGTH.
    NUL characters (which PostgreSQL cannot take in text) count as blanks."""
    query = (raw or "").replace("\x00", " ").strip()
    if not query:
        raise InvalidInput("q must not be empty.", details={"param": "q"})
    if len(query) > MAX_QUERY_LENGTH:
        raise InvalidInput(
            f"q must be at most {MAX_QUERY_LENGTH} characters.",
            details={"param": "q", "max_length": MAX_QUERY_LENGTH},
        )
    return query


def search_page_params(page: str | None, page_size: str | None) -> tuple[int, int]:
    """`page` (1..MAX_PAGE, default 1) and `page_size` (1..MAX_PAGE_SIZE, default
    DEFAULT_PAGE_SIZE) from the query string, or InvalidInput (400)."""
    return (
        _bounded_int("page", page, 1, 1, MAX_PAGE),
        _bounded_int("page_size", page_size, DEFAULT_PAGE_SIZE, 1, MAX_PAGE_SIZE),
    )


def _bounded_int(name: str, raw: str | None, default: int, low: int, high: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise InvalidInput(
            f"{name} must be an integer from {low} to {high}.",
            details={"param": name, "min": low, "max": high},
        )
    return value


def messages_search(*, user: Any, query: str, page: int = 1, page_size: int = 20) -> SearchPage:
    """The page `page` of `user`'s own messages (of the conversations they own, user and
    assistant messages alike) that match `query`, best first (then newest first).
    `query` is user input, cleaned by search_query_clean; it never reaches a query language
    unparsed: websearch_to_tsquery on PostgreSQL, every term quoted for FTS5."""
    offset = (page - 1) * page_size
    vendor = connection.vendor
    if vendor == "postgresql":
        count, ranked = _rank_postgresql(user.pk, query, page_size, offset)
    elif vendor == "sqlite":
        count, ranked = _rank_sqlite(user.pk, query, page_size, offset)
    else:
        raise Unavailable(f"Search is not available on {vendor}.", code="search_unavailable")
    # Checked again: a message blocked since the ranking query is not shown.
    messages = (
        Message.objects.select_related("conversation__character", "generation")
        .filter(status__in=SEARCHABLE_STATUSES)
        .in_bulk([message_id for message_id, _ in ranked])
    )
    snippets: dict[int, str] = {}
    if messages:
        start, stop, lt = sentinels([m.content for m in messages.values()])
        if vendor == "postgresql":
            rows = _snippets_postgresql(query, list(messages), start, stop, lt)
        else:
            rows = _snippets_sqlite(query, list(messages), start, stop)
        snippets = {i: snippet_html(text.replace(lt, "<"), start, stop) for i, text in rows}
    hits = [
        SearchHit(message=messages[message_id], rank=rank, snippet=snippets.get(message_id, ""))
        for message_id, rank in ranked
        if message_id in messages  # deleted or blocked in between
    ]
    return SearchPage(count=count, page=page, page_size=page_size, hits=hits)


def sentinels(texts: list[str], count: int = 3) -> list[str]:
    """`count` private-use characters that none of `texts` holds."""
    found: list[str] = []
    code = _SENTINEL_FIRST
    while len(found) < count:
        char = chr(code)
        if not any(char in text for text in texts):
            found.append(char)
        code += 1
    return found


def snippet_html(marked: str, start: str, stop: str) -> str:
    """Escape the database's snippet, then turn its sentinels into <mark></mark>, balanced
    (a second start opens nothing, a stray stop closes nothing, an open mark is closed)."""
    out: list[str] = []
    open_mark = False
    for part in re.split(f"([{re.escape(start)}{re.escape(stop)}])", marked):
        if part == start:
            if not open_mark:
                out.append("<mark>")
                open_mark = True
        elif part == stop:
            if open_mark:
                out.append("</mark>")
                open_mark = False
        else:
            out.append(html.escape(part, quote=True))
    if open_mark:
        out.append("</mark>")
    return "".join(out)


# --- PostgreSQL --------------------------------------------------------------------------------

# Both configurations: 'english' stems (runs finds running) and drops stop words, 'simple'
# keeps every word as written, so stop words and non-English words are found as typed and an
# exact form ranks above a stemmed one. The column holds both (migration 0007_search).
# A query of negations only (`-word`) finds nothing, as on SQLite: querytree() is 'T' for a
# query that no index can serve.
_PG_TSQUERY = "(websearch_to_tsquery('english', %s) || websearch_to_tsquery('simple', %s))"
_PG_STATUSES = ", ".join(f"'{status}'" for status in SEARCHABLE_STATUSES)

PG_SEARCH_SQL = f"""
SELECT m.id, ts_rank_cd(m.search_vector, q.query, 1) AS rank, count(*) OVER () AS total
FROM messages_app_message m
JOIN messages_app_conversation c ON c.id = m.conversation_id
CROSS JOIN (SELECT {_PG_TSQUERY} AS query) q
WHERE c.owner_id = %s AND m.search_vector @@ q.query AND m.status IN ({_PG_STATUSES})
  AND querytree(q.query) <> 'T'
ORDER BY rank DESC, m.id DESC
LIMIT %s OFFSET %s
"""

_PG_COUNT_SQL = f"""
SELECT count(*)
FROM messages_app_message m
JOIN messages_app_conversation c ON c.id = m.conversation_id
CROSS JOIN (SELECT {_PG_TSQUERY} AS query) q
WHERE c.owner_id = %s AND m.search_vector @@ q.query AND m.status IN ({_PG_STATUSES})
  AND querytree(q.query) <> 'T'
"""

# ts_headline leaves out what its parser takes for HTML tags (`<b>`, `<script …>`): '<' goes
# in as a sentinel and comes back, so the snippet shows the text as written.
_PG_HEADLINE_SQL = f"""
SELECT m.id, ts_headline('english', replace(m.content, '<', %s), {_PG_TSQUERY}, %s)
FROM messages_app_message m WHERE m.id = ANY(%s)
"""


def _rank_postgresql(
    user_id: int, query: str, limit: int, offset: int
) -> tuple[int, list[tuple[int, float]]]:
    with connection.cursor() as cursor:
        cursor.execute(PG_SEARCH_SQL, [query, query, user_id, limit, offset])
        rows = cursor.fetchall()
        if rows:
            count = int(rows[0][2])
        elif offset:  # past the last page: the count still says how many there are
            cursor.execute(_PG_COUNT_SQL, [query, query, user_id])
            count = int(cursor.fetchone()[0])
        else:
            count = 0
    return count, [(int(row[0]), float(row[1])) for row in rows]


def _snippets_postgresql(
    query: str, ids: list[int], start: str, stop: str, lt: str
) -> list[tuple[int, str]]:
    options = _HEADLINE_OPTIONS.format(start=start, stop=stop)
    with connection.cursor() as cursor:
        cursor.execute(_PG_HEADLINE_SQL, [lt, query, query, options, ids])
        return [(int(i), text) for i, text in cursor.fetchall()]


# --- SQLite (FTS5) -----------------------------------------------------------------------------

_TERM = re.compile(r'(-?)"([^"]*)"?|(\S+)')


def fts5_query(query: str) -> str:
    """An FTS5 MATCH expression from a user's query, every term quoted as an FTS5 string, so
    no user text is ever read as FTS5 syntax. As websearch_to_tsquery: words are ANDed,
    "a phrase" in double quotes, `or` between two terms, `-word` excludes. '' when nothing
    remains to search for."""
    groups: list[list[str]] = [[]]
    excluded: list[str] = []
    for match in _TERM.finditer(query):
        negate, phrase, word = match.group(1), match.group(2), match.group(3)
        if word is not None:
            if word.lower() == "or":
                if groups[-1]:
                    groups.append([])
                continue
            negate = "-" if word.startswith("-") and len(word) > 1 else ""
            phrase = word[1:] if negate else word
        if not re.search(r"\w", phrase):
            continue  # punctuation only: no token for FTS5 to look for
        quoted = '"' + phrase.replace('"', '""') + '"'
        (excluded if negate else groups[-1]).append(quoted)
    ors = [" AND ".join(group) for group in groups if group]
    if not ors:
        return ""
    expression = " OR ".join(f"({group})" for group in ors)
    if excluded:
        expression = f"({expression}) NOT ({' OR '.join(excluded)})"
    return expression


_SQLITE_STATUSES = _PG_STATUSES

SQLITE_SEARCH_SQL = f"""
SELECT m.id, -bm25({FTS_TABLE}) AS rank
FROM {FTS_TABLE}
JOIN messages_app_message m ON m.id = {FTS_TABLE}.rowid
JOIN messages_app_conversation c ON c.id = m.conversation_id
WHERE {FTS_TABLE} MATCH %s AND c.owner_id = %s AND m.status IN ({_SQLITE_STATUSES})
ORDER BY rank DESC, m.id DESC
LIMIT %s OFFSET %s
"""

_SQLITE_COUNT_SQL = f"""
SELECT count(*)
FROM {FTS_TABLE}
JOIN messages_app_message m ON m.id = {FTS_TABLE}.rowid
JOIN messages_app_conversation c ON c.id = m.conversation_id
WHERE {FTS_TABLE} MATCH %s AND c.owner_id = %s AND m.status IN ({_SQLITE_STATUSES})
"""


def _rank_sqlite(
    user_id: int, query: str, limit: int, offset: int
) -> tuple[int, list[tuple[int, float]]]:
    match = fts5_query(query)
    if not match:
        return 0, []
    with connection.cursor() as cursor:
        cursor.execute(SQLITE_SEARCH_SQL, [match, user_id, limit, offset])
        ranked = [(int(row[0]), float(row[1])) for row in cursor.fetchall()]
        cursor.execute(_SQLITE_COUNT_SQL, [match, user_id])
        count = int(cursor.fetchone()[0])
    return count, ranked


def _snippets_sqlite(query: str, ids: list[int], start: str, stop: str) -> list[tuple[int, str]]:
    marks = ", ".join(["%s"] * len(ids))
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT rowid, snippet({FTS_TABLE}, 0, %s, %s, '…', {_SNIPPET_TOKENS}) "
            f"FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH %s AND rowid IN ({marks})",
            [start, stop, fts5_query(query), *ids],
        )
        return [(int(i), text) for i, text in cursor.fetchall()]


# The triggers of migration 0007_search, put back after a `migrate` that rebuilt the message
# table (Django's SQLite schema editor copies a table to alter it, and its triggers go with it).
_SQLITE_TRIGGERS = {
    "messages_app_message_fts_ai": f"""
    CREATE TRIGGER messages_app_message_fts_ai AFTER INSERT ON messages_app_message
    WHEN new.status IN ({_SQLITE_STATUSES}) BEGIN
        INSERT INTO {FTS_TABLE}(rowid, content) VALUES (new.id, new.content);
    END""",
    "messages_app_message_fts_ad": f"""
    CREATE TRIGGER messages_app_message_fts_ad AFTER DELETE ON messages_app_message
    WHEN old.status IN ({_SQLITE_STATUSES}) BEGIN
        INSERT INTO {FTS_TABLE}({FTS_TABLE}, rowid, content) VALUES ('delete', old.id, old.content);
    END""",
    # One trigger for both steps: the old row must leave the index before the new one enters.
    "messages_app_message_fts_au": f"""
    CREATE TRIGGER messages_app_message_fts_au
    AFTER UPDATE OF content, status ON messages_app_message BEGIN
        INSERT INTO {FTS_TABLE}({FTS_TABLE}, rowid, content)
        SELECT 'delete', old.id, old.content WHERE old.status IN ({_SQLITE_STATUSES});
        INSERT INTO {FTS_TABLE}(rowid, content)
        SELECT new.id, new.content WHERE new.status IN ({_SQLITE_STATUSES});
    END""",
}


def ensure_sqlite_index(conn: BaseDatabaseWrapper) -> bool:
    """On SQLite with the FTS5 table present: create the triggers that are missing and, if
    any was, refill the index from the searchable messages. True if it repaired anything."""
    if conn.vendor != "sqlite":
        return False
    with conn.cursor() as cursor:
        cursor.execute(
            "SELECT type, name FROM sqlite_master WHERE name = %s OR name IN (%s, %s, %s)",
            [FTS_TABLE, *_SQLITE_TRIGGERS],
        )
        present = {name for _, name in cursor.fetchall()}
        if FTS_TABLE not in present:
            return False  # not migrated (yet, or any more)
        missing = [name for name in _SQLITE_TRIGGERS if name not in present]
        if not missing:
            return False
        for name in missing:
            cursor.execute(_SQLITE_TRIGGERS[name])
        cursor.execute(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES ('delete-all')")
        cursor.execute(
            f"INSERT INTO {FTS_TABLE}(rowid, content) "
            f"SELECT id, content FROM messages_app_message WHERE status IN ({_SQLITE_STATUSES})"
        )
    return True


def after_migrate(using: str = "default", **kwargs: Any) -> None:
    """post_migrate receiver: see ensure_sqlite_index."""
    from django.db import connections

    ensure_sqlite_index(connections[using])

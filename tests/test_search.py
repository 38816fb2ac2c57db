"""Full-text search of one's own messages (GET /api/v1/search/messages/), on the database of
the run: PostgreSQL (CI) searches the generated tsvector column, SQLite its FTS5 table.
tests/test_search_backends.py runs this module on SQLite too, and holds the PostgreSQL-only
checks (the GIN index in EXPLAIN)."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from rest_framework.test import APIClient

from messages_app import search
from messages_app.models import Conversation, Message
from messages_app.serializers import MessageSerializer
from messages_app.services import conversation_create
from tests.factories import CharacterFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/search/messages/"


def _say(conversation: Conversation, content: str, **fields: Any) -> Message:
    fields.setdefault("role", Message.Role.USER)
    fields.setdefault("status", Message.Status.COMPLETED)
    return Message.objects.create(conversation=conversation, content=content, **fields)


def _search(api: APIClient, q: str, **params: Any) -> Any:
    response = api.get(URL, {"q": q, **params})
    assert response.status_code == 200, response.content
    return response.json()


def _ids(body: dict[str, Any]) -> list[int]:
    return [hit["message"]["id"] for hit in body["results"]]


def test_a_hit_carries_the_message_its_conversation_a_rank_and_a_marked_snippet(api, conversation):
    mine = _say(conversation, "The kraken sleeps under the harbour.")
    body = _search(api, "kraken")
    assert body["count"] == 1 and body["next"] is None and body["previous"] is None
    [hit] = body["results"]
    assert set(hit) == {"message", "conversation", "rank", "snippet"}
    assert set(hit["message"]) == set(MessageSerializer.Meta.fields)
    assert hit["message"]["id"] == mine.pk and hit["message"]["content"] == mine.content
    assert hit["conversation"] == {
        "id": conversation.pk,
        "title": conversation.title,
        "character_name": "Captain Test",
    }
    assert isinstance(hit["rank"], float) and hit["rank"] > 0
    assert "<mark>kraken</mark>" in hit["snippet"]


def test_user_and_assistant_messages_alike_are_found(api, conversation):
    question = _say(conversation, "Where does the lighthouse keeper live?")
    answer = _say(conversation, "The lighthouse keeper lives on the cliff.", role="assistant")
    assert sorted(_ids(_search(api, "lighthouse"))) == sorted([question.pk, answer.pk])


def test_the_best_match_comes_first_whatever_the_age(api, conversation):
    dense = _say(conversation, "Narwhal! A narwhal, a narwhal again.")
    filler = " ".join(f"filler{i}" for i in range(60))
    sparse = _say(conversation, f"Once I saw a narwhal. {filler}")
    body = _search(api, "narwhal")
    assert _ids(body) == [dense.pk, sparse.pk]
    assert body["results"][0]["rank"] > body["results"][1]["rank"]


def test_equal_ranks_list_the_newest_first(api, conversation):
    older = _say(conversation, "a pelican")
    newer = _say(conversation, "a pelican")
    assert _ids(_search(api, "pelican")) == [newer.pk, older.pk]


def test_all_words_must_match_and_stems_match_other_forms(api, conversation):
    both = _say(conversation, "We were sailing to the islands.")
    _say(conversation, "We were sailing home.")
    assert _ids(_search(api, "sailed islands")) == [both.pk]


def test_a_stop_word_alone_is_still_found(api, conversation):
    it = _say(conversation, "To be or not to be")
    assert it.pk in _ids(_search(api, "be"))


def test_a_phrase_in_quotes_must_match_in_order(api, conversation):
    in_order = _say(conversation, "the green parrot talks")
    _say(conversation, "the parrot is green")
    assert _ids(_search(api, '"green parrot"')) == [in_order.pk]


def test_a_minus_word_excludes(api, conversation):
    kept = _say(conversation, "an orange cat")
    _say(conversation, "an orange dog")
    assert _ids(_search(api, "orange -dog")) == [kept.pk]


def test_the_snippet_is_escaped_text_with_only_marks_as_html(api, conversation):
    _say(conversation, "Look: <script>alert('x')</script> & the <b>octopus</b> waves")
    [hit] = _search(api, "octopus")["results"]
    snippet = hit["snippet"]
    assert "<script>" not in snippet and "<b>" not in snippet
    assert "&lt;script&gt;" in snippet and "&amp;" in snippet
    assert "<mark>octopus</mark>" in snippet
    without_marks = snippet.replace("<mark>", "").replace("</mark>", "")
    assert "<" not in without_marks and ">" not in without_marks


def test_sentinel_characters_in_the_text_cannot_unbalance_the_marks(api, conversation):
    _say(conversation, "odd \ue001\ue000 text \ue000 about a walrus \ue001")
    [hit] = _search(api, "walrus")["results"]
    snippet = hit["snippet"]
    assert "<mark>walrus</mark>" in snippet
    assert snippet.count("<mark>") == snippet.count("</mark>") == 1


def test_snippet_html_balances_marks():
    assert search.snippet_html("[a<[b", "[", "]") == "<mark>a&lt;b</mark>"
    assert search.snippet_html("]x[y", "[", "]") == "x<mark>y</mark>"
    assert search.sentinels(["a\ue000", "\ue002"], 2) == ["\ue001", "\ue003"]


def test_a_query_of_exclusions_only_finds_nothing(api, conversation):
    _say(conversation, "The kraken rises from the sea.")
    _say(conversation, "A calm day.")
    assert _search(api, "-kraken")["count"] == 0


def test_another_users_messages_never_appear(api, conversation, other_user, character):
    mine = _say(conversation, "the secret treasure map")
    theirs = conversation_create(owner=other_user, character=character)
    _say(theirs, "the secret treasure map")
    _say(theirs, "a treasure reply", role="assistant")
    assert _ids(_search(api, "treasure")) == [mine.pk]
    mallory = APIClient()
    mallory.force_authenticate(other_user)
    assert mine.pk not in _ids(_search(mallory, "treasure"))


def test_blocked_text_never_appears_to_its_author(api, conversation):
    _say(conversation, "an abominable insult", status=Message.Status.BLOCKED)
    _say(
        conversation,
        "an abominable reply",
        role="assistant",
        status=Message.Status.BLOCKED,
    )
    assert _search(api, "abominable") == {
        "count": 0,
        "next": None,
        "previous": None,
        "results": [],
    }


def test_a_message_blocked_later_leaves_the_results_and_an_approved_one_returns(api, conversation):
    message = _say(conversation, "a questionable limerick")
    assert _ids(_search(api, "limerick")) == [message.pk]
    Message.objects.filter(pk=message.pk).update(status=Message.Status.BLOCKED)
    assert _ids(_search(api, "limerick")) == []
    Message.objects.filter(pk=message.pk).update(status=Message.Status.COMPLETED)
    assert _ids(_search(api, "limerick")) == [message.pk]


def test_only_finished_messages_are_found(api, conversation):
    found = {
        status: _say(conversation, f"albatross {status}", role="assistant", status=status)
        for status in ("completed", "failed", "cancelled")
    }
    for status in ("queued", "streaming"):
        _say(conversation, f"albatross {status}", role="assistant", status=status)
    assert sorted(_ids(_search(api, "albatross"))) == sorted(m.pk for m in found.values())


def test_a_streaming_reply_is_found_once_it_completes_with_its_final_text(api, conversation):
    reply = _say(conversation, "", role="assistant", status=Message.Status.STREAMING)
    # Partial saves, as the worker makes them (llm_app.state.generation_save_partial).
    for text in ("The cormorant", "The cormorant dives", "The cormorant dives deep"):
        Message.objects.filter(pk=reply.pk, status="streaming").update(content=text)
        assert _ids(_search(api, "cormorant")) == []
    Message.objects.filter(pk=reply.pk).update(
        status=Message.Status.COMPLETED, content="The cormorant dives deep. Done."
    )
    assert _ids(_search(api, "cormorant")) == [reply.pk]
    assert _ids(_search(api, "done")) == [reply.pk]


def test_edited_and_deleted_messages_follow(api, conversation, user):
    message = _say(conversation, "the old heron")
    Message.objects.filter(pk=message.pk).update(content="the new egret")
    assert _ids(_search(api, "heron")) == []
    assert _ids(_search(api, "egret")) == [message.pk]
    character: Any = CharacterFactory(name="Other")
    other = conversation_create(owner=user, character=character)
    gone = _say(other, "the egret again")
    assert sorted(_ids(_search(api, "egret"))) == sorted([message.pk, gone.pk])
    other.delete()
    assert _ids(_search(api, "egret")) == [message.pk]


def test_pages_cover_every_hit_once(api, conversation):
    made = {_say(conversation, f"seagull number {n}").pk for n in range(5)}
    first = _search(api, "seagull", page_size=2)
    assert first["count"] == 5 and first["previous"] is None
    assert "page=2" in first["next"] and "page_size=2" in first["next"]
    second = api.get(first["next"]).json()
    third = api.get(second["next"]).json()
    assert third["next"] is None and "page=2" in third["previous"]
    seen = _ids(first) + _ids(second) + _ids(third)
    assert len(seen) == 5 and set(seen) == made
    past = _search(api, "seagull", page=4, page_size=2)
    assert past["count"] == 5 and past["results"] == [] and past["next"] is None


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"q": ""},
        {"q": "   \t "},
        {"q": "\x00"},
        {"q": "x" * (search.MAX_QUERY_LENGTH + 1)},
        {"q": "word " * 200},
        {"q": "ok", "page": "0"},
        {"q": "ok", "page": "two"},
        {"q": "ok", "page": str(search.MAX_PAGE + 1)},
        {"q": "ok", "page": "99999999999999999999999"},
        {"q": "ok", "page_size": "0"},
        {"q": "ok", "page_size": str(search.MAX_PAGE_SIZE + 1)},
    ],
)
def test_bad_input_answers_400_in_the_error_shape(api, params):
    response = api.get(URL, params)
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid" and error["message"]
    assert error["details"]["param"] in ("q", "page", "page_size")


@pytest.mark.parametrize(
    "q",
    [
        "'; DROP TABLE messages_app_message; --",
        "1 OR 1=1",
        "%",
        "_",
        "\\",
        '"',
        '""',
        '"kraken',
        'kraken"',
        "kraken OR",
        "OR",
        "-",
        "-kraken",
        "!!!",
        "& | ! <->",
        "kraken:*",
        "kraken*",
        "NEAR(kraken sea)",
        "kraken AND NOT sea",
        "(kraken",
        "content:kraken",
        "{content}: kraken",
        "^kraken",
        "kraken + sea",
        "\x00kraken",
        "\U0001f419 kraken",
        "x" * search.MAX_QUERY_LENGTH,
    ],
)
def test_sql_or_search_syntax_in_q_gives_results_or_none_never_an_error(api, conversation, q):
    _say(conversation, "The kraken rises from the sea.")
    body = _search(api, q)
    assert body["count"] == len(body["results"]) <= 1
    assert Message.objects.filter(content__contains="kraken").exists()


def test_a_query_with_search_syntax_finds_the_words_it_holds(api, conversation):
    kraken = _say(conversation, "The kraken rises from the sea.")
    for q in ('"kraken', "kraken*", "(kraken", "kraken)", "kraken:", "\x00kraken", "KRAKEN"):
        assert _ids(_search(api, q)) == [kraken.pk], q


def test_search_needs_a_login():
    response = APIClient().get(URL, {"q": "anything"})
    assert response.status_code in (401, 403)
    assert "error" in response.json()


def test_the_fts5_query_quotes_every_term():
    assert search.fts5_query("kraken sea") == '("kraken" AND "sea")'
    assert search.fts5_query('NEAR(a b) "x" or -y') == ('(("NEAR(a" AND "b)" AND "x")) NOT ("y")')
    assert search.fts5_query('say "hi there" or bye') == '("say" AND "hi there") OR ("bye")'
    assert search.fts5_query('a"b') == '("a""b")'
    assert search.fts5_query("!!! -") == ""


def test_the_database_searches_with_its_own_engine():
    assert connection.vendor in ("postgresql", "sqlite")


def test_the_openapi_schema_documents_the_search(api):
    schema = api.get("/api/schema/?format=json").json()
    operation = schema["paths"]["/api/v1/search/messages/"]["get"]
    assert {p["name"] for p in operation["parameters"]} == {"q", "page", "page_size"}
    assert {"200", "400", "403"} <= set(operation["responses"])
    components = schema["components"]["schemas"]
    assert set(components["SearchPage"]["properties"]) == {"count", "next", "previous", "results"}
    assert set(components["SearchHit"]["properties"]) == {
        "message",
        "conversation",
        "rank",
        "snippet",
    }

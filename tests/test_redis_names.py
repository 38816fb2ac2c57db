"""Redis names of replies and conversations are unique across databases sharing one Redis.

A reset or restored database gives out ids again from an earlier point, and two installations
may share one Redis: neither may meet the other's token logs, cancel flags, leases or groups.
"""

from __future__ import annotations

from typing import Any

import django_rq
import pytest
from asgiref.sync import sync_to_async
from django.db import connection

from fake_llm import Script
from llm_app.cancel import cancel_signal
from messages_app.models import Character, Conversation, Message
from messages_app.services import conversation_create
from tests.factories import CharacterFactory, UserFactory
from tests.helpers import (
    arun_llm_worker,
    communicator,
    deltas_of,
    receive_until,
    run_llm_worker,
    send_message,
    session_headers,
)

pytestmark = pytest.mark.django_db(transaction=True)


def _reset_database(next_ids: dict[Any, int]) -> None:
    """What a test-database reset or a restore from an older backup does: the rows are gone
    and the ids of `next_ids` are given out again from the values given."""
    from django.contrib.auth import get_user_model

    from llm_app.models import Generation

    models: list[Any] = [Generation, Message, Conversation, Character, get_user_model()]
    tables = [m._meta.db_table for m in models]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
            for model, next_id in next_ids.items():
                cursor.execute(
                    "SELECT setval(pg_get_serial_sequence(%s, 'id'), %s, false)",
                    [model._meta.db_table, next_id],
                )
        else:
            for table in tables:
                cursor.execute(f"DELETE FROM {table}")  # noqa: S608
            cursor.execute("DELETE FROM sqlite_sequence")
            for model, next_id in next_ids.items():
                cursor.execute(
                    "INSERT INTO sqlite_sequence (name, seq) VALUES (%s, %s)",
                    [model._meta.db_table, next_id - 1],
                )


def _fresh_installation() -> tuple[Conversation, list[tuple[bytes, bytes]]]:
    user = UserFactory(username="newcomer")
    character: Any = CharacterFactory(name="New", greeting="Hello again.")
    return conversation_create(owner=user, character=character), session_headers(user)


async def test_after_a_database_reset_new_replies_never_meet_the_old_ones_redis_keys(
    conversation, alice_headers, fake_llm
):
    fake_llm.push(Script.from_text("Old installation text that must never be replayed."))
    comm = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    await comm.connect()
    old = await send_message(comm, "old")
    await arun_llm_worker()
    await receive_until(comm, "generation.completed")
    await comm.disconnect()
    old_reply = await Message.objects.aget(pk=old[1]["message"]["id"])
    # Stale keys of the old installation: its log (kept 15 min), and a cancel flag.
    await sync_to_async(cancel_signal)(old_reply.stream_key)

    from llm_app.models import Generation

    old_generation = old[1]["message"]["generation_id"]
    await sync_to_async(_reset_database)(
        {Conversation: conversation.pk, Generation: old_generation, Message: old_reply.pk - 2}
    )
    new_conversation, headers = await sync_to_async(_fresh_installation)()
    assert new_conversation.pk == conversation.pk  # the ids really repeat

    fake_llm.push(Script.from_text("Fresh reply."))
    comm = communicator(f"/ws/conversations/{new_conversation.pk}/", headers)
    await comm.connect()
    new = await send_message(comm, "new")
    assert new[1]["message"]["generation_id"] == old[1]["message"]["generation_id"]
    await arun_llm_worker()
    frames = await receive_until(comm, "generation.completed", "generation.failed")
    generation_id = new[1]["message"]["generation_id"]
    await comm.send_json_to({"type": "stream.resume", "generation_id": generation_id})
    replay = await receive_until(comm, "generation.completed", "generation.failed")
    await comm.disconnect()
    assert frames[-1]["type"] == "generation.completed", frames[-1]
    assert "".join(d["text"] for d in deltas_of(frames)) == "Fresh reply."
    assert "".join(d["text"] for d in deltas_of(replay)) == "Fresh reply."
    assert replay[-1]["message"]["content"] == "Fresh reply."


def test_a_job_queued_by_another_database_does_nothing_here(conversation, api, fake_llm):
    sent = api.post(
        f"/api/v1/conversations/{conversation.pk}/messages/", {"content": "hi"}, format="json"
    ).json()
    queue = django_rq.get_queue("llm")
    queue.empty()
    # The same generation id, but another database's reply.
    queue.enqueue("llm_app.jobs.generate_reply", sent["generation_id"], "0" * 32)
    run_llm_worker()
    assert fake_llm.requests == []
    assert Message.objects.get(pk=sent["assistant_message"]["id"]).status == "queued"


def test_every_conversation_and_reply_has_its_own_random_redis_name(api, conversation):
    url = f"/api/v1/conversations/{conversation.pk}/messages/"
    for text in ("one", "two"):
        api.post(url, {"content": text}, format="json")
    keys = list(Message.objects.values_list("stream_key", flat=True))
    assert len(set(keys)) == len(keys)
    other = conversation_create(owner=conversation.owner, character=conversation.character)
    assert other.channel_key != conversation.channel_key

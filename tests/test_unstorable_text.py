"""Text a database cannot store (U+0000 on PostgreSQL, lone surrogates anywhere) never leaves a
reply stuck: from the LLM it is replaced, from a user it is refused, and the reaper carries on."""

from __future__ import annotations

from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from fake_llm import Script
from llm_app.models import Generation
from llm_app.reaper import reap_orphans
from messages_app.models import Message
from messages_app.streams import log_key
from messageservice.redis_clients import sync_redis
from tests.helpers import arun_llm_worker, communicator, deltas_of, receive_until, send_message

pytestmark = pytest.mark.django_db(transaction=True)


async def test_an_llm_reply_with_nul_and_lone_surrogates_completes_with_them_replaced(
    conversation, alice_headers, fake_llm
):
    fake_llm.push(Script(tokens=["Hello", "\x00", " wor\ud800ld", "!"]))
    comm = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    await comm.connect()
    created = await send_message(comm, "Say something odd")
    await arun_llm_worker()
    frames = await receive_until(comm, "generation.completed", "generation.failed")
    await comm.disconnect()
    assert frames[-1]["type"] == "generation.completed"
    expected = "Hello\ufffd wor\ufffdld!"
    assert "".join(d["text"] for d in deltas_of(frames)) == expected
    reply = await Message.objects.aget(pk=created[1]["message"]["id"])
    assert reply.status == "completed" and reply.content == expected


@pytest.mark.parametrize("content", ["nul \x00 inside", "lone \ud800 surrogate"])
async def test_message_send_with_unstorable_text_is_a_bad_request_and_the_socket_stays_usable(
    conversation, alice_headers, content
):
    comm = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    await comm.connect()
    await comm.send_json_to({"type": "message.send", "content": content})
    frame = await comm.receive_json_from(timeout=5)
    await comm.send_json_to({"type": "ping"})
    pong = await comm.receive_json_from(timeout=5)
    await comm.disconnect()
    assert frame["type"] == "error" and frame["error"]["code"] == "bad_request"
    assert pong == {"type": "pong"}
    assert not await Message.objects.filter(role="user").aexists()


def _orphan(conversation, user, *, content: str = "") -> Generation:
    from messages_app.services import message_send

    result = message_send(conversation=conversation, author=user, content="hi")
    reply = Message.objects.get(pk=result.assistant_message.pk)
    reply.status = "streaming"
    reply.content, reply.stream_seq = content, 1 if content else 0
    reply.save()
    past = timezone.now() - timedelta(minutes=5)
    Generation.objects.filter(pk=result.generation_id).update(started_at=past, attempt=3)
    return Generation.objects.select_related("message").get(pk=result.generation_id)


def test_one_bad_row_does_not_stop_the_reaper_from_settling_the_others(
    conversation, user, fake_llm, caplog
):
    bad = _orphan(conversation, user)
    good = _orphan(conversation, user, content="partial too")
    # The bad one's token log is unreadable (a key of the wrong type), as a corrupt row would be.
    sync_redis().set(log_key(bad.message.stream_key), "not a stream")
    assert reap_orphans() == 1
    assert Message.objects.get(pk=good.message_id).status == "failed"
    assert Message.objects.get(pk=bad.message_id).status == "streaming"
    assert any("could not settle" in r.getMessage() for r in caplog.records)


async def test_reaping_a_log_that_holds_nul_fails_the_reply_with_the_text_replaced(
    conversation, user, fake_llm
):
    orphan = await sync_to_async(_orphan)(conversation, user, content="a")
    key = log_key(orphan.message.stream_key)
    # A log written before replies were made storable, as an older worker left it.
    await sync_to_async(sync_redis().xadd)(key, {"t": "a"}, id="1-0")
    await sync_to_async(sync_redis().xadd)(key, {"t": "\x00b"}, id="2-0")
    assert await sync_to_async(reap_orphans)() == 1
    reply = await Message.objects.aget(pk=orphan.message_id)
    assert reply.status == "failed" and reply.content == "a\ufffdb"

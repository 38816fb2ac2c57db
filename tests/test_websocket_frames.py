"""Bad websocket frames get an `error` frame and the connection stays usable."""

from __future__ import annotations

import pytest
from django.conf import settings

from messages_app.models import Message
from tests.helpers import communicator

pytestmark = pytest.mark.django_db(transaction=True)


async def _assert_still_usable(comm):
    await comm.send_json_to({"type": "ping"})
    assert await comm.receive_json_from(timeout=5) == {"type": "pong"}


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("{not json", "bad_frame"),
        ("[1, 2, 3]", "bad_frame"),
        ('{"no_type": true}', "bad_frame"),
        ('{"type": 7}', "bad_frame"),
        ('{"type": "launch.missiles"}', "unknown_type"),
        ('{"type": "message.send", "content": ""}', "empty_content"),
        ('{"type": "message.send", "content": "   "}', "empty_content"),
        ('{"type": "message.send"}', "empty_content"),
        ('{"type": "message.send", "content": 42}', "empty_content"),
        ('{"type": "message.send", "content": "hi", "client_id": 5}', "invalid"),
    ],
)
async def test_bad_frame_gets_an_error_frame_and_the_socket_stays_open(
    conversation, alice_headers, raw, code
):
    comm = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    assert (await comm.connect())[0]
    await comm.send_to(text_data=raw)
    frame = await comm.receive_json_from(timeout=5)
    assert frame["type"] == "error"
    assert frame["error"]["code"] == code
    assert frame["error"]["message"]
    await _assert_still_usable(comm)
    await comm.disconnect()
    assert not await Message.objects.filter(role="user").aexists()


async def test_oversized_content_over_websocket_is_too_large(conversation, alice_headers):
    comm = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    await comm.connect()
    content = "x" * (settings.MAX_MESSAGE_CHARS + 1)
    await comm.send_json_to({"type": "message.send", "content": content})
    frame = await comm.receive_json_from(timeout=5)
    assert frame["error"]["code"] == "too_large"
    await _assert_still_usable(comm)
    await comm.disconnect()


async def test_binary_and_huge_frames_are_refused_politely(conversation, alice_headers):
    comm = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    await comm.connect()
    await comm.send_to(bytes_data=b"\x00\x01")
    assert (await comm.receive_json_from(timeout=5))["error"]["code"] == "bad_frame"
    await comm.send_to(text_data='{"type": "ping", "pad": "' + "p" * 70_000 + '"}')
    assert (await comm.receive_json_from(timeout=5))["error"]["code"] == "bad_frame"
    await _assert_still_usable(comm)
    await comm.disconnect()


async def test_unknown_conversation_id_over_websocket_is_not_found(alice_headers):
    for path in ("/ws/conversations/999999/", "/ws/conversations/abc/"):
        comm = communicator(path, alice_headers)
        await comm.connect()
        assert (await comm.receive_json_from(timeout=5))["error"]["code"] == "not_found"
        await comm.disconnect()

"""The Django admin as moderators use it: conversations with their messages, read-only."""

from __future__ import annotations

import pytest

from llm_app.models import Generation
from messages_app.models import Message
from messages_app.services import message_send
from tests.factories import UserFactory
from tests.helpers import run_llm_worker

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def staff_client(client):
    admin = UserFactory(username="root", is_staff=True, is_superuser=True)
    client.force_login(admin)
    return client


def test_admin_shows_conversations_with_messages_inline_and_filters(
    staff_client, conversation, user, fake_llm
):
    result = message_send(conversation=conversation, author=user, content="find me please")
    run_llm_worker()
    page = staff_client.get(f"/admin/messages_app/conversation/{conversation.pk}/change/")
    assert page.status_code == 200
    assert b"find me please" in page.content
    filtered = staff_client.get(
        "/admin/messages_app/message/?status__exact=completed&role__exact=user"
    )
    assert filtered.status_code == 200 and b"find me please" in filtered.content
    searched = staff_client.get("/admin/messages_app/message/?q=find+me")
    assert searched.status_code == 200 and b"find me please" in searched.content
    none = staff_client.get("/admin/messages_app/message/?status__exact=failed")
    assert b"find me please" not in none.content
    generation = Generation.objects.get(message=result.assistant_message)
    gen_page = staff_client.get(f"/admin/llm_app/generation/{generation.pk}/change/")
    assert gen_page.status_code == 200 and b"message_ids" in gen_page.content
    for url in ("/admin/messages_app/character/", "/admin/messages_app/feedback/"):
        assert staff_client.get(url).status_code == 200


def test_inline_messages_are_read_only(staff_client, conversation):
    page = staff_client.get(f"/admin/messages_app/conversation/{conversation.pk}/change/")
    assert b'name="messages-0-content"' not in page.content
    assert Message.objects.filter(conversation=conversation).count() == 1

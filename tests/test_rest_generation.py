import pytest
from django.conf import settings

from fake_llm import Script
from tests.helpers import run_llm_worker


@pytest.mark.django_db(transaction=True)
def test_post_message_then_worker_completes_reply(api, conversation, fake_llm):
    fake_llm.push(Script.from_text("Hello there, traveller."))
    resp = api.post(
        f"/api/v1/conversations/{conversation.pk}/messages/", {"content": "Hi"}, format="json"
    )
    assert resp.status_code == 202, resp.content
    run_llm_worker()
    resp = api.get(f"/api/v1/conversations/{conversation.pk}/messages/")
    assert resp.status_code == 200
    last = resp.json()["results"][-1]
    assert last["status"] == "completed", last
    assert last["content"] == "Hello there, traveller."
    assert settings.REDIS_URL

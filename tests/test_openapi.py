"""The OpenAPI schema and docs, and the one message payload they document."""

from __future__ import annotations

import pytest

from fake_llm import Script
from messages_app.models import Message
from tests.helpers import run_llm_worker

pytestmark = pytest.mark.django_db(transaction=True)


def _messages_url(conversation) -> str:
    return f"/api/v1/conversations/{conversation.pk}/messages/"


def test_openapi_schema_and_docs_are_served(api):
    schema = api.get("/api/schema/")
    assert schema.status_code == 200
    text = schema.content.decode()
    for path in ("/api/v1/conversations/{conversation_id}/messages/", "/api/v1/ws-tickets/"):
        assert path in text
    assert api.get("/api/docs/").status_code == 200
    browsable = api.get("/api/v1/conversations/", HTTP_ACCEPT="text/html")
    assert browsable.status_code == 200 and b"<html" in browsable.content.lower()


def test_the_message_payload_has_exactly_the_fields_the_openapi_schema_documents(
    api, conversation, fake_llm
):
    from messages_app.serializers import MessageSerializer, message_data

    fake_llm.push(Script.from_text("Same shape everywhere."))
    sent = api.post(_messages_url(conversation), {"content": "hi"}, format="json").json()
    run_llm_worker()
    api.post(f"/api/v1/messages/{sent['assistant_message']['id']}/regenerate/")
    documented = set(MessageSerializer().fields)
    schema = api.get("/api/schema/?format=json").json()
    assert set(schema["components"]["schemas"]["Message"]["properties"]) == documented
    for message in Message.objects.select_related("generation").all():
        assert set(message_data(message)) == documented


def test_the_schema_documents_the_guards_answers_and_headers(api):
    schema = api.get("/api/schema/?format=json").json()
    paths = schema["paths"]
    for path, method in (
        ("/api/v1/conversations/{conversation_id}/messages/", "post"),
        ("/api/v1/messages/{message_id}/", "patch"),
        ("/api/v1/messages/{message_id}/regenerate/", "post"),
    ):
        responses = paths[path][method]["responses"]
        assert {"403", "422", "429", "503"} <= set(responses), path
        assert "content_blocked" in responses["422"]["description"]
        assert "rate_limited" in responses["429"]["description"]
        headers = responses["429"]["headers"]
        assert {"Retry-After", "RateLimit-Limit", "RateLimit-Remaining", "RateLimit-Reset"} <= set(
            headers
        ), path
    # Every endpoint a banned user is refused documents 403 `banned`; the token endpoint not.
    assert "banned" in paths["/api/v1/conversations/"]["get"]["responses"]["403"]["description"]
    assert "403" not in paths["/api/v1/auth/token/"]["post"]["responses"]
    report = paths["/api/v1/messages/{message_id}/report/"]["post"]["responses"]
    assert {"201", "403", "404", "409"} <= set(report)

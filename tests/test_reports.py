"""Reports from users: POST /api/v1/messages/{id}/report/ puts a message in the queue, once per
user and message."""

from __future__ import annotations

import threading

import pytest
from django.db import connections
from rest_framework.test import APIClient

from messages_app.models import Report, ReviewItem
from tests.moderation_helpers import reply
from tests.test_auth_tokens import assert_error

pytestmark = pytest.mark.django_db(transaction=True)


def url(message_id: int) -> str:
    return f"/api/v1/messages/{message_id}/report/"


def test_a_report_is_201_and_puts_the_message_in_the_queue(api, conversation, user):
    message = reply(conversation, "something nasty")
    response = api.post(url(message.pk), {"reason": "It insulted me."}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == {"id", "message_id", "reason", "created_at"}
    assert (body["message_id"], body["reason"]) == (message.pk, "It insulted me.")
    report = Report.objects.get()
    assert (report.reporter, report.message_id) == (user, message.pk)
    item = ReviewItem.objects.get(message=message)
    assert (item.source, item.state, item.reports, item.content) == (
        "report",
        "pending",
        1,
        "something nasty",
    )
    assert item.user == user  # a reply is attributed to the conversation's owner


def test_a_second_report_by_the_same_user_is_409_already_reported(api, conversation):
    message = reply(conversation)
    assert api.post(url(message.pk), {"reason": "bad"}, format="json").status_code == 201
    again = api.post(url(message.pk), {"reason": "still bad"}, format="json")
    assert_error(again, 409, "already_reported")
    assert Report.objects.count() == 1 and ReviewItem.objects.get().reports == 1


def test_concurrent_repeats_make_one_report(user, conversation):
    message = reply(conversation)
    statuses: list[int] = []
    barrier = threading.Barrier(4)

    def post() -> None:
        client = APIClient()
        client.force_authenticate(user)
        barrier.wait()
        try:
            statuses.append(
                client.post(url(message.pk), {"reason": "x"}, format="json").status_code
            )
        finally:
            connections.close_all()

    threads = [threading.Thread(target=post) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [201, 409, 409, 409]
    assert Report.objects.count() == 1 and ReviewItem.objects.get().reports == 1


def test_a_message_the_user_cannot_see_is_404(conversation, other_user):
    message = reply(conversation)
    client = APIClient()
    client.force_authenticate(other_user)
    assert_error(client.post(url(message.pk), {"reason": "x"}, format="json"), 404, "not_found")
    assert_error(client.post(url(999_999), {"reason": "x"}, format="json"), 404, "not_found")
    assert not Report.objects.exists() and not ReviewItem.objects.exists()


@pytest.mark.parametrize("body", [{}, {"reason": ""}, {"reason": "   "}, {"reason": "x" * 2001}])
def test_a_reason_is_required_and_bounded(api, conversation, body):
    message = reply(conversation)
    assert_error(api.post(url(message.pk), body, format="json"), 400, "invalid")
    assert not Report.objects.exists()


def test_reporting_needs_authentication(conversation):
    message = reply(conversation)
    assert_error(APIClient().post(url(message.pk), {"reason": "x"}, format="json"), 401)


def test_the_report_endpoint_is_in_the_openapi_schema(api):
    schema = api.get("/api/schema/?format=json").json()
    operation = schema["paths"]["/api/v1/messages/{message_id}/report/"]["post"]
    assert {"201", "404", "409"} <= set(operation["responses"])

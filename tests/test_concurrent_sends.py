"""Concurrent sends on one conversation land on its active branch, one after the other."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connections
from rest_framework.test import APIClient

from messages_app.models import Conversation, Message

pytestmark = pytest.mark.django_db(transaction=True)


def _post(user, conversation_id: int, n: int) -> int:
    client = APIClient()
    client.force_authenticate(user)
    try:
        resp = client.post(
            f"/api/v1/conversations/{conversation_id}/messages/",
            {"content": f"message {n}", "client_id": f"c{n}"},
            format="json",
        )
        return resp.status_code
    finally:
        connections.close_all()


def test_fifty_concurrent_sends_form_one_chain_on_the_active_branch(user, conversation):
    with ThreadPoolExecutor(max_workers=10) as pool:
        statuses = list(pool.map(lambda n: _post(user, conversation.pk, n), range(50)))
    assert statuses == [202] * 50
    messages = list(Message.objects.filter(conversation=conversation).order_by("id"))
    children = Counter(m.parent_id for m in messages if m.parent_id is not None)
    assert max(children.values()) == 1, "no send may become a hidden sibling branch"
    # The active branch holds every send, each answering the reply queued before it.
    leaf = Conversation.objects.get(pk=conversation.pk).active_leaf_id
    by_id = {m.pk: m for m in messages}
    branch = []
    while leaf is not None:
        branch.append(by_id[leaf])
        leaf = by_id[leaf].parent_id
    branch.reverse()
    users = [m for m in branch if m.role == "user"]
    assert len(users) == 50
    assert [m.pk for m in users] == sorted(m.pk for m in users), "in the order they arrived"
    assert [m.role for m in branch[1:]] == ["user", "assistant"] * 50


def test_a_send_naming_its_parent_still_branches_there(api, conversation):
    greeting = conversation.active_leaf_id
    url = f"/api/v1/conversations/{conversation.pk}/messages/"
    api.post(url, {"content": "first"}, format="json")
    resp = api.post(url, {"content": "alternative", "parent_id": greeting}, format="json")
    assert resp.status_code == 202
    assert resp.json()["user_message"]["parent_id"] == greeting
    assert Message.objects.filter(parent_id=greeting).count() == 2

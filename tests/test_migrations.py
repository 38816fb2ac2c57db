"""Migrations that change existing rows do it right."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor


@pytest.mark.django_db(transaction=True)
def test_existing_conversations_and_messages_each_get_their_own_random_redis_name():
    executor = MigrationExecutor(connection)
    before = [("messages_app", "0002_message_stream_seq")]
    after = executor.loader.graph.leaf_nodes()
    executor.migrate(before)
    try:
        apps = executor.loader.project_state(before).apps
        User = apps.get_model("auth", "User")
        Character = apps.get_model("messages_app", "Character")
        Conversation = apps.get_model("messages_app", "Conversation")
        Message = apps.get_model("messages_app", "Message")
        owner = User.objects.create(username="old-rows")
        character = Character.objects.create(name="Old")
        for _ in range(2):
            conversation = Conversation.objects.create(owner=owner, character=character)
            for n in range(3):
                Message.objects.create(conversation=conversation, role="user", content=f"{n}")
        executor = MigrationExecutor(connection)
        executor.migrate(after)
        apps = executor.loader.project_state(after).apps
        conversations = apps.get_model("messages_app", "Conversation").objects
        messages = apps.get_model("messages_app", "Message").objects
        channel_keys = list(conversations.values_list("channel_key", flat=True))
        stream_keys = list(messages.values_list("stream_key", flat=True))
    finally:
        MigrationExecutor(connection).migrate(
            MigrationExecutor(connection).loader.graph.leaf_nodes()
        )
    assert len(channel_keys) == 2 and len(set(channel_keys)) == 2
    assert len(stream_keys) == 6 and len(set(stream_keys)) == 6

"""The hot path's hand-written queries build the very instances the ORM would."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from llm_app.models import Generation
from llm_app.state import _generation_load_row, generation_start_many
from messages_app.models import Character, Conversation, Message
from messages_app.services import _lock_for_send, conversation_create, message_send

pytestmark = pytest.mark.django_db(transaction=True)


def _fields(instance: Any) -> dict[str, Any]:
    return {f.attname: getattr(instance, f.attname) for f in type(instance)._meta.concrete_fields}


def test_the_worker_load_gives_the_orm_instances(user, character):
    character.temperature = 0.3
    character.is_public = True
    character.save()
    conversation = conversation_create(owner=user, character=character)
    result = message_send(conversation=conversation, author=user, content="héllo 🙂")
    generation = Generation.objects.select_related(
        "message", "message__conversation", "message__conversation__character"
    ).get(pk=result.generation_id)
    generation.prompt_manifest = {"nested": [1, "ü", None]}
    generation.save()

    loaded = _generation_load_row(result.generation_id)
    assert loaded is not None
    assert _fields(loaded) == _fields(generation)
    assert _fields(loaded.message) == _fields(generation.message)
    assert _fields(loaded.message.conversation) == _fields(generation.message.conversation)
    assert _fields(loaded.message.conversation.character) == _fields(character)
    # Typed as the ORM types them (UUIDs, JSON, aware datetimes), not as raw column values.
    assert loaded.message.stream_key == generation.message.stream_key
    assert loaded.params == generation.params and isinstance(loaded.params, dict)
    assert loaded.enqueued_at.tzinfo is not None
    assert _generation_load_row(10**9) is None


def test_the_send_lock_reads_the_conversation_its_character_and_its_leaf(user, character):
    conversation = conversation_create(owner=user, character=character)
    with transaction.atomic():
        locked, depth, has_children = _lock_for_send(conversation, user.pk)
    assert _fields(locked) == _fields(Conversation.objects.get(pk=conversation.pk))
    assert _fields(locked.character) == _fields(Character.objects.get(pk=character.pk))
    assert (depth, has_children) == (0, False)  # the greeting, a leaf
    greeting = Message.objects.get(conversation=conversation)
    message_send(conversation=conversation, author=user, content="hi")
    # Back on the greeting's branch: its leaf (the greeting) now has a child.
    Conversation.objects.filter(pk=conversation.pk).update(active_leaf=greeting)
    with transaction.atomic():
        _, depth, has_children = _lock_for_send(conversation, user.pk)
    assert (depth, has_children) == (0, True)


def test_starts_in_one_transaction_skip_replies_no_longer_queued(user, character):
    results = []
    for i in range(3):
        conversation = conversation_create(owner=user, character=character)
        results.append(message_send(conversation=conversation, author=user, content=f"q{i}"))
    cancelled = results[1].assistant_message
    Message.objects.filter(pk=cancelled.pk).update(status=Message.Status.CANCELLED)
    generations = [_generation_load_row(r.generation_id) for r in results]
    taken_at = timezone.now() - timedelta(milliseconds=250)
    started = generation_start_many([(g, taken_at) for g in generations if g is not None])
    assert started == {results[0].generation_id, results[2].generation_id}
    for result in results:
        saved = Generation.objects.select_related("message").get(pk=result.generation_id)
        if result.generation_id in started:
            # The time the worker took it up, read back as the ORM reads it, on any backend.
            assert (saved.message.status, saved.started_at, saved.attempt) == (
                "streaming",
                taken_at,
                1,
            )
        else:
            assert (saved.message.status, saved.started_at, saved.attempt) == ("cancelled", None, 0)
    # Ordered comparisons on the column still work (the reaper's cutoff query).
    assert Generation.objects.filter(started_at__lt=timezone.now()).count() == 2

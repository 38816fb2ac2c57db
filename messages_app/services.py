"""Writes on conversations and messages: check, then change, then announce on commit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from llm_app.cancel import cancel_signal
from llm_app.models import Generation
from llm_app.services import generation_create, generation_enqueue, generation_settings
from messages_app.errors import Conflict, InvalidInput, NotFound, TooLarge, Unavailable
from messages_app.events import send_event
from messages_app.models import Character, Conversation, Feedback, Message
from messages_app.selectors import branch_leaf_under, siblings_of
from messages_app.serializers import message_data


@dataclass(frozen=True)
class SendResult:
    user_message: Message
    assistant_message: Message
    generation: Generation
    created: bool


def check_message_content(content: Any) -> str:
    """Content a user may send: a non-blank string of at most MAX_MESSAGE_CHARS characters."""
    if not isinstance(content, str) or not content.strip():
        raise InvalidInput("Message content must not be empty.", code="empty_content")
    if len(content) > settings.MAX_MESSAGE_CHARS:
        raise TooLarge(
            f"Message content is longer than {settings.MAX_MESSAGE_CHARS} characters.",
            details={"max_chars": settings.MAX_MESSAGE_CHARS, "chars": len(content)},
        )
    return content


def check_client_id(client_id: Any) -> str:
    if client_id is None:
        return ""
    if not isinstance(client_id, str) or len(client_id) > 64:
        raise InvalidInput("client_id must be a string of at most 64 characters.")
    return client_id


def conversation_create(*, owner: Any, character: Character, title: str = "") -> Conversation:
    """A new conversation whose first message is the character's greeting (when it has one)."""
    with transaction.atomic():
        conversation = Conversation.objects.create(
            owner=owner, character=character, title=title or character.name
        )
        if character.greeting.strip():
            greeting = Message.objects.create(
                conversation=conversation,
                role=Message.Role.ASSISTANT,
                content=character.greeting,
                status=Message.Status.COMPLETED,
                finish_reason="greeting",
            )
            conversation.active_leaf = greeting
            conversation.save(update_fields=["active_leaf"])
    return conversation


def _existing_send(conversation: Conversation, client_id: str) -> SendResult | None:
    user_message = Message.objects.filter(
        conversation=conversation, client_id=client_id, role=Message.Role.USER
    ).first()
    if user_message is None:
        return None
    assistant = (
        Message.objects.select_related("generation")
        .filter(parent=user_message, role=Message.Role.ASSISTANT)
        .order_by("id")
        .first()
    )
    assert assistant is not None, "a user message is always saved with its reply"
    return SendResult(user_message, assistant, assistant.generation, created=False)


def message_send(
    *,
    conversation: Conversation,
    author: Any,
    content: Any,
    client_id: Any = "",
    parent_id: int | None = None,
) -> SendResult:
    """Store a user message and its queued reply, enqueue the generation, announce both.

    Idempotent on `client_id`: a repeat returns the first result and creates nothing. If the
    queue cannot take the job, both messages are removed again and `Unavailable` is raised,
    so no message ever exists without a job behind it.
    """
    content = check_message_content(content)
    client_id = check_client_id(client_id)
    if client_id and (existing := _existing_send(conversation, client_id)):
        return existing

    if parent_id is not None:
        parent = Message.objects.filter(pk=parent_id, conversation=conversation).first()
        if parent is None:
            raise NotFound("No such parent message in this conversation.")
        if parent.role == Message.Role.USER:
            raise InvalidInput("A message cannot answer a user message.", code="bad_parent")
    else:
        parent = conversation.active_leaf

    try:
        with transaction.atomic():
            user_message = Message.objects.create(
                conversation=conversation,
                parent=parent,
                depth=parent.depth + 1 if parent is not None else 0,
                role=Message.Role.USER,
                author=author,
                content=content,
                client_id=client_id,
            )
            assistant, generation = _queue_reply(
                conversation, user_message, announce=[user_message]
            )
    except IntegrityError:
        # A concurrent request with the same client_id won the race; answer with its result.
        if client_id and (existing := _existing_send(conversation, client_id)):
            return existing
        raise
    return SendResult(user_message, assistant, generation, created=True)


def _queue_reply(
    conversation: Conversation, user_message: Message, *, announce: list[Message]
) -> tuple[Message, Generation]:
    """Inside a transaction: a queued reply to `user_message`, made the active leaf, with its
    generation enqueued after commit. `announce` are the other new messages of this change:
    if the queue fails they are deleted with the reply (nothing half-saved) and Unavailable
    is raised; otherwise they are announced with the reply."""
    config = generation_settings(conversation.character)
    assistant = Message.objects.create(
        conversation=conversation,
        parent=user_message,
        depth=user_message.depth + 1,
        role=Message.Role.ASSISTANT,
        status=Message.Status.QUEUED,
        model=config["model"],
    )
    generation = generation_create(message=assistant, config=config)
    previous_leaf = conversation.active_leaf_id
    Conversation.objects.filter(pk=conversation.pk).update(
        active_leaf=assistant, last_activity_at=timezone.now()
    )
    conversation.active_leaf = assistant
    created = [*announce, assistant]
    transaction.on_commit(
        lambda: _enqueue_and_announce(conversation, created, generation, previous_leaf)
    )
    return assistant, generation


def _enqueue_and_announce(
    conversation: Conversation,
    created: list[Message],
    generation: Generation,
    previous_leaf: int | None,
) -> None:
    try:
        generation_enqueue(generation)
    except Exception as exc:
        with transaction.atomic():
            Conversation.objects.filter(pk=conversation.pk).update(active_leaf_id=previous_leaf)
            for message in reversed(created):
                Message.objects.filter(pk=message.pk).delete()
        conversation.active_leaf_id = previous_leaf
        raise Unavailable(
            "The generation queue is unavailable; nothing was saved. Try again.",
            code="queue_unavailable",
        ) from exc
    client_id = created[0].client_id if created[0].role == Message.Role.USER else ""
    siblings = siblings_of(created)
    send_event(
        conversation.pk,
        *(
            {
                "type": "message.created",
                "message": message_data(message, siblings[message.pk]),
                "client_id": client_id,
            }
            for message in created
        ),
    )


def message_regenerate(*, message: Message) -> tuple[Message, Generation]:
    """A new assistant sibling of `message`: another reply to the same user turn.

    The old reply stays in the tree; the new one becomes the active leaf.
    """
    if message.role != Message.Role.ASSISTANT:
        raise InvalidInput("Only an assistant reply can be regenerated.", code="not_a_reply")
    parent = message.parent
    if parent is None or parent.role != Message.Role.USER:
        raise InvalidInput("The greeting cannot be regenerated.", code="not_a_reply")
    conversation = message.conversation
    with transaction.atomic():
        return _queue_reply(conversation, parent, announce=[])


def message_edit(*, message: Message, author: Any, content: Any) -> SendResult:
    """Edit a user message: a new sibling with the new content and a new reply, on a new branch.

    The old message and everything under it are kept, reachable by switching branch.
    """
    if message.role != Message.Role.USER:
        raise InvalidInput("Only user messages can be edited.", code="not_a_user_message")
    content = check_message_content(content)
    conversation = message.conversation
    with transaction.atomic():
        edited = Message.objects.create(
            conversation=conversation,
            parent=message.parent,
            depth=message.depth,
            role=Message.Role.USER,
            author=author,
            content=content,
        )
        assistant, generation = _queue_reply(conversation, edited, announce=[edited])
    return SendResult(edited, assistant, generation, created=True)


def conversation_switch_branch(*, conversation: Conversation, message_id: int) -> Conversation:
    """Show the branch through `message_id`: its newest leaf becomes the active leaf."""
    leaf_id = branch_leaf_under(conversation=conversation, message_id=message_id)
    Conversation.objects.filter(pk=conversation.pk).update(active_leaf_id=leaf_id)
    conversation.active_leaf_id = leaf_id
    return conversation


def generation_cancel(*, generation: Generation) -> Message:
    """Stop a generation. A queued one ends `cancelled` at once; a streaming one is signalled
    and its worker ends it `cancelled`, keeping the text so far. A finished one: Conflict."""
    message = generation.message
    if message.is_terminal:
        raise Conflict(f"The generation already ended ({message.status}).", code="already_finished")
    with transaction.atomic():
        cancelled_queued = Message.objects.filter(
            pk=message.pk, status=Message.Status.QUEUED
        ).update(status=Message.Status.CANCELLED, finish_reason="cancelled")
    if cancelled_queued:
        fresh = Message.objects.select_related("generation").get(pk=message.pk)
        send_event(
            message.conversation_id,
            {
                "type": "generation.cancelled",
                "generation_id": generation.pk,
                "message": message_data(fresh),
            },
        )
        return fresh
    # Streaming (or queued again for a retry): the flag stays set for whichever worker runs it.
    cancel_signal(generation.pk)
    return Message.objects.select_related("generation").get(pk=message.pk)


def feedback_give(*, message: Message, user: Any, rating: int, comment: str = "") -> Feedback:
    """Rate an assistant reply; a second rating by the same user replaces the first."""
    if message.role != Message.Role.ASSISTANT:
        raise InvalidInput("Only assistant replies can be rated.", code="not_a_reply")
    feedback, _ = Feedback.objects.update_or_create(
        message=message, user=user, defaults={"rating": rating, "comment": comment}
    )
    return feedback

"""Writes on conversations and messages: check, then change, then announce on commit."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from functools import cache
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from analytics_app import events as analytics_events
from messages_app import events, limits
from messages_app.broadcast import publish_in, send_event
from messages_app.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    RateLimited,
    TooLarge,
    Unavailable,
)
from messages_app.models import (
    Character,
    Conversation,
    Feedback,
    Message,
    UserStanding,
)
from messages_app.moderation import ban_in_force, banned_error
from messages_app.replies import ReplyEnd, reply_end, reply_engine
from messages_app.safety.client import GATE_PENDING, GATE_TTL_SECONDS, PendingCheck, gate_key
from messages_app.safety_flow import input_blocked_error, input_check_start
from messages_app.selectors import branch_leaf_under, siblings_of
from messageservice import logs, rows
from messageservice.redis_clients import sync_redis

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SendResult:
    user_message: Message
    assistant_message: Message
    generation_id: int
    created: bool
    # The content check of the user message, still running (safety_flow.input_settle).
    check: PendingCheck | None = None


def _storable(text: str) -> bool:
    """False for text a database cannot store: U+0000 (PostgreSQL) or a lone surrogate (any)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_message_content(content: Any) -> str:
    """Content a user may send: a non-blank string of at most MAX_MESSAGE_CHARS characters,
    without U+0000 or lone surrogates."""
    if not isinstance(content, str) or not content.strip():
        raise InvalidInput("Message content must not be empty.", code="empty_content")
    if not _storable(content):
        raise InvalidInput(
            "Message content must not contain U+0000 or unpaired surrogates.", code="bad_request"
        )
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
    """A new conversation whose first message is the character's greeting (when it has one).

    Each of the character's alternate greetings becomes a sibling of the greeting (a root
    message too, created after it, so the greeting comes first among the siblings): clients
    show them as swipes of the first message and switch with `active_leaf_id`. The greeting
    (else the first alternate) is the active leaf. Without a `title`, the message processor
    gives the conversation one after its first reply (messages_app.titles)."""
    greetings = [
        text
        for text in [character.greeting, *(character.alternate_greetings or [])]
        if isinstance(text, str) and text.strip()
    ]
    with transaction.atomic():
        conversation = Conversation.objects.create(owner=owner, character=character, title=title)
        if greetings:
            # One at a time: the ids give the siblings' order.
            first, *_ = [
                Message.objects.create(
                    conversation=conversation,
                    role=Message.Role.ASSISTANT,
                    content=text,
                    status=Message.Status.COMPLETED,
                    finish_reason="greeting",
                )
                for text in greetings
            ]
            conversation.active_leaf = first
            conversation.save(update_fields=["active_leaf"])
    return conversation


def _existing_send(conversation: Conversation, client_id: str) -> SendResult | None:
    user_message = Message.objects.filter(
        conversation=conversation, client_id=client_id, role=Message.Role.USER
    ).first()
    if user_message is None:
        return None
    if user_message.status == Message.Status.BLOCKED:
        raise input_blocked_error(user_message.pk, user_message.safety_categories)
    assistant = (
        Message.objects.select_related("generation")
        .filter(parent=user_message, role=Message.Role.ASSISTANT)
        .order_by("id")
        .first()
    )
    assert assistant is not None, "a user message is always saved with its reply"
    return SendResult(user_message, assistant, assistant.generation.pk, created=False)


def _lock_conversation(conversation: Conversation) -> Conversation:
    """Inside a transaction: lock the conversation's row and read its active leaf afresh.

    Sends on one conversation are serialised here, so concurrent sends each answer the reply of
    the one before, in the order they arrive. NotFound if the conversation was deleted.
    """
    locked = (
        Conversation.objects.select_for_update(of=("self",))
        .select_related("character", "active_leaf")
        .filter(pk=conversation.pk)
        .first()
    )
    if locked is None:
        raise NotFound("No such conversation.")
    return locked


@cache
def _send_lock_sql(vendor: str) -> str:
    messages = rows.table(Message)
    lock = ""
    if connection.features.has_select_for_update:
        lock = " " + connection.ops.for_update_sql(of=("c",))
    # Identifiers come from the models' metadata; the id is a parameter.
    return (
        f"SELECT {rows.columns(Conversation, 'c')}, {rows.columns(Character, 'ch')}, l.depth,"  # noqa: S608
        f" EXISTS(SELECT 1 FROM {messages} k WHERE k.parent_id = c.active_leaf_id),"
        f" {rows.columns(UserStanding, 's')}"
        f" FROM {rows.table(Conversation)} c"
        f" JOIN {rows.table(Character)} ch ON ch.id = c.character_id"
        f" LEFT JOIN {messages} l ON l.id = c.active_leaf_id"
        f" LEFT JOIN {rows.table(UserStanding)} s ON s.user_id = %s"
        f" WHERE c.id = %s{lock}"
    )


def _lock_for_send(
    conversation: Conversation, author_id: int | None
) -> tuple[Conversation, int | None, bool]:
    """_lock_conversation for a send, in one statement written once: the locked conversation
    (with its character read afresh), the depth of its active leaf (None without one), and
    whether that leaf already has children; Banned when a ban is in force on the author (read
    from the same statement). The ORM would compile this query on every send, which cost more
    than running it."""
    with connection.cursor() as cursor:
        cursor.execute(_send_lock_sql(connection.vendor), [author_id, conversation.pk])
        row = cursor.fetchone()
    if row is None:
        raise NotFound("No such conversation.")
    split = rows.width(Conversation)
    end = split + rows.width(Character)
    locked = rows.instance(Conversation, row[:split])
    locked.character = rows.instance(Character, row[split:end])
    leaf_depth, leaf_has_children = row[end], bool(row[end + 1])
    standing = row[end + 2 :]
    if standing[0] is not None:
        record = rows.instance(UserStanding, standing)
        ban = ban_in_force(record.banned_until, record.ban_permanent, record.ban_reason)
        if ban is not None:
            raise banned_error(ban)
    return locked, leaf_depth, leaf_has_children


def message_send(
    *,
    conversation: Conversation,
    author: Any,
    content: Any,
    client_id: Any = "",
    parent_id: int | None = None,
) -> SendResult:
    """Store a user message and its queued reply, start the generation, announce both.

    Without `parent_id` the message answers the conversation's active leaf, read under the
    conversation's row lock. Idempotent on `client_id`: a repeat returns the first result and
    creates nothing (the unique index finds it: the common first send pays no lookup). If the
    queue cannot take the job, both messages are removed again and `Unavailable` is raised, so
    no message ever exists without a job behind it.

    The author's rate limits admit it first (RateLimited: nothing saved). A send that fails,
    or turns out a repeat, is refunded: only a send that creates its messages counts.

    The content check of the text goes to the safety worker first and runs while the send is
    saved and its reply generated: the reply's generation releases no delta before the
    verdict lets it (llm_app.input_gate). The caller settles the check with the result's
    `check` (safety_flow.input_settle: ContentBlocked, or the 503 of an unanswered check).
    """
    content = check_message_content(content)
    client_id = check_client_id(client_id)
    stream_key = uuid.uuid4()  # the reply's, and the name of its in-flight slot
    check = input_check_start(content, gate=stream_key)
    try:
        admission = limits.admit(author, token=stream_key.hex)
    except RateLimited:
        # A repeat of a send that was admitted still gets its result, even at the limit.
        if client_id and (existing := _existing_send(conversation, client_id)):
            return existing
        raise
    try:
        with transaction.atomic():
            locked, leaf_depth, leaf_has_children = _lock_for_send(conversation, author.pk)
            if parent_id is not None:
                parent = Message.objects.filter(pk=parent_id, conversation=locked).first()
                if parent is None:
                    raise NotFound("No such parent message in this conversation.")
                if parent.role == Message.Role.USER:
                    raise InvalidInput("A message cannot answer a user message.", code="bad_parent")
                depth = parent.depth + 1
                alone = False
            else:
                depth = leaf_depth + 1 if leaf_depth is not None else 0
                alone = leaf_depth is not None and not leaf_has_children
            user_message = Message.objects.create(
                conversation=locked,
                parent_id=parent_id if parent_id is not None else locked.active_leaf_id,
                depth=depth,
                role=Message.Role.USER,
                author=author,
                content=content,
                client_id=client_id,
            )
            # The new user message's siblings; its reply has none.
            siblings = [user_message.pk] if alone else None
            assistant, generation_id = _queue_reply(
                locked,
                user_message,
                announce=[user_message],
                siblings=siblings,
                stream_key=stream_key,
                gated=check is not None,
            )
    except IntegrityError:
        # A repeat of an earlier send (or a concurrent one that won the race): its result.
        limits.refund(admission)
        if client_id and (existing := _existing_send(conversation, client_id)):
            return existing
        raise
    except BaseException:
        limits.refund(admission)
        raise
    conversation.active_leaf_id = locked.active_leaf_id
    return SendResult(user_message, assistant, generation_id, created=True, check=check)


def _queue_reply(
    conversation: Conversation,
    user_message: Message,
    *,
    announce: list[Message],
    siblings: list[int] | None = None,
    stream_key: uuid.UUID | None = None,
    gated: bool = False,
) -> tuple[Message, int]:
    """Inside a transaction: a queued reply to `user_message`, made the active leaf, with its
    generation started after commit. `announce` are the other new messages of this change:
    if the queue fails they are deleted with the reply (nothing half-saved) and Unavailable
    is raised; otherwise they are announced with the reply. `siblings`, when the caller knows
    them, are those of announce[0]. `stream_key`: the reply's, when the caller named its
    in-flight slot after it."""
    engine = reply_engine()
    assistant = Message.objects.create(
        stream_key=stream_key or uuid.uuid4(),
        conversation=conversation,
        parent=user_message,
        depth=user_message.depth + 1,
        role=Message.Role.ASSISTANT,
        status=Message.Status.QUEUED,
        model=engine.model_for(conversation),
    )
    generation_id = engine.prepare(assistant)
    previous_leaf = conversation.active_leaf_id
    Conversation.objects.filter(pk=conversation.pk).update(
        active_leaf=assistant, last_activity_at=timezone.now()
    )
    conversation.active_leaf = assistant
    created = [*announce, assistant]
    if siblings is not None:
        known = {announce[0].pk: siblings, assistant.pk: [assistant.pk]}
    else:
        known = siblings_of(created)

    def start() -> None:
        with logs.bind(generation_id=generation_id):
            _start_and_announce(conversation, created, previous_leaf, known, gated=gated)

    transaction.on_commit(start)
    return assistant, generation_id


def _start_and_announce(
    conversation: Conversation,
    created: list[Message],
    previous_leaf: int | None,
    siblings: dict[int, list[int]],
    *,
    gated: bool = False,
) -> None:
    """After commit, in one Redis round trip (MULTI/EXEC): announce the new messages, then
    queue the reply's job. If that fails, nothing was announced or queued: the messages are
    removed again and Unavailable is raised."""
    client_id = created[0].client_id if created[0].role == Message.Role.USER else ""
    frames = [
        events.message_created(message, siblings=siblings[message.pk], client_id=client_id)
        for message in created
    ]
    try:
        with sync_redis().pipeline(transaction=True) as pipe:
            pipe.multi()  # explicit, as RQ expects of a pipeline it is given
            published = publish_in(pipe, conversation, *frames)
            if gated:
                # The reply's generation waits for the input check's verdict here; NX keeps
                # an answer that came first.
                pipe.set(
                    gate_key(created[-1].stream_key.hex), GATE_PENDING, nx=True, ex=GATE_TTL_SECONDS
                )
            reply_engine().start(created[-1], pipe)
            pipe.execute()
    except Exception as exc:
        logger.warning("could not queue reply %s (%r); removed", created[-1].pk, exc)
        with transaction.atomic():
            Conversation.objects.filter(pk=conversation.pk).update(active_leaf_id=previous_leaf)
            for message in reversed(created):
                Message.objects.filter(pk=message.pk).delete()
        conversation.active_leaf_id = previous_leaf
        raise Unavailable(
            "The generation queue is unavailable; nothing was saved. Try again.",
            code="queue_unavailable",
        ) from exc
    if not published:
        send_event(conversation, *frames)
    logger.info(
        "reply %s queued as generation %s (conversation %s)",
        created[-1].pk,
        logs.current_generation_id(),
        conversation.pk,
    )


def message_regenerate(*, message: Message) -> tuple[Message, int]:
    """A new assistant sibling of `message`: another reply to the same user turn.

    The old reply stays in the tree; the new one becomes the active leaf. Returns the new
    reply and its generation id. Counts as a send of the conversation's owner (RateLimited).
    """
    if message.role != Message.Role.ASSISTANT:
        raise InvalidInput("Only an assistant reply can be regenerated.", code="not_a_reply")
    parent = message.parent
    if parent is None or parent.role != Message.Role.USER:
        raise InvalidInput("The greeting cannot be regenerated.", code="not_a_reply")
    stream_key = uuid.uuid4()
    owner_id = message.conversation.owner_id
    with limits.admitted(owner_id, token=stream_key.hex), transaction.atomic():
        conversation = _lock_conversation(message.conversation)
        return _queue_reply(conversation, parent, announce=[], stream_key=stream_key)


def message_edit(*, message: Message, author: Any, content: Any) -> SendResult:
    """Edit a user message: a new sibling with the new content and a new reply, on a new branch.

    The old message and everything under it are kept, reachable by switching branch. Counts as
    a send of `author` (RateLimited).
    """
    if message.role != Message.Role.USER:
        raise InvalidInput("Only user messages can be edited.", code="not_a_user_message")
    content = check_message_content(content)
    stream_key = uuid.uuid4()
    check = input_check_start(content, gate=stream_key)
    with limits.admitted(author, token=stream_key.hex), transaction.atomic():
        conversation = _lock_conversation(message.conversation)
        edited = Message.objects.create(
            conversation=conversation,
            parent=message.parent,
            depth=message.depth,
            role=Message.Role.USER,
            author=author,
            content=content,
        )
        assistant, generation_id = _queue_reply(
            conversation,
            edited,
            announce=[edited],
            stream_key=stream_key,
            gated=check is not None,
        )
    return SendResult(edited, assistant, generation_id, created=True, check=check)


def conversation_switch_branch(*, conversation: Conversation, message_id: int) -> Conversation:
    """Show the branch through `message_id`: its newest leaf becomes the active leaf."""
    leaf_id = branch_leaf_under(conversation=conversation, message_id=message_id)
    Conversation.objects.filter(pk=conversation.pk).update(active_leaf_id=leaf_id)
    conversation.active_leaf_id = leaf_id
    return conversation


def reply_cancel(*, reply: Message) -> Message:
    """Stop a reply. A queued one ends `cancelled` at once; a streaming one is signalled and its
    worker ends it `cancelled`, keeping the text so far. A finished one: Conflict."""
    if reply.is_terminal:
        raise Conflict(f"The generation already ended ({reply.status}).", code="already_finished")
    ended = reply_end(
        message_id=reply.pk,
        end=ReplyEnd(status=Message.Status.CANCELLED),
        only_from=(Message.Status.QUEUED,),
    )
    if ended is None:
        # Streaming (or queued again for a retry): the engine stops it and ends it.
        reply_engine().cancel(reply)
    return Message.objects.select_related("generation").get(pk=reply.pk)


def conversation_delete(*, conversation: Conversation) -> None:
    """Delete a conversation with its messages. Replies still running are ended `cancelled`
    first (clients are told, and their generations are stopped), then the conversation's
    clients get `conversation.deleted`."""
    running = list(
        Message.objects.filter(
            conversation=conversation,
            status__in=[Message.Status.QUEUED, Message.Status.STREAMING],
        )
    )
    with transaction.atomic():
        for reply in running:
            reply_end(
                message_id=reply.pk,
                end=ReplyEnd(
                    status=Message.Status.CANCELLED,
                    finish_reason="conversation_deleted",
                ),
            )
        conversation_id = conversation.pk
        analytics_events.conversation_deleting(conversation)
        conversation.delete()
        transaction.on_commit(
            lambda: send_event(
                conversation, events.conversation_deleted(conversation_id=conversation_id)
            )
        )
    for reply in running:
        reply_engine().cancel(reply)


def feedback_give(*, message: Message, user: Any, rating: int, comment: str = "") -> Feedback:
    """Rate an assistant reply; a second rating by the same user replaces the first."""
    if message.role != Message.Role.ASSISTANT:
        raise InvalidInput("Only assistant replies can be rated.", code="not_a_reply")
    feedback, _ = Feedback.objects.update_or_create(
        message=message, user=user, defaults={"rating": rating, "comment": comment}
    )
    analytics_events.message_changed(message)
    return feedback

"""Automatic conversation titles, made by the message processor after a completed reply.

A conversation created without a title gets one after its first completed reply: the LLM
of its character is asked for a few words about the exchange (ReplyEngine.complete); when it
fails, or answers nothing usable, the first user message, shortened, is the title. The title
is saved only while the conversation's title is still blank (a conditional UPDATE), so a
user's rename always wins, whenever it happens. Blocked messages never reach the prompt.
"""

from __future__ import annotations

import logging
import re

from django.conf import settings

from messages_app import events
from messages_app.broadcast import send_event
from messages_app.models import Conversation, Message
from messages_app.replies import reply_engine

logger = logging.getLogger(__name__)

MAX_TITLE_CHARS = 60
# The most of each message the prompt quotes: a title needs the gist, not the whole text.
PROMPT_CHARS = 1500
TITLE_INSTRUCTIONS = (
    "You name chat conversations. Reply with a title for the conversation below: at most six "
    "words, in the language of the conversation, on one line, with no quotes and no final "
    "punctuation. Reply with the title alone."
)
_QUOTES = "\"'`*_#“”‘’„«»「」"
_PREFIX = re.compile(r"^\s*(?:title|conversation title)\s*[:\-–—]\s*", re.IGNORECASE)
_TRAILING = ".,;:!?…-–—·"


def shorten(text: str, limit: int = MAX_TITLE_CHARS, *, ellipsis: bool = True) -> str:
    """`text` on one line, at most `limit` characters: cut at a word boundary (mid-word
    only for a first word longer than the limit), with "…" when something was cut and
    `ellipsis` is asked."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    room = limit - 1 if ellipsis else limit
    cut = text[: room + 1]
    space = cut.rfind(" ")
    cut = cut[:space] if space > 0 else text[:room]
    cut = cut.rstrip(" " + _TRAILING)
    return cut + "…" if ellipsis else cut


def clean_title(raw: str) -> str:
    """A title out of what the LLM said: its first non-blank line, without a "Title:"
    prefix, quotes, markup or final punctuation, at most MAX_TITLE_CHARS characters. "" when
    nothing usable is left (no letter or digit)."""
    line = next((line for line in raw.splitlines() if line.strip()), "")
    line = "".join(ch for ch in line if ch.isprintable())  # control characters, surrogates
    line = _PREFIX.sub("", line)
    for _ in range(3):  # "**\"Title\"**." and the like
        line = line.strip().strip(_QUOTES).strip().rstrip(_TRAILING)
    line = shorten(line, ellipsis=False)
    if not any(ch.isalnum() for ch in line):
        return ""
    return line


def title_prompt(user_text: str, reply_text: str | None) -> list[dict[str, str]]:
    """The chat turns that ask for a title of the exchange (the reply left out when None)."""
    exchange = f"User: {shorten(user_text, PROMPT_CHARS)}"
    if reply_text:
        exchange += f"\nAssistant: {shorten(reply_text, PROMPT_CHARS)}"
    return [
        {"role": "system", "content": TITLE_INSTRUCTIONS},
        {"role": "user", "content": f"{exchange}\n\nTitle:"},
    ]


def _user_message_of(reply: Message) -> Message | None:
    """The user message `reply` answers, else the conversation's first one; never a blocked
    one."""
    if reply.parent_id is not None:
        parent = Message.objects.filter(pk=reply.parent_id, role=Message.Role.USER).first()
        if parent is not None and parent.status != Message.Status.BLOCKED:
            return parent
    return (
        Message.objects.filter(conversation_id=reply.conversation_id, role=Message.Role.USER)
        .exclude(status=Message.Status.BLOCKED)
        .order_by("created_at", "id")
        .first()
    )


def title_wanted(reply: Message) -> bool:
    """Whether `reply` (its conversation loaded) should give its conversation a title."""
    return (
        settings.CONVERSATION_AUTO_TITLES
        and reply.role == Message.Role.ASSISTANT
        and reply.status == Message.Status.COMPLETED
        and reply.conversation.title == ""
    )


def title_after_reply(reply: Message, *, with_reply: bool = True) -> str | None:
    """Give `reply`'s conversation a title if it still has none (call title_wanted first).

    `with_reply` False leaves the reply's text out of the prompt (its content check is still
    pending). Returns the title saved, or None when the conversation got one meanwhile (a
    user's rename), was deleted, or has no user message to name it by. After saving, the
    conversation's clients get `conversation.updated`."""
    user_message = _user_message_of(reply)
    if user_message is None:
        return None
    title = ""
    try:
        answer = reply_engine().complete(
            reply.conversation,
            title_prompt(user_message.content, reply.content if with_reply else None),
            max_tokens=settings.TITLE_MAX_TOKENS,
            timeout=settings.TITLE_TIMEOUT_SECONDS,
        )
        title = clean_title(answer)
        if not title:
            logger.info("title of conversation %s: no usable answer", reply.conversation_id)
    except Exception as exc:
        # Whatever went wrong with the LLM, the conversation still gets its title.
        logger.warning("title of conversation %s: LLM failed (%s)", reply.conversation_id, exc)
    if not title:
        title = shorten(user_message.content)
    return conversation_title_set(reply.conversation_id, title)


def conversation_title_set(conversation_id: int, title: str) -> str | None:
    """Save `title` if the conversation's title is still blank, and announce it; the title,
    or None when nothing was saved."""
    saved = Conversation.objects.filter(pk=conversation_id, title="").update(title=title)
    if not saved:
        return None
    conversation = Conversation.objects.filter(pk=conversation_id).first()
    if conversation is None:
        return None  # deleted right after
    send_event(conversation, events.conversation_updated(conversation))
    logger.info("conversation %s titled %r", conversation_id, title)
    return title

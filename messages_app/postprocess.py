"""Post-processing of finished replies: one job per reply on queue `messages`.

`reply_finished` runs in whichever process ended the reply (mostly the llm worker), after
commit: it only queues the job, in one pipelined Redis round trip and with no SQL. The
message processor (`manage.py rqworker messages`) runs it: messages_app.jobs.

The queueing itself (RQ) lives in messages_app.jobs and is registered here when Django
starts (messages_app.apps), as the ReplyEngine is: this module is on the import path of the
websocket consumer, which must not import rq.
"""

from __future__ import annotations

from collections.abc import Callable

from messages_app.models import Message

_enqueue: Callable[[Message], None] | None = None


def enqueuer_register(enqueue: Callable[[Message], None]) -> None:
    global _enqueue
    _enqueue = enqueue


def reply_finished(message: Message) -> None:
    """Queue the post-processing of a reply that reached a terminal status (committed).

    Nothing for a reply ended by the deletion of its conversation: nothing is left to do.
    Raises on a Redis error (the hook logs it; the reply itself is unaffected)."""
    if message.finish_reason == "conversation_deleted":
        return
    if _enqueue is None:
        raise RuntimeError("No post-processing queue is registered (messages_app.apps).")
    _enqueue(message)

"""The llm worker runs many generations per process, and a global cap holds across workers."""

from __future__ import annotations

import threading
import time
from typing import Any

import django_rq
import pytest

from fake_llm import Script
from llm_app.worker import GenerationWorker
from messages_app.models import Message
from messages_app.services import conversation_create, message_send

pytestmark = pytest.mark.django_db(transaction=True)


def _queue_replies(user: Any, character: Any, count: int) -> list[int]:
    ids = []
    for i in range(count):
        conversation = conversation_create(owner=user, character=character)
        result = message_send(conversation=conversation, author=user, content=f"hello {i}")
        ids.append(result.assistant_message.pk)
    return ids


def _run_workers(workers: int, fake_llm: Any) -> int:
    """Run `workers` burst llm workers in threads; the most LLM requests seen at once."""
    peak = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, fake_llm.active_requests)
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [
        threading.Thread(
            target=lambda: django_rq.get_worker("llm").work(burst=True, with_scheduler=False),
            daemon=True,
        )
        for _ in range(workers)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    done.set()
    watcher.join()
    return peak


def test_the_plain_rqworker_command_gets_the_concurrent_worker_class():
    assert isinstance(django_rq.get_worker("llm"), GenerationWorker)


def test_one_worker_process_runs_max_concurrent_requests_generations_at_once(
    user, character, fake_llm, settings
):
    settings.MAX_CONCURRENT_REQUESTS = 4
    settings.MAX_CONCURRENT_LLM_REQUESTS = 100
    # Long enough that every slot's request is open at once even when starting a job is slow.
    fake_llm.push(Script.numbered(5, first_token_delay=1.5, times=8))
    replies = _queue_replies(user, character, 8)
    peak = _run_workers(1, fake_llm)
    assert peak == 4
    statuses = set(Message.objects.filter(pk__in=replies).values_list("status", flat=True))
    assert statuses == {"completed"}


def test_the_global_cap_holds_across_workers_and_the_rest_waits_in_the_queue(
    user, character, fake_llm, settings
):
    settings.MAX_CONCURRENT_REQUESTS = 4
    settings.MAX_CONCURRENT_LLM_REQUESTS = 3
    fake_llm.push(Script.numbered(5, first_token_delay=1.5, times=9))
    replies = _queue_replies(user, character, 9)
    peak = _run_workers(2, fake_llm)
    assert peak == 3
    statuses = set(Message.objects.filter(pk__in=replies).values_list("status", flat=True))
    assert statuses == {"completed"}

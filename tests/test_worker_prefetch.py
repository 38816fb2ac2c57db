"""One wake-up of the llm worker takes every job already waiting that it has slots for."""

from __future__ import annotations

from typing import Any, cast

import django_rq
import pytest

from llm_app.worker import GenerationWorker
from messages_app.services import conversation_create, message_send
from messageservice.redis_clients import sync_redis

pytestmark = pytest.mark.django_db(transaction=True)


def _queue(user: Any, character: Any, count: int) -> list[str]:
    job_ids = []
    for i in range(count):
        conversation = conversation_create(owner=user, character=character)
        reply = message_send(conversation=conversation, author=user, content=f"hi {i}")
        job_ids.append(reply.assistant_message.generation.job_id)
    return job_ids


def _slots(worker: GenerationWorker) -> int:
    assert worker._global is not None
    return int(cast(int, sync_redis().zcard(worker._global.key)))


def _intermediate(queue: Any) -> list[str]:
    items = cast(list[bytes], sync_redis().lrange(queue.intermediate_queue.key, 0, -1))
    return [i.decode() for i in items]


def _worker() -> GenerationWorker:
    worker = django_rq.get_worker("llm")
    assert isinstance(worker, GenerationWorker)
    return worker


def test_a_wake_up_takes_the_waiting_jobs_it_has_slots_for_and_gives_them_back_on_stop(
    user, character, settings
):
    settings.MAX_CONCURRENT_REQUESTS = 4
    settings.MAX_CONCURRENT_LLM_REQUESTS = 100
    job_ids = _queue(user, character, 6)
    worker = _worker()
    queue = django_rq.get_queue("llm")

    job, _ = worker.dequeue_job_and_maintain_ttl(timeout=1)
    # The one it woke up for, and three more: four local slots, four global slots held.
    assert job.id == job_ids[0]
    assert [j.id for j, _, _ in worker._prefetched] == job_ids[1:4]
    assert queue.get_job_ids() == job_ids[4:]
    assert _slots(worker) == 4
    assert _intermediate(queue) == job_ids[:4]

    # The next dequeues are served from what was taken, without Redis.
    second, _ = worker.dequeue_job_and_maintain_ttl(timeout=1)
    assert second.id == job_ids[1]
    assert worker._held is not None

    # Stopping gives the rest back, first in line, in their order, and frees their slots.
    worker._return_prefetched()
    assert queue.get_job_ids() == [*job_ids[2:4], *job_ids[4:]]
    assert _slots(worker) == 2  # the two handed out
    assert _intermediate(queue) == job_ids[:2]


def test_a_wake_up_takes_no_more_than_the_global_cap_allows(user, character, settings):
    settings.MAX_CONCURRENT_REQUESTS = 8
    settings.MAX_CONCURRENT_LLM_REQUESTS = 3
    job_ids = _queue(user, character, 6)
    worker = _worker()
    queue = django_rq.get_queue("llm")
    worker.dequeue_job_and_maintain_ttl(timeout=1)
    assert [j.id for j, _, _ in worker._prefetched] == job_ids[1:3]
    assert queue.get_job_ids() == job_ids[3:]  # the rest waits in the queue
    assert _slots(worker) == 3
    worker._return_prefetched()
    assert _slots(worker) == 1


def test_a_worker_of_several_queues_takes_one_job_at_a_time(user, character, settings):
    # RQ keeps its intermediate queue only for a worker of one queue; so does the prefetch.
    settings.MAX_CONCURRENT_REQUESTS = 8
    job_ids = _queue(user, character, 3)
    worker = django_rq.get_worker("llm", "default")
    assert isinstance(worker, GenerationWorker)
    job, _ = worker.dequeue_job_and_maintain_ttl(timeout=1)
    assert job.id == job_ids[0]
    assert not worker._prefetched
    assert django_rq.get_queue("llm").get_job_ids() == job_ids[1:]

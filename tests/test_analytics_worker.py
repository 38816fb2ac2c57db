"""A real `manage.py analytics_worker` process on real Redis and the test database: replies
ended through the real hook appear in the rows; a worker killed mid-batch loses nothing and
counts nothing twice once another starts; SIGTERM stops it cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connections, transaction

from analytics_app import rollups
from analytics_app.events import events_key
from analytics_app.models import FillState, UsageRow
from llm_app.models import Generation
from messages_app.models import Conversation, Message
from messages_app.replies import ReplyEnd, reply_end
from messageservice import liveness
from messageservice.redis_clients import sync_redis
from tests.analytics_history import assert_rows_match_history, expected_rows
from tests.factories import CharacterFactory, UserFactory
from tests.helpers import _database_url

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parent.parent


class Worker:
    def __init__(self, log: Path, **env: str) -> None:
        self.log = log
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Worker:
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "messageservice.settings",
            "DATABASE_URL": _database_url(),
            "REDIS_URL": settings.REDIS_URL,
            "ENVIRONMENT": "test",
            "BATCH_SIZE_FOR_ANALYTICS": "5",
            # The rows must come from the events: the fill pass closes no recent hour.
            "ANALYTICS_FILL_DELAY_SECONDS": str(10 * 86400),
            "LOG_LEVEL": "INFO",
            **self.env,
        }
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "manage.py", "analytics_worker"],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        until(lambda: "analytics worker ready" in self.output(), what="the worker to start")
        return self

    def signal(self, sig: int) -> int:
        assert self.proc is not None
        self.proc.send_signal(sig)
        if sig in (signal.SIGSTOP, signal.SIGCONT):
            return 0
        return self.proc.wait(15)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def output(self) -> str:
        return self.log.read_text() if self.log.exists() else ""


def until(check: Callable[[], Any], *, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.kill()
    connections.close_all()


def exchanges(count: int) -> list[Message]:
    """`count` user messages with a queued reply each, in two users' conversations."""
    replies = []
    for i in range(count):
        user: Any = UserFactory(username=f"an-worker-user-{i % 2}")
        character = CharacterFactory(name=f"An Worker Character {i % 3}")
        conversation, _ = Conversation.objects.get_or_create(owner=user, character=character)
        question = Message.objects.create(
            conversation=conversation, role="user", author=user, content=f"q{i}"
        )
        reply = Message.objects.create(
            conversation=conversation,
            role="assistant",
            parent=question,
            depth=1,
            status="streaming",
            model=f"model-{i % 2}",
        )
        Generation.objects.create(message=reply, provider="lmstudio", model=reply.model)
        replies.append(reply)
    return replies


def finish(replies: list[Message]) -> None:
    """End each reply through the one service that ends replies (its hook queues the event)."""
    for n, reply in enumerate(replies):
        failed = n % 4 == 3

        def record(message: Message, failed: bool = failed) -> None:
            # What the engine records of a failure in the same transaction (llm_app.state).
            if failed:
                Generation.objects.filter(message=message).update(error_code="provider_error")

        reply_end(
            record=record,
            message_id=reply.pk,
            end=ReplyEnd(
                status="failed" if failed else "completed",
                content="" if failed else f"answer {n}",
                error_code="provider_error" if failed else "",
                prompt_tokens=10 + n,
                completion_tokens=None if failed else 3 * n,
                ttft_ms=None if failed else 100 + n,
                total_ms=200 + 10 * n,
            ),
        )


def counted_replies() -> int:
    """Replies the daily rows count as ended (every reply is counted from its first event on:
    those still streaming too)."""
    rows = UsageRow.objects.filter(interval="day")
    return sum(r.completed + r.failed for r in rows)


def settled() -> bool:
    """No event waits and no batch is in hand."""
    client: Any = sync_redis()
    return not client.llen(events_key()) and not list(
        client.scan_iter(match=f"{events_key()}:processing:*")
    )


def test_replies_ended_through_the_hook_reach_the_rows_of_a_running_worker(tmp_path, workers):
    worker = Worker(tmp_path / "worker.log").start()
    workers.append(worker)
    until(lambda: liveness.alive_counts()["analytics"] == 1, what="the heartbeat")
    replies = exchanges(12)
    finish(replies)
    until(lambda: counted_replies() == 12 and settled(), what="the rows")
    assert_rows_match_history()
    rows = UsageRow.objects.filter(interval="hour")
    assert sum(r.failures.get("provider_error", 0) for r in rows) == 3
    assert sum(r.completion_tokens for r in rows) == sum(3 * n for n in range(12) if n % 4 != 3)
    assert worker.signal(signal.SIGTERM) == 0
    assert "analytics worker: stopped after 12 events" in worker.output()
    assert liveness.alive_counts()["analytics"] == 0


def test_a_worker_killed_mid_batch_loses_nothing_and_counts_nothing_twice(tmp_path, workers):
    first = Worker(tmp_path / "first.log").start()
    workers.append(first)
    finish(exchanges(4))
    until(lambda: counted_replies() == 4 and settled(), what="the first rows")
    rollups.state_main()  # the row the worker locks for each recomputation

    # Frozen, it cannot take the events of these replies before the database is locked.
    first.signal(signal.SIGSTOP)
    replies = exchanges(8)
    finish(replies)
    processing = f"{events_key()}:processing:*"
    # Redis itself may have handed the first event to the frozen worker's pending BLMOVE.
    client: Any = sync_redis()
    taken = sum(client.llen(k) for k in client.scan_iter(match=processing))
    assert client.llen(events_key()) + taken == 8
    locked, release = threading.Event(), threading.Event()

    def hold_the_lock() -> None:
        try:
            with transaction.atomic():
                FillState.objects.select_for_update().get(name=rollups.MAIN)
                FillState.objects.filter(name=rollups.MAIN).update(state="done")
                locked.set()
                release.wait(30)
                transaction.set_rollback(True)
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold_the_lock)
    holder.start()
    try:
        assert locked.wait(10)
        first.signal(signal.SIGCONT)
        # A whole batch: the event a pending BLMOVE took while frozen is not enough.
        until(
            lambda: sum(client.llen(k) for k in client.scan_iter(match=processing)) == 5,
            what="the worker to take a batch of 5",
        )
        time.sleep(0.3)  # now waiting for the lock, inside its batch
        first.kill()
    finally:
        release.set()
        holder.join(10)
    batch = [k for k in sync_redis().scan_iter(match=processing)]
    assert len(batch) == 1 and sync_redis().llen(batch[0]) == 5
    assert sync_redis().llen(events_key()) == 3
    assert counted_replies() == 4  # the batch never committed

    second = Worker(tmp_path / "second.log").start()
    workers.append(second)
    until(lambda: counted_replies() == 12 and settled(), what="the rows of every reply")
    assert "took back 5 events of dead workers" in second.output()
    assert_rows_match_history()
    assert sum(r["replies"] for k, r in expected_rows().items() if k[0] == "day") == 12
    assert second.signal(signal.SIGTERM) == 0


def test_a_worker_without_redis_logs_and_retries_and_stops_on_sigterm(tmp_path, workers):
    from messageservice.embedded import free_port

    worker = Worker(tmp_path / "worker.log", REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    workers.append(worker.start())
    until(lambda: worker.output().count("Redis failed") >= 3, what="the retries")
    assert worker.proc is not None and worker.proc.poll() is None
    assert worker.signal(signal.SIGTERM) == 0
    assert "analytics worker: stopped" in worker.output()

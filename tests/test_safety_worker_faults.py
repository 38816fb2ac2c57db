"""The safety worker process under faults (backend errors, SIGKILL, Redis restarts, SIGTERM,
bad settings), and the openai and llama_guard backends through it, against fake servers over
real HTTP."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from fake_llm.safety import FakeSafetyServer
from messages_app.safety.client import SafetyUnavailable, acheck, submit
from messageservice import embedded, redis_clients
from tests.test_safety_worker import INSULT, KIND, WorkerProcess


@pytest.fixture(scope="module")
def safety_server() -> Iterator[FakeSafetyServer]:
    with FakeSafetyServer() as server:
        yield server


@pytest.fixture
def fake(safety_server: FakeSafetyServer) -> Iterator[FakeSafetyServer]:
    safety_server.clear()
    safety_server.delay = 0.0
    yield safety_server
    safety_server.clear()


def backend_env(fake: FakeSafetyServer, backend: str) -> dict[str, str]:
    return {
        "SAFETY_BACKEND": backend,
        "SAFETY_OPENAI_BASE_URL": fake.base_url,
        "OPENAI_API_KEY": "sk-test",
        "SAFETY_LLAMA_GUARD_URL": fake.base_url,
    }


def test_the_openai_backend_through_the_worker_batches_and_names_the_categories(fake, tmp_path):
    fake.moderation["I will hurt myself tonight"] = {"self-harm/intent": 0.93, "self-harm": 0.81}
    fake.delay = 0.3  # checks arriving meanwhile are batched into the next request
    worker = WorkerProcess(tmp_path / "w.log", **backend_env(fake, "openai")).start().ready()
    try:
        fake.requests.clear()
        texts = ["I will hurt myself tonight" if i % 5 == 0 else f"hello {i}" for i in range(40)]

        def blocked_in_blpop() -> int:
            # Other programs may share this Redis server: count this database's clients.
            sync = redis_clients.sync_redis()
            db = str(sync.connection_pool.connection_kwargs.get("db", 0))
            clients: Any = sync.client_list()
            # Flag b: blocked now (cmd alone is only the last command of the connection).
            return sum(
                1 for c in clients if "b" in c["flags"] and c["cmd"] == "blpop" and c["db"] == db
            )

        async def check_all() -> list[Any]:
            before = blocked_in_blpop()
            tasks = [asyncio.ensure_future(acheck(t, timeout=10)) for t in texts]
            # All 40 wait, through one more connection blocked in BLPOP (the dispatcher's).
            deadline = time.monotonic() + 5
            while blocked_in_blpop() == before and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert blocked_in_blpop() - before == 1
            return list(await asyncio.gather(*tasks))

        verdicts = asyncio.run(check_all())
    finally:
        assert worker.stop() == 0
    assert [v.categories for v in verdicts] == [
        ["self-harm/intent", "self-harm"] if t.startswith("I will") else [] for t in texts
    ]
    assert {v.backend for v in verdicts} == {"openai"}
    assert sum(len(r["input"]) for r in fake.requests) == 40
    assert len(fake.requests) <= 5, [len(r["input"]) for r in fake.requests]


def test_the_llama_guard_backend_through_the_worker(fake, tmp_path):
    fake.guard["I will stab you, filthy foreigner"] = "unsafe\nS1,S10"
    worker = WorkerProcess(tmp_path / "w.log", **backend_env(fake, "llama_guard")).start().ready()
    try:
        flagged = submit("I will stab you, filthy foreigner").result()
        clean = submit("Lovely weather").result()
    finally:
        assert worker.stop() == 0
    assert flagged.flagged and flagged.categories == ["hate", "violence"]
    assert flagged.backend == "llama_guard"
    assert not clean.flagged


@pytest.mark.parametrize(("backend", "fault"), [("openai", "http_500"), ("llama_guard", "garbage")])
async def test_a_backend_error_fails_the_check_at_once_not_after_the_timeout(
    fake, tmp_path, backend, fault
):
    worker = WorkerProcess(tmp_path / "w.log", **backend_env(fake, backend)).start()
    try:
        await asyncio.to_thread(worker.ready)
        fake.fault = fault
        started = time.monotonic()
        with pytest.raises(SafetyUnavailable, match=f"safety worker: {backend}"):
            await acheck("hello", timeout=10)
        with pytest.raises(SafetyUnavailable, match=f"safety worker: {backend}"):
            await asyncio.to_thread(submit("hello").result, 10)
        assert time.monotonic() - started < 6  # not the 10 s timeout
        fake.fault = None
        assert not (await acheck("hello", timeout=10)).flagged
    finally:
        assert worker.stop() == 0


def test_a_worker_killed_mid_run_and_restarted_answers_again(tmp_path):
    worker = WorkerProcess(tmp_path / "w.log").start().ready()
    in_flight = [submit(INSULT, timeout=1) for _ in range(50)]
    assert worker.stop(signal.SIGKILL) == -signal.SIGKILL
    # Each check in flight ends by its deadline: answered before the kill, or unavailable.
    started = time.monotonic()
    for pending in in_flight:
        try:
            assert pending.result().flagged
        except SafetyUnavailable as exc:
            assert "no verdict" in str(exc)
    assert time.monotonic() - started < 3  # deadlines of 1 s, not the 2 s default
    with pytest.raises(SafetyUnavailable):
        submit(INSULT).result(timeout=0.3)
    worker.start().ready()
    try:
        assert submit(INSULT).result(timeout=5).flagged
        assert not submit(KIND).result(timeout=5).flagged
    finally:
        assert worker.stop() == 0


def test_the_worker_survives_a_redis_restart(tmp_path, settings):
    port = embedded.free_port()
    server = embedded.start_redis(port)
    settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"
    redis_clients.reset()
    worker = WorkerProcess(tmp_path / "w.log", redis_url=settings.REDIS_URL).start()
    try:
        worker.ready()
        embedded.stop(server)
        with pytest.raises(SafetyUnavailable, match="Redis"):
            submit(INSULT)
        time.sleep(1.5)  # the worker notices and backs off
        server = embedded.start_redis(port)
        # An empty Redis: checks fail at once until the worker is back and says it runs.
        deadline = time.monotonic() + 15
        while True:
            try:
                assert submit(INSULT, timeout=15).result().flagged
                break
            except SafetyUnavailable as exc:
                assert "no safety worker is running" in str(exc)
                assert time.monotonic() < deadline, worker.output()
                time.sleep(0.1)
        assert "Redis failed" in worker.output()
    finally:
        assert worker.stop() == 0
        embedded.stop(server)
        redis_clients.reset()


def test_sigterm_stops_the_worker_cleanly(tmp_path):
    worker = WorkerProcess(tmp_path / "w.log").start().ready()
    submit(KIND).result()
    started = time.monotonic()
    assert worker.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 5
    # The two checks, and the requests ready() left while the worker was still starting.
    stopped = re.search(r"stopped after (\d+) answers", worker.output())
    assert stopped is not None and int(stopped.group(1)) >= 2


def test_the_worker_refuses_to_start_with_an_unknown_category_threshold(tmp_path):
    worker = WorkerProcess(tmp_path / "w.log", SAFETY_CATEGORY_THRESHOLDS='{"spam": 0.5}').start()
    assert worker.proc is not None
    assert worker.proc.wait(60) != 0
    assert "unknown categories ['spam']" in worker.output()

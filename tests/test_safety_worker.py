"""The safety client against a real `manage.py safety_worker` process (local backend), over real
Redis: verdicts, and many checks at once."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from django.conf import settings

from messages_app.safety.client import SafetyUnavailable, acheck, submit

ROOT = Path(__file__).resolve().parent.parent
INSULT = "You are a worthless idiot, shut up."
KIND = "Thank you, have a lovely day!"


class WorkerProcess:
    """A `manage.py safety_worker` subprocess; its output goes to a log file."""

    def __init__(self, log: Path, redis_url: str | None = None, **env: str) -> None:
        self.log = log
        self.env = dict(
            os.environ,
            DJANGO_SETTINGS_MODULE="messageservice.settings",
            ENVIRONMENT="test",
            REDIS_URL=redis_url or settings.REDIS_URL,
            **env,
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "manage.py", "safety_worker"],
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return self

    def ready(self) -> WorkerProcess:
        """Once it answers a check (loading the classifier takes a few seconds; until it
        runs, a check fails at once)."""
        deadline = time.monotonic() + 60
        while True:
            try:
                submit("warm up", timeout=60).result()
                return self
            except SafetyUnavailable:
                assert self.proc is not None and self.proc.poll() is None, self.output()
                assert time.monotonic() < deadline, "the safety worker did not start"
                time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            # Its alive key would outlive it by up to 15 s: the next tests start without it.
            with contextlib.suppress(redis.RedisError):
                url = self.env["REDIS_URL"]
                redis.Redis.from_url(url).delete(f"{self.env_service()}:safety:requests:alive")

    def env_service(self) -> str:
        return self.env.get("SERVICE_NAME") or settings.SERVICE_NAME

    def output(self) -> str:
        return self.log.read_text()


@pytest.fixture(scope="module")
def local_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    worker = WorkerProcess(tmp_path_factory.mktemp("safety") / "worker.log").start()
    try:
        yield worker.ready()
    finally:
        worker.stop()


def test_the_worker_flags_an_insult_and_passes_a_kind_message(local_worker):
    pending_insult = submit(INSULT)
    pending_kind = submit(KIND, kind="input")
    insult, kind = pending_insult.result(), pending_kind.result()
    assert insult.flagged and insult.categories == ["harassment"]
    assert insult.scores["harassment"] > 0.9 and insult.backend == "local"
    assert not kind.flagged and kind.categories == [] and set(kind.scores) == {"harassment"}
    assert "backend local loaded in" in local_worker.output()
    assert "MB" in local_worker.output()


async def test_many_concurrent_async_checks_each_get_their_own_verdict(local_worker):
    texts = [INSULT if i % 3 == 0 else f"{KIND} ({i})" for i in range(300)]
    started = time.monotonic()
    verdicts = await asyncio.gather(*(acheck(text, timeout=10) for text in texts))
    elapsed = time.monotonic() - started
    assert [v.flagged for v in verdicts] == [text == INSULT for text in texts]
    assert elapsed < 9, elapsed  # neither one at a time nor waiting out a 10 s timeout


def test_many_sync_checks_submitted_together_are_all_answered(local_worker):
    pending = [submit(INSULT if i % 2 else KIND) for i in range(100)]
    assert [p.result().flagged for p in pending] == [bool(i % 2) for i in range(100)]


def test_the_deploy_health_check_sees_the_safety_worker_of_this_host(local_worker, tmp_path):
    """`deploy/healthcheck.py safety` (the compose and k8s probe): 0 while a worker on this
    host keeps its heartbeat, 1 for an installation (SERVICE_NAME) where none runs."""

    # Each test starts on a flushed Redis: wait for the worker's next heartbeat (every 1 s).
    client = redis.Redis.from_url(settings.REDIS_URL)
    deadline = time.monotonic() + 5
    while not client.keys("*:safety:requests:worker:*") and time.monotonic() < deadline:
        time.sleep(0.05)
    command = [sys.executable, "deploy/healthcheck.py", "safety"]
    alive = subprocess.run(command, cwd=ROOT, env=local_worker.env, capture_output=True, timeout=60)
    assert alive.returncode == 0, alive.stderr.decode()
    elsewhere = dict(local_worker.env, SERVICE_NAME=f"elsewhere-{tmp_path.name}")
    dead = subprocess.run(command, cwd=ROOT, env=elsewhere, capture_output=True, timeout=60)
    assert dead.returncode == 1
    assert b"no safety worker" in dead.stderr

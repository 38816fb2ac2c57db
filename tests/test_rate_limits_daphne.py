"""Rate limits are exact across processes: concurrent sends through two real daphne processes
against a limit of L admit exactly L, and the refused ones save and enqueue nothing."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest

from messages_app.accounts.auth import ServiceRefreshToken
from messages_app.models import Message
from messages_app.services import conversation_create
from messageservice.embedded import free_port
from tests.helpers import ROOT, llm_jobs, worker_env
from tests.test_rate_limits import away_from_a_minute_boundary

pytestmark = pytest.mark.django_db(transaction=True)

LIMIT = 10
SENDS = 40
APP = "messageservice.asgi:application"


def _request(
    port: int, method: str, path: str, body: bytes | None = None, headers: Any = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers={"Host": "localhost", **(headers or {})})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def _start_daphne(port: int) -> subprocess.Popen[bytes]:
    env = worker_env(
        SimpleNamespace(base_url="http://127.0.0.1:9/v1"),
        ENABLE_RATE_LIMITS="true",
        MAX_MESSAGES_PER_MINUTE=str(LIMIT),
        MAX_MESSAGES_PER_HOUR="1000",
        MAX_MESSAGES_PER_DAY="1000",
        MAX_REPLIES_IN_FLIGHT="1000",
        DAILY_TOKEN_QUOTA="0",
        LOG_LEVEL="ERROR",
    )
    return subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), APP],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def two_daphnes(django_db_setup: Any) -> Iterator[list[int]]:
    ports = [free_port(), free_port()]
    while ports[1] == ports[0]:
        ports[1] = free_port()
    procs = [_start_daphne(port) for port in ports]
    try:
        deadline = time.monotonic() + 90
        for port, proc in zip(ports, procs, strict=True):
            while True:
                try:
                    if _request(port, "GET", "/health")[0] in (200, 503):
                        break
                except OSError:
                    pass
                assert proc.poll() is None, "daphne exited"
                assert time.monotonic() < deadline, "daphne did not start"
                time.sleep(0.2)
        yield ports
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def test_forty_concurrent_sends_through_two_daphne_processes_admit_exactly_the_limit(
    two_daphnes, user, character
):
    rooms = [conversation_create(owner=user, character=character) for _ in range(4)]
    token = str(ServiceRefreshToken.for_user(user).access_token)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def send(n: int) -> tuple[int, dict[str, str], bytes]:
        body = json.dumps({"content": f"message {n}", "client_id": f"c{n}"}).encode()
        path = f"/api/v1/conversations/{rooms[n % len(rooms)].pk}/messages/"
        return _request(two_daphnes[n % 2], "POST", path, body, headers)

    away_from_a_minute_boundary()  # the limit is per minute, a fixed window
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(send, range(SENDS)))
    statuses = Counter(status for status, _, _ in answers)
    assert statuses == {202: LIMIT, 429: SENDS - LIMIT}, [b for s, _, b in answers if s >= 500]
    # Counted per process, each daphne would have admitted LIMIT of its SENDS / 2.
    for status, headers_out, body in answers:
        if status == 429:
            headers_out = {k.lower(): v for k, v in headers_out.items()}
            error = json.loads(body)["error"]
            assert error["code"] == "rate_limited"
            assert error["details"]["limit"] == "minute"
            assert int(headers_out["retry-after"]) >= 1
            assert headers_out["ratelimit-limit"] == str(LIMIT)
            assert headers_out["ratelimit-remaining"] == "0"
    # A refused send saved nothing and queued nothing.
    assert Message.objects.filter(conversation__in=rooms, role="user").count() == LIMIT
    assert (
        Message.objects.filter(conversation__in=rooms, role="assistant", status="queued").count()
        == LIMIT
    )
    assert len(llm_jobs()) == LIMIT

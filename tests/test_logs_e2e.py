"""One reply followed through the logs of real processes: daphne and `manage.py rqworker llm`
with LOG_FORMAT=json, the fake LLM over HTTP. Every line either process writes is one JSON
object, and every line of the reply, in the web process and in the worker, carries the
request id the client sent and the reply's generation id."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from messages_app.accounts.auth import ServiceRefreshToken
from messages_app.models import Message
from messages_app.services import conversation_create
from messageservice.embedded import free_port
from tests.helpers import ROOT, worker_env

pytestmark = pytest.mark.django_db(transaction=True)

APP = "messageservice.asgi:application"
REPLY = "Logs are lines, and every line is an object."


def _request(
    port: int, method: str, path: str, body: bytes | None = None, headers: Any = None
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Host": "localhost", **(headers or {})})
        response = conn.getresponse()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return response.status, headers, response.read()
    finally:
        conn.close()


def _wait_for(port: int, path: str, proc: subprocess.Popen[bytes], seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if _request(port, "GET", path)[0] in (200, 503):
                return
        except OSError:
            pass
        assert proc.poll() is None, f"the process serving {path} exited"
        assert time.monotonic() < deadline, f"{path} did not answer"
        time.sleep(0.2)


class Stack:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.web_port = 0

    def start(self, name: str, command: list[str], env: dict[str, str] | None) -> None:
        self.procs[name] = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=(self.directory / f"{name}.out").open("wb"),
            stderr=(self.directory / f"{name}.err").open("wb"),
        )

    def lines(self, name: str) -> list[str]:
        return [
            line
            for stream in ("out", "err")
            for line in (self.directory / f"{name}.{stream}").read_text().splitlines()
            if line.strip()
        ]

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@pytest.fixture
def stack(django_db_setup: Any, tmp_path: Path) -> Iterator[Stack]:
    stack = Stack(tmp_path)
    llm_port, stack.web_port = free_port(), free_port()
    while stack.web_port == llm_port:
        stack.web_port = free_port()
    fake = SimpleNamespace(base_url=f"http://127.0.0.1:{llm_port}/v1")
    env = worker_env(fake, LOG_FORMAT="json", LOG_LEVEL="INFO")
    try:
        stack.start(
            "llm",
            [sys.executable, "-m", "fake_llm", "--port", str(llm_port), "--text", REPLY],
            None,
        )
        stack.start("worker", [sys.executable, "manage.py", "rqworker", "llm"], env)
        stack.start(
            "web",
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(stack.web_port), APP],
            env,
        )
        _wait_for(llm_port, "/v1/models", stack.procs["llm"])
        _wait_for(stack.web_port, "/health", stack.procs["web"])
        yield stack
    finally:
        stack.stop()


def _parsed(stack: Stack, name: str) -> list[dict[str, Any]]:
    parsed = []
    for line in stack.lines(name):
        try:
            data = json.loads(line)
        except ValueError:
            pytest.fail(f"{name} wrote a line that is not JSON: {line!r}")
        assert isinstance(data, dict), line
        parsed.append(data)
    return parsed


def _wait_until(condition: Any, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def test_one_reply_is_followed_by_its_ids_through_the_json_lines_of_web_and_worker(
    stack, user, character
):
    conversation = conversation_create(owner=user, character=character)
    token = str(ServiceRefreshToken.for_user(user).access_token)
    status, headers, body = _request(
        stack.web_port,
        "POST",
        f"/api/v1/conversations/{conversation.pk}/messages/",
        json.dumps({"content": "Tell me about logs."}).encode(),
        {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
            "X-Request-ID": "test-abc",
        },
    )
    assert status == 202, body
    assert headers["x-request-id"] == "test-abc"
    generation_id = json.loads(body)["generation_id"]
    reply = Message.objects.get(generation__pk=generation_id)

    def ended() -> bool:
        reply.refresh_from_db()
        return reply.is_terminal

    _wait_until(ended, "the reply did not end")
    assert (reply.status, reply.content) == (Message.Status.COMPLETED, REPLY)
    # The worker's last line of the reply comes after its commit.
    _wait_until(
        lambda: any(f"reply {reply.pk} finished" in line for line in stack.lines("worker")),
        "the worker did not log the reply's end",
        seconds=10,
    )
    # Stopped first, so that their shutdown lines are read as well.
    stack.stop()

    web, worker = _parsed(stack, "web"), _parsed(stack, "worker")
    marks = (reply.stream_key.hex, f"generation {generation_id}", f"reply {reply.pk} ")

    def of_the_reply(line: dict[str, Any]) -> bool:
        return (
            line["request_id"] == "test-abc"
            or line["generation_id"] == generation_id
            or any(mark in line["message"] for mark in marks)
        )

    for name, lines, expected in (
        ("web", web, ["queued as generation", "POST /api/v1/conversations/"]),
        ("worker", worker, ["taken", "started", "first token", "Job OK", "finished"]),
    ):
        assert all(line["service"] == "message-service" for line in lines), name
        mine = [line for line in lines if of_the_reply(line)]
        for text in expected:
            assert any(text in line["message"] for line in mine), (name, text, mine)
        for line in mine:
            if line["logger"] == "daphne.access":
                # Written once the response is out, the request's id and no other.
                assert line["request_id"] == "test-abc", line
                assert '"POST /api/v1/conversations/' in line["message"], line
                continue
            assert (line["request_id"], line["generation_id"]) == ("test-abc", generation_id), (
                name,
                line,
            )
        assert {line["process_kind"] for line in lines} == (
            {"web"} if name == "web" else {"worker:llm"}
        )

"""Scale-out, proven with real processes: two daphne and two `rqworker llm` behind one Redis.

The stack is what a deployment with 2 web and 2 llm worker pods runs: two daphne processes
(A and B) and two `manage.py rqworker llm` processes (each with MAX_CONCURRENT_REQUESTS=1, so
that a queue of replies has to be shared between them), all on this test run's Redis and
database, the fake LLM over HTTP.

- Replies posted to daphne A stream to websocket clients on daphne B, made by both workers:
  each reply's `reply N finished` line is in exactly one worker's log, and both logs have some.
- A client that drops mid-reply on daphne A and reconnects to daphne B with `stream.resume`
  (after_seq = its last seq) gets exactly the deltas it missed: no gap, no duplicate, and the
  text is the saved reply's.
"""

from __future__ import annotations

import contextlib
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
from websockets.sync.client import ClientConnection, connect

from fake_llm import FakeLLMServer, Script
from messages_app.accounts.auth import ServiceRefreshToken
from messages_app.models import Message
from messages_app.services import conversation_create
from messageservice.embedded import free_port
from tests.helpers import ROOT, worker_env

pytestmark = pytest.mark.django_db(transaction=True)

APP = "messageservice.asgi:application"
ENDS = ("generation.completed", "generation.failed", "generation.cancelled")


def _request(
    port: int, method: str, path: str, token: str = "", body: Any = None
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Host": "localhost"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        if data is not None:
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        try:
            return response.status, json.loads(raw) if raw else {}
        except ValueError:
            return response.status, raw
    finally:
        conn.close()


class Stack:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.ports: dict[str, int] = {}

    def start(self, name: str, command: list[str], env: dict[str, str]) -> None:
        log = (self.directory / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )

    def log(self, name: str) -> str:
        return (self.directory / f"{name}.log").read_text(errors="replace")

    def wait_web(self, name: str, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while True:
            try:
                if _request(self.ports[name], "GET", "/health")[0] in (200, 503):
                    return
            except OSError:
                pass
            assert self.procs[name].poll() is None, f"{name} exited:\n{self.log(name)}"
            assert time.monotonic() < deadline, f"{name} did not answer"
            time.sleep(0.2)

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


@pytest.fixture(scope="module")
def stack(
    django_db_setup: Any, fake_llm_server: FakeLLMServer, tmp_path_factory: Any
) -> Iterator[Stack]:
    stack = Stack(tmp_path_factory.mktemp("scale_out"))
    fake = SimpleNamespace(base_url=fake_llm_server.base_url)
    env = worker_env(
        fake,
        MAX_CONCURRENT_REQUESTS="1",
        ENABLE_RATE_LIMITS="false",
        LOG_LEVEL="INFO",
        DEFAULT_LLM_PROVIDER="lmstudio",
    )
    try:
        for name in ("worker1", "worker2"):
            stack.start(name, [sys.executable, "manage.py", "rqworker", "llm"], env)
        used: set[int] = set()
        for name in ("webA", "webB"):
            port = free_port()
            while port in used:
                port = free_port()
            used.add(port)
            stack.ports[name] = port
            command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), APP]
            stack.start(name, command, env)
        stack.wait_web("webA")
        stack.wait_web("webB")
        # Both workers are listening on the queue before the test queues anything.
        deadline = time.monotonic() + 60
        while not all("Listening on" in stack.log(w) for w in ("worker1", "worker2")):
            for w in ("worker1", "worker2"):
                assert stack.procs[w].poll() is None, f"{w} exited:\n{stack.log(w)}"
            assert time.monotonic() < deadline, "the workers did not start"
            time.sleep(0.2)
        yield stack
    finally:
        stack.stop()


def _token(user: Any) -> str:
    return str(ServiceRefreshToken.for_user(user).access_token)


def _websocket(port: int, token: str, conversation_id: int) -> ClientConnection:
    status, ticket = _request(port, "POST", "/api/v1/ws-tickets/", token)
    assert status == 201, ticket
    url = f"ws://127.0.0.1:{port}/ws/conversations/{conversation_id}/?ticket={ticket['ticket']}"
    origin: Any = "http://localhost"
    return connect(url, origin=origin, proxy=None, open_timeout=20)


def _frames_until_end(
    ws: ClientConnection, generation_id: int, seconds: float = 30
) -> list[dict[str, Any]]:
    frames = []
    deadline = time.monotonic() + seconds
    while True:
        frame = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
        if frame.get("generation_id") != generation_id:
            continue
        frames.append(frame)
        if frame["type"] in ENDS:
            return frames


def _deltas(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in frames if f["type"] == "generation.delta"]


def _post(port: int, token: str, conversation_id: int, content: str) -> int:
    path = f"/api/v1/conversations/{conversation_id}/messages/"
    status, sent = _request(port, "POST", path, token, {"content": content})
    assert status == 202, sent
    return int(sent["generation_id"])


def _worker_of(stack: Stack, reply_pk: int, seconds: float = 10) -> str:
    """The worker whose log says it finished the reply (its line comes after the commit)."""
    mark = f"reply {reply_pk} finished"
    deadline = time.monotonic() + seconds
    while True:
        found = [w for w in ("worker1", "worker2") if mark in stack.log(w)]
        if found or time.monotonic() > deadline:
            assert len(found) == 1, (reply_pk, found)
            return found[0]
        time.sleep(0.1)


def test_replies_made_by_either_worker_stream_to_clients_on_the_other_daphne(
    stack, fake_llm, user, character
):
    token = _token(user)
    web_a, web_b = stack.ports["webA"], stack.ports["webB"]
    count = 4
    conversations = [conversation_create(owner=user, character=character) for _ in range(count)]
    script = Script.numbered(15, token_interval=0.05)
    with contextlib.ExitStack() as opened:
        sockets = [opened.enter_context(_websocket(web_b, token, c.pk)) for c in conversations]
        for _ in range(count):
            fake_llm.push(script)
        # Queued at once through daphne A: one worker alone (one reply at a time) would take
        # four reply times; the other worker takes the queued ones meanwhile.
        generations = [_post(web_a, token, c.pk, "Count for me.") for c in conversations]
        seen = [_frames_until_end(ws, g) for ws, g in zip(sockets, generations, strict=True)]
    workers = []
    for generation_id, frames in zip(generations, seen, strict=True):
        reply = Message.objects.get(generation__pk=generation_id)
        assert frames[-1]["type"] == "generation.completed", frames[-1]
        assert reply.status == Message.Status.COMPLETED
        deltas = _deltas(frames)
        assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
        assert "".join(d["text"] for d in deltas) == reply.content == script.text
        workers.append(_worker_of(stack, reply.pk))
    print(f"\nreplies by worker: {dict((w, workers.count(w)) for w in sorted(set(workers)))}")
    assert set(workers) == {"worker1", "worker2"}, workers


def test_a_client_that_drops_on_one_daphne_resumes_exactly_on_the_other(
    stack, fake_llm, user, character
):
    token = _token(user)
    web_a, web_b = stack.ports["webA"], stack.ports["webB"]
    conversation = conversation_create(owner=user, character=character)
    script = Script.numbered(40, token_interval=0.05)
    fake_llm.push(script)
    first: list[dict[str, Any]] = []
    with _websocket(web_a, token, conversation.pk) as ws:
        generation_id = _post(web_a, token, conversation.pk, "Count slowly.")
        deadline = time.monotonic() + 20
        while len(first) < 7:
            frame = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if frame.get("generation_id") == generation_id:
                assert frame["type"] not in ENDS, frame
                if frame["type"] == "generation.delta":
                    first.append(frame)
    # Dropped mid-reply; deltas keep flowing while nobody listens.
    time.sleep(0.4)
    last_seq = first[-1]["seq"]
    with _websocket(web_b, token, conversation.pk) as ws:
        ws.send(
            json.dumps(
                {"type": "stream.resume", "generation_id": generation_id, "after_seq": last_seq}
            )
        )
        rest = _frames_until_end(ws, generation_id)
    reply = Message.objects.get(generation__pk=generation_id)
    assert rest[-1]["type"] == "generation.completed", rest[-1]
    assert [f["type"] for f in rest].count("generation.completed") == 1
    seqs = [d["seq"] for d in first + _deltas(rest)]
    assert seqs == list(range(1, len(seqs) + 1)), "no gap, no duplicate, no reordering"
    assert _deltas(rest), "the reply was still streaming when the client came back"
    joined = "".join(d["text"] for d in first + _deltas(rest))
    assert joined == reply.content == script.text
    assert reply.stream_seq == len(seqs)
    # Over REST too, from either daphne.
    path = f"/api/v1/conversations/{conversation.pk}/messages/"
    status, listed = _request(web_b, "GET", path, token)
    assert status == 200, listed
    assert script.text in json.dumps(listed)

"""Size limits against a real daphne process: bodies and websocket messages over the limit are
refused as they arrive (413 in the error shape, close code 1009), without daphne's memory
growing by what was sent."""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest
from django.conf import settings

from messages_app.tickets import ticket_issue
from messageservice.embedded import free_port
from tests.helpers import worker_env

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent
BODY_LIMIT = 256 * 1024
WS_LIMIT = 16 * 1024
MB = 1024 * 1024
APP = "messageservice.asgi:application"


class Daphne:
    """daphne serving messageservice.asgi on a free port, on this test run's DB and Redis."""

    def __init__(self) -> None:
        self.port = free_port()
        env = worker_env(
            SimpleNamespace(base_url="http://127.0.0.1:9/v1"),
            MAX_REQUEST_BODY_BYTES=str(BODY_LIMIT),
            WS_MAX_MESSAGE_BYTES=str(WS_LIMIT),
            LOG_LEVEL="ERROR",
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(self.port), APP],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if self.request("GET", "/health")[0] in (200, 503):
                    break
            except OSError:
                pass
            assert self.proc.poll() is None, "daphne exited"
            assert time.monotonic() < deadline, "daphne did not start"
            time.sleep(0.2)

    def rss(self) -> int:
        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers={"Host": "localhost", **(headers or {})})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def daphne(django_db_setup: Any) -> Iterator[Daphne]:
    server = Daphne()
    yield server
    server.stop()


def _assert_too_large(status: int, headers: dict[str, str], body: bytes) -> None:
    assert status == 413
    assert headers["Content-Type"] == "application/json"
    error = json.loads(body)["error"]
    assert error["code"] == "too_large"
    assert error["message"]
    assert error["details"] == {"max_bytes": BODY_LIMIT}


def test_rest_body_over_the_limit_is_413_in_the_error_shape_before_authentication(daphne):
    body = b'{"title": "' + b"x" * (BODY_LIMIT + 1) + b'"}'
    _assert_too_large(
        *daphne.request(
            "POST", "/api/v1/conversations/", body, {"Content-Type": "application/json"}
        )
    )


def test_rest_body_under_the_limit_reaches_the_api(daphne):
    body = json.dumps({"title": "x" * (BODY_LIMIT // 2)}).encode()
    status, _, answer = daphne.request(
        "POST", "/api/v1/conversations/", body, {"Content-Type": "application/json"}
    )
    assert status == 401
    assert json.loads(answer)["error"]["code"] == "not_authenticated"


def _read_head(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_expect_100_continue_over_the_limit_gets_413_and_no_invitation_to_send(daphne):
    with socket.create_connection(("127.0.0.1", daphne.port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/v1/conversations/ HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
            + f"Content-Length: {50 * MB}\r\n\r\n".encode()
        )
        answer = _read_head(sock)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b"100 Continue" not in answer


def test_chunked_body_is_refused_once_it_passes_the_limit(daphne):
    chunk = b"x" * 64 * 1024
    with socket.create_connection(("127.0.0.1", daphne.port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/v1/conversations/ HTTP/1.1\r\nHost: localhost\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        for _ in range(BODY_LIMIT // len(chunk) + 2):
            sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
        answer = _read_head(sock)
        # The body is complete and answered: the server closes (no linger).
        sock.settimeout(5)
        while True:
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 "), head
    assert json.loads(body)["error"]["details"] == {"max_bytes": BODY_LIMIT}


def test_four_concurrent_50_mb_posts_get_413_without_growing_daphne(daphne):
    daphne.request("POST", "/api/v1/conversations/", b"{}", {"Content-Type": "application/json"})
    before = daphne.rss()
    body = b'{"title": "' + b"x" * (50 * MB) + b'"}'
    answers: list[tuple[int, dict[str, str], bytes]] = []

    def post() -> None:
        answers.append(
            daphne.request(
                "POST", "/api/v1/conversations/", body, {"Content-Type": "application/json"}
            )
        )

    threads = [threading.Thread(target=post) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(answers) == 4
    for answer in answers:
        _assert_too_large(*answer)
    grown = daphne.rss() - before
    assert grown < 20 * MB, f"daphne grew by {grown / MB:.0f} MB for 200 MB of refused bodies"


# --- websocket ---------------------------------------------------------------------------------


class RawWebsocket:
    """A websocket client over a plain socket, to send frames of any size and fragmentation."""

    def __init__(self, port: int, path: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                f"GET {path} HTTP/1.1\r\nHost: localhost\r\nOrigin: http://localhost\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head, _, self.buffer = _read_head(self.sock).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head

    def send_frame(self, payload: bytes, *, opcode: int = 1, fin: bool = True) -> None:
        # Client frames must be masked; an all-zero key leaves the payload as it is, which
        # spares XOR-ing megabytes in Python.
        first = (0x80 if fin else 0) | opcode
        length = len(payload)
        if length < 126:
            header = struct.pack("!BB", first, 0x80 | length)
        elif length < 65536:
            header = struct.pack("!BBH", first, 0x80 | 126, length)
        else:
            header = struct.pack("!BBQ", first, 0x80 | 127, length)
        self.sock.sendall(header + b"\0\0\0\0" + payload)

    def _recv_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buffer += chunk
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def receive(self) -> tuple[int, bytes]:
        """(opcode, payload) of the next server frame."""
        first, second = self._recv_exactly(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._recv_exactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._recv_exactly(8))
        return first & 0x0F, self._recv_exactly(length)

    def receive_close_code(self) -> int:
        while True:
            opcode, payload = self.receive()
            if opcode == 8:
                return int(struct.unpack("!H", payload[:2])[0])

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def ws_path(conversation: Any) -> str:
    return (
        f"/ws/conversations/{conversation.pk}/?ticket={ticket_issue(user_id=conversation.owner_id)}"
    )


def test_websocket_frames_under_the_limit_are_handled(daphne, ws_path):
    ws = RawWebsocket(daphne.port, ws_path)
    ws.send_frame(json.dumps({"type": "ping", "pad": "p" * (WS_LIMIT // 2)}).encode())
    kind, payload = ws.receive()
    assert (kind, json.loads(payload)) == (1, {"type": "pong"})
    ws.close()


def test_websocket_frame_over_the_limit_closes_1009_without_buffering_it(daphne, ws_path):
    ws = RawWebsocket(daphne.port, ws_path)
    ws.send_frame(b'{"type": "ping"}')
    assert ws.receive()[0] == 1
    before = daphne.rss()
    with contextlib.suppress(OSError):  # the server may close before it has read 50 MB
        ws.send_frame(b'{"type": "ping", "pad": "' + b"p" * (50 * MB) + b'"}')
    assert ws.receive_close_code() == 1009
    ws.close()
    grown = daphne.rss() - before
    assert grown < 20 * MB, f"daphne grew by {grown / MB:.0f} MB for a refused 50 MB frame"


def test_websocket_message_over_the_limit_in_small_fragments_closes_1009(daphne, ws_path):
    ws = RawWebsocket(daphne.port, ws_path)
    piece = b"p" * (WS_LIMIT // 4)
    ws.send_frame(b'{"type": "ping", "pad": "' + piece, fin=False)
    for _ in range(8):
        try:
            ws.send_frame(piece, opcode=0, fin=False)
        except OSError:
            break
    assert ws.receive_close_code() == 1009
    ws.close()


def test_only_incoming_websocket_messages_are_limited():
    import daphne.server

    from messageservice import request_limits

    request_limits.install()
    factory = daphne.server.WebSocketFactory(server_class=None)
    assert factory.maxFramePayloadSize == settings.WS_MAX_MESSAGE_BYTES
    # autobahn's message limit would also stop the server's own large frames.
    assert factory.maxMessagePayloadSize == 0

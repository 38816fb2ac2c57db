"""REDIS_URL naming a Sentinel set, and a failover in the middle of a chat.

A real primary, a replica and one Sentinel (Debian's redis-server and redis-sentinel; quorum 1,
down-after-milliseconds 1000, failover-timeout 3000); daphne and one `rqworker llm` with
REDIS_URL=redis+sentinel://127.0.0.1:<port>/mymaster/0, so that the channel layer, the queues,
the limits and the token log all reach Redis through the Sentinel.

One chat works. Then the primary is killed (SIGKILL) while a slow reply streams. The Sentinel
promotes the replica; the reply in flight ends in a defined state (completed, or failed with an
error code), visible over REST, and not stuck streaming; the next replies work. The failover
figures are printed (`-s`) for docs/scaling.md.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from django.core.cache.backends.redis import RedisCache
from django_rq.queues import get_redis_connection
from websockets.sync.client import connect

from fake_llm import FakeLLMServer, Script
from llm_app.models import Generation
from messages_app.accounts.auth import ServiceRefreshToken
from messages_app.models import Message
from messages_app.services import conversation_create
from messageservice.embedded import free_port
from messageservice.redis_clients import (
    CACHE_POOL_CLASS,
    channel_layer_host,
    client_from_url,
    parse_sentinel_url,
    rq_queue_config,
)
from tests.helpers import ROOT, worker_env

APP = "messageservice.asgi:application"
MASTER = "mymaster"
TERMINAL = {Message.Status.COMPLETED, Message.Status.FAILED, Message.Status.CANCELLED}


def _binary(name: str) -> str | None:
    path = shutil.which(name)
    if path is None and Path(f"/usr/sbin/{name}").exists():
        path = f"/usr/sbin/{name}"
    return path


def _sentinel_command(config: Path) -> list[str] | None:
    sentinel = _binary("redis-sentinel")
    if sentinel:
        return [sentinel, str(config)]
    server = _binary("redis-server")
    return [server, str(config), "--sentinel"] if server else None


# ------------------------------------------------------------------------ URL parsing


def test_a_sentinel_url_is_parsed_into_every_client_configuration() -> None:
    url = "redis+sentinel://:secret@h1:26379,h2:26380/mymaster/3?sentinel_password=sp"
    spec = parse_sentinel_url(url)
    assert spec is not None
    assert spec.sentinels == [("h1", 26379), ("h2", 26380)]
    assert (spec.service_name, spec.db, spec.password) == ("mymaster", 3, "secret")
    assert spec.sentinel_kwargs["password"] == "sp"
    host = channel_layer_host(url)
    assert host["master_name"] == "mymaster" and host["sentinels"] == spec.sentinels
    assert (host["db"], host["password"]) == (3, "secret")
    queue = rq_queue_config(url, DEFAULT_TIMEOUT=5)
    assert (queue["MASTER_NAME"], queue["SENTINELS"]) == ("mymaster", spec.sentinels)
    assert queue["DB"] == 3
    assert queue["DEFAULT_TIMEOUT"] == 5 and "URL" not in queue
    # Default port and db; a plain URL is left as it is.
    spec = parse_sentinel_url("redis+sentinel://sentinel/svc")
    assert spec is not None and (spec.sentinels, spec.db) == ([("sentinel", 26379)], 0)
    assert parse_sentinel_url("redis://h:6379/0") is None
    assert channel_layer_host("redis://h:6379/0") == "redis://h:6379/0"
    assert rq_queue_config("redis://h:6379/0") == {"URL": "redis://h:6379/0"}
    with pytest.raises(ValueError):
        parse_sentinel_url("redis+sentinel://h:26379/")


# ------------------------------------------------------------------- the real failover


def _request(port: int, method: str, path: str, token: str, body: Any = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Host": "localhost", "Authorization": f"Bearer {token}"}
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


class Cluster:
    """Processes of the test, each with a log file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, command: list[str], env: dict[str, str] | None = None) -> None:
        log = (self.directory / f"{name}.log").open("wb")
        self.procs[name] = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
        )

    def log(self, name: str) -> str:
        return (self.directory / f"{name}.log").read_text(errors="replace")

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


def _wait(condition: Any, what: str, seconds: float = 30, step: float = 0.05) -> float:
    """Seconds until `condition()` held."""
    start = time.monotonic()
    while True:
        try:
            if condition():
                return time.monotonic() - start
        except (OSError, redis.RedisError):
            pass
        assert time.monotonic() - start < seconds, what
        time.sleep(step)


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[SimpleNamespace]:
    server = _binary("redis-server")
    config = tmp_path / "sentinel.conf"
    sentinel_command = _sentinel_command(config)
    if not server or not sentinel_command:
        missing = "redis-server / redis-sentinel are not installed (apt-get install redis-sentinel)"
        # CI lists the tools whose tests must run (REQUIRE_TOOLS): there it fails, not skips.
        if "redis-sentinel" in os.environ.get("REQUIRE_TOOLS", "").split(","):
            pytest.fail(missing)
        pytest.skip(missing)
    cluster = Cluster(tmp_path)
    primary, replica, sentinel = free_port(), free_port(), free_port()
    while len({primary, replica, sentinel}) < 3:
        replica, sentinel = free_port(), free_port()
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    config.write_text(
        f"port {sentinel}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor {MASTER} 127.0.0.1 {primary} 1\n"
        f"sentinel down-after-milliseconds {MASTER} 1000\n"
        f"sentinel failover-timeout {MASTER} 3000\n"
        f"sentinel parallel-syncs {MASTER} 1\n"
    )
    try:
        cluster.start("primary", [server, "--port", str(primary), *common])
        cluster.start(
            "replica",
            [server, "--port", str(replica), "--replicaof", "127.0.0.1", str(primary), *common],
        )
        replica_client = redis.Redis(port=replica, socket_timeout=2)

        def synced() -> bool:
            info: Any = replica_client.info("replication")
            return bool(info.get("master_link_status") == "up")

        _wait(
            synced,
            "the replica did not sync",
        )
        cluster.start("sentinel", sentinel_command)
        sentinel_client = redis.Redis(port=sentinel, socket_timeout=2)
        _wait(
            lambda: sentinel_client.execute_command("SENTINEL", "REPLICAS", MASTER),
            "the Sentinel did not find the replica",
        )
        yield SimpleNamespace(
            cluster=cluster,
            primary=primary,
            replica=replica,
            sentinel=sentinel,
            sentinel_client=sentinel_client,
            url=f"redis+sentinel://127.0.0.1:{sentinel}/{MASTER}/0",
        )
    finally:
        cluster.stop()


def _find(node: Any, message_id: int) -> dict[str, Any] | None:
    """The message `message_id` anywhere in a REST answer."""
    if isinstance(node, dict):
        if node.get("id") == message_id and "status" in node:
            return node
        node = list(node.values())
    if isinstance(node, list):
        for item in node:
            found = _find(item, message_id)
            if found is not None:
                return found
    return None


def _master_port(sentinel_client: redis.Redis) -> int:
    addr: Any = sentinel_client.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
    return int(addr[1])


@pytest.mark.django_db(transaction=True)
def test_a_failover_in_the_middle_of_a_chat(
    sentinel_set: SimpleNamespace,
    fake_llm_server: FakeLLMServer,
    fake_llm: FakeLLMServer,
    user: Any,
    character: Any,
) -> None:
    cluster: Cluster = sentinel_set.cluster
    # The service's own helper reaches the primary through the Sentinel.
    info: Any = client_from_url(sentinel_set.url).info("server")
    assert info["tcp_port"] == sentinel_set.primary
    # So do Django's cache (its pool class) and django-rq's connection (SENTINELS, MASTER_NAME).
    cache = RedisCache(sentinel_set.url, {"OPTIONS": {"pool_class": CACHE_POOL_CLASS}})
    rq_connection: Any = get_redis_connection(rq_queue_config(sentinel_set.url))

    def cache_and_queue_work(port: int) -> None:
        cache.set("sentinel-test", port)
        assert cache.get("sentinel-test") == port
        assert rq_connection.info("server")["tcp_port"] == port

    cache_and_queue_work(sentinel_set.primary)

    env = worker_env(
        SimpleNamespace(base_url=fake_llm_server.base_url),
        GENERATION_LEASE_SECONDS="2",
        REAPER_INTERVAL_SECONDS="0.5",
        LLM_RETRY_ATTEMPTS="0",
        ENABLE_RATE_LIMITS="false",
        LOG_LEVEL="INFO",
        DEFAULT_LLM_PROVIDER="lmstudio",
    )
    env["REDIS_URL"] = sentinel_set.url
    web = free_port()
    cluster.start("worker", [sys.executable, "manage.py", "rqworker", "llm"], env)
    cluster.start(
        "web", [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(web), APP], env
    )
    token = str(ServiceRefreshToken.for_user(user).access_token)

    def answers() -> bool:
        assert cluster.procs["web"].poll() is None, cluster.log("web")
        return _request(web, "GET", "/ready", token)[0] == 200

    _wait(answers, "daphne did not get ready", seconds=60, step=0.2)
    _wait(lambda: "Listening on" in cluster.log("worker"), "the worker did not start", 60)

    def chat(conversation: Any, content: str) -> Message:
        path = f"/api/v1/conversations/{conversation.pk}/messages/"
        status, sent = _request(web, "POST", path, token, {"content": content})
        assert status == 202, sent
        return Message.objects.get(generation__pk=sent["generation_id"])

    def ended(reply: Message) -> bool:
        reply.refresh_from_db()
        return reply.status in TERMINAL

    # A websocket that stays open across the failover, on the conversation of the replies after
    # it: opened now, so that it joined its group long before the kill (one that opens while
    # there is no primary is closed with 1011 and has to reconnect; docs/scaling.md).
    third = conversation_create(owner=user, character=character)
    status, ticket = _request(web, "POST", "/api/v1/ws-tickets/", token)
    assert status == 201, ticket
    origin: Any = "http://localhost"
    ws = connect(
        f"ws://127.0.0.1:{web}/ws/conversations/{third.pk}/?ticket={ticket['ticket']}",
        origin=origin,
        proxy=None,
        open_timeout=20,
    )

    # 1. One chat through the Sentinel.
    first = conversation_create(owner=user, character=character)
    reply = chat(first, "Hello through the Sentinel.")
    _wait(lambda: ended(reply), "the first reply did not end", 30)
    assert reply.status == Message.Status.COMPLETED, cluster.log("worker")[-3000:]

    # 2. A slow reply; the primary dies while it streams.
    fake_llm.push(Script.numbered(80, token_interval=0.1))
    second = conversation_create(owner=user, character=character)
    in_flight = chat(second, "Count slowly.")

    def streaming() -> bool:
        in_flight.refresh_from_db()
        return in_flight.status == Message.Status.STREAMING and bool(in_flight.content)

    _wait(streaming, "the slow reply did not start streaming", 30)
    cluster.procs["primary"].send_signal(signal.SIGKILL)
    killed, killed_wall = time.monotonic(), time.time()

    failover = _wait(
        lambda: _master_port(sentinel_set.sentinel_client) == sentinel_set.replica,
        "the Sentinel did not fail over",
        30,
    )

    # 3. The reply in flight ends, in a defined state, visible over REST.
    settled = _wait(lambda: ended(in_flight), "the reply in flight is stuck", 60, step=0.2)
    generation = Generation.objects.get(message=in_flight)
    # When the reply ended, from its own record (the wait above polls).
    ended_after = (
        generation.finished_at.timestamp() - killed_wall
        if generation.finished_at
        else failover + settled
    )
    path = f"/api/v1/conversations/{second.pk}/messages/"
    status, listed = _request(web, "GET", path, token)
    assert status == 200, listed
    shown = _find(listed, in_flight.pk)
    assert shown is not None and shown["status"] == in_flight.status, listed
    if in_flight.status == Message.Status.FAILED:
        assert generation.error_code, "a failed reply says why"
    else:
        assert in_flight.status == Message.Status.COMPLETED, in_flight.status

    # 4. The next replies work: the first that completes end to end, from the kill.
    next_reply = None
    while next_reply is None:
        assert time.monotonic() - killed < 60, "no reply completed after the failover"
        try:
            candidate = chat(third, "Still there?")
        except AssertionError:
            time.sleep(0.2)
            continue
        _wait(lambda c=candidate: ended(c), "a reply after the failover is stuck", 60, 0.1)
        if candidate.status == Message.Status.COMPLETED:
            next_reply = candidate
    recovered = time.monotonic() - killed
    cache_and_queue_work(sentinel_set.replica)
    # The later ones also stream to the websocket opened before the kill: daphne's channel
    # layer found the new primary through the Sentinel and subscribed again.
    with ws:
        for n in range(2):
            later = chat(third, f"And again {n}?")
            generation_id = Generation.objects.get(message=later).pk
            frames: list[dict[str, Any]] = []
            deadline = time.monotonic() + 30
            while not frames or frames[-1]["type"] != "generation.completed":
                frame = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
                if frame.get("generation_id") == generation_id:
                    assert frame["type"] not in ("generation.failed", "generation.cancelled")
                    frames.append(frame)
            later.refresh_from_db()
            assert later.status == Message.Status.COMPLETED
            deltas = [f for f in frames if f["type"] == "generation.delta"]
            assert [d["seq"] for d in deltas] == list(range(1, len(deltas) + 1))
            assert "".join(d["text"] for d in deltas) == later.content

    print(
        f"\nfailover figures: sentinel promoted the replica {failover:.2f} s after the kill; "
        f"the reply in flight ended {in_flight.status} "
        f"({generation.error_code or 'no error'}) {ended_after:.2f} s after the kill; "
        f"the first reply after it completed end to end {recovered:.2f} s after the kill"
    )

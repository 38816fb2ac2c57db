"""Structured logs: the JSON format, the ids on every record, X-Request-ID in and out, and the
ids carried from a send (REST or websocket) into the reply's job and the worker's lines."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings

from messageservice import logs
from tests.helpers import ROOT, communicator, llm_jobs, run_llm_worker, send_message

HEX_ID = re.compile(r"[0-9a-f]{32}")


class Records(logging.Handler):
    """The records reaching the root logger, after the service's ContextFilter."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.addFilter(logs.ContextFilter(service="svc", kind="test"))
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def matching(self, pattern: str) -> list[logging.LogRecord]:
        return [r for r in self.records if re.search(pattern, r.getMessage())]


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def _json_line(record: logging.LogRecord, formatter: logging.Formatter | None = None) -> str:
    logs.ContextFilter(service="message-service", kind="web").filter(record)
    return (formatter or logs.JsonFormatter()).format(record)


def _record(msg: str, *args: Any, **attrs: Any) -> logging.LogRecord:
    record = logging.LogRecord("some.logger", logging.INFO, __file__, 1, msg, args, None)
    record.__dict__.update(attrs)
    return record


# --- the format ----------------------------------------------------------------------------
def test_a_json_line_has_time_level_logger_message_and_the_bound_ids():
    with logs.bind(request_id="abc-1", generation_id=42):
        line = _json_line(_record("reply %s queued", 7, client="x"))
    assert "\n" not in line
    data = json.loads(line)
    assert list(data)[:6] == ["time", "level", "logger", "message", "request_id", "generation_id"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", data["time"])
    assert data["level"] == "INFO"
    assert data["logger"] == "some.logger"
    assert data["message"] == "reply 7 queued"
    assert (data["request_id"], data["generation_id"]) == ("abc-1", 42)
    assert (data["service"], data["process_kind"]) == ("message-service", "web")
    assert data["client"] == "x"  # the caller's extra
    assert "exc_info" not in data


def test_ids_are_null_when_nothing_is_bound_and_come_back_after_a_block():
    with logs.bind(request_id="outer"):
        with logs.bind(request_id="inner", generation_id=1):
            assert logs.current_request_id() == "inner"
        assert (logs.current_request_id(), logs.current_generation_id()) == ("outer", None)
    data = json.loads(_json_line(_record("idle")))
    assert data["request_id"] is None and data["generation_id"] is None


def test_an_exception_is_one_line_with_its_traceback_in_exc_info():
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record("failed")
        record.exc_info = sys.exc_info()
    line = _json_line(record)
    assert "\n" not in line
    data = json.loads(line)
    assert data["message"] == "failed"
    assert "Traceback" in data["exc_info"] and "ValueError: boom" in data["exc_info"]


def test_text_from_outside_never_breaks_the_line():
    # A lone surrogate (which orjson refuses), newlines and control characters.
    line = _json_line(_record("got %r and %s", "\ud800", "two\nlines\x00\x1b[31m"))
    assert "\n" not in line and line.isascii()
    assert "two\nlines" in json.loads(line)["message"]


def test_extra_ids_win_over_the_bound_ones_and_a_django_request_lends_its_id():
    with logs.bind(request_id="bound", generation_id=1):
        data = json.loads(_json_line(_record("x", request_id="given", generation_id=2)))
    assert (data["request_id"], data["generation_id"]) == ("given", 2)

    class Request:
        request_id = "from-the-request"

    # django.request logs a 4xx/5xx after the middleware has returned, with the request.
    data = json.loads(_json_line(_record("Not Found: /x", request=Request(), status_code=404)))
    assert data["request_id"] == "from-the-request"
    assert "request" not in data and data["status_code"] == 404


def test_a_record_that_cannot_be_formatted_is_reported_as_one_json_line():
    stream = io.StringIO()
    handler = logs.JsonStreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.ContextFilter())
    logger = logging.getLogger("tests.bad_format")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        with logs.bind(request_id="r1"):
            logger.warning("two placeholders %s %s", "one")
    finally:
        logger.removeHandler(handler)
        logger.propagate = True
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    data = json.loads(lines[0])
    assert data["level"] == "ERROR" and data["request_id"] == "r1"
    assert "could not format" in data["message"] and "TypeError" in data["exc_info"]


def test_the_plain_format_shows_the_ids_after_the_message_when_there_are_any():
    formatter = logs.PlainFormatter()
    with logs.bind(request_id="r9", generation_id=5):
        record = _record("hello")
        logs.ContextFilter().filter(record)
    assert formatter.format(record).endswith(
        "INFO some.logger hello [request_id=r9 generation_id=5]"
    )
    record = _record("quiet")
    logs.ContextFilter().filter(record)
    assert formatter.format(record).endswith("INFO some.logger quiet")


@pytest.mark.parametrize(
    ("argv", "kind"),
    [
        (["/venv/bin/daphne", "-b", "0.0.0.0", "messageservice.asgi:application"], "web"),
        (["/venv/lib/python3.11/site-packages/daphne/__main__.py", "-p", "1"], "web"),
        (["manage.py", "rqworker", "llm"], "worker:llm"),
        (
            ["manage.py", "rqworker", "--burst", "messages", "analytics"],
            "worker:messages,analytics",
        ),
        (["manage.py", "rqworker", "--name", "w1", "-v", "2", "llm"], "worker:llm"),
        (["manage.py", "safety_worker"], "safety_worker"),
        (["manage.py", "runserver"], "web"),
    ],
)
def test_the_process_kind_is_read_from_the_command(argv, kind, monkeypatch):
    monkeypatch.delenv("PROCESS_KIND", raising=False)
    assert logs.process_kind(argv) == kind


async def test_a_shared_task_detaches_from_the_ids_of_the_request_that_started_it():
    async def shared() -> tuple[str | None, int | None]:
        logs.detach()
        await asyncio.sleep(0)
        return logs.current_request_id(), logs.current_generation_id()

    with logs.bind(request_id="first", generation_id=3):
        task = asyncio.ensure_future(shared())
        assert await task == (None, None)
        assert logs.current_request_id() == "first"  # the creator's own context is untouched


# --- settings ------------------------------------------------------------------------------
def _log_in_process(**env: str) -> subprocess.CompletedProcess[str]:
    code = (
        "import django, logging; django.setup();"
        "from django.conf import settings; print(settings.LOG_FORMAT);"
        "logging.getLogger('django.request').warning('hello');"
        "logging.getLogger('rq.worker').info('working');"
        "import warnings; warnings.warn('careful')"
    )
    base = {
        "DJANGO_SETTINGS_MODULE": "messageservice.settings",
        "DJANGO_SECRET_KEY": "k" * 50,
        "JWT_SECRET_KEY": "j" * 50,
        "REDIS_URL": settings.REDIS_URL,
        "PATH": "/usr/bin:/bin",
    }
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_production_logs_json_by_default_and_every_line_parses():
    result = _log_in_process(ENVIRONMENT="production")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "json"
    lines = result.stderr.splitlines()
    parsed = [json.loads(line) for line in lines]  # every line, warnings included
    assert [(p["logger"], p["message"]) for p in parsed][:2] == [
        ("django.request", "hello"),
        ("rq.worker", "working"),
    ]
    assert parsed[2]["logger"] == "py.warnings" and "careful" in parsed[2]["message"]
    assert all(p["service"] == "message-service" for p in parsed)


def test_other_environments_log_plain_text_unless_log_format_says_json():
    result = _log_in_process(ENVIRONMENT="development")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "plain"
    assert re.search(r" WARNING django.request hello$", result.stderr, re.M)
    result = _log_in_process(ENVIRONMENT="development", LOG_FORMAT="json")
    assert result.stdout.strip() == "json"
    assert json.loads(result.stderr.splitlines()[0])["message"] == "hello"


def test_an_unknown_log_format_is_refused_at_start():
    result = _log_in_process(ENVIRONMENT="development", LOG_FORMAT="xml")
    assert result.returncode != 0
    assert "LOG_FORMAT must be json or plain" in result.stderr


# --- X-Request-ID --------------------------------------------------------------------------
@pytest.mark.django_db
@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        ("test-abc", True),
        ("A.b_c-9" * 9 + "x", True),  # 64 characters
        ("a" * 65, False),
        ("has space", False),
        ("quote\"'", False),
        ("", False),
        ("é", False),
    ],
)
def test_a_sane_request_id_is_returned_and_anything_else_is_replaced(client, sent, kept):
    response = client.get("/health", headers={"X-Request-ID": sent} if sent else {})
    returned = response.headers["X-Request-ID"]
    if kept:
        assert returned == sent
    else:
        assert HEX_ID.fullmatch(returned), returned


@pytest.mark.django_db
async def test_the_async_stack_returns_the_request_id_too(async_client):
    response = await async_client.get("/health", headers={"X-Request-ID": "async-1"})
    assert response.headers["X-Request-ID"] == "async-1"
    response = await async_client.get("/health")
    assert HEX_ID.fullmatch(response.headers["X-Request-ID"])


@pytest.mark.django_db(transaction=True)
def test_a_rest_send_carries_its_request_id_into_the_job_and_the_worker_lines(
    api, conversation, fake_llm, records
):
    response = api.post(
        f"/api/v1/conversations/{conversation.pk}/messages/",
        {"content": "Hi"},
        format="json",
        headers={"X-Request-ID": "rest-123"},
    )
    assert response.status_code == 202, response.content
    assert response.headers["X-Request-ID"] == "rest-123"
    generation_id = response.json()["generation_id"]

    (queued,) = records.matching(r"queued as generation")
    assert (queued.request_id, queued.generation_id) == ("rest-123", generation_id)
    (job,) = llm_jobs()
    assert job.meta == {"request_id": "rest-123", "generation_id": generation_id}

    records.records.clear()
    run_llm_worker()
    reply_lines = [
        r for r in records.records if r.generation_id == generation_id or job.id in r.getMessage()
    ]
    messages = [r.getMessage() for r in reply_lines]
    for expected in ("taken", "started", "first token", "Job OK", "finished"):
        assert any(expected in m for m in messages), (expected, messages)
    assert {(r.request_id, r.generation_id) for r in reply_lines} == {("rest-123", generation_id)}
    # Outside the reply, nothing of it is left bound.
    assert logs.current_request_id() is None and logs.current_generation_id() is None


@pytest.mark.django_db(transaction=True)
async def test_a_websocket_frame_binds_the_request_id_it_names_or_a_new_one(
    conversation, alice_headers, records
):
    comm = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    assert (await comm.connect())[0]
    try:
        await comm.send_json_to({"type": "message.send", "content": "one", "request_id": "ws-1"})
        first = [await comm.receive_json_from(timeout=10) for _ in range(2)]
        await send_message(comm, "two")  # names none
        await comm.send_json_to(
            {"type": "message.send", "content": "three", "request_id": "bad id!"}
        )
        [await comm.receive_json_from(timeout=10) for _ in range(2)]
    finally:
        await comm.disconnect()
    queued = records.matching(r"queued as generation")
    assert queued[0].request_id == "ws-1"
    assert queued[0].generation_id == first[1]["message"]["generation_id"]
    assert all(HEX_ID.fullmatch(r.request_id) for r in queued[1:])
    assert queued[1].request_id != queued[2].request_id
    jobs = await asyncio.to_thread(llm_jobs)
    assert sorted(j.meta["request_id"] for j in jobs) == sorted(r.request_id for r in queued)


async def test_the_asgi_middleware_binds_the_id_for_the_whole_exchange_and_hands_it_on():
    seen: list[tuple[str | None, str]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start"})  # daphne writes its access line in here
        seen.append((logs.current_request_id(), scope["request_id"]))

    async def send(message: dict[str, Any]) -> None:
        seen.append((logs.current_request_id(), message["type"]))

    middleware = logs.RequestIdASGIMiddleware(app)
    await middleware({"type": "http", "headers": [(b"x-request-id", b"asgi-7")]}, None, send)
    assert seen == [("asgi-7", "http.response.start"), ("asgi-7", "asgi-7")]
    seen.clear()
    await middleware({"type": "http", "headers": [(b"x-request-id", b"no way")]}, None, send)
    assert HEX_ID.fullmatch(seen[1][1]) and seen[0][0] == seen[1][1]
    assert logs.current_request_id() is None


@pytest.mark.django_db(transaction=True)
def test_a_cancel_that_ends_a_queued_reply_in_the_web_process_logs_its_end_with_both_ids(
    api, conversation, records
):
    sent = api.post(f"/api/v1/conversations/{conversation.pk}/messages/", {"content": "Hi"})
    generation_id = sent.json()["generation_id"]
    response = api.post(
        f"/api/v1/generations/{generation_id}/cancel/", headers={"X-Request-ID": "stop-1"}
    )
    assert response.status_code == 202, response.content
    (finished,) = records.matching(r"finished: cancelled")
    assert (finished.request_id, finished.generation_id) == ("stop-1", generation_id)


@pytest.mark.django_db(transaction=True)
async def test_the_consumer_forwards_a_reply_end_under_its_generation_id(
    conversation, alice_headers, fake_llm, records
):
    consumer_logger = logging.getLogger("messages_app.consumers")
    consumer_logger.setLevel(logging.DEBUG)
    comm = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    assert (await comm.connect())[0]
    try:
        created = await send_message(comm, "Hello")
        generation_id = created[1]["message"]["generation_id"]
        await asyncio.to_thread(run_llm_worker)
        while (await comm.receive_json_from(timeout=10))["type"] != "generation.completed":
            pass
    finally:
        await comm.disconnect()
        consumer_logger.setLevel(logging.NOTSET)
    (forwarded,) = records.matching(r"sent generation.completed to a client")
    assert forwarded.generation_id == generation_id
    # A group event is no client frame: no request of this connection is bound to it.
    assert forwarded.request_id is None

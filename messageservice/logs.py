"""Structured logs: the request and generation ids of the work in hand, on every log record.

`request_id_var` and `generation_id_var` are context variables. The web binds the request id
per HTTP request (`request_id_middleware`) or per websocket frame; the reply's job carries it
to the llm worker, which binds both ids around the reply's generation. `ContextFilter` puts
them (and the service name and process kind) on every record a handler emits, and
`JsonFormatter` writes one JSON object per line. `configure` is Django's LOGGING_CONFIG.
docs/logging.md says how to follow one reply from the web process to the worker and back.
"""

from __future__ import annotations

import contextlib
import logging
import logging.config
import os
import re
import sys
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TypeVar

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter as _LibraryJsonFormatter

T = TypeVar("T")

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)
generation_id_var: ContextVar[int | None] = ContextVar("generation_id", default=None)

REQUEST_ID_HEADER = "X-Request-ID"
JSON_FORMATTER = "messageservice.logs.JsonFormatter"
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_UNSET: Any = object()


# --- the ids ---------------------------------------------------------------------------------
def new_request_id() -> str:
    return uuid.uuid4().hex


def sane_request_id(value: Any) -> str | None:
    """`value` if a client may name a request so (1 to 64 of [A-Za-z0-9._-]), else None: a
    request id goes into every log line, so nothing else from outside gets there."""
    if isinstance(value, str) and _SANE_REQUEST_ID.fullmatch(value):
        return value
    return None


def current_request_id() -> str | None:
    return request_id_var.get()


def current_generation_id() -> int | None:
    return generation_id_var.get()


@contextlib.contextmanager
def bind(*, request_id: str | None = _UNSET, generation_id: int | None = _UNSET) -> Iterator[None]:
    """Set the ids given (None unsets one) for the block; the previous values come back after.

    Contexts are per thread and per asyncio task: a task (and sync_to_async, async_to_sync)
    starts with a copy of its creator's, a new thread with an empty one."""
    tokens: list[tuple[ContextVar[Any], Any]] = []
    if request_id is not _UNSET:
        tokens.append((request_id_var, request_id_var.set(request_id)))
    if generation_id is not _UNSET:
        tokens.append((generation_id_var, generation_id_var.set(generation_id)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


async def bound(
    awaitable: Awaitable[T], *, request_id: str | None = _UNSET, generation_id: int | None = _UNSET
) -> T:
    """Await `awaitable` with the ids bound: for a coroutine handed to another thread's loop
    (run_coroutine_threadsafe), whose task would not see this thread's context."""
    with bind(request_id=request_id, generation_id=generation_id):
        return await awaitable


def detach() -> None:
    """Unset both ids in the current context. A long-lived task shared by many replies (a
    receiver, a batch writer) calls it first: it starts with a copy of the context of whoever
    created it, whose ids would otherwise be on its lines for good."""
    request_id_var.set(None)
    generation_id_var.set(None)


def carried() -> dict[str, Any]:
    """The ids bound now, for a job's meta (RQ): `bind(**from_meta(job.meta))` in the worker
    puts them back on the job's lines."""
    ids: dict[str, Any] = {}
    if (request_id := request_id_var.get()) is not None:
        ids["request_id"] = request_id
    if (generation_id := generation_id_var.get()) is not None:
        ids["generation_id"] = generation_id
    return ids


def from_meta(meta: Any) -> dict[str, Any]:
    """The ids a job's meta carries (see `carried`): keyword arguments for `bind`, with None
    for those it lacks, so nothing of an earlier job stays bound."""
    meta = meta if isinstance(meta, dict) else {}
    request_id = meta.get("request_id")
    generation_id = meta.get("generation_id")
    return {
        "request_id": request_id if isinstance(request_id, str) else None,
        "generation_id": generation_id if isinstance(generation_id, int) else None,
    }


# --- records -------------------------------------------------------------------------------
def process_kind(argv: list[str] | None = None) -> str:
    """What this process is, for the logs: `web` (daphne, runserver), `worker:<queues>`
    (manage.py rqworker), the name of another manage.py command, or the program's name.
    PROCESS_KIND in the environment wins."""
    if os.environ.get("PROCESS_KIND"):
        return os.environ["PROCESS_KIND"]
    argv = sys.argv if argv is None else argv
    if not argv:
        return ""
    program = os.path.basename(argv[0])
    if program == "daphne" or "/daphne/" in argv[0]:
        return "web"
    if program == "manage.py" and len(argv) > 1:
        command = argv[1]
        if command == "runserver":
            return "web"
        if command == "rqworker":
            return "worker:" + ",".join(_rqworker_queues(argv[2:]) or ["default"])
        return command
    return program.removesuffix(".py")


_FLAGS = frozenset({"--burst", "--with-scheduler", "--traceback", "--no-color", "--force-color"})


def _rqworker_queues(args: list[str]) -> list[str]:
    queues, value_next = [], False
    for arg in args:
        if value_next:
            value_next = False
        elif arg.startswith("-"):
            value_next = "=" not in arg and arg not in _FLAGS  # --name w1, -v 2
        else:
            queues.append(arg)
    return queues


class ContextFilter(logging.Filter):
    """Puts `request_id`, `generation_id`, `service` and `process_kind` on every record.

    Attached to handlers, so it sees the records of every logger that reaches them. Ids a
    caller passed in `extra` win; without a bound request id, a record that carries the Django
    request (django.request's 4xx and 5xx lines, logged after the middleware returned) takes
    the request's."""

    def __init__(self, service: str = "", kind: str | None = None) -> None:
        super().__init__()
        self.service = service
        self.kind = process_kind() if kind is None else kind

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            request_id = request_id_var.get()
            if request_id is None:
                request_id = getattr(getattr(record, "request", None), "request_id", None)
            record.request_id = request_id
        if not hasattr(record, "generation_id"):
            record.generation_id = generation_id_var.get()
        record.service = self.service
        record.process_kind = self.kind
        return True


class JsonFormatter(_LibraryJsonFormatter):
    """One JSON object per line: time (ISO 8601, UTC, milliseconds), level, logger, message,
    request_id, generation_id (null when unknown), then service, process_kind, the caller's
    `extra` fields, and exc_info (the traceback) and stack_info when present. ASCII only:
    text from outside (surrogates, control characters) is escaped, never breaks the line."""

    FIELDS = ("levelname", "name", "message", "request_id", "generation_id")

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("rename_fields", {"levelname": "level", "name": "logger"})
        # `request`: django.request's HttpRequest; its id is taken by ContextFilter.
        kwargs.setdefault("reserved_attrs", [*RESERVED_ATTRS, "request", "taskName"])
        super().__init__(list(self.FIELDS), **kwargs)

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        log_data["time"] = datetime.fromtimestamp(record.created, tz=UTC).isoformat(
            timespec="milliseconds"
        )
        super().add_fields(log_data, record, message_dict)


class PlainFormatter(logging.Formatter):
    """The human format: time, level, logger, message, then the ids when there are any."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request_id = getattr(record, "request_id", None)
        generation_id = getattr(record, "generation_id", None)
        if request_id is None and generation_id is None:
            return text
        ids = f" [request_id={request_id} generation_id={generation_id}]"
        head, newline, rest = text.partition("\n")  # after the message, before a traceback
        return head + ids + newline + rest


class JsonStreamHandler(logging.StreamHandler):
    """A StreamHandler whose own failures (a message whose arguments do not fit its format)
    are reported as one JSON line too, not as logging's multi-line plain text."""

    def handleError(self, record: logging.LogRecord) -> None:
        if not logging.raiseExceptions:
            return
        try:
            fallback = logging.LogRecord(
                record.name,
                logging.ERROR,
                record.pathname,
                record.lineno,
                "could not format a log record: %r %% %r",
                (record.msg, record.args),
                sys.exc_info(),
            )
            for attr in ("request_id", "generation_id", "service", "process_kind"):
                setattr(fallback, attr, getattr(record, attr, None))
            self.stream.write(self.format(fallback) + self.terminator)
            self.flush()
        except Exception:
            super().handleError(record)


# --- configuration ---------------------------------------------------------------------------
def configure(config: dict[str, Any]) -> None:
    """Django's LOGGING_CONFIG: dictConfig, then, for the JSON format, route what Python
    would write to stderr on its own (warnings, uncaught exceptions in the main thread or in
    other threads) through logging, so that every line of the process is one JSON object."""
    logging.config.dictConfig(config)
    formatters = config.get("formatters", {}).values()
    if not any(f.get("()") in (JsonFormatter, JSON_FORMATTER) for f in formatters):
        return
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread
    _daphne_access_log_to_logging()


def _daphne_access_log_to_logging() -> None:
    """daphne writes its access log (a line per HTTP request and websocket event, NCSA style)
    straight to stdout; here each becomes a record of logger `daphne.access` instead. Its
    action logger is made after the application (and so this) is loaded, from this class."""
    try:
        from daphne.access import AccessLogGenerator
    except ImportError:  # pragma: no cover - daphne is a dependency
        return
    access = logging.getLogger("daphne.access")

    def write_entry(
        self: Any,
        host: str,
        date: Any,
        request: str,
        status: int | None = None,
        length: int | None = None,
        ident: str | None = None,
        user: str | None = None,
    ) -> None:
        access.info(
            '%s "%s" %s %s',
            host,
            request,
            status or "-",
            length or "-",
            extra={"client": host, "status_code": status, "size": length},
        )

    AccessLogGenerator.write_entry = write_entry


def _log_uncaught(
    kind: type[BaseException], value: BaseException, traceback: TracebackType | None
) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, value, traceback)
        return
    logging.getLogger("uncaught").critical("uncaught exception", exc_info=(kind, value, traceback))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    exc_info = (
        (args.exc_type, args.exc_value, args.exc_traceback) if args.exc_value is not None else None
    )
    logging.getLogger("uncaught").error(
        "uncaught exception in thread %s: %s", name, args.exc_type.__name__, exc_info=exc_info
    )


# --- HTTP ------------------------------------------------------------------------------------
def _request_id_for(request: Any) -> str:
    scope = getattr(request, "scope", None) or {}
    request_id = scope.get("request_id") or (
        sane_request_id(request.headers.get(REQUEST_ID_HEADER)) or new_request_id()
    )
    request.request_id = request_id
    return str(request_id)


class RequestIdASGIMiddleware:
    """ASGI middleware for HTTP (messageservice.asgi): the request id, as
    `request_id_middleware` takes or makes it, bound for the whole exchange and put in the
    scope for that middleware. So the lines written after Django's middleware chain has
    returned carry it too: daphne's access line, django.request's 4xx and 5xx lines."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        sent = next((v for k, v in scope.get("headers", ()) if k == b"x-request-id"), b"")
        request_id = sane_request_id(sent.decode("latin-1")) or new_request_id()
        with bind(request_id=request_id):
            return await self.app({**scope, "request_id": request_id}, receive, send)


def request_id_middleware(get_response: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Django middleware (sync and async): the request's `X-Request-ID` when it is sane (1 to
    64 of [A-Za-z0-9._-]), else a new one (uuid4 hex), bound for the request, kept on
    `request.request_id`, and returned in the response's `X-Request-ID`."""
    if iscoroutinefunction(get_response):

        async def amiddleware(request: Any) -> Any:
            request_id = _request_id_for(request)
            with bind(request_id=request_id):
                response = await get_response(request)
            response[REQUEST_ID_HEADER] = request_id
            return response

        return markcoroutinefunction(amiddleware)

    def middleware(request: Any) -> Any:
        request_id = _request_id_for(request)
        with bind(request_id=request_id):
            response = get_response(request)
        response[REQUEST_ID_HEADER] = request_id
        return response

    return middleware


request_id_middleware.sync_capable = True  # type: ignore[attr-defined]
request_id_middleware.async_capable = True  # type: ignore[attr-defined]

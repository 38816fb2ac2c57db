"""Prometheus metrics of the service: one registry per process, scraped from that process.

Design (docs/metrics.md tells the whole of it):
- Every process keeps its own counters in memory, in `REGISTRY` (prometheus-client). daphne
  serves its registry on `GET /metrics` (port 8004); each worker process serves its own on
  METRICS_PORT (`start_worker_exporter`), and Prometheus scrapes every process. There is no
  multiprocess directory: our RQ worker class (llm_app.worker.GenerationWorker, a SimpleWorker)
  runs jobs in threads and never forks a work horse, so a worker process is one registry. (A
  plain forking RQ worker would count in a horse that exits after its job: those counts would
  be lost, and a multiprocess directory would gain a file per horse without bound.)
- Every sample carries the constant label `service` (SERVICE_NAME), added at collection time
  by `ServiceRegistry`, histogram `_bucket` series included.
- Queue sizes and worker liveness are global values read from Redis at scrape time, by daphne
  only (`RedisStateCollector`, registered on its first scrape): the rules take `max()`.
- Scrapes need `Authorization: Bearer <METRICS_TOKEN>` (compared in constant time). Without a
  token configured, /metrics is open when DEBUG and a 404 otherwise; a worker exporter is then
  not started in production.

Hot path: nothing here runs per streamed delta. A reply is counted once, when it ends
(`reply_finished`, from messages_app.hooks), from the message's own fields: no SQL, no Redis.
"""

from __future__ import annotations

import hmac
import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import redis
from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from messages_app.safety.categories import CATEGORIES

logger = logging.getLogger(__name__)

METRICS_PATH = "/metrics"


class ServiceRegistry(CollectorRegistry):
    """A registry whose every sample gets the label service=SERVICE_NAME when collected.

    prometheus-client has no constant labels; adding the label here, at scrape time, keeps the
    counting calls as cheap as unlabelled ones and covers every series a collector yields
    (`_bucket`, `_count`, `_sum`, `_created`, process metrics, custom collectors)."""

    def collect(self) -> Iterator[Metric]:
        service = settings.SERVICE_NAME
        for metric in super().collect():
            metric.samples = [
                sample._replace(labels={**sample.labels, "service": service})
                for sample in metric.samples
            ]
            yield metric


# No `_created` series: they double a scrape and nothing here reads them.
disable_created_metrics()
REGISTRY = ServiceRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

# --- the metrics ----------------------------------------------------------------------------
# Reply outcomes are the terminal statuses of a reply (messages_app.models.Message.Status).
OUTCOMES = ("completed", "failed", "cancelled", "blocked")
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# The limits of messages_app.limits, and the login throttle (messages_app.accounts.throttle).
RATE_LIMITS = ("minute", "hour", "day", "in_flight", "tokens", "login")
_CODE_RE = re.compile(r"[a-z0-9_]{1,48}")

MESSAGES_PROCESSED = Counter(
    "messages_processed",
    "Finished replies the message processor (queue `messages`) has post-processed, by outcome.",
    ["outcome"],
    registry=REGISTRY,
)
LLM_RESPONSE_TIME = Histogram(
    "llm_response_time",
    "Total time of a completed reply, from the start of its generation to its end (seconds).",
    buckets=(0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 120, 300),
    registry=REGISTRY,
)
LLM_TTFT = Histogram(
    "llm_time_to_first_token_seconds",
    "Time from the start of a reply's generation to its first token (seconds).",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30),
    registry=REGISTRY,
)
LLM_TOKENS = Counter(
    "llm_tokens_used",
    "LLM tokens of finished replies, by kind (prompt | completion).",
    ["kind"],
    registry=REGISTRY,
)
GENERATIONS_ENDED = Counter(
    "generations_ended",
    "Replies that reached a terminal status, by status and error code (`none` without one).",
    ["status", "code"],
    registry=REGISTRY,
)
MODERATION_FLAGS = Counter(
    "moderation_flags",
    "Messages the content check flagged or blocked, by category (one per category of a flag).",
    ["category"],
    registry=REGISTRY,
)
RATE_LIMIT_REJECTIONS = Counter(
    "rate_limit_rejections",
    "Requests refused by a rate limit (429), by limit.",
    ["limit"],
    registry=REGISTRY,
)
HTTP_REQUESTS = Counter(
    "http_requests",
    "HTTP requests Django answered (GET /metrics excluded), by method and status code.",
    ["method", "status"],
    registry=REGISTRY,
)
WEBSOCKET_CONNECTIONS = Gauge(
    "websocket_connections",
    "Websocket connections open in this daphne process (accepted, not yet disconnected).",
    registry=REGISTRY,
)

# Bounded label sets start at 0 in every process, so that rate() and sum() have series from
# the first scrape (MessagesNotProcessed needs messages_processed_total to exist to fire).
_PROCESSED = {outcome: MESSAGES_PROCESSED.labels(outcome) for outcome in (*OUTCOMES, "other")}
_PROMPT_TOKENS = LLM_TOKENS.labels("prompt")
_COMPLETION_TOKENS = LLM_TOKENS.labels("completion")
_REJECTIONS = {limit: RATE_LIMIT_REJECTIONS.labels(limit) for limit in RATE_LIMITS}


_FLAGS = {category: MODERATION_FLAGS.labels(category) for category in CATEGORIES}
# (method, status) -> child, and (status, code) -> child: a dict lookup instead of labels()'s
# lock and validation on every request.
_http_children: dict[tuple[str, int], Any] = {}
_ended_children: dict[tuple[str, str], Any] = {}


# --- counting -------------------------------------------------------------------------------
def _error_code(message: Any, status: str, code: str) -> str:
    if not code:
        # The generation as loaded with the message (replies.reply_end select_related()s it);
        # never a query.
        cache = getattr(message, "_state", None)
        cached = getattr(cache, "fields_cache", {}) if cache is not None else {}
        generation = cached.get("generation")
        code = getattr(generation, "error_code", "") or ""
    if not code:
        if status == "blocked":
            return "content_blocked"
        return "none" if status in ("completed", "cancelled") else "unknown"
    return code if _CODE_RE.fullmatch(code) else "other"


def reply_finished(message: Any, code: str = "") -> None:
    """Count a reply that reached a terminal status, in the process that ended it.

    `message` is the saved Message; `code` the error code it ended with (ReplyEnd.error_code),
    else the one of its loaded generation. Response time counts completed replies; TTFT and
    tokens every reply that has them."""
    status = str(message.status)
    if message.ttft_ms is not None:
        LLM_TTFT.observe(message.ttft_ms / 1000)
    if status == "completed" and message.total_ms is not None:
        LLM_RESPONSE_TIME.observe(message.total_ms / 1000)
    if message.prompt_tokens:
        _PROMPT_TOKENS.inc(message.prompt_tokens)
    if message.completion_tokens:
        _COMPLETION_TOKENS.inc(message.completion_tokens)
    key = (status if status in OUTCOMES else "other", _error_code(message, status, code))
    child = _ended_children.get(key)
    if child is None:
        child = _ended_children.setdefault(key, GENERATIONS_ENDED.labels(*key))
    child.inc()


def message_processed(outcome: str) -> None:
    """Count a reply the message processor finished post-processing (messages_processed_total).
    `outcome`: the reply's status."""
    (_PROCESSED.get(outcome) or _PROCESSED["other"]).inc()


def moderation_flagged(categories: Iterable[str]) -> None:
    """Count a flagged or blocked message, once per category of its verdict."""
    for category in categories:
        child = _FLAGS.get(category)
        if child is None:
            child = _FLAGS.setdefault("other", MODERATION_FLAGS.labels("other"))
        child.inc()


def rate_limit_rejected(limit: str) -> None:
    """Count a request refused by a rate limit: minute, hour, day, in_flight, tokens, login."""
    child = _REJECTIONS.get(limit)
    if child is None:
        child = _REJECTIONS.setdefault("other", RATE_LIMIT_REJECTIONS.labels("other"))
    child.inc()


def websocket_opened() -> None:
    WEBSOCKET_CONNECTIONS.inc()


def websocket_closed() -> None:
    WEBSOCKET_CONNECTIONS.dec()


def http_request(method: str, status: int) -> None:
    """Count an HTTP response: method one of HTTP_METHODS (else OTHER), status its code."""
    key = (method, status)
    child = _http_children.get(key)
    if child is None:
        method = method if method in HTTP_METHODS else "OTHER"
        child = HTTP_REQUESTS.labels(method, str(status))
        if len(_http_children) < 1000:  # odd methods are not remembered one by one
            _http_children[key] = child
    child.inc()


# --- global values, read at scrape time (daphne only) -----------------------------------------
class RedisStateCollector:
    """Queue sizes and live workers by kind, from Redis, at each scrape: one round trip.

    RQ keeps a queue's waiting job ids in the list `rq:queue:<name>` (django-rq's RQ_QUEUES set
    no prefix). A Redis outage leaves these gauges out of that scrape (and logs it) rather than
    failing the scrape: the process's own metrics still arrive."""

    QUEUES = (("message_queue_size", "messages"), ("llm_queue_size", "llm"))

    def collect(self) -> Iterator[Metric]:
        from messageservice import liveness
        from messageservice.redis_clients import sync_redis

        try:
            with sync_redis().pipeline(transaction=False) as pipe:
                for _, queue in self.QUEUES:
                    pipe.llen(f"rq:queue:{queue}")
                sizes = pipe.execute()
            alive = liveness.alive_counts()
        except redis.RedisError as exc:
            logger.warning("metrics: Redis unavailable, no queue sizes in this scrape (%s)", exc)
            return
        for (name, queue), size in zip(self.QUEUES, sizes, strict=True):
            yield GaugeMetricFamily(name, f"Jobs waiting in the RQ queue `{queue}`.", int(size))
        workers = GaugeMetricFamily(
            "workers_alive",
            "Worker processes whose liveness beat has not expired, by kind.",
            labels=["kind"],
        )
        for kind, count in alive.items():
            workers.add_metric([kind], count)
        yield workers


_web_lock = threading.Lock()
_web_ready = False


def _register_web_collector() -> None:
    global _web_ready
    with _web_lock:
        if not _web_ready:
            REGISTRY.register(RedisStateCollector())
            _web_ready = True


# --- serving --------------------------------------------------------------------------------
def scrape_status(authorization: str | None) -> int:
    """200 when the `Authorization` header value may scrape, else the status to answer:
    401 (a token is configured and this is not it), 404 (no token configured, DEBUG off)."""
    token = settings.METRICS_TOKEN
    if not token:
        return 200 if settings.DEBUG else 404
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
        return 200
    return 401


def _denied(status: int) -> HttpResponse:
    response = HttpResponse(b"", status=status, content_type="text/plain")
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


def metrics_view(request: HttpRequest) -> HttpResponse:
    """GET /metrics: this daphne process's registry plus the global values, text format."""
    status = scrape_status(request.headers.get("Authorization"))
    if status != 200:
        return _denied(status)
    if request.method not in ("GET", "HEAD"):
        return HttpResponse(status=405, headers={"Allow": "GET, HEAD"})
    _register_web_collector()
    response = HttpResponse(generate_latest(REGISTRY), content_type=CONTENT_TYPE_PLAIN_0_0_4)
    response["Cache-Control"] = "no-store"
    return response


class HttpMetricsMiddleware:
    """First in MIDDLEWARE: counts every response Django gives (http_requests_total), and
    answers GET /metrics itself, before host validation, sessions, CSRF and the login throttle
    see it: Prometheus scrapes pod addresses, which ALLOWED_HOSTS does not list, and the
    bearer token is the scrape's credential. /metrics is not counted.

    Sync and async: under daphne the chain stays async here (no thread hop per request)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        if request.path_info == METRICS_PATH:
            return metrics_view(request)
        response = self.get_response(request)
        http_request(request.method or "", response.status_code)
        return response

    async def __acall__(self, request: HttpRequest) -> Any:
        if request.path_info == METRICS_PATH:
            # Redis round trips and the text rendering: off the event loop.
            return await sync_to_async(metrics_view, thread_sensitive=False)(request)
        response = await self.get_response(request)
        http_request(request.method or "", response.status_code)
        return response


# --- worker processes -------------------------------------------------------------------------
class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def exporter_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """The worker exporter as a WSGI app: GET /metrics with the same bearer check."""
    if environ.get("PATH_INFO") != METRICS_PATH:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b""]
    status = scrape_status(environ.get("HTTP_AUTHORIZATION"))
    if status == 401:
        start_response(
            "401 Unauthorized",
            [("Content-Type", "text/plain"), ("WWW-Authenticate", 'Bearer realm="metrics"')],
        )
        return [b""]
    if status != 200:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b""]
    body = generate_latest(REGISTRY)
    start_response(
        "200 OK", [("Content-Type", CONTENT_TYPE_PLAIN_0_0_4), ("Content-Length", str(len(body)))]
    )
    return [body]


_exporter: _Server | None = None
_exporter_lock = threading.Lock()


def start_worker_exporter(kind: str) -> int | None:
    """In a worker process: serve this process's metrics on METRICS_ADDR:METRICS_PORT in a
    daemon thread (once per process). None when not started: METRICS_PORT is 0, no
    METRICS_TOKEN in production (it would answer 404 to everyone), or the port is taken (logged:
    the worker's own work goes on). Returns the port."""
    global _exporter
    port = settings.METRICS_PORT
    if port <= 0:
        return None
    if not settings.METRICS_TOKEN and not settings.DEBUG:
        logger.warning(
            "%s worker: METRICS_TOKEN is not set, so no metrics exporter is started", kind
        )
        return None
    with _exporter_lock:
        if _exporter is not None:
            return int(_exporter.server_address[1])
        try:
            server = make_server(
                settings.METRICS_ADDR,
                port,
                exporter_app,
                server_class=_Server,
                handler_class=_QuietHandler,
            )
        except OSError as exc:
            logger.error(
                "%s worker: metrics exporter cannot listen on %s:%s (%s); not exported",
                kind,
                settings.METRICS_ADDR,
                port,
                exc,
            )
            return None
        thread = threading.Thread(
            target=server.serve_forever, name=f"metrics-exporter-{kind}", daemon=True
        )
        thread.start()
        _exporter = server
    logger.info("%s worker: metrics on %s:%s%s", kind, settings.METRICS_ADDR, port, METRICS_PATH)
    return port


def stop_worker_exporter() -> None:
    """Stop this process's exporter, if it runs (tests; a worker's ends with its process)."""
    global _exporter
    with _exporter_lock:
        server, _exporter = _exporter, None
    if server is not None:
        server.shutdown()
        server.server_close()

"""Metrics in one process: the /metrics credential, what is counted where, the worker exporter.

The whole stack, scraped after a real chat against everything deploy/ uses, is
tests/test_metrics_stack.py.
"""

from __future__ import annotations

import http.client
import uuid
from typing import Any

import django_rq
import pytest
from django.test import Client, RequestFactory
from prometheus_client.parser import text_string_to_metric_families

from fake_llm import Script
from messages_app import limits, safety_flow
from messages_app.accounts import throttle
from messages_app.errors import RateLimited
from messages_app.models import Message
from messages_app.safety.categories import Verdict
from messageservice import liveness, metrics
from messageservice.embedded import free_port
from tests.helpers import communicator, run_llm_worker
from tests.moderation_helpers import user_message
from tests.test_rate_limits import away_from_a_minute_boundary

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "a-metrics-token-for-the-tests-0123456789"
SERVICE = {"service": "message-service"}


def value(name: str, **labels: str) -> float:
    """A sample of this process's registry (0 when absent), service label included."""
    return metrics.REGISTRY.get_sample_value(name, {**labels, **SERVICE}) or 0.0


def http_total() -> float:
    return sum(
        sample.value
        for family in metrics.REGISTRY.collect()
        for sample in family.samples
        if sample.name == "http_requests_total"
    )


@pytest.fixture
def token(settings: Any) -> str:
    settings.METRICS_TOKEN = TOKEN
    return TOKEN


# ----------------------------------------------------------------------------- /metrics


def test_without_a_token_metrics_is_a_404_in_production(settings: Any) -> None:
    settings.METRICS_TOKEN = ""
    settings.DEBUG = False
    assert Client().get("/metrics").status_code == 404
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer anything").status_code == 404


def test_without_a_token_metrics_is_open_when_debug(settings: Any) -> None:
    settings.METRICS_TOKEN = ""
    settings.DEBUG = True
    response = Client().get("/metrics")
    assert response.status_code == 200
    assert b'service="message-service"' in response.content


def test_with_a_token_only_its_bearer_may_scrape(token: str) -> None:
    client = Client()
    for header in (None, "Bearer wrong", f"Basic {token}", f"Bearer {token}x", "Bearer"):
        extra: dict[str, Any] = {"HTTP_AUTHORIZATION": header} if header else {}
        response = client.get("/metrics", **extra)
        assert response.status_code == 401, header
        assert response["WWW-Authenticate"].startswith("Bearer"), header
        assert response.content == b""
    response = client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {f.name for f in text_string_to_metric_families(response.content.decode())}
    assert {"http_requests", "llm_response_time", "websocket_connections"} <= families
    assert {"message_queue_size", "llm_queue_size", "workers_alive"} <= families
    # The scheme is case-insensitive, as RFC 7235 says.
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"bearer {token}").status_code == 200


def test_prometheus_may_scrape_by_pod_address_which_allowed_hosts_lacks(token: str) -> None:
    headers: dict[str, Any] = {
        "HTTP_AUTHORIZATION": f"Bearer {token}",
        "HTTP_HOST": "10.12.0.7:8004",
    }
    assert Client().get("/metrics", **headers).status_code == 200
    # Everything else from that host is still refused.
    assert Client().get("/health", HTTP_HOST="10.12.0.7:8004").status_code == 400


def test_every_sample_carries_the_service_label_histogram_buckets_included(token: str) -> None:
    metrics.LLM_RESPONSE_TIME.observe(1.5)
    body = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}").content.decode()
    lines = [line for line in body.splitlines() if line and not line.startswith("#")]
    assert any(line.startswith("llm_response_time_bucket{") for line in lines)
    assert all('service="message-service"' in line for line in lines), [
        line for line in lines if "service=" not in line
    ][:5]


def test_queue_sizes_and_live_workers_are_read_from_redis_at_scrape_time(token: str) -> None:
    queue = django_rq.get_queue("messages")
    queue.enqueue("messageservice.metrics.message_processed", "completed")
    queue.enqueue("messageservice.metrics.message_processed", "completed")
    liveness.beat("llm", "w1")
    liveness.beat("llm", "w2")
    liveness.beat("safety", "s1")
    body = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}").content.decode()
    samples = {
        (s.name, s.labels.get("kind", "")): s.value
        for f in text_string_to_metric_families(body)
        for s in f.samples
    }
    assert samples[("message_queue_size", "")] == 2
    assert samples[("llm_queue_size", "")] == 0
    assert samples[("workers_alive", "llm")] == 2
    assert samples[("workers_alive", "safety")] == 1
    assert samples[("workers_alive", "messages")] == 0


# ------------------------------------------------------------------------- HTTP requests


def test_http_requests_are_counted_by_method_and_status_but_not_the_scrapes(token: str) -> None:
    client = Client()
    ok, missing = (
        value("http_requests_total", method="GET", status="200"),
        value("http_requests_total", method="GET", status="404"),
    )
    other = value("http_requests_total", method="OTHER", status="200")
    assert client.get("/health").status_code == 200
    assert client.get("/no/such/page/").status_code == 404
    assert client.generic("BREW", "/health").status_code == 200
    assert value("http_requests_total", method="GET", status="200") == ok + 1
    assert value("http_requests_total", method="GET", status="404") == missing + 1
    # Unknown methods share one label value: a client cannot add series at will.
    assert value("http_requests_total", method="OTHER", status="200") == other + 1
    before = http_total()
    for _ in range(3):
        client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {token}")
    client.get("/metrics")  # 401
    assert http_total() == before


# ---------------------------------------------------------------------------- websockets


async def test_the_websocket_gauge_goes_up_on_connect_and_down_on_disconnect(
    conversation: Any, alice_headers: Any
) -> None:
    start = value("websocket_connections")
    first = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    second = communicator(f"/ws/conversations/{conversation.pk}/", alice_headers)
    assert (await first.connect())[0]
    assert (await second.connect())[0]
    assert value("websocket_connections") == start + 2
    await first.disconnect()
    assert value("websocket_connections") == start + 1
    await second.disconnect()
    assert value("websocket_connections") == start
    # A socket refused after its accept (no login) is counted while it is open, then not.
    anonymous = communicator(f"/ws/conversations/{conversation.pk}/")
    await anonymous.connect()
    await anonymous.receive_json_from()
    await anonymous.disconnect()
    assert value("websocket_connections") == start


# ------------------------------------------------------------------------------- replies


def _send(api: Any, conversation: Any, text: str = "hi") -> dict[str, Any]:
    url = f"/api/v1/conversations/{conversation.pk}/messages/"
    response = api.post(url, {"content": text}, format="json")
    assert response.status_code == 202, response.content
    return dict(response.json())


def test_a_completed_reply_counts_its_times_tokens_and_end(
    api: Any, conversation: Any, fake_llm: Any
) -> None:
    before = {
        "ttft": value("llm_time_to_first_token_seconds_count"),
        "total": value("llm_response_time_count"),
        "prompt": value("llm_tokens_used_total", kind="prompt"),
        "completion": value("llm_tokens_used_total", kind="completion"),
        "ended": value("generations_ended_total", status="completed", code="none"),
    }
    fake_llm.push(Script.from_text("One two three four."))
    sent = _send(api, conversation)
    run_llm_worker()
    reply = Message.objects.get(pk=sent["assistant_message"]["id"])
    assert reply.status == "completed"
    assert value("llm_time_to_first_token_seconds_count") == before["ttft"] + 1
    assert value("llm_response_time_count") == before["total"] + 1
    assert value("llm_tokens_used_total", kind="prompt") == before["prompt"] + (
        reply.prompt_tokens or 0
    )
    assert value("llm_tokens_used_total", kind="completion") == before["completion"] + (
        reply.completion_tokens or 0
    )
    assert value("generations_ended_total", status="completed", code="none") == before["ended"] + 1


def test_a_failed_reply_is_counted_with_its_error_code(
    api: Any, conversation: Any, fake_llm: Any, settings: Any
) -> None:
    settings.LLM_RETRY_ATTEMPTS = 0
    total = value("llm_response_time_count")
    fake_llm.push(Script.from_text("x", fault="http_500"))
    sent = _send(api, conversation)
    run_llm_worker()
    reply = Message.objects.select_related("generation").get(pk=sent["assistant_message"]["id"])
    assert reply.status == "failed"
    code = reply.generation.error_code
    assert code and code not in ("none", "unknown")
    assert value("generations_ended_total", status="failed", code=code) == 1
    # Response time is that of completed replies.
    assert value("llm_response_time_count") == total


def test_a_cancelled_queued_reply_counts_as_cancelled(api: Any, conversation: Any) -> None:
    before = value("generations_ended_total", status="cancelled", code="none")
    sent = _send(api, conversation)
    assert api.post(f"/api/v1/generations/{sent['generation_id']}/cancel/").status_code < 300
    assert value("generations_ended_total", status="cancelled", code="none") == before + 1


def test_error_codes_and_outcomes_are_bounded() -> None:
    message = Message(status="failed", ttft_ms=None, total_ms=None)
    metrics.reply_finished(message, "Not A Code; DROP TABLE")
    assert value("generations_ended_total", status="failed", code="other") >= 1
    metrics.reply_finished(message)
    assert value("generations_ended_total", status="failed", code="unknown") >= 1
    before = value("messages_processed_total", outcome="other")
    metrics.message_processed("something-new")
    assert value("messages_processed_total", outcome="other") == before + 1
    before = value("messages_processed_total", outcome="completed")
    metrics.message_processed("completed")
    assert value("messages_processed_total", outcome="completed") == before + 1


# ------------------------------------------------------------------ flags and rate limits


def test_a_flag_is_counted_by_category_once_committed(conversation: Any, settings: Any) -> None:
    settings.SAFETY_INPUT_ACTION = "flag"
    message = user_message(conversation, "you idiot")
    before = value("moderation_flags_total", category="harassment")
    verdict = Verdict(
        flagged=True, categories=["harassment"], scores={"harassment": 0.97}, backend="local"
    )
    assert safety_flow.input_verdict_apply(message.pk, None, verdict) is False
    assert value("moderation_flags_total", category="harassment") == before + 1
    # Applied again (the other side saw the verdict too): not counted twice.
    safety_flow.input_verdict_apply(message.pk, None, verdict)
    assert value("moderation_flags_total", category="harassment") == before + 1


def test_a_rate_limit_refusal_is_counted_by_its_limit(user: Any, settings: Any) -> None:
    settings.ENABLE_RATE_LIMITS = True
    settings.MAX_MESSAGES_PER_MINUTE = 1
    settings.MAX_MESSAGES_PER_HOUR = 100
    settings.MAX_MESSAGES_PER_DAY = 100
    settings.MAX_REPLIES_IN_FLIGHT = 100
    limits.forget()
    away_from_a_minute_boundary()
    before = value("rate_limit_rejections_total", limit="minute")
    limits.admit(user, token=uuid.uuid4().hex)
    with pytest.raises(RateLimited):
        limits.admit(user, token=uuid.uuid4().hex)
    assert value("rate_limit_rejections_total", limit="minute") == before + 1
    limits.forget()


def test_a_login_lockout_is_counted_as_the_login_limit() -> None:
    before = value("rate_limit_rejections_total", limit="login")
    response = throttle.lockout_response(RequestFactory().post("/api/v1/auth/token/"))
    assert response.status_code == 429
    assert value("rate_limit_rejections_total", limit="login") == before + 1


# ------------------------------------------------------------------- worker processes


def _exporter_get(port: int, path: str, auth: str | None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Authorization": auth} if auth else {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_the_worker_exporter_serves_this_process_with_the_bearer_check(
    settings: Any, token: str
) -> None:
    settings.METRICS_PORT = free_port()
    settings.METRICS_ADDR = "127.0.0.1"
    try:
        port = metrics.start_worker_exporter("llm")
        assert port == settings.METRICS_PORT
        assert metrics.start_worker_exporter("llm") == port  # once per process
        metrics.LLM_TTFT.observe(0.2)
        status, body = _exporter_get(port, "/metrics", f"Bearer {token}")
        assert status == 200
        assert b'llm_time_to_first_token_seconds_bucket{le="0.2",service="message-service"}' in (
            body
        )
        assert _exporter_get(port, "/metrics", None)[0] == 401
        assert _exporter_get(port, "/metrics", "Bearer nope")[0] == 401
        assert _exporter_get(port, "/", f"Bearer {token}")[0] == 404
    finally:
        metrics.stop_worker_exporter()


def test_no_exporter_without_a_port_or_in_production_without_a_token(settings: Any) -> None:
    settings.METRICS_PORT = 0
    settings.METRICS_TOKEN = TOKEN
    assert metrics.start_worker_exporter("llm") is None
    settings.METRICS_PORT = free_port()
    settings.METRICS_TOKEN = ""
    settings.DEBUG = False
    assert metrics.start_worker_exporter("llm") is None


def test_a_taken_port_leaves_the_worker_running_without_an_exporter(
    settings: Any, token: str
) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings.METRICS_ADDR = "127.0.0.1"
        settings.METRICS_PORT = taken.getsockname()[1]
        assert metrics.start_worker_exporter("llm") is None


def test_the_rq_worker_beats_its_liveness_by_kind_and_leaves_at_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    beats: list[tuple[str, str]] = []
    original = liveness.beat

    def beat(kind: str, worker_id: str, *args: Any) -> None:
        beats.append((kind, worker_id))
        original(kind, worker_id, *args)

    monkeypatch.setattr(liveness, "beat", beat)
    worker: Any = django_rq.get_worker("llm")
    assert worker.kind == "llm"
    others: list[Any] = [
        django_rq.get_worker("messages", "default"),
        django_rq.get_worker("default"),
    ]
    assert [w.kind for w in others] == ["messages", None]
    worker.work(burst=True, with_scheduler=False)
    assert ("llm", worker.name) in beats
    assert liveness.alive_counts()["llm"] == 0  # gone at the end

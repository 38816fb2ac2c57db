"""/health and /ready: the status for anyone, what failed (hosts, ports) for staff only."""

from __future__ import annotations

import pytest
from django.test import Client

from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

DOWN_REDIS = "redis://127.0.0.1:1/0"


def _get(client: Client, path: str):
    return client.get(path, HTTP_HOST="localhost")


def test_anonymous_health_is_the_status_and_each_checks_state(client):
    resp = _get(client, "/health")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}


def test_anonymous_health_with_redis_down_is_503_naming_the_check_but_no_host_or_port(
    client, settings
):
    settings.REDIS_URL = DOWN_REDIS
    resp = _get(client, "/health")
    assert resp.status_code == 503
    assert resp.json() == {"status": "error", "checks": {"database": "ok", "redis": "error"}}
    assert b"127.0.0.1" not in resp.content and b":1" not in resp.content


def test_logged_in_non_staff_users_see_no_more_than_anonymous_callers(client, settings):
    settings.REDIS_URL = DOWN_REDIS
    client.force_login(UserFactory(username="plain"))
    assert _get(client, "/health").json() == {
        "status": "error",
        "checks": {"database": "ok", "redis": "error"},
    }


def test_staff_see_the_service_and_what_failed(client, settings):
    settings.REDIS_URL = DOWN_REDIS
    client.force_login(UserFactory(username="operator", is_staff=True))
    resp = _get(client, "/health")
    assert resp.status_code == 503
    body = resp.json()
    assert body["status"] == "error"
    assert body["service"] == settings.SERVICE_NAME
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["redis"].startswith("error: ConnectionError")
    assert "127.0.0.1:1" in body["checks"]["redis"]


def test_anonymous_ready_lists_migrations_without_details(client):
    resp = _get(client, "/ready")
    assert resp.status_code == 200
    assert resp.json() == {
        "status": "ok",
        "checks": {"database": "ok", "redis": "ok", "migrations": "ok"},
    }


def test_a_failing_check_is_logged_with_its_details_for_operators(client, settings, caplog):
    settings.REDIS_URL = DOWN_REDIS
    _get(client, "/health")
    assert any("127.0.0.1:1" in r.getMessage() for r in caplog.records)

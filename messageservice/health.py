"""Liveness (/health) and readiness (/ready): the database and Redis, checked for real."""

from __future__ import annotations

from typing import Any

import redis
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, JsonResponse


def _check_database() -> str:
    with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
        cursor.execute("SELECT 1")
    return "ok"


def _check_redis() -> str:
    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
    try:
        client.ping()
    finally:
        client.close()
    return "ok"


def _check_migrations() -> str:
    executor = MigrationExecutor(connections[DEFAULT_DB_ALIAS])
    pending = executor.migration_plan(executor.loader.graph.leaf_nodes())
    if pending:
        raise RuntimeError(f"{len(pending)} migrations not applied")
    return "ok"


def _run(checks: dict[str, Any]) -> JsonResponse:
    results: dict[str, str] = {}
    healthy = True
    for name, check in checks.items():
        try:
            results[name] = check()
        except Exception as exc:
            healthy = False
            results[name] = f"error: {exc.__class__.__name__}: {exc}"[:300]
    body = {
        "status": "ok" if healthy else "error",
        "service": settings.SERVICE_NAME,
        "checks": results,
    }
    return JsonResponse(body, status=200 if healthy else 503)


def health(request: HttpRequest) -> JsonResponse:
    return _run({"database": _check_database, "redis": _check_redis})


def ready(request: HttpRequest) -> JsonResponse:
    return _run(
        {"database": _check_database, "redis": _check_redis, "migrations": _check_migrations}
    )

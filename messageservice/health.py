"""Liveness (/health) and readiness (/ready): the database and Redis, checked for real.

Anyone gets the status and each check's "ok" or "error"; only staff (logged in, e.g. through
the admin) get the service name and what failed, which can name hosts and ports.
"""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.executor import MigrationExecutor
from django.http import HttpRequest, JsonResponse

from messageservice.redis_clients import client_from_url

logger = logging.getLogger(__name__)


def _check_database() -> str:
    with connections[DEFAULT_DB_ALIAS].cursor() as cursor:
        cursor.execute("SELECT 1")
    return "ok"


def _check_redis() -> str:
    client = client_from_url(settings.REDIS_URL, socket_timeout=2, socket_connect_timeout=2)
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


def _is_staff(request: HttpRequest) -> bool:
    """Whether the session's user is active staff; False when that cannot be told (the
    session and user live in the database, which may be the check that is failing)."""
    try:
        user = getattr(request, "user", None)
        return bool(user is not None and user.is_active and user.is_staff)
    except Exception:
        return False


def _run(request: HttpRequest, checks: dict[str, Any]) -> JsonResponse:
    results: dict[str, str] = {}
    failures: dict[str, str] = {}
    for name, check in checks.items():
        try:
            results[name] = check()
        except Exception as exc:
            results[name] = "error"
            failures[name] = f"error: {exc.__class__.__name__}: {exc}"[:300]
            logger.warning("%s check %s failed: %s", request.path, name, failures[name])
    body: dict[str, Any] = {"status": "error" if failures else "ok", "checks": results}
    if _is_staff(request):
        body["service"] = settings.SERVICE_NAME
        body["checks"] = {**results, **failures}
    return JsonResponse(body, status=503 if failures else 200)


def health(request: HttpRequest) -> JsonResponse:
    return _run(request, {"database": _check_database, "redis": _check_redis})


def ready(request: HttpRequest) -> JsonResponse:
    return _run(
        request,
        {"database": _check_database, "redis": _check_redis, "migrations": _check_migrations},
    )

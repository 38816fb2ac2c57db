"""Container health checks for the Message Service image (stdlib + rq/django-rq only).

    python deploy/healthcheck.py web [PATH]     exit 0 if GET http://127.0.0.1:$PORT/health is 200
    python deploy/healthcheck.py worker QUEUE   exit 0 if an RQ worker started on this host
                                                (container / pod) is registered on QUEUE in Redis
    python deploy/healthcheck.py safety         exit 0 if a safety worker on this host keeps
                                                its heartbeat key alive in Redis
    python deploy/healthcheck.py analytics      exit 0 if an analytics worker on this host
                                                beats its liveness (messageservice.liveness)

The worker check uses the same Redis connection as the app (django_rq.get_connection, i.e.
RQ_QUEUES from settings, built from REDIS_URL). A worker that died without unregistering drops
out when its Redis key expires (rq's worker_ttl), so a hung or crashed worker fails the check.
Used by docker-compose.yml healthchecks and the Kubernetes liveness probes of the workers.
"""

from __future__ import annotations

import os
import socket
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from redis import Redis

# The project root (where manage.py lives), so `messageservice.settings` imports when this file is
# run as `python deploy/healthcheck.py` (sys.path[0] would otherwise be deploy/).
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def check_web(path: str = "/health", timeout: float = 8.0) -> bool:
    """True when the web process answers 200 on `path` (Host: localhost passes ALLOWED_HOSTS)."""
    port = os.environ.get("PORT", "8004")
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Host": "localhost"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (http only)
            return response.status == 200
    except (urllib.error.URLError, OSError) as exc:
        print(f"web health check failed: {exc}", file=sys.stderr)
        return False


def worker_registered(connection: Redis, queue_name: str, hostname: str | None = None) -> bool:
    """True when a live RQ worker from `hostname` (default: this host) listens on `queue_name`."""
    from rq import Queue, Worker

    hostname = hostname or socket.gethostname()
    queue = Queue(queue_name, connection=connection)
    return any(worker.hostname == hostname for worker in Worker.all(queue=queue))


def check_worker(queue_name: str) -> bool:
    if str(PROJECT_ROOT) not in sys.path:
        sys.path.insert(0, str(PROJECT_ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "messageservice.settings")
    import django

    django.setup()
    import django_rq

    try:
        alive = worker_registered(django_rq.get_connection(queue_name), queue_name)
    except Exception as exc:  # any failure means "unhealthy"
        print(f"worker health check failed: {exc}", file=sys.stderr)
        return False
    if not alive:
        print(f"no rq worker on queue {queue_name!r} from {socket.gethostname()}", file=sys.stderr)
    return alive


def check_safety() -> bool:
    """True when a `manage.py safety_worker` on this host renewed its heartbeat key lately."""
    if str(PROJECT_ROOT) not in sys.path:
        sys.path.insert(0, str(PROJECT_ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "messageservice.settings")
    import django

    django.setup()
    from django.conf import settings

    from messages_app.safety.worker import heartbeat_key
    from messageservice.redis_clients import client_from_url

    pattern = heartbeat_key(socket.gethostname(), 0).rsplit(":", 1)[0] + ":*"
    try:
        client = client_from_url(settings.REDIS_URL, socket_timeout=5)
        alive = any(True for _ in client.scan_iter(match=pattern, count=1000))
    except Exception as exc:  # any failure means "unhealthy"
        print(f"safety health check failed: {exc}", file=sys.stderr)
        return False
    if not alive:
        print(f"no safety worker from {socket.gethostname()}", file=sys.stderr)
    return alive


def analytics_alive(connection: Redis, key: str, hostname: str | None = None) -> bool:
    """True when a member `<hostname>:<pid>` of the liveness sorted set `key` (kind analytics)
    counts as alive: its score, the time until which it does, is still ahead."""
    import time

    prefix = f"{hostname or socket.gethostname()}:".encode()
    members: list[bytes] = connection.zrangebyscore(key, time.time(), "+inf")  # type: ignore[assignment]
    return any(member.startswith(prefix) for member in members)


def check_analytics() -> bool:
    """True when a `manage.py analytics_worker` on this host beat its liveness lately."""
    if str(PROJECT_ROOT) not in sys.path:
        sys.path.insert(0, str(PROJECT_ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "messageservice.settings")
    import django

    django.setup()
    from django.conf import settings

    from messageservice.redis_clients import client_from_url

    key = f"{settings.SERVICE_NAME}:workers:analytics"
    try:
        client = client_from_url(settings.REDIS_URL, socket_timeout=5)
        alive = analytics_alive(client, key)
    except Exception as exc:  # any failure means "unhealthy"
        print(f"analytics health check failed: {exc}", file=sys.stderr)
        return False
    if not alive:
        print(f"no analytics worker from {socket.gethostname()}", file=sys.stderr)
    return alive


def main(argv: list[str]) -> int:
    if len(argv) >= 1 and argv[0] == "web":
        return 0 if check_web(argv[1] if len(argv) > 1 else "/health") else 1
    if len(argv) == 2 and argv[0] == "worker":
        return 0 if check_worker(argv[1]) else 1
    if argv == ["safety"]:
        return 0 if check_safety() else 1
    if argv == ["analytics"]:
        return 0 if check_analytics() else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

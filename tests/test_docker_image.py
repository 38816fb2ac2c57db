"""deploy/Dockerfile's image, built and run as deployed (`make image`: a local Debian base, since
no registry is reachable here): the web container and one container per WORKER_TYPE, each as
uid 1000 on a read-only root filesystem with a tmpfs on /tmp, on this run's PostgreSQL and Redis
(host network) and the fake LLM. /health and /ready answer inside the web container, Docker's own
HEALTHCHECK turns healthy, and deploy/scripts/smoke-tests.sh chats through it from inside; the
reply's title and usage row show that the message processor and the analytics worker did their
part; with SAFETY_ON_ERROR=reject the chat completes only when the safety worker answers.

Needs a running Docker daemon. Without one the module skips, unless REQUIRE_TOOLS names `docker`
(CI), where it fails."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import PBKDF2PasswordHasher, make_password

from analytics_app.models import UsageRow
from fake_llm import FakeLLMServer, Script
from messages_app.models import Conversation
from messageservice import liveness
from messageservice.embedded import free_port
from tests.factories import CharacterFactory, UserFactory
from tests.helpers import ROOT, _database_url

IMAGE = os.environ.get("MESSAGE_SERVICE_IMAGE", "message-service:local")
PASSWORD = "container-password-123"
TOKEN = "container-metrics-token-0123456789abcdef"
PREFIX = f"ms-test-{os.getpid()}"
# WORKER_TYPE -> the queue its RQ worker serves, or the liveness kind of a batch worker.
WORKERS = {
    "llm_worker": ("rq", "llm"),
    "message_processor": ("rq", "messages"),
    "analytics_worker": ("liveness", "analytics"),
    "safety_worker": ("liveness", "safety"),
}

pytestmark = pytest.mark.django_db(transaction=True)


def _docker(
    *args: str, timeout: float = 60, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=check
    )


def _require_docker() -> None:
    try:
        ok = _docker("info", "--format", "{{.ServerVersion}}", check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        if "docker" in os.environ.get("REQUIRE_TOOLS", "").split(","):
            pytest.fail("docker is required here (REQUIRE_TOOLS) but no Docker daemon answers")
        pytest.skip("no Docker daemon answers (start dockerd; `make image` builds the image)")


@pytest.fixture(scope="module")
def image() -> str:
    """The image of this checkout: `make image` (Docker's layer cache makes a rebuild quick)."""
    _require_docker()
    result = subprocess.run(
        ["make", "-s", "image", f"IMAGE={IMAGE}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return IMAGE


def _env(fake_llm: FakeLLMServer, **extra: str) -> list[str]:
    env = {
        "ENVIRONMENT": "production",
        "DEBUG": "false",
        "DJANGO_SECRET_KEY": "container-django-secret-key-0123456789abcdefghijkl",
        "JWT_SECRET_KEY": "container-jwt-secret-key-0123456789abcdefghijklmnop",
        "SESSION_COOKIE_SECURE": "false",
        "CSRF_COOKIE_SECURE": "false",
        "ALLOWED_HOSTS": "localhost,127.0.0.1",
        "DATABASE_URL": _database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "LLM_SERVICE_URL": fake_llm.base_url,
        "METRICS_TOKEN": TOKEN,
        "METRICS_ADDR": "127.0.0.1",
        # With no verdict a message is refused (503): a chat that completes was checked by the
        # safety worker's classifier, in its own container.
        "ENABLE_CONTENT_FILTERING": "true",
        "SAFETY_ON_ERROR": "reject",
        "ENABLE_RATE_LIMITS": "false",
        "LLM_RETRY_ATTEMPTS": "0",
        "LOG_LEVEL": "INFO",
        **extra,
    }
    return [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]


def _run(name: str, image: str, env: list[str], *command: str) -> None:
    """A detached container as deployed: uid 1000 (the image's USER), read-only root, /tmp a
    tmpfs, on the host's network (this run's PostgreSQL and Redis listen on 127.0.0.1)."""
    _docker(
        "run", "-d", "--name", name, "--network", "host", "--read-only",
        "--tmpfs", "/tmp:rw,nosuid,nodev,size=64m",
        # Docker's own HEALTHCHECK (the Dockerfile's), polled often so the test need not wait.
        "--health-interval", "2s", "--health-start-period", "1s", "--health-timeout", "10s",
        *env, image, *command,
    )  # fmt: skip


def _logs(name: str) -> str:
    result = _docker("logs", "--tail", "60", name, check=False)
    return f"--- {name}\n{result.stdout[-4000:]}{result.stderr[-4000:]}"


@pytest.fixture(scope="module")
def deployed(
    image: str, django_db_setup: Any, fake_llm_server: FakeLLMServer
) -> Iterator[dict[str, Any]]:
    """The web container and one per WORKER_TYPE; yields their names and the web port."""
    port = free_port()
    names = {"web": f"{PREFIX}-web"} | {kind: f"{PREFIX}-{kind}" for kind in WORKERS}
    _docker("rm", "-f", *names.values(), check=False)
    try:
        migrate = _docker(
            "run", "--rm", "--network", "host", "--read-only", "--tmpfs", "/tmp",
            *_env(fake_llm_server, WORKER_TYPE="migrate"), image, timeout=300, check=False,
        )  # fmt: skip
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr
        # MEDIA_ROOT (/app/media) is the one writable place besides /tmp: a volume in compose
        # and Kubernetes, a tmpfs owned by the service user here.
        _run(
            names["web"],
            image,
            [
                "--tmpfs",
                "/app/media:rw,uid=1000,gid=1000,size=16m",
                *_env(fake_llm_server, PORT=str(port)),
            ],
        )
        for kind in WORKERS:
            _run(
                names[kind],
                image,
                _env(fake_llm_server, WORKER_TYPE=kind, METRICS_PORT=str(free_port())),
            )
        deadline = time.monotonic() + 90
        while not _workers_alive() or _health(names["web"]) != "healthy":
            for name in names.values():
                state = _docker("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
                assert state == "running", f"{name} is {state}\n" + _logs(name)
            assert time.monotonic() < deadline, "\n".join(_logs(n) for n in names.values())
            time.sleep(0.5)
        yield {"names": names, "port": port}
    finally:
        _docker("rm", "-f", *names.values(), check=False, timeout=120)


def _health(name: str) -> str:
    return _docker("inspect", "--format", "{{.State.Health.Status}}", name).stdout.strip()


def _workers_alive() -> bool:
    """Every WORKER_TYPE has its process registered in Redis as PID 1 of a container: the RQ
    worker on its queue, or a liveness beat of its kind."""
    from django_rq import get_connection
    from rq import Worker

    for how, what in WORKERS.values():
        if how == "rq":
            pids = {
                w.pid
                for w in Worker.all(connection=get_connection(what))
                if what in w.queue_names()
            }
        else:
            members: list[bytes] = liveness.sync_redis().zrangebyscore(  # type: ignore[assignment]
                liveness._key(what), time.time(), "+inf"
            )
            pids = {int(m.decode().rsplit(":", 1)[1]) for m in members}
        if 1 not in pids:
            return False
    return True


def _exec(
    name: str, *command: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    flags = [arg for key, value in (env or {}).items() for arg in ("-e", f"{key}={value}")]
    return _docker("exec", *flags, name, *command, timeout=180, check=False)


def test_the_image_runs_as_uid_1000_on_a_read_only_root_with_a_writable_tmp(
    deployed: dict[str, Any], image: str
) -> None:
    web = deployed["names"]["web"]
    assert _docker("image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip() == (
        "1000:1000"
    )
    assert _exec(web, "id", "-u").stdout.strip() == "1000"
    assert _docker("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", web).stdout.strip() == (
        "true"
    )
    denied = _exec(web, "sh", "-c", "touch /app/written")
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr, denied
    assert _exec(web, "sh", "-c", "touch /tmp/written && rm /tmp/written").returncode == 0
    # The processes are PID 1 (deploy/start.sh execs them), so they get SIGTERM themselves.
    top = _exec(web, "cat", "/proc/1/cmdline").stdout.replace("\0", " ")
    assert "daphne" in top and "messageservice.asgi:application" in top


def test_health_and_ready_answer_inside_the_container(deployed: dict[str, Any]) -> None:
    web, port = deployed["names"]["web"], deployed["port"]
    for path in ("/health", "/ready"):
        probe = _exec(
            web,
            "python",
            "-c",
            "import sys, urllib.request; r = urllib.request.urlopen(urllib.request.Request("
            f"'http://127.0.0.1:{port}{path}', headers={{'Host': 'localhost'}}), timeout=10);"
            " sys.stdout.write('%d %s' % (r.status, r.read().decode()))",
        )
        assert probe.returncode == 0, probe.stderr
        status, body = probe.stdout.split(" ", 1)
        assert status == "200", probe.stdout
        assert json.loads(body)["status"] in ("ok", "ready"), body
    assert _health(web) == "healthy"


def test_a_smoke_chat_through_the_containers_is_titled_counted_and_checked(
    deployed: dict[str, Any], fake_llm_server: FakeLLMServer
) -> None:
    web, port = deployed["names"]["web"], deployed["port"]
    fake_llm_server.clear()
    user: Any = UserFactory(username=f"container-{time.monotonic_ns()}")
    get_user_model().objects.filter(pk=user.pk).update(
        password=make_password(PASSWORD, hasher=PBKDF2PasswordHasher())
    )
    CharacterFactory()
    fake_llm_server.push(Script.from_text("Ahoy from inside the container."))
    fake_llm_server.push(Script.from_text("Container greetings"))  # the title job's answer
    smoke = _exec(
        web,
        "deploy/scripts/smoke-tests.sh",
        f"http://127.0.0.1:{port}",
        env={
            "SMOKE_USERNAME": user.username,
            "SMOKE_PASSWORD": PASSWORD,
            "METRICS_TOKEN": TOKEN,
            "SMOKE_TIMEOUT": "60",
            "SMOKE_KEEP": "1",
        },
    )
    assert smoke.returncode == 0, smoke.stdout + smoke.stderr + _logs(web)
    assert "Ahoy from inside the container." in smoke.stdout, smoke.stdout
    # The message processor (its own container) titles the conversation with the LLM's answer.
    conversation = Conversation.objects.get(owner=user)
    deadline = time.monotonic() + 60
    while not Conversation.objects.get(pk=conversation.pk).title:
        assert time.monotonic() < deadline, _logs(deployed["names"]["message_processor"])
        time.sleep(0.5)
    assert Conversation.objects.get(pk=conversation.pk).title == "Container greetings"
    # The analytics worker counts the reply into the user's hourly row.
    while not UsageRow.objects.filter(user=user, interval="hour", completed=1).exists():
        assert time.monotonic() < deadline, _logs(deployed["names"]["analytics_worker"])
        time.sleep(0.5)


def test_a_card_imports_through_the_container_and_its_avatar_is_served(
    deployed: dict[str, Any],
) -> None:
    """A SillyTavern card PNG uploaded to the web container: its picture is written to the
    mounted MEDIA_ROOT on the otherwise read-only image, and served back."""
    import urllib.request
    import uuid

    port = deployed["port"]
    user: Any = UserFactory(username=f"cards-{time.monotonic_ns()}")
    get_user_model().objects.filter(pk=user.pk).update(
        password=make_password(PASSWORD, hasher=PBKDF2PasswordHasher())
    )

    def call(path: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}{path}",
            data=data,
            headers={"Host": "localhost", **(headers or {})},
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.headers, response.read()

    body = json.dumps({"username": user.username, "password": PASSWORD}).encode()
    _, _, token = call("/api/v1/auth/token/", body, {"Content-Type": "application/json"})
    auth = {"Authorization": "Bearer " + json.loads(token)["access"]}
    card = (ROOT / "tests" / "fixtures" / "cards" / "default_Seraphina.png").read_bytes()
    boundary = uuid.uuid4().hex
    form = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="Seraphina.png"\r\nContent-Type: image/png\r\n\r\n'
        ).encode()
        + card
        + f"\r\n--{boundary}--\r\n".encode()
    )
    status, _, created = call(
        "/api/v1/characters/import/",
        form,
        {**auth, "Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    character = json.loads(created)
    assert status == 201 and character["name"] == "Seraphina", character
    status, headers, picture = call(character["avatar_url"], headers=auth)
    assert status == 200 and headers["Content-Type"] == "image/webp"
    assert picture[:4] == b"RIFF" and picture[8:12] == b"WEBP"
    listing = _exec(deployed["names"]["web"], "ls", "-R", "/app/media")
    assert ".webp" in listing.stdout, listing


def test_an_unknown_worker_type_is_refused(image: str) -> None:
    result = _docker(
        "run", "--rm", "--read-only", "-e", "WORKER_TYPE=llm", image, check=False
    )  # fmt: skip
    assert result.returncode == 64, result
    assert "unknown WORKER_TYPE 'llm'" in result.stderr


def test_a_worker_stops_cleanly_on_sigterm(deployed: dict[str, Any]) -> None:
    """docker stop sends SIGTERM to PID 1: the worker's warm shutdown, exit code 0 (runs last in
    the module: the fixture's containers are not restarted)."""
    name = deployed["names"]["llm_worker"]
    started = time.monotonic()
    _docker("stop", "-t", "30", name, timeout=60)
    assert time.monotonic() - started < 25
    assert _docker("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() == "0"

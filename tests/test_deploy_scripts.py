"""The scripts of the original deployment guide (deploy/scripts/*.sh), run for real.

- Every script is shellcheck-clean (a failure, not a skip, when shellcheck is missing and
  REQUIRE_TOOLS names it) and answers `-h` with its usage, exit 0.
- `smoke-tests.sh` runs against a stack this module starts as deployed (daphne and
  `rqworker llm` subprocesses, DEBUG off, a METRICS_TOKEN, the fake LLM over HTTP): it passes,
  and it fails (non-zero, naming the failed reply) when the LLM answers only errors.
- `check-dependencies.sh` passes against this run's database, Redis and fake LLM, and fails,
  naming Redis, when REDIS_URL points at a port where nothing listens.
"""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import PBKDF2PasswordHasher, make_password

from fake_llm import FakeLLMServer, Script
from messageservice.embedded import free_port
from tests.factories import CharacterFactory, UserFactory
from tests.helpers import ROOT, _database_url, worker_env
from tests.test_deploy_files import require_tool

SCRIPTS = ROOT / "deploy" / "scripts"
SCRIPT_FILES = sorted(SCRIPTS.glob("*.sh"))
ORIGINAL = [
    "check-dependencies.sh",
    "smoke-tests.sh",
    # "diagnose-production.sh",
    # "deploy-staging.sh",
    # "deploy-k8s.sh",
]
APP = "messageservice.asgi:application"
TOKEN = "smoke-metrics-token-0123456789abcdef"
PASSWORD = "smoke-password-123"


def test_the_original_scripts_exist() -> None:
    names = {path.name for path in SCRIPT_FILES}
    assert set(ORIGINAL) <= names, sorted(set(ORIGINAL) - names)
    for path in SCRIPT_FILES:
        assert os.access(path, os.X_OK), f"{path.name} is not executable"


@pytest.mark.parametrize("script", SCRIPT_FILES, ids=lambda p: p.name)
def test_shellcheck(script: Path) -> None:
    shellcheck = require_tool("shellcheck", "apt-get install shellcheck")
    result = subprocess.run(
        [shellcheck, "--severity=style", str(script)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", ORIGINAL)
def test_usage_and_strict_mode(name: str) -> None:
    path = SCRIPTS / name
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash\n"), name
    assert "\nset -euo pipefail\n" in text, name
    result = subprocess.run(
        [str(path), "-h"], capture_output=True, text=True, timeout=30, env=_clean_env()
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage:"), result.stdout


def _clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without the service's settings (the scripts read them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMOKE_", "METRICS_"))}
    env.update(extra)
    return env


# ------------------------------------------------------------------ check-dependencies.sh


def _check_dependencies(fake_llm: FakeLLMServer, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        "PYTHON": sys.executable,
        "DATABASE_URL": _database_url(),
        "REDIS_URL": settings.REDIS_URL,
        "LLM_SERVICE_URL": fake_llm.base_url,
        "DEFAULT_LLM_PROVIDER": "lmstudio",
        "CHECK_TIMEOUT": "3",
    }
    return subprocess.run(
        [str(SCRIPTS / "check-dependencies.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=_clean_env(**{**base, **env}),
    )


@pytest.mark.django_db
def test_check_dependencies_passes_against_this_run(fake_llm_server: FakeLLMServer) -> None:
    result = _check_dependencies(fake_llm_server)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    for name in ("database", "redis", "llm"):
        assert any(line.startswith(f"ok   {name}:") for line in lines), result.stdout


@pytest.mark.django_db
def test_check_dependencies_names_a_dead_redis(fake_llm_server: FakeLLMServer) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    result = _check_dependencies(fake_llm_server, REDIS_URL=dead)
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    failed = [line for line in lines if line.startswith("FAIL")]
    assert len(failed) == 1, result.stdout
    assert failed[0].startswith("FAIL redis: REDIS_URL (redis://127.0.0.1:"), failed
    assert "does not answer" in failed[0]
    assert any(line.startswith("ok   database:") for line in lines), result.stdout
    assert any(line.startswith("ok   llm:") for line in lines), result.stdout


def test_check_dependencies_names_a_dead_llm_and_database(fake_llm_server: FakeLLMServer) -> None:
    result = _check_dependencies(
        fake_llm_server,
        DATABASE_URL=f"postgres://nobody@127.0.0.1:{free_port()}/none",
        LLM_SERVICE_URL=f"http://127.0.0.1:{free_port()}/v1",
    )
    assert result.returncode == 1, result.stdout
    failed = [line.split(":")[0] for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert failed == ["FAIL database", "FAIL llm"], result.stdout


# ------------------------------------------------------------------------ smoke-tests.sh


def _get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": "localhost"})
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.fixture(scope="module")
def stack(
    django_db_setup: Any,
    fake_llm_server: FakeLLMServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[int]:
    """daphne and `rqworker llm` as deployed (DEBUG off); yields daphne's port."""
    logs = tmp_path_factory.mktemp("smoke-stack")
    common = {
        "ENVIRONMENT": "production",
        "DEBUG": "false",
        "DJANGO_SECRET_KEY": "smoke-django-secret-key-0123456789abcdefghijklmnop",
        "JWT_SECRET_KEY": "smoke-jwt-secret-key-0123456789abcdefghijklmnopqrs",
        "SESSION_COOKIE_SECURE": "false",
        "CSRF_COOKIE_SECURE": "false",
        "METRICS_TOKEN": TOKEN,
        "METRICS_PORT": str(free_port()),
        "METRICS_ADDR": "127.0.0.1",
        "ENABLE_CONTENT_FILTERING": "false",
        "ENABLE_RATE_LIMITS": "false",
        "CONVERSATION_AUTO_TITLES": "false",
        "LLM_RETRY_ATTEMPTS": "0",
        "LOG_LEVEL": "WARNING",
    }
    port = free_port()
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(name: str, argv: list[str]) -> None:
        with (logs / f"{name}.log").open("ab") as out:
            procs[name] = subprocess.Popen(
                argv,
                cwd=ROOT,
                env={**worker_env(fake_llm_server), **common},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    start("llm", [sys.executable, "manage.py", "rqworker", "llm"])
    start("web", [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), APP])
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if _get(port, "/health") in (200, 503):
                    break
            except OSError:
                pass
            for name, proc in procs.items():
                assert proc.poll() is None, (logs / f"{name}.log").read_text()
            assert time.monotonic() < deadline, "daphne did not come up"
            time.sleep(0.2)
        yield port
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _account(username: str) -> str:
    """A user whose password the deployed settings can check (the test settings hash with MD5,
    which the service's settings do not accept)."""
    user: Any = UserFactory(username=username)
    get_user_model().objects.filter(pk=user.pk).update(
        password=make_password(PASSWORD, hasher=PBKDF2PasswordHasher())
    )
    return username


def _smoke(port: int, username: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {
        "SMOKE_USERNAME": username,
        "SMOKE_PASSWORD": PASSWORD,
        "METRICS_TOKEN": TOKEN,
        "SMOKE_TIMEOUT": "30",
    }
    return subprocess.run(
        [str(SCRIPTS / "smoke-tests.sh"), f"http://127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        timeout=120,
        env=_clean_env(**{**base, **env}),
    )


@pytest.mark.django_db(transaction=True)
def test_smoke_tests_pass_against_a_running_stack(
    stack: int, fake_llm_server: FakeLLMServer
) -> None:
    fake_llm_server.clear()
    username = _account("smoke-ok")
    CharacterFactory()
    fake_llm_server.push(Script.from_text("Ahoy, the smoke clears."))
    result = _smoke(stack, username)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for step in ("ok   /health", "ok   /ready", "ok   /metrics", "ok   login", "ok   conversation"):
        assert step in out, out
    assert "completed: Ahoy, the smoke clears." in out, out
    assert out.rstrip().endswith("smoke tests passed"), out
    assert len(fake_llm_server.requests) == 1


@pytest.mark.django_db(transaction=True)
def test_smoke_tests_fail_when_the_llm_answers_errors(
    stack: int, fake_llm_server: FakeLLMServer
) -> None:
    fake_llm_server.clear()
    username = _account("smoke-llm-down")
    CharacterFactory()
    fake_llm_server.push(Script(tokens=[], fault="http_500", times=20))
    try:
        result = _smoke(stack, username)
    finally:
        fake_llm_server.clear()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "ok   /ready" in result.stdout
    assert "smoke tests passed" not in result.stdout
    assert "ended failed" in result.stderr, result.stderr


@pytest.mark.django_db(transaction=True)
def test_smoke_tests_fail_on_a_wrong_password(stack: int) -> None:
    username = _account("smoke-wrong")
    result = _smoke(stack, username, SMOKE_PASSWORD="not-the-password")
    assert result.returncode == 1
    assert "FAIL login as smoke-wrong: HTTP 401" in result.stderr, result.stderr

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
from django.core.exceptions import ImproperlyConfigured

from fake_llm import FakeLLMServer, Script
from messageservice.embedded import free_port
from tests.factories import CharacterFactory, UserFactory
from tests.helpers import ROOT, _database_url, worker_env
from tests.test_deploy_files import require_tool

SCRIPTS = ROOT / "deploy" / "scripts"
SCRIPT_FILES = sorted(SCRIPTS.glob("*.sh"))
# deploy/start.sh: the image's command (WORKER_TYPE), POSIX sh; .ci/run: CI itself.
SHELL_FILES = [*SCRIPT_FILES, ROOT / "deploy" / "start.sh", ROOT / ".ci" / "run"]
ORIGINAL = [
    "check-dependencies.sh",
    "smoke-tests.sh",
    "diagnose-production.sh",
    "deploy-staging.sh",
    "deploy-k8s.sh",
]
APP = "messageservice.asgi:application"
TOKEN = "smoke-metrics-token-0123456789abcdef"
PASSWORD = "smoke-password-123"


def test_the_original_scripts_exist() -> None:
    names = {path.name for path in SCRIPT_FILES}
    assert set(ORIGINAL) <= names, sorted(set(ORIGINAL) - names)
    for path in SCRIPT_FILES:
        assert os.access(path, os.X_OK), f"{path.name} is not executable"


@pytest.mark.parametrize("script", SHELL_FILES, ids=lambda p: p.name)
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
    secrets = {*settings.SECRET_ENV_NAMES, *(f"{name}_FILE" for name in settings.SECRET_ENV_NAMES)}
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SMOKE_", "METRICS_")) and k not in secrets
    }
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


@pytest.mark.django_db
def test_check_dependencies_follows_a_sentinel_set(
    fake_llm_server: FakeLLMServer, tmp_path: Path
) -> None:
    """REDIS_URL may name a Sentinel set (redis+sentinel://, messageservice/redis_clients.py):
    the check asks a real redis-sentinel for the primary, then pings it."""
    from urllib.parse import urlsplit

    sentinel_bin = require_tool("redis-sentinel", "apt-get install redis-sentinel")
    redis_url = urlsplit(settings.REDIS_URL)
    port = free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor smoke {redis_url.hostname} {redis_url.port} 1\n"
    )
    proc = subprocess.Popen(
        [sentinel_bin, str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                import socket

                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "redis-sentinel did not start"
                time.sleep(0.1)
        dead = free_port()
        url = f"redis+sentinel://127.0.0.1:{dead},127.0.0.1:{port}/smoke/1"
        result = _check_dependencies(fake_llm_server, REDIS_URL=url)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"(primary {redis_url.hostname}:{redis_url.port})" in result.stdout
        result = _check_dependencies(fake_llm_server, REDIS_URL=url.replace("/smoke/", "/other/"))
        assert result.returncode == 1
        assert "no Sentinel answers with a primary for 'other'" in result.stdout
    finally:
        proc.terminate()
        proc.wait(10)


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
def test_smoke_tests_need_no_curl(stack: int, tmp_path: Path) -> None:
    """The image has no curl: with a PATH of bash, python3 and coreutils only, it still runs."""
    import shutil

    only = tmp_path / "only"
    only.mkdir()
    # The interpreter itself (a pyenv shim on PATH would need pyenv).
    (only / "python3").symlink_to(os.path.realpath(sys.executable))
    for tool in ("bash", "mktemp", "head", "tr", "grep", "date", "rm", "sleep", "cat"):
        found = shutil.which(tool)
        assert found, tool
        (only / tool).symlink_to(found)
    username = _account("smoke-no-curl")
    CharacterFactory()
    result = _smoke(stack, username, PATH=str(only))
    assert result.returncode == 0, result.stdout + result.stderr
    (only / "python3").unlink()
    result = _smoke(stack, username, PATH=str(only))
    assert result.returncode == 1
    assert result.stderr == "FAIL python3 (with its standard library) is not on PATH\n"


def test_smoke_tests_name_an_unreachable_service() -> None:
    result = _smoke(free_port(), "anyone")
    assert result.returncode == 1
    assert result.stderr.startswith("FAIL /health: HTTP 000: "), result.stderr
    assert "refused" in result.stderr


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


# ------------------------------------------- deploy-k8s.sh, diagnose, deploy-staging.sh
# No cluster and no Swarm here: kubectl and docker are stand-ins on PATH that log their
# arguments and answer as a cluster would. What they cannot fake is checked with the real
# tools: the overlay deploy-k8s.sh writes is rendered by the real `kubectl kustomize`, and the
# stack file deploy-staging.sh deploys by the real `docker stack config` (both offline).

FAKE_KUBECTL = r"""#!/usr/bin/env bash
set -euo pipefail
echo "$*" >> "$FAKE_LOG/calls"
args=" $* "
case "$args" in
    *" config current-context "*) echo "${FAKE_CONTEXT:-prod-production}" ;;
    *" apply -k "*) "$REAL_KUBECTL" kustomize "${@: -1}" > "$FAKE_LOG/rendered.yaml" ;;
    *" get secret "*) exit "${FAKE_SECRET_RC:-0}" ;;
    *" get deployment -l app=message-service -o name "*)
        printf 'deployment.apps/message-service\ndeployment.apps/llm-workers\n' ;;
    *" top pods "*)
        [[ -z "${FAKE_NO_TOP:-}" ]] || { echo "error: no Metrics API" >&2; exit 1; }
        echo "message-service-abc 10m 100Mi" ;;
    *" exec "*"rqstats"*) echo "llm  queued 3  started 1  failed 0" ;;
    *" exec "*) echo '200 {"status": "ok", "checks": {"database": "ok"}}' ;;
    *" logs "*) echo 'ERROR something broke in the worker' ;;
    *) echo "fake-kubectl: $*" ;;
esac
"""

FAKE_DOCKER = r"""#!/usr/bin/env bash
set -euo pipefail
echo "$*" >> "$FAKE_LOG/calls"
case "$1 $2" in
    "secret inspect") [[ " ${FAKE_EXISTING:-} " == *" $3 "* ]] ;;
    "secret create") cat > "$FAKE_LOG/secret-$3" ;;
    "stack deploy") "$REAL_DOCKER" stack config -c "${@: -2:1}" > "$FAKE_LOG/stack.yml" ;;
    "service ps") echo "Complete 2 seconds ago " ;;
    *) ;;
esac
"""


def _fake_bin(tmp_path: Path, name: str, text: str) -> Path:
    directory = tmp_path / "bin"
    directory.mkdir(exist_ok=True)
    path = directory / name
    path.write_text(text)
    path.chmod(0o755)
    return directory


def _run(script: str, tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    log = tmp_path / "log"
    log.mkdir(exist_ok=True)
    path = f"{tmp_path / 'bin'}:{os.environ['PATH']}"
    return subprocess.run(
        [str(SCRIPTS / script), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=_clean_env(PATH=path, FAKE_LOG=str(log), **env),
    )


def test_deploy_k8s_applies_one_release_everywhere(tmp_path: Path) -> None:
    kubectl = require_tool("kubectl", "https://kubernetes.io/docs/tasks/tools/")
    _fake_bin(tmp_path, "kubectl", FAKE_KUBECTL)
    result = _run("deploy-k8s.sh", tmp_path, "2.3.4", REAL_KUBECTL=kubectl, IMAGE="reg.test/ms")
    assert result.returncode == 0, result.stdout + result.stderr
    calls = (tmp_path / "log" / "calls").read_text().splitlines()
    order = [
        "config current-context",
        "-n message-service get secret message-service-secrets",
        "-n message-service delete job message-service-migrate --ignore-not-found",
        "apply -k",
        "-n message-service wait --for=condition=complete job/message-service-migrate",
        "rollout status deployment.apps/message-service",
        "rollout status deployment.apps/llm-workers",
        "wait --for=condition=ready pod -l app=message-service,component=api",
    ]
    positions = [next(i for i, c in enumerate(calls) if step in c) for step in order]
    assert positions == sorted(positions), calls
    images = {
        line.split("image:", 1)[1].strip()
        for line in (tmp_path / "log" / "rendered.yaml").read_text().splitlines()
        if "image:" in line
    }
    assert images == {"reg.test/ms:2.3.4"}, images


def test_deploy_k8s_refuses_another_context_and_a_missing_secret(tmp_path: Path) -> None:
    _fake_bin(tmp_path, "kubectl", FAKE_KUBECTL)
    result = _run("deploy-k8s.sh", tmp_path, "1", FAKE_CONTEXT="kind-dev", REAL_KUBECTL="false")
    assert result.returncode == 1
    assert "does not contain 'production'" in result.stderr
    result = _run("deploy-k8s.sh", tmp_path, "1", FAKE_SECRET_RC="1", REAL_KUBECTL="false")
    assert result.returncode == 1
    assert "secret message-service-secrets is missing" in result.stderr
    assert "apply -k" not in (tmp_path / "log" / "calls").read_text()


class _Prometheus:
    """Answers every /api/v1/query with one sample."""

    def __enter__(self) -> str:
        import http.server
        import json
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = {
                    "status": "success",
                    "data": {"result": [{"metric": {"kind": "llm"}, "value": [0, "7"]}]},
                }
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_diagnose_production_gathers_every_section(tmp_path: Path) -> None:
    _fake_bin(tmp_path, "kubectl", FAKE_KUBECTL)
    with _Prometheus() as url:
        result = _run("diagnose-production.sh", tmp_path, PROMETHEUS_URL=url)
        assert result.returncode == 0, result.stdout + result.stderr
        out = result.stdout
        for title in (
            "== Service status",
            "== Pods not Running",
            "== Latest events",
            "== Resource use",
            "== Recent errors (10m)",
            "== Readiness from inside a web pod",
            "== RQ queues and workers",
            "== Key metrics",
        ):
            assert title in out, out
        assert "ERROR something broke" in out
        assert "llm  queued 3" in out
        assert "message_queue_size" in out and "7 {kind=llm}" in out
        calls = (tmp_path / "log" / "calls").read_text()
        assert "exec deploy/message-service -c message-service -- python manage.py rqstats" in calls
        # Without metrics-server: the section says so, the rest still runs, the exit is 1.
        result = _run("diagnose-production.sh", tmp_path, PROMETHEUS_URL=url, FAKE_NO_TOP="1")
    assert result.returncode == 1
    assert "(Resource use: failed)" in result.stdout
    assert "== RQ queues and workers" in result.stdout
    assert "failed sections: Resource use" in result.stdout


def test_deploy_staging_creates_missing_secrets_and_deploys(tmp_path: Path) -> None:
    docker = require_tool("docker", "the docker CLI (no daemon needed: `docker stack config`)")
    _fake_bin(tmp_path, "docker", FAKE_DOCKER)
    key_file = tmp_path / "jwt"
    key_file.write_text("jwt-from-a-file-0123456789abcdefghijkl")
    with _Prometheus() as url:  # answers /health with 200 as well
        result = _run(
            "deploy-staging.sh",
            tmp_path,
            "3.1.4",
            REAL_DOCKER=docker,
            FAKE_EXISTING="database_url",
            SKIP_DEPENDENCY_CHECK="1",
            STAGING_URL=url,
            DJANGO_SECRET_KEY="django-from-env-0123456789abcdefghijklmn",
            JWT_SECRET_KEY_FILE=str(key_file),
            REDIS_URL="redis://redis:6379/0",
            METRICS_TOKEN="token-0123456789",
        )
    assert result.returncode == 0, result.stdout + result.stderr
    log = tmp_path / "log"
    assert (
        log / "secret-django_secret_key"
    ).read_text() == "django-from-env-0123456789abcdefghijklmn"
    assert (log / "secret-jwt_secret_key").read_text() == key_file.read_text()
    assert (log / "secret-redis_url").read_text() == "redis://redis:6379/0"
    assert (log / "secret-llm_api_key").read_text() == "not-needed"
    assert not (log / "secret-database_url").exists()  # it existed: kept
    assert "secret database_url: exists, kept" in result.stdout
    stack = (log / "stack.yml").read_text()
    assert "image: registry.company.com/message-service:3.1.4" in stack
    assert "skip smoke tests" in result.stdout


def test_deploy_staging_names_a_missing_secret(tmp_path: Path) -> None:
    _fake_bin(tmp_path, "docker", FAKE_DOCKER)
    result = _run(
        "deploy-staging.sh",
        tmp_path,
        "1",
        REAL_DOCKER="false",
        SKIP_DEPENDENCY_CHECK="1",
        DJANGO_SECRET_KEY="x" * 40,
    )
    assert result.returncode == 1
    assert (
        "FAIL secret jwt_secret_key does not exist: set JWT_SECRET_KEY or JWT_SECRET_KEY_FILE"
        in (result.stderr)
    )
    assert "stack deploy" not in (tmp_path / "log" / "calls").read_text()


# ------------------------------------------------------- docker-compose.staging.yml + secrets

STAGING = ROOT / "docker-compose.staging.yml"
APP_SERVICES = {
    "message-service",
    "llm-worker",
    "message-processor",
    "analytics-worker",
    "safety-worker",
}


def _staging() -> dict[str, Any]:
    import yaml

    data: dict[str, Any] = yaml.safe_load(STAGING.read_text())
    return data


def test_staging_stack_is_a_swarm_stack_with_external_secrets() -> None:
    stack = _staging()
    services = stack["services"]
    assert APP_SERVICES | {"migrate"} == set(services)
    assert stack["secrets"] and all(s == {"external": True} for s in stack["secrets"].values())
    secret_names = {name.upper() for name in stack["secrets"]}
    # Every secret is one the settings read from /run/secrets/<lower name>.
    assert secret_names <= set(settings.SECRET_ENV_NAMES), secret_names
    assert {"DJANGO_SECRET_KEY", "JWT_SECRET_KEY", "DATABASE_URL", "REDIS_URL"} <= secret_names
    for name, service in services.items():
        env = service.get("environment", {})
        assert not set(env) & set(settings.SECRET_ENV_NAMES), (name, "a secret in env")
        mounted = set(service["secrets"])
        assert {"django_secret_key", "jwt_secret_key", "database_url", "redis_url"} <= mounted
        assert service["image"].endswith(":${VERSION:?set VERSION to the image tag}")
        deploy = service["deploy"]
        assert deploy["resources"]["limits"] and deploy["resources"]["limits"]["memory"]
        assert deploy["placement"]["constraints"], name
        assert deploy["restart_policy"]["condition"] == "on-failure"
        if name == "migrate":
            assert deploy["mode"] == "replicated-job"
            continue
        assert deploy["replicas"] >= 1
        assert deploy["resources"]["reservations"], name
        update = deploy["update_config"]
        assert update["parallelism"] == 1 and update["order"] == "start-first"
        assert update["failure_action"] == "rollback"
        assert service["healthcheck"]["test"], name
    assert services["message-service"]["deploy"]["replicas"] == 3
    assert services["llm-worker"]["deploy"]["replicas"] == 6
    assert services["llm-worker"]["environment"]["MAX_CONCURRENT_REQUESTS"] == "20"
    assert services["llm-worker"]["command"] == ["python", "manage.py", "rqworker", "llm"]
    assert stack["networks"]["staging-network"] == {"external": True}


def test_staging_stack_matches_the_compose_spec() -> None:
    check = require_tool("check-jsonschema", "pip install check-jsonschema")
    result = subprocess.run(
        [check, "--builtin-schema", "vendor.compose-spec", str(STAGING)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_staging_stack_renders_with_docker_stack_config() -> None:
    """The Docker CLI's own loader (no daemon needed): interpolation, anchors, secrets, jobs."""
    import yaml

    docker = require_tool("docker", "the docker CLI")
    probe = subprocess.run([docker, "stack", "config", "--help"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("this docker CLI has no `stack config` (Docker 25+)")
    env = _clean_env(VERSION="9.8.7")
    result = subprocess.run(
        [docker, "stack", "config", "-c", str(STAGING)], capture_output=True, text=True, env=env
    )
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    assert rendered["services"]["migrate"]["deploy"]["mode"] == "replicated-job"
    images = {service["image"] for service in rendered["services"].values()}
    assert images == {"registry.company.com/message-service:9.8.7"}
    del env["VERSION"]
    result = subprocess.run(
        [docker, "stack", "config", "-c", str(STAGING)], capture_output=True, text=True, env=env
    )
    assert result.returncode != 0 and "set VERSION" in result.stderr


def test_secret_files_fill_unset_names_only(tmp_path: Path) -> None:
    from messageservice.settings import load_secret_files

    (tmp_path / "django_secret_key").write_text("from-run-secrets\n")
    (tmp_path / "jwt_secret_key").write_text("from-run-secrets-too\n")
    (tmp_path / "unrelated").write_text("never read")
    named = tmp_path / "elsewhere"
    named.write_text("from-a-named-file")
    environment = {"JWT_SECRET_KEY": "from-env", "DATABASE_URL_FILE": str(named)}
    load_secret_files(environment, tmp_path)
    assert environment == {
        "DJANGO_SECRET_KEY": "from-run-secrets",  # the file, stripped
        "JWT_SECRET_KEY": "from-env",  # the env var wins
        "DATABASE_URL": "from-a-named-file",  # <NAME>_FILE wins over the directory
        "DATABASE_URL_FILE": str(named),
    }
    with pytest.raises(ImproperlyConfigured, match="REDIS_URL: cannot read the secret file"):
        load_secret_files({"REDIS_URL_FILE": str(tmp_path / "missing")}, tmp_path)


def test_the_service_settings_read_run_secrets(tmp_path: Path) -> None:
    """messageservice.settings in a fresh process, DEBUG off, with its keys only as files."""
    django_key = "d" * 10 + "django-key-from-a-secret-file-0123456789"
    (tmp_path / "django_secret_key").write_text(django_key + "\n")
    (tmp_path / "jwt_secret_key").write_text("j" * 48)
    (tmp_path / "metrics_token").write_text("scrape-token")
    (tmp_path / "database_url").write_text("postgres://u:p@db.example:5432/ms")
    code = (
        "from django.conf import settings as s; "
        "print(s.SECRET_KEY, s.JWT_SECRET_KEY, s.METRICS_TOKEN, s.DATABASES['default']['HOST'])"
    )
    result = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_clean_env(
            PYTHONPATH=str(ROOT),
            DJANGO_SETTINGS_MODULE="messageservice.settings",
            ENVIRONMENT="staging",
            SECRETS_DIR=str(tmp_path),
        ),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [django_key, "j" * 48, "scrape-token", "db.example"]

"""Start-up refuses unsafe or unsupported configuration, with a message that says what to do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _start(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in {"MONGODB_URL", "DJANGO_SECRET_KEY", "JWT_SECRET_KEY", "ENVIRONMENT", "DEBUG"}
    }
    clean.update(env, DJANGO_SETTINGS_MODULE="messageservice.settings")
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from django.conf import settings; "
            "print('started', 'DEBUG' if settings.DEBUG else 'no-debug')",
        ],
        cwd=ROOT,
        env=clean,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_mongodb_url_stops_start_up_and_points_to_database_url():
    result = _start(MONGODB_URL="mongodb://localhost:27017")
    assert result.returncode != 0
    assert "MONGODB_URL" in result.stderr and "DATABASE_URL" in result.stderr


def test_production_refuses_the_default_secret_and_jwt_keys():
    result = _start(ENVIRONMENT="production", DEBUG="false")
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr
    strong = "s" * 40
    result = _start(ENVIRONMENT="production", DEBUG="false", DJANGO_SECRET_KEY=strong)
    assert result.returncode != 0
    assert "JWT_SECRET_KEY" in result.stderr


def test_production_starts_with_real_secrets():
    result = _start(
        ENVIRONMENT="production",
        DEBUG="false",
        DJANGO_SECRET_KEY="k" * 50,
        JWT_SECRET_KEY="j" * 50,
    )
    assert result.returncode == 0, result.stderr
    assert "started" in result.stdout


def test_unset_environment_means_production_debug_off_and_no_published_keys():
    result = _start()
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY" in result.stderr and "ENVIRONMENT=production" in result.stderr
    result = _start(DJANGO_SECRET_KEY="k" * 50, JWT_SECRET_KEY="j" * 50)
    assert result.returncode == 0, result.stderr
    assert "started no-debug" in result.stdout


def test_staging_with_debug_off_refuses_an_unset_jwt_key():
    # Before: anyone could sign a token for any user with the published default key.
    result = _start(ENVIRONMENT="staging", DJANGO_SECRET_KEY="k" * 50)
    assert result.returncode != 0
    assert "JWT_SECRET_KEY" in result.stderr and "DEBUG" in result.stderr


@pytest.mark.parametrize(
    "published",
    [
        "insecure-dev-key-change-me-0123456789abcdef0123456789",
        "compose-dev-only-insecure-jwt-secret-key-change-me-000",
        "build-only-dummy-jwt-key-not-used-at-runtime-0000000000",
        "change-me",
    ],
)
def test_published_keys_are_refused_whenever_debug_is_off(published):
    for environment in ("staging", "development", "test"):
        result = _start(
            ENVIRONMENT=environment,
            DEBUG="false",
            DJANGO_SECRET_KEY="k" * 50,
            JWT_SECRET_KEY=published,
        )
        assert result.returncode != 0, environment
        assert "JWT_SECRET_KEY" in result.stderr, environment


def test_development_runs_with_debug_on_and_the_development_keys():
    result = _start(ENVIRONMENT="development")
    assert result.returncode == 0, result.stderr
    assert "started DEBUG" in result.stdout


def test_env_example_lists_every_setting_read_from_the_environment():
    import re

    settings_text = (ROOT / "messageservice" / "settings.py").read_text()
    read = set(re.findall(r'env(?:\.\w+)?\(\s*"([A-Z_]+)"', settings_text))
    example = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#?\s*([A-Z_]+)=", example, flags=re.M))
    assert read, "no settings found"
    assert read <= listed, f"missing from .env.example: {sorted(read - listed)}"

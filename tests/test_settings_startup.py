"""Start-up refuses unsafe or unsupported configuration, with a message that says what to do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _start(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in {"MONGODB_URL", "DJANGO_SECRET_KEY", "JWT_SECRET_KEY", "ENVIRONMENT", "DEBUG"}
    }
    clean.update(env, DJANGO_SETTINGS_MODULE="messageservice.settings")
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); print('started')"],
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


def test_env_example_lists_every_setting_read_from_the_environment():
    import re

    settings_text = (ROOT / "messageservice" / "settings.py").read_text()
    read = set(re.findall(r'env(?:\.\w+)?\(\s*"([A-Z_]+)"', settings_text))
    example = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#?\s*([A-Z_]+)=", example, flags=re.M))
    assert read, "no settings found"
    assert read <= listed, f"missing from .env.example: {sorted(read - listed)}"

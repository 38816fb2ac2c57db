"""The production path: `python manage.py rqworker llm` in its own process (forking work horse)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from messages_app.models import Message
from messages_app.services import message_send
from tests.fake_llm import Script

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parent.parent


def _database_url() -> str:
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    host = db.get("HOST") or "127.0.0.1"
    port = db.get("PORT") or 5432
    auth = db.get("USER") or ""
    if db.get("PASSWORD"):
        auth += f":{db['PASSWORD']}"
    return f"postgres://{auth}@{host}:{port}/{db['NAME']}"


def test_rqworker_llm_command_streams_and_saves_the_reply(conversation, user, fake_llm):
    fake_llm.push(Script.from_text("A reply from a real worker process."))
    result = message_send(conversation=conversation, author=user, content="hello worker")
    env = dict(
        os.environ,
        DJANGO_SETTINGS_MODULE="messageservice.settings",
        DATABASE_URL=_database_url(),
        REDIS_URL=settings.REDIS_URL,
        LLM_SERVICE_URL=fake_llm.base_url,
        ENVIRONMENT="test",
    )
    run = subprocess.run(
        [sys.executable, "manage.py", "rqworker", "llm", "--burst"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    reply = Message.objects.get(pk=result.assistant_message.pk)
    assert reply.status == "completed"
    assert reply.content == "A reply from a real worker process."

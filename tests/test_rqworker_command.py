"""The production path: `python manage.py rqworker llm` in its own process (forking work horse)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from fake_llm import Script
from messages_app.models import Message
from messages_app.services import message_send
from tests.helpers import worker_env

pytestmark = pytest.mark.django_db(transaction=True)
ROOT = Path(__file__).resolve().parent.parent


def test_rqworker_llm_command_streams_and_saves_the_reply(conversation, user, fake_llm):
    fake_llm.push(Script.from_text("A reply from a real worker process."))
    result = message_send(conversation=conversation, author=user, content="hello worker")
    env = worker_env(fake_llm)
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

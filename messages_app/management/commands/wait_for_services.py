"""`manage.py wait_for_services`: block until Redis (and optionally the LLM) answer."""

from __future__ import annotations

import time
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from messageservice import embedded


class Command(BaseCommand):
    help = "Wait until REDIS_URL (and with --llm, LLM_SERVICE_URL) answer."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--llm", action="store_true")
        parser.add_argument("--timeout", type=float, default=180.0)

    def handle(self, *args: Any, **options: Any) -> None:
        deadline = time.monotonic() + options["timeout"]
        checks = {"Redis": lambda: embedded.redis_answers(settings.REDIS_URL)}
        if options["llm"]:
            checks["LLM"] = lambda: embedded.llm_answers(settings.LLM_SERVICE_URL)
        for name, check in checks.items():
            while not check():
                if time.monotonic() > deadline:
                    raise CommandError(f"{name} did not answer within {options['timeout']:g} s")
                time.sleep(0.25)

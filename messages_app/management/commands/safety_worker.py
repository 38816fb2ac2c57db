"""`manage.py safety_worker`: load the safety classifier once and answer checks from Redis."""

from __future__ import annotations

import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from messages_app.safety.worker import BATCH_SIZE, SafetyWorker
from messageservice import metrics


class Command(BaseCommand):
    help = "Answer content safety checks (SAFETY_BACKEND) until SIGTERM or SIGINT."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--backend", default=None, help="override SAFETY_BACKEND")
        parser.add_argument("--batch-size", type=int, default=BATCH_SIZE)

    def handle(self, *args: Any, **options: Any) -> None:
        worker = SafetyWorker(backend_name=options["backend"], batch_size=options["batch_size"])
        metrics.start_worker_exporter("safety")
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: worker.stop())
        worker.run()

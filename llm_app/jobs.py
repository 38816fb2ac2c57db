"""django-rq jobs of queue `llm`. They take ids and call into llm_app.generation."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from llm_app.generation import generation_fail_stale, run_generation

logger = logging.getLogger(__name__)


def generate_reply(generation_id: int) -> None:
    """Stream the reply of one generation to its conversation."""
    asyncio.run(run_generation(generation_id))


def on_generation_job_failure(job: Any, connection: Any, *exc_info: Any) -> None:
    """RQ failure callback: a job that died outside the loop (timeout, crash) still ends `failed`."""
    generation_id = int(job.args[0])
    logger.error("generation job %s failed: %s", job.id, exc_info[1] if len(exc_info) > 1 else "")
    generation_fail_stale(
        generation_id, code="worker_error", text="The worker running this reply failed."
    )

"""django-rq jobs of queue `llm`. They take ids and call into llm_app.generation."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from asgiref.sync import sync_to_async
from django.db import connections
from rq import get_current_job

from llm_app.cancel import close_cancel_watcher
from llm_app.generation import run_generation
from llm_app.models import Generation
from llm_app.providers import close_providers
from llm_app.state import generation_fail_stale
from messageservice import logs

logger = logging.getLogger(__name__)


def generate_reply(generation_id: int, stream_key: str | None = None) -> None:
    """Stream the reply of one generation to its conversation. `stream_key` is its reply's
    (jobs queued before it was added carry none).

    In the concurrent llm worker the coroutine runs on the worker's shared event loop; in a
    plain RQ work horse it gets a loop of its own.
    """
    from llm_app.worker import shared_loop, started_generation

    started = started_generation()
    if started is not None:
        started.result()  # the worker started it when it took the job
        return
    job = get_current_job()
    ids = {**logs.from_meta(job.meta if job is not None else None), "generation_id": generation_id}
    loop = shared_loop()
    if loop is not None:
        coroutine = logs.bound(run_generation(generation_id, stream_key), **ids)
        asyncio.run_coroutine_threadsafe(coroutine, loop).result()
    else:
        with logs.bind(**ids):
            asyncio.run(_generate_and_close(generation_id, stream_key))


async def _generate_and_close(generation_id: int, stream_key: str | None) -> None:
    try:
        await run_generation(generation_id, stream_key)
    finally:
        await close_providers()
        await close_cancel_watcher()
        # The ORM ran in asgiref's shared executor thread; don't leave its connection open.
        await sync_to_async(connections.close_all)()


def on_generation_job_failure(job: Any, connection: Any, *exc_info: Any) -> None:
    """RQ failure callback: a job that died outside its loop (timeout, crash) ends `failed`."""
    generation_id = int(job.args[0])
    with logs.bind(**{**logs.from_meta(job.meta), "generation_id": generation_id}):
        _settle_failed_job(job, generation_id, exc_info)


def _settle_failed_job(job: Any, generation_id: int, exc_info: tuple[Any, ...]) -> None:
    logger.error("generation job %s failed: %s", job.id, exc_info[1] if len(exc_info) > 1 else "")
    current = Generation.objects.filter(pk=generation_id).values_list("job_id", flat=True).first()
    if current != job.id:
        return  # an earlier attempt's job; the generation has moved on
    generation_fail_stale(
        generation_id, code="worker_error", text="The worker running this reply failed."
    )

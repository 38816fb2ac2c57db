"""Writes on generations: create one for a queued reply, and put it on the `llm` queue.

These implement messages_app's ReplyEngine (registered in llm_app.apps).
"""

from __future__ import annotations

import asyncio
from functools import cache
from typing import Any

import django_rq
import redis
from django.conf import settings
from rq import Callback, Queue
from rq.job import Job

from llm_app.cancel import cancel_signal
from llm_app.models import Generation
from messages_app.models import Character, Conversation, Message
from messages_app.replies import CompletionFailed
from messageservice import logs
from messageservice.redis_clients import sync_redis


def generation_settings(character: Character) -> dict[str, Any]:
    """Provider, model and parameters for a reply; character settings win over the defaults.

    `params` is what llm_app.providers.ChatRequest.from_params reads: temperature and
    max_tokens (the character's, else DEFAULT_TEMPERATURE and DEFAULT_MAX_TOKENS, never over
    MAX_TOKENS_PER_REQUEST), then the chat sampling of the settings (DEFAULT_STOP_SEQUENCES,
    DEFAULT_REPEAT_PENALTY, DEFAULT_FREQUENCY_PENALTY, DEFAULT_PRESENCE_PENALTY; a penalty of
    0 is left out). Each provider sends what its API takes.
    """
    params: dict[str, Any] = {
        "temperature": (
            character.temperature
            if character.temperature is not None
            else settings.DEFAULT_TEMPERATURE
        ),
        "max_tokens": min(
            character.max_tokens or settings.DEFAULT_MAX_TOKENS, settings.MAX_TOKENS_PER_REQUEST
        ),
        "stop": list(settings.DEFAULT_STOP_SEQUENCES),
        "repeat_penalty": settings.DEFAULT_REPEAT_PENALTY,
    }
    for name, value in (
        ("frequency_penalty", settings.DEFAULT_FREQUENCY_PENALTY),
        ("presence_penalty", settings.DEFAULT_PRESENCE_PENALTY),
    ):
        if value:
            params[name] = value
    return {
        "provider": character.provider or settings.DEFAULT_LLM_PROVIDER,
        "model": character.model or settings.DEFAULT_MODEL,
        "params": params,
    }


def generation_job_id(reply: Message, attempt: int) -> str:
    """A job id per attempt, so a dead attempt's job can never settle a later attempt. Named by
    the reply's random stream key: database ids repeat across a reset or restored database."""
    return f"reply-{reply.stream_key.hex}-{attempt + 1}"


def generation_create(*, message: Message) -> Generation:
    """The generation of a queued assistant `message` (inside the caller's transaction)."""
    config = generation_settings(message.conversation.character)
    return Generation.objects.create(
        message=message, job_id=generation_job_id(message, 0), **config
    )


@cache
def _llm_queue(connection: redis.Redis) -> Queue:
    # One Queue per connection: a new Queue asks Redis for its version (INFO) on first enqueue.
    return django_rq.get_queue("llm", connection=connection)


def generation_enqueue(generation: Generation, pipeline: Any = None) -> None:
    """Put the generation on queue `llm` as job `generation.job_id`. Call after commit: the job
    must find the rows. The job carries the reply's stream key, so a job meeting a database
    that is not its own (reset, restored, another installation on this Redis) does nothing.

    With `pipeline` (of sync_redis()), the job's commands are only added to it: the caller's
    `execute()` queues the job, in the same round trip as its other commands."""
    carried = logs.carried()
    _llm_queue(sync_redis()).enqueue_call(
        "llm_app.jobs.generate_reply",
        args=(generation.pk, generation.message.stream_key.hex),
        job_id=generation.job_id,
        # The ids of the request that queued the reply: the worker binds them on the
        # reply's log lines (it takes the generation id from the job's arguments anyway).
        meta=carried or None,
        timeout=int(settings.MESSAGE_PROCESSING_TIMEOUT) + 30,
        result_ttl=600,
        failure_ttl=86400,
        on_failure=Callback("llm_app.jobs.on_generation_job_failure"),
        pipeline=pipeline,
    )


def generation_requeue(generation: Generation) -> None:
    """Queue a generation again as its next attempt, with a job id of its own. The new job
    carries the request id of the attempt before, when that job is still in Redis."""
    request_id = job_request_id(generation.job_id) if generation.job_id else None
    generation.job_id = generation_job_id(generation.message, generation.attempt)
    Generation.objects.filter(pk=generation.pk).update(job_id=generation.job_id)
    with logs.bind(request_id=request_id or logs.current_request_id(), generation_id=generation.pk):
        generation_enqueue(generation)


def job_request_id(job_id: str) -> str | None:
    """The request id that job `job_id` of queue `llm` carries, if any (one Redis read)."""
    try:
        job = Job.fetch(job_id, connection=sync_redis())
    except Exception:  # gone, or unreadable: the id is for the logs, a requeue goes on
        return None
    request_id: str | None = logs.from_meta(job.meta)["request_id"]
    return request_id


class LLMReplyEngine:
    """messages_app's ReplyEngine: generations on queue `llm`, stopped through llm_app.cancel."""

    def model_for(self, conversation: Conversation) -> str:
        return str(generation_settings(conversation.character)["model"])

    def prepare(self, reply: Message) -> int:
        return generation_create(message=reply).pk

    def start(self, reply: Message, pipeline: Any = None) -> None:
        generation_enqueue(reply.generation, pipeline)

    def cancel(self, reply: Message) -> None:
        cancel_signal(reply.stream_key)

    def complete(
        self,
        conversation: Conversation,
        messages: list[dict[str, str]],
        *,
        max_tokens: int,
        timeout: float,
    ) -> str:
        return completion_run(conversation, messages, max_tokens=max_tokens, timeout=timeout)


def completion_run(
    conversation: Conversation,
    messages: list[dict[str, str]],
    *,
    max_tokens: int,
    timeout: float,
) -> str:
    """ReplyEngine.complete: one attempt with the provider and model of `conversation`'s
    character (no retry, no fallback provider: callers have a fallback of their own), the
    stream collected. In a GenerationWorker's job thread it runs on the worker's event loop
    and its kept-alive connections; elsewhere on a loop of its own."""
    from llm_app.providers import ChatRequest, ProviderError
    from llm_app.worker import shared_loop

    config = generation_settings(conversation.character)
    request = ChatRequest(
        model=str(config["model"]),
        messages=messages,
        temperature=0.2,
        max_tokens=max(1, min(max_tokens, settings.MAX_TOKENS_PER_REQUEST)),
    )
    provider = str(config["provider"])
    loop = shared_loop()
    try:
        if loop is not None:
            future = asyncio.run_coroutine_threadsafe(_collect(provider, request, timeout), loop)
            try:
                return future.result(timeout + 1.0)
            finally:
                future.cancel()
        return asyncio.run(_collect_and_close(provider, request, timeout))
    except ProviderError as exc:
        raise CompletionFailed(f"{exc.code}: {exc.message}") from exc
    except TimeoutError as exc:
        raise CompletionFailed(f"no answer within {timeout:g} s") from exc


async def _collect(provider_name: str, request: Any, timeout: float) -> str:
    from llm_app.providers import provider_for

    parts: list[str] = []
    async with asyncio.timeout(timeout):
        async for chunk in provider_for(provider_name).stream(request):
            parts.append(chunk.text)
    return "".join(parts)


async def _collect_and_close(provider_name: str, request: Any, timeout: float) -> str:
    from llm_app.providers import close_providers

    try:
        return await _collect(provider_name, request, timeout)
    finally:
        await close_providers()

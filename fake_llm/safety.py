"""Fake content-safety servers over real HTTP, for the tests of the safety backends.

One aiohttp app speaks both formats the safety worker uses:
- OpenAI's moderation endpoint, `POST /v1/moderations` (SDK base_url `server.base_url`): each
  input gets the category scores scripted for it in `server.moderation` (all 0.01 otherwise),
  in OpenAI's response shape (`categories`, `category_scores`, `category_applied_input_types`).
- Llama Guard 3 behind an OpenAI-compatible server, `POST /v1/chat/completions`: the last user
  turn gets the answer scripted for it in `server.guard` (`"safe"` otherwise), e.g.
  `"unsafe\nS1,S10"`.
`server.fault` injects a fault into every request: "http_500" (the API's error body), or
"garbage" (200 with a body no client can use: text that is not JSON on /moderations, an
answer that is neither safe nor unsafe on /chat/completions). Request bodies are recorded.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from types import TracebackType
from typing import Any

from aiohttp import web

from fake_llm.server import _cancel_remaining_tasks, _start_site

MODERATION_CATEGORIES = (
    "harassment",
    "harassment/threatening",
    "hate",
    "hate/threatening",
    "illicit",
    "illicit/violent",
    "self-harm",
    "self-harm/intent",
    "self-harm/instructions",
    "sexual",
    "sexual/minors",
    "violence",
    "violence/graphic",
)
SAFETY_FAULTS = (None, "http_500", "garbage")
_BASELINE_SCORE = 0.01
_SERVER_KEY = web.AppKey("fake_safety", object)


class FakeSafetyServer:
    """The fake on its own event loop in a daemon thread.

    >>> with FakeSafetyServer() as fake:
    ...     fake.moderation["I will hurt you"] = {"violence": 0.93}
    ...     fake.guard["I will hurt you"] = "unsafe\\nS1"
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, delay: float = 0.0) -> None:
        self.host = host
        self.port = port
        self.delay = delay
        self.moderation: dict[str, dict[str, float]] = {}
        self.guard: dict[str, str] = {}
        self.fault: str | None = None
        self.requests: list[dict[str, Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def clear(self) -> None:
        self.moderation.clear()
        self.guard.clear()
        self.fault = None
        self.requests.clear()

    def start(self) -> FakeSafetyServer:
        self._thread = threading.Thread(target=self._run, name="fake-safety", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake safety server did not start in time")
        return self

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None

    def __enter__(self) -> FakeSafetyServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        app = web.Application()
        app[_SERVER_KEY] = self
        app.router.add_post("/v1/moderations", _moderations)
        app.router.add_post("/v1/chat/completions", _chat_completions)
        runner, self.port = loop.run_until_complete(_start_site(app, self.host, self.port))
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            loop.run_until_complete(_cancel_remaining_tasks())
            loop.close()


def _server(request: web.Request) -> FakeSafetyServer:
    server: FakeSafetyServer = request.app[_SERVER_KEY]  # type: ignore[assignment]
    return server


def _error(status: int, message: str) -> web.Response:
    body = {"error": {"message": message, "type": "server_error", "param": None, "code": None}}
    return web.json_response(body, status=status)


async def _received(request: web.Request) -> tuple[FakeSafetyServer, dict[str, Any]]:
    server = _server(request)
    body = await request.json()
    server.requests.append({"path": request.path, **body})
    if server.delay:
        await asyncio.sleep(server.delay)
    return server, body


async def _moderations(request: web.Request) -> web.Response:
    server, body = await _received(request)
    if server.fault == "http_500":
        return _error(500, "The server had an error while processing your request.")
    if server.fault == "garbage":
        return web.Response(text="<html>upstream busy</html>", content_type="application/json")
    inputs = body.get("input")
    texts = [inputs] if isinstance(inputs, str) else list(inputs or [])
    results = []
    for text in texts:
        scores = dict.fromkeys(MODERATION_CATEGORIES, _BASELINE_SCORE)
        scores.update(server.moderation.get(text, {}))
        results.append(
            {
                "flagged": any(s >= 0.5 for s in scores.values()),
                "categories": {name: s >= 0.5 for name, s in scores.items()},
                "category_scores": scores,
                "category_applied_input_types": {name: ["text"] for name in scores},
            }
        )
    model = body.get("model", "omni-moderation-latest")
    return web.json_response({"id": f"modr-{uuid.uuid4().hex}", "model": model, "results": results})


async def _chat_completions(request: web.Request) -> web.Response:
    server, body = await _received(request)
    if server.fault == "http_500":
        return _error(500, "The server had an error while processing your request.")
    users = [m.get("content", "") for m in body.get("messages", []) if m.get("role") == "user"]
    text = users[-1] if users else ""
    answer = "I am not sure what you mean." if server.fault == "garbage" else None
    answer = answer or server.guard.get(text, "safe")
    return web.json_response(
        {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "llama-guard-3-1b"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    )

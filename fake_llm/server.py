"""Fake streaming LLM server, reached over real HTTP by tests and benchmarks.

It speaks OpenAI's chat completions (POST /v1/chat/completions, SDK base_url `server.base_url`)
and Anthropic's Messages API (POST /v1/messages, SDK base_url `server.url`: the anthropic SDK
adds /v1 itself). Both answer from one FIFO of scripts, which control the streamed tokens, their
timing and injected faults (HTTP 500/429, stall, ...). As real servers do, a reply ends before
the request's first stop string (`stop`, `stop_sequences`) or at its max_tokens. Every request
body is recorded as sent (GET /_fake/requests, `server.requests`).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
import re
import signal
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import Any

from aiohttp import web

DEFAULT_MODEL = "fake-model"
DEFAULT_TEXT = "Hello! I am a fake model. How can I help you today?"
FAULTS: tuple[str | None, ...] = (None, "http_500", "http_429", "stall", "malformed", "cut")

# Leading whitespace sticks to the following word, as in BPE vocabularies, so that
# "".join(tokens) == text and every chunk looks like what a real model streams.
_TOKEN_RE = re.compile(r"\s*[\w']+|\s*[^\w\s]|\s+")
# How often a stalled handler checks whether its client went away; aiohttp does not cancel
# handlers on disconnect, so without polling a stall would linger for stall_seconds.
_STALL_POLL_SECONDS = 0.05
_JSON_SEPARATORS = (",", ":")


def split_text(text: str) -> list[str]:
    """Split text into word-ish pieces that keep their whitespace: "".join(result) == text."""
    return _TOKEN_RE.findall(text)


def tokenize_text(text: str) -> list[int]:
    """Deterministic fake token ids for text, one per piece of split_text()."""
    # crc32 rather than hash(): ids must be stable across processes (PYTHONHASHSEED).
    return [zlib.crc32(piece.encode()) % 100_000 for piece in split_text(text)]


def estimate_prompt_tokens(messages: Any) -> int:
    """Rough prompt size: characters of all message texts // 4, at least 1."""
    chars = 0
    if isinstance(messages, list):
        for message in messages:
            if not isinstance(message, dict):
                continue
            content = message.get("content")
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                for part in content:
                    if isinstance(part, dict) and isinstance(part.get("text"), str):
                        chars += len(part["text"])
    return max(1, chars // 4)


@dataclasses.dataclass
class Script:
    """What the fake answers to one (or `times`) chat completion requests.

    `fault` is one of FAULTS:
    - "http_500": 500 with the API's error body (OpenAI or Anthropic shape), before any token.
    - "http_429": 429 with `Retry-After: 0`.
    - "stall": go silent after `stall_after` tokens (defaults to `fault_after`) until the client
      leaves or `stall_seconds` pass, then drop the connection. With 0 tokens the stall happens
      before the response headers, so clients see a request timeout (openai.APITimeoutError);
      later stalls surface as a read timeout while iterating the stream.
    - "malformed": after `fault_after` tokens emit `data: {not json`, then carry on.
    - "cut": after `fault_after` tokens close the connection without final chunk or [DONE]
      (Anthropic: without content_block_stop, message_delta and message_stop).
    Fault positions beyond the streamed tokens apply at the end of the stream.
    """

    tokens: list[str]
    first_token_delay: float = 0.0
    token_interval: float = 0.0
    fault: str | None = None
    fault_after: int = 0
    stall_after: int | None = None
    stall_seconds: float = 3600.0
    times: int = 1

    def __post_init__(self) -> None:
        if self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}; expected one of {FAULTS}")
        if not isinstance(self.tokens, list) or not all(isinstance(t, str) for t in self.tokens):
            raise ValueError("tokens must be a list of strings")
        if self.times < 1:
            raise ValueError("times must be >= 1")
        if self.fault_after < 0 or (self.stall_after is not None and self.stall_after < 0):
            raise ValueError("fault_after and stall_after must be >= 0")

    @classmethod
    def from_text(cls, text: str, **options: Any) -> Script:
        """Script streaming `text` split into word-ish tokens; options are Script fields."""
        return cls(tokens=split_text(text), **options)

    @classmethod
    def numbered(cls, count: int, **options: Any) -> Script:
        """Script streaming "token1 token2 ... tokenN"; options are Script fields."""
        tokens = [f"token{i}" if i == 1 else f" token{i}" for i in range(1, count + 1)]
        return cls(tokens=tokens, **options)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Script:
        """Build from JSON: Script fields, with "text" accepted in place of "tokens"."""
        fields = dict(data)
        if "text" in fields:
            if "tokens" in fields:
                raise ValueError('give either "text" or "tokens", not both')
            text = fields.pop("text")
            if not isinstance(text, str):
                raise ValueError('"text" must be a string')
            fields["tokens"] = split_text(text)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(fields) - known
        if unknown:
            raise ValueError(f"unknown script fields: {sorted(unknown)}")
        if "tokens" not in fields:
            raise ValueError('a script needs "tokens" or "text"')
        return cls(**fields)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, accepted by from_dict() and POST /_fake/script."""
        return dataclasses.asdict(self)

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def stall_position(self) -> int:
        return self.fault_after if self.stall_after is None else self.stall_after


class FakeLLMState:
    """Script FIFO and request log shared by the HTTP handlers and the controlling thread."""

    def __init__(self, default_script: Script | None = None, model: str = DEFAULT_MODEL) -> None:
        self.default_script = default_script or Script.from_text(DEFAULT_TEXT)
        self.model = model
        # Plain flag, not an asyncio.Event: it is set from another thread during shutdown.
        self.closing = False
        self.active = 0
        # A lock because push()/requests are called from the test thread while the
        # event loop thread consumes scripts.
        self._lock = threading.Lock()
        self._scripts: collections.deque[list[Any]] = collections.deque()
        self._requests: list[dict[str, Any]] = []

    def push(self, script: Script) -> None:
        with self._lock:
            self._scripts.append([script, script.times])

    def clear_scripts(self) -> None:
        with self._lock:
            self._scripts.clear()

    def queued(self) -> int:
        with self._lock:
            return len(self._scripts)

    def next_script(self) -> Script:
        with self._lock:
            if not self._scripts:
                return self.default_script
            entry = self._scripts[0]
            entry[1] -= 1
            if entry[1] <= 0:
                self._scripts.popleft()
            script: Script = entry[0]
            return script

    def record(self, body: dict[str, Any]) -> None:
        with self._lock:
            self._requests.append(body)

    @property
    def requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()


STATE_KEY = web.AppKey("fake_llm_state", FakeLLMState)


def _error_response(
    status: int, message: str, error_type: str, code: str | None = None
) -> web.Response:
    body = {"error": {"message": message, "type": error_type, "param": None, "code": code}}
    return web.json_response(body, status=status)


# What an API answers for the statuses the fake produces: (error type, code) for OpenAI and
# the error type for Anthropic.
_OPENAI_ERRORS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
}
_ANTHROPIC_ERRORS = {400: "invalid_request_error", 429: "rate_limit_error", 500: "api_error"}

ErrorFactory = Callable[[int, str], web.Response]


def _openai_error(status: int, message: str) -> web.Response:
    error_type, code = _OPENAI_ERRORS.get(status, ("server_error", None))
    return _error_response(status, message, error_type, code)


def _anthropic_error(status: int, message: str) -> web.Response:
    error = {"type": _ANTHROPIC_ERRORS.get(status, "api_error"), "message": message}
    return web.json_response({"type": "error", "error": error}, status=status)


def _drop_connection(request: web.Request) -> None:
    # close() rather than abort() so that tokens already written still reach the client;
    # aiohttp then fails the final write_eof with a ConnectionError, which it handles quietly.
    transport = request.transport
    if transport is not None:
        transport.close()


async def _stall(request: web.Request, state: FakeLLMState, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not state.closing:
        transport = request.transport
        if transport is None or transport.is_closing():
            return
        remaining = deadline - loop.time()
        if remaining <= 0:
            return
        await asyncio.sleep(min(_STALL_POLL_SECONDS, remaining))


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    value = body.get("max_completion_tokens", body.get("max_tokens"))
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _stop_strings(body: Mapping[str, Any]) -> list[str]:
    """The request's stop strings: OpenAI's `stop` (a string or a list), Anthropic's
    `stop_sequences`."""
    value = body.get("stop", body.get("stop_sequences"))
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    return [s for s in value if isinstance(s, str) and s]


def _cut_at_stop(tokens: list[str], stops: list[str]) -> tuple[list[str], str | None]:
    """`tokens` up to (not including) the first stop string, as a server stops; and which."""
    text = "".join(tokens)
    found = [(text.find(stop), stop) for stop in stops if stop in text]
    if not found:
        return tokens, None
    end, stop = min(found)
    kept: list[str] = []
    length = 0
    for token in tokens:
        if length + len(token) >= end:
            if end > length:
                kept.append(token[: end - length])
            break
        kept.append(token)
        length += len(token)
    return kept, stop


def _limit_tokens(script: Script, body: Mapping[str, Any]) -> tuple[list[str], bool, str | None]:
    """The script's tokens cut at the request's first stop string or at its max_tokens,
    whichever comes first; whether max_tokens cut them; the stop string that ended them."""
    tokens, stop = _cut_at_stop(script.tokens, _stop_strings(body))
    limit = _max_tokens(body)
    if limit is not None and len(tokens) > limit:
        return tokens[:limit], True, None
    return tokens, False, stop


async def _take_script(
    request: web.Request, error: ErrorFactory
) -> tuple[dict[str, Any], Script] | web.Response:
    """Parse and record the request, take its script; a response when it ends right here."""
    state = request.app[STATE_KEY]
    try:
        body = await request.json()
    except ValueError:
        return error(400, "request body is not valid JSON")
    if not isinstance(body, dict):
        return error(400, "request body must be a JSON object")
    state.record(body)
    script = state.next_script()
    if script.fault == "http_500":
        return error(500, "The fake server had an error (scripted).")
    if script.fault == "http_429":
        response = error(429, "Rate limit reached (scripted).")
        response.headers["Retry-After"] = "0"
        return response
    return body, script


@contextlib.contextmanager
def _counted(state: FakeLLMState) -> Iterator[None]:
    state.active += 1
    try:
        yield
    finally:
        state.active -= 1


async def _chat_completions(request: web.Request) -> web.StreamResponse:
    taken = await _take_script(request, _openai_error)
    if isinstance(taken, web.StreamResponse):
        return taken
    body, script = taken
    state = request.app[STATE_KEY]
    tokens, was_cut, _ = _limit_tokens(script, body)
    finish_reason = "length" if was_cut else "stop"
    requested_model = body.get("model")
    model = requested_model if isinstance(requested_model, str) else state.model
    prompt_tokens = estimate_prompt_tokens(body.get("messages"))
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": len(tokens),
        "total_tokens": prompt_tokens + len(tokens),
    }

    with _counted(state):
        if body.get("stream"):
            stream_options = body.get("stream_options")
            include_usage = isinstance(stream_options, dict) and bool(
                stream_options.get("include_usage")
            )
            return await _stream(
                request, state, script, tokens, finish_reason, model, usage, include_usage
            )
        return await _complete(request, state, script, tokens, finish_reason, model, usage)


async def _stream(
    request: web.Request,
    state: FakeLLMState,
    script: Script,
    tokens: list[str],
    finish_reason: str,
    model: str,
    usage: dict[str, int],
    include_usage: bool,
) -> web.StreamResponse:
    header = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }
    # Serialised once so that the per-token work is a string concatenation and one write.
    head = json.dumps(header, separators=_JSON_SEPARATORS)[:-1]
    token_prefix = f'data: {head},"choices":[{{"index":0,"delta":{{"content":'
    token_suffix = '},"finish_reason":null}]}\n\n'

    def event(payload: dict[str, Any]) -> bytes:
        return (
            f"data: {json.dumps({**header, **payload}, separators=_JSON_SEPARATORS)}\n\n".encode()
        )

    role = {"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}
    final = {"index": 0, "delta": {}, "finish_reason": finish_reason}
    closing = [event({"choices": [final]})]
    if include_usage:
        closing.append(event({"choices": [], "usage": usage}))
    closing.append(b"data: [DONE]\n\n")
    return await _send_events(
        request,
        state,
        script,
        tokens,
        opening=[event({"choices": [role]})],
        token_event=lambda token: (token_prefix + json.dumps(token) + token_suffix).encode(),
        malformed=b"data: {not json\n\n",
        closing=closing,
    )


async def _send_events(
    request: web.Request,
    state: FakeLLMState,
    script: Script,
    tokens: list[str],
    *,
    opening: list[bytes],
    token_event: Callable[[str], bytes],
    malformed: bytes,
    closing: list[bytes],
) -> web.StreamResponse:
    """Stream an SSE body with the script's timing and faults, whatever the API's event shapes.

    `opening` is sent right after the headers, one `token_event` per token, `malformed` where
    the script says, and `closing` after the last token of a stream that ends well.
    """
    fault = script.fault
    fault_at = -1
    if fault in ("cut", "malformed"):
        fault_at = min(script.fault_after, len(tokens))
    elif fault == "stall":
        fault_at = min(script.stall_position, len(tokens))
        if fault_at == 0:
            await _stall(request, state, script.stall_seconds)
            _drop_connection(request)
            return web.Response()

    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    try:
        await response.prepare(request)
        for chunk in opening:
            await response.write(chunk)
        loop = asyncio.get_running_loop()
        # Deadlines from one origin rather than sleep(interval) per token, so the observed
        # inter-token time is the scripted one and not the script plus the fake's overhead.
        origin = loop.time() + script.first_token_delay
        for i in range(len(tokens) + 1):
            if i == fault_at:
                if fault == "cut":
                    _drop_connection(request)
                    return response
                if fault == "stall":
                    await _stall(request, state, script.stall_seconds)
                    _drop_connection(request)
                    return response
                await response.write(malformed)
            if i == len(tokens):
                break
            if state.closing:
                # Shutting down: waiting for long streams would make stop() slow.
                _drop_connection(request)
                return response
            delay = origin + i * script.token_interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await response.write(token_event(tokens[i]))
        for chunk in closing:
            await response.write(chunk)
        await response.write_eof()
    except ConnectionError:
        # The client went away mid-stream: routine for benchmarks and timeouts, not an error.
        pass
    return response


async def _complete_faults(
    request: web.Request, state: FakeLLMState, script: Script, tokens: list[str]
) -> web.StreamResponse | None:
    """Wait as long as the whole generation would take and apply the script's fault.

    Returns the response when a fault replaces the answer, None when the answer is due.
    """
    if script.fault == "stall":
        await _stall(request, state, script.stall_seconds)
        _drop_connection(request)
        return web.Response()
    # A non-streamed answer arrives when the whole generation would have finished.
    duration = script.first_token_delay + script.token_interval * max(0, len(tokens) - 1)
    if duration > 0:
        await asyncio.sleep(duration)
    if script.fault == "cut":
        _drop_connection(request)
        return web.Response()
    if script.fault == "malformed":
        return web.Response(text="{not json", content_type="application/json")
    return None


async def _complete(
    request: web.Request,
    state: FakeLLMState,
    script: Script,
    tokens: list[str],
    finish_reason: str,
    model: str,
    usage: dict[str, int],
) -> web.StreamResponse:
    faulted = await _complete_faults(request, state, script, tokens)
    if faulted is not None:
        return faulted
    message = {"role": "assistant", "content": "".join(tokens)}
    return web.json_response(
        {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason}],
            "usage": usage,
        }
    )


def _sse(event: str, payload: Mapping[str, Any]) -> bytes:
    data = json.dumps({"type": event, **payload}, separators=_JSON_SEPARATORS)
    return f"event: {event}\ndata: {data}\n\n".encode()


async def _messages(request: web.Request) -> web.StreamResponse:
    """Anthropic's POST /v1/messages, answered from the same scripts as chat completions."""
    taken = await _take_script(request, _anthropic_error)
    if isinstance(taken, web.StreamResponse):
        return taken
    body, script = taken
    state = request.app[STATE_KEY]
    tokens, was_cut, stop_sequence = _limit_tokens(script, body)
    stop_reason = "max_tokens" if was_cut else "stop_sequence" if stop_sequence else "end_turn"
    requested_model = body.get("model")
    model = requested_model if isinstance(requested_model, str) else state.model
    # The system prompt is a parameter of its own here, but it is prompt all the same.
    messages = body.get("messages")
    prompt = [{"content": body.get("system")}, *(messages if isinstance(messages, list) else [])]
    input_tokens = estimate_prompt_tokens(prompt)
    message_id = f"msg_{uuid.uuid4().hex[:24]}"
    message: dict[str, Any] = {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 0},
    }

    with _counted(state):
        if not body.get("stream"):
            faulted = await _complete_faults(request, state, script, tokens)
            if faulted is not None:
                return faulted
            message["content"] = [{"type": "text", "text": "".join(tokens)}]
            message["stop_reason"] = stop_reason
            message["stop_sequence"] = stop_sequence
            message["usage"] = {"input_tokens": input_tokens, "output_tokens": len(tokens)}
            return web.json_response(message)

        # Serialised once so that the per-token work is a string concatenation and one write.
        token_prefix = (
            'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
            '"delta":{"type":"text_delta","text":'
        )
        stop_delta = {"stop_reason": stop_reason, "stop_sequence": stop_sequence}
        return await _send_events(
            request,
            state,
            script,
            tokens,
            opening=[
                _sse("message_start", {"message": message}),
                _sse(
                    "content_block_start",
                    {"index": 0, "content_block": {"type": "text", "text": ""}},
                ),
                _sse("ping", {}),
            ],
            token_event=lambda token: (token_prefix + json.dumps(token) + "}}\n\n").encode(),
            # Under a known event name, or SDKs would skip the line instead of parsing it.
            malformed=b"event: content_block_delta\ndata: {not json\n\n",
            closing=[
                _sse("content_block_stop", {"index": 0}),
                _sse(
                    "message_delta", {"delta": stop_delta, "usage": {"output_tokens": len(tokens)}}
                ),
                _sse("message_stop", {}),
            ],
        )


async def _models(request: web.Request) -> web.Response:
    model = request.app[STATE_KEY].model
    entry = {"id": model, "object": "model", "created": 0, "owned_by": "fake-llm"}
    return web.json_response({"object": "list", "data": [entry]})


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _tokenize(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except ValueError:
        return _error_response(400, "request body is not valid JSON", "invalid_request_error")
    content = body.get("content") if isinstance(body, dict) else None
    if not isinstance(content, str):
        return _error_response(400, '"content" must be a string', "invalid_request_error")
    return web.json_response({"tokens": tokenize_text(content)})


async def _push_script(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    try:
        data = await request.json()
        items = data if isinstance(data, list) else [data]
        scripts = [Script.from_dict(item) for item in items]
    except (ValueError, TypeError) as exc:
        return _error_response(400, f"invalid script: {exc}", "invalid_request_error")
    for script in scripts:
        state.push(script)
    return web.json_response({"queued": state.queued()})


async def _clear_scripts(request: web.Request) -> web.Response:
    request.app[STATE_KEY].clear_scripts()
    return web.json_response({"queued": 0})


async def _get_requests(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE_KEY].requests)


async def _clear_requests(request: web.Request) -> web.Response:
    request.app[STATE_KEY].clear_requests()
    return web.json_response({"requests": 0})


def create_app(state: FakeLLMState | None = None) -> web.Application:
    """The aiohttp application; `state` is shared with whoever controls the fake."""
    # Benchmarks may send long prompts; aiohttp's 1 MiB default would reject them.
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[STATE_KEY] = state or FakeLLMState()
    app.router.add_post("/v1/chat/completions", _chat_completions)
    app.router.add_post("/v1/messages", _messages)
    app.router.add_get("/v1/models", _models)
    app.router.add_get("/health", _health)
    app.router.add_post("/tokenize", _tokenize)
    app.router.add_post("/_fake/script", _push_script)
    app.router.add_delete("/_fake/script", _clear_scripts)
    app.router.add_get("/_fake/requests", _get_requests)
    app.router.add_delete("/_fake/requests", _clear_requests)
    return app


async def _start_site(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    # No access log: formatting a line per request is measurable in benchmarks.
    # Short shutdown_timeout: streams still running at stop() are not worth waiting for.
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, int(runner.addresses[0][1])


async def _cancel_remaining_tasks() -> None:
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class FakeLLMServer:
    """The fake on its own event loop in a daemon thread, for synchronous tests.

    >>> with FakeLLMServer() as server:
    ...     server.push(Script.from_text("Hi there", token_interval=0.01))
    ...     client = openai.OpenAI(base_url=server.base_url, api_key="x")
    ...     claude = anthropic.Anthropic(base_url=server.url, api_key="x")
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        default_script: Script | None = None,
        model: str = DEFAULT_MODEL,
    ) -> None:
        self.host = host
        self.port = port
        self.state = FakeLLMState(default_script, model)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def start(self, timeout: float = 10.0) -> FakeLLMServer:
        """Serve in a background thread; returns once the socket is listening."""
        if self._thread is not None:
            raise RuntimeError("FakeLLMServer already started")
        self.state.closing = False
        self._ready.clear()
        self._thread = threading.Thread(target=self._run, name="fake-llm", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("fake LLM server did not start in time")
        if self._startup_error is not None:
            self._thread.join()
            self._thread = None
            raise self._startup_error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving and join the thread; open streams are dropped."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        self.state.closing = True
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            runner, self.port = loop.run_until_complete(
                _start_site(create_app(self.state), self.host, self.port)
            )
        except BaseException as exc:
            self._startup_error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(runner.cleanup())
            # Handlers still alive after cleanup would otherwise warn "Task was destroyed".
            loop.run_until_complete(_cancel_remaining_tasks())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def push(self, script: Script) -> None:
        """Queue a script for the next chat completion request(s)."""
        self.state.push(script)

    def clear(self) -> None:
        """Forget queued scripts and recorded requests."""
        self.state.clear_scripts()
        self.state.clear_requests()

    @property
    def requests(self) -> list[dict[str, Any]]:
        """JSON bodies of the chat completion requests received so far."""
        return self.state.requests

    @property
    def active_requests(self) -> int:
        """Chat completion handlers currently running (streaming, stalling or sleeping)."""
        return self.state.active

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


async def serve(host: str, port: int, state: FakeLLMState) -> None:
    """Serve until SIGINT/SIGTERM, printing the base URL once listening."""
    runner, bound_port = await _start_site(create_app(state), host, port)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopped.set)
    print(f"fake LLM listening on http://{host}:{bound_port}/v1", flush=True)
    try:
        await stopped.wait()
    finally:
        state.closing = True
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8005)
    parser.add_argument("--model", default=DEFAULT_MODEL)
    content = parser.add_mutually_exclusive_group()
    content.add_argument("--tokens", type=int, help="stream N numbered tokens")
    content.add_argument("--text", help=f"stream this text (default: {DEFAULT_TEXT!r})")
    parser.add_argument("--first-token-ms", type=float, default=0.0)
    parser.add_argument("--interval-ms", type=float, default=0.0)
    args = parser.parse_args(argv)

    timing = {
        "first_token_delay": args.first_token_ms / 1000,
        "token_interval": args.interval_ms / 1000,
    }
    if args.tokens is not None:
        default_script = Script.numbered(args.tokens, **timing)
    else:
        default_script = Script.from_text(
            DEFAULT_TEXT if args.text is None else args.text, **timing
        )
    asyncio.run(serve(args.host, args.port, FakeLLMState(default_script, args.model)))
    return 0

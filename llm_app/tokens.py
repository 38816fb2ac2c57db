"""Token counting for prompt packing.

The rule: count with the model's own tokenizer where the server offers one, and with a stated
estimate otherwise.

- Providers "lmstudio" and "openai_compatible": ``POST {server}/tokenize`` with
  ``{"content": text}``, answered by llama-server (and the fake LLM) with ``{"tokens": [...]}``.
  ``{server}`` is the OpenAI base URL without its trailing ``/v1``. A server that fails to answer
  (404 as on LM Studio or vLLM, connection refused, timeout, bad JSON) is remembered for
  ``UNSUPPORTED_SERVER_TTL_SECONDS`` and counted with the estimate meanwhile.
- Provider "openai": tiktoken, with the encoding tiktoken maps the model to (``cl100k_base`` for
  GPT-3.5/GPT-4, ``o200k_base`` for newer models) and ``o200k_base`` for names it does not know.
  tiktoken downloads its BPE files on first use; when that fails (no internet, empty
  ``TIKTOKEN_CACHE_DIR``) the estimate is used for the rest of the process, logged once.
- Any other provider (e.g. "anthropic"): the estimate.

The estimate is ``ceil(len(text) / 4)`` (``CHARS_PER_TOKEN``), reported as ``ESTIMATE_COUNTER``.
Counts exclude chat-template tokens: callers add ``PER_MESSAGE_OVERHEAD`` per message.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from tiktoken import Encoding

__all__ = [
    "CHARS_PER_TOKEN",
    "ESTIMATE_COUNTER",
    "PER_MESSAGE_OVERHEAD",
    "TIKTOKEN_COUNTER_PREFIX",
    "TOKENIZE_COUNTER",
    "TokenCount",
    "TokenCounter",
    "clear_caches",
    "estimate_tokens",
    "server_root",
]

logger = logging.getLogger(__name__)

CHARS_PER_TOKEN = 4
# Chat-template tokens per message (role markers, separators); added by callers, not by count().
PER_MESSAGE_OVERHEAD: int = 4

ESTIMATE_COUNTER = "estimate: ceil(chars/4)"
TOKENIZE_COUNTER = "llama-server /tokenize"
TIKTOKEN_COUNTER_PREFIX = "tiktoken:"
DEFAULT_TIKTOKEN_ENCODING = "o200k_base"

TOKENIZE_PROVIDERS = frozenset({"lmstudio", "openai_compatible"})
TIKTOKEN_PROVIDERS = frozenset({"openai"})

# Short: tokenizing is fast on a healthy server, and packing waits on it before generating.
TOKENIZE_TIMEOUT_SECONDS = 2.0
# Long enough that a server without /tokenize costs one failed request per packing burst, short
# enough that swapping in a server that has it is noticed without a restart.
UNSUPPORTED_SERVER_TTL_SECONDS = 600.0
# How many /tokenize requests one packing sends at once.
TOKENIZE_CONCURRENCY = 8
# How long a count waits for tiktoken's first load; its download has no timeout of its own, so
# past this the caller gets the estimate while the load carries on in the background.
TIKTOKEN_LOAD_WAIT_SECONDS = 5.0
MEMO_SIZE = 4096

# Indirection so tests can move time forward past the unsupported-server window.
_clock = time.monotonic


@dataclass(frozen=True)
class TokenCount:
    """How many tokens a text has, and which counter said so."""

    tokens: int
    counter: str


def estimate_tokens(text: str) -> int:
    """The stated estimate: ceil(len(text) / CHARS_PER_TOKEN)."""
    return -(-len(text) // CHARS_PER_TOKEN)


def _estimate(text: str) -> TokenCount:
    return TokenCount(estimate_tokens(text), ESTIMATE_COUNTER)


def server_root(base_url: str) -> str:
    """The server root of an OpenAI base URL: "http://h:8005/v1" -> "http://h:8005"."""
    root = base_url.rstrip("/")
    if root.endswith("/v1"):
        root = root[: -len("/v1")]
    return root


class _Memo:
    """Bounded LRU of counts keyed by (counter key, text digest), shared by all counters.

    Keyed by digest rather than text so that long histories do not stay in memory twice. A lock
    because counters may run on event loops in several threads (daphne, rq workers).
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._data: collections.OrderedDict[tuple[str, bytes], int] = collections.OrderedDict()

    @staticmethod
    def key(counter_key: str, text: str) -> tuple[str, bytes]:
        return counter_key, hashlib.blake2b(text.encode(), digest_size=16).digest()

    def get(self, key: tuple[str, bytes]) -> int | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: tuple[str, bytes], tokens: int) -> None:
        with self._lock:
            self._data[key] = tokens
            self._data.move_to_end(key)
            while len(self._data) > self._size:
                self._data.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()


_memo = _Memo(MEMO_SIZE)
# Server root -> clock time until which /tokenize is not asked again. Process-wide because
# callers build a TokenCounter per generation.
_unsupported_until: dict[str, float] = {}
_unsupported_lock = threading.Lock()
# Encoding name -> its load, started once per process in a daemon thread.
_encoding_loads: dict[str, concurrent.futures.Future[Encoding]] = {}
_encoding_lock = threading.Lock()


def clear_caches() -> None:
    """Forget memoised counts, servers without /tokenize and failed tiktoken loads."""
    _memo.clear()
    with _unsupported_lock:
        _unsupported_until.clear()
    with _encoding_lock:
        _encoding_loads.clear()


def _server_unsupported(root: str) -> bool:
    with _unsupported_lock:
        until = _unsupported_until.get(root)
        if until is None:
            return False
        if _clock() >= until:
            del _unsupported_until[root]
            return False
        return True


def _mark_unsupported(root: str, reason: str) -> None:
    with _unsupported_lock:
        # Concurrent requests of one batch fail together; log the first of them only.
        if root in _unsupported_until and _clock() < _unsupported_until[root]:
            return
        _unsupported_until[root] = _clock() + UNSUPPORTED_SERVER_TTL_SECONDS
    logger.warning(
        "%s/tokenize unusable (%s); counting tokens with %s for %.0f s",
        root,
        reason,
        ESTIMATE_COUNTER,
        UNSUPPORTED_SERVER_TTL_SECONDS,
    )


def _tiktoken_encoding_name(model: str) -> str:
    try:
        import tiktoken.model
    except ImportError:
        return DEFAULT_TIKTOKEN_ENCODING
    try:
        return tiktoken.model.encoding_name_for_model(model)
    except KeyError:
        # Unknown names are most likely models newer than this tiktoken, which use o200k.
        return DEFAULT_TIKTOKEN_ENCODING


def _load_encoding(name: str, future: concurrent.futures.Future[Encoding]) -> None:
    try:
        import tiktoken

        encoding = tiktoken.get_encoding(name)
    except Exception as exc:
        logger.warning(
            "tiktoken could not load %s (%s: %s); counting tokens with %s",
            name,
            type(exc).__name__,
            exc,
            ESTIMATE_COUNTER,
        )
        future.set_exception(exc)
    else:
        future.set_result(encoding)


def _encoding_load(name: str) -> concurrent.futures.Future[Encoding]:
    with _encoding_lock:
        future = _encoding_loads.get(name)
        if future is None:
            future = concurrent.futures.Future()
            # Running futures cannot be cancelled, so an impatient awaiter cannot abort the load
            # for everyone else.
            future.set_running_or_notify_cancel()
            _encoding_loads[name] = future
            # A daemon thread, not an executor: a download hanging without a timeout must not
            # hold up interpreter exit.
            threading.Thread(
                target=_load_encoding, args=(name, future), name=f"tiktoken-{name}", daemon=True
            ).start()
        return future


async def _encoding(name: str) -> Encoding | None:
    future = _encoding_load(name)
    if not future.done():
        waiter = asyncio.wrap_future(future)
        # The failure is read from `future` below (or by a later count after a timeout); mark
        # the wrapper's copy as seen so asyncio does not log it as never retrieved.
        waiter.add_done_callback(lambda f: f.cancelled() or f.exception())
        await asyncio.wait({waiter}, timeout=TIKTOKEN_LOAD_WAIT_SECONDS)
        if not future.done():
            return None
    if future.exception() is not None:
        return None
    return future.result()


def _recall(counter_key: str, texts: list[str]) -> tuple[dict[str, int], list[str]]:
    """Memoised counts by text, and the distinct texts still to count."""
    known: dict[str, int] = {}
    missing: list[str] = []
    # Distinct texts only: short replies such as "ok" repeat within one history.
    for text in dict.fromkeys(texts):
        tokens = _memo.get(_Memo.key(counter_key, text))
        if tokens is None:
            missing.append(text)
        else:
            known[text] = tokens
    return known, missing


def _remember(counter_key: str, known: dict[str, int], texts: list[str], counts: list[int]) -> None:
    for text, tokens in zip(texts, counts, strict=True):
        known[text] = tokens
        _memo.put(_Memo.key(counter_key, text), tokens)


class _TokenizeFailed(Exception):
    pass


class TokenCounter:
    """Counts tokens for one (provider, model, server), with the best counter available.

    Pass a shared ``http`` client when counting often; without one, each ``count`` or
    ``count_many`` call opens and closes its own (so nothing outlives the event loop).
    """

    def __init__(
        self,
        *,
        provider: str,
        model: str,
        base_url: str | None,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self.provider = provider
        self.model = model
        self._http = http
        self._root: str | None = None
        self._encoding_name: str | None = None
        if provider in TOKENIZE_PROVIDERS and base_url:
            self._root = server_root(base_url)
        elif provider in TIKTOKEN_PROVIDERS:
            self._encoding_name = _tiktoken_encoding_name(model)

    @property
    def name(self) -> str:
        """The counter the next count will use, as reported in TokenCount.counter."""
        if self._root is not None:
            return ESTIMATE_COUNTER if _server_unsupported(self._root) else TOKENIZE_COUNTER
        if self._encoding_name is not None:
            # Peek rather than start a load: reading a name should not download anything.
            with _encoding_lock:
                future = _encoding_loads.get(self._encoding_name)
            if future is not None and future.done() and future.exception() is not None:
                return ESTIMATE_COUNTER
            return TIKTOKEN_COUNTER_PREFIX + self._encoding_name
        return ESTIMATE_COUNTER

    async def count(self, text: str) -> TokenCount:
        """Tokens in text, with the counter that produced the number."""
        return (await self.count_many([text]))[0]

    async def count_many(self, texts: list[str]) -> list[TokenCount]:
        """Tokens in each text, in order, all from the same counter.

        /tokenize requests run concurrently, at most TOKENIZE_CONCURRENCY at a time. If any
        of them fails, every text is estimated: a mix of counters would not add up.
        """
        if not texts:
            return []
        if self._root is not None:
            return await self._count_tokenize(self._root, texts)
        if self._encoding_name is not None:
            return await self._count_tiktoken(self._encoding_name, texts)
        return [_estimate(text) for text in texts]

    async def _count_tokenize(self, root: str, texts: list[str]) -> list[TokenCount]:
        if _server_unsupported(root):
            return [_estimate(text) for text in texts]
        # The model is part of the key: LM Studio and llama-swap change models behind one URL.
        counter_key = f"{TOKENIZE_COUNTER} {root} {self.model}"
        known, missing = _recall(counter_key, texts)
        if missing:
            try:
                if self._http is not None:
                    counts = await self._tokenize_all(self._http, root, missing)
                else:
                    limits = httpx.Limits(max_connections=TOKENIZE_CONCURRENCY)
                    async with httpx.AsyncClient(limits=limits) as http:
                        counts = await self._tokenize_all(http, root, missing)
            except _TokenizeFailed:
                return [_estimate(text) for text in texts]
            _remember(counter_key, known, missing, counts)
        return [TokenCount(known[text], TOKENIZE_COUNTER) for text in texts]

    async def _tokenize_all(
        self, http: httpx.AsyncClient, root: str, texts: list[str]
    ) -> list[int]:
        semaphore = asyncio.Semaphore(TOKENIZE_CONCURRENCY)
        failed = False

        async def one(text: str) -> int:
            nonlocal failed
            async with semaphore:
                # Once one request failed the batch is estimated anyway; queued ones need not
                # wait their turn for a timeout.
                if failed:
                    raise _TokenizeFailed
                try:
                    return await self._tokenize(http, root, text)
                except _TokenizeFailed:
                    failed = True
                    raise

        outcomes = await asyncio.gather(*(one(t) for t in texts), return_exceptions=True)
        counts: list[int] = []
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                if isinstance(outcome, _TokenizeFailed):
                    raise _TokenizeFailed
                raise outcome
            counts.append(outcome)
        return counts

    @staticmethod
    async def _tokenize(http: httpx.AsyncClient, root: str, text: str) -> int:
        if not text:
            return 0
        try:
            response = await http.post(
                f"{root}/tokenize", json={"content": text}, timeout=TOKENIZE_TIMEOUT_SECONDS
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            _mark_unsupported(root, f"{type(exc).__name__}: {exc}")
            raise _TokenizeFailed from exc
        if response.status_code != httpx.codes.OK:
            _mark_unsupported(root, f"HTTP {response.status_code}")
            raise _TokenizeFailed
        try:
            body: Any = response.json()
        except ValueError as exc:
            _mark_unsupported(root, "response is not JSON")
            raise _TokenizeFailed from exc
        tokens = body.get("tokens") if isinstance(body, dict) else None
        if not isinstance(tokens, list):
            _mark_unsupported(root, 'response has no "tokens" list')
            raise _TokenizeFailed
        return len(tokens)

    async def _count_tiktoken(self, encoding_name: str, texts: list[str]) -> list[TokenCount]:
        encoding = await _encoding(encoding_name)
        if encoding is None:
            return [_estimate(text) for text in texts]
        counter = TIKTOKEN_COUNTER_PREFIX + encoding_name
        known, missing = _recall(counter, texts)
        if missing:
            # encode_ordinary: user text containing "<|endoftext|>" is text, not a special token
            # (plain encode() would raise). In a thread, since long histories take a while.
            counts = await asyncio.to_thread(
                lambda: [len(encoding.encode_ordinary(text)) for text in missing]
            )
            _remember(counter, known, missing, counts)
        return [TokenCount(known[text], counter) for text in texts]

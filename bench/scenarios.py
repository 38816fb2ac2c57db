"""The measured scenarios. Each returns a JSON-ready dict; run.py puts them side by side.

- sequential: one request at a time, service and direct-LLM alternately (TTFT and gaps);
- concurrent: N websocket streams at once vs N direct streams at once (TTFT, gaps, seq check,
  RSS/CPU of daphne and the worker);
- resume: many streams whose clients drop mid-stream and resume on a new connection.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from bench.clients import (
    TERMINAL,
    BenchError,
    ServiceClient,
    StreamRecord,
    direct_stream,
    drop,
    service_stream,
)
from bench.sampler import Sampler
from bench.stack import Stack
from bench.stats import summary


@dataclass
class Conversation:
    id: int
    access: str


@dataclass
class Options:
    tokens: int = 35
    first_token_ms: float = 50.0
    interval_ms: float = 20.0
    seq_requests: int = 50
    seq_warmup: int = 5
    pause: float = 0.2
    streams: int = 50
    rounds: int = 3
    warmup_rounds: int = 1
    resume_streams: int = 1000
    resume_concurrency: int = 50
    resume_interval_ms: float = 20.0
    resume_twice: float = 0.3
    resume_drop_share: float = 0.5
    resume_watch: float = 1.0  # seconds a finished stream's connection is watched for repeats
    seed: int = 1
    stream_timeout: float = 60.0


def expected_text(tokens: int) -> str:
    """What the fake LLM streams with --tokens N (fake_llm.Script.numbered)."""
    return "".join(f"token{i}" if i == 1 else f" token{i}" for i in range(1, tokens + 1))


def message_content(index: int) -> str:
    # Same length every time, different text: token counts are memoised per text.
    return f"Benchmark message {index:07d}: please answer in a few words."


@dataclass
class Bench:
    stack: Stack
    sampler: Sampler
    options: Options
    http: aiohttp.ClientSession
    llm: aiohttp.ClientSession
    api: ServiceClient
    pool: list[Conversation] = field(default_factory=list)
    direct_body: bytes = b""
    counter: itertools.count[int] = field(default_factory=itertools.count)
    records: list[StreamRecord] = field(default_factory=list)
    background: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def llm_completions(self) -> str:
        return f"{self.stack.llm_url}/v1/chat/completions"

    def take(self, count: int) -> list[Conversation]:
        if len(self.pool) < count:
            raise BenchError(f"need {count} conversations, {len(self.pool)} left")
        taken, self.pool = self.pool[:count], self.pool[count:]
        return taken

    async def setup(self, users: int, conversations: int) -> None:
        seeded = await asyncio.to_thread(
            self.stack.dbtool,
            ["seed", "--users", str(users), "--conversations", str(conversations)],
        )
        tokens = {}
        for name in seeded["users"]:
            tokens[name] = await self.api.login(name, "bench-password-0123")
        self.pool = [Conversation(c["id"], tokens[c["user"]]) for c in seeded["conversations"]]

    async def service(
        self, ws: aiohttp.ClientWebSocketResponse, go: asyncio.Event | None = None
    ) -> StreamRecord:
        index = next(self.counter)
        record = await service_stream(
            ws,
            message_content(index),
            f"b{index}-{uuid.uuid4().hex[:12]}",
            go=go,
            timeout=self.options.stream_timeout,
        )
        self.records.append(record)
        return record

    async def direct(self, go: asyncio.Event | None = None) -> StreamRecord:
        return await direct_stream(
            self.llm,
            self.llm_completions,
            self.direct_body,
            go=go,
            timeout=self.options.stream_timeout,
        )

    async def fake(self, method: str, path: str, body: Any = None) -> Any:
        async with self.llm.request(method, f"{self.stack.llm_url}{path}", json=body) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def warm_up(self, count: int = 3) -> None:
        """A few service requests; then take the worker's own request body for direct calls."""
        for conversation in self.take(count):
            ws = await self.api.connect(conversation.id, conversation.access)
            try:
                record = await self.service(ws)
            finally:
                await ws.close()
            if record.error:
                raise BenchError(f"warm-up request failed: {record.error}")
        bodies = await self.fake("GET", "/_fake/requests")
        streamed = [b for b in bodies if isinstance(b, dict) and b.get("stream")]
        if not streamed:
            raise BenchError("the fake LLM saw no streaming request from the worker")
        self.direct_body = json.dumps(streamed[-1]).encode()
        await self.fake("DELETE", "/_fake/requests")
        for _ in range(count):
            await self.direct()


# --- analysis -------------------------------------------------------------------------------
def ttft_table(service: list[StreamRecord], direct: list[StreamRecord]) -> dict[str, Any]:
    s = [r.ttft_ms for r in service if r.ttft_ms is not None]
    d = [r.ttft_ms for r in direct if r.ttft_ms is not None]
    ss, ds = summary(s), summary(d)
    added = {
        key: (ss[key] - ds[key]) if ss[key] is not None and ds[key] is not None else None
        for key in ("p50", "p95", "p99", "mean")
    }
    return {"service_ms": ss, "direct_ms": ds, "added_ms": added}


def stage_table(service: list[StreamRecord]) -> dict[str, Any]:
    """Where the service's TTFT goes, as the client sees it and as the server saved it."""

    def ms(values: list[float | None]) -> dict[str, Any]:
        return summary([v for v in values if v is not None])

    def between(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else (b - a) * 1000

    timings = [(r.final or {}).get("timings") or {} for r in service]
    return {
        "send_to_created_ms": ms([between(r.t_send, r.t_created) for r in service]),
        "created_to_started_ms": ms([between(r.t_created, r.t_started) for r in service]),
        "started_to_first_delta_ms": ms([between(r.t_started, r.t_first) for r in service]),
        "server_queued_ms": ms([t.get("queued_ms") for t in timings]),
        "server_ttft_ms": ms([t.get("ttft_ms") for t in timings]),
    }


def gap_table(
    service: list[StreamRecord], direct: list[StreamRecord], interval_ms: float
) -> dict[str, Any]:
    s = [g - interval_ms for r in service for g in r.gaps_ms()]
    d = [g - interval_ms for r in direct for g in r.gaps_ms()]
    ss, ds = summary(s), summary(d)
    return {
        "interval_ms": interval_ms,
        "service_excess_ms": ss,
        "direct_excess_ms": ds,
        "added_ms": {
            k: (ss[k] - ds[k]) if ss[k] is not None and ds[k] is not None else None
            for k in ("p50", "p95", "p99")
        },
        "service_excess_over_5ms": sum(1 for g in s if g > 5.0),
        "service_gaps": len(s),
    }


def seq_check(records: list[StreamRecord], tokens: int) -> dict[str, Any]:
    text = expected_text(tokens)
    bad = {}
    for record in records:
        problems = record.check(tokens, text)
        if problems:
            bad[str(record.generation_id)] = problems
    return {
        "streams": len(records),
        "ok": len(records) - len(bad),
        "deltas": sum(len(r.seqs) for r in records),
        "problems": dict(itertools.islice(bad.items(), 20)),
        "notes": sorted({n for r in records for n in r.notes}),
    }


# --- scenario 1: one at a time ----------------------------------------------------------------
async def sequential(bench: Bench, profile: Any = None) -> dict[str, Any]:
    opts = bench.options
    service: list[StreamRecord] = []
    direct: list[StreamRecord] = []
    fresh: list[bool] = []  # the service request was sent right after connecting
    conversations = bench.take(opts.seq_requests + opts.seq_warmup)
    started = time.monotonic()
    with bench.sampler.phase("sequential"):
        for i, conversation in enumerate(conversations):
            ws = await bench.api.connect(conversation.id, conversation.access)
            try:
                if i % 2 == 0:
                    d = await bench.direct()
                    await asyncio.sleep(opts.pause)
                    s = await bench.service(ws)
                else:
                    s = await bench.service(ws)
                    await asyncio.sleep(opts.pause)
                    d = await bench.direct()
            finally:
                await ws.close()
            await asyncio.sleep(opts.pause)
            if i >= opts.seq_warmup:
                service.append(s)
                direct.append(d)
                fresh.append(i % 2 == 1)
    paired = [
        s.ttft_ms - d.ttft_ms
        for s, d in zip(service, direct, strict=True)
        if s.ttft_ms is not None and d.ttft_ms is not None
    ]
    result = {
        "requests": len(service),
        "warmup": opts.seq_warmup,
        "seconds": round(time.monotonic() - started, 1),
        "ttft": ttft_table(service, direct),
        "added_paired_ms": summary(paired),
        # Alternation also alternates how long the websocket was open before the send: right
        # after the ping/pong, or after the direct request (~1 s). Both halves, separately.
        "by_connection_age": {
            "sent_right_after_connect": ttft_table(
                [r for r, f in zip(service, fresh, strict=True) if f], direct
            ),
            "connection_open_1s": ttft_table(
                [r for r, f in zip(service, fresh, strict=True) if not f], direct
            ),
        },
        "stages": stage_table(service),
        "gaps": gap_table(service, direct, opts.interval_ms),
        "check": seq_check(service, opts.tokens),
        "direct_errors": [d.error for d in direct if d.error][:5],
        "records": {
            "service": [r.to_json() for r in service],
            "direct": [r.to_json() for r in direct],
        },
    }
    if profile is not None and bench.pool:
        # Unmeasured: the same one-at-a-time requests with py-spy attached (connected first).
        conversations = bench.take(min(20, len(bench.pool)))
        sockets = [await bench.api.connect(c.id, c.access) for c in conversations]
        try:
            if profile.start("sequential"):
                await asyncio.sleep(0.5)
                try:
                    for ws in sockets:
                        await bench.service(ws)
                        await asyncio.sleep(opts.pause)
                finally:
                    profile.stop()
                result["profile"] = profile.summaries()
        finally:
            await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    await bench.fake("DELETE", "/_fake/requests")
    return result


# --- scenario 2: N streams at once ------------------------------------------------------------
async def _service_round(
    bench: Bench, conversations: list[Conversation], phase: str | None, profile: Any = None
) -> list[StreamRecord]:
    sockets = await asyncio.gather(*(bench.api.connect(c.id, c.access) for c in conversations))
    try:
        go = asyncio.Event()
        tasks = [asyncio.create_task(bench.service(ws, go)) for ws in sockets]
        await asyncio.sleep(0.05)  # every task is waiting on `go`
        if profile is not None and profile.start("concurrent"):
            await asyncio.sleep(0.5)  # let py-spy attach
            go.set()
            try:
                return list(await asyncio.gather(*tasks))
            finally:
                profile.stop()
        if phase:
            with bench.sampler.phase(phase):
                go.set()
                return list(await asyncio.gather(*tasks))
        go.set()
        return list(await asyncio.gather(*tasks))
    finally:
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)


async def _direct_round(bench: Bench, count: int) -> list[StreamRecord]:
    go = asyncio.Event()
    tasks = [asyncio.create_task(bench.direct(go)) for _ in range(count)]
    await asyncio.sleep(0.05)
    go.set()
    return list(await asyncio.gather(*tasks))


async def concurrent(bench: Bench, profile: Any = None) -> dict[str, Any]:
    opts = bench.options
    conversations = bench.take(opts.streams)
    service: list[StreamRecord] = []
    direct: list[StreamRecord] = []
    rounds = []
    started = time.monotonic()
    for r in range(opts.warmup_rounds + opts.rounds):
        measured = r >= opts.warmup_rounds
        phase = "concurrent" if measured else None
        if r % 2 == 0:
            s = await _service_round(bench, conversations, phase)
            await asyncio.sleep(0.5)
            d = await _direct_round(bench, opts.streams)
        else:
            d = await _direct_round(bench, opts.streams)
            await asyncio.sleep(0.5)
            s = await _service_round(bench, conversations, phase)
        await asyncio.sleep(0.5)
        bench.stack.check_alive()
        if measured:
            service += s
            direct += d
            rounds.append(ttft_table(s, d)["added_ms"])
    result: dict[str, Any] = {
        "streams": opts.streams,
        "rounds": opts.rounds,
        "warmup_rounds": opts.warmup_rounds,
        "seconds": round(time.monotonic() - started, 1),
        "ttft": ttft_table(service, direct),
        "added_by_round_ms": rounds,
        "stages": stage_table(service),
        "gaps": gap_table(service, direct, opts.interval_ms),
        "check": seq_check(service, opts.tokens),
        "direct_errors": [d.error for d in direct if d.error][:5],
        "rss_peak_mib": bench.sampler.peak_mib("concurrent"),
        "channel_backlog_peak": bench.sampler.peak_backlog("concurrent"),
        "cpu_percent": bench.sampler.cpu_percent("concurrent"),
        "records": {
            "service": [r.to_json() for r in service],
            "direct": [r.to_json() for r in direct],
        },
    }
    if profile is not None:
        # Unmeasured: more rounds of the same load with py-spy attached (after the connects).
        for _ in range(3):
            await _service_round(bench, conversations, None, profile)
            await asyncio.sleep(0.5)
        if profile.files:
            result["profile"] = profile.summaries()
    await bench.fake("DELETE", "/_fake/requests")
    return result


# --- scenario 5: drop and resume --------------------------------------------------------------
@dataclass
class ResumePlan:
    points: list[int]  # disconnect after receiving these seqs
    modes: list[str]  # "close" (close frame) or "drop" (TCP abort)


@dataclass
class ResumeResult:
    index: int
    plan: ResumePlan
    generation_id: int | None = None
    seqs: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    connections: int = 0
    disconnects: int = 0
    terminal_frames: int = 0
    end_type: str | None = None
    final: dict[str, Any] | None = None
    after_terminal: int = 0  # deltas or terminal frames of this generation after the end
    resume_latency_ms: list[float] = field(default_factory=list)
    after_resume: int = 0  # deltas received on a resumed connection (replayed + live)
    error: str | None = None
    trace: list[str] = field(default_factory=list)  # frames as "conn:type[:seq]", for failures

    def verdict(self, tokens: int, text: str, saved: dict[str, Any] | None) -> dict[str, Any]:
        n = (self.final or {}).get("seq") or 0
        seen: set[int] = set()
        duplicates = reorders = 0
        for i, seq in enumerate(self.seqs):
            if seq in seen:
                duplicates += 1
            seen.add(seq)
            if i and seq < self.seqs[i - 1]:
                reorders += 1
        gaps = sum(1 for seq in range(1, n + 1) if seq not in seen)
        joined = "".join(self.texts)
        content = (self.final or {}).get("content")
        checks = {
            "exact": self.seqs == list(range(1, n + 1)) and n == tokens,
            "gaps": gaps,
            "duplicates": duplicates,
            "reorders": reorders,
            "text_matches_completed": joined == content,
            "text_matches_script": joined == text,
            "text_matches_db": saved is not None
            and saved["content"] == joined
            and saved["stream_seq"] == n
            and saved["status"] == "completed",
            "one_terminal": self.terminal_frames == 1 and self.after_terminal == 0,
            "completed": self.end_type == "generation.completed",
        }
        checks["ok"] = not self.error and all(
            v for k, v in checks.items() if k not in ("gaps", "duplicates", "reorders")
        )
        return checks


async def _read_frame(ws: aiohttp.ClientWebSocketResponse, timeout: float) -> dict[str, Any]:
    msg = await ws.receive(timeout=timeout)
    if msg.type != aiohttp.WSMsgType.TEXT:
        raise BenchError(f"websocket {msg.type.name} mid-stream")
    frame: dict[str, Any] = json.loads(msg.data)
    return frame


async def _resume_one(
    bench: Bench, conversation: Conversation, index: int, plan: ResumePlan
) -> ResumeResult:
    opts = bench.options
    result = ResumeResult(index, plan)
    client_id = f"r{index}-{uuid.uuid4().hex[:12]}"
    try:
        ws = await bench.api.connect(conversation.id, conversation.access, ready=False)
    except (BenchError, TimeoutError, aiohttp.ClientError, ValueError) as exc:
        result.error = f"connect: {type(exc).__name__}: {exc}"
        return result
    result.connections = 1
    t_resume: float | None = None
    try:
        await ws.send_str(
            json.dumps(
                {"type": "message.send", "content": message_content(index), "client_id": client_id}
            )
        )
        async with asyncio.timeout(opts.stream_timeout):
            while True:
                frame = await _read_frame(ws, opts.stream_timeout)
                kind = frame.get("type")
                result.trace.append(
                    f"{result.connections}:{kind}"
                    + (f":{frame['seq']}" if "seq" in frame else "")
                    + (f":{frame['message'].get('role')}" if kind == "message.created" else "")
                )
                if kind == "message.created":
                    message = frame["message"]
                    if message.get("role") == "assistant" and frame.get("client_id") == client_id:
                        result.generation_id = message.get("generation_id")
                    continue
                if kind in ("error", "rate_limited"):
                    raise BenchError(f"server sent {frame}")
                if kind not in ("generation.delta", *TERMINAL):
                    continue
                if result.generation_id is None:
                    result.generation_id = frame.get("generation_id")
                if frame.get("generation_id") != result.generation_id:
                    continue
                if t_resume is not None:
                    result.resume_latency_ms.append((time.perf_counter() - t_resume) * 1000)
                    t_resume = None
                if kind in TERMINAL:
                    result.terminal_frames += 1
                    result.end_type = kind
                    result.final = frame.get("message")
                    break
                seq = frame["seq"]
                result.seqs.append(seq)
                result.texts.append(frame["text"])
                if result.disconnects > 0:
                    result.after_resume += 1
                step = result.disconnects
                if step < len(plan.points) and seq >= plan.points[step]:
                    if plan.modes[step] == "drop":
                        drop(ws)
                    else:
                        await ws.close()
                    result.disconnects += 1
                    ws = await bench.api.connect(conversation.id, conversation.access, ready=False)
                    result.connections += 1
                    t_resume = time.perf_counter()
                    await ws.send_str(
                        json.dumps(
                            {
                                "type": "stream.resume",
                                "generation_id": result.generation_id,
                                "after_seq": result.seqs[-1],
                            }
                        )
                    )
    except (BenchError, TimeoutError, aiohttp.ClientError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        if not ws.closed:
            await ws.close()
        return result
    # Anything more for this generation on that connection would be a repeat. Watched in the
    # background for a while, so that the lane goes on with its next stream at once.
    bench.background.append(asyncio.create_task(_watch_after_end(ws, result, opts.resume_watch)))
    return result


async def _watch_after_end(
    ws: aiohttp.ClientWebSocketResponse, result: ResumeResult, seconds: float
) -> None:
    deadline = time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0:
            try:
                frame = await _read_frame(ws, left)
            except TimeoutError:
                break
            kind = frame.get("type")
            if frame.get("generation_id") == result.generation_id and kind in (
                "generation.delta",
                *TERMINAL,
            ):
                result.after_terminal += 1
                result.trace.append(
                    f"{result.connections}:after-end:{kind}"
                    + (f":{frame['seq']}" if "seq" in frame else "")
                )
    except (BenchError, aiohttp.ClientError, ValueError):
        pass
    finally:
        if not ws.closed:
            await ws.close()


def _plan(rng: random.Random, opts: Options) -> ResumePlan:
    first = rng.randint(1, opts.tokens - 1)
    points = [first]
    if first < opts.tokens - 1 and rng.random() < opts.resume_twice:
        points.append(rng.randint(first + 1, opts.tokens - 1))
    modes = ["drop" if rng.random() < opts.resume_drop_share else "close" for _ in points]
    return ResumePlan(points, modes)


async def resume(bench: Bench) -> dict[str, Any]:
    opts = bench.options
    conversations = bench.take(opts.resume_concurrency)
    rng = random.Random(opts.seed)
    plans = [_plan(rng, opts) for _ in range(opts.resume_streams)]
    scripted = opts.resume_interval_ms != opts.interval_ms
    if scripted:
        tokens = [f"token{i}" if i == 1 else f" token{i}" for i in range(1, opts.tokens + 1)]
        await bench.fake("DELETE", "/_fake/script")
        await bench.fake(
            "POST",
            "/_fake/script",
            {
                "tokens": tokens,
                "first_token_delay": opts.first_token_ms / 1000,
                "token_interval": opts.resume_interval_ms / 1000,
                "times": opts.resume_streams + 10,
            },
        )
    next_index = itertools.count()
    results: list[ResumeResult] = []

    async def lane(conversation: Conversation) -> None:
        while (i := next(next_index)) < opts.resume_streams:
            results.append(await _resume_one(bench, conversation, i, plans[i]))

    started = time.monotonic()
    try:
        with bench.sampler.phase("resume"):
            await asyncio.gather(*(lane(c) for c in conversations))
    finally:
        if scripted:
            await bench.fake("DELETE", "/_fake/script")
    seconds = time.monotonic() - started
    await asyncio.gather(*bench.background, return_exceptions=True)
    bench.background.clear()
    bench.stack.check_alive()
    ids = [r.generation_id for r in results if r.generation_id is not None]
    saved = await asyncio.to_thread(bench.stack.dbtool, ["verify"], ids)
    text = expected_text(opts.tokens)
    verdicts = [(r, r.verdict(opts.tokens, text, saved.get(str(r.generation_id)))) for r in results]
    failed = [
        {
            "index": r.index,
            "generation_id": r.generation_id,
            "plan": r.plan.points,
            "modes": r.plan.modes,
            "seqs": r.seqs,
            "error": r.error,
            "checks": v,
            "end_type": r.end_type,
            "final_seq": (r.final or {}).get("seq"),
            "saved": saved.get(str(r.generation_id)),
            "trace": r.trace[:60],
        }
        for r, v in verdicts
        if not v["ok"]
    ]
    latencies = [ms for r in results for ms in r.resume_latency_ms]
    await bench.fake("DELETE", "/_fake/requests")
    return {
        "streams": len(results),
        "concurrency": opts.resume_concurrency,
        "interval_ms": opts.resume_interval_ms,
        "seconds": round(seconds, 1),
        "streams_per_second": round(len(results) / seconds, 1) if seconds else None,
        "ok": sum(1 for _, v in verdicts if v["ok"]),
        "errors": sum(1 for r in results if r.error),
        "gaps": sum(v["gaps"] for _, v in verdicts),
        "duplicates": sum(v["duplicates"] for _, v in verdicts),
        "reorders": sum(v["reorders"] for _, v in verdicts),
        "text_mismatch_completed": sum(1 for _, v in verdicts if not v["text_matches_completed"]),
        "text_mismatch_db": sum(1 for _, v in verdicts if not v["text_matches_db"]),
        "text_mismatch_script": sum(1 for _, v in verdicts if not v["text_matches_script"]),
        "terminal_not_once": sum(1 for _, v in verdicts if not v["one_terminal"]),
        "not_completed": sum(1 for _, v in verdicts if not v["completed"]),
        "disconnected_once": sum(1 for r in results if r.disconnects == 1),
        "disconnected_twice": sum(1 for r in results if r.disconnects == 2),
        "disconnects_by_mode": {
            mode: sum(r.plan.modes[: r.disconnects].count(mode) for r in results)
            for mode in ("close", "drop")
        },
        "connections": sum(r.connections for r in results),
        "deltas": sum(len(r.seqs) for r in results),
        "deltas_after_resume": sum(r.after_resume for r in results),
        "resume_latency_ms": summary(latencies),
        "rss_peak_mib": bench.sampler.peak_mib("resume"),
        "channel_backlog_peak": bench.sampler.peak_backlog("resume"),
        "cpu_percent": bench.sampler.cpu_percent("resume"),
        "failures": failed[:100],
    }

"""The measured scenarios. Each returns a JSON-ready dict; run.py puts them side by side.

- sequential: one request at a time, service and direct-LLM alternately (TTFT and gaps);
- history: the same, on conversations whose next message is message 1, 10, 50, 100 of the
  branch (pre-filled in the database), each against a direct request with the worker's own
  body at that length;
- bursts: N websocket streams released at once vs N direct streams at once, for each N (TTFT,
  gaps, seq check, RSS and CPU of the web server and the worker);
- resume: many streams whose clients drop mid-stream and resume on a new connection.

CPU per reply: the CPU seconds of the web server and of the worker (psutil, with children),
read before and after each measured window, summed, divided by the replies completed in the
windows. Websocket connects (ticket + upgrade + ping/pong) and closes are made outside those
windows and measured on their own.
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
    guard_answer,
    service_stream,
)
from bench.sampler import CpuMeter, CpuTally, Sampler
from bench.stack import Stack
from bench.stats import summary
from bench.texts import expected_text, message_content

__all__ = ["Bench", "Options", "bursts", "expected_text", "history", "resume", "sequential"]


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
    history_lengths: list[int] = field(default_factory=lambda: [1, 10, 50, 100])
    history_requests: int = 12  # measured per length
    history_warmup: int = 1  # per length; the first one's LLM request body is the direct body
    bursts: list[int] = field(default_factory=lambda: [20, 50])
    rounds: int = 3
    warmup_rounds: int = 1
    settle: float = 0.3  # after a burst's last reply, before its CPU window closes
    resume_streams: int = 1000
    resume_concurrency: int = 50
    resume_interval_ms: float = 20.0
    resume_twice: float = 0.3
    resume_drop_share: float = 0.5
    resume_watch: float = 1.0  # seconds a finished stream's connection is watched for repeats
    seed: int = 1
    stream_timeout: float = 60.0


@dataclass
class Bench:
    stack: Stack
    sampler: Sampler
    options: Options
    http: aiohttp.ClientSession
    llm: aiohttp.ClientSession
    api: ServiceClient
    meter: CpuMeter
    pool: list[Conversation] = field(default_factory=list)
    history_pool: dict[int, list[Conversation]] = field(default_factory=dict)
    direct_body: bytes = b""
    counter: itertools.count[int] = field(default_factory=itertools.count)
    background: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def llm_completions(self) -> str:
        return f"{self.stack.llm_url}/v1/chat/completions"

    def take(self, count: int) -> list[Conversation]:
        if len(self.pool) < count:
            raise BenchError(f"need {count} conversations, {len(self.pool)} left")
        taken, self.pool = self.pool[:count], self.pool[count:]
        return taken

    def take_history(self, length: int) -> Conversation:
        left = self.history_pool.get(length) or []
        if not left:
            raise BenchError(f"no pre-filled conversation of length {length} left")
        return left.pop(0)

    async def setup(self, users: int, conversations: int, history: dict[int, int]) -> None:
        args = ["seed", "--users", str(users), "--conversations", str(conversations)]
        if history:
            args += ["--history", ",".join(f"{n}:{c}" for n, c in history.items())]
            args += ["--tokens", str(self.options.tokens)]
        seeded = await asyncio.to_thread(self.stack.dbtool, args)
        tokens = {}
        for name in seeded["users"]:
            tokens[name] = await self.api.login(name, "bench-password-0123")
        self.pool = [Conversation(c["id"], tokens[c["user"]]) for c in seeded["conversations"]]
        self.history_pool = {
            int(length): [Conversation(c["id"], tokens[c["user"]]) for c in made]
            for length, made in (seeded.get("history") or {}).items()
        }

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
        if record.guard:
            self.api.count_guard(record.guard)
        return record

    async def direct(
        self, go: asyncio.Event | None = None, body: bytes | None = None
    ) -> StreamRecord:
        return await direct_stream(
            self.llm,
            self.llm_completions,
            body or self.direct_body,
            go=go,
            timeout=self.options.stream_timeout,
        )

    async def connect(
        self, conversation: Conversation, tally: CpuTally | None = None
    ) -> aiohttp.ClientWebSocketResponse:
        """A ready websocket (ticket, upgrade, ping/pong); its CPU goes to `tally`."""
        before = self.meter.read()
        ws = await self.api.connect(conversation.id, conversation.access)
        if tally is not None:
            tally.add(before, self.meter.read())
        return ws

    async def close(self, ws: aiohttp.ClientWebSocketResponse, tally: CpuTally | None) -> None:
        before = self.meter.read()
        await ws.close()
        if tally is not None:
            tally.add(before, self.meter.read())

    async def metered_service(
        self, ws: aiohttp.ClientWebSocketResponse, tally: CpuTally | None
    ) -> StreamRecord:
        """One reply, then the pause; the CPU of both goes to `tally` (the pause lets the
        reply's last writes land in the window)."""
        before = self.meter.read()
        record = await self.service(ws)
        await asyncio.sleep(self.options.pause)
        if tally is not None:
            tally.add(before, self.meter.read(), items=int(_completed(record)))
        return record

    async def fake(self, method: str, path: str, body: Any = None) -> Any:
        async with self.llm.request(method, f"{self.stack.llm_url}{path}", json=body) as resp:
            resp.raise_for_status()
            return await resp.json()

    async def worker_body(self) -> bytes:
        """The last streaming request body the fake LLM received (the worker's), as sent."""
        bodies = await self.fake("GET", "/_fake/requests")
        streamed = [b for b in bodies if isinstance(b, dict) and b.get("stream")]
        if not streamed:
            raise BenchError("the fake LLM saw no streaming request from the worker")
        return json.dumps(streamed[-1]).encode()

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
        self.direct_body = await self.worker_body()
        await self.fake("DELETE", "/_fake/requests")
        for _ in range(count):
            await self.direct()


def _completed(record: StreamRecord) -> bool:
    return record.end_type == "generation.completed" and not record.error


async def idle_cpu(bench: Bench, seconds: float) -> dict[str, Any]:
    """CPU milliseconds per second of the web server and the worker with nothing to do (their
    timers and polls): what a measured window holds besides the replies' own work."""
    await asyncio.sleep(1.0)  # the warm-up's last writes
    before, started = bench.meter.read(), time.monotonic()
    await asyncio.sleep(seconds)
    after, elapsed = bench.meter.read(), time.monotonic() - started
    answer: dict[str, Any] = {
        name: round(1000 * (after[name] - before[name]) / elapsed, 2) for name in after
    }
    answer["seconds"] = round(elapsed, 1)
    return answer


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


def paired(service: list[StreamRecord], direct: list[StreamRecord]) -> dict[str, Any]:
    return summary(
        [
            s.ttft_ms - d.ttft_ms
            for s, d in zip(service, direct, strict=True)
            if s.ttft_ms is not None and d.ttft_ms is not None
        ]
    )


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
        # Streams with fewer deltas than tokens: the server joined tokens that arrived together.
        "joined_streams": sum(1 for r in records if r.seqs and len(r.seqs) < tokens),
        "problems": dict(itertools.islice(bad.items(), 20)),
        "notes": sorted({n for r in records for n in r.notes}),
    }


def _records(service: list[StreamRecord], direct: list[StreamRecord]) -> dict[str, Any]:
    return {"service": [r.to_json() for r in service], "direct": [r.to_json() for r in direct]}


# --- scenario 1: one at a time ----------------------------------------------------------------
async def _pair(
    bench: Bench,
    conversation: Conversation,
    service_first: bool,
    *,
    body: bytes | None = None,
    cpu: CpuTally | None = None,
    connects: CpuTally | None = None,
    closes: CpuTally | None = None,
) -> tuple[StreamRecord, StreamRecord]:
    """A fresh websocket, then a service request and a direct request (in the given order),
    each followed by the pause. Only the service request and its pause are in the CPU window."""
    pause = bench.options.pause
    ws = await bench.connect(conversation, connects)
    try:
        if service_first:
            s = await bench.metered_service(ws, cpu)
            d = await bench.direct(body=body)
            await asyncio.sleep(pause)
        else:
            d = await bench.direct(body=body)
            await asyncio.sleep(pause)
            s = await bench.metered_service(ws, cpu)
    finally:
        await bench.close(ws, closes)
    return s, d


async def sequential(bench: Bench, profile: Any = None) -> dict[str, Any]:
    opts = bench.options
    service: list[StreamRecord] = []
    direct: list[StreamRecord] = []
    fresh: list[bool] = []  # the service request was sent right after connecting
    cpu, connects, closes = CpuTally(), CpuTally(), CpuTally()
    conversations = bench.take(opts.seq_requests + opts.seq_warmup)
    started = time.monotonic()
    with bench.sampler.phase("sequential"):
        for i, conversation in enumerate(conversations):
            measured = i >= opts.seq_warmup
            s, d = await _pair(
                bench,
                conversation,
                service_first=i % 2 == 1,
                cpu=cpu if measured else None,
                connects=connects if measured else None,
                closes=closes if measured else None,
            )
            if measured:
                service.append(s)
                direct.append(d)
                fresh.append(i % 2 == 1)
    result = {
        "requests": len(service),
        "warmup": opts.seq_warmup,
        "seconds": round(time.monotonic() - started, 1),
        "ttft": ttft_table(service, direct),
        "added_paired_ms": paired(service, direct),
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
        "cpu_per_reply_ms": cpu.per_item_ms(),
        "cpu_per_connect_ms": connects.per_item_ms(),
        "cpu_per_close_ms": closes.per_item_ms(),
        "direct_errors": [d.error for d in direct if d.error][:5],
        "records": _records(service, direct),
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


# --- scenario 2: growing history ------------------------------------------------------------
async def history(bench: Bench) -> dict[str, Any]:
    """One request at a time on pre-filled conversations, the lengths interleaved (so that a
    drift of the machine's load hits every length alike), each against a direct request with
    the body the worker sent at that length in the warm-up."""
    opts = bench.options
    lengths = list(opts.history_lengths)
    bodies: dict[int, bytes] = {}
    prompt: dict[int, dict[str, Any]] = {}
    started = time.monotonic()
    for length in lengths:
        for _ in range(max(1, opts.history_warmup)):
            await bench.fake("DELETE", "/_fake/requests")
            ws = await bench.connect(bench.take_history(length))
            try:
                s = await bench.metered_service(ws, None)
                if s.error or not _completed(s):
                    raise BenchError(f"history warm-up at message {length} failed: {s.error}")
                if length not in bodies:
                    # Taken before any direct request of this length goes to the fake LLM.
                    bodies[length] = await bench.worker_body()
                    sent = json.loads(bodies[length]).get("messages") or []
                    prompt[length] = {
                        "messages": len(sent),
                        "body_bytes": len(bodies[length]),
                        "content_bytes": sum(len(str(m.get("content", "")).encode()) for m in sent),
                    }
                await bench.direct(body=bodies[length])
                await asyncio.sleep(opts.pause)
            finally:
                await ws.close()
    await bench.fake("DELETE", "/_fake/requests")
    service: dict[int, list[StreamRecord]] = {n: [] for n in lengths}
    direct: dict[int, list[StreamRecord]] = {n: [] for n in lengths}
    cpu = {n: CpuTally() for n in lengths}
    connects, closes = CpuTally(), CpuTally()
    with bench.sampler.phase("history"):
        for k in range(opts.history_requests):
            for length in lengths:
                s, d = await _pair(
                    bench,
                    bench.take_history(length),
                    service_first=k % 2 == 1,
                    body=bodies[length],
                    cpu=cpu[length],
                    connects=connects,
                    closes=closes,
                )
                service[length].append(s)
                direct[length].append(d)
    by_length: dict[str, dict[str, Any]] = {
        str(n): {
            "prompt": prompt[n],
            "ttft": ttft_table(service[n], direct[n]),
            "added_paired_ms": paired(service[n], direct[n]),
            "stages": stage_table(service[n]),
            "gaps": gap_table(service[n], direct[n], opts.interval_ms),
            "check": seq_check(service[n], opts.tokens),
            "cpu_per_reply_ms": cpu[n].per_item_ms(),
            "direct_errors": [d.error for d in direct[n] if d.error][:5],
            "records": _records(service[n], direct[n]),
        }
        for n in lengths
    }
    first, last = by_length[str(lengths[0])], by_length[str(lengths[-1])]
    p50_first, p50_last = first["ttft"]["added_ms"]["p50"], last["ttft"]["added_ms"]["p50"]
    await bench.fake("DELETE", "/_fake/requests")
    return {
        "lengths": lengths,
        "requests_per_length": opts.history_requests,
        "warmup_per_length": max(1, opts.history_warmup),
        "seconds": round(time.monotonic() - started, 1),
        "by_length": by_length,
        "growth": {
            "from": lengths[0],
            "to": lengths[-1],
            "added_p50_ms": None if p50_first is None or p50_last is None else p50_last - p50_first,
        },
        "cpu_per_connect_ms": connects.per_item_ms(),
        "cpu_per_close_ms": closes.per_item_ms(),
    }


# --- scenario 3: N streams at once ------------------------------------------------------------
async def _service_round(
    bench: Bench,
    conversations: list[Conversation],
    phase: str | None,
    profile: Any = None,
    cpu: CpuTally | None = None,
    connects: CpuTally | None = None,
    closes: CpuTally | None = None,
    label: str = "burst",
) -> list[StreamRecord]:
    """Connect all (outside the CPU window), release every send at once, read every reply to
    its end, wait `settle`, close all (outside the window)."""
    before = bench.meter.read()
    sockets = await asyncio.gather(*(bench.api.connect(c.id, c.access) for c in conversations))
    if connects is not None:
        connects.add(before, bench.meter.read(), items=len(sockets))
    try:
        go = asyncio.Event()
        tasks = [asyncio.create_task(bench.service(ws, go)) for ws in sockets]
        await asyncio.sleep(0.05)  # every task is waiting on `go`
        if profile is not None and profile.start(label):
            await asyncio.sleep(0.5)  # let py-spy attach
            go.set()
            try:
                return list(await asyncio.gather(*tasks))
            finally:
                profile.stop()
        before = bench.meter.read()
        if phase:
            with bench.sampler.phase(phase):
                go.set()
                records = list(await asyncio.gather(*tasks))
        else:
            go.set()
            records = list(await asyncio.gather(*tasks))
        await asyncio.sleep(bench.options.settle)
        if cpu is not None:
            cpu.add(before, bench.meter.read(), items=sum(1 for r in records if _completed(r)))
        return records
    finally:
        before = bench.meter.read()
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
        if closes is not None:
            closes.add(before, bench.meter.read(), items=len(sockets))


async def _direct_round(bench: Bench, count: int) -> list[StreamRecord]:
    go = asyncio.Event()
    tasks = [asyncio.create_task(bench.direct(go)) for _ in range(count)]
    await asyncio.sleep(0.05)
    go.set()
    return list(await asyncio.gather(*tasks))


async def burst(bench: Bench, size: int, profile: Any = None) -> dict[str, Any]:
    """Rounds of `size` service streams released at once, alternating with `size` direct
    streams at once; the first `warmup_rounds` are not counted."""
    opts = bench.options
    conversations = bench.take(size)
    phase = f"burst{size}"
    service: list[StreamRecord] = []
    direct: list[StreamRecord] = []
    cpu, connects, closes = CpuTally(), CpuTally(), CpuTally()
    rounds = []
    started = time.monotonic()
    for r in range(opts.warmup_rounds + opts.rounds):
        measured = r >= opts.warmup_rounds
        tallies: dict[str, Any] = (
            {"phase": phase, "cpu": cpu, "connects": connects, "closes": closes}
            if measured
            else {"phase": None}
        )
        if r % 2 == 0:
            s = await _service_round(bench, conversations, **tallies)
            await asyncio.sleep(0.5)
            d = await _direct_round(bench, size)
        else:
            d = await _direct_round(bench, size)
            await asyncio.sleep(0.5)
            s = await _service_round(bench, conversations, **tallies)
        await asyncio.sleep(0.5)
        bench.stack.check_alive()
        if measured:
            service += s
            direct += d
            rounds.append(ttft_table(s, d)["added_ms"])
    result: dict[str, Any] = {
        "streams": size,
        "rounds": opts.rounds,
        "warmup_rounds": opts.warmup_rounds,
        "seconds": round(time.monotonic() - started, 1),
        "ttft": ttft_table(service, direct),
        "added_by_round_ms": rounds,
        "stages": stage_table(service),
        "gaps": gap_table(service, direct, opts.interval_ms),
        "check": seq_check(service, opts.tokens),
        "cpu_per_reply_ms": cpu.per_item_ms(),
        "cpu_per_connect_ms": connects.per_item_ms(),
        "cpu_per_close_ms": closes.per_item_ms(),
        "direct_errors": [d.error for d in direct if d.error][:5],
        "rss_peak_mib": bench.sampler.peak_mib(phase),
        "channel_backlog_peak": bench.sampler.peak_backlog(phase),
        "cpu_percent": bench.sampler.cpu_percent(phase),
        "records": _records(service, direct),
    }
    if profile is not None:
        # Unmeasured: more rounds of the same load with py-spy attached (after the connects).
        for _ in range(3):
            await _service_round(bench, conversations, None, profile, label=phase)
            await asyncio.sleep(0.5)
        if profile.files:
            result["profile"] = profile.summaries()
    await bench.fake("DELETE", "/_fake/requests")
    return result


async def bursts(bench: Bench, sizes: list[int], profile: Any = None) -> list[dict[str, Any]]:
    """burst() for each size; py-spy (with --profile) on the largest."""
    largest = max(sizes) if sizes else 0
    return [await burst(bench, size, profile if size == largest else None) for size in sizes]


# --- scenario 4: drop and resume --------------------------------------------------------------
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
            # Seqs 1..n, each once, in order; n ≤ tokens as a delta may join several tokens.
            "exact": self.seqs == list(range(1, n + 1)) and 0 < n <= tokens,
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
                code = guard_answer(frame)
                if code:
                    bench.api.count_guard(code)
                    if kind != "safety.flagged":
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
        "joined_streams": sum(1 for r in results if r.seqs and len(r.seqs) < opts.tokens),
        "deltas_after_resume": sum(r.after_resume for r in results),
        "resume_latency_ms": summary(latencies),
        "rss_peak_mib": bench.sampler.peak_mib("resume"),
        "channel_backlog_peak": bench.sampler.peak_backlog("resume"),
        "cpu_percent": bench.sampler.cpu_percent("resume"),
        "failures": failed[:100],
    }

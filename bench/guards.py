"""The guards on and off (issue 9): one stack per guard configuration (both off, content
filtering only, rate limits only, both on), all started before anything is measured, then the
requests one at a time and the largest burst sent to them interleaved, so that a drift of the
machine's load hits every configuration alike.

Order: request (or burst round) k goes to the configurations in row k of a Williams square, so
each configuration is sent first, second, ... equally often and follows each other one equally
often. Every send goes out right after its websocket connected (ping/pong). The direct requests
to the fake LLM (the TTFT baseline, shared by the configurations: their differences do not
depend on it) go after every other round, to each stack's fake LLM in turn.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench import scenarios
from bench.clients import ServiceClient, StreamRecord
from bench.sampler import CpuMeter, CpuTally, Sampler
from bench.stack import GUARDS, ROOT, Stack, StackConfig
from bench.stats import p50_difference_interval, summary

SERIES = ("off", "safety", "limits", "on")
REQUESTS = 60  # measured sequential requests per configuration
WARMUP = 5
USERS = 10


def williams(n: int) -> list[list[int]]:
    """Row orders of n items in which each comes at each place once and, for even n, right
    after each other item once (a Williams design); a rotation for odd n."""
    if n % 2:
        return [[(r + k) % n for k in range(n)] for r in range(n)]
    base = [0]
    for i in range(1, n // 2 + 1):
        base.append(i)
        if len(base) < n:
            base.append(n - i)
    return [[(r + k) % n for k in base] for r in range(n)]


@dataclass
class Member:
    """One configuration's stack and what was measured on it."""

    name: str
    stack: Stack
    sampler: Sampler | None = None
    meter: CpuMeter | None = None
    bench: scenarios.Bench | None = None
    service: list[StreamRecord] = field(default_factory=list)
    cpu: CpuTally = field(default_factory=CpuTally)
    connects: CpuTally = field(default_factory=CpuTally)
    closes: CpuTally = field(default_factory=CpuTally)
    burst_service: list[StreamRecord] = field(default_factory=list)
    burst_rounds: list[list[StreamRecord]] = field(default_factory=list)
    burst_cpu: CpuTally = field(default_factory=CpuTally)
    burst_connects: CpuTally = field(default_factory=CpuTally)
    burst_closes: CpuTally = field(default_factory=CpuTally)

    @property
    def b(self) -> scenarios.Bench:
        assert self.bench is not None
        return self.bench


def _order(names: list[str], k: int) -> list[str]:
    rows = williams(len(names))
    return [names[i] for i in rows[k % len(rows)]]


async def _sequential(
    members: dict[str, Member], opts: scenarios.Options, requests: int
) -> tuple[list[StreamRecord], float]:
    names = list(members)
    direct: list[StreamRecord] = []
    started = time.monotonic()
    conversations = {name: m.b.take(requests + WARMUP) for name, m in members.items()}
    for k in range(WARMUP + requests):
        measured = k >= WARMUP
        for name in _order(names, k):
            m = members[name]
            conversation = conversations[name][k]
            ws = await m.b.connect(conversation, m.connects if measured else None)
            try:
                record = await m.b.metered_service(ws, m.cpu if measured else None)
            finally:
                await m.b.close(ws, m.closes if measured else None)
            if measured:
                m.service.append(record)
        if k % 2 == 1:
            # The fake LLMs are the same program: one baseline for all, from each in turn.
            d = await members[names[(k // 2) % len(names)]].b.direct()
            await asyncio.sleep(opts.pause)
            if measured:
                direct.append(d)
        for m in members.values():
            m.stack.check_alive()
    return direct, time.monotonic() - started


async def _bursts(
    members: dict[str, Member], opts: scenarios.Options, size: int
) -> tuple[list[StreamRecord], float]:
    names = list(members)
    phase = f"burst{size}"
    direct: list[StreamRecord] = []
    started = time.monotonic()
    conversations = {name: m.b.take(size) for name, m in members.items()}
    for k in range(opts.warmup_rounds + opts.rounds):
        measured = k >= opts.warmup_rounds
        for name in _order(names, k):
            m = members[name]
            if measured:
                records = await scenarios._service_round(
                    m.b,
                    conversations[name],
                    phase,
                    cpu=m.burst_cpu,
                    connects=m.burst_connects,
                    closes=m.burst_closes,
                )
                m.burst_service += records
                m.burst_rounds.append(records)
            else:
                await scenarios._service_round(m.b, conversations[name], None)
            await asyncio.sleep(0.5)
            m.stack.check_alive()
        d = await scenarios._direct_round(members[names[k % len(names)]].b, size)
        await asyncio.sleep(0.5)
        if measured:
            direct += d
    return direct, time.monotonic() - started


def _ttfts(records: list[StreamRecord]) -> list[float]:
    return [r.ttft_ms for r in records if r.ttft_ms is not None]


def _difference(part: list[StreamRecord], base: list[StreamRecord]) -> dict[str, Any]:
    """p50 and p95 of TTFT, this configuration minus both-off; with the same direct baseline
    this is also the difference of the added TTFTs. Plus a bootstrap interval of the p50's."""
    mine, theirs = summary(_ttfts(part)), summary(_ttfts(base))
    interval = p50_difference_interval(_ttfts(part), _ttfts(base))
    return {
        "p50": None
        if mine["p50"] is None or theirs["p50"] is None
        else mine["p50"] - theirs["p50"],
        "p95": None
        if mine["p95"] is None or theirs["p95"] is None
        else mine["p95"] - theirs["p95"],
        "p50_interval95": list(interval) if interval else None,
    }


def _analyse(
    members: dict[str, Member],
    opts: scenarios.Options,
    seq_direct: list[StreamRecord],
    burst_direct: list[StreamRecord],
    size: int,
    base_name: str = "off",
) -> dict[str, Any]:
    base = members.get(base_name)
    configs: dict[str, Any] = {}
    for name, m in members.items():
        safety, limits = m.stack.config.content_filtering, m.stack.config.rate_limits
        burst_added = [
            scenarios.ttft_table(records, burst_direct)["added_ms"] for records in m.burst_rounds
        ]
        entry: dict[str, Any] = {
            "content_filtering": safety,
            "rate_limits": limits,
            "sequential": {
                "requests": len(m.service),
                "ttft": scenarios.ttft_table(m.service, seq_direct),
                "stages": scenarios.stage_table(m.service),
                "gaps": scenarios.gap_table(m.service, seq_direct, opts.interval_ms),
                "check": scenarios.seq_check(m.service, opts.tokens),
                "cpu_per_reply_ms": m.cpu.per_item_ms(),
                "cpu_per_connect_ms": m.connects.per_item_ms(),
                "cpu_per_close_ms": m.closes.per_item_ms(),
                "records": {"service": [r.to_json() for r in m.service]},
            },
            "burst": {
                "streams": size,
                "rounds": opts.rounds,
                "warmup_rounds": opts.warmup_rounds,
                "ttft": scenarios.ttft_table(m.burst_service, burst_direct),
                "added_by_round_ms": burst_added,
                "stages": scenarios.stage_table(m.burst_service),
                "gaps": scenarios.gap_table(m.burst_service, burst_direct, opts.interval_ms),
                "check": scenarios.seq_check(m.burst_service, opts.tokens),
                "cpu_per_reply_ms": m.burst_cpu.per_item_ms(),
                "rss_peak_mib": m.sampler.peak_mib(f"burst{size}") if m.sampler else {},
                "cpu_percent": m.sampler.cpu_percent(f"burst{size}") if m.sampler else {},
                "records": {"service": [r.to_json() for r in m.burst_service]},
            },
            "rejections": dict(m.b.api.rejections),
        }
        if base is not None and name != base_name:
            entry["vs_off" if base_name == "off" else "vs_base"] = {
                "sequential": _difference(m.service, base.service),
                "burst": _difference(m.burst_service, base.burst_service),
            }
        configs[name] = entry
    return {
        "configs": configs,
        "direct": {
            "sequential": summary(_ttfts(seq_direct)),
            "burst": summary(_ttfts(burst_direct)),
            "records": {
                "sequential": [r.to_json() for r in seq_direct],
                "burst": [r.to_json() for r in burst_direct],
            },
        },
    }


async def _run(
    members: dict[str, Member],
    opts: scenarios.Options,
    requests: int,
    size: int,
    base_name: str = "off",
    label: str = "guards",
) -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as http,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as llm,
    ):
        for m in members.values():
            assert m.sampler is not None and m.meter is not None
            api = ServiceClient(http, m.stack.web_url, m.stack.ws_url)
            m.bench = scenarios.Bench(m.stack, m.sampler, opts, http, llm, api, m.meter)
            await m.bench.setup(USERS, 3 + requests + WARMUP + size, {})
            await m.bench.warm_up()
        # All stacks idle at once: their CPU at rest, in one window.
        await asyncio.sleep(1.0)
        before = {name: m.b.meter.read() for name, m in members.items()}
        t0 = time.monotonic()
        await asyncio.sleep(4.0)
        elapsed = time.monotonic() - t0
        idle = {
            name: {
                proc: round(1000 * (after - before[name][proc]) / elapsed, 2)
                for proc, after in m.b.meter.read().items()
            }
            for name, m in members.items()
        }
        print(f"[bench] {label}: {requests} requests one at a time, interleaved ...", flush=True)
        seq_direct, seq_seconds = await _sequential(members, opts, requests)
        print(f"[bench] {label}: {size} streams at once, interleaved ...", flush=True)
        burst_direct, burst_seconds = await _bursts(members, opts, size)
    result = _analyse(members, opts, seq_direct, burst_direct, size, base_name)
    result["idle_cpu_ms_per_s"] = idle
    result["seconds_sequential"] = round(seq_seconds, 1)
    result["seconds_burst"] = round(burst_seconds, 1)
    return result


def measure(
    names: list[str],
    opts: scenarios.Options,
    *,
    requests: int,
    size: int,
    server: str,
    log_dir: Path,
    deadline: float,
    on_stack: Any = None,
    roots: dict[str, Path] | None = None,
    base_name: str = "off",
    label: str = "guards",
) -> dict[str, Any]:
    """Start one stack per configuration in `names`, measure them interleaved, stop them; the
    per-configuration results and the differences vs `base_name`.

    A name is a guard configuration of GUARDS, or (with `roots`) a checkout whose code runs,
    with both guards on (bench --compare-code: this change's code beside an older one)."""
    members: dict[str, Member] = {}
    started = time.monotonic()
    try:
        for name in names:
            safety, limits = GUARDS[name] if roots is None else GUARDS["on"]
            stack = Stack(
                StackConfig(
                    tokens=opts.tokens,
                    first_token_ms=opts.first_token_ms,
                    interval_ms=opts.interval_ms,
                    server=server,
                    content_filtering=safety,
                    rate_limits=limits,
                    log_dir=log_dir / f"{label}-{name}",
                    root=ROOT if roots is None else roots[name],
                )
            )
            if on_stack is not None:
                on_stack(stack)
            members[name] = Member(name, stack)
        print(f"[bench] {label}: starting the stacks {', '.join(names)} ...", flush=True)
        # Side by side (start-up is mostly waiting); nothing is measured yet.
        with ThreadPoolExecutor(len(members)) as pool:
            for future in [pool.submit(m.stack.start) for m in members.values()]:
                future.result()
        for m in members.values():
            pids = m.stack.pids()
            m.sampler = Sampler(
                m.stack.service_pids() | {n: pids[n] for n in ("fake_llm", "redis")},
                redis_url=m.stack.redis_url,
            ).start()
            m.meter = CpuMeter(m.stack.service_pids())
        result = asyncio.run(
            asyncio.wait_for(
                _run(members, opts, requests, size, base_name, label),
                timeout=max(1.0, deadline - time.monotonic()),
            )
        )
    finally:
        for m in members.values():
            if m.sampler is not None:
                m.sampler.stop()
        print(f"[bench] {label}: stopping the stacks ...", flush=True)
        for m in members.values():
            m.stack.stop()
    result["order"] = [_order(list(members), k) for k in range(len(members))]
    result["names"] = list(members)
    result["requests"] = requests
    result["warmup"] = WARMUP
    result["server"] = server
    result["seconds"] = round(time.monotonic() - started, 1)
    return result

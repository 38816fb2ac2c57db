"""RSS and CPU of the stack's processes (each with its child processes), sampled every 100 ms,
and the channel-layer backlog: messages waiting in Redis for the web server's consumers.

A daemon thread in the orchestrator: one psutil read per process per tick, microseconds each,
and one ZCARD per process channel key. Scenarios mark phases (monotonic start/end) so peaks
can be read per phase afterwards. The web server's process is named "web" (daphne or uvicorn).

`CpuMeter` reads the CPU time of chosen processes on demand (to charge a measured window's CPU
to the replies completed in it); `CpuTally` adds such windows up.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

MIB = 1024 * 1024


@dataclass
class Sample:
    t: float  # time.monotonic()
    rss: dict[str, int]  # bytes, process + children
    cpu: dict[str, float]  # cumulative user+system seconds, process + children
    backlog: int = 0  # channel-layer messages waiting in Redis (all process channel keys)


@dataclass
class Sampler:
    pids: dict[str, int]
    interval: float = 0.1
    without_children: frozenset[str] = frozenset()
    redis_url: str | None = None
    samples: list[Sample] = field(default_factory=list)
    phases: list[tuple[str, float, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _procs: dict[str, psutil.Process] = field(default_factory=dict)
    backlog_keys_seen: bool = False  # channels_redis' core layer keeps per-process queues

    def start(self) -> Sampler:
        for name, pid in self.pids.items():
            with contextlib.suppress(psutil.Error):
                self._procs[name] = psutil.Process(pid)
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def _read(self, name: str, proc: psutil.Process) -> tuple[int, float]:
        rss, cpu = 0, 0.0
        members = [proc]
        if name not in self.without_children:
            with contextlib.suppress(psutil.Error):
                members += proc.children(recursive=True)
        for member in members:
            with contextlib.suppress(psutil.Error), member.oneshot():
                rss += member.memory_info().rss
                times = member.cpu_times()
                cpu += times.user + times.system
        return rss, cpu

    def _run(self) -> None:
        import redis

        client = redis.Redis.from_url(self.redis_url) if self.redis_url else None
        keys: list[bytes] = []
        next_at = time.monotonic()
        tick = 0
        while not self._stop.is_set():
            now = time.monotonic()
            rss: dict[str, int] = {}
            cpu: dict[str, float] = {}
            for name, proc in self._procs.items():
                rss[name], cpu[name] = self._read(name, proc)
            backlog = 0
            if client is not None:
                try:
                    if tick % 10 == 0:
                        # Process-specific channels of channels_redis: one sorted set per
                        # receiving process (daphne), shared by all of its consumers.
                        keys = [
                            k
                            for k in client.scan_iter(match="*specific.*!", count=1000)
                            if client.type(k) == b"zset"
                        ]
                    if keys:
                        self.backlog_keys_seen = True
                        pipe = client.pipeline(transaction=False)
                        for key in keys:
                            pipe.zcard(key)
                        backlog = sum(int(n) for n in pipe.execute())
                except redis.RedisError:
                    pass
            tick += 1
            self.samples.append(Sample(now, rss, cpu, backlog))
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    # --- phases and readings -----------------------------------------------------------
    @contextlib.contextmanager
    def phase(self, name: str) -> Any:
        start = time.monotonic()
        try:
            yield
        finally:
            self.phases.append((name, start, time.monotonic()))

    def window(self, name: str) -> list[tuple[float, float]]:
        return [(start, end) for phase, start, end in self.phases if phase == name]

    def _in(self, windows: list[tuple[float, float]]) -> list[Sample]:
        return [s for s in self.samples if any(a <= s.t <= b for a, b in windows)]

    def peak_mib(self, phase: str) -> dict[str, float]:
        """Peak RSS in MiB per process over the phase's windows, plus the web+worker total
        (the peak of the sum, sampled at the same tick)."""
        chosen = self._in(self.window(phase))
        if not chosen:
            return {}
        peaks = {name: max(s.rss.get(name, 0) for s in chosen) / MIB for name in chosen[0].rss}
        peaks["web+worker"] = (
            max(s.rss.get("web", 0) + s.rss.get("worker", 0) for s in chosen) / MIB
        )
        if "safety" in chosen[0].rss:
            peaks["web+worker+safety"] = (
                max(s.rss.get("web", 0) + s.rss.get("worker", 0) + s.rss["safety"] for s in chosen)
                / MIB
            )
        return {k: round(v, 1) for k, v in peaks.items()}

    def peak_backlog(self, phase: str) -> int | None:
        """Most channel-layer messages waiting in Redis for the web process at one tick."""
        chosen = self._in(self.window(phase))
        if not chosen or not self.backlog_keys_seen:
            return None  # not sampled, or a channel layer without such queues (pub/sub)
        return max(s.backlog for s in chosen)

    def cpu_percent(self, phase: str) -> dict[str, float]:
        """Average CPU % (100 = one core) per process over the phase's windows."""
        totals: dict[str, float] = {}
        elapsed = 0.0
        for start, end in self.window(phase):
            inside = [s for s in self.samples if start <= s.t <= end]
            if len(inside) < 2:
                continue
            first, last = inside[0], inside[-1]
            elapsed += last.t - first.t
            for name in last.cpu:
                totals[name] = totals.get(name, 0.0) + last.cpu[name] - first.cpu.get(name, 0.0)
        if elapsed <= 0:
            return {}
        return {name: round(100 * used / elapsed, 1) for name, used in totals.items()}

    def series(self) -> dict[str, Any]:
        """The raw samples as lists (seconds from the first sample, MiB), for JSON and plots."""
        if not self.samples:
            return {"t": [], "rss_mib": {}, "backlog": [], "phases": []}
        t0 = self.samples[0].t
        names = list(self.samples[0].rss)
        return {
            "t": [round(s.t - t0, 3) for s in self.samples],
            "rss_mib": {n: [round(s.rss.get(n, 0) / MIB, 2) for s in self.samples] for n in names},
            "backlog": [s.backlog for s in self.samples],
            "phases": [
                {"name": name, "start": round(a - t0, 3), "end": round(b - t0, 3)}
                for name, a, b in self.phases
            ],
        }


def cpu_seconds(proc: psutil.Process) -> float:
    """User + system CPU seconds of `proc`, of its reaped children, and of its live
    descendants (and theirs). Linux accounts it in clock ticks (10 ms): read over windows
    holding many replies, or add many windows up."""
    total = 0.0
    members = [proc]
    with contextlib.suppress(psutil.Error):
        members += proc.children(recursive=True)
    for member in members:
        with contextlib.suppress(psutil.Error):
            times = member.cpu_times()
            total += times.user + times.system + times.children_user + times.children_system
    return total


class CpuMeter:
    """Cumulative CPU seconds of named processes (with children), read when asked. Own
    psutil.Process objects: the sampler thread's are not shared across threads."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}

    def read(self) -> dict[str, float]:
        return {name: cpu_seconds(proc) for name, proc in self.procs.items()}


@dataclass
class CpuTally:
    """CPU seconds per process summed over measured windows, and what the windows held."""

    seconds: dict[str, float] = field(default_factory=dict)
    windows: int = 0
    items: int = 0  # replies completed (or connections made) in the windows

    def add(self, before: dict[str, float], after: dict[str, float], items: int = 1) -> None:
        for name, value in after.items():
            self.seconds[name] = self.seconds.get(name, 0.0) + value - before.get(name, 0.0)
        self.windows += 1
        self.items += items

    def per_item_ms(self) -> dict[str, Any]:
        """CPU milliseconds per item for each process and for web+worker together."""
        if not self.items:
            return {"items": 0}
        answer: dict[str, Any] = {
            name: round(1000 * value / self.items, 2) for name, value in self.seconds.items()
        }
        if "web" in self.seconds and "worker" in self.seconds:
            answer["web+worker"] = round(
                1000 * (self.seconds["web"] + self.seconds["worker"]) / self.items, 2
            )
            if "safety" in self.seconds:
                # The safety worker classifies every send and the live reply for them.
                answer["web+worker+safety"] = round(
                    1000
                    * (self.seconds["web"] + self.seconds["worker"] + self.seconds["safety"])
                    / self.items,
                    2,
                )
        answer["items"] = self.items
        answer["windows"] = self.windows
        answer["total_s"] = round(sum(self.seconds.values()), 3)
        return answer

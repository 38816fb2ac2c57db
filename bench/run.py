"""`python -m bench.run`: start the stack, run the scenarios side by side, write JSON and RESULTS.md.

Scenarios: `ttft` (one request at a time), `concurrent` (N streams at once; also gives the
inter-token gaps under load and the RSS), `resume` (drop + resume). `--only` picks some; a full
run (no --only, no --quick) writes bench/RESULTS.md and bench/ttft.png, others write to
bench/out/. Everything started is stopped on exit, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import shlex
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench import report, scenarios
from bench.clients import ServiceClient
from bench.profiling import Profiler
from bench.sampler import Sampler
from bench.stack import ROOT, Stack, StackConfig

BENCH_DIR = ROOT / "bench"
ALIASES = {
    "ttft": {"ttft"},
    "seq": {"ttft"},
    "sequential": {"ttft"},
    "concurrent": {"concurrent"},
    "streams": {"concurrent"},
    "rss": {"concurrent"},
    "gap": {"ttft", "concurrent"},
    "gaps": {"ttft", "concurrent"},
    "resume": {"resume"},
}
ORDER = ("ttft", "concurrent", "resume")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument(
        "--only", help=f"comma-separated scenarios: {', '.join(sorted(ALIASES))} (default all)"
    )
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument("--requests", type=int, help="sequential requests (default 50)")
    parser.add_argument("--warmup", type=int, help="sequential warm-up requests (default 5)")
    parser.add_argument("--streams", type=int, help="concurrent streams (default 50)")
    parser.add_argument("--rounds", type=int, help="measured concurrent rounds (default 3)")
    parser.add_argument("--resume-streams", type=int, help="drop+resume streams (default 1000)")
    parser.add_argument(
        "--resume-concurrency", type=int, help="drop+resume streams at a time (default 50)"
    )
    parser.add_argument(
        "--resume-interval-ms", type=float, help="LLM interval in the resume scenario (20)"
    )
    parser.add_argument(
        "--resume-twice", type=float, help="share of streams that leave twice (0.3)"
    )
    parser.add_argument("--tokens", type=int, default=35, help="tokens per reply (35)")
    parser.add_argument("--first-token-ms", type=float, default=50.0)
    parser.add_argument("--interval-ms", type=float, default=20.0)
    parser.add_argument("--seed", type=int, default=1, help="random seed of the resume plans")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy daphne and the worker in extra rounds"
    )
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "out", help="raw output dir")
    parser.add_argument("--results", type=Path, help="where to write RESULTS.md")
    parser.add_argument("--report-only", type=Path, help="rewrite the report from a JSON file")
    parser.add_argument("--max-minutes", type=float, default=30.0, help="stop after this long")
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace) -> scenarios.Options:
    opts = scenarios.Options(
        tokens=args.tokens, first_token_ms=args.first_token_ms, interval_ms=args.interval_ms
    )
    if args.quick:
        opts.seq_requests, opts.seq_warmup = 10, 2
        opts.streams, opts.rounds = 10, 1
        opts.resume_streams, opts.resume_concurrency = 40, 10
    opts.resume_interval_ms = args.interval_ms
    for arg, attr in (
        ("requests", "seq_requests"),
        ("warmup", "seq_warmup"),
        ("streams", "streams"),
        ("rounds", "rounds"),
        ("resume_streams", "resume_streams"),
        ("resume_concurrency", "resume_concurrency"),
        ("resume_interval_ms", "resume_interval_ms"),
        ("resume_twice", "resume_twice"),
    ):
        value = getattr(args, arg)
        if value is not None:
            setattr(opts, attr, value)
    opts.seed = args.seed
    return opts


def chosen(only: str | None) -> list[str]:
    if not only:
        return list(ORDER)
    picked: set[str] = set()
    for name in only.split(","):
        name = name.strip().lower()
        if name not in ALIASES:
            raise SystemExit(f"unknown scenario {name!r}; choose from {sorted(ALIASES)}")
        picked |= ALIASES[name]
    return [name for name in ORDER if name in picked]


def conversations_needed(opts: scenarios.Options, which: list[str], profile: bool) -> int:
    count = 3  # warm-up
    if "ttft" in which:
        count += opts.seq_requests + opts.seq_warmup + (20 if profile else 0)
    if "concurrent" in which:
        count += opts.streams
    if "resume" in which:
        count += opts.resume_concurrency
    return count


async def run_scenarios(
    stack: Stack,
    sampler: Sampler,
    opts: scenarios.Options,
    which: list[str],
    profiler: Profiler | None,
    results: dict[str, Any],
) -> None:
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with (
        aiohttp.ClientSession(connector=connector, timeout=timeout) as http,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as llm,
    ):
        bench = scenarios.Bench(
            stack, sampler, opts, http, llm, ServiceClient(http, stack.web_url, stack.ws_url)
        )
        users = max(1, min(10, opts.streams, opts.resume_concurrency))
        await bench.setup(users, conversations_needed(opts, which, profiler is not None))
        await bench.warm_up()
        results["meta"]["direct_body_bytes"] = len(bench.direct_body)
        for name in which:
            print(f"[bench] {name} ...", flush=True)
            started = time.monotonic()
            if name == "ttft":
                results["sequential"] = await scenarios.sequential(bench, profiler)
            elif name == "concurrent":
                results["concurrent"] = await scenarios.concurrent(bench, profiler)
            elif name == "resume":
                results["resume"] = await scenarios.resume(bench)
            stack.check_alive()
            print(f"[bench] {name} done in {time.monotonic() - started:.0f} s", flush=True)


def _sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    full = not args.only and not args.quick
    results_path = args.results or (BENCH_DIR / "RESULTS.md" if full else args.out / "RESULTS.md")
    plot_path = results_path.parent / "ttft.png"
    if args.report_only:
        data = json.loads(args.report_only.read_text())
        report.write_report(data, results_path, plot_path)
        print(f"[bench] wrote {results_path}")
        return 0

    opts = options_from(args)
    which = chosen(args.only)
    args.out.mkdir(parents=True, exist_ok=True)
    stack = Stack(
        StackConfig(
            tokens=opts.tokens,
            first_token_ms=opts.first_token_ms,
            interval_ms=opts.interval_ms,
            log_dir=args.out / "logs",
        )
    )
    atexit.register(stack.stop)
    signal.signal(signal.SIGTERM, _sigterm)
    # Also when started in the background of a non-interactive shell, which ignores SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    command = "python -m bench.run" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
    results: dict[str, Any] = {
        "meta": {
            "started_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
            "command": command,
            "scenarios": which,
            "options": vars(opts),
            "app_code_before": report.app_fingerprint(ROOT),
        }
    }
    started = time.monotonic()
    sampler: Sampler | None = None
    try:
        print("[bench] starting redis, fake LLM, daphne, worker ...", flush=True)
        stack.start()
        pids = stack.pids()
        sampler = Sampler(
            {name: pids[name] for name in ("daphne", "worker", "fake_llm", "redis")}
            | {"bench_clients": os.getpid()},
            without_children=frozenset({"bench_clients"}),
            redis_url=stack.redis_url,
        ).start()
        redis_version = str(stack.redis_info().get("redis_version", "?"))
        profiler = (
            Profiler(args.out, {"daphne": pids["daphne"], "worker": pids["worker"]})
            if args.profile
            else None
        )
        asyncio.run(
            asyncio.wait_for(
                run_scenarios(stack, sampler, opts, which, profiler, results),
                timeout=args.max_minutes * 60,
            )
        )
    finally:
        if sampler is not None:
            sampler.stop()
        print("[bench] stopping the stack ...", flush=True)
        stack.stop()

    results["meta"]["seconds"] = time.monotonic() - started
    results["meta"]["app_code_after"] = report.app_fingerprint(ROOT)
    results["meta"]["machine"] = report.machine_info(redis_version)
    results["rss"] = sampler.series() if sampler else {}
    profiles = {}
    for key in ("sequential", "concurrent"):
        if key in results and "profile" in results[key]:
            profiles[key] = results[key].pop("profile")
    if profiles:
        results["profiles"] = profiles
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    for path in (args.out / "results.json", args.out / f"results-{stamp}.json"):
        path.write_text(json.dumps(results, indent=1))
    report.write_report(results, results_path, plot_path)
    print(f"[bench] wrote {args.out / 'results.json'} and {results_path}")
    for row in report.summary_rows(results):
        print("  " + " | ".join(row))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("[bench] interrupted; everything started was stopped", file=sys.stderr)
        sys.exit(130)

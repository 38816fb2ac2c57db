"""Precision and recall of the content-safety backends on the labelled set in the test fixtures.

`python -m bench.safety_quality [--backend local] [--json]`: classifies every sentence of
tests/fixtures/safety_labelled.jsonl with the backend, judges it at the configured thresholds
(SAFETY_THRESHOLD, default 0.7), and reports precision and recall of "flagged" (any category)
and of each category the backend scores. Only `local` can be measured on a machine without
internet: `openai` and `llama_guard` need a real model, and the fake servers of the tests
answer what they are scripted to, so their figures would mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "safety_labelled.jsonl"
UNMEASURABLE = {
    "openai": "not measured: OpenAI's moderation endpoint is not reachable from this machine",
    "llama_guard": "not measured: no Llama Guard 3 model is served on this machine",
}


@dataclass(frozen=True)
class Labelled:
    text: str
    categories: frozenset[str]


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def add(self, *, expected: bool, predicted: bool) -> None:
        if expected and predicted:
            self.tp += 1
        elif predicted:
            self.fp += 1
        elif expected:
            self.fn += 1
        else:
            self.tn += 1

    @property
    def precision(self) -> float | None:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else None

    @property
    def recall(self) -> float | None:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else None

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "precision": self.precision, "recall": self.recall}


@dataclass
class Report:
    backend: str
    threshold: float
    sentences: int
    flagged: Counts = field(default_factory=Counts)
    per_category: dict[str, Counts] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "threshold": self.threshold,
            "sentences": self.sentences,
            "flagged": self.flagged.as_dict(),
            "per_category": {name: c.as_dict() for name, c in self.per_category.items()},
        }


def load_fixture(path: Path = FIXTURE) -> list[Labelled]:
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            data = json.loads(line)
            rows.append(Labelled(data["text"], frozenset(data["categories"])))
    return rows


def evaluate(
    rows: Sequence[Labelled],
    predicted: Sequence[Iterable[str]],
    *,
    scored: Iterable[str],
    backend: str,
    threshold: float,
) -> Report:
    """Counts of `predicted` (the flagged categories of each row) against the labels; per
    category only for the categories the backend `scored`."""
    report = Report(backend=backend, threshold=threshold, sentences=len(rows))
    report.per_category = {name: Counts() for name in sorted(scored)}
    for row, flagged in zip(rows, predicted, strict=True):
        got = set(flagged)
        report.flagged.add(expected=bool(row.categories), predicted=bool(got))
        for name, counts in report.per_category.items():
            counts.add(expected=name in row.categories, predicted=name in got)
    return report


def measure(backend_name: str, rows: Sequence[Labelled]) -> tuple[Report, list[Any]]:
    """Classify `rows` with the backend (needs Django set up); the report and the verdicts."""
    from django.conf import settings

    from messages_app.safety.backends import load
    from messages_app.safety.categories import judge

    backend = load(backend_name)
    scores = backend.classify([row.text for row in rows])
    verdicts = [judge(s, backend=backend.name) for s in scores]
    scored = {name for s in scores for name in s}
    report = evaluate(
        rows,
        [v.categories for v in verdicts],
        scored=scored,
        backend=backend.name,
        threshold=settings.SAFETY_THRESHOLD,
    )
    return report, verdicts


def _fmt(value: float | None) -> str:
    return "  n/a" if value is None else f"{value:5.2f}"


def render(report: Report) -> str:
    lines = [
        f"backend {report.backend}, threshold {report.threshold:g}, {report.sentences} sentences",
        f"{'':26} {'prec':>5} {'recall':>6}   tp  fp  fn  tn",
    ]
    for name, c in [("flagged (any category)", report.flagged), *report.per_category.items()]:
        lines.append(
            f"{name:26} {_fmt(c.precision)} {_fmt(c.recall):>6}  {c.tp:3} {c.fp:3} {c.fn:3} {c.tn:3}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", default="local", choices=["local", *UNMEASURABLE])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.backend in UNMEASURABLE:
        print(f"{args.backend}: {UNMEASURABLE[args.backend]}", file=sys.stderr)
        return 2
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "messageservice.settings")
    os.environ.setdefault("ENVIRONMENT", "development")
    import django

    django.setup()
    report, _ = measure(args.backend, load_fixture())
    print(json.dumps(report.as_dict()) if args.json else render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

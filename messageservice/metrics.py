"""Prometheus metrics of the service (issue 10). Skeleton: the metrics work fills it in."""

from __future__ import annotations

from typing import Any


def reply_finished(message: Any) -> None:
    """Count a reply that reached a terminal status, in the process that ended it."""


def message_processed(outcome: str) -> None:
    """Count a reply the message processor finished post-processing (messages_processed_total)."""


def start_worker_exporter(kind: str) -> None:
    """In a worker process: serve this process's metrics on METRICS_PORT (0: none)."""

"""`manage.py analytics_backfill [--from DATE] [--to DATE] [--force]`: fill the usage rows from
the message history, hour by hour, resumably (analytics_app.rollups.fill).

Without --from it advances the worker's own fill state ("usage") from where it stands (the
first message's hour on a fresh installation) to the last closed hour: a rerun continues a
killed run, and once done only adds the hours closed since. With --from (and --to, default:
the last closed hour) it recomputes that range under a fill state of its own, named after the
arguments: a rerun with the same arguments continues it, and after it is done does nothing
(but the hours closed since, without --to) unless --force starts it again. --force alone
recomputes everything from the first message.
"""

from __future__ import annotations

from datetime import UTC, datetime, time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.dateparse import parse_date, parse_datetime

from analytics_app import rollups
from analytics_app.models import FillState


def parse_moment(value: str) -> datetime:
    """An ISO date (midnight UTC) or datetime (naive = UTC)."""
    moment = parse_datetime(value)
    if moment is None:
        day = parse_date(value)
        if day is None:
            raise ValueError(value)
        moment = datetime.combine(day, time.min)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


class Command(BaseCommand):
    help = "Fill the usage rollups from the message history (resumable)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--from", dest="start", help="ISO date or datetime (UTC)")
        parser.add_argument("--to", dest="end", help="exclusive; default: the last closed hour")
        parser.add_argument(
            "--force", action="store_true", help="recompute a range that was filled before"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            start = parse_moment(options["start"]) if options["start"] else None
            end = parse_moment(options["end"]) if options["end"] else None
        except ValueError as exc:
            raise CommandError(f"Not an ISO date or datetime: {exc}") from exc
        closed = rollups.fill_to_default()
        if start is None and not options["force"]:
            name = rollups.MAIN
        else:
            start = rollups.floor_hour(start or rollups.epoch())
            # Named after the range asked for: the same command again finds its state.
            until = f"{rollups.floor_hour(end):%Y-%m-%dT%H}" if end else "now"
            name = f"{rollups.MAIN}:backfill:{start:%Y-%m-%dT%H}:{until}"
            if options["force"]:
                FillState.objects.filter(name=name).delete()
        end = rollups.floor_hour(min(end, closed) if end else closed)
        hours = rollups.fill(name, start=start, end=end, on_hour=self._progress)
        state = FillState.objects.get(name=name)
        self.stdout.write(
            f"{name}: {hours} hours recomputed; filled to {state.end_time:%Y-%m-%d %H:%M} UTC"
        )

    def _progress(self, hour: datetime) -> None:
        if hour.hour == 0:
            self.stdout.write(f"  {hour:%Y-%m-%d}")

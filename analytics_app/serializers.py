"""The usage API's input (query parameters) and output shapes."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from typing import Any

from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime
from rest_framework import serializers

from analytics_app.rollups import floor_day
from analytics_app.selectors import GROUP_KEYS, TIME_KEYS

DEFAULT_DAYS = 30
MAX_HOUR_RANGE = timedelta(days=31)
MAX_DAY_RANGE = timedelta(days=366)


def _moment(value: str) -> datetime:
    try:
        moment = parse_datetime(value)
        if moment is None:
            day = parse_date(value)
            if day is None:
                raise ValueError(value)
            moment = datetime.combine(day, time.min)
    except ValueError as exc:
        raise serializers.ValidationError(
            "Not an ISO 8601 date or datetime (UTC unless an offset is given)."
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


class UsageQuerySerializer(serializers.Serializer[Any]):
    """`from`, `to` (exclusive): ISO dates or datetimes, UTC; default the last 30 days (to the
    end of today). `group_by`: comma list of hour|day (at most one; default day), user,
    character, model. `user`: a user id (staff only; others always get their own rows)."""

    from_ = serializers.CharField(required=False, help_text="ISO date or datetime (UTC).")
    to = serializers.CharField(required=False, help_text="ISO date or datetime, exclusive.")
    group_by = serializers.CharField(required=False, allow_blank=True, default="day")
    user = serializers.IntegerField(required=False, min_value=1)

    def get_fields(self) -> dict[str, Any]:
        fields = super().get_fields()
        fields["from"] = fields.pop("from_")
        return fields

    def validate_group_by(self, value: str) -> list[str]:
        keys = [k.strip() for k in value.split(",") if k.strip()] or ["day"]
        unknown = [k for k in keys if k not in GROUP_KEYS]
        if unknown:
            raise serializers.ValidationError(
                f"Unknown group_by {', '.join(unknown)}; use {', '.join(GROUP_KEYS)}."
            )
        if len(set(keys)) != len(keys):
            raise serializers.ValidationError("A group_by key is listed twice.")
        if sum(k in TIME_KEYS for k in keys) > 1:
            raise serializers.ValidationError("Group by hour or by day, not both.")
        return keys

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        errors: dict[str, Any] = {}
        end = start = None
        try:
            if attrs.get("to"):
                end = _moment(attrs["to"])
        except serializers.ValidationError as exc:
            errors["to"] = exc.detail
        try:
            if attrs.get("from"):
                start = _moment(attrs["from"])
        except serializers.ValidationError as exc:
            errors["from"] = exc.detail
        if errors:
            raise serializers.ValidationError(errors)
        if end is None:
            end = floor_day(timezone.now()) + timedelta(days=1)
            if start is not None and start >= end:
                end = start + timedelta(days=1)
        if start is None:
            start = end - timedelta(days=DEFAULT_DAYS)
        if start >= end:
            raise serializers.ValidationError({"from": ["`from` must be before `to`."]})
        keys = attrs.get("group_by") or ["day"]
        interval = "hour" if "hour" in keys else "day"
        limit = MAX_HOUR_RANGE if interval == "hour" else MAX_DAY_RANGE
        if end - start > limit:
            raise serializers.ValidationError(
                {"to": [f"At most {limit.days} days of {interval}ly rows at once."]}
            )
        attrs.update(start=start, end=end, group_by=keys, interval=interval)
        return attrs


class PercentilesSerializer(serializers.Serializer[Any]):
    p50 = serializers.IntegerField(allow_null=True)
    p95 = serializers.IntegerField(allow_null=True)


class UsageMetricsSerializer(serializers.Serializer[Any]):
    user_messages = serializers.IntegerField()
    replies = serializers.IntegerField()
    completed = serializers.IntegerField()
    failed = serializers.IntegerField()
    cancelled = serializers.IntegerField()
    blocked = serializers.IntegerField(help_text="Replies that ended blocked.")
    flagged = serializers.IntegerField(help_text="Messages (user and replies) flagged.")
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    failures = serializers.DictField(
        child=serializers.IntegerField(), help_text="{error code: failed replies}"
    )
    ttft_ms = PercentilesSerializer(help_text="Of completed replies; null values: no sample.")
    total_ms = PercentilesSerializer(help_text="Of completed replies; null values: no sample.")
    thumbs_up = serializers.IntegerField()
    thumbs_down = serializers.IntegerField()


class UsageRowSerializer(UsageMetricsSerializer):
    """A row: the group keys asked for, then the metrics."""

    hour = serializers.DateTimeField(required=False, help_text="With group_by hour.")
    day = serializers.DateField(required=False, help_text="With group_by day.")
    user_id = serializers.IntegerField(required=False)
    username = serializers.CharField(required=False)
    character_id = serializers.IntegerField(required=False)
    character_name = serializers.CharField(required=False)
    model = serializers.CharField(required=False)


class UsageSerializer(serializers.Serializer[Any]):
    from_ = serializers.DateTimeField()
    to = serializers.DateTimeField()
    interval = serializers.ChoiceField(choices=["hour", "day"])
    group_by = serializers.ListField(child=serializers.CharField())
    rows = UsageRowSerializer(many=True)
    totals = UsageMetricsSerializer()

    def get_fields(self) -> dict[str, Any]:
        fields = super().get_fields()
        fields["from"] = fields.pop("from_")
        return fields

"""Moderation: the review queue, moderators' decisions and their append-only audit trail,
violation scores and bans (by a moderator or automatic), user reports, character approval.

Decisions (docs/moderation in the report of issue 9):
- approve: the content is fine. A blocked message goes back to `completed` and the user sees
  it; the message's `safety.flagged`/`categories` are cleared (the classifier's scores stay on
  the message, and the review item and the decision keep what was seen). If the item had been
  counted as a violation, its weight is taken off the user's score again.
- confirm: a violation; adds its weight (1 per item) to the user's violation score, once per
  item however often it is re-decided.
- warn: a confirmed violation (weight as confirm) and one more warning on the user's record.
- ban: a confirmed violation (weight as confirm), and the item's user is banned as asked.
A violation score that passes a threshold of VIOLATION_BAN_THRESHOLDS bans the user
automatically; that is logged as a decision `auto_ban` with no actor. An automatic ban never
shortens a ban in force; a moderator's ban replaces it (the moderator decides).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, Protocol

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from rest_framework import serializers

from analytics_app import events as analytics_events
from messages_app.accounts.revocation import account_group
from messages_app.errors import Banned, Conflict, InvalidInput
from messages_app.models import (
    Character,
    Message,
    ModerationDecision,
    Report,
    ReviewItem,
    UserStanding,
)

logger = logging.getLogger(__name__)

Action = ModerationDecision.Action
# What one confirmed item adds to its user's violation score.
VIOLATION_WEIGHT = 1.0
_VERDICTS = (Action.APPROVE, Action.CONFIRM, Action.WARN, Action.BAN)
_VIOLATIONS = frozenset({Action.CONFIRM, Action.WARN, Action.BAN})
_STATE_OF = {
    Action.APPROVE: ReviewItem.State.APPROVED,
    Action.CONFIRM: ReviewItem.State.CONFIRMED,
    Action.WARN: ReviewItem.State.WARNED,
    Action.BAN: ReviewItem.State.BANNED,
}
_DATETIME = serializers.DateTimeField()


class VerdictLike(Protocol):
    """What a safety check found (messages_app.safety's Verdict is one)."""

    @property
    def categories(self) -> list[str]: ...

    @property
    def scores(self) -> dict[str, float]: ...


@dataclass(frozen=True)
class Ban:
    until: datetime | None  # None when permanent
    permanent: bool
    reason: str

    def as_details(self) -> dict[str, Any]:
        """The `details` of the `banned` error (REST and websocket)."""
        until = (
            None
            if self.permanent or self.until is None
            else _DATETIME.to_representation(self.until)
        )
        return {"until": until, "permanent": self.permanent, "reason": self.reason}


# --- automatic ban thresholds ------------------------------------------------------------------


@dataclass(frozen=True)
class BanThreshold:
    score: float
    duration: timedelta | None  # None: for good


_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@lru_cache(maxsize=8)
def ban_thresholds_parse(spec: str) -> tuple[BanThreshold, ...]:
    """`"3=1d,6=7d,10=forever"` -> thresholds by score. Durations: a number and s, m, h, d or
    w, or `forever`. Empty: no automatic bans. Raises ImproperlyConfigured saying what is wrong.
    """
    thresholds: dict[float, BanThreshold] = {}
    for raw in spec.split(","):
        part = raw.strip().lower()
        if not part:
            continue
        score_text, sep, duration_text = (p.strip() for p in part.partition("="))
        problem = f"VIOLATION_BAN_THRESHOLDS: {raw.strip()!r} is not `score=duration`"
        example = " (for example 3=1d,6=7d,10=forever; units s, m, h, d, w)"
        if not sep:
            raise ImproperlyConfigured(problem + example)
        try:
            score = float(score_text)
        except ValueError as exc:
            raise ImproperlyConfigured(problem + example) from exc
        if not 0 < score < float("inf"):
            raise ImproperlyConfigured(f"{problem}: the score must be a positive number")
        duration: timedelta | None
        if duration_text in ("forever", "permanent"):
            duration = None
        else:
            match = _DURATION.match(duration_text.replace(" ", ""))
            if match is None:
                raise ImproperlyConfigured(problem + example)
            duration = timedelta(seconds=float(match[1]) * _UNIT_SECONDS[match[2]])
            if duration <= timedelta(0):
                raise ImproperlyConfigured(f"{problem}: the duration must be positive")
        if score in thresholds:
            raise ImproperlyConfigured(f"VIOLATION_BAN_THRESHOLDS: score {score:g} given twice")
        thresholds[score] = BanThreshold(score, duration)
    return tuple(sorted(thresholds.values(), key=lambda t: t.score))


def ban_thresholds() -> tuple[BanThreshold, ...]:
    return ban_thresholds_parse(settings.VIOLATION_BAN_THRESHOLDS)


@checks.register()
def _check_ban_thresholds(app_configs: Any, **kwargs: Any) -> list[checks.CheckMessage]:
    """`manage.py check` and `migrate` refuse a malformed VIOLATION_BAN_THRESHOLDS."""
    try:
        ban_thresholds()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="messages_app.E901")]
    return []


# --- bans --------------------------------------------------------------------------------------


def _user_id(user: Any) -> int:
    return user if isinstance(user, int) else int(user.pk)


def active_ban(user: Any) -> Ban | None:
    """The ban in force on `user` (a user or its id), if any: one primary-key query."""
    row = (
        UserStanding.objects.filter(pk=_user_id(user))
        .filter(Q(ban_permanent=True) | Q(banned_until__gt=timezone.now()))
        .values_list("banned_until", "ban_permanent", "ban_reason")
        .first()
    )
    if row is None:
        return None
    until, permanent, reason = row
    return Ban(until=None if permanent else until, permanent=permanent, reason=reason)


def ban_in_force(until: datetime | None, permanent: bool, reason: str) -> Ban | None:
    """The ban a standing's fields describe, if it is in force now (for callers that read
    them in a query of their own)."""
    if permanent:
        return Ban(until=None, permanent=True, reason=reason)
    if until is not None and until > timezone.now():
        return Ban(until=until, permanent=False, reason=reason)
    return None


def banned_error(ban: Ban) -> Banned:
    text = "This account is banned for good." if ban.permanent else "This account is banned."
    return Banned(text, details=ban.as_details())


def ban_check(user: Any) -> None:
    """Raises Banned (403 `banned`) when a ban is in force on `user`."""
    ban = active_ban(user)
    if ban is not None:
        raise banned_error(ban)


def account_banned_send(*, user_id: int, ban: Ban) -> None:
    """Tell every open websocket of `user_id` that it is banned: each answers an `error`
    `banned` and closes with 4403. Best effort, after commit, as account_revoked_send."""
    layer = get_channel_layer()
    if layer is None:
        return
    event = {"type": "account.banned", "ban": ban.as_details()}
    try:
        async_to_sync(layer.group_send)(account_group(user_id), event)
    except Exception:
        logger.warning("could not close the websockets of banned user %s", user_id, exc_info=True)


def _standing_locked(user_id: int) -> UserStanding:
    UserStanding.objects.get_or_create(user_id=user_id)
    return UserStanding.objects.select_for_update().get(pk=user_id)


def _ban_validate(until: datetime | None, permanent: bool) -> None:
    if permanent:
        return
    if until is None:
        raise InvalidInput("A ban needs an end time, or permanent.", code="ban_until_required")
    if timezone.is_naive(until):
        raise InvalidInput("The ban's end time must carry a time zone.", code="ban_until_naive")
    if until <= timezone.now():
        raise InvalidInput("The ban's end time is in the past.", code="ban_until_past")


def _ban_set(
    standing: UserStanding, *, until: datetime | None, permanent: bool, reason: str
) -> Ban:
    standing.banned_until = None if permanent else until
    standing.ban_permanent = permanent
    standing.ban_reason = reason
    ban = Ban(until=standing.banned_until, permanent=permanent, reason=reason)
    user_id = standing.user_id
    transaction.on_commit(lambda: account_banned_send(user_id=user_id, ban=ban))
    return ban


def _actor_name(actor: Any) -> str:
    return actor.get_username() if actor is not None else ""


def user_ban(user: Any, *, until: datetime | None, permanent: bool, reason: str, actor: Any) -> Ban:
    """Ban `user` until `until` (aware, future) or for good, replacing any ban in force.

    Logged as a decision `ban`; the user's open websockets close after commit.
    """
    _ban_validate(until, permanent)
    with transaction.atomic():
        standing = _standing_locked(user.pk)
        ban = _ban_set(standing, until=until, permanent=permanent, reason=reason)
        standing.save()
        ModerationDecision.objects.create(
            actor=actor,
            actor_name=_actor_name(actor),
            action=Action.BAN,
            subject=user,
            subject_name=user.get_username(),
            reason=reason,
            violation_score=standing.violation_score,
            banned_until=standing.banned_until,
            ban_permanent=permanent,
        )
    return ban


def user_unban(user: Any, *, actor: Any, reason: str = "") -> None:
    """Lift the ban on `user` (the violation score stays). Logged as a decision `unban`."""
    with transaction.atomic():
        standing = _standing_locked(user.pk)
        standing.banned_until = None
        standing.ban_permanent = False
        standing.ban_reason = ""
        standing.save()
        ModerationDecision.objects.create(
            actor=actor,
            actor_name=_actor_name(actor),
            action=Action.UNBAN,
            subject=user,
            subject_name=user.get_username(),
            reason=reason,
            violation_score=standing.violation_score,
        )


def _auto_ban(standing: UserStanding, *, before: float, subject: Any) -> None:
    """Ban automatically when the score passed a threshold (the highest one passed), never
    shortening a ban in force; logged as `auto_ban` with no actor."""
    after = standing.violation_score
    passed = [t for t in ban_thresholds() if before < t.score <= after]
    if not passed:
        return
    threshold = passed[-1]
    if threshold.duration is None:
        until, permanent = None, True
    else:
        # The standing as it is in this transaction (a moderator's ban may be unsaved yet).
        until, permanent = timezone.now() + threshold.duration, False
        if standing.ban_permanent:
            until, permanent = None, True
        elif standing.banned_until is not None and standing.banned_until > until:
            until = standing.banned_until
    reason = f"Violation score {after:g} reached the threshold {threshold.score:g}."
    _ban_set(standing, until=until, permanent=permanent, reason=reason)
    ModerationDecision.objects.create(
        actor=None,
        action=Action.AUTO_BAN,
        subject=subject,
        subject_name=subject.get_username() if subject is not None else "",
        reason=reason,
        violation_score=after,
        banned_until=standing.banned_until,
        ban_permanent=permanent,
    )


# --- the review queue --------------------------------------------------------------------------


def review_record(
    message: Message,
    *,
    source: str,
    verdict: VerdictLike | None = None,
    blocked: bool = False,
) -> ReviewItem:
    """Create or update the one review item of `message`.

    The item snapshots the content, role, whose content it is (the author of a user message,
    the conversation's owner for a reply) and the character. A verdict's scores merge into the
    item's (highest per category); without one, the message's own safety fields are used. A
    report adds one to `reports` and puts a decided item back in the queue (pending).
    """
    if source not in ReviewItem.Source.values:
        raise ValueError(f"unknown review source {source!r}")
    if verdict is not None:
        categories = [str(c) for c in verdict.categories]
        scores = {str(k): float(v) for k, v in verdict.scores.items()}
    else:
        categories = [str(c) for c in message.safety_categories or []]
        scores = {str(k): float(v) for k, v in (message.safety_scores or {}).items()}
    conversation = message.conversation
    user_id = message.author_id if message.role == Message.Role.USER else conversation.owner_id
    is_report = source == ReviewItem.Source.REPORT
    with transaction.atomic():
        item = ReviewItem.objects.select_for_update().filter(message=message).first()
        if item is None:
            try:
                with transaction.atomic():
                    return ReviewItem.objects.create(
                        message=message,
                        source=source,
                        user_id=user_id,
                        character_id=conversation.character_id,
                        role=message.role,
                        content=message.content,
                        blocked=blocked,
                        categories=categories,
                        scores=scores,
                        max_score=max(scores.values(), default=0.0),
                        reports=1 if is_report else 0,
                    )
            except IntegrityError:
                # Recorded meanwhile (a concurrent report or check): update that one.
                item = ReviewItem.objects.select_for_update().get(message=message)
        merged = dict(item.scores)
        for name, score in scores.items():
            merged[name] = max(score, merged.get(name, 0.0))
        item.scores = merged
        item.categories = sorted(
            set(item.categories) | set(categories), key=lambda c: (-merged.get(c, 0.0), c)
        )
        item.max_score = max(merged.values(), default=0.0)
        item.content = message.content
        item.blocked = item.blocked or blocked
        if is_report:
            item.reports += 1
            if item.state != ReviewItem.State.PENDING:
                item.state = ReviewItem.State.PENDING
                item.decided_at = None
                item.decided_by = None
        item.save()
        return item


def report_create(*, message: Message, reporter: Any, reason: str) -> Report:
    """`reporter` reports `message` (which they can see): the message joins the queue.

    Raises Conflict `already_reported` on a second report of the same message by the same
    user (the unique constraint decides, so concurrent repeats cannot both pass).
    """
    with transaction.atomic():
        try:
            with transaction.atomic():
                report = Report.objects.create(message=message, reporter=reporter, reason=reason)
        except IntegrityError:
            if Report.objects.filter(message=message, reporter=reporter).exists():
                raise Conflict(
                    "You have already reported this message.", code="already_reported"
                ) from None
            raise
        review_record(message, source=ReviewItem.Source.REPORT)
    return report


def _counted_items(item_ids: list[int]) -> tuple[set[int], set[int]]:
    """Of `item_ids`, those whose latest verdict counted as a violation, and those whose
    latest verdict was a warning. One query."""
    latest: dict[int, str] = {}
    rows = (
        ModerationDecision.objects.filter(review_item_id__in=item_ids, action__in=_VERDICTS)
        .order_by("review_item_id", "-created_at", "-id")
        .values_list("review_item_id", "action")
    )
    for item_id, action in rows:
        latest.setdefault(item_id, action)
    counted = {i for i, a in latest.items() if a in _VIOLATIONS}
    warned = {i for i, a in latest.items() if a == Action.WARN}
    return counted, warned


def decide(
    items: Iterable[ReviewItem],
    *,
    action: str,
    actor: Any,
    reason: str = "",
    until: datetime | None = None,
    permanent: bool = False,
) -> list[ModerationDecision]:
    """Apply one decision (approve, confirm, warn or ban) to many review items at once.

    Writes one ModerationDecision per item (who, when, what, why, the categories and scores
    seen, the user's violation score after it) and, for a threshold passed, one `auto_ban`
    per user. `until`/`permanent` are the ban's (action ban only). Atomic; items and the
    users' standings are locked, so two moderators deciding the same item count it once.
    """
    if action not in _VERDICTS:
        raise InvalidInput(f"Unknown moderation action {action!r}.", code="bad_action")
    if action == Action.BAN:
        _ban_validate(until, permanent)
    ids = sorted({item.pk for item in items})
    decisions: list[ModerationDecision] = []
    now = timezone.now()
    with transaction.atomic():
        locked = list(ReviewItem.objects.select_for_update().filter(pk__in=ids).order_by("pk"))
        counted, warned = _counted_items(ids)
        users = get_user_model()._default_manager.in_bulk(
            {i.user_id for i in locked if i.user_id is not None}
        )
        by_user: dict[int | None, list[ReviewItem]] = {}
        for item in locked:
            by_user.setdefault(item.user_id, []).append(item)
        for user_id in sorted(by_user, key=lambda u: (u is None, u or 0)):
            subject = users.get(user_id) if user_id is not None else None
            standing = _standing_locked(subject.pk) if subject is not None else None
            before = standing.violation_score if standing is not None else 0.0
            if standing is not None and action == Action.BAN:
                _ban_set(standing, until=until, permanent=permanent, reason=reason)
            for item in by_user[user_id]:
                if standing is not None:
                    if action == Action.APPROVE and item.pk in counted:
                        standing.violation_score = max(
                            0.0, standing.violation_score - VIOLATION_WEIGHT
                        )
                    elif action in _VIOLATIONS and item.pk not in counted:
                        standing.violation_score += VIOLATION_WEIGHT
                    if action == Action.WARN and item.pk not in warned:
                        standing.warnings += 1
                item.state = _STATE_OF[Action(action)]
                item.decided_at = now
                item.decided_by = actor
                item.save(update_fields=["state", "decided_at", "decided_by"])
                decisions.append(
                    ModerationDecision.objects.create(
                        actor=actor,
                        actor_name=_actor_name(actor),
                        action=action,
                        subject=subject,
                        subject_name=subject.get_username() if subject is not None else "",
                        review_item=item,
                        message_id_seen=item.message_id,
                        character_id=item.character_id,
                        reason=reason,
                        categories=item.categories,
                        scores=item.scores,
                        violation_score=(
                            standing.violation_score if standing is not None else None
                        ),
                        banned_until=(
                            standing.banned_until
                            if standing is not None and action == Action.BAN
                            else None
                        ),
                        ban_permanent=bool(permanent) if action == Action.BAN else False,
                    )
                )
            if standing is not None:
                _auto_ban(standing, before=before, subject=subject)
                standing.save()
        if action == Action.APPROVE:
            _messages_approve([i.message_id for i in locked if i.message_id is not None], now)
    return decisions


def _messages_approve(message_ids: list[int], now: datetime) -> None:
    """Approved content is shown again: blocked -> completed, the safety flag cleared."""
    Message.objects.filter(pk__in=message_ids, status=Message.Status.BLOCKED).update(
        status=Message.Status.COMPLETED, updated_at=now
    )
    Message.objects.filter(pk__in=message_ids).update(
        safety_flagged=False, safety_categories=[], updated_at=now
    )
    analytics_events.messages_changed(message_ids)


# --- characters --------------------------------------------------------------------------------


def _characters_decide(
    characters: Iterable[Character], *, approval: str, action: str, actor: Any, reason: str
) -> int:
    ids = sorted({c.pk for c in characters})
    with transaction.atomic():
        locked = list(Character.objects.select_for_update().filter(pk__in=ids).order_by("pk"))
        owners = get_user_model()._default_manager.in_bulk(
            {c.owner_id for c in locked if c.owner_id is not None}
        )
        for character in locked:
            character.approval = approval
            character.save(update_fields=["approval", "updated_at"])
            owner = owners.get(character.owner_id) if character.owner_id else None
            ModerationDecision.objects.create(
                actor=actor,
                actor_name=_actor_name(actor),
                action=action,
                subject=owner,
                subject_name=owner.get_username() if owner is not None else "",
                character=character,
                reason=reason,
            )
    return len(locked)


def character_approve(characters: Iterable[Character], *, actor: Any, reason: str = "") -> int:
    """Approve public characters (others may see them); one decision each. The count."""
    return _characters_decide(
        characters,
        approval=Character.Approval.APPROVED,
        action=Action.APPROVE_CHARACTER,
        actor=actor,
        reason=reason,
    )


def character_reject(characters: Iterable[Character], *, actor: Any, reason: str = "") -> int:
    """Reject characters (only their owners see them); one decision each. The count."""
    return _characters_decide(
        characters,
        approval=Character.Approval.REJECTED,
        action=Action.REJECT_CHARACTER,
        actor=actor,
        reason=reason,
    )


# --- the moderator role ------------------------------------------------------------------------

MODERATORS_GROUP = "Moderators"
# Exactly what moderators need (the data migration 0006 grants the same list):
# the queue and standings to decide (change: admin actions need it; every field is read-only
# in the admin), the audit trail and reports to read, messages and conversations to see
# context, characters to approve (their fields stay read-only for non-superusers), and limit
# overrides to read only: raising a quota spends the service's money, an operator's call.
MODERATOR_PERMISSIONS: tuple[str, ...] = (
    "view_reviewitem",
    "change_reviewitem",
    "view_moderationdecision",
    "view_report",
    "view_userstanding",
    "change_userstanding",
    "view_message",
    "view_conversation",
    "view_character",
    "change_character",
    "view_limitoverride",
)


def moderators_group_ensure() -> Group:
    """The Moderators group with exactly MODERATOR_PERMISSIONS (created if missing)."""
    group, _ = Group.objects.get_or_create(name=MODERATORS_GROUP)
    permissions = Permission.objects.filter(
        content_type__app_label="messages_app", codename__in=MODERATOR_PERMISSIONS
    )
    group.permissions.set(permissions)
    return group

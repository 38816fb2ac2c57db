"""Moderation services: the review queue, decisions and their audit trail, violation scores,
automatic bans, bans, character approval and the moderator role."""

from __future__ import annotations

import importlib
from datetime import timedelta

import pytest
from django.apps import apps as django_apps
from django.contrib.auth.models import Group
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.utils import timezone

from messages_app import moderation
from messages_app.errors import Banned, InvalidInput
from messages_app.models import Character, Message, ModerationDecision, ReviewItem, UserStanding
from tests.moderation_helpers import (
    Verdict,
    ban_of,
    make_character,
    make_moderator,
    make_user,
    message_of,
    queued,
    reply,
    user_message,
)

pytestmark = pytest.mark.django_db(transaction=True)

A = ModerationDecision.Action


@pytest.fixture
def mod(db):
    return make_moderator()


def standing(user) -> UserStanding:
    return UserStanding.objects.get(pk=user.pk)


# --- review_record -------------------------------------------------------------------------


def test_review_record_snapshots_a_user_message_with_its_author_and_the_verdict(conversation, user):
    message = user_message(conversation, "you idiot", status=Message.Status.BLOCKED)
    verdict = Verdict(["harassment", "hate"], {"harassment": 0.91, "hate": 0.4, "sexual": 0.01})
    item = moderation.review_record(message, source="input", verdict=verdict, blocked=True)
    item.refresh_from_db()
    assert (item.message_id, item.user_id, item.character_id) == (
        message.pk,
        user.pk,
        conversation.character_id,
    )
    assert (item.source, item.state, item.role, item.content) == (
        "input",
        "pending",
        "user",
        "you idiot",
    )
    assert item.blocked and item.categories == ["harassment", "hate"]
    assert item.scores == {"harassment": 0.91, "hate": 0.4, "sexual": 0.01}
    assert item.max_score == pytest.approx(0.91)


def test_a_reply_is_attributed_to_the_conversation_owner(conversation, user):
    message = reply(conversation, "violent words")
    item = moderation.review_record(
        message, source="output", verdict=Verdict(["violence"], {"violence": 0.8}), blocked=True
    )
    assert item.user_id == user.pk and item.role == "assistant"


def test_one_item_per_message_and_a_second_verdict_merges_scores(conversation):
    message = user_message(conversation)
    moderation.review_record(message, source="input", verdict=Verdict(["hate"], {"hate": 0.8}))
    item = moderation.review_record(
        message,
        source="output",
        verdict=Verdict(["violence"], {"violence": 0.95, "hate": 0.2}),
        blocked=True,
    )
    assert ReviewItem.objects.count() == 1
    assert item.source == "input" and item.blocked
    assert item.scores == {"hate": 0.8, "violence": 0.95}
    assert item.categories == ["violence", "hate"]  # by score, highest first
    assert item.max_score == pytest.approx(0.95)


def test_a_report_bumps_a_queued_item_and_puts_a_decided_one_back_in_the_queue(conversation, mod):
    (item,) = queued(conversation)
    message = message_of(item)
    assert moderation.review_record(message, source="report").reports == 1
    moderation.decide([item], action=A.APPROVE, actor=mod)
    item.refresh_from_db()
    assert item.state == "approved" and item.decided_by == mod
    again = moderation.review_record(message, source="report")
    assert (again.state, again.reports, again.decided_at) == ("pending", 2, None)
    # A new safety verdict (not a report) leaves a decided item decided.
    moderation.decide([item], action=A.CONFIRM, actor=mod)
    moderation.review_record(message, source="output", verdict=Verdict(["hate"], {"hate": 0.9}))
    item.refresh_from_db()
    assert item.state == "confirmed"


def test_a_report_without_a_verdict_takes_the_messages_own_safety_fields(conversation):
    message = user_message(
        conversation,
        safety_flagged=True,
        safety_categories=["sexual"],
        safety_scores={"sexual": 0.75},
    )
    item = moderation.review_record(message, source="report")
    assert (item.categories, item.scores, item.reports) == (["sexual"], {"sexual": 0.75}, 1)


# --- decisions -------------------------------------------------------------------------------


def test_approve_unblocks_many_messages_at_once_and_records_each_decision(conversation, mod):
    items = queued(conversation, 3, categories=("hate",), score=0.88)
    decisions = moderation.decide(items, action=A.APPROVE, actor=mod, reason="fine in context")
    assert len(decisions) == 3
    for item in items:
        message = message_of(item)
        assert message.status == "completed"
        assert not message.safety_flagged and message.safety_categories == []
        assert ReviewItem.objects.get(pk=item.pk).state == "approved"
    rows = ModerationDecision.objects.filter(action="approve").order_by("id")
    assert [r.review_item_id for r in rows] == [i.pk for i in items]
    first = rows[0]
    assert (first.actor, first.actor_name, first.reason) == (mod, "mod", "fine in context")
    assert (first.subject_name, first.message_id_seen) == ("alice", items[0].message_id)
    assert first.categories == ["hate"] and first.scores == {"hate": 0.88}
    assert first.created_at is not None


def test_confirm_adds_one_per_item_once_and_approve_takes_it_back(conversation, user, mod):
    items = queued(conversation, 2)
    moderation.decide(items, action=A.CONFIRM, actor=mod)
    assert standing(user).violation_score == 2
    moderation.decide(items, action=A.CONFIRM, actor=mod)  # re-confirming counts nothing more
    assert standing(user).violation_score == 2
    moderation.decide(items[:1], action=A.APPROVE, actor=mod)
    assert standing(user).violation_score == 1
    scores = list(
        ModerationDecision.objects.order_by("id").values_list("action", "violation_score")
    )
    assert scores == [
        ("confirm", 1),
        ("confirm", 2),
        ("confirm", 2),
        ("confirm", 2),
        ("approve", 1),
    ]
    # Confirmed content stays as it was (blocked here).
    assert message_of(items[1]).status == "blocked"


def test_warn_counts_a_violation_and_a_warning(conversation, user, mod):
    items = queued(conversation, 2)
    moderation.decide(items, action=A.WARN, actor=mod, reason="first warning")
    record = standing(user)
    assert (record.violation_score, record.warnings) == (2, 2)
    assert ReviewItem.objects.filter(state="warned").count() == 2
    moderation.decide(items, action=A.WARN, actor=mod)  # the same items again: no more
    assert (standing(user).violation_score, standing(user).warnings) == (2, 2)


def test_ban_action_bans_the_items_users_with_a_reason(
    conversation, user, other_user, character, mod
):
    from messages_app.services import conversation_create

    theirs = conversation_create(owner=other_user, character=character)
    items = queued(conversation, 2) + queued(theirs, 1)
    until = timezone.now() + timedelta(days=2)
    decisions = moderation.decide(items, action=A.BAN, actor=mod, reason="spam", until=until)
    assert len(decisions) == 3 and {d.action for d in decisions} == {"ban"}
    assert all(d.banned_until == until and not d.ban_permanent for d in decisions)
    for who in (user, other_user):
        ban = moderation.active_ban(who)
        assert ban is not None and ban.until == until and ban.reason == "spam"
    assert standing(user).violation_score == 2 and standing(other_user).violation_score == 1


def test_a_ban_needs_a_future_end_or_permanent(conversation, mod):
    items = queued(conversation)
    with pytest.raises(InvalidInput):
        moderation.decide(items, action=A.BAN, actor=mod, reason="x")
    with pytest.raises(InvalidInput):
        moderation.decide(
            items, action=A.BAN, actor=mod, until=timezone.now() - timedelta(minutes=1)
        )
    with pytest.raises(InvalidInput):
        moderation.decide(items, action="delete", actor=mod)
    assert ModerationDecision.objects.count() == 0


# --- automatic bans ----------------------------------------------------------------------------


def test_passing_a_threshold_bans_automatically_logged_with_no_actor(conversation, user, mod):
    items = queued(conversation, 3)
    moderation.decide(items[:2], action=A.CONFIRM, actor=mod)
    assert moderation.active_ban(user) is None
    before = timezone.now()
    moderation.decide(items[2:], action=A.CONFIRM, actor=mod)
    auto = ModerationDecision.objects.get(action="auto_ban")
    assert auto.actor is None and auto.actor_name == "" and auto.subject == user
    assert auto.violation_score == 3 and not auto.ban_permanent
    assert auto.banned_until is not None
    assert before + timedelta(days=1) <= auto.banned_until <= timezone.now() + timedelta(days=1)
    assert "3" in auto.reason
    ban = moderation.active_ban(user)
    assert ban is not None and ban.until == auto.banned_until


def test_many_thresholds_passed_at_once_apply_the_highest_once(conversation, user, mod, settings):
    settings.VIOLATION_BAN_THRESHOLDS = "3=1d,6=7d,10=forever"
    moderation.decide(queued(conversation, 7), action=A.CONFIRM, actor=mod)
    (auto,) = ModerationDecision.objects.filter(action="auto_ban")
    assert auto.banned_until is not None and auto.banned_until > timezone.now() + timedelta(
        days=6, hours=23
    )
    moderation.decide(queued(conversation, 3), action=A.WARN, actor=mod)
    forever = ModerationDecision.objects.filter(action="auto_ban").latest("id")
    assert forever.ban_permanent and forever.banned_until is None
    ban = moderation.active_ban(user.pk)
    assert ban is not None and ban.permanent and ban.as_details()["until"] is None


def test_an_automatic_ban_never_shortens_a_longer_ban(conversation, user, mod):
    until = timezone.now() + timedelta(days=30)
    moderation.user_ban(user, until=until, permanent=False, reason="manual", actor=mod)
    moderation.decide(queued(conversation, 3), action=A.CONFIRM, actor=mod)
    assert ban_of(user).until == until
    assert ModerationDecision.objects.get(action="auto_ban").banned_until == until


def test_no_thresholds_means_no_automatic_bans(conversation, user, mod, settings):
    settings.VIOLATION_BAN_THRESHOLDS = ""
    moderation.decide(queued(conversation, 4), action=A.CONFIRM, actor=mod)
    assert moderation.active_ban(user) is None


def test_thresholds_parse_robustly():
    parse = moderation.ban_thresholds_parse
    assert parse(" 6 = 7d , 3=1D,10=forever,") == (
        moderation.BanThreshold(3.0, timedelta(days=1)),
        moderation.BanThreshold(6.0, timedelta(days=7)),
        moderation.BanThreshold(10.0, None),
    )
    assert parse("2.5=90m,4=2w") == (
        moderation.BanThreshold(2.5, timedelta(minutes=90)),
        moderation.BanThreshold(4.0, timedelta(weeks=2)),
    )
    assert parse("") == ()
    for bad in ("3", "3=1x", "x=1d", "-1=1d", "0=1d", "3=1d,3=2d", "3=0d", "3=", "inf=1d"):
        with pytest.raises(ImproperlyConfigured, match="VIOLATION_BAN_THRESHOLDS"):
            parse(bad)


def test_a_malformed_threshold_setting_fails_the_system_check(settings, capsys):
    settings.VIOLATION_BAN_THRESHOLDS = "3=1 day"
    with pytest.raises(Exception, match="VIOLATION_BAN_THRESHOLDS"):
        call_command("check")


# --- bans --------------------------------------------------------------------------------------


def test_ban_unban_and_the_ban_check(user, mod):
    assert moderation.active_ban(user) is None
    until = timezone.now() + timedelta(hours=1)
    moderation.user_ban(user, until=until, permanent=False, reason="cool off", actor=mod)
    with pytest.raises(Banned) as raised:
        moderation.ban_check(user)
    assert raised.value.status_code == 403 and raised.value.code == "banned"
    details = raised.value.details
    assert details["permanent"] is False and details["reason"] == "cool off"
    assert details["until"].startswith(until.strftime("%Y-%m-%dT%H:%M:%S"))
    moderation.user_unban(user, actor=mod, reason="appeal accepted")
    moderation.ban_check(user)
    assert list(ModerationDecision.objects.order_by("id").values_list("action", "reason")) == [
        ("ban", "cool off"),
        ("unban", "appeal accepted"),
    ]


def test_an_expired_ban_is_not_in_force(user, mod):
    moderation.user_ban(
        user, until=timezone.now() + timedelta(hours=1), permanent=False, reason="r", actor=mod
    )
    UserStanding.objects.filter(pk=user.pk).update(
        banned_until=timezone.now() - timedelta(seconds=1)
    )
    assert moderation.active_ban(user) is None
    moderation.ban_check(user)


def test_active_ban_is_one_query(user, mod, django_assert_num_queries):
    moderation.user_ban(user, until=None, permanent=True, reason="gone", actor=mod)
    with django_assert_num_queries(1):
        assert ban_of(user.pk).permanent


# --- the audit trail is append-only -------------------------------------------------------------


def test_a_saved_decision_cannot_be_changed_or_deleted(conversation, mod):
    (decision,) = moderation.decide(queued(conversation), action=A.CONFIRM, actor=mod)
    decision.reason = "rewritten"
    with pytest.raises(ValueError, match="append-only"):
        decision.save()
    with pytest.raises(ValueError, match="append-only"):
        decision.delete()
    assert ModerationDecision.objects.get().reason == ""


# --- characters ----------------------------------------------------------------------------------


def test_character_approval_and_rejection_are_recorded(mod):
    owner = make_user(username="author")
    good, bad = make_character(owner=owner), make_character(owner=owner)
    assert moderation.character_approve([good], actor=mod) == 1
    assert moderation.character_reject([bad], actor=mod, reason="sexual persona") == 1
    assert Character.objects.get(pk=good.pk).approval == "approved"
    assert Character.objects.get(pk=bad.pk).approval == "rejected"
    rows = ModerationDecision.objects.order_by("id")
    assert [(r.action, r.character_id, r.subject, r.reason) for r in rows] == [
        ("approve_character", good.pk, owner, ""),
        ("reject_character", bad.pk, owner, "sexual persona"),
    ]


# --- the moderator role --------------------------------------------------------------------------


def test_the_migration_gives_moderators_exactly_the_listed_permissions(db):
    migration = importlib.import_module("messages_app.migrations.0006_moderators_group")
    assert tuple(migration.MODERATOR_PERMISSIONS) == moderation.MODERATOR_PERMISSIONS
    Group.objects.filter(name="Moderators").delete()
    migration.create_moderators(django_apps, None)
    group = Group.objects.get(name="Moderators")
    granted = set(group.permissions.values_list("content_type__app_label", "codename"))
    assert granted == {("messages_app", c) for c in moderation.MODERATOR_PERMISSIONS}
    migration.remove_moderators(django_apps, None)
    assert not Group.objects.filter(name="Moderators").exists()


def test_seed_demo_creates_one_staff_moderator_idempotently(db):
    call_command("seed_demo")
    call_command("seed_demo")
    from django.contrib.auth import get_user_model

    (moderator,) = get_user_model().objects.filter(username="moderator")
    assert moderator.is_staff and not moderator.is_superuser
    assert moderator.check_password("moderator-password")
    assert list(moderator.groups.values_list("name", flat=True)) == ["Moderators"]
    assert moderator.has_perm("messages_app.change_reviewitem")
    assert not moderator.has_perm("messages_app.change_moderationdecision")

"""The moderation workflow in the Django admin, as a moderator (staff, in the Moderators group,
not a superuser) uses it: the queue and its filters, the actions, the read-only audit trail."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone

from messages_app import moderation
from messages_app.models import (
    Character,
    LimitOverride,
    Message,
    ModerationDecision,
    ReviewItem,
    UserStanding,
)
from messages_app.safety.categories import CATEGORIES
from messages_app.services import conversation_create
from tests.moderation_helpers import (
    ban_of,
    make_character,
    make_moderator,
    make_user,
    message_of,
    queued,
    reply,
    until_of,
)

pytestmark = pytest.mark.django_db(transaction=True)

QUEUE = "/admin/messages_app/reviewitem/"
AUDIT = "/admin/messages_app/moderationdecision/"
STANDINGS = "/admin/messages_app/userstanding/"


@pytest.fixture
def mod(db):
    return make_moderator()


@pytest.fixture
def mod_client(mod) -> Client:
    client = Client()
    client.force_login(mod)
    return client


def ids_in(page) -> set[int]:
    """The review items listed on a changelist page (their action checkboxes)."""
    return {int(v) for v in re.findall(rb'name="_selected_action" value="(\d+)"', page.content)}


def act(client: Client, url: str, action: str, items, **extra):
    data = {"action": action, "_selected_action": [i.pk for i in items], **extra}
    return client.post(url, data)


# --- the queue -------------------------------------------------------------------------------


def test_the_queue_lists_items_pending_first_newest_first(mod_client, conversation, mod):
    old, decided, new = queued(conversation, 3)
    moderation.decide([decided], action="approve", actor=mod)
    ReviewItem.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=1))
    page = mod_client.get(QUEUE)
    assert page.status_code == 200
    order = [int(v) for v in re.findall(rb'name="_selected_action" value="(\d+)"', page.content)]
    assert order == [new.pk, old.pk, decided.pk]
    assert b"harassment" in page.content and b"alice" in page.content


def test_the_queue_filters_by_category_on_the_running_database(mod_client, conversation):
    (hate,) = queued(conversation, categories=("hate",))
    (threat,) = queued(conversation, categories=("hate/threatening", "violence"))
    (sexual,) = queued(conversation, categories=("sexual",))
    assert ids_in(mod_client.get(QUEUE, {"category": "hate"})) == {hate.pk}
    assert ids_in(mod_client.get(QUEUE, {"category": "hate/threatening"})) == {threat.pk}
    assert ids_in(mod_client.get(QUEUE, {"category": "violence"})) == {threat.pk}
    assert ids_in(mod_client.get(QUEUE, {"category": "self-harm"})) == set()
    assert ids_in(mod_client.get(QUEUE)) == {hate.pk, threat.pk, sexual.pk}
    page = mod_client.get(QUEUE)
    for name in CATEGORIES:  # the 13 names are offered
        assert f"?category={name.replace('/', '%2F')}".encode() in page.content


def test_the_queue_filters_by_score_user_character_date_state_and_source(
    mod_client, conversation, other_user, mod
):
    other_character = make_character(name="Other Character")
    theirs = conversation_create(owner=other_user, character=other_character)
    (low,) = queued(conversation, score=0.35)
    (high,) = queued(conversation, score=0.95)
    (other,) = queued(theirs, score=0.75)
    reported = moderation.review_record(reply(conversation, "reported"), source="report")
    ReviewItem.objects.filter(pk=low.pk).update(created_at=timezone.now() - timedelta(days=10))
    moderation.decide([high], action="confirm", actor=mod)

    assert ids_in(mod_client.get(QUEUE, {"score": "0.3-0.5"})) == {low.pk}
    assert ids_in(mod_client.get(QUEUE, {"score": "ge0.9"})) == {high.pk}
    assert ids_in(mod_client.get(QUEUE, {"score": "lt0.3"})) == {reported.pk}
    assert ids_in(mod_client.get(QUEUE, {"user__id__exact": other_user.pk})) == {other.pk}
    assert ids_in(mod_client.get(QUEUE, {"character__id__exact": other_character.pk})) == {other.pk}
    since = (timezone.now() - timedelta(days=1)).isoformat()
    assert low.pk not in ids_in(mod_client.get(QUEUE, {"created_at__gte": since}))
    assert ids_in(mod_client.get(QUEUE, {"state__exact": "confirmed"})) == {high.pk}
    assert ids_in(mod_client.get(QUEUE, {"source__exact": "report"})) == {reported.pk}
    assert ids_in(mod_client.get(QUEUE, {"q": "reported"})) == {reported.pk}
    assert ids_in(mod_client.get(QUEUE, {"q": "mallory"})) == {other.pk}


def test_an_item_is_shown_in_its_conversation(mod_client, conversation):
    (item,) = queued(conversation)
    later = reply(conversation, "the reply after it")
    page = mod_client.get(f"{QUEUE}{item.pk}/context/")
    assert page.status_code == 200
    text = page.content.decode()
    greeting = conversation.messages.order_by("id").first()
    assert greeting.content in text and "insult number 0" in text and later.content in text
    assert f'id="message-{item.message_id}" class="selected"' in text
    assert f"{QUEUE}{item.pk}/context/".encode() in mod_client.get(QUEUE).content
    detail = mod_client.get(f"{QUEUE}{item.pk}/change/")
    assert detail.status_code == 200 and b"insult number 0" in detail.content


# --- the actions -------------------------------------------------------------------------------


def test_moderator_approves_confirms_and_warns_many_items_at_once(
    mod_client, conversation, user, mod
):
    items = queued(conversation, 6)
    assert act(mod_client, QUEUE, "approve_items", items[:2]).status_code == 302
    assert act(mod_client, QUEUE, "confirm_items", items[2:4]).status_code == 302
    assert act(mod_client, QUEUE, "warn_items", items[4:]).status_code == 302
    states = dict(ReviewItem.objects.values_list("pk", "state"))
    assert [states[i.pk] for i in items] == ["approved"] * 2 + ["confirmed"] * 2 + ["warned"] * 2
    assert message_of(items[0]).status == "completed"
    record = UserStanding.objects.get(pk=user.pk)
    assert (record.violation_score, record.warnings) == (4, 2)
    assert ModerationDecision.objects.filter(actor=mod).count() == 6
    # The fourth violation passed the threshold of 3: an automatic ban, by no one.
    assert ModerationDecision.objects.get(action="auto_ban").actor is None


def test_ban_asks_for_a_duration_and_a_reason_then_bans(mod_client, conversation, user, mod):
    items = queued(conversation, 2)
    form = act(mod_client, QUEUE, "ban_users", items)
    assert form.status_code == 200
    assert b'name="duration"' in form.content and b'name="reason"' in form.content
    assert b"alice" in form.content
    assert moderation.active_ban(user) is None
    missing = act(mod_client, QUEUE, "ban_users", items, post="yes", duration="7d", reason="")
    assert missing.status_code == 200 and moderation.active_ban(user) is None
    done = act(mod_client, QUEUE, "ban_users", items, post="yes", duration="7d", reason="spam")
    assert done.status_code == 302
    ban = ban_of(user)
    assert ban.reason == "spam" and not ban.permanent
    assert until_of(ban) > timezone.now() + timedelta(days=6, hours=23)
    rows = ModerationDecision.objects.filter(action="ban")
    assert rows.count() == 2 and {r.actor for r in rows} == {mod}
    act(mod_client, QUEUE, "ban_users", items[:1], post="yes", duration="forever", reason="again")
    assert ban_of(user).permanent


def test_standings_ban_and_unban(mod_client, conversation, user, mod):
    moderation.decide(queued(conversation), action="confirm", actor=mod)
    standing = UserStanding.objects.get(pk=user.pk)
    page = mod_client.get(STANDINGS)
    assert page.status_code == 200 and b"alice" in page.content
    assert act(mod_client, STANDINGS, "ban_standing_users", [standing]).status_code == 200
    act(
        mod_client,
        STANDINGS,
        "ban_standing_users",
        [standing],
        post="yes",
        duration="1h",
        reason="cool off",
    )
    assert ban_of(user).reason == "cool off"
    assert ids_in(mod_client.get(STANDINGS, {"ban": "active"})) == {user.pk}
    act(mod_client, STANDINGS, "unban_standing_users", [standing], post="yes", reason="ok")
    assert moderation.active_ban(user) is None
    assert list(ModerationDecision.objects.order_by("id").values_list("action", flat=True)) == [
        "confirm",
        "ban",
        "unban",
    ]


def test_moderator_approves_and_rejects_characters_but_cannot_edit_them(mod_client, mod):
    owner = make_user(username="author")
    good = make_character(name="Good", owner=owner, approval="pending")
    bad = make_character(name="Bad", owner=owner, approval="pending")
    listing = mod_client.get("/admin/messages_app/character/", {"approval__exact": "pending"})
    assert listing.status_code == 200 and b"Good" in listing.content
    act(mod_client, "/admin/messages_app/character/", "approve_characters", [good])
    act(
        mod_client,
        "/admin/messages_app/character/",
        "reject_characters",
        [bad],
        post="yes",
        reason="explicit",
    )
    assert Character.objects.get(pk=good.pk).approval == "approved"
    assert Character.objects.get(pk=bad.pk).approval == "rejected"
    assert (
        ModerationDecision.objects.filter(
            action__in=["approve_character", "reject_character"]
        ).count()
        == 2
    )
    mod_client.post(f"/admin/messages_app/character/{good.pk}/change/", {"name": "Renamed"})
    assert Character.objects.get(pk=good.pk).name == "Good"


# --- the audit trail and what moderators may not do ---------------------------------------------


@pytest.mark.parametrize("who", ["moderator", "superuser"])
def test_the_audit_trail_is_readable_and_cannot_be_edited_by_anyone(who, conversation, mod):
    (decision,) = moderation.decide(queued(conversation), action="confirm", actor=mod, reason="r")
    user = (
        mod if who == "moderator" else make_user(username="root", is_staff=True, is_superuser=True)
    )
    client = Client()
    client.force_login(user)
    listing = client.get(AUDIT, {"action__exact": "confirm", "q": "alice"})
    assert listing.status_code == 200 and b"alice" in listing.content
    assert client.get(AUDIT, {"action__exact": "ban"}).content.count(b"alice") == 0
    detail = client.get(f"{AUDIT}{decision.pk}/change/")
    assert detail.status_code == 200 and b'name="_save"' not in detail.content
    client.post(f"{AUDIT}{decision.pk}/change/", {"reason": "rewritten"})
    assert client.get(f"{AUDIT}add/").status_code == 403
    assert client.get(f"{AUDIT}{decision.pk}/delete/").status_code == 403
    assert b"delete_selected" not in listing.content
    assert ModerationDecision.objects.get(pk=decision.pk).reason == "r"


def test_moderators_cannot_reach_other_models_or_change_read_only_ones(mod_client, conversation):
    for url in (
        "/admin/auth/user/",
        "/admin/auth/group/",
        "/admin/messages_app/feedback/",
        "/admin/messages_app/deletedaccount/",
        "/admin/llm_app/generation/",
        "/admin/messages_app/limitoverride/add/",
        f"{QUEUE}add/",
        "/admin/messages_app/report/add/",
    ):
        assert mod_client.get(url).status_code == 403, url
    for url in (
        "/admin/messages_app/limitoverride/",
        "/admin/messages_app/report/",
        "/admin/messages_app/message/",
        f"/admin/messages_app/conversation/{conversation.pk}/change/",
    ):
        assert mod_client.get(url).status_code == 200, url
    greeting = conversation.messages.get()
    mod_client.post(f"/admin/messages_app/message/{greeting.pk}/change/", {"content": "changed"})
    assert Message.objects.get(pk=greeting.pk).content != "changed"
    mod = Group.objects.get(name="Moderators").user_set.get()
    assert not mod.is_superuser


def test_superuser_sets_limit_overrides_for_a_user_or_a_group(conversation, user):
    root = make_user(username="root", is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(root)
    assert client.get("/admin/messages_app/limitoverride/add/").status_code == 200
    created = client.post(
        "/admin/messages_app/limitoverride/add/",
        {"user": user.pk, "per_minute": 3, "note": "slow down"},
    )
    assert created.status_code == 302, created.content[:2000]
    override = LimitOverride.objects.get()
    assert (override.user_id, override.per_minute, override.group_id) == (user.pk, 3, None)
    assert b"slow down" in client.get("/admin/messages_app/limitoverride/").content

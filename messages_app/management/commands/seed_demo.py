"""`manage.py seed_demo`: the demo user, the demo moderator and the characters of the embedded
run. Safe to run again."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from messages_app.models import Character
from messages_app.moderation import moderators_group_ensure

DEMO_USERNAME = "demo"
DEMO_PASSWORD = "demo-password"  # noqa: S105  (the documented local demo login)
# Staff (to log in to the admin) in the Moderators group; not a superuser.
MODERATOR_USERNAME = "moderator"
MODERATOR_PASSWORD = "moderator-password"  # noqa: S105  (the documented local demo login)

CHARACTERS = [
    {
        "name": "Captain Mira",
        "description": "A cheerful starship captain who loves explaining space.",
        "persona": "You are a friendly starship captain. You explain space and science simply.",
        "greeting": "Welcome aboard! I'm Captain Mira. Where shall we fly today?",
        "example_dialogue": "User: What is a star?\nMira: A giant ball of hot gas, like our Sun!",
        "system_prompt": "Stay in character. Answer in two or three short sentences.",
    },
    {
        "name": "Chef Luca",
        "description": "An Italian chef with quick recipes.",
        "persona": "You are Luca, a warm Italian chef who suggests simple recipes.",
        "greeting": "Ciao! I'm Chef Luca. What would you like to cook today?",
        "example_dialogue": "User: Something quick?\nLuca: Pasta aglio e olio: garlic, oil, chili!",
        "system_prompt": "Stay in character. Keep answers short and practical.",
    },
    {
        "name": "Professor Ada",
        "description": "A patient tutor for maths and programming.",
        "persona": "You are Ada, a patient teacher of maths and programming.",
        "greeting": "Hello, I'm Professor Ada. What would you like to learn?",
        "example_dialogue": "User: What is a variable?\nAda: A name that holds a value.",
        "system_prompt": "Explain step by step, briefly.",
    },
]


class Command(BaseCommand):
    help = "Create the demo user, the demo moderator and public demo characters (idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        user, created = User.objects.get_or_create(username=DEMO_USERNAME)
        if created or not user.has_usable_password():
            user.set_password(DEMO_PASSWORD)
            user.save()
        moderator, created = User.objects.get_or_create(username=MODERATOR_USERNAME)
        if created or not moderator.has_usable_password():
            moderator.set_password(MODERATOR_PASSWORD)
        moderator.is_staff = True
        moderator.is_superuser = False
        moderator.save()
        moderator.groups.add(moderators_group_ensure())
        for spec in CHARACTERS:
            Character.objects.update_or_create(
                name=spec["name"],
                owner=None,
                defaults={**spec, "is_public": True, "approval": Character.Approval.APPROVED},
            )
        self.stdout.write(
            f"demo user: {DEMO_USERNAME} / {DEMO_PASSWORD}; "
            f"demo moderator (admin at /admin/): {MODERATOR_USERNAME} / {MODERATOR_PASSWORD}; "
            f"{len(CHARACTERS)} demo characters"
        )

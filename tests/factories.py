"""factory-boy factories for the domain models."""

from __future__ import annotations

import factory
from django.contrib.auth import get_user_model

from messages_app.models import Character


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.django.Password("pw-123456")


class CharacterFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Character

    name = factory.Sequence(lambda n: f"Character {n}")
    description = "A test character."
    persona = "Speaks briefly."
    greeting = factory.LazyAttribute(lambda o: f"Hello, I am {o.name}.")
    system_prompt = "Stay in character."
    is_public = True
    # Visible to every user, as the characters that staff make.
    approval = Character.Approval.APPROVED
    owner = None

"""Receivers on the user model: a deleted user leaves a tombstone, and the open websockets of
a deleted or deactivated user are closed. Both happen only after the change is committed."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from messages_app.accounts import services
from messages_app.accounts.revocation import account_revoked_send


@receiver(
    post_save, sender=settings.AUTH_USER_MODEL, dispatch_uid="messages_app.accounts.user_saved"
)
def _user_saved(
    sender: Any, instance: Any, created: bool, update_fields: Any = None, **kwargs: Any
) -> None:
    if created or instance.is_active:
        return
    if update_fields is not None and "is_active" not in update_fields:
        return  # e.g. last_login: is_active was not what changed
    user_id = instance.pk
    transaction.on_commit(lambda: account_revoked_send(user_id=user_id, reason="deactivated"))


@receiver(
    post_delete, sender=settings.AUTH_USER_MODEL, dispatch_uid="messages_app.accounts.user_deleted"
)
def _user_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    services.account_tombstone_record(username=instance.get_username())
    user_id = instance.pk
    transaction.on_commit(lambda: account_revoked_send(user_id=user_id, reason="deleted"))

"""Account writes: provisioning users named by auth-service tokens, and tombstones."""

from __future__ import annotations

from datetime import datetime

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.utils import timezone

from messages_app.models import DeletedAccount, subject_digest


class AccountDeleted(Exception):
    """The subject's account was deleted after the token was issued; it is not re-created."""


def account_tombstone_record(*, username: str) -> None:
    """Remember that `username` was deleted now (a second deletion moves the time forward)."""
    DeletedAccount.objects.update_or_create(
        subject_sha256=subject_digest(username), defaults={"deleted_at": timezone.now()}
    )


def user_provision(*, username: str, issued_at: datetime) -> AbstractBaseUser:
    """The user an auth-service token names, created on first sight with no usable password.

    Raises AccountDeleted when a user of that name was deleted at or after `issued_at`: a
    token from before the deletion must not bring the account back. The caller has checked
    the token (signature, lifetime) and that `username` fits the username field.
    """
    User = get_user_model()
    user = User._default_manager.filter(**{User.USERNAME_FIELD: username}).first()
    if user is not None:
        return user
    tombstone = DeletedAccount.objects.filter(subject_sha256=subject_digest(username)).first()
    if tombstone is not None and issued_at <= tombstone.deleted_at:
        raise AccountDeleted(username)
    try:
        with transaction.atomic():
            user = User(**{User.USERNAME_FIELD: username})
            user.set_unusable_password()
            user.save()
    except IntegrityError:
        # Two first requests of the same subject raced; the other one created it.
        user = User._default_manager.get(**{User.USERNAME_FIELD: username})
    return user

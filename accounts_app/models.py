"""Tombstones of deleted accounts, so that an old auth-service token cannot bring one back."""

from __future__ import annotations

import hashlib

from django.db import models


def subject_digest(username: str) -> str:
    """SHA-256 of a username: a tombstone recognises a subject without keeping its name."""
    return hashlib.sha256(username.encode()).hexdigest()


class DeletedAccount(models.Model):
    """A deleted user. Tokens of the external auth service issued up to `deleted_at` do not
    create the account again; a token issued later does (the auth service still vouches for
    the subject). To keep someone out for good, deactivate the user instead of deleting it."""

    subject_sha256 = models.CharField(max_length=64, unique=True)
    deleted_at = models.DateTimeField()

    class Meta:
        ordering = ["-deleted_at"]

    def __str__(self) -> str:
        return f"{self.subject_sha256[:12]}… deleted {self.deleted_at:%Y-%m-%d %H:%M:%S}"

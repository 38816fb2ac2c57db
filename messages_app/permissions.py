"""DRF permissions of every API view (REST_FRAMEWORK's DEFAULT_PERMISSION_CLASSES)."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request


class NotBanned(BasePermission):
    """A banned user gets 403 `banned` (until, permanent, reason) on every API view that keeps
    the default permissions. The token endpoints set their own (none), and the session login is
    not an API view: a banned user can still log in and read why. One primary-key query."""

    def has_permission(self, request: Request, view: Any) -> bool:
        # Imported here: DRF imports this class while rest_framework.views, which the
        # error module needs, is still being imported.
        from messages_app.moderation import ban_check

        user = request.user
        if user is not None and user.is_authenticated:
            ban_check(user)  # raises Banned, which the exception handler shapes
        return True

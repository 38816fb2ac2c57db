"""Service errors and the one place that maps every API error to the contract's JSON shape."""

from __future__ import annotations

import logging
import math
from typing import Any

import redis
from django.core.exceptions import PermissionDenied
from django.http import Http404
from rest_framework import exceptions as drf_exceptions
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

logger = logging.getLogger(__name__)


class ServiceError(Exception):
    """A failure a client can act on. `code` is stable; `message` is for people."""

    status_code: int = status.HTTP_400_BAD_REQUEST
    code = "invalid"

    def __init__(
        self, message: str, *, code: str | None = None, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details or {}

    def as_dict(self) -> dict[str, Any]:
        return error_body(self.code, self.message, self.details)


class InvalidInput(ServiceError):
    status_code: int = status.HTTP_400_BAD_REQUEST
    code = "invalid"


class TooLarge(ServiceError):
    status_code: int = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    code = "too_large"


class NotFound(ServiceError):
    status_code: int = status.HTTP_404_NOT_FOUND
    code = "not_found"


class Conflict(ServiceError):
    status_code: int = status.HTTP_409_CONFLICT
    code = "conflict"


class Banned(ServiceError):
    """The user is banned: details {until: ISO 8601 or null, permanent: bool, reason: str}."""

    status_code: int = status.HTTP_403_FORBIDDEN
    code = "banned"


class Unavailable(ServiceError):
    status_code: int = status.HTTP_503_SERVICE_UNAVAILABLE
    code = "unavailable"


class ContentBlocked(ServiceError):
    """The content filter blocked the user's message (details: categories, message_id)."""

    status_code: int = status.HTTP_422_UNPROCESSABLE_ENTITY
    code = "content_blocked"


class RateLimited(ServiceError):
    """A send over one of the user's limits (messages_app.limits): nothing was saved.

    `limit` names it: minute, hour, day, in_flight or tokens. `retry_after` is the seconds
    until it lifts; `remaining` and `reset` (seconds) describe that limit for the RateLimit-*
    headers."""

    status_code: int = status.HTTP_429_TOO_MANY_REQUESTS
    code = "rate_limited"

    def __init__(
        self,
        *,
        limit: str,
        retry_after: float,
        limit_value: int,
        remaining: int = 0,
        reset: float | None = None,
    ) -> None:
        self.limit = limit
        self.retry_after = retry_after
        self.limit_value = limit_value
        self.remaining = remaining
        self.reset = retry_after if reset is None else reset
        super().__init__(
            f"{_LIMIT_WORDS.get(limit, 'Rate limit reached')}; "
            f"try again in {math.ceil(retry_after)} s.",
            details={"limit": limit, "retry_after": retry_after, "limit_value": limit_value},
        )

    def headers(self) -> dict[str, str]:
        """Retry-After and the RateLimit-* headers (whole seconds, rounded up)."""
        return {
            "Retry-After": str(math.ceil(self.retry_after)),
            "RateLimit-Limit": str(self.limit_value),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(math.ceil(self.reset)),
        }


_LIMIT_WORDS = {
    "minute": "Too many messages this minute",
    "hour": "Too many messages this hour",
    "day": "Too many messages today",
    "in_flight": "Too many replies in progress at once",
    "tokens": "The daily token quota is used up",
}


def error_body(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details or {}}}


_DRF_CODES: dict[type[drf_exceptions.APIException], str] = {
    drf_exceptions.NotAuthenticated: "not_authenticated",
    drf_exceptions.AuthenticationFailed: "authentication_failed",
    drf_exceptions.PermissionDenied: "permission_denied",
    drf_exceptions.NotFound: "not_found",
    drf_exceptions.MethodNotAllowed: "method_not_allowed",
    drf_exceptions.ParseError: "malformed",
    drf_exceptions.UnsupportedMediaType: "unsupported_media_type",
    drf_exceptions.Throttled: "rate_limited",
    drf_exceptions.ValidationError: "invalid",
}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's EXCEPTION_HANDLER: every error leaves as `{"error": {code, message, details}}`."""
    if isinstance(exc, ServiceError):
        headers = exc.headers() if isinstance(exc, RateLimited) else None
        return Response(exc.as_dict(), status=exc.status_code, headers=headers)
    if isinstance(exc, redis.RedisError):
        logger.warning("%s: Redis unavailable (%s)", context.get("view"), exc)
        body = error_body("redis_unavailable", "A service dependency is unavailable; try again.")
        return Response(body, status=status.HTTP_503_SERVICE_UNAVAILABLE)
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = drf_exceptions.PermissionDenied()
    response = drf_exception_handler(exc, context)
    if response is None or not isinstance(exc, drf_exceptions.APIException):
        return response
    code = next((c for cls, c in _DRF_CODES.items() if isinstance(exc, cls)), "error")
    if isinstance(exc, drf_exceptions.ValidationError):
        details = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        message = "The request is not valid."
    elif isinstance(exc.detail, dict) and "detail" in exc.detail:
        # simplejwt's errors: {"detail": ..., "code": "token_not_valid" | "user_inactive" | ...}.
        details = {"reason": drf_exceptions.ErrorDetail(str(exc.detail.get("code", "")))}
        message = str(exc.detail["detail"])
    else:
        details = {}
        message = str(exc.detail)
    if isinstance(exc, drf_exceptions.NotAuthenticated | drf_exceptions.AuthenticationFailed):
        # DRF answers 403 when no authenticator offers a challenge; the contract says 401.
        response.status_code = status.HTTP_401_UNAUTHORIZED
    response.data = error_body(code, message, details)
    return response

"""Service errors and the one place that maps every API error to the contract's JSON shape."""

from __future__ import annotations

import logging
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
        return Response(exc.as_dict(), status=exc.status_code)
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

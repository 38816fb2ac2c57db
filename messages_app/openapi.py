"""What the OpenAPI schema says of errors: the one error shape, the answers a send can get
(422 content_blocked, 429 rate_limited with its headers, 403 banned, 503), and a hook that
documents 403 `banned` on every endpoint a banned user is refused."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse
from rest_framework import serializers


class ErrorBodySerializer(serializers.Serializer[Any]):
    code = serializers.CharField()
    message = serializers.CharField()
    details = serializers.DictField()


class ErrorSerializer(serializers.Serializer[Any]):
    """`{"error": {"code", "message", "details"}}`: every error of the API."""

    error = ErrorBodySerializer()


def _error(description: str) -> OpenApiResponse:
    return OpenApiResponse(response=ErrorSerializer, description=description)


BANNED = _error(
    "`banned`: the caller is banned; details `until` (ISO 8601, null when permanent), "
    "`permanent`, `reason`."
)

# Response headers of a 429 (OpenApiParameter with `response`: a header of those answers).
RATE_LIMIT_HEADERS = [
    OpenApiParameter(
        "Retry-After",
        OpenApiTypes.INT,
        OpenApiParameter.HEADER,
        response=[429],
        description="Whole seconds until the limit lifts (rounded up).",
    ),
    OpenApiParameter(
        "RateLimit-Limit",
        OpenApiTypes.INT,
        OpenApiParameter.HEADER,
        response=[429],
        description="The value of the limit that refused the send.",
    ),
    OpenApiParameter(
        "RateLimit-Remaining",
        OpenApiTypes.INT,
        OpenApiParameter.HEADER,
        response=[429],
        description="What is left of it: 0.",
    ),
    OpenApiParameter(
        "RateLimit-Reset",
        OpenApiTypes.INT,
        OpenApiParameter.HEADER,
        response=[429],
        description="Seconds until it resets.",
    ),
]


def send_responses(success: Any, status: int = 202) -> dict[int, Any]:
    """The answers of an endpoint that sends a message (send, edit, regenerate)."""
    return {
        status: success,
        400: _error("Bad input (`invalid`, `empty_content`, `bad_request`, `bad_parent`...)."),
        403: BANNED,
        404: _error("`not_found`: no such conversation or message of yours."),
        413: _error("`too_large`: the content is longer than MAX_MESSAGE_CHARS."),
        422: _error(
            "`content_blocked`: the content filter blocked the message; details `categories` "
            "and `message_id`. The message is kept, status `blocked`; no reply is generated."
        ),
        429: _error(
            "`rate_limited`: over a limit; details `limit` (minute, hour, day, in_flight, "
            "tokens), `retry_after` (seconds), `limit_value`. Nothing was saved."
        ),
        503: _error(
            "`redis_unavailable`, `queue_unavailable` or `safety_unavailable` (the content "
            "check did not answer in time): nothing was saved; try again."
        ),
    }


# Endpoints a banned user may still use, so that they can log in and read why.
_OPEN_TO_BANNED = ("/api/v1/auth/",)


def document_bans(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """POSTPROCESSING_HOOKS: 403 `banned` on every operation under /api/v1/ that refuses a
    banned user (all but the token endpoints)."""
    schemas = result.setdefault("components", {}).setdefault("schemas", {})
    schemas.setdefault(
        "BannedError",
        {
            "type": "object",
            "description": '`{"error": {"code": "banned", "message", "details": '
            '{"until", "permanent", "reason"}}}`',
            "properties": {"error": {"type": "object"}},
            "required": ["error"],
        },
    )
    for path, operations in result.get("paths", {}).items():
        if not path.startswith("/api/v1/") or path.startswith(_OPEN_TO_BANNED):
            continue
        for operation in operations.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            operation["responses"].setdefault(
                "403",
                {
                    "description": BANNED.description,
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/BannedError"}}
                    },
                },
            )
    return result

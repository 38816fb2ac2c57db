"""JWT auth shared with the external auth service: HS256 with JWT_SECRET_KEY, `sub` = user."""

from __future__ import annotations

from typing import Any

import jwt
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from rest_framework import authentication, exceptions
from rest_framework.request import Request

User = get_user_model()


def user_for_subject(subject: str) -> AbstractBaseUser:
    """The user a token's `sub` names, created on first sight (the auth service owns identities)."""
    user, _ = User.objects.get_or_create(username=subject[:150])
    return user


def decode_access_token(raw: str) -> dict[str, Any]:
    """Verify signature, expiry and subject. Refresh tokens are refused as access tokens."""
    try:
        payload: dict[str, Any] = jwt.decode(
            raw,
            settings.JWT_SECRET_KEY,
            algorithms=["HS256"],
            options={"require": ["exp", "sub"]},
            leeway=5,
        )
    except jwt.ExpiredSignatureError as exc:
        raise exceptions.AuthenticationFailed("The token has expired.") from exc
    except jwt.PyJWTError as exc:
        raise exceptions.AuthenticationFailed("The token is not valid.") from exc
    if payload.get("token_type", "access") != "access":
        raise exceptions.AuthenticationFailed("This is not an access token.")
    if not isinstance(payload["sub"], str) or not payload["sub"]:
        raise exceptions.AuthenticationFailed("The token has no subject.")
    return payload


class ServiceJWTAuthentication(authentication.BaseAuthentication):
    """`Authorization: Bearer <jwt>`, issued by us (/api/v1/auth/token/) or by the auth service."""

    keyword = "Bearer"

    def authenticate(self, request: Request) -> tuple[AbstractBaseUser, dict[str, Any]] | None:
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].decode().lower() != self.keyword.lower():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("The Authorization header is malformed.")
        payload = decode_access_token(header[1].decode())
        user = user_for_subject(payload["sub"])
        if not user.is_active:
            raise exceptions.AuthenticationFailed("The user is inactive.")
        return user, payload

    def authenticate_header(self, request: Request) -> str:
        return self.keyword

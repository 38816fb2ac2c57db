"""JWT authentication through simplejwt, for our own tokens and the external auth service's.

Both kinds are HS256 with JWT_SECRET_KEY (settings.SIMPLE_JWT) and name the user by `sub`:

- Ours (`POST /api/v1/auth/token/`) carry `iss` = TOKEN_ISSUER and a fingerprint of the
  user's password hash. They never create a user: a deleted user's tokens stop working, and
  a password change ends every access and refresh token issued before it.
- The auth service's (any other `iss`, or none) must carry `iat` and live at most
  JWT_EXTERNAL_MAX_LIFETIME_MINUTES. Their `sub` is provisioned as a user on first use,
  unless that account was deleted after the token was issued (messages_app.models).

Either way a deactivated user's tokens are refused, and a `sub` longer than the username
field is refused rather than cut.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, cast

import jwt
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.utils.crypto import constant_time_compare, salted_hmac
from rest_framework_simplejwt import authentication, serializers
from rest_framework_simplejwt.exceptions import AuthenticationFailed, InvalidToken, TokenError
from rest_framework_simplejwt.settings import api_settings
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken, Token
from rest_framework_simplejwt.utils import datetime_from_epoch

from messages_app.accounts.services import AccountDeleted, user_provision

TOKEN_ISSUER = "message-service"  # noqa: S105 (a name, not a secret)
FINGERPRINT_CLAIM = "pwd_fingerprint"
_FINGERPRINT_SALT = "messages_app.accounts.auth.password_fingerprint"


def password_fingerprint(user: AbstractBaseUser, *, secret: str | bytes | None = None) -> str:
    """An HMAC of the user's password hash (as Django's session auth hash): it changes when
    the password does, and reveals nothing about it."""
    digest = salted_hmac(_FINGERPRINT_SALT, user.password, secret=secret, algorithm="sha256")
    return digest.hexdigest()[:32]


def password_fingerprint_matches(user: AbstractBaseUser, value: object) -> bool:
    """True when `value` is the user's current fingerprint (under SECRET_KEY or a fallback)."""
    if not isinstance(value, str):
        return False
    secrets = [settings.SECRET_KEY, *settings.SECRET_KEY_FALLBACKS]
    return any(constant_time_compare(value, password_fingerprint(user, secret=s)) for s in secrets)


def subject_max_length() -> int:
    User = get_user_model()
    return getattr(User._meta.get_field(User.USERNAME_FIELD), "max_length", None) or 150


def _checked_subject(token: Token) -> str:
    subject = token.get(api_settings.USER_ID_CLAIM)
    if not isinstance(subject, str) or not subject:
        raise InvalidToken("The token has no subject.")
    limit = subject_max_length()
    if len(subject) > limit:
        raise InvalidToken(f"The token's subject is longer than {limit} characters.")
    return subject


class _OwnTokenMixin:
    """verify(): also requires our issuer and the password fingerprint."""

    payload: dict[str, Any]

    def verify(self) -> None:
        super().verify()  # type: ignore[misc]
        if self.payload.get("iss") != TOKEN_ISSUER or FINGERPRINT_CLAIM not in self.payload:
            raise TokenError("Token is invalid")


class ServiceAccessToken(_OwnTokenMixin, AccessToken):
    """An access token this service issued (from a ServiceRefreshToken)."""


class ServiceRefreshToken(_OwnTokenMixin, RefreshToken):
    """A refresh token this service issued; its access tokens copy `iss` and the fingerprint."""

    access_token_class = ServiceAccessToken

    @classmethod
    def for_user(cls, user: Any) -> ServiceRefreshToken:
        token = cast(ServiceRefreshToken, super().for_user(user))
        token["iss"] = TOKEN_ISSUER
        token[FINGERPRINT_CLAIM] = password_fingerprint(user)
        return token


class ExternalAccessToken(Token):
    """An access token of the external auth service: `sub`, `exp` and `iat` are required,
    `token_type` and `jti` optional, and `exp - iat` is at most the configured lifetime."""

    token_type = "access"  # noqa: S105 (a name, not a secret)
    lifetime = timedelta(0)  # never issued here; simplejwt only requires one

    def verify(self) -> None:
        self.check_exp()
        if self.payload.get(api_settings.TOKEN_TYPE_CLAIM, self.token_type) != self.token_type:
            raise TokenError("Token has wrong type")
        if self.payload.get("iss") == TOKEN_ISSUER or FINGERPRINT_CLAIM in self.payload:
            raise TokenError("Token is invalid")  # shaped like ours: never provisions
        iat = self.payload.get("iat")
        if isinstance(iat, bool) or not isinstance(iat, int | float):
            raise TokenError("Token has no 'iat' claim")
        lifetime = datetime_from_epoch(self.payload["exp"]) - datetime_from_epoch(iat)
        if lifetime > self.max_lifetime():
            minutes = int(self.max_lifetime().total_seconds() // 60)
            raise TokenError(f"Token lives longer than the {minutes} minutes allowed")

    @staticmethod
    def max_lifetime() -> timedelta:
        return timedelta(minutes=settings.JWT_EXTERNAL_MAX_LIFETIME_MINUTES)


def _is_own_token(raw_token: bytes) -> bool:
    """Whether a token claims to be ours. Read unverified, only to pick the class that then
    verifies it: a forged claim gains nothing, the signature is checked either way."""
    try:
        claims = jwt.decode(raw_token, options={"verify_signature": False})
    except jwt.PyJWTError:
        return False
    return claims.get("iss") == TOKEN_ISSUER or FINGERPRINT_CLAIM in claims


_HEADER_TYPES = {t.lower() for t in authentication.AUTH_HEADER_TYPE_BYTES}


class JWTAuthentication(authentication.JWTAuthentication):
    """`Authorization: Bearer <jwt>`, ours or the auth service's (see the module docstring)."""

    def get_raw_token(self, header: bytes) -> bytes | None:
        # As simplejwt's, but auth schemes are case-insensitive (RFC 9110 11.1): "bearer" too.
        parts = header.split()
        if not parts or parts[0].lower() not in _HEADER_TYPES:
            return None
        if len(parts) != 2:
            raise AuthenticationFailed(
                "The Authorization header must be `Bearer <token>`.",
                code="bad_authorization_header",
            )
        return parts[1]

    def get_validated_token(self, raw_token: bytes) -> Token:
        token_class = ServiceAccessToken if _is_own_token(raw_token) else ExternalAccessToken
        try:
            return token_class(raw_token)  # type: ignore[arg-type]
        except TokenError as exc:
            raise InvalidToken(str(exc.args[0])) from exc

    def get_user(self, validated_token: Token) -> Any:
        subject = _checked_subject(validated_token)
        if isinstance(validated_token, ExternalAccessToken):
            leeway = validated_token.get_token_backend().get_leeway()
            issued_at = datetime_from_epoch(validated_token["iat"])
            try:
                # Conservative about clock skew: a token must be issued clearly after a
                # deletion to create the account again.
                user = user_provision(username=subject, issued_at=issued_at - leeway)
            except AccountDeleted as exc:
                raise AuthenticationFailed("User not found", code="user_not_found") from exc
        else:
            user = user_for_own_token(validated_token, subject)
        if not user.is_active:
            raise AuthenticationFailed("User is inactive", code="user_inactive")
        return user


def user_for_own_token(token: Token, subject: str) -> Any:
    """The existing user our token names, if its password has not changed since."""
    User = get_user_model()
    user = User._default_manager.filter(**{User.USERNAME_FIELD: subject}).first()
    if user is None:
        raise AuthenticationFailed("User not found", code="user_not_found")
    if not password_fingerprint_matches(user, token.get(FINGERPRINT_CLAIM)):
        raise AuthenticationFailed(
            "The password has changed since this token was issued.", code="password_changed"
        )
    return user


class TokenObtainPairSerializer(serializers.TokenObtainPairSerializer):
    """`POST /api/v1/auth/token/`: simplejwt's, issuing ServiceRefreshToken pairs."""

    token_class = ServiceRefreshToken


class TokenRefreshSerializer(serializers.TokenRefreshSerializer):
    """`POST /api/v1/auth/token/refresh/`: only our refresh tokens, only for a user that still
    exists, is active and has not changed the password since (401 otherwise, never 500)."""

    token_class = ServiceRefreshToken

    def validate(self, attrs: dict[str, Any]) -> dict[str, str]:
        refresh = self.token_class(attrs["refresh"])
        user = user_for_own_token(refresh, _checked_subject(refresh))
        if not api_settings.USER_AUTHENTICATION_RULE(user):
            raise AuthenticationFailed(
                str(self.error_messages["no_active_account"]), code="no_active_account"
            )
        return {"access": str(refresh.access_token)}

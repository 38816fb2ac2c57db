"""Login throttling with django-axes: the hooks settings.AXES_* name (client address, counter
names, limits) and the 429 answer, in the error shape for the API and on the login form.

Axes counts wrong passwords in the Redis cache, one counter per username and one per client
address (separate rules), each living LOGIN_COOLOFF_SECONDS from its last failure. When a
counter reaches LOGIN_FAILURE_LIMIT, that attempt and every later one for the username or from
the address is refused, a right password included, until the counter expires. Nothing in the
answer depends on whether the user exists.
"""

from __future__ import annotations

import ipaddress
import logging
import math
from datetime import timedelta
from functools import cache
from typing import Any

from axes.backends import AxesStandaloneBackend
from axes.helpers import (
    get_cache,
    get_client_cache_keys,
    get_failure_limit,
    make_cache_key_list,
)
from axes.signals import user_locked_out
from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.forms import AuthenticationForm
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.template.response import TemplateResponse

from messages_app.errors import error_body
from messageservice import metrics

logger = logging.getLogger(__name__)

LOCKOUT_MESSAGE = "Too many failed login attempts. Try again later."


class LoginThrottleBackend(AxesStandaloneBackend):
    """Refuses a login for a locked username or address (first in AUTHENTICATION_BACKENDS).

    authenticate() without a request (Django's test client `login`, scripts) is not a web
    login and is not throttled; axes itself would raise."""

    def authenticate(
        self, request: Any, username: str | None = None, password: str | None = None, **kw: Any
    ) -> None:
        if request is None:
            return None
        super().authenticate(request, username, password, **kw)
        return None


class PasswordBackend(ModelBackend):
    """Django's ModelBackend (which also hashes the password of an unknown username, so that
    the time does not tell whether it exists). A successful login clears the username's
    failure counter; the address's stays, so that logging into one's own account does not
    reset the count of guesses at others'."""

    def authenticate(
        self,
        request: Any,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> Any:
        user = super().authenticate(request, username, password, **kwargs)
        if user is not None and request is not None:
            name = counter_username(request, {"username": username})
            get_cache().delete_many(make_cache_key_list([{"username": name}]))
        return user


def failure_limit(request: Any, credentials: dict[str, Any] | None) -> int:
    return int(settings.LOGIN_FAILURE_LIMIT)


def cooloff(request: Any) -> timedelta:
    return timedelta(seconds=settings.LOGIN_COOLOFF_SECONDS)


def counter_username(request: Any, credentials: dict[str, Any] | None) -> str:
    """The name of a username's counter. Axes names a counter by the bare value, so that a
    username spelled like an address ("10.0.0.5") would count against that address: the
    prefix keeps the two apart."""
    if credentials:
        username = credentials.get("username")
    else:
        data = getattr(request, "data", None) or request.POST
        username = data.get("username")
    return f"user:{username or ''}"


@cache
def _trusted_networks(
    proxies: tuple[str, ...],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(p.strip(), strict=False) for p in proxies if p.strip())


def _parse(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        return None


def client_address(request: Any) -> str | None:
    """The client's address: REMOTE_ADDR, unless that is a proxy of TRUSTED_PROXIES; then the
    right-most X-Forwarded-For entry that is not a trusted proxy. Entries left of it were
    written by the client and are never believed."""
    remote = request.META.get("REMOTE_ADDR") or None
    networks = _trusted_networks(tuple(settings.TRUSTED_PROXIES))
    address = _parse(remote) if remote else None
    if address is None or not any(address in n for n in networks):
        return remote
    forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "")
    for entry in reversed([e for e in forwarded.split(",") if e.strip()]):
        hop = _parse(entry)
        if hop is None:
            return remote  # a malformed chain: count it against the proxy, not a guess
        if not any(hop in n for n in networks):
            return str(hop)
    return remote


def _retry_after(request: Any, credentials: dict[str, Any] | None) -> int:
    """Seconds until every counter over the limit has expired, rounded up (at least 1): a
    client that waits that long is not refused again. Redis's TTL rounds to the nearest
    second, which would tell a client to come back up to half a second early."""
    store = get_cache()
    limit = get_failure_limit(request, credentials)
    waits = []
    try:
        for key in get_client_cache_keys(request, credentials):
            if (store.get(key) or 0) >= limit:
                client = store._cache.get_client(write=False)
                waits.append(client.pttl(store.make_and_validate_key(key)))
    except Exception:  # a cache without TTLs: the whole cool-off is the honest upper bound
        logger.exception("could not read the login lockout's time to live")
        return int(settings.LOGIN_COOLOFF_SECONDS)
    positive = [w for w in waits if isinstance(w, int) and w > 0]
    return math.ceil(max(positive) / 1000) if positive else int(settings.LOGIN_COOLOFF_SECONDS)


@receiver(user_locked_out, dispatch_uid="messages_app.accounts.throttle.locked_out")
def _locked_out(sender: Any, request: Any = None, **kwargs: Any) -> None:
    """Flag the Django request, which AxesMiddleware answers with lockout_response. Behind
    DRF (the token endpoint) axes flagged DRF's wrapper, which the middleware never sees."""
    if request is None:
        return
    http_request = getattr(request, "_request", request)
    http_request.axes_locked_out = True
    http_request.login_retry_after = _retry_after(
        request, getattr(request, "axes_credentials", None)
    )


def lockout_response(request: HttpRequest, *args: Any) -> HttpResponse:
    """settings.AXES_LOCKOUT_CALLABLE: 429 with Retry-After; the error shape under /api/, the
    login form with a message elsewhere (session and admin login).

    Takes *args because axes 8.3's async middleware passes (request, credentials) where its
    sync one passes (request, response, credentials); neither is needed here."""
    retry_after = int(getattr(request, "login_retry_after", settings.LOGIN_COOLOFF_SECONDS))
    metrics.rate_limit_rejected("login")
    if request.path.startswith("/api/"):
        body = error_body("login_throttled", LOCKOUT_MESSAGE, {"retry_after": retry_after})
        response: HttpResponse = JsonResponse(body, status=429)
    else:
        form = AuthenticationForm(request, initial={"username": request.POST.get("username", "")})
        context = {
            "form": form,
            "lockout_message": LOCKOUT_MESSAGE,
            "next": request.POST.get("next", ""),
        }
        response = TemplateResponse(request, "registration/login.html", context, status=429)
        response.render()
    response["Retry-After"] = str(retry_after)
    return response

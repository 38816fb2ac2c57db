"""Server-rendered pages: the staff usage dashboard (issue 10).

The page is a shell; its script (static/analytics/dashboard.js) reads the usage API with the
staff member's session and draws the charts with the vendored uPlot.
"""

from __future__ import annotations

from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie

# Ranges the page offers: (key, label). dashboard.js knows each one's interval and length.
RANGES = [("24h", "Last 24 hours"), ("7d", "Last 7 days"), ("30d", "Last 30 days")]
DEFAULT_RANGE = "7d"


@ensure_csrf_cookie
def dashboard_page(request: HttpRequest) -> HttpResponse:
    """Staff only: an anonymous visitor is sent to the login page, anyone else gets a 403."""
    if not request.user.is_authenticated:
        return redirect_to_login(request.get_full_path())
    if not (request.user.is_active and request.user.is_staff):
        raise PermissionDenied("The usage dashboard is for staff.")
    return render(
        request,
        "analytics/dashboard.html",
        {"ranges": RANGES, "default_range": DEFAULT_RANGE},
    )

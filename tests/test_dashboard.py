"""The staff usage dashboard (/analytics/) in a real browser: Debian's chromium, driven by
Playwright, against daphne on this run's database. Usage is seeded as messages and replies,
rolled up by the analytics app's own backfill, and read by the page through the usage API.
The page must draw what the API says, load nothing from another host, log no error, and say
so when a range has no usage. A screenshot is kept (TEST_ARTIFACTS_DIR, else pytest's tmp)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import Client
from django.utils import timezone

from fake_llm import FakeLLMServer
from llm_app.models import Generation
from messages_app.models import Feedback, Message
from messages_app.services import conversation_create
from messageservice.embedded import free_port
from tests import test_chat_page_guards as page_guards
from tests.factories import CharacterFactory, UserFactory
from tests.helpers import ROOT, worker_env
from tests.test_chat_page_guards import _wait_http

APP = "messageservice.asgi:application"
VENDOR = ROOT / "analytics_app" / "static" / "analytics" / "vendor" / "uplot"
USAGE_PATH = "/api/v1/analytics/usage/"
CHARTS = ["messages", "tokens", "ttft", "moderation", "failures"]

browser = page_guards.browser  # the headless chromium fixture, module-scoped


# --- the page without a browser ----------------------------------------------------------------


def test_the_vendored_chart_library_is_the_pinned_one():
    readme = (VENDOR / "README.md").read_text()
    assert re.search(r"uPlot 1\.6\.\d+", readme)
    assert re.search(r"sha256 `[0-9a-f]{64}`", readme)  # the npm tarball's
    for name in ("uPlot.iife.min.js", "uPlot.min.css", "LICENSE"):
        digest = hashlib.sha256((VENDOR / name).read_bytes()).hexdigest()
        assert f"`{name}`" in readme and digest in readme, name
    assert "MIT" in (VENDOR / "LICENSE").read_text()


@pytest.mark.django_db
def test_the_dashboard_is_for_staff_only():
    client = Client()
    response = client.get("/analytics/")
    assert response.status_code == 302
    assert response["Location"] == f"{settings.LOGIN_URL}?next=/analytics/"

    plain: Any = UserFactory(username="plain")
    client.force_login(plain)
    assert client.get("/analytics/").status_code == 403
    # Nor does the page's own link show for them.
    assert b'data-testid="nav-usage"' not in client.get("/").content

    boss: Any = UserFactory(username="boss", is_staff=True)
    client.force_login(boss)
    response = client.get("/analytics/")
    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-testid="dashboard"' in html
    # No script or stylesheet from another host, and no inline script.
    assert not re.search(r"""(src|href)=["'](https?:)?//""", html)
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html)
    assert b'data-testid="nav-usage"' in client.get("/").content
    # The admin index links to it too.
    admin_index = client.get("/admin/").content.decode()
    assert re.search(r'<a href="/analytics/" data-testid="admin-usage-link">', admin_index)
    assert 'id="recent-actions-module"' in admin_index  # the rest of the index is there


# --- the browser -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def web(django_db_setup: Any, fake_llm_server: FakeLLMServer) -> Iterator[str]:
    """daphne on this run's database and Redis, static files collected; its root URL."""
    env = worker_env(fake_llm_server, LOG_LEVEL="WARNING")
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=120,
    )
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), APP],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Visit:
    """A staff member's browser tab on the dashboard, recording every request, every usage
    API answer, console errors and page errors."""

    def __init__(self, browser: Any, web: str) -> None:
        staff: Any = UserFactory(username=f"staff-{time.monotonic_ns()}", is_staff=True)
        client = Client()
        client.force_login(staff)
        cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
        self.web = web
        self.requests: list[str] = []
        self.foreign: list[str] = []
        self.errors: list[str] = []
        self.usage: dict[str, dict[str, Any]] = {}  # group_by -> the latest answer
        self.usage_queries: dict[str, dict[str, list[str]]] = {}
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.context.add_cookies(
            [{"name": settings.SESSION_COOKIE_NAME, "value": cookie, "url": web}]
        )
        # Nothing may leave the machine: any other host is refused and remembered.
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.set_default_timeout(20_000)
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.errors.append(f"pageerror: {error}"))
        self.page.on("response", self._response)

    def _route(self, route: Any) -> None:
        url = route.request.url
        self.requests.append(url)
        if url == self.web or url.startswith(self.web + "/"):
            route.continue_()
        else:
            self.foreign.append(url)
            route.abort()

    def _console(self, message: Any) -> None:
        if message.type in ("error", "warning"):
            self.errors.append(f"console.{message.type}: {message.text}")

    def _response(self, response: Any) -> None:
        if response.status >= 400:
            self.errors.append(f"HTTP {response.status}: {response.url}")
        parts = urlsplit(response.url)
        if parts.path == USAGE_PATH:
            query = parse_qs(parts.query)
            group_by = query["group_by"][0]
            self.usage[group_by] = response.json()
            self.usage_queries[group_by] = query

    def open(self, hash_: str = "") -> Any:
        self.page.goto(f"{self.web}/analytics/{hash_}")
        return self.page

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def visit(web: str, browser: Any, transactional_db: None) -> Iterator[Visit]:
    v = Visit(browser, web)
    yield v
    v.close()


def _state(page: Any) -> str:
    page.wait_for_selector('[data-testid="dashboard"]:not([data-state="loading"])')
    return str(page.get_attribute('[data-testid="dashboard"]', "data-state"))


def _chart(page: Any, name: str) -> dict[str, Any]:
    selector = f'[data-testid="chart-{name}"]'
    page.wait_for_selector(f'{selector}[data-drawn="true"] canvas')
    box = page.locator(f"{selector} canvas").bounding_box()
    return {
        "points": int(page.get_attribute(selector, "data-points") or -1),
        "series": (page.get_attribute(selector, "data-series") or "").split(","),
        "sums": json.loads(page.get_attribute(selector, "data-sums") or "{}"),
        "width": box["width"] if box else 0,
        "height": box["height"] if box else 0,
    }


def _sum(rows: list[dict[str, Any]], key: str) -> int:
    return sum(int(row.get(key) or 0) for row in rows)


# --- seeding through the analytics app ----------------------------------------------------------


def _reply(
    conversation: Any,
    parent: Message,
    at: datetime,
    *,
    model: str,
    status: str = Message.Status.COMPLETED,
    ttft_ms: int | None = 120,
    flagged: bool = False,
) -> Message:
    reply = Message.objects.create(
        conversation=conversation,
        parent=parent,
        depth=parent.depth + 1,
        role=Message.Role.ASSISTANT,
        content="" if status != Message.Status.COMPLETED else "Ahoy there.",
        status=status,
        model=model,
        finish_reason="stop" if status == Message.Status.COMPLETED else "",
        prompt_tokens=40,
        completion_tokens=12 if status == Message.Status.COMPLETED else 0,
        ttft_ms=ttft_ms,
        total_ms=(ttft_ms or 0) + 400,
        safety_flagged=flagged,
        safety_categories=["harassment"] if flagged else [],
    )
    Message.objects.filter(pk=reply.pk).update(created_at=at, updated_at=at)
    return reply


def _exchange(conversation: Any, user: Any, at: datetime, **reply: Any) -> Message:
    """A user message and its reply, both made at `at`."""
    last = Message.objects.filter(conversation=conversation).order_by("-depth", "-id").first()
    asked = Message.objects.create(
        conversation=conversation,
        parent=last,
        depth=(last.depth + 1) if last else 0,
        role=Message.Role.USER,
        author=user,
        content="Hello",
        status=Message.Status.COMPLETED,
    )
    Message.objects.filter(pk=asked.pk).update(created_at=at, updated_at=at)
    return _reply(conversation, asked, at, **reply)


def _seed_usage() -> dict[str, Any]:
    """Two users chatting with two characters on two models over the last days and hours, with
    a failure and a flag; rolled up by `manage.py analytics_backfill`."""
    now = timezone.now()
    alice: Any = UserFactory(username="dash-alice")
    bob: Any = UserFactory(username="dash-bob")
    sea: Any = CharacterFactory(name="Captain Chart", greeting="Ahoy!")
    sky: Any = CharacterFactory(name="Pilot Plot", greeting="")
    c1 = conversation_create(owner=alice, character=sea)
    c2 = conversation_create(owner=bob, character=sky)
    c3 = conversation_create(owner=bob, character=sea)
    hours_ago = [2, 3, 5, 26, 50, 75, 100]
    for i, h in enumerate(hours_ago):
        liked = _exchange(
            c1, alice, now - timedelta(hours=h), model="model-big", ttft_ms=100 + 10 * i
        )
        _exchange(c3, bob, now - timedelta(hours=h, minutes=5), model="model-small", ttft_ms=80)
        if i < 3:
            Feedback.objects.create(message=liked, user=alice, rating=1 if i else -1)
    _exchange(c2, bob, now - timedelta(hours=3), model="model-small", ttft_ms=90, flagged=True)
    for hours, code in ((4, "llm_timeout"), (27, "llm_unavailable"), (28, "llm_timeout")):
        failed = _exchange(
            c2,
            bob,
            now - timedelta(hours=hours),
            model="model-big",
            status=Message.Status.FAILED,
            ttft_ms=None,
        )
        Generation.objects.create(
            message=failed, provider="lmstudio", model="model-big", error_code=code
        )
    call_command("analytics_backfill", verbosity=0)
    return {"characters": ["Captain Chart", "Pilot Plot"], "models": ["model-big", "model-small"]}


# --- the browser tests --------------------------------------------------------------------------


def test_the_dashboard_draws_the_usage_api_in_chromium(visit, tmp_path):
    seeded = _seed_usage()
    page = visit.open()
    assert _state(page) == "ready", page.inner_text('[data-testid="dashboard"]')

    # Default range: the last 7 days by day, one point a day, drawn from the API's rows.
    assert page.get_attribute('[data-testid="range-7d"]', "aria-pressed") == "true"
    by_day = visit.usage["day"]
    rows = by_day["rows"]
    assert rows, "the backfill rolled nothing up"
    assert int(page.get_attribute('[data-testid="dashboard"]', "data-rows") or -1) == len(rows)
    drawn = {name: _chart(page, name) for name in CHARTS}
    for name, chart in drawn.items():
        assert chart["points"] == 7, name
        assert chart["width"] > 200 and chart["height"] > 100, name
    assert drawn["messages"]["sums"] == {
        "user_messages": _sum(rows, "user_messages"),
        "replies": _sum(rows, "replies"),
    }
    assert drawn["messages"]["sums"]["replies"] > 0
    assert drawn["tokens"]["sums"] == {
        "prompt_tokens": _sum(rows, "prompt_tokens"),
        "completion_tokens": _sum(rows, "completion_tokens"),
    }
    assert drawn["moderation"]["sums"]["flagged"] == _sum(rows, "flagged") >= 1
    assert drawn["ttft"]["sums"]["ttft_p95"] > 0
    codes = by_day["totals"]["failures"]
    assert codes and set(drawn["failures"]["series"]) == set(codes)

    # The totals, in words, are the API's.
    totals = by_day["totals"]
    for key in ("user_messages", "replies", "prompt_tokens", "completion_tokens", "flagged"):
        value = page.get_attribute(f'[data-testid="total-{key}"]', "data-value")
        assert value == str(totals[key]), key
    assert totals["thumbs_up"] == 2 and totals["thumbs_down"] == 1
    assert page.inner_text('[data-testid="total-thumbs"] dd') == "2 / 1"
    ttft = page.inner_text('[data-testid="total-ttft"] dd')
    assert ttft.startswith(f"{totals['ttft_ms']['p50']} ms"), ttft
    # Top lists, most replies first; failures by code.
    characters = page.locator('[data-testid="top-characters"] tbody tr td:first-child')
    assert characters.all_inner_texts() == seeded["characters"]
    models = page.locator('[data-testid="top-models"] tbody tr td:first-child')
    assert models.all_inner_texts() == seeded["models"]
    failure_rows = page.locator('[data-testid="failures-table"] tbody tr[data-key]')
    assert failure_rows.count() == len(codes)

    shot = page.screenshot(full_page=True)
    _keep_screenshot(shot, tmp_path / "dashboard-7d.png")
    # The top of the page (header, totals, the first charts) is decoded; all of it is slow.
    _assert_not_blank(shot, min_bytes=20_000, rows=500)
    _assert_not_blank(page.locator('[data-testid="chart-messages"]').screenshot())

    # The last 24 hours, by hour.
    page.click('[data-testid="range-24h"]')
    page.wait_for_selector('[data-testid="dashboard"][data-range="24h"][data-state="ready"]')
    by_hour = visit.usage["hour"]
    assert by_hour["rows"]
    assert visit.usage_queries["hour"]["from"][0].endswith(":00:00Z")
    chart = _chart(page, "messages")
    assert chart["points"] == 24
    assert chart["sums"]["replies"] == _sum(by_hour["rows"], "replies") > 0
    assert page.url.endswith("#range=24h")

    # Reloaded, it keeps the range; 30 days has 30 points.
    page.click('[data-testid="range-30d"]')
    page.wait_for_selector('[data-testid="dashboard"][data-range="30d"][data-state="ready"]')
    assert _chart(page, "tokens")["points"] == 30

    # Everything came from the live server: the vendored chart library and the usage API.
    assert not visit.foreign, visit.foreign
    assert f"{visit.web}/static/analytics/vendor/uplot/uPlot.iife.min.js" in visit.requests
    assert sum(urlsplit(url).path == USAGE_PATH for url in visit.requests) == 9
    assert visit.errors == []


def test_the_dashboard_says_when_a_range_has_no_usage(visit, tmp_path):
    page = visit.open("#range=24h")
    assert _state(page) == "empty"
    assert page.locator('[data-testid="empty-state"]').inner_text() == "No usage in this range."
    assert visit.usage["hour"]["rows"] == []
    assert not page.locator('[data-testid="chart-messages"]').is_visible()
    assert page.get_attribute('[data-testid="range-24h"]', "aria-pressed") == "true"
    page.click('[data-testid="range-30d"]')
    page.wait_for_selector('[data-testid="dashboard"][data-range="30d"][data-state="empty"]')
    _keep_screenshot(page.screenshot(full_page=True), tmp_path / "dashboard-empty.png")
    assert not visit.foreign
    assert visit.errors == []


# --- screenshots --------------------------------------------------------------------------------


def _keep_screenshot(png: bytes, default: Path) -> Path:
    folder = os.environ.get("TEST_ARTIFACTS_DIR")
    path = Path(folder) / default.name if folder else default
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png)
    print(f"screenshot: {path}")
    return path


def _assert_not_blank(png: bytes, min_bytes: int = 2_000, rows: int | None = None) -> None:
    """A real picture: big enough, and many colours (a blank or one-colour page has one or two)
    in its first `rows` rows (all by default)."""
    assert len(png) >= min_bytes, len(png)
    width, height, pixels = _decode_png(png, rows)
    assert width > 100 and height > 100
    step = max(1, len(pixels) // 20_000)
    colours = set(pixels[::step])
    assert len(colours) >= 8, f"{len(colours)} colours"


def _decode_png(png: bytes, rows: int | None = None) -> tuple[int, int, list[tuple[int, ...]]]:
    """(width, height, pixels of the first `rows` rows) of an 8-bit RGB or RGBA, non-interlaced
    PNG (what Chromium writes): no imaging library is a dependency."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", b""
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, data = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = data
        elif kind == b"IDAT":
            idat += data
        elif kind == b"IEND":
            break
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour_type in (2, 6) and interlace == 0, header
    bpp = 3 if colour_type == 2 else 4
    raw = zlib.decompress(idat)
    stride = width * bpp
    previous = bytearray(stride)
    pixels: list[tuple[int, ...]] = []
    for y in range(min(height, rows or height)):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1 : start + 1 + stride])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 0xFF
        elif kind == 2:
            for i in range(stride):
                line[i] = (line[i] + previous[i]) & 0xFF
        elif kind == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + previous[i]) >> 1)) & 0xFF
        elif kind == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = previous[i]
                c = previous[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                line[i] = (line[i] + pred) & 0xFF
        pixels.extend(tuple(line[i : i + 3]) for i in range(0, stride, bpp))
        previous = line
    return width, height, pixels

"""The chat page's character gallery and conversation list in a real browser (Debian's
chromium, driven by Playwright) against daphne as a process: a card PNG imports with its
avatar, a bad file says why, characters are created and edited with the server's validation
shown by field, and conversations are grouped by recency, renamed, searched, deleted and
retitled live.

Screenshots (library-*.png) go to TEST_ARTIFACTS_DIR when set, else pytest's temporary
directory; the ones in docs/screenshots/ were made with TEST_ARTIFACTS_DIR=docs/screenshots."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.db import connections
from django.test import Client
from django.utils import timezone
from PIL import Image, PngImagePlugin

from fake_llm import FakeLLMServer
from messages_app import events
from messages_app.broadcast import send_event
from messages_app.models import Character, Conversation
from messages_app.services import conversation_create
from messageservice.embedded import free_port
from tests import test_chat_page_guards as page_guards
from tests.factories import CharacterFactory, UserFactory
from tests.helpers import ROOT, worker_env
from tests.test_chat_page_guards import APP, _wait_http

pytestmark = pytest.mark.django_db(transaction=True)

browser = page_guards.browser  # the headless chromium fixture, module-scoped
CARD = '[data-testid="character-card"]'
ITEM = '[data-testid="conversation-item"]'


@pytest.fixture(scope="module")
def web(
    django_db_setup: Any,
    fake_llm_server: FakeLLMServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """daphne on this run's database and Redis, its uploads in a temporary MEDIA_ROOT; the
    web root URL."""
    media = str(tmp_path_factory.mktemp("media"))
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
        cwd=ROOT,
        env=worker_env(fake_llm_server),
        check=True,
        timeout=120,
    )
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), APP],
        cwd=ROOT,
        env=worker_env(fake_llm_server, LOG_LEVEL="WARNING", MEDIA_ROOT=media),
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


class Session:
    """A logged-in browser page of a new user, and what it logged that a person would not want."""

    def __init__(
        self,
        web: str,
        browser: Any,
        tmp: Path,
        *,
        viewport: dict[str, int] | None = None,
        color_scheme: str = "light",
    ) -> None:
        self.web = web
        self.shots = Path(os.environ.get("TEST_ARTIFACTS_DIR") or tmp)
        user: Any = UserFactory(username=f"lib-{time.monotonic_ns()}")
        self.user = user
        client = Client()
        client.force_login(user)
        cookie = client.cookies[settings.SESSION_COOKIE_NAME].value
        self.context = browser.new_context(
            viewport=viewport or {"width": 1280, "height": 860}, color_scheme=color_scheme
        )
        self.context.add_cookies(
            [{"name": settings.SESSION_COOKIE_NAME, "value": cookie, "url": web}]
        )
        self.page = self.context.new_page()
        self.page.set_default_timeout(20_000)
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("dialog", self._dialog)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def open(self, fragment: str = "") -> Any:
        self.page.goto(f"{self.web}/{fragment}")
        self.page.wait_for_selector("#conversation-list", state="attached")
        return self.page

    def gallery(self) -> Any:
        page = self.page
        toggle = page.locator('[data-testid="sidebar-toggle"]')
        if not page.locator("#show-characters").is_visible() and toggle.count():
            toggle.click()  # on a phone the sidebar opens first
        page.click("#show-characters")
        page.locator("#character-gallery").wait_for(state="visible")
        return page

    def shot(self, name: str) -> None:
        self.shots.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(self.shots / f"library-{name}.png"))

    def close(self) -> None:
        self.context.close()
        assert self.errors == [], self.errors
        assert self.dialogs == [], self.dialogs


@pytest.fixture
def session(web: str, browser: Any, tmp_path: Path) -> Iterator[Session]:
    s = Session(web, browser, tmp_path)
    yield s
    s.close()


def _png(color: tuple[int, int, int], text: dict[str, str] | None = None) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    out = io.BytesIO()
    Image.new("RGB", (96, 96), color).save(out, "PNG", pnginfo=info)
    return out.getvalue()


def card_png(name: str) -> bytes:
    """A SillyTavern V2 card: the JSON, base64, in a PNG `chara` tEXt chunk."""
    card = {
        "spec": "chara_card_v2",
        "spec_version": "2.0",
        "data": {
            "name": name,
            "description": "{{char}} is the keeper of a lighthouse.",
            "personality": "Patient, dry humour.",
            "scenario": "A lighthouse at night.",
            "first_mes": "The lamp is lit. Come in from the rain.",
            "mes_example": "<START>\n{{user}}: Hello\n{{char}}: Mind the stairs.",
            # The public description, when the card has none of ours.
            "creator_notes": "Keeps the light burning on a <b>stormy</b> rock.",
            "system_prompt": "",
            "post_history_instructions": "",
            "alternate_greetings": ["Who knocks at this hour?"],
            "tags": ["sea"],
            "creator": "tests",
            "character_version": "1",
            "extensions": {},
        },
    }
    chara = base64.b64encode(json.dumps(card).encode()).decode()
    return _png((200, 40, 40), {"chara": chara})


def _file(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


SERAPHINA = ROOT / "tests" / "fixtures" / "cards" / "default_Seraphina.png"


def _drop_file(page: Any, selector: str, path: Path, mime: str) -> None:
    """Drag a file from the desktop and drop it on `selector`, as a person would."""
    data = base64.b64encode(path.read_bytes()).decode()
    page.evaluate(
        """([selector, b64, name, mime]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: mime }));
            const target = document.querySelector(selector);
            for (const type of ["dragenter", "dragover", "drop"]) {
                target.dispatchEvent(new DragEvent(type, {
                    dataTransfer: transfer, bubbles: true, cancelable: true,
                }));
            }
        }""",
        [selector, data, path.name, mime],
    )


def _natural_width(locator: Any) -> int:
    return int(locator.evaluate("img => img.complete ? img.naturalWidth : 0"))


def test_importing_a_card_png_shows_it_in_the_gallery_with_its_avatar(session, tmp_path):
    session.open()
    page = session.gallery()
    png = _file(tmp_path / "keeper.png", card_png("Lighthouse Keeper"))
    page.set_input_files('[data-testid="character-import"]', png)
    card = page.locator(CARD, has_text="Lighthouse Keeper")
    card.wait_for()
    status = page.locator('[data-testid="character-import-status"]').inner_text()
    assert status == "Imported “Lighthouse Keeper”."
    assert page.locator('[data-testid="character-import-error"]').is_hidden()
    # Its PNG became its avatar, served back and drawn.
    avatar = card.locator(".lib-avatar img")
    avatar.wait_for()
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=avatar.element_handle()
    )
    assert _natural_width(avatar) > 0
    # Server text stays text.
    description = card.locator('[data-testid="character-description"]').inner_text()
    assert description == "Keeps the light burning on a <b>stormy</b> rock."
    assert card.locator("b").count() == 0
    assert (
        "Come in from the rain" in card.locator('[data-testid="character-greeting"]').inner_text()
    )
    assert "1 alternate greeting" in card.inner_text()
    imported = Character.objects.get(owner=session.user, name="Lighthouse Keeper")
    assert imported.is_public is False
    assert card.locator('[data-testid="character-badge"]').inner_text() == "Private"
    # Export links for the owner: a PNG and a JSON card download of this character.
    png_href = card.locator('[data-testid="character-export-png"]').get_attribute("href")
    json_href = card.locator('[data-testid="character-export-json"]').get_attribute("href")
    assert f"characters/{imported.pk}/export/" in png_href and "png" in png_href
    assert "json" in json_href
    with page.expect_download() as download_info:
        card.locator('[data-testid="character-export-json"]').click()
    exported = json.loads(Path(download_info.value.path()).read_text())
    assert "Lighthouse Keeper" in json.dumps(exported)

    # SillyTavern's own default card, dropped on the gallery: it imports with its picture.
    _drop_file(page, "#character-gallery", SERAPHINA, "image/png")
    seraphina = page.locator(CARD, has_text="Seraphina")
    seraphina.wait_for()
    assert page.locator('[data-testid="character-import-status"]').inner_text() == (
        "Imported “Seraphina”."
    )
    picture = seraphina.locator(".lib-avatar img")
    picture.wait_for()
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=picture.element_handle()
    )
    assert page.locator(CARD).first.get_attribute("data-id") == str(
        Character.objects.get(owner=session.user, name="Seraphina").pk
    )
    # The arrow keys go from card to card.
    seraphina.locator('[data-testid="character-edit"]').focus()
    page.keyboard.press("ArrowRight")
    focused = "document.activeElement.closest('[data-testid=character-card]').dataset.id"
    assert page.evaluate(focused) == str(imported.pk)
    assert page.evaluate("document.activeElement.dataset.testid") == "character-edit"
    session.shot("gallery-imported")


def test_a_bad_card_file_shows_the_servers_error(session, tmp_path):
    session.open()
    page = session.gallery()
    error = page.locator('[data-testid="character-import-error"]')
    page.set_input_files(
        '[data-testid="character-import"]', _file(tmp_path / "notes.txt", b"just some text")
    )
    error.wait_for()
    assert error.get_attribute("data-code") == "not_a_card"
    text = error.inner_text()
    assert "Couldn't import “notes.txt”." in text
    message = error.locator('[data-testid="character-import-error-message"]').inner_text()
    assert message.strip() and message != "Something went wrong."
    session.shot("import-error")
    # A PNG with no card in it: another, specific error, replacing the first.
    page.set_input_files(
        '[data-testid="character-import"]', _file(tmp_path / "photo.png", _png((0, 0, 255)))
    )
    page.wait_for_function(
        "el => el.getAttribute('data-code') === 'no_card_data'", arg=error.element_handle()
    )
    assert "photo.png" in error.inner_text()
    assert page.locator(CARD).count() == 0
    assert not Character.objects.filter(owner=session.user).exists()
    # Escape leaves the gallery, and the focus returns to the button that opened it.
    page.focus('[data-testid="character-new"]')
    page.keyboard.press("Escape")
    page.locator("#character-gallery").wait_for(state="hidden")
    assert page.evaluate("document.activeElement.id") == "show-characters"


def test_a_character_is_created_and_edited_with_errors_shown_by_field(session, tmp_path):
    session.open()
    page = session.gallery()
    page.click('[data-testid="character-new"]')
    editor = page.locator('[data-testid="character-editor"]')
    editor.wait_for()
    # The dialog takes the focus, on its first field.
    assert page.evaluate("document.activeElement.dataset.testid") == "character-field-name"
    # Before any save, the editor offers what the server allows (GET characters/options/).
    options = page.evaluate(
        "fetch('/api/v1/characters/options/', {credentials: 'same-origin'}).then(r => r.json())"
    )
    hint = page.locator('[data-testid="character-allowed"]')
    page.wait_for_function(
        "el => el.textContent.includes('Allowed models')", arg=hint.element_handle()
    )
    allowed = [m or "the default" for m in options["models"]]
    assert f"Allowed models: {', '.join(allowed)}." in hint.inner_text()
    max_tokens = page.locator('[data-testid="character-field-max_tokens"]')
    assert max_tokens.get_attribute("max") == str(options["max_tokens"]["max"])
    enabled = page.eval_on_selector_all(
        '[data-testid="character-field-provider"] option:not([disabled])',
        "os => os.map(o => o.value)",
    )
    assert enabled == [p["value"] for p in options["providers"]]
    page.fill('[data-testid="character-field-name"]', "Ada")
    page.fill('[data-testid="character-field-description"]', "A patient tutor of mathematics.")
    page.fill('[data-testid="character-field-greeting"]', "Shall we begin with a proof?")
    page.click('[data-testid="character-alternate-add"]')
    page.locator('[data-testid="character-alternate"]').last.fill("Numbers first, or words?")
    page.click('[data-testid="character-alternate-add"]')
    page.locator('[data-testid="character-alternate"]').last.fill("to be removed")
    page.locator('[data-testid="character-alternate-remove"]').last.click()
    page.fill('[data-testid="character-field-model"]', "not-an-allowed-model")
    page.fill('[data-testid="character-field-temperature"]', "0.7")
    page.click('[data-testid="character-save"]')
    # The server refuses the model: the message sits under that field, which gets the focus.
    model_error = page.locator('[data-testid="character-error-model"]')
    model_error.wait_for()
    assert "not allowed" in model_error.inner_text()
    assert page.locator('[data-testid="character-form-error"]').is_visible()
    assert page.evaluate("document.activeElement.dataset.testid") == "character-field-model"
    assert "Allowed models" in page.locator('[data-testid="character-allowed"]').inner_text()
    session.shot("editor-errors")
    page.fill('[data-testid="character-field-model"]', "")
    page.set_input_files(
        '[data-testid="character-avatar-input"]', _file(tmp_path / "ada.png", _png((30, 140, 60)))
    )
    page.locator('[data-testid="character-avatar-preview"] img').wait_for()
    page.click('[data-testid="character-save"]')
    editor.wait_for(state="hidden")
    card = page.locator(CARD, has_text="Ada")
    card.wait_for()
    ada = Character.objects.get(owner=session.user, name="Ada")
    assert ada.description == "A patient tutor of mathematics."
    assert ada.temperature == pytest.approx(0.7)
    assert list(getattr(ada, "alternate_greetings", None) or []) == ["Numbers first, or words?"]
    avatar = card.locator(".lib-avatar img")
    avatar.wait_for()
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=avatar.element_handle()
    )

    # Edit: the form holds what was saved; a change is saved; Escape closes without saving.
    card.locator('[data-testid="character-edit"]').click()
    editor.wait_for()
    assert page.input_value('[data-testid="character-field-name"]') == "Ada"
    assert page.locator('[data-testid="character-alternate"]').count() == 1
    page.fill('[data-testid="character-field-description"]', "Tutor; now also teaches logic.")
    page.click('[data-testid="character-save"]')
    editor.wait_for(state="hidden")
    page.locator(CARD, has_text="now also teaches logic").wait_for()
    ada.refresh_from_db()
    assert ada.description == "Tutor; now also teaches logic."
    card.locator('[data-testid="character-edit"]').click()
    editor.wait_for()
    page.fill('[data-testid="character-field-description"]', "never saved")
    page.keyboard.press("Escape")
    editor.wait_for(state="hidden")
    # Focus goes back to the button that opened the dialog; the gallery stays open.
    assert page.evaluate("document.activeElement.dataset.testid") == "character-edit"
    assert page.locator("#character-gallery").is_visible()
    ada.refresh_from_db()
    assert ada.description == "Tutor; now also teaches logic."

    # The avatar can be taken away again: the card shows the initial instead.
    card.locator('[data-testid="character-edit"]').click()
    page.click('[data-testid="character-avatar-remove"]')
    page.click('[data-testid="character-save"]')
    editor.wait_for(state="hidden")
    card.locator(".lib-avatar-letter", has_text="A").wait_for()
    ada.refresh_from_db()
    assert not ada.avatar

    # Delete asks once more, in the button itself.
    card.locator('[data-testid="character-edit"]').click()
    page.click('[data-testid="character-delete"]')
    assert "Really delete" in page.locator('[data-testid="character-delete"]').inner_text()
    assert editor.is_visible()
    page.click('[data-testid="character-delete"]')
    editor.wait_for(state="hidden")
    card.wait_for(state="detached")
    assert not Character.objects.filter(pk=ada.pk).exists()


def _conversation(user: Any, character: Any, *, title: str, ago: timedelta) -> Conversation:
    conversation = conversation_create(owner=user, character=character, title=title)
    Conversation.objects.filter(pk=conversation.pk).update(last_activity_at=timezone.now() - ago)
    return conversation


def test_conversations_are_grouped_by_recency_and_renamed_searched_and_deleted(session):
    user = session.user
    pirate: Any = CharacterFactory(name="Captain Grouping")
    poet: Any = CharacterFactory(name="Poet Laureate")
    now = timezone.localtime()
    since_midnight = now - now.replace(hour=0, minute=0, second=0, microsecond=0)
    today = _conversation(user, pirate, title="", ago=timedelta(minutes=1))
    sonnets = _conversation(
        user, poet, title="Sonnets at dusk", ago=since_midnight + timedelta(hours=2)
    )
    week = _conversation(user, pirate, title="Charting reefs", ago=timedelta(days=4))
    _conversation(user, poet, title="Haiku drafts", ago=timedelta(days=20))
    _conversation(user, pirate, title="The old voyage", ago=timedelta(days=100))
    page = session.open(f"#conversation-{today.pk}")
    page.locator(ITEM).nth(4).wait_for()
    headings = page.locator('[data-testid="conversation-group"]').all_inner_texts()
    assert [h.strip().lower() for h in headings] == [
        "today",
        "yesterday",
        "previous 7 days",
        "previous 30 days",
        "older",
    ]
    titles = page.locator('[data-testid="conversation-title"]').all_inner_texts()
    # A conversation without a title yet shows its character's name.
    assert titles == [
        "Captain Grouping",
        "Sonnets at dusk",
        "Charting reefs",
        "Haiku drafts",
        "The old voyage",
    ]
    session.shot("conversations")

    # The open conversation downloads as Markdown and as SillyTavern JSONL.
    active = page.locator(f'{ITEM}[data-id="{today.pk}"]')
    with page.expect_download() as markdown:
        active.locator('[data-testid="chat-export-md"]').click()
    assert "Hello, I am Captain Grouping." in Path(markdown.value.path()).read_text()
    with page.expect_download() as jsonl:
        active.locator('[data-testid="chat-export-jsonl"]').click()
    lines = Path(jsonl.value.path()).read_text().splitlines()
    assert json.loads(lines[0])["character_name"] == "Captain Grouping"
    assert json.loads(lines[1])["mes"] == "Hello, I am Captain Grouping."
    assert page.locator('[data-testid="chat-export-md"]').count() == 1

    # Rename inline, from the keyboard: Enter saves, and the server keeps it.
    item = page.locator(f'{ITEM}[data-id="{week.pk}"]')
    item.hover()  # rename and delete show on the item under the pointer
    item.locator('[data-testid="conversation-rename"]').click()
    box = page.locator('[data-testid="conversation-rename-input"]')
    assert box.input_value() == "Charting reefs"
    box.fill("Reefs & <shoals>")
    box.press("Enter")
    item.locator('[data-testid="conversation-title"]', has_text="Reefs & <shoals>").wait_for()
    week.refresh_from_db()
    assert week.title == "Reefs & <shoals>"
    # Renaming the open conversation renames the chat's header too.
    opened = page.locator(f'{ITEM}[data-id="{today.pk}"]')
    opened.locator('[data-testid="conversation-rename"]').click()
    box.fill("Captain's log")
    box.press("Enter")
    page.locator('[data-testid="chat-title"]', has_text="Captain's log").wait_for()

    # From the keyboard: arrows move down the list from the search box, F2 renames, and
    # Escape gives the rename up.
    page.focus('[data-testid="conversation-search"]')
    for _ in range(3):
        page.keyboard.press("ArrowDown")
    assert page.evaluate("document.activeElement.closest('[data-id]').dataset.id") == str(week.pk)
    page.keyboard.press("F2")
    box.wait_for()
    box.fill("not this")
    box.press("Escape")
    item.locator('[data-testid="conversation-title"]', has_text="Reefs & <shoals>").wait_for()
    week.refresh_from_db()
    assert week.title == "Reefs & <shoals>"

    # Search: by title or the character's name, as the server filters.
    search = page.locator('[data-testid="conversation-search"]')
    search.fill("poet")
    page.wait_for_function(
        "n => document.querySelectorAll('[data-testid=conversation-item]').length === n", arg=2
    )
    assert sorted(page.locator('[data-testid="conversation-title"]').all_inner_texts()) == [
        "Haiku drafts",
        "Sonnets at dusk",
    ]
    search.fill("nothing matches this")
    page.locator(
        '[data-testid="conversation-status"]', has_text="No conversations match"
    ).wait_for()
    assert page.locator(ITEM).count() == 0
    search.fill("")
    page.locator(ITEM).nth(4).wait_for()

    # Delete, after a confirmation; Cancel keeps it.
    item.hover()
    item.locator('[data-testid="conversation-delete"]').click()
    confirm = page.locator('[data-testid="conversation-delete-dialog"]')
    confirm.wait_for()
    assert "Reefs & <shoals>" in confirm.inner_text()
    session.shot("delete-confirm")
    page.click('[data-testid="conversation-delete-cancel"]')
    confirm.wait_for(state="hidden")
    item.hover()
    item.locator('[data-testid="conversation-delete"]').click()
    confirm.wait_for()
    page.keyboard.press("Escape")
    confirm.wait_for(state="hidden")
    assert Conversation.objects.filter(pk=week.pk).exists()
    item.hover()
    item.locator('[data-testid="conversation-delete"]').click()
    page.click('[data-testid="conversation-delete-confirm"]')
    item.wait_for(state="detached")
    assert not Conversation.objects.filter(pk=week.pk).exists()
    assert page.locator(ITEM).count() == 4
    # The focus stays in the list, on the next conversation.
    page.wait_for_function("document.activeElement.dataset.part === 'open'")
    assert page.evaluate("document.activeElement.closest('[data-id]').dataset.id") != str(week.pk)

    # Deleting the open conversation opens the next one, not a dead thread.
    active = page.locator(f'{ITEM}[data-id="{today.pk}"]')
    active.locator('[data-testid="conversation-delete"]').click()
    page.click('[data-testid="conversation-delete-confirm"]')
    active.wait_for(state="detached")
    page.wait_for_url(f"**/#conversation-{sonnets.pk}")
    page.locator('[data-testid="chat-title"]', has_text="Sonnets at dusk").wait_for()
    page.wait_for_selector('[data-testid="connection-status"][data-state="open"]')
    assert page.locator('[data-testid="banner"]').is_hidden()
    assert not Conversation.objects.filter(pk=today.pk).exists()


def test_deleting_the_last_conversation_while_it_is_open_leaves_no_dead_thread(session):
    character: Any = CharacterFactory(name="Captain Lonely", greeting="Only me here.")
    conversation = conversation_create(owner=session.user, character=character)
    page = session.open(f"#conversation-{conversation.pk}")
    page.wait_for_selector('[data-testid="connection-status"][data-state="open"]')
    page.locator("#messages", has_text="Only me here.").wait_for()
    item = page.locator(f'{ITEM}[data-id="{conversation.pk}"]')
    item.hover()
    item.locator('[data-testid="conversation-delete"]').click()
    page.click('[data-testid="conversation-delete-confirm"]')
    item.wait_for(state="detached")
    # The page is as a new user first sees it: no thread, nothing to send to, no stale hash.
    page.locator('[data-testid="chat-title"]', has_text="No conversation open").wait_for()
    page.locator("#empty-state", has_text="Pick a conversation or start a new chat.").wait_for()
    assert "Only me here." not in page.locator("#message-items").inner_text()
    assert page.evaluate("window.location.hash") == ""
    assert page.locator("#composer").is_disabled()
    assert not Conversation.objects.filter(pk=conversation.pk).exists()
    # The server's conversation.deleted frame, if it comes after, brings back no banner.
    page.wait_for_timeout(300)
    assert page.locator('[data-testid="banner"]').is_hidden()
    assert page.locator('[data-testid="connection-status"]').get_attribute("data-state") == "idle"


def test_a_title_made_by_the_server_appears_in_the_list_live(session):
    character: Any = CharacterFactory(name="Captain Live")
    conversation = conversation_create(owner=session.user, character=character)
    page = session.open(f"#conversation-{conversation.pk}")
    page.wait_for_selector('[data-testid="connection-status"][data-state="open"]')
    item = page.locator(f'{ITEM}[data-id="{conversation.pk}"]')
    item.locator('[data-testid="conversation-title"]', has_text="Captain Live").wait_for()

    def retitle() -> None:
        # In a thread of its own: the event goes out through the channel layer (async_to_sync),
        # which cannot run beside Playwright's loop in this thread.
        try:
            Conversation.objects.filter(pk=conversation.pk).update(title="Storm warnings")
            conversation.refresh_from_db()
            send_event(conversation, events.conversation_updated(conversation))
        finally:
            connections.close_all()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(retitle).result()
    item.locator('[data-testid="conversation-title"]', has_text="Storm warnings").wait_for()


def _luminance(css_color: str) -> float:
    r, g, b = (int(v) for v in css_color[css_color.index("(") + 1 : -1].split(",")[:3])
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255


def test_the_gallery_starts_a_chat_and_fits_a_phone_in_the_dark(web, browser, tmp_path):
    session = Session(
        web, browser, tmp_path, viewport={"width": 375, "height": 780}, color_scheme="dark"
    )
    try:
        character: Any = CharacterFactory(
            name="Captain Phone", description="Fits in a pocket.", greeting="Ahoy, small screen!"
        )
        session.open()
        page = session.gallery()
        card = page.locator(CARD, has_text="Captain Phone")
        card.wait_for()
        # Nothing spills sideways at 375 px.
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0
        box = card.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375
        # The system's dark theme reaches the cards: light text on a dark card.
        card_bg = card.evaluate("el => getComputedStyle(el).backgroundColor")
        name_color = card.locator('[data-testid="character-name"]').evaluate(
            "el => getComputedStyle(el).color"
        )
        assert _luminance(card_bg) < 0.25 < 0.75 < _luminance(name_color)
        session.shot("gallery-mobile")
        assert page.locator("#character-gallery .cg-toolbar").bounding_box()["width"] <= 375
        page.click('[data-testid="character-new"]')
        page.locator('[data-testid="character-editor"]').wait_for()
        session.shot("editor-mobile")
        page.keyboard.press("Escape")
        page.locator('[data-testid="character-editor"]').wait_for(state="hidden")
        card.locator('[data-testid="character-chat"]').click()
        page.locator('[data-testid="message-content"]', has_text="Ahoy, small screen!").wait_for()
        conversation = Conversation.objects.get(owner=session.user)
        assert conversation.character_id == character.pk
        page.locator(f'{ITEM}[data-id="{conversation.pk}"]').wait_for(state="attached")
    finally:
        session.close()

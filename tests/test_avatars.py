"""Avatars: uploaded, validated and re-encoded with Pillow, stored through default_storage and
served at MEDIA_URL by a small view that only serves upload files."""

from __future__ import annotations

import base64
import io
import json
import random
import struct
import zlib
from pathlib import Path
from typing import Any, cast

import pytest
from django.core.files.storage import default_storage
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image, PngImagePlugin
from rest_framework.test import APIClient

from messages_app.accounts.auth import ServiceRefreshToken
from messages_app.models import Character
from messageservice.request_limits import body_limit
from tests.factories import CharacterFactory, UserFactory
from tests.test_request_limits import BODY_LIMIT, Daphne

pytestmark = pytest.mark.django_db(transaction=True)


def _character(**fields: Any) -> Any:
    return CharacterFactory(**fields)


def _user(**fields: Any) -> Any:
    return UserFactory(**fields)


@pytest.fixture(autouse=True)
def _media(settings: Any, tmp_path: Path) -> Path:
    root = tmp_path / "media"
    settings.MEDIA_ROOT = str(root)
    return root


@pytest.fixture
def mine(user: Any) -> Any:
    return _character(owner=user, name="Mine", is_public=False)


def _image(fmt: str, size: tuple[int, int] = (64, 64), mode: str = "RGB", **save: Any) -> bytes:
    out = io.BytesIO()
    Image.new(mode, size, (10, 120, 200) if mode == "RGB" else None).save(out, format=fmt, **save)
    return out.getvalue()


def _post(api: APIClient, character: Character, content: bytes, name: str = "a.png") -> Any:
    return api.post(
        f"/api/v1/characters/{character.pk}/avatar/",
        {"file": SimpleUploadedFile(name, content)},
        format="multipart",
    )


def _served(api: APIClient, url: str) -> tuple[Any, Image.Image]:
    resp = api.get(url)
    assert resp.status_code == 200, url
    return resp, Image.open(io.BytesIO(b"".join(cast(Any, resp).streaming_content)))


def _error(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.content[:300]
    assert resp.json()["error"]["code"] == code
    return resp.json()["error"]


def test_an_uploaded_png_is_shrunk_stripped_and_served_with_cache_headers(api, mine):
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "secret location")
    content = _image("PNG", (2000, 1000), pnginfo=info)
    resp = _post(api, mine, content)
    assert resp.status_code == 200, resp.content
    body = resp.json()
    assert body["id"] == mine.pk and body["is_owner"] is True
    url = body["avatar_url"]
    assert url.startswith("/media/avatars/") and url.endswith(".webp")
    served, image = _served(api, url)
    assert served["Content-Type"] == "image/webp"
    assert "immutable" in served["Cache-Control"] and "max-age=" in served["Cache-Control"]
    assert served["X-Content-Type-Options"] == "nosniff"
    assert image.size == (512, 256)
    assert "Comment" not in image.info and "exif" not in image.info
    # Anyone may load it (an <img> of the gallery), without credentials.
    assert APIClient().get(url).status_code == 200
    assert api.head(url).status_code == 200


def test_a_jpegs_exif_is_applied_then_dropped_and_a_gif_gives_its_first_frame(api, mine):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the stored image is turned upright
    exif[0x010F] = "CameraMaker"
    resp = _post(api, mine, _image("JPEG", (300, 100), exif=exif.tobytes()), "a.jpg")
    assert resp.status_code == 200, resp.content
    _, image = _served(api, resp.json()["avatar_url"])
    assert image.size == (100, 300) and not image.getexif()

    frames = [Image.new("RGB", (40, 40), color) for color in ((255, 0, 0), (0, 255, 0))]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:])
    resp = _post(api, mine, out.getvalue(), "a.gif")
    assert resp.status_code == 200, resp.content
    _, image = _served(api, resp.json()["avatar_url"])
    red, green, _ = cast(tuple[int, int, int], image.convert("RGB").getpixel((20, 20)))
    assert red > 200 and green < 50


def test_a_webp_with_alpha_keeps_its_transparency(api, mine):
    resp = _post(api, mine, _image("WEBP", (32, 32), mode="RGBA"), "a.webp")
    assert resp.status_code == 200
    _, image = _served(api, resp.json()["avatar_url"])
    assert image.mode == "RGBA" and cast(tuple[int, ...], image.getpixel((0, 0)))[3] == 0


def test_a_new_avatar_gets_a_new_name_and_the_old_file_goes(api, mine, _media):
    first = _post(api, mine, _image("PNG")).json()["avatar_url"]
    second = _post(api, mine, _image("PNG", (80, 80))).json()["avatar_url"]
    assert first != second
    assert api.get(first).status_code == 404
    assert len(list((_media / "avatars").iterdir())) == 1


def test_delete_removes_the_avatar(api, mine, _media):
    url = _post(api, mine, _image("PNG")).json()["avatar_url"]
    resp = api.delete(f"/api/v1/characters/{mine.pk}/avatar/")
    assert resp.status_code == 204
    assert api.get(f"/api/v1/characters/{mine.pk}/").json()["avatar_url"] is None
    assert api.get(url).status_code == 404
    assert list((_media / "avatars").iterdir()) == []
    # Deleting again is fine.
    assert api.delete(f"/api/v1/characters/{mine.pk}/avatar/").status_code == 204


def test_bad_images_are_400_and_too_many_bytes_413(api, mine, settings):
    _error(_post(api, mine, b"not an image at all"), 400, "invalid_image")
    _error(_post(api, mine, b"%PDF-1.4 ...", "a.pdf"), 400, "invalid_image")
    _error(_post(api, mine, _image("BMP"), "a.bmp"), 400, "invalid_image")
    truncated = _image("PNG", (300, 300))
    _error(_post(api, mine, truncated[: len(truncated) // 2]), 400, "invalid_image")
    settings.AVATAR_MAX_BYTES = 1000
    error = _error(
        _post(api, mine, _image("PNG", (400, 400), mode="RGB") + b"\0" * 2000), 413, "too_large"
    )
    assert error["details"]["max_bytes"] == 1000
    resp = api.post(f"/api/v1/characters/{mine.pk}/avatar/", {}, format="multipart")
    _error(resp, 400, "invalid")
    assert Character.objects.get(pk=mine.pk).avatar.name == ""


def test_a_decompression_bomb_is_image_too_large(api, mine):
    def chunk(cid: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + cid + data + struct.pack(">I", zlib.crc32(cid + data))

    ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    bomb = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
        + chunk(b"IEND", b"")
    )
    _error(_post(api, mine, bomb), 400, "image_too_large")


def test_storage_that_cannot_be_written_is_503_not_500(api, mine, settings, tmp_path):
    (tmp_path / "a-file").write_text("not a directory")
    settings.MEDIA_ROOT = str(tmp_path / "a-file" / "media")
    error = _error(_post(api, mine, _image("PNG")), 503, "storage_unavailable")
    assert error["message"]
    assert Character.objects.get(pk=mine.pk).avatar.name == ""
    _error(_upload_card(api), 503, "storage_unavailable")
    assert not Character.objects.filter(name="Card with picture").exists()


def _upload_card(api: APIClient) -> Any:
    info = PngImagePlugin.PngInfo()
    card = {"spec": "chara_card_v2", "spec_version": "2.0", "data": {"name": "Card with picture"}}
    info.add_text("chara", base64.b64encode(json.dumps(card).encode()).decode())
    return api.post(
        "/api/v1/characters/import/",
        {"file": SimpleUploadedFile("c.png", _image("PNG", pnginfo=info))},
        format="multipart",
    )


def test_only_the_owner_or_staff_change_an_avatar(api, user):
    public = _character(name="Everyone's")
    _error(_post(api, public, _image("PNG")), 403, "permission_denied")
    _error(api.delete(f"/api/v1/characters/{public.pk}/avatar/"), 403, "permission_denied")
    hidden = _character(owner=_user(username="bob"), is_public=False)
    _error(_post(api, hidden, _image("PNG")), 404, "not_found")
    staff = APIClient()
    staff.force_authenticate(_user(username="staffer", is_staff=True))
    assert _post(staff, public, _image("PNG")).status_code == 200


def test_a_public_characters_new_avatar_goes_back_to_review(api, user):
    character = _character(owner=user, is_public=True)
    assert character.approval == "approved"
    body = _post(api, character, _image("PNG")).json()
    assert body["approval"] == "pending"


def test_the_media_view_serves_only_upload_files(api, _media):
    (_media / "avatars").mkdir(parents=True)
    (_media / "avatars" / "ok.png").write_bytes(_image("PNG"))
    (_media / "avatars" / "notes.txt").write_text("hi")
    (_media / "avatars" / ".hidden.png").write_bytes(b"x")
    (_media / "secret.png").write_bytes(b"x")
    assert api.get("/media/avatars/ok.png")["Content-Type"] == "image/png"
    for path in (
        "/media/avatars/",
        "/media/avatars",
        "/media/avatars/notes.txt",
        "/media/avatars/.hidden.png",
        "/media/secret.png",
        "/media/avatars/../secret.png",
        "/media/avatars/%2e%2e/secret.png",
        "/media/avatars/..%2fsecret.png",
        "/media/avatars/missing.png",
        "/media/avatars/%00.png",
    ):
        assert api.get(path).status_code == 404, path
    assert api.post("/media/avatars/ok.png").status_code == 405


def test_character_and_conversation_json_carry_the_avatar_url(api, mine, user):
    url = _post(api, mine, _image("PNG")).json()["avatar_url"]
    assert default_storage.exists(url.removeprefix("/media/"))
    listed = {c["id"]: c for c in api.get("/api/v1/characters/").json()["results"]}
    assert listed[mine.pk]["avatar_url"] == url
    resp = api.post("/api/v1/conversations/", {"character_id": mine.pk}, format="json")
    assert resp.json()["character"] == {"id": mine.pk, "name": "Mine", "avatar_url": url}
    row = api.get("/api/v1/conversations/").json()["results"][0]
    assert row["character"]["avatar_url"] == url


def test_deleting_a_character_without_conversations_removes_its_avatar(api, mine, _media):
    _post(api, mine, _image("PNG"))
    assert api.delete(f"/api/v1/characters/{mine.pk}/").status_code == 204
    assert list((_media / "avatars").iterdir()) == []


def test_daphnes_body_limit_admits_the_upload_limits_on_the_upload_routes(settings):
    settings.MAX_REQUEST_BODY_BYTES = 1024 * 1024
    settings.AVATAR_MAX_BYTES = 2 * 1024 * 1024
    settings.CARD_MAX_BYTES = 8 * 1024 * 1024
    upload = 8 * 1024 * 1024 + 64 * 1024
    assert body_limit(b"/api/v1/characters/import/") == upload
    assert body_limit(b"/api/v1/characters/12/avatar/") == upload
    assert body_limit(b"/api/v1/characters/12/avatar/?x=1") == upload
    for path in (
        b"/api/v1/characters/",
        b"/api/v1/characters/12/",
        b"/api/v1/conversations/1/messages/",
        b"/api/v1/characters/12/avatar/x",
        b"/x/api/v1/characters/import/",
    ):
        assert body_limit(path) == 1024 * 1024, path


def _multipart(field: str, filename: str, content: bytes) -> tuple[bytes, str]:
    boundary = "----avatar-test-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
        f'filename="{filename}"\r\nContent-Type: application/octet-stream\r\n\r\n'
    ).encode()
    return head + content + f"\r\n--{boundary}--\r\n".encode(), boundary


def test_under_daphne_an_avatar_over_the_body_limit_passes_and_is_served(tmp_path, monkeypatch):
    uploader = _user(username="uploader", password="pw-123456")
    character = _character(owner=uploader, is_public=False)
    noise = random.Random(7).randbytes(700 * 700 * 3)
    out = io.BytesIO()
    Image.frombytes("RGB", (700, 700), noise).save(out, format="PNG", compress_level=0)
    content = out.getvalue()
    assert BODY_LIMIT < 1024 * 1024 < len(content) < 2 * 1024 * 1024
    # The daphne process (tests.test_request_limits: MAX_REQUEST_BODY_BYTES 256 KiB) inherits it.
    monkeypatch.setenv("MEDIA_ROOT", str(tmp_path / "daphne-media"))
    server = Daphne()
    try:
        token = str(ServiceRefreshToken.for_user(uploader).access_token)
        body, boundary = _multipart("file", "big.png", content)
        status, _, answer = server.request(
            "POST",
            f"/api/v1/characters/{character.pk}/avatar/",
            body,
            {
                "Content-Type": f"multipart/form-data; boundary={boundary}",
                "Authorization": f"Bearer {token}",
            },
        )
        assert status == 200, answer[:300]
        url = json.loads(answer)["avatar_url"]
        status, headers, image = server.request("GET", url)
        assert status == 200 and headers["Content-Type"] == "image/webp"
        assert Image.open(io.BytesIO(image)).size == (512, 512)
        # The same body elsewhere is still refused at the general limit.
        status, _, _ = server.request(
            "POST", "/api/v1/conversations/", body, {"Content-Type": "application/json"}
        )
        assert status == 413
    finally:
        server.stop()

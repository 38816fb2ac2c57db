"""Character cards: import V1/V2/V3 cards (PNG or JSON), export PNG (both chunks) and JSON,
compatible with SillyTavern's reader; hostile files get a clear 400/413, never a 500."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from pathlib import Path
from typing import Any, cast

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image, PngImagePlugin
from rest_framework.test import APIClient

from fake_llm import Script
from messages_app.models import Character
from tests.factories import CharacterFactory, UserFactory
from tests.helpers import run_llm_worker

pytestmark = pytest.mark.django_db(transaction=True)


def _character(**fields: Any) -> Any:
    return CharacterFactory(**fields)


def _user(**fields: Any) -> Any:
    return UserFactory(**fields)


FIXTURES = Path(__file__).parent / "fixtures" / "cards"
SERAPHINA = FIXTURES / "default_Seraphina.png"
IMPORT = "/api/v1/characters/import/"
# The fields every V2 card's `data` has (the TavernCard V2 spec), with their JSON types.
V2_DATA_FIELDS = {
    "name": str,
    "description": str,
    "personality": str,
    "scenario": str,
    "first_mes": str,
    "mes_example": str,
    "creator_notes": str,
    "system_prompt": str,
    "post_history_instructions": str,
    "alternate_greetings": list,
    "tags": list,
    "creator": str,
    "character_version": str,
    "extensions": dict,
}


@pytest.fixture(autouse=True)
def _media(settings: Any, tmp_path: Path) -> None:
    settings.MEDIA_ROOT = str(tmp_path / "media")
    settings.CHARACTER_ALLOWED_PROVIDERS = [""]
    settings.CHARACTER_ALLOWED_MODELS = [""]


def _upload(api: APIClient, content: bytes, name: str = "card.png") -> Any:
    return api.post(IMPORT, {"file": SimpleUploadedFile(name, content)}, format="multipart")


def _error(resp: Any, status: int, code: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.content[:500]
    body = resp.json()
    assert body["error"]["code"] == code, body
    assert set(body["error"]) == {"code", "message", "details"}
    return body["error"]


def _b64(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return base64.b64encode(text.encode()).decode()


def _png(size: tuple[int, int] = (64, 96), **chunks: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    for keyword, text in chunks.items():
        info.add_text(keyword, text)
    out = io.BytesIO()
    Image.new("RGB", size, (200, 80, 40)).save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def _chunk(cid: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + cid + data + struct.pack(">I", zlib.crc32(cid + data))


def _v2(name: str = "Kira", **data: Any) -> dict[str, Any]:
    return {"spec": "chara_card_v2", "spec_version": "2.0", "data": {"name": name, **data}}


def _read_st(png: bytes) -> dict[str, Any]:
    """What SillyTavern's character-card-parser reads: the tEXt chunks, ccv3 first, then chara,
    keywords compared in lower case, base64 then JSON."""
    image = Image.open(io.BytesIO(png))
    image.load()
    texts = {k.lower(): v for k, v in cast(Any, image).text.items()}
    chosen = texts.get("ccv3", texts.get("chara"))
    assert chosen is not None
    return json.loads(base64.b64decode(chosen).decode("utf-8"))


def _chunks(png: bytes) -> dict[str, dict[str, Any]]:
    image = Image.open(io.BytesIO(png))
    image.load()
    return {k: json.loads(base64.b64decode(v)) for k, v in cast(Any, image).text.items()}


# --- import ------------------------------------------------------------------------------------


def test_sillytaverns_default_card_imports_with_its_fields_picture_and_extras(api, user):
    resp = _upload(api, SERAPHINA.read_bytes(), "default_Seraphina.png")
    assert resp.status_code == 201, resp.content
    body = resp.json()
    source = _chunks(SERAPHINA.read_bytes())["chara"]["data"]
    assert body["name"] == "Seraphina"
    assert body["persona"] == source["description"]
    assert body["greeting"] == source["first_mes"]
    assert body["example_dialogue"] == source["mes_example"]
    assert body["personality"] == source["personality"]
    assert body["scenario"] == source["scenario"]
    assert body["creator"] == "OtisAlejandro" and body["character_version"] == "1.0.0"
    assert body["creator_notes"] == source["creator_notes"]
    # Owned by the caller, private, and editable by them.
    assert body["owner"] == user.username and body["is_public"] is False
    assert body["is_owner"] is True
    # The card's picture is the avatar, re-encoded, and is served.
    assert body["avatar_url"].startswith("/media/avatars/")
    served = api.get(body["avatar_url"])
    assert served.status_code == 200 and served["Content-Type"] == "image/webp"
    avatar = Image.open(io.BytesIO(b"".join(served.streaming_content)))
    assert max(avatar.size) <= 512 and avatar.size == (341, 512)
    # What this service does not use is kept for the export.
    character = Character.objects.get(pk=body["id"])
    assert character.card_extras["character_book"] == source["character_book"]
    assert character.card_extras["extensions"]["world"] == "Eldoria"


def test_ccv3_wins_over_chara_when_a_png_has_both(api):
    png = _png(
        chara=_b64(_v2("Old V2 name", first_mes="v2 hello")),
        ccv3=_b64(
            {
                "spec": "chara_card_v3",
                "spec_version": "3.0",
                "data": {"name": "V3 name", "first_mes": "v3 hello", "group_only_greetings": []},
            }
        ),
    )
    resp = _upload(api, png)
    assert resp.status_code == 201, resp.content
    assert resp.json()["name"] == "V3 name" and resp.json()["greeting"] == "v3 hello"


def test_a_v2_card_without_spec_is_read_from_its_data(api):
    resp = _upload(api, json.dumps({"data": {"name": "No Spec", "first_mes": "Hi"}}).encode())
    assert resp.status_code == 201, resp.content
    assert resp.json()["name"] == "No Spec" and resp.json()["greeting"] == "Hi"


def test_a_v1_json_card_and_a_v2_json_card_import(api):
    v1 = {
        "name": "Old Timer",
        "description": "Grumpy.",
        "personality": "terse",
        "scenario": "A porch.",
        "first_mes": "What?",
        "mes_example": "<START>",
    }
    resp = _upload(api, json.dumps(v1).encode(), "old.json")
    assert resp.status_code == 201, resp.content
    assert resp.json()["persona"] == "Grumpy." and resp.json()["greeting"] == "What?"
    assert resp.json()["avatar_url"] is None
    v2 = _v2(
        "Kira",
        first_mes="Hi",
        alternate_greetings=["Yo", "", "Hey there"],
        tags="fantasy, elf ,",
        character_version=2,
    )
    resp = _upload(api, ("\ufeff" + json.dumps(v2)).encode(), "kira.json")
    assert resp.status_code == 201, resp.content
    body = resp.json()
    assert body["alternate_greetings"] == ["Yo", "Hey there"]
    assert body["tags"] == ["fantasy", "elf"] and body["character_version"] == "2"


def test_an_imported_cards_personality_and_scenario_reach_the_prompt(api, fake_llm):
    card = _v2(
        "Kira",
        description="An elf ranger.",
        personality="wry, loyal",
        scenario="A forest at dusk.",
        first_mes="Hm?",
    )
    character = _upload(api, json.dumps(card).encode(), "kira.json").json()
    conversation = api.post(
        "/api/v1/conversations/", {"character_id": character["id"]}, format="json"
    ).json()
    fake_llm.push(Script.from_text("Quiet."))
    api.post(
        f"/api/v1/conversations/{conversation['id']}/messages/", {"content": "hi"}, format="json"
    )
    run_llm_worker()
    system = fake_llm.requests[-1]["messages"][0]
    assert system["role"] == "system"
    assert "You are Kira. An elf ranger." in system["content"]
    assert "Kira's personality: wry, loyal" in system["content"]
    assert "Scenario: A forest at dusk." in system["content"]


# --- hostile or broken files -----------------------------------------------------------------


def test_not_a_png_nor_json_is_not_a_card(api):
    _error(_upload(api, b"GIF89a\x01\x00\x01\x00", "x.gif"), 400, "not_a_card")
    _error(_upload(api, b"\xff\xfe\x00garbage", "x.bin"), 400, "not_a_card")
    _error(_upload(api, b"just some text", "x.txt"), 400, "not_a_card")


def test_a_png_without_card_chunks_has_no_card_data(api):
    _error(_upload(api, _png(Comment="hello")), 400, "no_card_data")


@pytest.mark.parametrize(
    ("chunk", "why"),
    [
        ("@@@ not base64 @@@", "base64"),
        (_b64("{not json"), "JSON"),
        (_b64("[1, 2]"), "object"),
        (base64.b64encode(b"\xff\xfe{}").decode(), "UTF-8"),
        (_b64({"spec": "chara_card_v2", "data": "nope"}), "data"),
        (_b64({"spec": "something_else"}), "card"),
        (_b64(_v2("")), "name"),
        (_b64(_v2("Kira", tags=[1, 2])), "tags"),
        (_b64(_v2("Kira", first_mes={"x": 1})), "first_mes"),
        (_b64(_v2("K" * 101)), "name"),
    ],
)
def test_bad_card_data_in_a_png_is_bad_card(api, chunk, why):
    error = _error(_upload(api, _png(chara=chunk)), 400, "bad_card")
    assert why.lower() in json.dumps(error).lower()
    assert not Character.objects.filter(owner__isnull=False).exists()


def test_bad_json_file_is_bad_card(api):
    _error(_upload(api, b'{"spec": "chara_card_v2", ', "x.json"), 400, "bad_card")
    _error(_upload(api, b'{"a": ' + b"[" * 200_000 + b"]" * 200_000 + b"}"), 400, "bad_card")
    deep: dict[str, Any] = {"spec": "chara_card_v2", "data": {"name": "Deep", "extensions": {}}}
    node = deep["data"]["extensions"]
    for _ in range(100):
        node["x"] = {}
        node = node["x"]
    error = _error(_upload(api, json.dumps(deep).encode(), "deep.json"), 400, "bad_card")
    assert "nested" in error["message"]


def test_a_huge_text_chunk_is_too_large(api, settings):
    settings.CARD_MAX_CHUNK_BYTES = 64 * 1024
    png = _png(chara=_b64(_v2("Big", description="x" * 100_000)))
    error = _error(_upload(api, png), 413, "too_large")
    assert error["details"]["max_chunk_bytes"] == 64 * 1024


def test_a_chunk_that_declares_more_than_the_file_holds_is_bad_card(api):
    png = _png()
    iend = png.rindex(b"IEND") - 4
    lying = struct.pack(">I", 2**31 - 1) + b"tEXt" + b"chara\x00abc"
    _error(_upload(api, png[:iend] + lying), 400, "bad_card")


def test_a_compressed_text_bomb_is_too_large(api):
    bomb = b"chara\x00\x00" + zlib.compress(b"A" * (8 * 1024 * 1024), 9)
    png = _png()
    iend = png.rindex(b"IEND") - 4
    png = png[:iend] + _chunk(b"zTXt", bomb) + png[iend:]
    assert len(png) < 64 * 1024
    _error(_upload(api, png), 413, "too_large")


def test_a_decompression_bomb_is_refused_before_it_is_decoded(api):
    ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" * 1024)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"tEXt", b"chara\x00" + _b64(_v2("Bomb")).encode())
        + _chunk(b"IDAT", pixels)
        + _chunk(b"IEND", b"")
    )
    error = _error(_upload(api, png), 400, "image_too_large")
    assert error["details"]["max_pixels"] == 4096 * 4096
    assert "2500000000" in error["message"]


# Pillow warns from Image.open itself, before our check refuses the image.
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pillows_own_bomb_guard_also_gives_image_too_large(api, settings):
    # Under our limit but over Pillow's MAX_IMAGE_PIXELS: its warning is an error here.
    settings.IMAGE_MAX_PIXELS = 10**10
    ihdr = struct.pack(">IIBBBBB", 10_000, 10_000, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b"")
    assert (Image.MAX_IMAGE_PIXELS or 0) < 10_000 * 10_000
    _error(_upload(api, png), 400, "image_too_large")


def test_an_image_over_our_pixel_limit_is_refused_with_its_size(api, settings):
    settings.IMAGE_MAX_PIXELS = 100 * 100
    error = _error(_upload(api, _png((200, 100), chara=_b64(_v2("Wide")))), 400, "image_too_large")
    assert (error["details"]["width"], error["details"]["height"]) == (200, 100)


def test_a_truncated_png_is_bad_card(api):
    png = _png((300, 300), chara=_b64(_v2("Cut")))
    idat = png.index(b"IDAT")
    _error(_upload(api, png[: idat + 40]), 400, "bad_card")


def test_a_huge_file_is_too_large(api, settings):
    settings.CARD_MAX_BYTES = 1000
    error = _error(
        _upload(api, _png(chara=_b64(_v2("K", description="x" * 2000)))), 413, "too_large"
    )
    assert error["details"]["max_bytes"] == 1000


def test_import_without_a_file_is_400(api):
    resp = api.post(IMPORT, {}, format="multipart")
    _error(resp, 400, "invalid")


# --- export ------------------------------------------------------------------------------------


def _import_seraphina(api: APIClient) -> dict[str, Any]:
    resp = _upload(api, SERAPHINA.read_bytes(), "default_Seraphina.png")
    assert resp.status_code == 201
    return resp.json()


def test_png_export_has_both_chunks_in_sillytaverns_shape_and_imports_back_the_same(api):
    imported = _import_seraphina(api)
    resp = api.get(f"/api/v1/characters/{imported['id']}/export/?format=png")
    assert resp.status_code == 200 and resp["Content-Type"] == "image/png"
    assert resp["Content-Disposition"] == 'attachment; filename="Seraphina.png"'
    png = resp.content
    chunks = _chunks(png)
    assert set(chunks) == {"chara", "ccv3"}
    assert (chunks["chara"]["spec"], chunks["chara"]["spec_version"]) == ("chara_card_v2", "2.0")
    assert (chunks["ccv3"]["spec"], chunks["ccv3"]["spec_version"]) == ("chara_card_v3", "3.0")
    for card in chunks.values():
        for key, kind in V2_DATA_FIELDS.items():
            assert isinstance(card["data"][key], kind), key
        # V1 readers find the fields at the top level, as SillyTavern writes them.
        assert card["name"] == card["data"]["name"] == "Seraphina"
        assert card["first_mes"] == card["data"]["first_mes"] == imported["greeting"]
    assert isinstance(chunks["ccv3"]["data"]["group_only_greetings"], list)
    # What SillyTavern reads (ccv3 first), and the original card's data, survive.
    read = _read_st(png)["data"]
    original = _chunks(SERAPHINA.read_bytes())["chara"]["data"]
    for key in ("name", "description", "personality", "scenario", "first_mes", "mes_example"):
        assert read[key] == original[key], key
    assert read["character_book"] == original["character_book"]
    assert read["extensions"]["world"] == "Eldoria"
    assert read["extensions"]["talkativeness"] == "0.5"
    # The picture is the avatar.
    assert Image.open(io.BytesIO(png)).size == (341, 512)
    # And it imports back with the same fields.
    again = _upload(api, png)
    assert again.status_code == 201
    same = {
        k: v
        for k, v in again.json().items()
        if k not in ("id", "avatar_url", "created_at", "updated_at")
    }
    before = {
        k: v
        for k, v in imported.items()
        if k not in ("id", "avatar_url", "created_at", "updated_at")
    }
    assert same == before
    assert (
        Character.objects.get(pk=again.json()["id"]).card_extras["character_book"]
        == (original["character_book"])
    )


def test_json_export_is_v3_and_round_trips_our_fields(api, user):
    character = _character(
        owner=user,
        name="Mira",
        description="Short public blurb.",
        persona="An astronomer.",
        greeting="Hello!",
        alternate_greetings=["Hi!", "Greetings."],
        tags=["space"],
        personality="curious",
        scenario="An observatory.",
        creator_notes="Made for tests.",
        creator="me",
        character_version="1.1",
        is_public=False,
    )
    resp = api.get(f"/api/v1/characters/{character.pk}/export/?format=json")
    assert resp.status_code == 200 and resp["Content-Type"].startswith("application/json")
    assert resp["Content-Disposition"] == 'attachment; filename="Mira.json"'
    card = json.loads(resp.content)
    assert card["spec"] == "chara_card_v3" and card["spec_version"] == "3.0"
    assert card["data"]["description"] == "An astronomer."
    assert card["data"]["alternate_greetings"] == ["Hi!", "Greetings."]
    back = _upload(api, resp.content, "mira.json").json()
    for key in (
        "name",
        "description",
        "persona",
        "greeting",
        "alternate_greetings",
        "tags",
        "personality",
        "scenario",
        "creator_notes",
        "creator",
        "character_version",
    ):
        assert back[key] == getattr(character, key), key


def test_png_export_without_an_avatar_has_a_picture_and_defaults_to_png(api, user):
    character = _character(owner=user, name="Plain Jane", is_public=False)
    resp = api.get(f"/api/v1/characters/{character.pk}/export/")
    assert resp.status_code == 200 and resp["Content-Type"] == "image/png"
    assert Image.open(io.BytesIO(resp.content)).size == (400, 600)
    assert _read_st(resp.content)["data"]["name"] == "Plain Jane"


def test_only_the_owner_or_staff_export_and_a_bad_format_is_400(api, user):
    public = _character(name="Public One")  # approved, no owner
    _error(api.get(f"/api/v1/characters/{public.pk}/export/"), 403, "permission_denied")
    bob = _user(username="bob")
    hidden = _character(owner=bob, is_public=False)
    _error(api.get(f"/api/v1/characters/{hidden.pk}/export/"), 404, "not_found")
    mine = _character(owner=user)
    _error(api.get(f"/api/v1/characters/{mine.pk}/export/?format=gif"), 400, "invalid")
    staff = APIClient()
    staff.force_authenticate(_user(username="staffer", is_staff=True))
    assert staff.get(f"/api/v1/characters/{public.pk}/export/?format=json").status_code == 200


def test_cards_are_in_the_openapi_schema(api):
    paths = api.get("/api/schema/?format=json").json()["paths"]
    imported = paths["/api/v1/characters/import/"]["post"]
    assert "multipart/form-data" in imported["requestBody"]["content"]
    assert {"201", "400", "413"} <= set(imported["responses"])
    export = paths["/api/v1/characters/{id}/export/"]["get"]
    assert set(export["responses"]["200"]["content"]) == {"image/png", "application/json"}
    assert any(p["name"] == "format" for p in export["parameters"])
    schema = api.get("/api/schema/?format=json").json()["components"]["schemas"]["Character"]
    assert {"avatar_url", "is_owner", "alternate_greetings", "tags", "scenario"} <= set(
        schema["properties"]
    )

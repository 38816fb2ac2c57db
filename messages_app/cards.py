"""Character cards (the V1/V2/V3 format of SillyTavern and its ecosystem): read and write.

- Read: a PNG whose tEXt chunk `ccv3` (V3) or `chara` (V2 or V1) holds the card as base64
  JSON (`ccv3` wins when both are present, as in SillyTavern's character-card-parser), or
  the card as a JSON file. Hostile input ends in InvalidInput (400) with a stable code:
  `not_a_card`, `no_card_data`, `bad_card`, `too_large`, `image_too_large`; never a 500.
- Write: a PNG with both chunks (`chara` V2, `ccv3` V3) and a JSON (V3). Every card carries
  `spec`, `spec_version` and a `data` object, plus the V1 fields at the top level, as
  SillyTavern writes them, so V1 readers can read it too.

Card field -> Character field: name, description -> persona (the character's definition,
for the prompt), personality, scenario, first_mes -> greeting, mes_example ->
example_dialogue, system_prompt, creator_notes, alternate_greetings, tags, creator,
character_version. Our short public `description` travels in
`data.extensions.message_service.description`. Whatever else the card's `data` holds
(extensions, character_book, post_history_instructions, ...) is kept in `card_extras`.
"""

from __future__ import annotations

import base64
import binascii
import copy
import hashlib
import io
import json
import struct
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.core.files.storage import default_storage
from PIL import Image, PngImagePlugin

from messages_app.avatars import image_open
from messages_app.errors import InvalidInput, TooLarge
from messages_app.models import Character

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")
EXTENSION_KEY = "message_service"
V2 = "chara_card_v2"
V3 = "chara_card_v3"

# Card `data` key -> Character field, for the text fields.
TEXT_FIELDS = {
    "name": "name",
    "description": "persona",
    "personality": "personality",
    "scenario": "scenario",
    "first_mes": "greeting",
    "mes_example": "example_dialogue",
    "system_prompt": "system_prompt",
    "creator_notes": "creator_notes",
    "creator": "creator",
    "character_version": "character_version",
}
LIST_FIELDS = {"alternate_greetings": "alternate_greetings", "tags": "tags"}
V1_TOP_LEVEL = ("name", "description", "personality", "scenario", "first_mes", "mes_example")
# The public description made from creator notes when a card has none of ours.
DESCRIPTION_FROM_NOTES_CHARS = 300


@dataclass
class Card:
    """A card read from a file: the Character fields it gives, the `data` keys this service
    does not use (`extras`), its spec, and the PNG's image (None for a JSON card)."""

    fields: dict[str, Any]
    extras: dict[str, Any] = field(default_factory=dict)
    spec: str = V2
    image: Image.Image | None = None


def _error(code: str, message: str, **details: Any) -> InvalidInput | TooLarge:
    """400 with `code`; `too_large` is a 413, as every size limit of the API."""
    if code == "too_large":
        return TooLarge(message, details=details)
    return InvalidInput(message, code=code, details=details)


# ----------------------------------------------------------------------------------- read


def card_read(raw: bytes) -> Card:
    """The card in `raw` (PNG or JSON bytes), or InvalidInput (see the module docstring)."""
    if len(raw) > settings.CARD_MAX_BYTES:
        raise _error(
            "too_large",
            f"The card file is larger than {settings.CARD_MAX_BYTES} bytes.",
            max_bytes=settings.CARD_MAX_BYTES,
        )
    if raw.startswith(PNG_SIGNATURE):
        text, image = _png_card_text(raw)
        return card_from_json(_decode_chunk(text), image=image)
    return card_from_json(_json_file(raw))


MAX_JSON_DEPTH = 64


def _loads(text: str, what: str) -> dict[str, Any]:
    """A JSON object nested at most MAX_JSON_DEPTH deep (real cards nest a few levels), so
    that nothing later recurses out of stack on it."""
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _error("bad_card", f"{what} is not valid JSON: {str(exc)[:200]}.") from exc
    if not isinstance(value, dict):
        raise _error("bad_card", "The card's JSON is not an object.")
    level: list[Any] = [value]
    for _ in range(MAX_JSON_DEPTH):
        level = [
            child
            for node in level
            for child in (node.values() if isinstance(node, dict) else node)
            if isinstance(child, dict | list)
        ]
        if not level:
            return value
    raise _error("bad_card", f"The card's JSON is nested deeper than {MAX_JSON_DEPTH} levels.")


def _json_file(raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _error("not_a_card", "The file is neither a PNG nor a JSON card.") from exc
    if not text.lstrip().startswith("{"):
        raise _error("not_a_card", "The file is neither a PNG nor a JSON card.")
    return _loads(text, "The card's JSON")


def _check_chunks(raw: bytes) -> None:
    """Walk the PNG's chunk headers (Pillow's ChunkStream, nothing decoded): every chunk
    must fit in the file, and a text chunk within CARD_MAX_CHUNK_BYTES."""
    fp = io.BytesIO(raw)
    fp.seek(len(PNG_SIGNATURE))
    stream = PngImagePlugin.ChunkStream(fp)
    try:
        while True:
            cid, pos, length = stream.read()
            if pos + length + 4 > len(raw):
                raise _error("bad_card", "The PNG is truncated or damaged.")
            if cid in TEXT_CHUNKS and length > settings.CARD_MAX_CHUNK_BYTES:
                raise _error(
                    "too_large",
                    f"A text chunk of the PNG is larger than {settings.CARD_MAX_CHUNK_BYTES} "
                    "bytes.",
                    max_chunk_bytes=settings.CARD_MAX_CHUNK_BYTES,
                    chunk_bytes=length,
                )
            if cid == b"IEND":
                return
            fp.seek(pos + length + 4)  # the data and its CRC
    except (SyntaxError, ValueError, OSError, EOFError, struct.error) as exc:
        raise _error("bad_card", "The PNG is truncated or damaged.") from exc
    finally:
        stream.close()


def _png_card_text(raw: bytes) -> tuple[str, Image.Image]:
    _check_chunks(raw)
    try:
        image = image_open(raw, formats=("PNG",))
    except InvalidInput as exc:
        if exc.code == "invalid_image":
            raise _error("bad_card", "The PNG cannot be read.", **exc.details) from exc
        raise
    assert isinstance(image, PngImagePlugin.PngImageFile)
    # Keywords compared without case, as SillyTavern does.
    texts = {key.lower(): str(value) for key, value in image.text.items()}
    for keyword in ("ccv3", "chara"):
        if keyword in texts:
            return texts[keyword], image
    raise _error("no_card_data", "The PNG has no character card (no `chara` or `ccv3` chunk).")


def _decode_chunk(text: str) -> dict[str, Any]:
    compact = "".join(text.split())
    compact += "=" * (-len(compact) % 4)  # unpadded base64 is read too, as Node's Buffer does
    try:
        decoded = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _error("bad_card", "The card chunk is not valid base64.") from exc
    try:
        text = decoded.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _error("bad_card", "The card chunk is not UTF-8 text.") from exc
    return _loads(text, "The card chunk")


def _text(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # character_version is sometimes a number
    if not isinstance(value, str):
        raise _error("bad_card", f"The card's `{key}` is not a string.", field=key)
    return value


def _strings(data: dict[str, Any], key: str) -> list[str]:
    value = data.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        # SillyTavern accepts a comma list of tags and a lone greeting as a string.
        parts = value.split(",") if key == "tags" else [value]
        return [p.strip() if key == "tags" else p for p in parts if p.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _error("bad_card", f"The card's `{key}` is not a list of strings.", field=key)
    return [v for v in value if v.strip()]


def card_from_json(card: dict[str, Any], *, image: Image.Image | None = None) -> Card:
    """A card from its JSON object: V2/V3 (`spec` and a `data` object) or V1 (the fields at
    the top level)."""
    spec = card.get("spec")
    if spec in (V2, V3):
        data = card.get("data")
        if not isinstance(data, dict):
            raise _error("bad_card", f"A {spec} card needs a `data` object.")
    elif spec is None and isinstance(card.get("data"), dict) and "name" in card["data"]:
        # A V2 card whose writer left out `spec` (seen in the wild): read as V2.
        data, spec = card["data"], V2
    elif spec is None and "name" in card:
        data, spec = card, "chara_card_v1"
    else:
        raise _error(
            "bad_card",
            "Not a character card: expected `spec` chara_card_v2 or chara_card_v3 with a "
            "`data` object, or a V1 card with a `name`.",
            spec=str(spec)[:50],
        )
    fields: dict[str, Any] = {ours: _text(data, key) for key, ours in TEXT_FIELDS.items()}
    fields.update({ours: _strings(data, key) for key, ours in LIST_FIELDS.items()})
    if not fields["name"].strip():
        raise _error("bad_card", "The card has no name.", field="name")
    extras: dict[str, Any] = {}
    if spec != "chara_card_v1":
        known = set(TEXT_FIELDS) | set(LIST_FIELDS)
        extras = {k: copy.deepcopy(v) for k, v in data.items() if k not in known}
    ours = {}
    extensions = extras.get("extensions")
    if isinstance(extensions, dict):
        mine = extensions.pop(EXTENSION_KEY, None)
        ours = mine if isinstance(mine, dict) else {}
    description = ours.get("description")
    if not isinstance(description, str):
        notes = fields["creator_notes"].strip().split("\n\n", 1)[0]
        description = notes[:DESCRIPTION_FROM_NOTES_CHARS]
    fields["description"] = description
    return Card(fields=fields, extras=extras, spec=str(spec), image=image)


# ---------------------------------------------------------------------------------- write


def card_data(character: Character) -> dict[str, Any]:
    """The card's `data` object (V3 fields; V2 readers ignore the V3-only keys)."""
    extras = copy.deepcopy(character.card_extras) if isinstance(character.card_extras, dict) else {}
    extensions = extras.pop("extensions", None)
    extensions = extensions if isinstance(extensions, dict) else {}
    extensions[EXTENSION_KEY] = {"description": character.description}
    data: dict[str, Any] = {
        "post_history_instructions": "",
        "group_only_greetings": [],
        **extras,
    }
    for key, ours in TEXT_FIELDS.items():
        data[key] = getattr(character, ours)
    for key, ours in LIST_FIELDS.items():
        data[key] = list(getattr(character, ours))
    data["extensions"] = extensions
    return data


def card_json(character: Character, *, spec: str = V3) -> dict[str, Any]:
    """The whole card: `spec`, `spec_version`, `data`, and the V1 fields at the top level."""
    data = card_data(character)
    card: dict[str, Any] = {key: data[key] for key in V1_TOP_LEVEL}
    card["spec"] = spec
    card["spec_version"] = "3.0" if spec == V3 else "2.0"
    card["data"] = data
    return card


def _encode_chunk(card: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(card, ensure_ascii=False).encode("utf-8")).decode("ascii")


def _card_image(character: Character) -> Image.Image:
    """The character's avatar, or a plain card-shaped picture in a colour of its name."""
    if character.avatar:
        try:
            with default_storage.open(character.avatar.name, "rb") as stored:
                image = Image.open(io.BytesIO(stored.read()))
                image.load()
                return image
        except (OSError, ValueError):
            pass  # a missing file: the placeholder below
    red, green, blue = hashlib.sha256(character.name.encode()).digest()[:3]
    return Image.new("RGB", (400, 600), (red // 2 + 64, green // 2 + 64, blue // 2 + 64))


def card_png(character: Character) -> bytes:
    """The card as a PNG: the avatar with a `chara` (V2) and a `ccv3` (V3) tEXt chunk."""
    image = _card_image(character)
    image = image.convert("RGBA" if "A" in image.getbands() else "RGB")
    info = PngImagePlugin.PngInfo()
    info.add_text("chara", _encode_chunk(card_json(character, spec=V2)))
    info.add_text("ccv3", _encode_chunk(card_json(character, spec=V3)))
    out = io.BytesIO()
    image.save(out, format="PNG", pnginfo=info)
    return out.getvalue()


def card_filename(character: Character, extension: str) -> str:
    """A download name made of the character's name (ASCII letters, digits, - and _)."""
    stem = "".join(c if c.isascii() and (c.isalnum() or c in "-_") else "_" for c in character.name)
    return f"{stem.strip('_') or 'character'}.{extension}"

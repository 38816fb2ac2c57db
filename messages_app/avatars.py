"""Avatar images: validated and re-encoded with Pillow, stored through default_storage.

An upload is never stored as sent: it is decoded (PNG, JPEG, WebP, or a GIF's first frame)
within byte and pixel limits, turned upright by its EXIF orientation, shrunk to fit 512x512 and
written anew as WebP, so no metadata (EXIF, GPS, text chunks) and no trailing payload survives.
"""

from __future__ import annotations

import io
import logging
import uuid
from typing import Any

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db import transaction
from PIL import Image, ImageOps, UnidentifiedImageError

from messages_app.errors import InvalidInput, TooLarge, Unavailable
from messages_app.models import Character

logger = logging.getLogger(__name__)

AVATAR_SIZE = 512
AVATAR_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
# Decoding errors Pillow raises for broken or hostile files (truncated data, bad chunks...).
DECODE_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError)


def pixel_limit() -> int:
    """The most pixels an upload may declare: IMAGE_MAX_PIXELS, and never more than Pillow's
    own decompression-bomb limit (Image.MAX_IMAGE_PIXELS, over which it only warns)."""
    limit = settings.IMAGE_MAX_PIXELS
    if Image.MAX_IMAGE_PIXELS:
        limit = min(limit, int(Image.MAX_IMAGE_PIXELS))
    return limit


def image_too_large(width: int, height: int) -> InvalidInput:
    limit = pixel_limit()
    return InvalidInput(
        f"The image declares {width}x{height} pixels; at most {limit} pixels are accepted.",
        code="image_too_large",
        details={"width": width, "height": height, "max_pixels": limit},
    )


def image_open(raw: bytes, *, formats: tuple[str, ...]) -> Image.Image:
    """Open and decode `raw` as one of `formats`, refusing more than pixel_limit() pixels
    from the image's header, before any pixel is decoded (InvalidInput `image_too_large`, as
    Pillow's DecompressionBombError), and anything Pillow cannot read completely (InvalidInput
    `invalid_image`; truncated images are never accepted: ImageFile.LOAD_TRUNCATED_IMAGES
    stays off). Compressed PNG text over PngImagePlugin.MAX_TEXT_CHUNK or MAX_TEXT_MEMORY is
    TooLarge."""
    try:
        image = Image.open(io.BytesIO(raw), formats=list(formats))
        width, height = image.size
        if width * height > pixel_limit():
            raise image_too_large(width, height)
        image.load()
    except Image.DecompressionBombError as exc:
        raise InvalidInput(
            f"The image is too large to decode safely ({exc}).",
            code="image_too_large",
            details={"max_pixels": pixel_limit()},
        ) from exc
    except DECODE_ERRORS as exc:
        if isinstance(exc, ValueError) and "MAX_TEXT" in str(exc):
            # PngImagePlugin.MAX_TEXT_CHUNK / MAX_TEXT_MEMORY: compressed text bombs.
            raise TooLarge(
                "The image's text chunks are too large.", details={"reason": str(exc)[:200]}
            ) from exc
        raise InvalidInput(
            "The file is not a readable image (PNG, JPEG, WebP or GIF).",
            code="invalid_image",
            details={"reason": str(exc)[:200]},
        ) from exc
    return image


def avatar_encode(image: Image.Image) -> bytes:
    """`image` (already decoded) as the stored avatar: upright, at most 512x512, WebP,
    without metadata."""
    # A GIF is decoded at its first frame (image_open loads no other).
    image = ImageOps.exif_transpose(image)
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (
        image.mode == "P" and "transparency" in image.info
    )
    image = image.convert("RGBA" if has_alpha else "RGB")
    image.thumbnail((AVATAR_SIZE, AVATAR_SIZE), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    # A fresh image carries none of the source's info (exif, icc_profile, text).
    clean = Image.new(image.mode, image.size)
    clean.paste(image)
    clean.save(out, format="WEBP", quality=88, method=4)
    return out.getvalue()


def avatar_from_upload(upload: Any) -> bytes:
    """The avatar bytes of an uploaded file (a Django UploadedFile), or the error: 413
    `too_large` over AVATAR_MAX_BYTES, 400 `image_too_large` or `invalid_image`."""
    if upload is None:
        raise InvalidInput("Send the image as the multipart field `file`.", code="invalid")
    if upload.size > settings.AVATAR_MAX_BYTES:
        raise TooLarge(
            f"The image is larger than {settings.AVATAR_MAX_BYTES} bytes.",
            details={"max_bytes": settings.AVATAR_MAX_BYTES, "bytes": upload.size},
        )
    raw = upload.read(settings.AVATAR_MAX_BYTES + 1)
    return avatar_encode(image_open(raw, formats=AVATAR_FORMATS))


def avatar_set(*, character: Character, content: bytes) -> Character:
    """Store `content` (from avatar_encode) as the character's avatar under a new name, so
    a cached old URL never shows the new image; the old file is removed after commit."""
    old = character.avatar.name
    try:
        name = default_storage.save(
            f"avatars/{character.pk}-{uuid.uuid4().hex[:16]}.webp", ContentFile(content)
        )
    except OSError as exc:
        # E.g. MEDIA_ROOT on a read-only filesystem: the deployment must mount a volume there.
        logger.error("could not store an avatar of character %s: %r", character.pk, exc)
        raise Unavailable(
            "Uploaded images cannot be stored right now.", code="storage_unavailable"
        ) from exc
    character.avatar.name = name
    Character.objects.filter(pk=character.pk).update(avatar=name)
    if old:
        transaction.on_commit(lambda: default_storage.delete(old))
    return character


def avatar_delete(*, character: Character) -> Character:
    """Remove the character's avatar (nothing happens when it has none)."""
    old = character.avatar.name
    if old:
        character.avatar.name = ""
        Character.objects.filter(pk=character.pk).update(avatar="")
        transaction.on_commit(lambda: default_storage.delete(old))
    return character


def avatar_url(character: Character) -> str | None:
    """Where clients load the avatar: storage.url() (MEDIA_URL for FileSystemStorage, a CDN
    or object-storage URL for other storages); None without one."""
    return default_storage.url(character.avatar.name) if character.avatar else None

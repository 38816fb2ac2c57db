"""Serving uploaded files (avatars) at MEDIA_URL when default_storage is a FileSystemStorage.

daphne serves no files and whitenoise only the static ones, so this small view does: only
names under the upload folders, only image types, never a directory listing, and with a long
cache lifetime (a new avatar always gets a new name). A deployment on object storage or a CDN
serves `storage.url()` itself and never reaches this view.
"""

from __future__ import annotations

import contextlib
from pathlib import PurePosixPath

from django.core.exceptions import SuspiciousFileOperation
from django.core.files.storage import FileSystemStorage, default_storage
from django.http import FileResponse, Http404, HttpRequest, HttpResponseBase
from django.utils.http import http_date
from django.views.decorators.http import require_safe

SERVED_FOLDERS = ("avatars",)
CONTENT_TYPES = {
    ".webp": "image/webp",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
}
CACHE_SECONDS = 365 * 24 * 3600


@require_safe
def media_file(request: HttpRequest, name: str) -> HttpResponseBase:
    """GET/HEAD a stored upload by its storage name; 404 for anything else."""
    storage = default_storage
    if not isinstance(storage, FileSystemStorage):
        raise Http404("Uploads are served by the storage itself.")
    parts = PurePosixPath(name).parts
    if (
        len(parts) < 2
        or parts[0] not in SERVED_FOLDERS
        or any(part in ("..", ".") or part.startswith(".") for part in parts)
        or "\\" in name
        or "\x00" in name
    ):
        raise Http404("No such file.")
    content_type = CONTENT_TYPES.get(PurePosixPath(name).suffix.lower())
    if content_type is None:
        raise Http404("No such file.")
    try:
        path = storage.path(name)  # safe_join: a path out of MEDIA_ROOT raises
    except (SuspiciousFileOperation, ValueError) as exc:
        raise Http404("No such file.") from exc
    try:
        handle = open(path, "rb")  # noqa: SIM115 (FileResponse closes it)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as exc:
        raise Http404("No such file.") from exc
    response = FileResponse(handle, content_type=content_type)
    response["Cache-Control"] = f"public, max-age={CACHE_SECONDS}, immutable"
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    with contextlib.suppress(OSError):
        response["Last-Modified"] = http_date(storage.get_modified_time(name).timestamp())
    return response

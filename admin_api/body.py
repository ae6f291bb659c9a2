"""Request bodies with their size limits (SPEC 7.1): 1 MiB JSON, 50 MiB plugin upload.

Limits are enforced while the body streams in: a declared Content-Length over
the limit is refused before reading, and an undeclared or lying one is cut off
as soon as the bytes read pass the limit. Uploads are spooled to a temporary
file, never held whole in memory.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncGenerator
from typing import IO, Any

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from .errors import ApiError

JSON_LIMIT = 1024 * 1024
UPLOAD_LIMIT = 50 * 1024 * 1024
# multipart framing around the file (boundaries, part headers, small fields)
MULTIPART_OVERHEAD = 64 * 1024
SPOOL_IN_MEMORY = 1024 * 1024

_RAW_ZIP_TYPES = frozenset({"application/zip", "application/x-zip-compressed", "application/octet-stream", ""})


def _too_large(what: str, limit: int) -> ApiError:
    return ApiError("payload_too_large", f"the {what} is larger than {limit} bytes", {"limit": limit}, status=413)


async def limited_stream(request: Request, limit: int, what: str) -> AsyncGenerator[bytes, None]:
    """The request body in chunks; raises 413 as soon as more than `limit` bytes arrive."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(what, limit)
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise _too_large(what, limit)
        if chunk:
            yield chunk


async def read_body(request: Request, limit: int, what: str) -> bytes:
    """The whole body, at most `limit` bytes (413 beyond)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) <= limit and "transfer-encoding" not in request.headers:
        # HTTP/1.1 servers (h11, httptools) hold the body to its declared length
        body = await request.body()
        if len(body) > limit:  # a server that does not: still refused
            raise _too_large(what, limit)
        return body
    return b"".join([chunk async for chunk in limited_stream(request, limit, what)])


async def read_json(request: Request, *, limit: int = JSON_LIMIT) -> Any:
    """The JSON value of the body; 413 over `limit`, 400 when it is not JSON."""
    body = await read_body(request, limit, "JSON body")
    if not body.strip():
        raise ApiError("invalid_json", "a JSON body is required", status=400)
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ApiError("invalid_json", f"the body is not valid JSON: {exc}", status=400) from None
    if _has_lone_surrogate(value):
        # "\ud800" is valid JSON but no UTF-8 text: the store and every answer would fail on it
        raise ApiError("invalid_json", "the body holds an unpaired UTF-16 surrogate (\\ud800-\\udfff)", status=400)
    return value


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


async def read_object(request: Request, *, limit: int = JSON_LIMIT) -> dict[str, Any]:
    value = await read_json(request, limit=limit)
    if not isinstance(value, dict):
        raise ApiError("invalid_json", "the body must be a JSON object", status=400)
    return value


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def receive_upload(request: Request, *, limit: int = UPLOAD_LIMIT) -> IO[bytes]:
    """The uploaded zip as a file positioned at 0: a raw body or multipart field `file`.

    The caller closes it.
    """
    media_type = _media_type(request)
    if media_type == "multipart/form-data":
        return await _receive_multipart(request, limit)
    if media_type not in _RAW_ZIP_TYPES:
        raise ApiError(
            "unsupported_media_type",
            "upload the zip as an application/zip body or as multipart/form-data field 'file'",
            {"contentType": media_type},
            status=415,
        )
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
    try:
        async for chunk in limited_stream(request, limit, "plugin upload"):
            # small chunks into a spool file: the write is a memcpy or a page-cache write
            spool.write(chunk)
    except BaseException:
        spool.close()
        raise
    if spool.tell() == 0:
        spool.close()
        raise ApiError("empty_upload", "the upload is empty; send the plugin zip as the body", status=400)
    spool.seek(0)
    return spool


async def _receive_multipart(request: Request, limit: int) -> IO[bytes]:
    parser = MultiPartParser(
        request.headers,
        limited_stream(request, limit + MULTIPART_OVERHEAD, "plugin upload"),
        max_files=1,
        max_fields=8,
        max_part_size=16 * 1024,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise ApiError("invalid_multipart", f"the multipart body is invalid: {exc.message}", status=400) from None
    upload = form.get("file")
    try:
        if not isinstance(upload, UploadFile):
            raise ApiError("missing_file", "the multipart body has no file field 'file'", status=400)
        if upload.size is not None and upload.size > limit:
            raise _too_large("plugin upload", limit)
        if not upload.size:
            raise ApiError("empty_upload", "the uploaded file is empty", status=400)
    except ApiError:
        await form.close()
        raise
    upload.file.seek(0)
    return upload.file

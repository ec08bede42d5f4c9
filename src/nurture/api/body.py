"""Reading a request body within limits, gzip or not (whatever Content-Encoding says)."""

from __future__ import annotations

import zlib

from fastapi import Request

from nurture.errors import PayloadTooLarge

_GZIP_MAGIC = b"\x1f\x8b"


class BodyTooLarge(PayloadTooLarge):
    """The body is over the limit; `kept` holds its start (up to the keep limit)."""

    def __init__(self, message: str, kept: bytes | None) -> None:
        super().__init__(message)
        self.kept = kept


def _gunzip(data: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise ValueError(f"the body starts like gzip but is not: {exc}") from None
    if len(out) > limit:
        raise BodyTooLarge(f"the request is over {limit} bytes once decompressed", kept=None)
    return out


async def read_body(request: Request, *, limit: int, keep: int) -> bytes:
    """The body, decompressed. Raises BodyTooLarge (413) past `limit`, keeping up to
    `keep` bytes of it for the rejected-events table."""
    keep = max(keep, limit)
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > keep:
        raise BodyTooLarge(f"the request is {declared} bytes; the limit is {limit}", kept=None)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > keep:
            raise BodyTooLarge(f"the request is over {limit} bytes", kept=None)
        chunks.append(chunk)
    data = b"".join(chunks)
    if data[:2] == _GZIP_MAGIC:
        data = _gunzip(data, keep)
    if len(data) > limit:
        raise BodyTooLarge(f"the request is {len(data)} bytes; the limit is {limit}", kept=data)
    return data

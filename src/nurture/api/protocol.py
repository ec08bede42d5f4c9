"""The HTTP protocol `nurture serve` runs: uvicorn's httptools protocol, except that a
request the process had no memory to read is answered 503 with Retry-After.

uvicorn answers any error of the HTTP parser with `400 Invalid HTTP request received.`,
including a MemoryError raised while it buffers a body. A Segment SDK drops a batch for
good on a 400, so a server short of memory would lose valid events; a 503 makes the SDK
send them again later (regressions.md, scenario 8).
"""

from __future__ import annotations

import sys

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from nurture import memory
from nurture.api.errors import RETRY_AFTER_SECONDS

_BODY = (
    b'{"error":{"code":"storage_unavailable","message":"the server ran out of memory while'
    b' reading the request and stored nothing; send again","path":null}}'
)
_RESPONSE = b"".join(
    [
        b"HTTP/1.1 503 Service Unavailable\r\n",
        b"content-type: application/json\r\n",
        b"retry-after: " + str(RETRY_AFTER_SECONDS).encode() + b"\r\n",
        b"content-length: " + str(len(_BODY)).encode() + b"\r\n",
        b"connection: close\r\n\r\n",
        _BODY,
    ]
)


def _out_of_memory(exc: BaseException) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, MemoryError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


class HttpProtocol(HttpToolsProtocol):
    def data_received(self, data: bytes) -> None:
        try:
            super().data_received(data)
        except MemoryError:
            self._short_of_memory()

    def send_400_response(self, msg: str) -> None:
        # Called from the parser's error handler: the exception being handled is here.
        handled = sys.exc_info()[1]
        if handled is not None and _out_of_memory(handled):
            self._short_of_memory()
            return
        super().send_400_response(msg)

    def _short_of_memory(self) -> None:
        self.logger.error("out of memory while reading a request; answered 503")
        memory.release()
        if not self.transport.is_closing():
            self.transport.write(_RESPONSE)
            self.transport.close()

"""A lean HTTP/1.1 server for :class:`~.rest.RestApp`: asyncio protocol + httptools parser.

Why not uvicorn: for a model that runs in tens of microseconds, the ASGI machinery (message dicts,
two sends per response, per-request header processing) costs several times the inference. Here a
request is parsed by httptools, answered by :meth:`RestApp.handle`, and written with one
``transport.write``. What it supports is what model clients use: keep-alive, pipelining (answered
in order), Content-Length and chunked bodies, ``Expect: 100-continue``, HTTP/1.0. Upgrades,
trailers and multipart are refused with 400. ``--http-server uvicorn`` switches back to uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from typing import cast
from urllib.parse import unquote

import httptools

from modelship_runtime.serve.rest import Reply, RestApp, too_large

log = logging.getLogger(__name__)

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_BAD_REQUEST = (
    b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\nconnection: close\r\n"
    b'content-length: 54\r\n\r\n{"error":"malformed HTTP request; send valid HTTP/1.1"}'
)


@dataclass(slots=True)
class _Request:
    method: str
    path: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    body_size: int
    keep_alive: bool
    head: bool
    limit: int

    async def read_body(self, limit: int) -> bytes:
        if self.body_size > self.limit:
            raise too_large(self.body_size, self.limit)
        return self.body


class _Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.app = server.app
        self.limit = server.app.max_request_bytes
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.pending: deque[_Request] = deque()
        self.worker: asyncio.Task[None] | None = None
        self.closing = False
        self.idle_timer: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.size = 0

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.server.connections.add(self)
        self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None
        if self.idle_timer is not None:
            self.idle_timer.cancel()

    def data_received(self, data: bytes) -> None:
        if self.idle_timer is not None:
            self.idle_timer.cancel()
            self.idle_timer = None
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            if self.transport is not None:
                self.transport.write(_BAD_REQUEST)
                self.transport.close()

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    # --- httptools callbacks ---------------------------------------------------------------

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        for name, value in self.headers:
            if name == b"expect" and value.lower() == b"100-continue" and self.transport:
                self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size <= self.limit:
            self.chunks.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method().decode()
        path = httptools.parse_url(self.url).path.decode("utf-8", "replace")
        if "%" in path:
            path = unquote(path)
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        request = _Request(
            method, path, self.headers, body, self.size, self.parser.should_keep_alive(),
            method == "HEAD", self.limit,
        )  # fmt: skip
        self._reset()
        self.pending.append(request)
        self.server.unanswered += 1
        if self.worker is None:
            self.worker = asyncio.get_running_loop().create_task(self._answer())

    # --- answering -------------------------------------------------------------------------

    async def _answer(self) -> None:
        try:
            while self.pending and self.transport is not None:
                request = self.pending.popleft()
                try:
                    reply = await self.app.handle(
                        request.method, request.path, request.headers, request.read_body
                    )
                    keep_alive = request.keep_alive and not self.server.closing
                    self._write(reply, keep_alive, request.head)
                finally:
                    self.server.unanswered -= 1
                if not keep_alive:
                    if self.transport is not None:
                        self.transport.close()
                    return
        except Exception:  # never leave a client hanging on a bug
            log.exception("unexpected error while answering a request")
            if self.transport is not None:
                self.transport.close()
        finally:
            self.server.unanswered -= len(self.pending)  # the client left before its answers
            self.pending.clear()
            self.worker = None
            self._arm_idle_timer()

    def _write(self, reply: Reply, keep_alive: bool, head: bool) -> None:
        if self.transport is None:
            return
        parts = [
            b"HTTP/1.1 ",
            str(reply.status).encode(),
            b" ",
            _REASONS.get(reply.status, b"Unknown"),
            b"\r\ncontent-type: ",
            reply.content_type,
            b"\r\ncontent-length: ",
            str(len(reply.body)).encode(),
            b"\r\n",
        ]
        if reply.extra:
            for name, value in reply.extra:
                parts += [name, b": ", value, b"\r\n"]
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        if not head:
            parts.append(reply.body)
        self.transport.write(b"".join(parts))

    def _arm_idle_timer(self) -> None:
        if self.transport is None or self.worker is not None:
            return
        if self.server.closing:
            self.transport.close()
            return
        self.idle_timer = asyncio.get_running_loop().call_later(
            self.server.keep_alive_s, self._close_idle
        )

    def _close_idle(self) -> None:
        if self.worker is None and self.transport is not None:
            self.transport.close()


class HttpServer:
    """Listens, tracks connections, and shuts down gracefully (idle ones first)."""

    def __init__(self, app: RestApp, keep_alive_s: float = 75.0) -> None:
        self.app = app
        self.keep_alive_s = keep_alive_s
        self.connections: set[_Connection] = set()
        self.unanswered = 0
        """Requests received in full and not yet answered, over all connections."""
        self.closing = False
        self._server: asyncio.Server | None = None

    def pending(self) -> int:
        """Requests and connections this server knows of (the data plane's ``Transport``): the
        larger of unanswered requests and open connections.

        Requests still unread in other connections' socket buffers are invisible to
        ``unanswered``: while a call runs on the event loop thread no other connection is read,
        so every connection would look alone in turn and concurrent clients would be served one
        by one on the loop. Each open connection therefore counts as at least one request.
        """
        return max(self.unanswered, len(self.connections))

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, backlog=4096, reuse_address=True
        )

    async def stop(self, timeout: float) -> None:
        """Stop listening, close idle connections, let busy ones finish (up to ``timeout``)."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            if connection.worker is None and connection.transport is not None:
                connection.transport.close()
        deadline = asyncio.get_running_loop().time() + timeout
        while self.connections and asyncio.get_running_loop().time() < deadline:
            workers = [c.worker for c in self.connections if c.worker is not None]
            if not workers:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*workers, return_exceptions=True),
                    max(deadline - asyncio.get_running_loop().time(), 0),
                )
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()

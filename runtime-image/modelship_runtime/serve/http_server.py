"""A lean HTTP/1.1 server for :class:`~.rest.RestApp`: asyncio protocol + httptools parser.

Why not uvicorn: for a model that runs in tens of microseconds, the ASGI machinery (message dicts,
two sends per response, per-request header processing) costs several times the inference. Here a
request is parsed by httptools, answered by :meth:`RestApp.handle`, and written with one
``transport.write``. What it supports is what model clients use: keep-alive, pipelining (answered
in order), Content-Length and chunked bodies, ``Expect: 100-continue``, HTTP/1.0. Upgrades,
trailers and multipart are refused with 400. ``--http-server uvicorn`` switches back to uvicorn.

Hostile clients (:class:`HttpLimits`, docs/runtime.md "Limits and hostile clients"): the URL
(414) and the head (431) are bounded while they arrive, the head and the body each have a
deadline (408), a connection stops being read while it has ``max_pipelined`` requests waiting for
answers, a body is read only once the server-wide in-flight byte budget has room for it (the
``100 Continue`` waits for that too, and a declared body over the limit is refused up front),
and at the connection cap the connection that is least use (idle, or slowest to send its head)
makes room for the new one. Any error that ends a connection is answered after the requests
pipelined before it, and the connection lingers briefly so the client reads the answer rather
than a reset.
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
import orjson

from modelship.api.serving import env_name
from modelship_runtime.serve.rest import Reply, RestApp, too_large

log = logging.getLogger(__name__)

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
_SLICE = 4096
"""Bytes fed to the parser at a time outside a body of known length. The head limits and the
pipelining limit are checked between slices, so one 256 KiB read of tiny pipelined requests
cannot queue thousands of them, and a head is never more than a slice past its limit."""
_CHUNKED_SLICE = 64 * 1024
_LINGER_S = 2.0
"""After an answer that ends a connection (an error): how long it keeps reading, discarding,
before it closes, so a client still sending reads the answer instead of a connection reset."""

_IDLE, _HEAD, _BODY = "idle", "head", "body"


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """What one HTTP server accepts; the defaults are the server settings' (``settings.py``)."""

    max_url_bytes: int = 8 * 1024
    max_header_bytes: int = 16 * 1024
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    keep_alive_s: float = 75.0
    max_connections: int = 1024
    max_pipelined: int = 16
    max_inflight_bytes: int = 256 * 1024 * 1024


def _error(status: int, message: str) -> Reply:
    return Reply(status, orjson.dumps({"error": message}))


_MALFORMED = _error(400, "malformed HTTP request; send valid HTTP/1.1")
_UPGRADE = _error(400, "protocol upgrades are not supported; send plain HTTP/1.1")


class _Reject(Exception):
    """Raised in a parser callback: stop parsing the connection and answer ``reply``."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.status)
        self.reply = reply


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
    reserved: int
    """Bytes of the server's in-flight budget this request holds until it is answered."""

    async def read_body(self, limit: int) -> bytes:
        if self.body_size > self.limit:
            raise too_large(self.body_size, self.limit)
        return self.body


class _Connection(asyncio.Protocol):
    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.app = server.app
        self.limits = server.limits
        self.max_head = server.limits.max_header_bytes
        self.limit = server.app.max_request_bytes
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.pending: deque[_Request] = deque()
        self.worker: asyncio.Task[None] | None = None
        self.deadline: float | None = None
        """When the head or body being received must be complete. Set, and a timer armed, only
        when a read ends inside a head or a body: a request that arrives in one read costs no
        timer (the deadline then runs from the end of that read, a slice at most late)."""
        self.timer: asyncio.TimerHandle | None = None
        self.close_timer: asyncio.TimerHandle | None = None
        """Closes the connection: idle keep-alive, or the end of lingering after an error."""
        self.send_timer: asyncio.TimerHandle | None = None
        self.writable = asyncio.Event()
        self.writable.set()
        self.phase = _IDLE
        self.since = self.loop.time()
        """When the current phase began: at the connection cap the oldest idle or slow one goes."""
        self.paused: set[str] = set()
        """Why reading is paused: "stalled" (pipelining limit or byte budget), "writing"."""
        self.backlog = b""
        """Bytes read but not yet parsed, held while the connection is stalled."""
        self.failure: Reply | None = None
        self.lingering = False
        self.messages = 0
        self.head_bytes = 0
        self.spanned = 0
        self.waiting = 0
        """Budget bytes the body being received waits for (0: not waiting)."""
        self.reserved = 0
        self.reserved_body = False
        """Whether the body being received was admitted (its deadline runs)."""
        self.expect_continue = False
        self.body_left = 0
        self._reset()

    def _reset(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.chunks: list[bytes] = []
        self.size = 0

    # --- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        if not self.server.admit(self):
            transport.close()  # at the cap, and every connection is busy with a request
            return
        self.transport = transport
        self.deadline = self.since + self.limits.header_timeout_s  # the first request's head
        self._arm_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None
        for timer in (self.timer, self.close_timer, self.send_timer):
            if timer is not None:
                timer.cancel()
        self.writable.set()  # a worker waiting to write finds the transport gone
        if self.waiting:
            self.server.forget(self)
            self.waiting = 0
        self.server.release(self.reserved)
        self.reserved = 0

    def data_received(self, data: bytes) -> None:
        if self.failure is not None:
            return  # answered with an error: what follows is discarded
        if self.backlog:
            self.backlog += data
            return
        if self.close_timer is not None:
            self.close_timer.cancel()
            self.close_timer = None
        self._feed(data)

    def pause_writing(self) -> None:
        self.writable.clear()
        self._pause("writing")
        self.send_timer = self.loop.call_later(self.limits.body_timeout_s, self._send_timeout)

    def resume_writing(self) -> None:
        self.writable.set()
        if self.send_timer is not None:
            self.send_timer.cancel()
            self.send_timer = None
        self._unpause("writing")

    # --- reading ---------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        view = memoryview(data)
        offset, end = 0, len(data)
        while offset < end:
            if self._stalled():
                self.backlog = bytes(view[offset:])
                self._pause("stalled")
                return
            step = (self.body_left or _CHUNKED_SLICE) if self.phase is _BODY else _SLICE
            piece = data if offset == 0 and end <= step else view[offset : offset + step]
            in_head, messages = self.phase is _HEAD, self.messages
            try:
                self.parser.feed_data(piece)
            except httptools.HttpParserUpgrade:
                self._fail(_UPGRADE)
                return
            except httptools.HttpParserError as exc:
                reject = exc.__context__
                if isinstance(reject, _Reject):
                    self._fail(reject.reply)
                    return
                if isinstance(exc, httptools.HttpParserCallbackError):
                    log.error("HTTP parser callback failed", exc_info=reject)
                self._fail(_MALFORMED)
                return
            offset += len(piece)
            if in_head and self.phase is _HEAD and messages == self.messages:
                # The whole slice belongs to one unfinished head: count it, because httptools
                # holds a header that has not ended yet where the callbacks cannot see it.
                self.spanned += len(piece)
                if self.spanned > self.limits.max_header_bytes:
                    self._fail(self._headers_too_large())
                    return
        if self.phase is not _IDLE:
            self._arm_deadline()  # the read ended inside a head or a body

    def _stalled(self) -> bool:
        return len(self.pending) >= self.limits.max_pipelined or self.waiting > 0

    def _pump(self) -> None:
        """Parse what was held back once nothing stalls the connection, and read on."""
        if self.failure is not None or self.transport is None or self._stalled():
            return
        data, self.backlog = self.backlog, b""
        if data:
            self._feed(data)
        if not self.backlog and not self._stalled() and self.failure is None:
            self._unpause("stalled")

    def _pause(self, reason: str) -> None:
        if reason in self.paused:
            return
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
        self.paused.add(reason)
        if reason == "stalled":
            self.deadline = None  # the deadline is the client's; while we hold it back, none runs

    def _unpause(self, reason: str) -> None:
        if reason not in self.paused:
            return
        self.paused.discard(reason)
        if not self.paused and self.transport is not None:
            self.transport.resume_reading()
        if reason == "stalled" and self.failure is None:
            self._arm_deadline()  # a fresh deadline for what it was held back from reading

    # --- httptools callbacks ---------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.messages += 1
        self.phase = _HEAD
        self.head_bytes = self.spanned = 0

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.limits.max_url_bytes:
            raise _Reject(
                _error(
                    414,
                    f"the request URL is longer than {self.limits.max_url_bytes} bytes; send "
                    f"inputs in the body (limit: {env_name('max_url_bytes')})",
                )
            )
        self.head_bytes += len(url)
        if self.head_bytes > self.max_head:
            raise _Reject(self._headers_too_large())

    def on_header(self, name: bytes, value: bytes) -> None:
        self.head_bytes += len(name) + len(value) + 4
        if self.head_bytes > self.max_head:
            raise _Reject(self._headers_too_large())
        self.headers.append((name.lower(), value))

    def _headers_too_large(self) -> Reply:
        return _error(
            431,
            f"the request line and headers exceed {self.limits.max_header_bytes} bytes; send "
            f"fewer or shorter headers (limit: {env_name('max_header_bytes')})",
        )

    def on_headers_complete(self) -> None:
        self.phase = _BODY
        self.deadline = None
        declared: int | None = None
        chunked = False
        expect: bytes | None = None
        for name, value in self.headers:
            if name == b"content-length":
                with contextlib.suppress(ValueError):
                    declared = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"expect":
                expect = value.strip().lower()
        if expect is not None and expect != b"100-continue":
            raise _Reject(_error(417, "the only expectation supported is 100-continue"))
        self.body_left = declared if declared and not chunked else 0
        if not chunked and not declared:
            return  # no body: the message completes right away
        oversized = declared is not None and declared > self.limit
        if oversized and expect is not None:
            error = too_large(cast(int, declared), self.limit)
            raise _Reject(_error(error.kind.value, error.message))
        # An oversized body without 100-continue is read and discarded, then answered with
        # 413, so the client (already sending) reads the answer; it holds no budget.
        need = 0 if oversized else (declared if declared and not chunked else self.limit)
        self.expect_continue = expect is not None
        if self.server.reserve(self, need):
            self._admit_body(need)
        else:
            self.waiting = need  # _feed stops at the next slice; the budget calls back

    def _admit_body(self, need: int) -> None:
        """The budget holds ``need`` bytes for the body: read it, under its deadline."""
        self.waiting = 0
        self.reserved = need
        self.reserved_body = True
        if self.expect_continue and self.transport is not None:
            self.transport.write(_CONTINUE)

    def granted(self, need: int) -> None:
        """Called by the server when the budget made room for the body this connection waits
        to read."""
        self._admit_body(need)
        self._pump()
        if self.phase is _BODY and self.failure is None:
            self._arm_deadline()

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.body_left:
            self.body_left = max(self.body_left - len(body), 0)
        if self.size <= self.limit:
            self.chunks.append(body)

    def on_message_complete(self) -> None:
        self.deadline = None
        self.phase = _IDLE
        self.reserved_body = False
        if self.waiting:
            # The body was refused room but came in the same parser slice as its head (the
            # parser cannot stop mid-slice): it holds what it is, at most a slice over budget.
            self.server.forget(self)
            self.waiting = 0
            self.reserved = self.server.hold(min(self.size, self.limit))
        method = self.parser.get_method().decode()
        try:
            path = httptools.parse_url(self.url).path.decode("utf-8", "replace")
        except httptools.HttpParserInvalidURLError:
            raise _Reject(_error(400, "the request URL is not valid")) from None
        if "%" in path:
            path = unquote(path)
        chunks = self.chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        request = _Request(
            method, path, self.headers, body, self.size, self.parser.should_keep_alive(),
            method == "HEAD", self.limit, self.reserved,
        )  # fmt: skip
        self.reserved = 0
        self.expect_continue = False
        self._reset()
        self.pending.append(request)
        self.server.unanswered += 1
        if self.worker is None:
            self.worker = self.loop.create_task(self._answer())

    # --- answering -------------------------------------------------------------------------

    async def _answer(self) -> None:
        try:
            while self.pending and self.transport is not None:
                if not self.writable.is_set():
                    await self.writable.wait()  # the client reads its answers first
                    if self.transport is None:
                        break
                request = self.pending.popleft()
                if self.backlog or "stalled" in self.paused:
                    self._pump()  # room in the pipeline again
                try:
                    reply = await self.app.handle(
                        request.method, request.path, request.headers, request.read_body
                    )
                    keep_alive = request.keep_alive and not self.server.draining
                    self._write(reply, keep_alive, request.head)
                finally:
                    self.server.unanswered -= 1
                    self.server.release(request.reserved)
                if not keep_alive:
                    if self.transport is not None:
                        self.transport.close()
                    return
                if self.pending:
                    await asyncio.sleep(0)  # other connections get their turn between answers
        except Exception:  # never leave a client hanging on a bug
            log.exception("unexpected error while answering a request")
            if self.transport is not None:
                self.transport.close()
        finally:
            self.server.unanswered -= len(self.pending)  # the client left before its answers
            for request in self.pending:
                self.server.release(request.reserved)
            self.pending.clear()
            self.worker = None
            if self.failure is not None:
                self._write_failure()
            else:
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

    # --- errors, deadlines, closing --------------------------------------------------------

    def _fail(self, reply: Reply) -> None:
        """End the connection with ``reply``, after answering the requests parsed before the
        error (they were complete and valid)."""
        if self.failure is not None or self.transport is None:
            return
        self.failure = reply
        self.deadline = None
        self.backlog = b""
        if self.waiting:
            self.server.forget(self)
            self.waiting = 0
        self.server.release(self.reserved)
        self.reserved = 0
        self._unpause("stalled")  # read on, discarding, until the answer is out
        if self.worker is None:
            self._write_failure()

    def _write_failure(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or self.failure is None or self.lingering:
            return
        self._write(self.failure, keep_alive=False, head=False)
        self.lingering = True
        if transport.can_write_eof():
            transport.write_eof()
        self.close_timer = self.loop.call_later(_LINGER_S, self.close)

    def _deadline_passed(self) -> None:
        self.timer = None
        if self.deadline is None or self.failure is not None:
            return  # the phase it was armed for is over
        if self.loop.time() < self.deadline:
            self._arm_deadline()  # a later phase's deadline
        elif self.phase == _BODY:
            self._body_timeout()
        elif self.phase == _HEAD:
            self._head_timeout()
        else:
            self.close()  # connected and never started a request: nothing to answer

    def _arm_deadline(self) -> None:
        """Make sure a timer fires by the current phase's deadline (set now if it has none)."""
        deadline = self.deadline
        if deadline is None:
            if self.phase is _HEAD:
                self.since = self.loop.time()
                deadline = self.since + self.limits.header_timeout_s
            elif self.phase is _BODY and self.reserved_body:
                deadline = self.loop.time() + self.limits.body_timeout_s
            else:
                return  # nothing the client owes (idle, or its body waits for the budget)
            self.deadline = deadline
        if self.transport is None:
            return
        if self.timer is not None:
            if self.timer.when() <= deadline:
                return  # it fires first and re-arms for this one
            self.timer.cancel()
        self.timer = self.loop.call_at(deadline, self._deadline_passed)

    def _head_timeout(self) -> None:
        self._fail(
            _error(
                408,
                f"the request line and headers did not arrive within "
                f"{self.limits.header_timeout_s:g} s (limit: {env_name('header_timeout_s')})",
            )
        )

    def _body_timeout(self) -> None:
        self._fail(
            _error(
                408,
                f"the request body did not arrive within {self.limits.body_timeout_s:g} s "
                f"(limit: {env_name('body_timeout_s')})",
            )
        )

    def _send_timeout(self) -> None:
        """The client has read none of its answers for ``body_timeout_s``: nothing can be
        said to it any more."""
        if self.transport is not None:
            self.transport.abort()

    def _arm_idle_timer(self) -> None:
        if self.transport is None or self.worker is not None or self.phase != _IDLE:
            return  # a head or body on its way has its own deadline
        if self.server.draining:
            self.transport.close()
            return
        self.since = self.loop.time()
        if self.close_timer is not None:
            self.close_timer.cancel()
        self.close_timer = self.loop.call_at(
            self.since + self.limits.keep_alive_s, self._close_idle
        )

    def _close_idle(self) -> None:
        self.close_timer = None
        if self.worker is None and self.phase == _IDLE:
            self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def evictable(self) -> bool:
        """Whether closing this connection loses no request the server has accepted: it is
        idle, lingering after an error, or still sending a head."""
        return (
            self.transport is not None
            and self.worker is None
            and not self.pending
            and (self.failure is not None or self.phase in (_IDLE, _HEAD))
        )

    def evict(self) -> None:
        if self.phase == _HEAD and self.failure is None:
            self._write(
                _error(
                    408,
                    "the server is at its connection limit and this request's head was the "
                    "slowest to arrive; send the request line and headers at once",
                ),
                keep_alive=False,
                head=False,
            )
        self.close()


class HttpServer:
    """Listens, tracks connections and the in-flight byte budget, and shuts down gracefully
    (idle connections first)."""

    def __init__(self, app: RestApp, limits: HttpLimits | None = None) -> None:
        self.app = app
        self.limits = limits or HttpLimits()
        self.connections: set[_Connection] = set()
        self.unanswered = 0
        """Requests received in full and not yet answered, over all connections."""
        self.held = 0
        """Bytes of request bodies admitted and not yet answered, over all connections."""
        self.waiters: deque[_Connection] = deque()
        self.draining = False
        """Set on SIGTERM: every further response closes its connection."""
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

    def admit(self, connection: _Connection) -> bool:
        """Take a new connection; at the cap, the least useful open one makes room (the one
        lingering after an error, else the one idle or sending its head the longest)."""
        if len(self.connections) >= self.limits.max_connections:
            candidates = [c for c in self.connections if c.evictable()]
            if not candidates:
                return False
            victim = min(candidates, key=lambda c: (c.failure is None, c.since))
            self.connections.discard(victim)
            victim.evict()
        self.connections.add(connection)
        return True

    # --- in-flight byte budget -------------------------------------------------------------

    def reserve(self, connection: _Connection, need: int) -> bool:
        """Hold ``need`` bytes for a body, or queue the connection (FIFO) until they free up.
        A body larger than the whole budget is admitted once nothing else is held."""
        if need == 0:
            return True
        if not self.waiters and (
            self.held + need <= self.limits.max_inflight_bytes or self.held == 0
        ):
            self.held += need
            return True
        self.waiters.append(connection)
        return False

    def release(self, size: int) -> None:
        if size == 0:
            return
        self.held -= size
        while self.waiters:
            connection = self.waiters[0]
            need = connection.waiting
            if connection.transport is None or not need:
                self.waiters.popleft()
                continue
            if self.held + need > self.limits.max_inflight_bytes and self.held > 0:
                return
            self.waiters.popleft()
            self.held += need
            connection.granted(need)

    def hold(self, size: int) -> int:
        """Count ``size`` bytes as held whatever the budget says (they are read already)."""
        self.held += size
        return size

    def forget(self, connection: _Connection) -> None:
        with contextlib.suppress(ValueError):
            self.waiters.remove(connection)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), host, port, backlog=4096, reuse_address=True
        )

    def drain(self) -> None:
        """SIGTERM: every further response carries ``Connection: close`` (and its connection
        closes after it). Idle keep-alive connections stay open until :meth:`stop`: closing one
        now could reset a request its client is sending at this moment."""
        self.draining = True

    async def stop(self, timeout: float) -> None:
        """Stop listening, close idle connections, let busy ones finish (up to ``timeout``)."""
        self.draining = True
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            if connection.worker is None:
                connection.close()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.connections and loop.time() < deadline:
            workers = [c.worker for c in self.connections if c.worker is not None]
            if not workers:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*workers, return_exceptions=True),
                    max(deadline - loop.time(), 0),
                )
        for connection in list(self.connections):
            connection.close()

"""Connections with a bounded lifetime: a client that does not send a whole request, or stops reading a stream,
for ``timeout`` seconds is disconnected, and a sampling it held gives its slot back.

Why: uvicorn times out only the idle gap between two requests. A connection that sends half a request (or
nothing) was never closed, and a client that stopped reading a stream kept its sampling running, and its
slot taken, for as long as the sampling lasts (a thousand steps paced a second apart: a quarter of an hour);
four such clients took every slot. Both bounds live in the HTTP protocol, below the app:

* *request*: from the moment a connection opens, or a new request's first byte arrives, the whole request
  (headers and body) must arrive within ``timeout``; else the connection is dropped. The deadline is not
  moved by further bytes, so a client that trickles one byte a second gains nothing.
* *write*: when the client reads nothing, what the server writes piles up in the kernel's send buffer, then
  in the transport's, and the transport pauses the response; if it stays paused for ``timeout``, the
  connection is dropped. The app sees the disconnect and stops the sampling (``_EventStream``). Both buffers
  are kept small (:data:`SEND_BUFFER`, :data:`WRITE_BUFFER`: a few dozen frames), so a client that
  stops reading is noticed after that much unread output, not megabytes later.

The idle gap between requests stays uvicorn's ``timeout_keep_alive``, set to the same ``timeout``
(:data:`~textdiffusion.limits.CLIENT_TIMEOUT_S` unless ``serve --client-timeout`` says otherwise).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

#: the kernel's send buffer of each connection, in bytes (set on the listening socket, which its connections
#: inherit): the default grows to megabytes, hiding for minutes a client that reads nothing
SEND_BUFFER = 8 * 1024
#: bytes the transport queues above the kernel's buffer before it pauses the response
WRITE_BUFFER = 4 * 1024


def bound_send_buffer(sock: socket.socket, size: int = SEND_BUFFER) -> None:
    """Give the connections ``sock`` accepts a send buffer of ``size`` bytes (see :data:`SEND_BUFFER`)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)


def bounded_protocol(timeout: float, write_buffer: int = WRITE_BUFFER) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol with the request and write deadlines above; pass it as ``uvicorn.Config(http=)``.
    uvicorn is imported here, on use, as the app alone needs only Starlette."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    whole = (h11.DONE, h11.MUST_CLOSE, h11.CLOSED)  # the client's side of h11's state: its request is all here

    class BoundedH11Protocol(H11Protocol):
        _request_deadline: asyncio.TimerHandle | None = None
        _write_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            transport.set_write_buffer_limits(high=write_buffer)
            self._await_request()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state in whole:
                self._request_deadline = _cancel(self._request_deadline)
            else:  # a request has begun (or the next one): it must be whole within the timeout
                self._await_request()

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._write_deadline is None:
                self._write_deadline = self.loop.call_later(timeout, self._drop)

        def resume_writing(self) -> None:
            super().resume_writing()
            self._write_deadline = _cancel(self._write_deadline)

        def connection_lost(self, exc: Exception | None) -> None:
            self._request_deadline = _cancel(self._request_deadline)
            self._write_deadline = _cancel(self._write_deadline)
            super().connection_lost(exc)

        def _await_request(self) -> None:
            if self._request_deadline is None:
                self._request_deadline = self.loop.call_later(timeout, self._drop)

        def _drop(self) -> None:
            """Abort (not close: a close would wait to flush what the client is not reading)."""
            self._request_deadline = self._write_deadline = None
            self.transport.abort()

    return BoundedH11Protocol


def _cancel(handle: asyncio.TimerHandle | None) -> None:
    if handle is not None:
        handle.cancel()
    return None

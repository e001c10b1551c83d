"""The HTTP clients of one event loop: the connections split over clients of a few each.

httpcore 1.0's pool walks every pooled connection, polling each idle socket, on every
request it hands out and every response it releases (encode/httpcore#1035, open; the
``httpx2`` fork fixed it in pydantic/httpx2#974 and #1075). One client holding 64
connections therefore spends most of a fast request's CPU on that walk. Measured on this
project's 2-CPU machine, 5,000 requests at concurrency 64 against the sandbox: 5.5 ms of
client CPU per request through one ``httpx.AsyncClient`` of 64 connections, 1.0 ms through
four of 16 each. So a request leases the least busy client, and a new client is opened only
when every open one has ``SHARD_WIDTH`` requests in flight. All clients share one SSL
context, which is the costly part of building one.
"""

from __future__ import annotations

import contextvars
import functools
import math
import ssl
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx

__all__ = ["SHARD_WIDTH", "HttpClients", "on_sent", "ssl_context"]

#: Called when the current task's request has its last byte written (httpcore's trace events);
#: an injected transport (tests, in-process apps) writes no bytes and never calls it.
on_sent: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar("nbfanout_on_sent", default=None)
_SENT_EVENTS = frozenset({"http11.send_request_body.complete", "http2.send_request_body.complete"})


@functools.cache
def ssl_context() -> ssl.SSLContext:
    """The process's one SSL context (loading the CA bundle takes ~20 ms): every client shares it."""
    return httpx.create_ssl_context()


async def _trace_sending(request: httpx.Request) -> None:
    """httpx request hook: ask httpcore to report this request's progress to ``on_sent``'s callback."""
    callback = on_sent.get()
    if callback is None:
        return

    async def trace(event: str, info: dict[str, Any]) -> None:
        if event in _SENT_EVENTS:
            callback()

    request.extensions["trace"] = trace

#: Connections per client. The walk is linear in them; 16 keeps it a few microseconds while a
#: fan-out at the default concurrency still needs only a handful of clients.
SHARD_WIDTH = 16


class HttpClients:
    """Up to ``ceil(width / SHARD_WIDTH)`` clients of ``SHARD_WIDTH`` connections each, opened on demand.

    With an injected ``transport`` (tests, in-process apps) there is no pool to split: one
    client carries everything.
    """

    def __init__(self, width: int, timeout_s: float, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._timeout = httpx.Timeout(timeout_s)
        self._transport = transport
        self._most = 1 if transport is not None else max(1, math.ceil(width / SHARD_WIDTH))
        per = width if transport is not None else SHARD_WIDTH
        # every connection a run opens stays pooled: a pool smaller than the requests in flight
        # closes a connection per answer and opens a new one for the next request
        self._limits = httpx.Limits(max_connections=per, max_keepalive_connections=per)
        self._clients: list[httpx.AsyncClient] = []
        self._busy: list[int] = []
        self.closed = False

    @property
    def width(self) -> int:
        """Connections these clients may hold at once, all clients together."""
        return self._most * (self._limits.max_connections or 0)

    @contextmanager
    def lease(self) -> Iterator[httpx.AsyncClient]:
        """The least busy client for one request, held until the request (its body included) is done."""
        if self.closed:
            raise RuntimeError("these HTTP clients are closed")
        i = min(range(len(self._busy)), key=self._busy.__getitem__, default=-1)
        if i < 0 or (self._busy[i] >= SHARD_WIDTH and len(self._clients) < self._most):
            i = self._open()
        self._busy[i] += 1
        try:
            yield self._clients[i]
        finally:
            if not self.closed:  # closed meanwhile: the counts went with the clients
                self._busy[i] -= 1

    def _open(self) -> int:
        verify: ssl.SSLContext | bool = ssl_context() if self._transport is None else True
        self._clients.append(httpx.AsyncClient(transport=self._transport, limits=self._limits,
                                               timeout=self._timeout, verify=verify,
                                               event_hooks={"request": [_trace_sending]}))
        self._busy.append(0)
        return len(self._clients) - 1

    async def aclose(self) -> None:
        """Close every client's connections; a lease afterwards is an error."""
        self.closed = True
        for client in self._clients:
            await client.aclose()

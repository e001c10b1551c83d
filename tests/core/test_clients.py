"""HttpClients: requests spread over clients of SHARD_WIDTH connections, opened only when needed."""

from __future__ import annotations

import asyncio
from contextlib import ExitStack

import httpx
import pytest

from nbfanout.core.clients import SHARD_WIDTH, HttpClients


async def test_a_second_client_opens_only_when_the_first_is_full() -> None:
    clients = HttpClients(width=4 * SHARD_WIDTH, timeout_s=5)
    with ExitStack() as held:
        first = {id(held.enter_context(clients.lease())) for _ in range(SHARD_WIDTH)}
        assert len(first) == 1
        extra = held.enter_context(clients.lease())
        assert id(extra) not in first
        # the next lease goes to the less busy of the two
        assert held.enter_context(clients.lease()) is extra
    await clients.aclose()


async def test_never_more_clients_than_the_width_needs() -> None:
    clients = HttpClients(width=2 * SHARD_WIDTH, timeout_s=5)
    with ExitStack() as held:
        seen = {id(held.enter_context(clients.lease())) for _ in range(5 * SHARD_WIDTH)}
    assert len(seen) == 2
    assert clients.width == 2 * SHARD_WIDTH
    await clients.aclose()


async def test_a_released_lease_frees_its_client_for_the_next_request() -> None:
    clients = HttpClients(width=4 * SHARD_WIDTH, timeout_s=5)
    with clients.lease() as a:
        pass
    with clients.lease() as b:
        assert b is a
    await clients.aclose()


async def test_one_client_carries_an_injected_transport(sandbox_app_factory) -> None:
    app = sandbox_app_factory("fast")
    clients = HttpClients(width=128, timeout_s=5, transport=app.transport())
    with ExitStack() as held:
        seen = {id(held.enter_context(clients.lease())) for _ in range(3 * SHARD_WIDTH)}
    assert len(seen) == 1


async def test_requests_through_leases_reach_the_server_and_closing_ends_leasing(sandbox_app_factory) -> None:
    app = sandbox_app_factory("fast")
    clients = HttpClients(width=64, timeout_s=5, transport=app.transport())

    async def one() -> int:
        with clients.lease() as client:
            r = await client.get("http://sandbox/_sandbox/stats")
            return r.status_code

    assert await asyncio.gather(*(one() for _ in range(20))) == [200] * 20
    await clients.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        with clients.lease():
            pass


def test_a_client_needs_no_event_loop_to_be_built() -> None:
    clients = HttpClients(width=16, timeout_s=5)
    with clients.lease() as client:
        assert isinstance(client, httpx.AsyncClient)
    asyncio.run(clients.aclose())
    assert client.is_closed


async def test_closing_while_a_request_holds_a_lease_does_not_hide_its_outcome() -> None:
    clients = HttpClients(width=32, timeout_s=5)
    with pytest.raises(asyncio.CancelledError):
        with clients.lease():
            await clients.aclose()  # Fanout.aclose() while a task still runs
            raise asyncio.CancelledError  # the task's own outcome must come out, not an IndexError


async def test_a_request_reports_its_last_byte_written_over_real_http_and_never_through_a_transport(sandbox) -> None:
    """Token buckets stop holding a request against their ceiling once it is written (``on_sent``):
    over a real connection httpcore says when; an injected transport writes nothing, so says nothing."""
    from nbfanout.core.clients import on_sent

    url = f"{sandbox.url}/_sandbox/stats"
    calls: list[str] = []
    for transport, expected in ((None, 1), (httpx.ASGITransport(app=_ok_app), 0)):
        clients = HttpClients(width=SHARD_WIDTH, timeout_s=5, transport=transport)
        sending = on_sent.set(lambda: calls.append("sent"))
        try:
            with clients.lease() as client:
                assert (await client.get(url if transport is None else "http://app/")).status_code == 200
        finally:
            on_sent.reset(sending)
        with clients.lease() as client:  # no callback set: a request reports nothing
            await client.get(url if transport is None else "http://app/")
        await clients.aclose()
        assert len(calls) == expected
        calls.clear()


async def _ok_app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})

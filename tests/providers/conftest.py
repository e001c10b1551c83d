"""Fixtures for the adapter tests (helpers live in ``_provider_replay``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest_asyncio

from _provider_replay import Recorder


# Same loop as the test (the project default puts async fixtures on the session loop).
@pytest_asyncio.fixture(loop_scope="function")
async def make_client() -> AsyncIterator[Callable[..., tuple[httpx.AsyncClient, Recorder]]]:
    """Build AsyncClients whose transport answers from the given responses/exceptions."""
    clients: list[httpx.AsyncClient] = []

    def make(*answers: Any) -> tuple[httpx.AsyncClient, Recorder]:
        recorder = Recorder(list(answers))
        clients.append(httpx.AsyncClient(transport=httpx.MockTransport(recorder)))
        return clients[-1], recorder

    yield make
    for client in clients:
        await client.aclose()

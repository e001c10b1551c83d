"""Fixtures for the adapter tests (helpers live in ``_provider_replay``)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from _provider_replay import Recorder


@pytest.fixture
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

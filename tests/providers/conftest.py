"""Fixtures for the adapter tests (helpers live in ``_provider_replay``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from _provider_replay import Recorder


@pytest.fixture
def make_client() -> Iterator[Callable[..., tuple[httpx.AsyncClient, Recorder]]]:
    """Build AsyncClients whose transport answers from the given responses/exceptions."""

    def make(*answers: Any) -> tuple[httpx.AsyncClient, Recorder]:
        recorder = Recorder(list(answers))
        return httpx.AsyncClient(transport=httpx.MockTransport(recorder)), recorder

    yield make

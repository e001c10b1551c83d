"""Shared fixtures: the sandbox over real loopback HTTP, and in-process through httpx.ASGITransport.

Real HTTP (session-scoped, one server each, started on first use)::

    sandbox         start_sandbox("seed15")   (the seeds' 15 models, real latencies / 10)
    storm_sandbox   start_sandbox("storm")    (every fault kind on every wire)
    fast_sandbox    start_sandbox("fast")     (no limits, no latency)
    sandbox_factory sandbox_factory("seed15", time_scale=0.2) -> Sandbox (cached per arguments)
    fresh_sandbox   the ``sandbox`` above, its ledger and windows reset for this test

The session servers are shared: call ``.reset()`` (or use ``fresh_sandbox``) before
asserting on ``.stats()``.

In-process (no socket; fake clock)::

    sandbox_app_factory(scenario, time_scale=0.0, clock=FakeClock()) -> SandboxApp
        .app / .state / .clock / .config / .client() -> httpx.AsyncClient
    fake_clock      a FakeClock at t = 1000.0; ``advance(seconds)``

Shared budgets (a real ``redis-server`` from Debian's package, on a free loopback port, no
persistence; skipped when it is missing unless NBFANOUT_REQUIRE_REDIS is set, as CI does)::

    redis_server    the session's RedisServer (``.url``); tests keep apart by namespace
    redis_namespace a fresh namespace for this test's keys

``scenario`` is a built-in name, a TOML path, a Scenario, or a dict in the scenario
schema (see nbfanout/sandbox/scenario.py).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import os
import uuid

import httpx
import pytest

from nbfanout.sandbox import Sandbox, Scenario, create_app, load_scenario, parse_scenario, start_sandbox
from nbfanout.core.tokens import exact_encoder
from nbfanout.sandbox.app import SandboxState
from nbfanout.sandbox.redis_server import RedisServer, redis_server_binary

IN_PROCESS_URL = "http://sandbox.local"


class FakeClock:
    """A clock that only moves when told: ``clock()`` reads it, ``advance(s)`` moves it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now

    def __repr__(self) -> str:
        return f"FakeClock(now={self.now})"


@pytest.fixture(scope="session", autouse=True)
def _tokenizers_loaded() -> None:
    """Load the catalog's tokenizer before any test: requests sent while it loads in the
    background are counted with a byte bound, and which test met that would depend on order."""
    exact_encoder("o200k_base")


def as_scenario(scenario: Scenario | str | Mapping[str, Any]) -> Scenario:
    """A Scenario from a name, path, Scenario or schema dict."""
    if isinstance(scenario, Mapping):
        return parse_scenario(scenario, source="<test>")
    return load_scenario(scenario)


@dataclass
class SandboxApp:
    """An in-process sandbox: the ASGI app, its state and clock, and clients bound to it."""

    app: Any
    clock: FakeClock | Callable[[], float]
    state: SandboxState = field(init=False)

    def __post_init__(self) -> None:
        self.state = self.app.state.sandbox

    @property
    def url(self) -> str:
        return IN_PROCESS_URL

    @property
    def config(self) -> dict[str, Any]:
        """nbfanout config pointing at the in-process URL (use with ``client()``'s transport)."""
        return self.state.scenario.client_config(IN_PROCESS_URL)

    def transport(self) -> httpx.ASGITransport:
        return httpx.ASGITransport(app=self.app)

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=self.transport(), base_url=IN_PROCESS_URL, **kwargs)

    def stats(self) -> dict[str, Any]:
        return self.state.stats()


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sandbox_app_factory() -> Callable[..., SandboxApp]:
    """Build in-process sandboxes: ``factory(scenario, time_scale=0.0, clock=None)``."""

    def make(
        scenario: Scenario | str | Mapping[str, Any] = "seed15",
        *,
        time_scale: float | None = 0.0,
        clock: FakeClock | Callable[[], float] | None = None,
    ) -> SandboxApp:
        clk = clock if clock is not None else FakeClock()
        return SandboxApp(create_app(as_scenario(scenario), clock=clk, time_scale=time_scale), clk)

    return make


@pytest.fixture(scope="session")
def sandbox_factory() -> Iterator[Callable[..., Sandbox]]:
    """Real loopback sandboxes, one per (scenario, time_scale), stopped at session end."""
    running: dict[tuple[Any, float | None], Sandbox] = {}

    def get(scenario: Scenario | str | Mapping[str, Any] = "seed15", *, time_scale: float | None = None) -> Sandbox:
        sc = as_scenario(scenario)
        key = (scenario if isinstance(scenario, str) else id(sc), time_scale)
        if key not in running or not running[key].running:
            running[key] = start_sandbox(sc, time_scale=time_scale)
        return running[key]

    yield get
    for sb in running.values():
        sb.stop()


@pytest.fixture(scope="session")
def sandbox(sandbox_factory: Callable[..., Sandbox]) -> Sandbox:
    """The seed15 sandbox over real HTTP (shared by the session)."""
    return sandbox_factory("seed15")


@pytest.fixture(scope="session")
def storm_sandbox(sandbox_factory: Callable[..., Sandbox]) -> Sandbox:
    return sandbox_factory("storm")


@pytest.fixture(scope="session")
def fast_sandbox(sandbox_factory: Callable[..., Sandbox]) -> Sandbox:
    return sandbox_factory("fast")


@pytest.fixture
def fresh_sandbox(sandbox: Sandbox) -> Sandbox:
    """The session seed15 sandbox with its ledger, windows and fault counters cleared."""
    sandbox.reset()
    return sandbox


def require_redis() -> None:
    """Skip a test that needs redis-server when it is not installed, or fail under NBFANOUT_REQUIRE_REDIS."""
    if redis_server_binary() is None:
        if os.environ.get("NBFANOUT_REQUIRE_REDIS"):
            pytest.fail("NBFANOUT_REQUIRE_REDIS is set but redis-server is not installed (apt-get install -y redis-server)")
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the session, stopped at its end."""
    require_redis()
    server = RedisServer()
    yield server
    server.close()


@pytest.fixture
def redis_namespace() -> str:
    return f"t{uuid.uuid4().hex[:10]}"

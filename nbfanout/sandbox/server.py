"""Serving the sandbox: uvicorn on loopback, in a background thread or in the foreground.

``start_sandbox`` binds a socket itself (port 0 picks a free one, read back at once),
runs uvicorn on it in a daemon thread, waits until it accepts requests and returns a
``Sandbox`` handle. ``run_server`` does the same in the foreground for ``nbfanout sandbox``.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from nbfanout.core.errors import UsageError
from nbfanout.sandbox.app import RawSendCapture, SandboxState, create_app
from nbfanout.sandbox.scenario import LowerBound, Scenario, load_scenario

__all__ = ["Sandbox", "config_to_toml", "run_server", "start_sandbox", "write_config"]


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bind(host: str, port: int, allow_remote: bool = False) -> socket.socket:
    if not allow_remote and not _is_loopback(host):
        raise UsageError(f"the sandbox serves loopback only; {host!r} is reachable from other machines "
                         "(pass allow_remote=True, or --allow-remote, to serve it anyway)")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def _uvicorn_config(app: Any, *, foreground: bool) -> uvicorn.Config:
    return uvicorn.Config(
        RawSendCapture(app),
        http="h11",
        lifespan="off",
        access_log=False,
        log_level="warning",
        # In a thread inside someone else's process, leave their logging alone.
        log_config=uvicorn.config.LOGGING_CONFIG if foreground else None,
        timeout_graceful_shutdown=2,
        timeout_keep_alive=30,
    )


class Sandbox:
    """A running sandbox server: ``url``, ``config``, ``stats()``, ``reset()``, ``stop()``.

    A context manager: ``with start_sandbox("seed15") as sb: ...`` stops it on exit.
    ``state`` is the live SandboxState (owned by the server's thread; read, don't mutate).
    """

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, url: str, state: SandboxState) -> None:
        self._server = server
        self._thread = thread
        self.url = url
        self.state = state
        self.scenario: Scenario = state.scenario

    def __repr__(self) -> str:
        status = "running" if self.running else "stopped"
        return f"Sandbox({self.scenario.name!r}, url={self.url!r}, {status})"

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._server.should_exit

    @property
    def config(self) -> dict[str, Any]:
        """nbfanout config dict: every provider at this sandbox, its keys and advertised limits."""
        return self.scenario.client_config(self.url)

    def base_url(self, provider: str) -> str:
        """The base URL a client uses for ``provider`` (``.../v1`` or ``.../v1beta``)."""
        return self.config["providers"][provider]["base_url"]

    def write_config(self, path: str | Path) -> Path:
        """Write ``config`` as an nbfanout.toml."""
        return write_config(self.config, path, comment=f"sandbox {self.scenario.name!r} at {self.url}")

    def stats(self) -> dict[str, Any]:
        """The ledger, fetched over HTTP (GET /_sandbox/stats)."""
        r = httpx.get(f"{self.url}/_sandbox/stats", timeout=10)
        r.raise_for_status()
        return r.json()

    def reset(self) -> None:
        """Clear the ledger, limit windows and fault counters (POST /_sandbox/reset)."""
        httpx.post(f"{self.url}/_sandbox/reset", timeout=10).raise_for_status()

    def lower_bound(
        self,
        models: Sequence[str] | None = None,
        prompt_tokens: int = 1000,
        max_tokens: int | None = None,
        *,
        prompts: int = 1,
        start: float | None = None,
    ) -> LowerBound:
        """The scenario's lower bound (see ``lower_bound_s``); ``start=self.state.clock()`` gives fixed windows their phase."""
        return self.scenario.lower_bound(models, prompt_tokens, max_tokens, prompts=prompts, start=start)

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_sandbox(
    scenario: Scenario | str | Mapping[str, Any] = "seed15",
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    time_scale: float | None = None,
    clock: Callable[[], float] | None = None,
    ready_timeout: float = 15.0,
    allow_remote: bool = False,
) -> Sandbox:
    """Run the sandbox in a background thread on ``host:port`` (0: a free port) and return its handle."""
    app = create_app(scenario, clock=clock, time_scale=time_scale)
    state: SandboxState = app.state.sandbox
    sock = _bind(host, port, allow_remote)
    bound_port = sock.getsockname()[1]
    server = uvicorn.Server(_uvicorn_config(app, foreground=False))
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # reported to the starting thread
            errors.append(exc)
        finally:
            sock.close()

    thread = threading.Thread(target=serve, name=f"nbfanout-sandbox-{bound_port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + ready_timeout
    while not server.started:
        if errors or not thread.is_alive():
            raise RuntimeError(f"sandbox server failed to start on {_url(host, bound_port)}") from (errors[0] if errors else None)
        if time.monotonic() > deadline:
            server.should_exit = True
            raise TimeoutError(f"sandbox server did not start within {ready_timeout} s")
        time.sleep(0.01)
    return Sandbox(server, thread, _url(host, bound_port), state)


def run_server(
    host: str = "127.0.0.1",
    port: int = 8765,
    scenario: Scenario | str = "seed15",
    write_config: str | Path | None = None,
    *,
    time_scale: float | None = None,
    allow_remote: bool = False,
) -> None:
    """Serve in the foreground until Ctrl-C (``nbfanout sandbox``); prints the URL first."""
    sc = scenario if isinstance(scenario, Scenario) else load_scenario(scenario)
    app = create_app(sc, time_scale=time_scale)
    sock = _bind(host, port, allow_remote)
    url = _url(host, sock.getsockname()[1])
    print(f"nbfanout sandbox: scenario {sc.name!r} serving at {url}", flush=True)
    for pid, entry in sc.client_config(url)["providers"].items():
        n = len(entry["models"])
        print(f"  {pid:<12} {entry['base_url']}  ({n} model{'' if n == 1 else 's'})", flush=True)
    if write_config is not None:
        path = _write_toml(sc.client_config(url), write_config, comment=f"sandbox {sc.name!r} at {url}")
        print(f"  config written to {path}", flush=True)
    print("  ledger: GET /_sandbox/stats   reset: POST /_sandbox/reset   (Ctrl-C stops)", flush=True)
    server = uvicorn.Server(_uvicorn_config(app, foreground=True))
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


# --------------------------------------------------------------------------- TOML

_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.match(key) else json.dumps(key, ensure_ascii=False)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON string escapes are valid TOML basic strings
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML: {value!r}")


def config_to_toml(config: Mapping[str, Any], comment: str | None = None) -> str:
    """A small TOML writer for config dicts: scalars, lists of scalars, and nested tables."""
    lines: list[str] = [f"# {line}" for line in (comment or "").splitlines()]

    def emit(table: Mapping[str, Any], path: list[str]) -> None:
        scalars = [(k, v) for k, v in table.items() if not isinstance(v, Mapping)]
        tables = [(k, v) for k, v in table.items() if isinstance(v, Mapping)]
        if path and (scalars or not tables):
            if lines:
                lines.append("")
            lines.append("[" + ".".join(_toml_key(p) for p in path) + "]")
        for k, v in scalars:
            lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
        for k, v in tables:
            emit(v, [*path, k])

    emit(config, [])
    return "\n".join(lines) + "\n"


def write_config(config: Mapping[str, Any], path: str | Path, *, comment: str | None = None) -> Path:
    """Write a config dict as TOML to ``path``; returns the path."""
    return _write_toml(config, path, comment=comment)


def _write_toml(config: Mapping[str, Any], path: str | Path, *, comment: str | None = None) -> Path:
    p = Path(path)
    header = "Written by nbfanout" + (f": {comment}" if comment else "") + ". Keys here are sandbox keys."
    p.write_text(config_to_toml(config, header), encoding="utf-8")
    return p

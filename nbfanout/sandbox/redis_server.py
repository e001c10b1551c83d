"""A throwaway local ``redis-server`` for shared budgets: tests, benchmarks and ``make redis``.

It runs Debian's (or any) ``redis-server`` binary on a free loopback port with no persistence
(``--save ''``, no append-only file), so nothing outlives it. ``python -m
nbfanout.sandbox.redis_server`` starts one in the foreground and prints its URL.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time

__all__ = ["RedisServer", "redis_server_binary"]


def redis_server_binary() -> str | None:
    """The ``redis-server`` on PATH, or None (Debian: ``apt-get install redis-server``)."""
    return shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """``redis-server`` on 127.0.0.1 at a free port; ``stop()`` (or leaving ``with``) ends it."""

    def __init__(self, port: int | None = None) -> None:
        binary = redis_server_binary()
        if binary is None:
            raise RuntimeError("redis-server is not installed: apt-get install redis-server (or brew install redis)")
        self.port = port or _free_port()
        self._dir = tempfile.TemporaryDirectory(prefix="nbfanout-redis-")
        self.proc: subprocess.Popen[bytes] | None = None
        self._binary = binary
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start (or restart, on the same port) the server and wait until it answers."""
        self.proc = subprocess.Popen(
            [self._binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self._dir.name, "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode} (port {self.port} busy?)")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within 10 s")

    def stop(self) -> None:
        """Stop the server (its data goes with it)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RedisServer {self.url} {'running' if self.running else 'stopped'}>"


def main(argv: list[str] | None = None) -> int:
    """``make redis``: a local Redis for shared budgets, in the foreground until Ctrl-C."""
    args = argv if argv is not None else sys.argv[1:]
    port = int(args[0]) if args else 6379
    try:
        server = RedisServer(port)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Redis for shared budgets at {server.url} (no persistence); Ctrl-C stops it.")
    print(f"  export NBFANOUT_REDIS_URL={server.url}    # then: Fanout(shared=True), %%fanout --shared, [shared]")
    try:
        assert server.proc is not None
        server.proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

"""One sandbox in its own process, for benchmarks/bench.py.

    python benchmarks/bench_serve.py SCENARIO

SCENARIO is a built-in name (``seed15``, ``batch_token_bucket``, ...), a TOML file, or a
JSON file holding a scenario dict (the schema of nbfanout/sandbox/scenario.py). The server
binds a free loopback port, prints one JSON line ``{"url": ..., "pid": ...}`` on stdout and
serves until its standard input closes, so it never outlives the runner that started it.
A sandbox of its own keeps the server's CPU out of the client process being measured.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def _scenario(arg: str):
    from nbfanout.sandbox import parse_scenario

    path = Path(arg)
    if path.suffix == ".json" and path.is_file():
        return parse_scenario(json.loads(path.read_text("utf-8")), source=str(path))
    return arg  # a built-in name or a TOML path: start_sandbox loads it


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    from nbfanout.sandbox import start_sandbox

    sandbox = start_sandbox(_scenario(argv[0]), host="127.0.0.1", port=0)
    print(json.dumps({"url": sandbox.url, "pid": os.getpid()}), flush=True)
    try:
        sys.stdin.read()  # returns at EOF: the runner closed our stdin or exited
    except KeyboardInterrupt:
        pass
    finally:
        sandbox.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

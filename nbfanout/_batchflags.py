"""The batch flags ``nbfanout run|map`` and ``%%fanout`` share (``--batch``, ``--via``,
``--batch-state``, ``--batch-after``): one check of them against each other, one rule for the state
file's path."""

from __future__ import annotations

import argparse
from pathlib import Path

from nbfanout.core.errors import UsageError

__all__ = ["batch_via", "new_batch_state"]


def batch_via(args: argparse.Namespace) -> str:
    """``--batch`` / ``--via`` / ``--batch-state`` / ``--batch-after``: how the requests go (live, batch,
    auto), the flags checked against each other."""
    if args.batch and args.via not in (None, "batch"):
        raise UsageError(f"--batch means --via batch: drop --batch or --via {args.via}")
    via = args.via or ("batch" if args.batch else "live")
    if via == "live" and args.batch_state:
        raise UsageError("--batch-state names a batch map's state file: add --batch (or --via batch|auto)")
    if via != "auto" and args.batch_after is not None:
        raise UsageError("--batch-after is the threshold of --via auto: add --via auto or drop it")
    return via


def new_batch_state(given: str | None, resume: str) -> Path:
    """--batch-state, which must not hold a map already, or a new file under .nbfanout/batches/ (named
    before the map starts, so a view can say where it is while the batches run). ``resume`` is the
    command that picks a file up, for the message."""
    from nbfanout.core.batch import new_state_path

    if not given:
        return new_state_path()
    path = Path(given).expanduser()
    if path.exists():
        raise UsageError(f"--batch-state {given}: exists (a map's batches may be in it); pick its batches up "
                         f"with `{resume} {given}`, or name a new file")
    if path.parent != Path("") and path.parent.exists() and not path.parent.is_dir():
        raise UsageError(f"--batch-state {given}: {path.parent} is not a directory")
    return path

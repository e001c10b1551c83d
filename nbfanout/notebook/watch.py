"""``watch(fx)``: the live dashboard for calls made from Python (``run``, ``map``, ``ask``), not the magic.

    async with watch(fx):
        batch = await fx.map(prompts, models=[...], judge="openai/gpt-4o-mini")

shows one row per model as it goes (for a map: answered / total, failures, in flight, rate and
ETA), and leaves the same static snapshot as ``%%fanout`` when the block ends, so a saved
notebook keeps it. ``with watch(fx):`` does the same around ``fx.run_sync(...)`` and friends.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import TYPE_CHECKING, Any

from nbfanout.notebook.dashboard import Dashboard

if TYPE_CHECKING:
    from nbfanout.core.fanout import Fanout

__all__ = ["watch"]


class watch:  # noqa: N801 - used like a function: ``async with watch(fx)``
    """Display a dashboard for what ``fx`` runs inside the block; freeze it into a snapshot at the end."""

    def __init__(self, fx: Fanout) -> None:
        self.fx = fx
        self.view = Dashboard(())  # its rows come with the first run's RunStarted
        self._unsubscribe: Any = None
        self._before: Any = None

    def _open(self) -> Dashboard:
        self._before = self.fx.last_result
        self.view.display()
        self._unsubscribe = self.fx.subscribe(self.view.on_event)
        return self.view

    def _result(self) -> Any:
        last = self.fx.last_result
        return last if last is not self._before else None

    async def __aenter__(self) -> Dashboard:
        return self._open()

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self._unsubscribe()
        cancelled = exc_type is not None and issubclass(exc_type, (asyncio.CancelledError, KeyboardInterrupt))
        await self.view.aclose(cancelled=cancelled)
        self.view.freeze(self._result())

    def __enter__(self) -> Dashboard:
        return self._open()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # the runs happened on nbfanout's loop thread and are over: no tick is pending that matters
        self._unsubscribe()
        self.view.model.finish(cancelled=exc_type is not None and issubclass(exc_type, KeyboardInterrupt))
        self.view.freeze(self._result())

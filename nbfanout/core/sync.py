"""The one sync edge: run the async core from sync code (scripts, notebook cells) on nbfanout's own loop.

ipykernel's loop is always running in the main thread, so a cell cannot ``asyncio.run`` the
core there (and the kernel's loop is never patched). A ``LoopJob`` starts a coroutine as a
task on ``background_loop()`` (one daemon thread, so budgets and aiolimiter buckets always
live on one loop) and waits for it from the calling thread. Ctrl-C (a kernel interrupt)
arrives in that waiting thread as KeyboardInterrupt: the task is cancelled, the core cancels
its requests and closes its connections, and only when the task has really finished (not
merely been asked to) does ``wait`` re-raise the interrupt.
"""


from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, Generic, TypeVar


__all__ = ["CLEANUP_TIMEOUT_S", "POLL_S", "LoopJob", "background_loop", "call_in_loop", "run_coroutine_sync"]

T = TypeVar("T")
CLEANUP_TIMEOUT_S = 15.0  # how long an interrupted cell waits for cancelled requests to wind down
POLL_S = 0.05  # how often the waiting thread comes up for a pending Ctrl-C


_loop_thread: threading.Thread | None = None
_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def background_loop() -> asyncio.AbstractEventLoop:
    """nbfanout's own event loop on a daemon thread (used when the caller's thread already runs a loop)."""
    global _loop, _loop_thread
    with _loop_lock:
        if _loop is None or _loop.is_closed():
            _loop = asyncio.new_event_loop()
            _loop_thread = threading.Thread(target=_loop.run_forever, name="nbfanout-loop", daemon=True)
            _loop_thread.start()
        return _loop



class LoopJob(Generic[T]):
    """A coroutine running as a task on nbfanout's background loop, awaited from sync code."""

    def __init__(self, coro: Coroutine[Any, Any, T], *, name: str = "nbfanout-job") -> None:
        self.loop = background_loop()
        self.name = name
        self.started = time.monotonic()
        self._task: asyncio.Task[T] | None = None
        self._cancel_requested = False
        self._finished: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._finished.set_running_or_notify_cancel()
        # A fresh context, not a copy of the cell's: ipykernel then tags the task's widget messages with
        # whichever request is executing when they are sent (its fallback for threads), so a client that
        # keeps messages per cell (nbclient, papermill) records a --background dashboard's final state.
        self.loop.call_soon_threadsafe(self._start, coro, context=contextvars.Context())

    def _start(self, coro: Coroutine[Any, Any, T]) -> None:
        """Create the task on the loop thread; a cancel asked for before this point still wins."""
        self._task = self.loop.create_task(coro, name=self.name)
        self._task.add_done_callback(self._settle)
        if self._cancel_requested:
            self._task.cancel()

    def _settle(self, task: asyncio.Task[T]) -> None:
        """Copy the task's outcome to the thread-safe future once the task has fully unwound."""
        if task.cancelled():
            self._finished.set_exception(asyncio.CancelledError())
        elif task.exception() is not None:
            self._finished.set_exception(task.exception())  # type: ignore[arg-type]
        else:
            self._finished.set_result(task.result())

    def done(self) -> bool:
        """True once the task has finished (succeeded, failed or been cancelled and cleaned up)."""
        return self._finished.done()

    def cancel(self) -> None:
        """Ask the task to stop (thread-safe); its cleanup runs on the loop."""
        self._cancel_requested = True
        self.loop.call_soon_threadsafe(self._cancel_on_loop)

    def _cancel_on_loop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def wait(self, timeout: float | None = None) -> T:
        """The task's result; on KeyboardInterrupt cancel it, wait for its cleanup, then re-raise."""
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while True:
                # Short waits, not one long one: a SIGINT the OS hands to another thread of the kernel
                # does not wake a blocked lock, but Python runs its handler as soon as we come back up.
                step = POLL_S if deadline is None else max(0.0, min(POLL_S, deadline - time.monotonic()))
                try:
                    return self._finished.result(step)
                except concurrent.futures.TimeoutError:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise
        except KeyboardInterrupt:
            self.cancel_and_wait()
            raise

    def cancel_and_wait(self, timeout: float = CLEANUP_TIMEOUT_S) -> bool:
        """Cancel and block until the task has unwound (further Ctrl-C's are absorbed); True if it did."""
        self.cancel()
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._finished.exception(min(POLL_S, max(0.0, deadline - time.monotonic())))
                return True
            except concurrent.futures.CancelledError:
                return True
            except concurrent.futures.TimeoutError:
                if time.monotonic() >= deadline:
                    return False
            except KeyboardInterrupt:  # a second Ctrl-C while requests are closing: keep waiting
                continue

    def __repr__(self) -> str:
        state = "done" if self.done() else ("cancelling" if self._cancel_requested else "running")
        return f"<LoopJob {self.name} {state} after {time.monotonic() - self.started:.1f}s>"


def call_in_loop(fn: Callable[[], T], timeout: float = 10.0) -> T:
    """Run a plain function on the background loop's thread (where budgets may be read) and return its value."""
    loop = background_loop()
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def call() -> None:
        try:
            future.set_result(fn())
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller's thread
            future.set_exception(exc)

    loop.call_soon_threadsafe(call)
    return future.result(timeout)


def run_coroutine_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion from sync code: ``asyncio.run`` when no loop runs in this thread,
    else on nbfanout's own loop thread. Ctrl-C cancels it and returns only after its cleanup."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    if running is _loop:  # blocking nbfanout's own loop thread on itself would deadlock it for good
        coro.close()
        from nbfanout.core.errors import UsageError

        raise UsageError("run_sync was called from nbfanout's own event loop: use `await fx.run(...)` there")
    return LoopJob(coro, name="nbfanout-run-sync").wait()

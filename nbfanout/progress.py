"""Progress as plain data: the state of each requested model, folded from the core's events.

``DashboardModel`` turns events into rows (one per requested model, or per model of a batch
with its counts), header totals and the latest budget snapshots from ``utilization`` events.
Every view renders it: the notebook's widgets and static snapshot, IPython's text fallback and
the command line (``nbfanout/render.py`` turns it into HTML and text). It reads only events:
whose request each is comes with it (``RequestEvent.requested`` and ``purpose``), so no view
parses request ids, and it imports no UI library.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from nbfanout._secrets import mask
from nbfanout.core.events import (
    BudgetStats,
    Event,
    LimitsLearned,
    ModelCompleted,
    ModelFailed,
    ModelQueued,
    ModelRotation,
    ModelSelected,
    NoModelsAvailableEvent,
    RateLimited,
    RequestEvent,
    RequestStarted,
    RetryScheduled,
    RunCompleted,
    RunStarted,
    TextDelta,
    Utilization,
)

__all__ = ["FINAL_STATES", "DashboardModel", "Row", "TextNews"]

#: States a row does not leave.
FINAL_STATES = frozenset({"done", "failed", "cancelled"})
_STAGE = {"queued": 0.02, "waiting": 0.1, "rate_limited": 0.25, "retrying": 0.25, "running": 0.55}


@dataclass
class Row:
    """What one requested model is doing now; plain data the views render."""

    name: str
    label: str
    model: str = ""
    state: str = "queued"  # queued, waiting, running, rate_limited, retrying, done, failed, cancelled
    detail: str = "queued"
    until: float | None = None  # run-clock second a wait ends, for the countdown
    attempts: int = 0
    key_id: str = ""
    latency_s: float | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float | None = None
    chars: int = 0
    text: str = ""  # the streamed answer so far
    # in a batch (one request per prompt and model) the row counts its requests
    total: int = 1
    answered: int = 0
    failed: int = 0
    in_flight: set[str] = field(default_factory=set)
    last_error: str = ""


class DashboardModel:
    """Rows, totals and budgets of one run, built only from events (call ``apply`` on the loop thread)."""

    def __init__(self, models: Sequence[str] = (), *, stream: bool = False, expected_chars: int | None = None) -> None:
        self.rows: dict[str, Row] = {m: Row(name=m, label=m) for m in models}
        self.batch = False  # several prompts: each row counts its model's requests
        self._learns = not models  # rows come from the runs themselves (``watch``)
        self.synthesis: Row | None = None
        self.stream = stream
        self.expected_chars = expected_chars or 4 * 1024
        self.budgets: tuple[BudgetStats, ...] = ()
        self.providers = {m.split("/", 1)[0] for m in models}
        self.learned: list[str] = []
        self.events = 0
        self.started: float | None = None
        self.ended: float | None = None
        self.finished = False
        self.cancelled = False
        self._anchor = (0.0, time.monotonic())  # (run-clock t of the last event, monotonic time it arrived)

    # --- reading ------------------------------------------------------------------------------
    def ordered(self) -> list[Row]:
        """Rows in display order: the synthesis first when there is one."""
        return ([self.synthesis] if self.synthesis else []) + list(self.rows.values())

    def now(self) -> float:
        """The run clock now, extrapolated from the last event (events carry run-clock times)."""
        t, at = self._anchor
        return t + ((self.ended or time.monotonic()) - at)

    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        return (self.ended or time.monotonic()) - self.started

    def progress(self, row: Row) -> float:
        """Streamed characters against the expected length when streaming, else the stage reached."""
        if row.state in FINAL_STATES:
            return 1.0
        if self.batch:
            return (row.answered + row.failed) / max(row.total, 1)
        if self.stream and row.chars:
            done = [r.chars for r in self.rows.values() if r.state == "done" and r.chars]
            expected = statistics.median(done) if done else self.expected_chars
            return min(0.97, 0.1 + 0.9 * row.chars / max(expected, 1))
        return _STAGE.get(row.state, 0.0)

    def totals(self) -> dict[str, Any]:
        rows = self.ordered()
        if self.batch:  # requests, not models
            return {
                "total": sum(r.total for r in rows),
                "done": sum(r.answered for r in rows),
                "failed": sum(r.failed for r in rows),
                "cancelled": sum(r.total - r.answered - r.failed for r in rows if r.state == "cancelled"),
                "running": sum(len(r.in_flight) for r in rows),
                "tokens": sum(r.input_tokens + r.output_tokens for r in rows),
                "cost": sum(r.cost or 0.0 for r in rows),
                "elapsed": self.elapsed(),
            }
        return {
            "total": len(rows),
            "done": sum(r.state == "done" for r in rows),
            "failed": sum(r.state == "failed" for r in rows),
            "cancelled": sum(r.state == "cancelled" for r in rows),
            "running": sum(r.state == "running" for r in rows),
            "tokens": sum(r.input_tokens + r.output_tokens for r in rows),
            "cost": sum(r.cost or 0.0 for r in rows),
            "elapsed": self.elapsed(),
        }

    # --- writing ------------------------------------------------------------------------------
    def finish(self, cancelled: bool = False) -> None:
        """Freeze the clock; rows still open become cancelled when the run was interrupted."""
        if self.ended is None:
            self.ended = time.monotonic()
        self.finished = True
        if cancelled:
            self.cancelled = True
            for row in self.ordered():
                if row.state not in FINAL_STATES:
                    row.state, row.detail, row.until = "cancelled", "cancelled", None
                    row.in_flight.clear()

    def _row(self, event: Event) -> Row | None:
        """The row an event is about: its requested model's, or the synthesis row; judging has none."""
        if not isinstance(event, RequestEvent):
            return None
        if event.purpose == "synthesis":
            return self.synthesis
        return self.rows.get(event.requested) if event.purpose == "answer" else None

    def apply(self, event: Event) -> bool:
        """Fold one event into the model; True when something visible changed."""
        self.events += 1
        self._anchor = (event.t, time.monotonic())
        if isinstance(event, Utilization):
            self.budgets = tuple(b for b in event.budgets if b.name.split(" ", 1)[0].split("/", 1)[0] in self.providers)
            return True
        if isinstance(event, RunStarted):
            if self.started is None:
                self.started = time.monotonic()
            if event.purpose == "synthesis":  # the answers combined, in a run of its own: one row on top
                self.synthesis = Row(name=event.models[0], label=f"synthesis ({event.models[0]})")
                return True
            for m in event.models:
                row = self.rows.get(m)
                if row is None or (self._learns and row.state in FINAL_STATES):
                    # a view made before it knew the models (``watch``) learns them here; a later run
                    # in the same view starts its rows afresh, counts included
                    self.rows[m] = Row(name=m, label=m)
                    self.providers.add(m.split("/", 1)[0])
            if event.prompts > 1:
                self.batch = True
                for m in event.models:
                    self.rows[m].total = event.prompts
            return True
        if isinstance(event, RunCompleted):
            if event.cancelled:
                self.finish(cancelled=True)
            return True
        if isinstance(event, LimitsLearned):
            self.learned.append(f"{event.scope} {event.metric} {_num(event.old)}→{_num(event.new)} ({event.source})")
            del self.learned[:-20]
            return True
        row = self._row(event)
        if row is None or row.state in FINAL_STATES:
            return False
        if self.batch and row is not self.synthesis:
            _apply_to_batch_row(row, event)
        else:
            _apply_to_row(row, event)
        return True

    def rate(self, row: Row) -> float | None:
        """A batch row's finished requests per second so far (None before the first)."""
        ended = row.answered + row.failed
        return ended / self.elapsed() if ended and self.elapsed() > 0 else None


def _num(value: float | None) -> str:
    return "?" if value is None else f"{value:g}"


def _waiting(e: NoModelsAvailableEvent) -> str:
    """A row's detail while a budget holds it: which one, when the event says."""
    return f"waiting: {e.reason}" if e.reason else "waiting for capacity"


def _retry_detail(e: RetryScheduled) -> str:
    """Why a request waits before its next attempt: the provider asked (which one), our backoff, or a drain."""
    if e.reason == "provider asked":
        return f"{e.model.split('/', 1)[0]} asked to wait ({e.category})"
    if e.reason == "backoff":
        return f"{e.category} on attempt {e.attempt}, backing off"
    return f"{e.category}: waiting {e.reason}" if e.reason.startswith("until") else f"{e.category}: {e.reason}"


def _failure(e: ModelFailed) -> str:
    return f"{e.category}" + (f" (HTTP {e.status})" if e.status else "") + f": {e.message}"


def _apply_to_row(row: Row, e: Event) -> None:
    """The state machine of one row."""
    if isinstance(e, ModelQueued):
        row.state, row.detail = "queued", "queued"
    elif isinstance(e, NoModelsAvailableEvent):
        row.state, row.detail, row.until = "waiting", _waiting(e), e.t + e.wait_s
    elif isinstance(e, ModelSelected):
        row.model = e.model
    elif isinstance(e, ModelRotation):
        row.model = e.to_model
        row.state, row.detail, row.until = "waiting", f"rotated to {e.to_model} ({e.reason})", None
    elif isinstance(e, RequestStarted):
        row.model, row.attempts, row.key_id = e.model, e.attempt, mask(e.key_id)
        rotated = f", rotated to {row.model}" if row.model != row.name else ""
        row.state, row.detail, row.until = "running", f"running (attempt {e.attempt}{rotated})", None
        row.chars, row.text = 0, ""
    elif isinstance(e, TextDelta):
        row.chars = e.chars_so_far
        row.text += e.text
    elif isinstance(e, RateLimited):
        row.state, row.detail = "rate_limited", f"rate-limited by {e.model.split('/', 1)[0]}"
        row.until = e.t + e.retry_after_s if e.retry_after_s is not None else None
    elif isinstance(e, RetryScheduled):
        row.state, row.detail, row.until = "retrying", _retry_detail(e), e.t + e.wait_s
    elif isinstance(e, ModelCompleted):
        row.model, row.attempts = e.model, e.attempts
        row.state, row.detail, row.until = "done", "done" + (f" via {e.model}" if e.model != row.name else ""), None
        row.latency_s, row.input_tokens, row.output_tokens, row.cost = e.latency_s, e.input_tokens, e.output_tokens, e.cost
    elif isinstance(e, ModelFailed):
        row.model, row.attempts = e.model, e.attempts
        row.state, row.detail, row.until = "failed", f"failed: {_failure(e)}", None
        row.latency_s = e.t


def _apply_to_batch_row(row: Row, e: Event) -> None:
    """A batch row: counts of its model's requests, the latest wait or failure as its detail."""
    request = getattr(e, "request", "")
    if isinstance(e, RequestStarted):
        row.in_flight.add(request)
        row.attempts += 1
    elif isinstance(e, (ModelCompleted, ModelFailed)):
        row.in_flight.discard(request)
        if isinstance(e, ModelCompleted):
            row.answered += 1
            row.input_tokens += e.input_tokens
            row.output_tokens += e.output_tokens
            row.cost = (row.cost or 0.0) + (e.cost or 0.0)
        else:
            row.failed += 1
            row.last_error = _failure(e)
    elif isinstance(e, (RateLimited, RetryScheduled, NoModelsAvailableEvent)):
        row.detail = (f"rate-limited by {e.model.split('/', 1)[0]}" if isinstance(e, RateLimited) else
                      _retry_detail(e) if isinstance(e, RetryScheduled) else _waiting(e))
    else:
        return
    ended = row.answered + row.failed
    if ended >= row.total:
        row.state, row.until = ("failed" if row.failed and not row.answered else "done"), None
        row.detail = f"{row.answered} answered" + (f", {row.failed} failed: {row.last_error}" if row.failed else "")
    elif row.in_flight:
        row.state = "running"
    elif isinstance(e, (RateLimited, RetryScheduled, NoModelsAvailableEvent)):
        row.state = "waiting"


class TextNews:
    """For plain-text views (IPython without widgets, the CLI off a terminal): the rows that reached
    a state worth a line (done, failed, rate limited, cancelled, rotated) since last asked, once each."""

    LOUD = frozenset({"done", "failed", "rate_limited", "cancelled"})

    def __init__(self) -> None:
        self._said: dict[str, str] = {}

    def __call__(self, model: DashboardModel) -> list[Row]:
        fresh = []
        for row in model.ordered():
            if (row.state in self.LOUD or row.detail.startswith("rotated")) and self._said.get(row.name) != row.detail:
                self._said[row.name] = row.detail
                fresh.append(row)
        return fresh

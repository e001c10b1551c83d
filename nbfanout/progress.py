"""Progress as plain data: the state of each requested model, folded from the core's events.

``DashboardModel`` turns events into rows (one per requested model, or per model of a batch
with its counts), header totals and the latest budget snapshots from ``utilization`` events.
Every view renders it: the notebook's widgets and static snapshot, IPython's text fallback and
the command line (``nbfanout/render.py`` turns it into HTML and text). It reads only events:
whose request each is comes with it (``RequestEvent.requested`` and ``purpose``), so no view
parses request ids, and it imports no UI library.

Provider batches (``map(..., via="batch")``) come as ``batch_progress`` events: each becomes a
``BatchRow`` (its provider's status word and counts, elapsed time, next poll), and the requests
it holds count as "in batch" on their model's row, not as queued or waiting for capacity: they
are with the provider. ``saved_batches`` reads the state files such maps leave, for
``nbfanout batches`` and ``%fanout batches``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nbfanout._secrets import mask
from nbfanout.core.events import (
    BatchProgress,
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

if TYPE_CHECKING:
    from nbfanout.core.batch import BatchJob
    from nbfanout.core.fanout import Fanout

__all__ = ["FINAL_STATES", "OPEN_BATCH_STATES", "BatchNews", "BatchRow", "DashboardModel", "Pace", "Row", "SavedMap",
           "TextNews", "saved_batches", "state_files"]

#: States a row does not leave.
FINAL_STATES = frozenset({"done", "failed", "cancelled"})
#: A provider batch in these states still holds requests whose results have not been read.
OPEN_BATCH_STATES = frozenset({"creating", "running", "ended"})
_STAGE = {"queued": 0.02, "waiting": 0.1, "rate_limited": 0.25, "retrying": 0.25, "in_batch": 0.3, "running": 0.55}


@dataclass
class Row:
    """What one requested model is doing now; plain data the views render."""

    name: str
    label: str
    model: str = ""
    state: str = "queued"  # queued, waiting, running, rate_limited, retrying, in_batch, done, failed, cancelled
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
    # sent through the provider's batch API: how many requests its open batches hold, and their status
    via: str = "live"  # "batch" once a batch_progress event named this model
    in_batch: int = 0
    batch_status: str = ""


@dataclass
class BatchRow:
    """One provider batch as its provider last reported it (``batch_progress`` events); plain data."""

    model: str
    batch_id: str
    status: str = ""  # the provider's own word (validating, in_progress, BATCH_STATE_RUNNING, ended, ...)
    state: str = "running"  # creating | running | ended | failed | fetched (its results are read)
    total: int = 0
    succeeded: int = 0  # as the provider counts them (Anthropic's stay 0 until the batch ends)
    failed: int = 0
    message: str = ""
    elapsed_s: float = 0.0  # since the batch was created (across restarts), when last reported
    seen_at: float = 0.0  # run-clock second of that report
    next_poll_at: float | None = None  # run-clock second its status is asked for next
    polls: int = 0
    poll_error: str = ""  # why the last status request failed ("" when it was answered)

    @property
    def provider(self) -> str:
        return self.model.split("/", 1)[0]

    @property
    def open(self) -> bool:
        """Still holding requests whose results are not read yet."""
        return self.state in OPEN_BATCH_STATES

    @property
    def reported(self) -> int:
        """Requests the provider says have ended, either way."""
        return self.succeeded + self.failed

    @property
    def word(self) -> str:
        """Its status as the provider says it, or what it is before the first status arrives."""
        if self.state == "creating":
            return "creating"
        return self.status or ("created" if self.open else self.state)

    def elapsed(self, now: float) -> float:
        """Seconds since it was created: moving on while it is open, as last reported once it is not."""
        return self.elapsed_s + (max(0.0, now - self.seen_at) if self.open else 0.0)

    def next_poll_in(self, now: float) -> float | None:
        """Seconds until its status is asked for again (0: now); None when nothing more will be asked."""
        if self.next_poll_at is None or not self.open:
            return None
        return max(0.0, self.next_poll_at - now)

    def eta(self, now: float) -> float | None:
        """Seconds until the provider has run every request, at its pace so far; None without one."""
        left = self.total - self.reported
        if not self.open:
            return None
        if self.state == "ended" or left <= 0:
            return 0.0  # only its results are left to read
        elapsed = self.elapsed(now)
        return left * elapsed / self.reported if self.reported and elapsed > 0 else None


@dataclass(frozen=True)
class Pace:
    """The run's pace for its header: live requests finished per second, and seconds left.

    ``eta_s`` is the longer of the live part's (at its rate) and each open batch's (at its
    provider's reported pace); None when one of them has no pace yet (``batch_unknown`` says a
    batch is why)."""

    rate: float | None
    eta_s: float | None
    batch_unknown: bool = False


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
        self.batches: dict[str, BatchRow] = {}  # by provider batch id, in creation order
        self.state_path: str | None = None  # a batch map's state file, when the view knows it (for resume)
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
        if row.via == "batch":
            return self.batch_progress(row)
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
                "in_batch": sum(r.in_batch for r in rows),
                "batches": sum(b.open for b in self.batches.values()),
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
            "in_batch": sum(r.in_batch for r in rows),
            "batches": sum(b.open for b in self.batches.values()),
            "tokens": sum(r.input_tokens + r.output_tokens for r in rows),
            "cost": sum(r.cost or 0.0 for r in rows),
            "elapsed": self.elapsed(),
        }

    def _ended(self, row: Row) -> tuple[int, int]:
        """(requests, of them ended) of one row: its prompts' in a batch map, else one."""
        if self.batch and row is not self.synthesis:
            ended = row.total if row.state == "cancelled" else row.answered + row.failed
            return row.total, ended
        return 1, int(row.state in FINAL_STATES)

    def pace(self) -> Pace:
        """Live requests finished per second and the seconds left, batches counted at their providers' pace.

        Requests inside a provider batch end all at once when its results are read, so they would
        make a rate of answers per second meaningless; the rate is the live requests' alone, and a
        batch's time left comes from the counts its provider reports."""
        elapsed = self.elapsed()
        now = self.now()
        live = [self._ended(r) for r in self.ordered() if r.via != "batch"]
        total, ended = sum(t for t, _ in live), sum(e for _, e in live)
        rate = ended / elapsed if ended and elapsed > 0 else None
        parts: list[float | None] = []
        if total > ended:
            parts.append((total - ended) / rate if rate else None)
        unknown = False
        for b in self.batches.values():
            if b.open:
                left = b.eta(now)
                unknown = unknown or left is None
                parts.append(left)
        eta = None if not parts or None in parts else max(p for p in parts if p is not None)
        return Pace(rate, eta, unknown)

    def batches_of(self, name: str) -> list[BatchRow]:
        """The provider batches of one requested model, in creation order."""
        return [b for b in self.batches.values() if b.model == name]

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
                    for key in [k for k, b in self.batches.items() if b.model == m and not b.open]:
                        del self.batches[key]  # the last run's batches, read and done with
            if event.prompts > 1:
                self.batch = True
                for m in event.models:
                    self.rows[m].total = event.prompts
            for m in event.models:
                if self.rows[m].via == "batch":
                    self._sync_batched(self.rows[m])
            return True
        if isinstance(event, RunCompleted):
            if event.cancelled:
                self.finish(cancelled=True)
            return True
        if isinstance(event, BatchProgress):
            self._apply_batch(event)
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
        if row.via == "batch":
            self._sync_batched(row)
        return True

    def seed_batches(self, jobs: Sequence[BatchJob]) -> None:
        """The batches a state file holds, before a resume reports on them (a batch that ended while
        nobody watched may send no ``batch_progress`` until its results are read)."""
        now = self.now()
        for job in jobs:
            if not job.batch_id:
                continue
            self.batches[job.batch_id] = BatchRow(
                model=job.model, batch_id=job.batch_id, status=job.status, state=job.state, total=job.total,
                succeeded=job.succeeded, failed=job.failed, message=job.message,
                elapsed_s=max(0.0, time.time() - job.created_at), seen_at=now)
            self.providers.add(job.provider)
            row = self.rows.get(job.model)
            if row is not None:
                row.via = "batch"
                self._sync_batched(row)

    def _apply_batch(self, e: BatchProgress) -> None:
        """A batch's report: its row in the batch table, and how many of its model's requests it holds."""
        key = e.batch_id or f"{e.model} (not created)"
        if e.batch_id:  # created: the row that stood for its upload goes
            pending = self.batches.get(f"{e.model} (not created)")
            if pending is not None and pending.state == "creating":
                del self.batches[f"{e.model} (not created)"]
        if e.state_path:
            self.state_path = e.state_path
        b = self.batches.get(key)
        if b is None:
            b = self.batches[key] = BatchRow(model=e.model, batch_id=e.batch_id)
            self.providers.add(e.model.split("/", 1)[0])
        b.status, b.state, b.message, b.poll_error = e.status, e.state, e.message, e.poll_error
        b.total, b.succeeded, b.failed = e.total or b.total, e.succeeded, e.failed
        b.elapsed_s, b.seen_at = e.elapsed_s, e.t
        b.next_poll_at = e.t + e.next_poll_s if e.next_poll_s is not None else None
        b.polls += e.next_poll_s is not None
        row = self.rows.get(e.model)
        if row is not None:
            row.via = "batch"
            self._sync_batched(row)

    def _sync_batched(self, row: Row) -> None:
        """A batched model's row: its requests with the provider read "in batch <status>", never
        queued or waiting for capacity (no budget of ours holds them)."""
        if row.state in FINAL_STATES:
            row.in_batch = 0
            return
        open_batches = [b for b in self.batches_of(row.name) if b.open]
        if self.batch and row is not self.synthesis:
            waiting = row.total - row.answered - row.failed - len(row.in_flight)
        else:
            waiting = 0 if row.in_flight or row.state == "running" else 1
        row.in_batch = max(0, min(waiting, sum(b.total for b in open_batches)))
        words = list(dict.fromkeys(b.word for b in open_batches))
        row.batch_status = ", ".join(words)
        if row.in_batch and not row.in_flight:
            row.state, row.until = "in_batch", None
            row.detail = (f"in batch {row.batch_status}" if len(open_batches) == 1
                          else f"in {len(open_batches)} batches: {row.batch_status}")

    def batch_progress(self, row: Row) -> float:
        """A batched row's share of requests ended, counting those its provider reports ended but not yet read."""
        reported = sum(b.reported for b in self.batches_of(row.name) if b.open)
        if self.batch and row is not self.synthesis:
            return min(1.0, (row.answered + row.failed + reported) / max(row.total, 1))
        total = sum(b.total for b in self.batches_of(row.name) if b.open)
        return _STAGE["in_batch"] + 0.65 * reported / max(total, 1)

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
        by = " by batch" if row.via == "batch" else ""
        row.state, row.detail, row.until = "done", "done" + by + (f" via {e.model}" if e.model != row.name else ""), None
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
        by = " by batch" if row.via == "batch" else ""
        row.detail = f"{row.answered} answered{by}" + (f", {row.failed} failed: {row.last_error}" if row.failed else "")
    elif row.in_flight:
        row.state = "running"
    elif isinstance(e, (RateLimited, RetryScheduled, NoModelsAvailableEvent)):
        row.state = "waiting"


class TextNews:
    """For plain-text views (IPython without widgets, the CLI off a terminal): the rows that reached
    a state worth a line (done, failed, rate limited, cancelled, rotated) since last asked, once each."""

    LOUD = frozenset({"done", "failed", "rate_limited", "cancelled"})  # a batch's news: ``BatchNews``

    def __init__(self) -> None:
        self._said: dict[str, str] = {}

    def __call__(self, model: DashboardModel) -> list[Row]:
        fresh = []
        for row in model.ordered():
            if (row.state in self.LOUD or row.detail.startswith("rotated")) and self._said.get(row.name) != row.detail:
                self._said[row.name] = row.detail
                fresh.append(row)
        return fresh


class BatchNews:
    """For plain-text views: the provider batches whose status, state or message changed since last
    asked (created, validating → in_progress, ended, read, failed), once each."""

    def __init__(self) -> None:
        self._said: dict[str, tuple[str, str, str]] = {}

    def __call__(self, model: DashboardModel) -> list[BatchRow]:
        fresh = []
        for key, b in model.batches.items():
            seen = (b.status, b.state, b.message)
            if self._said.get(key) != seen:
                self._said[key] = seen
                fresh.append(b)
        return fresh


# --- the state files batch maps leave ------------------------------------------------------------------
@dataclass
class SavedMap:
    """One batch state file, for listings: what it holds and its batches as last seen (or asked now)."""

    path: Path
    error: str = ""  # why the file could not be read (then nothing else is known)
    note: str = ""  # why the providers could not be asked now (the saved status is shown instead)
    created_at: float = 0.0  # epoch seconds
    config: str = ""
    prompts: int = 0
    models: tuple[str, ...] = ()
    batched: tuple[str, ...] = ()
    jobs: tuple[BatchJob, ...] = ()
    done: bool = False
    asked: bool = False  # the jobs' status is the providers' now, not the file's

    @property
    def open_jobs(self) -> int:
        return sum(j.state in OPEN_BATCH_STATES for j in self.jobs)


def state_files(directory: str | Path | None = None) -> list[Path]:
    """The batch state files in ``directory`` (default: where maps write them), oldest first."""
    from nbfanout.core.batch import STATE_DIR

    folder = Path(directory) if directory is not None else STATE_DIR
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.glob("*.json") if p.is_file()), key=lambda p: (p.stat().st_mtime, p.name))


def _saved(path: Path) -> SavedMap:
    from nbfanout.core.batch import BatchState
    from nbfanout.core.errors import UsageError

    try:
        state = BatchState.load(path)
    except UsageError as exc:
        return SavedMap(path=path, error=str(exc))
    return SavedMap(path=path, created_at=state.created_at, config=state.config, prompts=len(state.prompts),
                    models=tuple(state.models), batched=tuple(state.batched), jobs=tuple(state.jobs), done=state.done)


async def saved_batches(fx: Fanout | None, paths: Sequence[str | Path], *, ask: bool = True) -> list[SavedMap]:
    """Each state file's map and batches; with ``ask`` (and a Fanout) the open batches' status as
    their providers report it now. A file that cannot be read, or a provider that cannot be asked,
    is said on its entry rather than raised, so one bad file does not hide the others."""
    from nbfanout.core.errors import FanoutError

    out = []
    for path in paths:
        entry = _saved(Path(path))
        if ask and fx is not None and not entry.error and entry.open_jobs:
            try:
                jobs = await fx.batch_status(entry.path)
            except FanoutError as exc:
                entry.note = f"status not asked: {exc}"
            else:  # a status asked now never makes a map done: only reading its results does
                entry.jobs, entry.asked = tuple(jobs), True
        out.append(entry)
    return out

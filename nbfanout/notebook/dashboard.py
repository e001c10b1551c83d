"""The live dashboard: a plain-data model fed by the core's events, and two views of it.

``DashboardModel`` turns events into rows (one per model), header totals and the latest
budget snapshots from ``utilization`` events; it never touches the core's internals.
``Dashboard`` is the ipywidgets view: displayed once from the cell's thread, then updated
only from nbfanout's loop thread, where events arrive. Events are coalesced: a tick sends at
most one widget message (inside ``hold_sync()``), and ticks are at least 100 ms apart, so the
browser gets at most ten updates a second however fast events come. ``TextProgress`` is the
plain-text view for IPython without a widget frontend.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

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
    RequestStarted,
    RetryScheduled,
    RunCompleted,
    RunStarted,
    TextDelta,
    Utilization,
)
from nbfanout.render import FINAL_STATES, dashboard_html, mask_key, result_text, snapshot_html

if TYPE_CHECKING:
    from nbfanout.core.results import BatchResult, FanoutResult, ModelResult

__all__ = [
    "MIN_TICK_S",
    "Dashboard",
    "DashboardModel",
    "Row",
    "TextProgress",
    "answer_markdown",
    "import_widgets",
    "markdown_output",
]

MIN_TICK_S = 0.1  # ten widget updates a second at most
_STAGE = {"queued": 0.02, "waiting": 0.1, "rate_limited": 0.25, "retrying": 0.25, "running": 0.55}


def import_widgets() -> Any:
    """ipywidgets, imported only when a dashboard is drawn; ImportError names the install command."""
    try:
        import ipywidgets
    except ImportError as exc:
        raise ImportError("the live dashboard needs ipywidgets: pip install 'ipywidgets>=8.1'") from exc
    return ipywidgets


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
    def begin_synthesis(self, model: str) -> None:
        """Events from now on belong to the synthesis request (the magic calls this before synthesizing)."""
        self.synthesis = Row(name=model, label=f"synthesis ({model})")

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
        if self.synthesis is not None:
            return self.synthesis
        request = getattr(event, "request", "")
        name = request.split(":", 1)[1] if ":" in request else getattr(event, "requested", "") or getattr(event, "model", "")
        return self.rows.get(name)

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
            if self.synthesis is not None:  # the synthesis request's own run: its row exists
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
        row.model, row.attempts, row.key_id = e.model, e.attempt, mask_key(e.key_id)
        rotated = f", rotated to {row.model}" if row.model != row.name else ""
        row.state, row.detail, row.until = "running", f"running (attempt {e.attempt}{rotated})", None
        row.chars, row.text = 0, ""
    elif isinstance(e, TextDelta):
        row.chars = e.chars_so_far
        row.text += e.text
    elif isinstance(e, RateLimited):
        row.state, row.detail = "rate_limited", "rate-limited"
        row.until = e.t + e.retry_after_s if e.retry_after_s is not None else None
    elif isinstance(e, RetryScheduled):
        row.state, row.detail, row.until = "retrying", f"{e.category} on attempt {e.attempt}", e.t + e.wait_s
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
        row.detail = ("rate-limited" if isinstance(e, RateLimited) else
                      f"{e.category} on attempt {e.attempt}" if isinstance(e, RetryScheduled) else
                      _waiting(e))
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


def markdown_output(text: str) -> dict[str, Any]:
    """One Output-widget output that the frontend renders as markdown."""
    return {"output_type": "display_data", "data": {"text/markdown": text, "text/plain": text}, "metadata": {}}


class Dashboard:
    """The ipywidgets view of one run: display it first, then feed it events on the loop thread."""

    def __init__(self, models: Sequence[str], *, stream: bool = False, expected_chars: int | None = None,
                 background: bool = False, min_tick_s: float = MIN_TICK_S) -> None:
        widgets = import_widgets()
        self.model = DashboardModel(models, stream=stream, expected_chars=expected_chars)
        self.min_tick_s = min_tick_s
        self.html = widgets.HTML(value=dashboard_html(self.model))
        children: list[Any] = [self.html]
        self.tab = None
        self._shown_chars: dict[int, int] = {}
        self._sent_at: dict[int, int] = {}
        if stream:
            self.tab = widgets.Tab(children=[widgets.Output() for _ in models], titles=[m.split("/", 1)[-1] for m in models])
            children.append(self.tab)
        # a background run appends its final outputs here (Output.append_* is thread-safe; display() is not)
        self.after = widgets.Output() if background else None
        if self.after is not None:
            children.append(self.after)
        self.widget = widgets.VBox(children)
        self.ticks = 0
        self._dirty = False
        self._turn = 0
        self._last_tick = -1e9
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        self._handle: Any = None  # the display's handle, to replace the live widget by its snapshot

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        """The widget view, with a plain-text line for viewers without a widget manager (not the widget's repr)."""
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = (f"nbfanout dashboard for {len(self.model.rows)} models "
                                "(a live view; the final state follows as HTML)")
        return bundle

    def display(self) -> None:
        """Show the dashboard; call from the cell's thread before the run starts."""
        from IPython.display import display

        self._handle = display(self, display_id=True)

    def freeze(self, result: FanoutResult | BatchResult | None, timeline_png: bytes | None = None) -> None:
        """Replace the live widget by a static snapshot (final dashboard, timeline, answers) and close
        the widgets: a saved notebook, nbviewer or GitHub then shows the run without a kernel and
        without "Error displaying widget". Call from the cell's thread after ``aclose``."""
        self._closed = True  # a tick still pending on the loop thread does nothing now
        if self._timer is not None:
            self._timer.cancel()
        from nbfanout.core.results import FanoutResult

        text = result_text(result) if isinstance(result, FanoutResult) else repr(self)
        bundle = {"text/html": snapshot_html(self.model, result, timeline_png), "text/plain": text}
        if self._handle is not None:
            self._handle.update(bundle, raw=True)
        for w in [self.html, self.after, self.tab, *(self.tab.children if self.tab is not None else ()), self.widget]:
            if w is not None:
                w.close()

    # --- on the loop thread ------------------------------------------------------------------------
    def on_event(self, event: Event) -> None:
        """Event subscriber: update the model now, the widgets at the next tick."""
        if self.model.apply(event) and not self._closed:
            self._dirty = True
            self._schedule()

    def _schedule(self) -> None:
        if self._timer is not None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, self._last_tick + self.min_tick_s - loop.time())
        self._timer = loop.call_later(delay, self._tick)

    def _stale_streams(self) -> list[int]:
        """Stream tabs whose answer grew since they were last sent."""
        if self.tab is None:
            return []
        return [i for i, row in enumerate(self.model.rows.values()) if len(row.text) != self._shown_chars.get(i, 0)]

    def _tick(self) -> None:
        """Send one widget message: the table, or (taking turns) the stream tab longest out of date.

        Every tab is refreshed in turn rather than only the selected one, because while a cell
        runs the kernel does not process the frontend's messages, so the selection is unknown.
        """
        self._timer = None
        streams = self._stale_streams()
        if self._closed or not (self._dirty or streams):
            return
        self._last_tick = asyncio.get_running_loop().time()
        self.ticks += 1
        if self._dirty and (not streams or self._turn % 2 == 0):
            self._dirty = False
            with self.html.hold_sync():
                self.html.value = dashboard_html(self.model)
        else:
            self._send_stream(min(streams, key=lambda i: self._sent_at.get(i, -1)))
        self._turn += 1
        if self._dirty or self._stale_streams():
            self._schedule()

    def _send_stream(self, i: int) -> None:
        row = list(self.model.rows.values())[i]
        out = self.tab.children[i]  # type: ignore[union-attr]
        with out.hold_sync():
            out.outputs = (markdown_output(row.text),)
        self._shown_chars[i] = len(row.text)
        self._sent_at[i] = self.ticks

    async def aclose(self, *, cancelled: bool = False, result: FanoutResult | None = None) -> None:
        """Final state, still on the loop thread: wait out the tick interval, then one last update."""
        self.model.finish(cancelled=cancelled)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, self._last_tick + self.min_tick_s - loop.time()))
        self._closed = True
        self.ticks += 1
        self._last_tick = loop.time()
        with self.html.hold_sync():
            self.html.value = dashboard_html(self.model)
        if self.tab is not None and result is not None:
            # the run is over: each tab gets its final answer (or why there is none) once, not as a live update
            final = {r.requested: r for r in result.results}
            for i, name in enumerate(self.model.rows):
                if name in final:
                    with self.tab.children[i].hold_sync():
                        self.tab.children[i].outputs = (markdown_output(answer_markdown(final[name])),)

    def __repr__(self) -> str:
        t = self.model.totals()
        return f"<Dashboard {t['done']}/{t['total']} done, {t['failed']} failed, {self.ticks} ticks, {self.model.events} events>"


class TextProgress:
    """Plain-text progress for IPython without widgets: a line whenever a model changes state for good."""

    LOUD = frozenset({"done", "failed", "rate_limited", "cancelled"})

    def __init__(self, models: Sequence[str], out: TextIO | None = None) -> None:
        self.model = DashboardModel(models)
        self.out = out or sys.stdout
        self._said: dict[str, str] = {}

    def on_event(self, event: Event) -> None:
        """Event subscriber: print the rows whose state changed to one worth a line."""
        if not self.model.apply(event):
            return
        for row in self.model.ordered():
            said = self._said.get(row.name)
            if row.state in self.LOUD and said != row.detail or (row.detail.startswith("rotated") and said != row.detail):
                self._said[row.name] = row.detail
                when = f"{self.model.now():6.2f}s"
                print(f"[{when}] {row.label}: {row.detail}", file=self.out, flush=True)

    def close(self, *, cancelled: bool = False) -> None:
        """Report the rows an interrupt cancelled."""
        self.model.finish(cancelled=cancelled)
        if cancelled:
            for row in self.model.ordered():
                if row.state == "cancelled" and self._said.get(row.name) != "cancelled":
                    self._said[row.name] = "cancelled"
                    print(f"  {row.label}: cancelled", file=self.out, flush=True)

    def __repr__(self) -> str:
        t = self.model.totals()
        return f"<TextProgress {t['done']}/{t['total']} done, {t['failed']} failed>"


def answer_markdown(r: ModelResult) -> str:
    """An answer as markdown, or its failure in one line."""
    if r.ok:
        return r.text
    message = r.error.message if r.error else ""
    return f"**{r.category or 'failed'}**" + (f" (HTTP {r.http_status})" if r.http_status else "") + f": {message}"

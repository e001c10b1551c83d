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
import html
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from nbfanout.core.events import Event
from nbfanout.progress import FINAL_STATES, BatchNews, DashboardModel, Row, TextNews
from nbfanout.render import GRID_MAX, batch_line, batch_result_text, dashboard_html, mask_key, result_text, snapshot_html

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


def import_widgets() -> Any:
    """ipywidgets, imported only when a dashboard is drawn; ImportError names the install command."""
    try:
        import ipywidgets
    except ImportError as exc:
        raise ImportError("the live dashboard needs ipywidgets: pip install 'ipywidgets>=8.1'") from exc
    return ipywidgets


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
        self.html = widgets.HTML(value=dashboard_html(self.model, inline=False))
        children: list[Any] = [self.html]
        self.tab: Any = None  # the streamed answers' container
        self._streams: list[Any] = []  # one Output per model, its answer as it grows
        self._cards: list[Any] = []  # up to GRID_MAX models: each Output under its name, side by side
        self._shown_chars: dict[int, int] = {}
        self._sent_at: dict[int, int] = {}
        if stream:
            self._streams = [widgets.Output() for _ in models]
            if len(models) <= GRID_MAX:  # side by side, each under its full provider/model
                self._cards = [widgets.VBox([widgets.HTML(f'<b title="{html.escape(m)}">{html.escape(m)}</b>'), out],
                                      layout=widgets.Layout(min_width="0", padding="4px 6px",
                                                            border="1px solid var(--jp-border-color2, #e0e0e0)"))
                         for m, out in zip(models, self._streams)]
                self.tab = widgets.GridBox(self._cards, layout=widgets.Layout(
                    grid_template_columns=f"repeat({len(models)}, minmax(0, 1fr))", grid_gap="8px"))
            else:  # one full-width title per model (tabs cut fifteen names down to "deep", "deep", ...)
                self.tab = widgets.Accordion(children=self._streams, titles=list(models))
            children.append(self.tab)
        # a background run that fails writes its message here (Output.append_* is thread-safe)
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
        without "Error displaying widget". Call after ``aclose``: from the cell's thread, or for a
        background run from the loop thread once it ends (a display update is one iopub message)."""
        self._closed = True  # a tick still pending on the loop thread does nothing now
        if self._timer is not None:
            self._timer.cancel()
        from nbfanout.core.results import BatchResult, FanoutResult

        text = (result_text(result) if isinstance(result, FanoutResult) else
                batch_result_text(result) if isinstance(result, BatchResult) else repr(self))
        bundle = {"text/html": snapshot_html(self.model, result, timeline_png), "text/plain": text}
        if self._handle is not None:
            self._handle.update(bundle, raw=True)
        for w in [self.html, self.after, self.tab, *self._cards, *self._streams, self.widget]:
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
        """Streamed answers that grew since they were last sent."""
        if self.tab is None:
            return []
        return [i for i, row in enumerate(self.model.rows.values()) if len(row.text) != self._shown_chars.get(i, 0)]

    def _tick(self) -> None:
        """Send one widget message: the table, or (taking turns) the streamed answer longest out of date.

        Every answer is refreshed in turn rather than only the open one, because while a cell
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
                self.html.value = dashboard_html(self.model, inline=False)
        else:
            self._send_stream(min(streams, key=lambda i: self._sent_at.get(i, -1)))
        self._turn += 1
        if self._dirty or self._stale_streams():
            self._schedule()

    def _send_stream(self, i: int) -> None:
        row = list(self.model.rows.values())[i]
        out = self._streams[i]
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
            self.html.value = dashboard_html(self.model, inline=False)
        if self.tab is not None and result is not None:
            # the run is over: each tab gets its final answer (or why there is none) once, not as a live update
            final = {r.requested: r for r in result.results}
            for i, name in enumerate(self.model.rows):
                if name in final:
                    with self._streams[i].hold_sync():
                        self._streams[i].outputs = (markdown_output(answer_markdown(final[name])),)

    def __repr__(self) -> str:
        t = self.model.totals()
        return f"<Dashboard {t['done']}/{t['total']} done, {t['failed']} failed, {self.ticks} ticks, {self.model.events} events>"


class TextProgress:
    """Plain-text progress for IPython without widgets: a line whenever a model changes state for good,
    and whenever a provider batch is created, changes status or is read."""

    def __init__(self, models: Sequence[str], out: TextIO | None = None) -> None:
        self.model = DashboardModel(models)
        self.out = out or sys.stdout
        self._news = TextNews()
        self._batch_news = BatchNews()

    def on_event(self, event: Event) -> None:
        """Event subscriber: print the rows whose state changed to one worth a line."""
        if not self.model.apply(event):
            return
        for row in self._news(self.model):
            print(f"[{self.model.now():6.2f}s] {row.label}: {row.detail}", file=self.out, flush=True)
        if event.kind == "batch_progress":
            for b in self._batch_news(self.model):
                print(f"[{self.model.now():6.2f}s] batch {batch_line(b, self.model.now())}", file=self.out, flush=True)

    def close(self, *, cancelled: bool = False) -> None:
        """Report the rows an interrupt cancelled."""
        self.model.finish(cancelled=cancelled)
        if cancelled:
            for row in self._news(self.model):
                if row.state == "cancelled":
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

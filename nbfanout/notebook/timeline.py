"""The retry timeline: one lane per model, each attempt a bar coloured by how it ended.

Built from a finished ``FanoutResult``'s attempts (plain data), with matplotlib's
object-oriented API (a ``Figure`` and the Agg canvas, never pyplot), so it draws from any
thread, leaves the notebook's figure state alone, and renders to PNG for saved notebooks.
Waits the core chose (a provider's retry-after, backoff) are hatched after the attempt
that caused them; time spent queued for capacity (before or between attempts) is a dotted line; a rotation to
another model is a triangle at the attempt that went to the new model.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nbfanout.core.results import Attempt, FanoutResult, ModelResult

__all__ = ["OUTCOME_COLOURS", "timeline_figure", "timeline_png"]

OUTCOME_COLOURS = {
    "ok": "#2e9d48",
    "rate_limit": "#e69500",
    "quota_exhausted": "#b35900",
    "overloaded": "#f07b3f",
    "server_error": "#d9363e",
    "timeout": "#8e44ad",
    "network": "#7f5539",
    "cancelled": "#9e9e9e",
    "auth": "#7b1e1e",
    "permission": "#7b1e1e",
}
OTHER_COLOUR = "#c0392b"
MIN_BAR = 0.008  # the narrowest attempt, as a share of the axis (about 6 px of 800)
LABEL_BELOW = 0.04  # failures shorter than this share of the axis are labelled with their outcome
WAIT_COLOUR = "#bdbdbd"


def _import_matplotlib() -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("the retry timeline needs matplotlib: pip install 'matplotlib>=3.7'") from exc
    return Figure, FigureCanvasAgg


def _short(model: str) -> str:
    return model.split("/", 1)[-1]


def _lanes(result: FanoutResult) -> list[tuple[str, ModelResult, float]]:
    """(label, result, time offset) per lane; the synthesis ran after the fan-out, so it is shifted by it."""
    lanes = []
    if result.synthesis is not None:
        lanes.append((f"synthesis: {_short(result.synthesis.requested)}", result.synthesis, result.elapsed_s))
    lanes += [(r.requested, r, 0.0) for r in result.results]
    return lanes


def timeline_figure(result: FanoutResult, *, width: float = 10.0) -> Any:
    """A matplotlib Figure of every attempt of every model (no pyplot, safe off the main thread)."""
    Figure, FigureCanvasAgg = _import_matplotlib()
    from matplotlib.patches import Patch

    lanes = _lanes(result)
    fig = Figure(figsize=(width, 0.32 * max(len(lanes), 1) + 1.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    seen: set[str] = set()
    waits = rotations = queued = False
    end = max([result.elapsed_s] + [off + a.end_s for _, r, off in lanes for a in r.attempts] + [0.1])
    for y, (_, r, off) in enumerate(lanes):
        attempts: tuple[Attempt, ...] = r.attempts
        if not attempts:
            note = "cancelled" if r.category == "cancelled" else (r.category or "no attempt")
            ax.text(off, y, f"  {note}", va="center", fontsize=8, color="#666666")
            continue
        if attempts[0].start_s > 0.01:  # queued for capacity before the first attempt
            queued = True
            ax.plot([off, off + attempts[0].start_s], [y, y], color=WAIT_COLOUR, lw=1, ls=":")
        previous = r.requested
        for k, a in enumerate(attempts):
            later = attempts[k + 1].start_s if k + 1 < len(attempts) else None
            if later is not None and later > a.end_s + a.wait_s + 0.01:  # then waited for capacity
                queued = True
                ax.plot([off + a.end_s + a.wait_s, off + later], [y, y], color=WAIT_COLOUR, lw=1, ls=":")
            colour = OUTCOME_COLOURS.get(a.outcome, OTHER_COLOUR)
            seen.add(a.outcome)
            span = a.end_s - a.start_s
            # a 429 answered in 5 ms beside a 12-s call would be a speck: every attempt gets a visible width,
            # and a short failure its outcome written beside it
            ax.barh(y, max(span, end * MIN_BAR), left=off + a.start_s, height=0.6, color=colour,
                    edgecolor="white", linewidth=0.5)
            if a.outcome != "ok" and span < end * LABEL_BELOW:
                ax.text(off + a.start_s + max(span, end * MIN_BAR), y + 0.05, f" {a.outcome}", fontsize=6.5,
                        va="center", color=colour)
            # the wait the core planned, cut at the next attempt (it may resume early, e.g. once capacity frees up)
            waited = min(a.wait_s, (later if later is not None else end - off) - a.end_s)
            if waited > 0:
                waits = True
                ax.barh(y, waited, left=off + a.end_s, height=0.3, color="none", edgecolor=WAIT_COLOUR, hatch="///",
                        linewidth=0.5)
            if a.model != previous:
                rotations = True
                ax.plot(off + a.start_s, y - 0.42, marker="v", color="#333333", markersize=5)
                ax.text(off + a.start_s, y - 0.45, f" → {_short(a.model)}", fontsize=7, va="bottom", color="#333333")
            previous = a.model
    ax.set_yticks(range(len(lanes)), [label for label, _, _ in lanes], fontsize=8)
    ax.set_ylim(len(lanes) - 0.4, -0.8)
    ax.set_xlim(0, end * 1.02)
    ax.set_xlabel("seconds since the run started", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    ok = len(result.succeeded)
    ax.set_title(f"retry timeline · {ok}/{len(result.results)} succeeded in {result.elapsed_s:.2f} s", fontsize=10, loc="left")
    outcomes = sorted(seen, key=lambda k: (k != "ok", k))
    handles: list[Any] = [Patch(color=OUTCOME_COLOURS.get(k, OTHER_COLOUR), label=k) for k in outcomes]
    if waits:
        handles.append(Patch(facecolor="none", edgecolor=WAIT_COLOUR, hatch="///", label="wait"))
    from matplotlib.lines import Line2D

    if queued:
        handles.append(Line2D([], [], color=WAIT_COLOUR, ls=":", label="queued for capacity"))
    if rotations:
        handles.append(Line2D([], [], marker="v", color="#333333", ls="none", label="rotation"))
    if handles:
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return fig


def timeline_png(result: FanoutResult, *, width: float = 10.0) -> bytes:
    """The timeline as PNG bytes, for display in a notebook and for saved/converted notebooks."""
    fig = timeline_figure(result, width=width)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()

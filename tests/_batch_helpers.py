"""Helpers for the tests of batch maps' presentation (progress, render, CLI, magics): a real map sent
through the sandbox's batch APIs, every event it emitted recorded with what the dashboard model said
at that moment, and the module-scoped sandboxes they share (``batch_sb``, ``faults_sb``: import them
as fixtures). A uniquely named module, importable because pytest prepends this folder."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from nbfanout import Fanout
from nbfanout.core.events import BatchProgress, Event
from nbfanout.core.results import BatchResult
from nbfanout.progress import DashboardModel
from nbfanout.sandbox import start_sandbox

#: The built-in batch_api scenario's models, one per batch API (and a second OpenAI one).
BATCH_MODELS = ["openai/gpt-4o-mini", "anthropic/claude-haiku-4-5-20251001", "gemini/gemini-2.5-flash"]
#: batch_api at this scale: batches end about 1.4 s after creation (OpenAI's 3.5 s × 0.4).
TIME_SCALE = 0.4

OAI = "sk-sbx-ui-batch-openai-0b01"
_FAST = {"output_tokens": [5, 20], "latency": {"base_ms": 5}, "limits": {"rpm": 6000}}


def _openai(batch: dict[str, Any]) -> dict[str, Any]:
    return {"style": "openai", "keys": [OAI], "models": {"gpt-4o-mini": _FAST}, "batch": batch}


#: Batches that fail or take long, for failures, cancellation and interrupted runs.
FAULTS_SCENARIO: dict[str, Any] = {
    "name": "ui-batch-faults",
    "seed": 23,
    "time_scale": 1.0,
    "providers": {
        "openai": _openai({"in_progress_after_s": 0.2, "complete_after_s": 1.0, "finalizing_s": 0.2}),
        "oai-invalid": _openai({"in_progress_after_s": 0.2, "fail_validation": "The sandbox refused this input file."}),
        "oai-slow": _openai({"in_progress_after_s": 0.2, "complete_after_s": 120.0, "cancel_after_s": 0.3}),
    },
}



@pytest.fixture(scope="module")
def batch_sb(sandbox_factory: Any) -> Any:
    """The built-in batch_api scenario at TIME_SCALE (shared by the session, one server)."""
    return sandbox_factory("batch_api", time_scale=TIME_SCALE)


@pytest.fixture(scope="module")
def faults_sb() -> Any:
    """FAULTS_SCENARIO's own server, for one test module."""
    with start_sandbox(FAULTS_SCENARIO) as server:
        yield server

def prompts(n: int) -> list[str]:
    return [f"question {i}: name a colour and a number" for i in range(n)]


@dataclass
class Recorded:
    """A finished batch map: its result, state file, every event, and the dashboard model's text at
    chosen moments (``pages``: rendered right after the event of that index was folded)."""

    result: BatchResult
    path: Path
    model: DashboardModel
    events: list[Event] = field(default_factory=list)
    states: list[dict[str, tuple[str, int, str]]] = field(default_factory=list)  # per event: row -> (state, in_batch, detail)
    mid_page: str = ""  # the dashboard while every batch had reported counts and none was read yet
    mid_text: str = ""
    mid_now: float = 0.0


async def record_batch_map(config: Any, path: Path, *, models: list[str] | None = None, n: int = 8,
                           **params: Any) -> Recorded:
    """``map(prompts(n), models, via="batch")`` with a DashboardModel folding every event, as a view would."""
    from nbfanout import render

    names = models or BATCH_MODELS
    model = DashboardModel(names)
    events: list[Event] = []
    states: list[dict[str, tuple[str, int, str]]] = []
    mid: dict[str, Any] = {}

    def on_event(event: Event) -> None:
        model.apply(event)
        events.append(event)
        states.append({r.name: (r.state, r.in_batch, r.detail) for r in model.rows.values()})
        if (isinstance(event, BatchProgress) and not mid and len(model.batches) == len(names)
                and all(b.open for b in model.batches.values())
                and sum(b.reported > 0 for b in model.batches.values()) >= 2):
            mid["page"] = render.dashboard_html(model)
            mid["text"] = render.batches_text(model)
            mid["now"] = model.now()

    async with Fanout(config) as fx:
        fx.subscribe(on_event)
        result = await fx.map(prompts(n), models=names, via="batch", batch_state=path, max_tokens=params.pop(
            "max_tokens", 30), **params)
    model.finish()
    return Recorded(result, path, model, events, states, mid.get("page", ""), mid.get("text", ""), mid.get("now", 0.0))

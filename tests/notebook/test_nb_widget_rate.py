"""The dashboard sends at most ten widget messages a second, however many events arrive (recording comm)."""

from __future__ import annotations

from typing import Any

from _nb_helpers import many_models_scenario  # type: ignore[import-not-found]

from nbfanout import Fanout
from nbfanout.notebook._runner import LoopJob
from nbfanout.notebook.dashboard import Dashboard


def _max_per_second(times: list[float]) -> int:
    """The most messages in any one-second window (sliding, not bucketed)."""
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= 1.0:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def test_fifty_streaming_models_stay_under_ten_updates_a_second(sandbox_factory: Any, recording_comm: list) -> None:
    sb = sandbox_factory(many_models_scenario(50))
    fx = Fanout(sb.config, learn=False)
    names = [f"openai/m{i:02d}" for i in range(50)]
    dash = Dashboard(names, stream=True)
    opened = len(recording_comm)
    events: list[Any] = []

    async def drive() -> Any:
        unsubscribe = fx.subscribe(dash.on_event)
        counter = fx.subscribe(events.append)
        try:
            return await fx.run("Describe leaky buckets.", names, stream=True)
        finally:
            unsubscribe()
            counter()
            await dash.aclose()

    result = LoopJob(drive()).wait(timeout=120)
    assert len(result.succeeded) == 50
    assert len(events) >= 2000, f"only {len(events)} events: the test needs a high event rate"
    updates = [t for t, kind, data, _ in recording_comm[opened:] if kind == "comm_msg" and data.get("method") == "update"]
    threads = {thread for _, kind, _, thread in recording_comm[opened:] if kind == "comm_msg"}
    assert threads == {"nbfanout-loop"}, f"widget values were set from {threads}, not only from nbfanout's loop thread"
    per_second = _max_per_second(updates)
    assert per_second <= 10, f"{per_second} widget messages in one second"
    duration = max(updates) - min(updates)
    print(f"\n{len(events)} events, {len(updates)} widget messages in {duration:.2f}s, at most {per_second} in any second")
    # and the final state is on the page: every model done
    final = dash.html.value
    assert final.count('class="nbf-row"') == 50
    assert final.count('data-state="done"') == 50


def test_streamed_answers_sit_side_by_side_under_full_names_or_in_full_width_sections(recording_comm: list) -> None:
    """Seen: fifteen tabs labelled "deep" ×4, "meta" ×3; two pooled models both read "steady"."""
    import ipywidgets

    few = ["openrouter/deepseek/deepseek-r1-0528:free", "together/deepseek-ai/DeepSeek-R1", "openai/o3"]
    grid = Dashboard(few, stream=True).tab
    assert isinstance(grid, ipywidgets.GridBox) and "repeat(3," in grid.layout.grid_template_columns
    assert [box.children[0].value.count(name) for box, name in zip(grid.children, few)] == [2, 2, 2]  # text and title
    many = [f"openrouter/deepseek/model-{i}" for i in range(15)]
    sections = Dashboard(many, stream=True).tab
    assert isinstance(sections, ipywidgets.Accordion) and list(sections.titles) == many

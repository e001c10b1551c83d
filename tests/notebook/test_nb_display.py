"""HTML / text rendering, the dashboard's state machine and the retry timeline, from real core objects."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nbfanout.core.errors import ErrorCategory, ErrorInfo
from nbfanout.core.events import (
    BudgetStats,
    ModelCompleted,
    ModelFailed,
    ModelQueued,
    ModelRotation,
    RateLimited,
    RequestStarted,
    RunCompleted,
    RunStarted,
    TextDelta,
    Utilization,
)
from nbfanout.core.results import Attempt, BatchResult, FanoutResult, ModelResult
from nbfanout.notebook import display as render
from nbfanout.notebook.dashboard import DashboardModel, import_widgets
from nbfanout.notebook.timeline import timeline_figure, timeline_png


def _result() -> FanoutResult:
    ok = ModelResult(
        requested="openai/gpt-4.1", model="openai/gpt-4.1", ok=True,
        text="First line <b>bold</b>\n\nSecond line\nThird\nFourth", input_tokens=10, output_tokens=20, cost=0.0012,
        latency_s=1.5, attempts=(Attempt("openai/gpt-4.1", "…k1a7", 0.0, 1.5, "ok", 200),),
    )
    rotated = ModelResult(
        requested="openrouter/deepseek/deepseek-r1-0528:free", model="openrouter/deepseek/deepseek-r1-0528", ok=True,
        text="Rotated answer", latency_s=4.0,
        attempts=(Attempt("openrouter/deepseek/deepseek-r1-0528:free", "…r4d0", 0.1, 0.4, "rate_limit", 429, "upstream",
                          wait_s=0.5),
                  Attempt("openrouter/deepseek/deepseek-r1-0528", "…r4d0", 1.5, 4.0, "ok", 200)),
    )
    failed = ModelResult(
        requested="gemini/gemini-2.5-pro", model="gemini/gemini-2.5-pro", ok=False, latency_s=0.2,
        attempts=(Attempt("gemini/gemini-2.5-pro", "…g3c9", 0.0, 0.2, "quota_exhausted", 429, "<quota> gone"),),
        error=ErrorInfo(ErrorCategory.QUOTA_EXHAUSTED, False, "<quota> gone", status=429),
    )
    cancelled = ModelResult(requested="openai/o3", model="openai/o3", ok=False,
                            error=ErrorInfo(ErrorCategory.CANCELLED, False, "cancelled before an answer arrived"))
    synthesis = ModelResult(requested="openai/o4-mini", model="openai/o4-mini", ok=True, text="Combined",
                            attempts=(Attempt("openai/o4-mini", "…k2b8", 0.0, 1.0, "ok", 200),))
    return FanoutResult(prompt="Q?", results=(ok, rotated, failed, cancelled), elapsed_s=4.2, synthesis=synthesis)


def test_result_html_is_a_compact_escaped_table_with_the_synthesis_first() -> None:
    page = render.result_html(_result())
    assert "<b>bold</b>" not in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "&lt;quota&gt; gone" in page and "quota_exhausted (HTTP 429)" in page
    assert page.index("synthesis (openai/o4-mini)") < page.index("openai/gpt-4.1")
    assert "First line" in page and "Fourth" not in page  # only the first lines of an answer
    assert "via openrouter/deepseek/deepseek-r1-0528" in page
    assert "2/4 succeeded" in page and "mathjax_ignore" in page
    text = render.result_text(_result())
    assert "✗ gemini/gemini-2.5-pro: quota_exhausted (HTTP 429): <quota> gone" in text


def test_batch_html_counts_rows_it_does_not_show() -> None:
    row = _result()
    batch = BatchResult(prompts=("Q?",) * 100, models=tuple(r.requested for r in row.results), rows=(row,) * 100, elapsed_s=9)
    page = render.batch_html(batch)
    assert page.count("<tr>") == render.MAX_TABLE_ROWS + 1  # + the header row
    assert "… and 100 more rows" in page


def test_results_render_as_html_in_notebooks() -> None:
    result = _result()
    assert result._repr_html_() == render.result_html(result)  # the hook in core/results.py
    batch = BatchResult(prompts=("Q?",), models=("openai/gpt-4.1",), rows=(result,))
    assert batch._repr_html_() == render.batch_html(batch)


def test_keys_are_masked_to_four_characters() -> None:
    assert render.mask_key("…k1a7") == "…k1a7"
    assert render.mask_key("sk-live-secret-9f2c") == "…9f2c"
    stats = BudgetStats("key", "openai sk-live-secret-9f2c", 500, 10, None, 0, None, 0, None, 0, 0.0)
    per_model = BudgetStats("model-key", "openai/gpt-4.1 sk-live-secret-9f2c", 500, 10, None, 0, None, 0, None, 0, 0.0)
    page = render.budgets_html([stats, per_model])
    assert "secret" not in page and "openai …9f2c" in page and "openai/gpt-4.1 …9f2c" in page


def test_model_budgets_shown_are_the_fullest_and_the_cooling() -> None:
    def model(name: str, used: float, cooldown: float = 0.0) -> BudgetStats:
        return BudgetStats("model", name, 10, used, None, 0, None, 0, None, 0, cooldown)

    budgets = [model(f"p/m{i}", i) for i in range(10)] + [model("p/idle", 0, cooldown=5.0)]
    page = render.budgets_html(budgets)
    shown = sorted((page.index(f"p/m{i}<"), i) for i in range(10) if f"p/m{i}<" in page)
    assert [i for _, i in shown] == list(range(9, 9 - render.MAX_MODEL_BUDGETS, -1))  # fullest first
    assert "p/idle" in page and "cooldown 5.0 s" in page


def test_utilization_bars_turn_amber_then_red_near_a_limit_and_show_cooldowns() -> None:
    def stats(name: str, used: float, cooldown: float = 0.0) -> BudgetStats:
        return BudgetStats("provider", name, 100, used, None, 0, None, 0, 4, 1, cooldown)

    page = render.budgets_html([stats("a", 30), stats("b", 70), stats("c", 95, cooldown=3.2)])
    assert render.GREEN in page and render.AMBER in page and render.RED in page
    assert "cooldown 3.2 s" in page
    assert page.count('role="progressbar"') == 9  # RPM, TPM and in-flight per budget


def test_dashboard_model_follows_the_events() -> None:
    m = DashboardModel(["openai/gpt-4.1", "openrouter/x:free", "gemini/pro"], stream=True)
    run = "r1"
    for event in (
        RunStarted(0.0, run, models=tuple(m.rows)),
        ModelQueued(0.0, run, request="0:openai/gpt-4.1", model="openai/gpt-4.1"),
        RequestStarted(0.1, run, request="0:openai/gpt-4.1", model="openai/gpt-4.1", key_id="…k1a7", attempt=1),
        TextDelta(0.2, run, request="0:openai/gpt-4.1", model="openai/gpt-4.1", text="Hello ", chars_so_far=6),
        RequestStarted(0.1, run, request="0:openrouter/x:free", model="openrouter/x:free", attempt=1),
        RateLimited(0.3, run, request="0:openrouter/x:free", model="openrouter/x:free", retry_after_s=3.1),
        Utilization(0.3, run, budgets=(BudgetStats("provider", "openrouter", 20, 1, None, 0, None, 0, None, 1, 0.0),
                                       BudgetStats("provider", "anthropic", 20, 1, None, 0, None, 0, None, 0, 0.0))),
    ):
        assert m.apply(event)
    assert m.rows["openai/gpt-4.1"].state == "running" and m.rows["openai/gpt-4.1"].text == "Hello "
    assert 0.1 < m.progress(m.rows["openai/gpt-4.1"]) < 0.97
    page = render.dashboard_html(m, now=0.3)
    assert "rate-limited, retry in 3.1 s" in page
    assert [b.name for b in m.budgets] == ["openrouter"]  # only the providers of this run
    m.apply(ModelRotation(0.4, run, request="0:openrouter/x:free", from_model="openrouter/x:free", to_model="openrouter/x",
                          reason="rate_limit"))
    assert "rotated to openrouter/x" in render.dashboard_html(m)
    m.apply(ModelCompleted(1.0, run, request="0:openai/gpt-4.1", requested="openai/gpt-4.1", model="openai/gpt-4.1",
                           latency_s=0.9, input_tokens=5, output_tokens=7, cost=0.01))
    m.apply(ModelFailed(1.1, run, request="0:gemini/pro", requested="gemini/pro", model="gemini/pro", category="auth",
                        status=401, message="bad key"))
    assert m.rows["gemini/pro"].detail == "failed: auth (HTTP 401): bad key"
    m.apply(RunCompleted(1.2, run, cancelled=True))
    assert m.rows["openrouter/x:free"].state == "cancelled"
    totals = m.totals()
    assert (totals["done"], totals["failed"], totals["cancelled"], totals["tokens"]) == (1, 1, 1, 12)
    assert 'data-state="cancelled"' in render.dashboard_html(m)


def test_timeline_has_a_lane_per_model_and_renders_png() -> None:
    result = _result()
    fig = timeline_figure(result)
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[0] == "synthesis: o4-mini" and labels[1:] == [r.requested for r in result.results]
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert {"ok", "rate_limit", "quota_exhausted", "wait", "rotation"} <= set(legend)
    png = timeline_png(result)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_ipywidgets_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    with pytest.raises(ImportError, match=r"pip install 'ipywidgets>=8.1'"):
        import_widgets()


def test_magics_import_no_widget_or_plotting_library() -> None:
    code = "import sys, nbfanout.notebook.magics; print(sorted(m for m in ('ipywidgets', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
